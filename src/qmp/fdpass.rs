//! A plain, blocking QMP session that can hand QEMU a file descriptor (`getfd` with
//! the descriptor attached as `SCM_RIGHTS`), which the typed client cannot: a fork
//! gives QEMU the file its migration stream goes to, so QEMU writes the VM's state
//! straight into a file kvm-mcp opened, with no shell and no path QEMU opens itself.
//!
//! Commands are JSON lines; events that arrive between a command and its answer are
//! skipped. Every read has the session's timeout, and a reply line is capped.

use std::io::{BufRead, BufReader, Read as _, Write as _};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
use serde_json::{Value, json};

use super::QmpError;

/// The longest reply line read (a `query-block` of many disks is a few KiB).
const MAX_LINE: u64 = 1 << 20;

/// A negotiated blocking QMP session.
pub struct FdSession {
    out: UnixStream,
    input: BufReader<std::io::Take<UnixStream>>,
}

fn io(command: &'static str) -> impl FnOnce(std::io::Error) -> QmpError {
    move |source| QmpError::Io { command, source }
}

impl FdSession {
    /// Connects to the monitor at `path`, reads the greeting and negotiates.
    ///
    /// # Errors
    /// [`QmpError::Connect`] and the errors of [`FdSession::execute`].
    pub fn connect(path: &Path, timeout: Duration) -> Result<Self, QmpError> {
        let connect = |source| QmpError::Connect { path: path.into(), source };
        let out = UnixStream::connect(path).map_err(connect)?;
        out.set_read_timeout(Some(timeout)).map_err(connect)?;
        out.set_write_timeout(Some(timeout)).map_err(connect)?;
        let input = BufReader::new(out.try_clone().map_err(connect)?.take(MAX_LINE));
        let mut s = Self { out, input };
        let greeting = s.line("greeting")?;
        if greeting.get("QMP").is_none() {
            return Err(QmpError::Command { command: "greeting", message: "the socket is not a QMP monitor".into() });
        }
        s.execute("qmp_capabilities", &json!({}))?;
        Ok(s)
    }

    /// Sets how long each read and write may take from now on.
    ///
    /// # Errors
    /// The socket refused the option.
    pub fn set_timeout(&self, timeout: Duration) -> Result<(), QmpError> {
        self.out.set_read_timeout(Some(timeout)).map_err(io("set timeout"))?;
        self.out.set_write_timeout(Some(timeout)).map_err(io("set timeout"))
    }

    fn line(&mut self, command: &'static str) -> Result<Value, QmpError> {
        let mut buf = String::new();
        self.input.get_mut().set_limit(MAX_LINE);
        match self.input.read_line(&mut buf) {
            Ok(0) => Err(QmpError::Io { command, source: std::io::ErrorKind::UnexpectedEof.into() }),
            Ok(_) if !buf.ends_with('\n') => {
                Err(QmpError::Command { command, message: format!("a reply longer than {MAX_LINE} bytes") })
            }
            Ok(_) => serde_json::from_str(&buf)
                .map_err(|e| QmpError::Command { command, message: format!("a reply that is not JSON: {e}") }),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                Err(QmpError::Timeout { command, secs: 0 })
            }
            Err(source) => Err(QmpError::Io { command, source }),
        }
    }

    fn answer(&mut self, command: &'static str) -> Result<Value, QmpError> {
        loop {
            let mut v = self.line(command)?;
            if let Some(r) = v.get_mut("return") {
                return Ok(r.take());
            }
            if let Some(e) = v.get("error") {
                let message = e["desc"].as_str().unwrap_or("QEMU refused the command").to_owned();
                return Err(QmpError::Command { command, message });
            }
            // An event: not the answer.
        }
    }

    /// Runs `command` with `args` and returns its `return` value.
    ///
    /// # Errors
    /// [`QmpError::Command`] when QEMU refuses, [`QmpError::Timeout`], [`QmpError::Io`].
    pub fn execute(&mut self, command: &'static str, args: &Value) -> Result<Value, QmpError> {
        let mut msg = serde_json::to_vec(&json!({ "execute": command, "arguments": args })).unwrap_or_default();
        msg.push(b'\n');
        self.out.write_all(&msg).map_err(io(command))?;
        self.answer(command)
    }

    /// Hands `fd` to QEMU under `name` (`getfd`), for a later `fd:NAME` argument.
    ///
    /// # Errors
    /// As [`FdSession::execute`].
    pub fn send_fd(&mut self, name: &str, fd: BorrowedFd<'_>) -> Result<(), QmpError> {
        let command = "getfd";
        let mut msg =
            serde_json::to_vec(&json!({ "execute": command, "arguments": { "fdname": name } })).unwrap_or_default();
        msg.push(b'\n');
        let fds = [fd.as_raw_fd()];
        let cmsg = [ControlMessage::ScmRights(&fds)];
        let iov = [std::io::IoSlice::new(&msg)];
        let sent = sendmsg::<()>(self.out.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None)
            .map_err(|e| QmpError::Io { command, source: e.into() })?;
        if sent < msg.len() {
            self.out.write_all(&msg[sent..]).map_err(io(command))?;
        }
        self.answer(command).map(drop)
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;

    /// A monitor that greets, answers `qmp_capabilities`, sends an event before each
    /// answer, and reports whether `getfd` came with a descriptor.
    fn monitor(path: &Path) -> std::thread::JoinHandle<()> {
        let listener = std::os::unix::net::UnixListener::bind(path).unwrap();
        std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            let mut w = s.try_clone().unwrap();
            w.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n").unwrap();
            loop {
                let mut buf = [0u8; 4096];
                let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
                let mut iov = [std::io::IoSliceMut::new(&mut buf)];
                let Ok(m) =
                    nix::sys::socket::recvmsg::<()>(s.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::empty())
                else {
                    return;
                };
                let got_fd = m.cmsgs().is_ok_and(|mut c| c.next().is_some());
                let n = m.bytes;
                if n == 0 {
                    return;
                }
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                w.write_all(b"{\"event\": \"STOP\", \"data\": {}}\n").unwrap();
                let reply = if text.contains("getfd") && !got_fd {
                    "{\"error\": {\"class\": \"GenericError\", \"desc\": \"No file descriptor supplied via SCM_RIGHTS\"}}\n"
                } else if text.contains("query-status") {
                    "{\"return\": {\"status\": \"paused\", \"running\": false}}\n"
                } else {
                    "{\"return\": {}}\n"
                };
                w.write_all(reply.as_bytes()).unwrap();
            }
        })
    }

    #[test]
    fn a_descriptor_reaches_the_monitor_and_events_are_skipped() {
        let d = tempfile::tempdir().unwrap();
        let sock = d.path().join("qmp.sock");
        let _m = monitor(&sock);
        let mut s = FdSession::connect(&sock, Duration::from_secs(30)).unwrap();
        let f = std::fs::File::create(d.path().join("state")).unwrap();

        s.send_fd("state", f.as_fd()).expect("getfd with a descriptor is accepted");
        let status = s.execute("query-status", &json!({})).unwrap();

        assert_eq!(status["status"], "paused");
    }

    #[test]
    fn a_refused_command_is_an_error_with_qemus_words() {
        let d = tempfile::tempdir().unwrap();
        let sock = d.path().join("qmp.sock");
        let _m = monitor(&sock);
        let mut s = FdSession::connect(&sock, Duration::from_secs(30)).unwrap();

        let e = s.execute("getfd", &json!({ "fdname": "x" })).unwrap_err();

        assert!(e.to_string().contains("SCM_RIGHTS"), "{e}");
    }
}
