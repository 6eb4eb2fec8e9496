//! Attaching the caller's terminal to a VM's serial socket (`kvm-mcp vm console`), the
//! way `virsh console` does: the terminal goes to raw mode, every byte is passed
//! through, an escape byte (Ctrl-] by default) detaches, and the terminal is restored
//! on every way out. With stdin not a terminal (a pipe), bytes pass through unchanged
//! and end of input detaches.

use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

use nix::sys::termios::{self, SetArg, Termios};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// Ctrl-].
pub const DEFAULT_ESCAPE: u8 = 0x1d;

/// Why an attach session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detach {
    /// The escape byte was typed.
    Escape,
    /// Standard input ended.
    InputClosed,
    /// QEMU closed the socket (the VM stopped).
    ConsoleClosed,
}

/// Puts a terminal into raw mode and restores it when dropped.
struct RawMode {
    saved: Termios,
}

impl RawMode {
    fn enter(fd: BorrowedFd<'_>) -> nix::Result<Self> {
        let saved = termios::tcgetattr(fd)?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(fd, SetArg::TCSANOW, &raw)?;
        Ok(Self { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let stdin = std::io::stdin();
        if let Err(e) = termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &self.saved) {
            tracing::warn!(error = %e, "cannot restore the terminal settings");
        }
    }
}

/// Reads stdin on a plain thread (which, unlike a tokio blocking task, never delays the
/// process's exit) and forwards chunks; an empty chunk means end of input.
fn stdin_reader() -> tokio::sync::mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        let mut stdin = std::io::stdin();
        loop {
            let n = stdin.read(&mut buf).unwrap_or(0);
            if tx.blocking_send(buf[..n].to_vec()).is_err() || n == 0 {
                break;
            }
        }
    });
    rx
}

/// Connects to `sock` and relays until detached.
///
/// # Errors
/// The socket cannot be reached, or the terminal cannot be switched to raw mode.
pub async fn attach(sock: &Path, escape: u8) -> std::io::Result<Detach> {
    let stream = UnixStream::connect(sock).await?;
    let stdin = std::io::stdin();
    let raw = if nix::unistd::isatty(stdin.as_fd()).unwrap_or(false) {
        Some(RawMode::enter(stdin.as_fd()).map_err(std::io::Error::from)?)
    } else {
        None
    };
    let how = relay(stream, escape).await;
    drop(raw);
    how
}

async fn relay(stream: UnixStream, escape: u8) -> std::io::Result<Detach> {
    let (mut rd, mut wr) = stream.into_split();
    let mut input = stdin_reader();
    let mut out = std::io::stdout();
    let mut buf = vec![0u8; 8192];
    loop {
        tokio::select! {
            n = rd.read(&mut buf) => {
                let n = n?;
                if n == 0 {
                    return Ok(Detach::ConsoleClosed);
                }
                out.write_all(&buf[..n])?;
                out.flush()?;
            }
            chunk = input.recv() => {
                let Some(chunk) = chunk.filter(|c| !c.is_empty()) else {
                    return Ok(Detach::InputClosed);
                };
                if let Some(i) = chunk.iter().position(|b| *b == escape) {
                    wr.write_all(&chunk[..i]).await?;
                    return Ok(Detach::Escape);
                }
                wr.write_all(&chunk).await?;
            }
        }
    }
}
