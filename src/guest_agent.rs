//! Client for the QEMU guest agent (qemu-ga) on a VM's `qga.sock`, built on qapi's QGA
//! support. Every connection is synchronised first and every command runs under a
//! timeout: with no agent in the guest nothing ever answers, and the channel may still
//! hold replies meant for an earlier client.
//!
//! Synchronisation uses `guest-sync-delimited` on the raw socket: the client sends
//! 0xFF (which resets the agent's JSON parser), then the request; the agent answers
//! with 0xFF and the reply, so everything before that byte (stale replies, half lines)
//! is skipped. The request is repeated with a new id every second until the newest one
//! is echoed; only then does qapi take over the stream. qapi's own `guest_sync` cannot
//! do this: a stale reply completes the wrong request and ends its stream.

use std::path::{Path, PathBuf};
use std::time::Duration;

use qapi::futures::{QapiService, QgaStreamTokio};
pub use qapi::qga;
use tokio::io::{AsyncReadExt, AsyncWriteExt, WriteHalf};
use tokio::net::UnixStream;

/// Default time a command may take.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Interval between repeated sync requests while the agent stays silent.
const SYNC_RETRY: Duration = Duration::from_secs(1);
/// Longest sync reply accepted (it is a few bytes).
const SYNC_LINE_MAX: usize = 4096;
/// Resets the agent's parser and marks the start of a `guest-sync-delimited` reply.
const SENTINEL: u8 = 0xFF;

type Service = QapiService<QgaStreamTokio<WriteHalf<UnixStream>>>;

/// Guest agent failures.
#[derive(Debug, thiserror::Error)]
pub enum GuestAgentError {
    #[error("cannot connect to the guest agent socket {path}")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the guest agent on {path} did not answer within {secs} s; is qemu-ga installed and running in the guest?")]
    NotAnswering { path: PathBuf, secs: u64 },
    #[error("lost the guest agent connection on {path} while synchronising")]
    SyncIo {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("guest agent command {command} timed out after {secs} s")]
    Timeout { command: &'static str, secs: u64 },
    #[error("guest agent command {command} failed: {message}")]
    Command { command: &'static str, message: String },
    #[error("guest agent command {command} lost its connection")]
    Io {
        command: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// A synchronised connection to one guest agent. The agent serves one client at a
/// time, so hold it only for the commands at hand.
pub struct GuestAgent {
    svc: Service,
    pump: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for GuestAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestAgent").finish_non_exhaustive()
    }
}

impl Drop for GuestAgent {
    fn drop(&mut self) {
        self.pump.abort();
    }
}

/// A fresh sync id (the agent echoes it; any non-negative int).
fn sync_id() -> u32 {
    let b = uuid::Uuid::new_v4().into_bytes();
    u32::from_le_bytes([b[0], b[1], b[2], b[3]]) >> 1
}

async fn send_sync(stream: &mut UnixStream, id: u32) -> std::io::Result<()> {
    let req = format!("{{\"execute\":\"guest-sync-delimited\",\"arguments\":{{\"id\":{id}}}}}\n");
    let mut buf = Vec::with_capacity(req.len() + 1);
    buf.push(SENTINEL);
    buf.extend_from_slice(req.as_bytes());
    stream.write_all(&buf).await
}

/// Reads one delimited reply: skips to the sentinel, then returns the line after it.
/// Reads byte by byte so nothing past the reply is taken from the stream.
async fn read_delimited(stream: &mut UnixStream) -> std::io::Result<Vec<u8>> {
    while stream.read_u8().await? != SENTINEL {}
    let mut line = Vec::new();
    loop {
        match stream.read_u8().await? {
            b'\n' => return Ok(line),
            SENTINEL => line.clear(),
            b if line.len() < SYNC_LINE_MAX => line.push(b),
            _ => line.clear(),
        }
    }
}

/// Sends sync requests until the newest id comes back.
async fn synchronise(stream: &mut UnixStream) -> std::io::Result<()> {
    let mut id = sync_id();
    send_sync(stream, id).await?;
    loop {
        match tokio::time::timeout(SYNC_RETRY, read_delimited(stream)).await {
            Ok(line) => {
                let reply: serde_json::Value = serde_json::from_slice(&line?).unwrap_or_default();
                if reply["return"].as_u64() == Some(u64::from(id)) {
                    return Ok(());
                }
            }
            Err(_) => {
                id = sync_id();
                send_sync(stream, id).await?;
            }
        }
    }
}

impl GuestAgent {
    /// Connects to the agent socket at `path` and synchronises within `timeout`.
    ///
    /// # Errors
    /// [`GuestAgentError::Connect`] (no socket, VM not running),
    /// [`GuestAgentError::NotAnswering`] (no agent in the guest, or not started yet).
    pub async fn connect(path: &Path, timeout: Duration) -> Result<Self, GuestAgentError> {
        let mut stream =
            UnixStream::connect(path).await.map_err(|source| GuestAgentError::Connect { path: path.into(), source })?;
        tokio::time::timeout(timeout, synchronise(&mut stream))
            .await
            .map_err(|_| GuestAgentError::NotAnswering { path: path.into(), secs: timeout.as_secs() })?
            .map_err(|source| GuestAgentError::SyncIo { path: path.into(), source })?;
        let (svc, events) = QgaStreamTokio::open(stream).into_parts();
        let pump = events.spawn_tokio();
        Ok(Self { svc, pump })
    }

    /// Runs one command with a timeout.
    ///
    /// # Errors
    /// [`GuestAgentError::Timeout`], [`GuestAgentError::Command`] (the agent refused)
    /// or [`GuestAgentError::Io`].
    pub async fn execute<C>(&self, cmd: C, timeout: Duration) -> Result<C::Ok, GuestAgentError>
    where
        C: qga::QgaCommand + qapi::Command,
    {
        let command = C::NAME;
        match tokio::time::timeout(timeout, self.svc.execute(cmd)).await {
            Err(_) => Err(GuestAgentError::Timeout { command, secs: timeout.as_secs() }),
            Ok(Ok(v)) => Ok(v),
            Ok(Err(qapi::ExecuteError::Qapi(e))) => Err(GuestAgentError::Command { command, message: e.to_string() }),
            Ok(Err(qapi::ExecuteError::Io(source))) => Err(GuestAgentError::Io { command, source }),
        }
    }

    /// `guest-ping`.
    ///
    /// # Errors
    /// See [`GuestAgent::execute`].
    pub async fn ping(&self) -> Result<(), GuestAgentError> {
        self.execute(qga::guest_ping {}, DEFAULT_TIMEOUT).await.map(drop)
    }

    /// `guest-network-get-interfaces`: the guest's interfaces with MACs and addresses.
    ///
    /// # Errors
    /// See [`GuestAgent::execute`].
    pub async fn network_interfaces(&self) -> Result<Vec<qga::GuestNetworkInterface>, GuestAgentError> {
        self.execute(qga::guest_network_get_interfaces {}, DEFAULT_TIMEOUT).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stale_replies_before_the_sentinel_are_skipped() {
        let (mut client, mut agent) = UnixStream::pair().unwrap();
        agent.write_all(b"{\"return\": 7}\n\xff{\"return\": 42}\n").await.unwrap();
        let line = read_delimited(&mut client).await.unwrap();
        assert_eq!(line, b"{\"return\": 42}");
    }

    #[tokio::test]
    async fn silent_agent_is_not_answering() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qga.sock");
        let _listener = tokio::net::UnixListener::bind(&path).unwrap();
        let err = GuestAgent::connect(&path, Duration::from_millis(300)).await.unwrap_err();
        assert!(matches!(err, GuestAgentError::NotAnswering { .. }), "{err}");
    }

    #[tokio::test]
    async fn agent_echoing_the_newest_id_is_synchronised() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qga.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        // A fake agent: first a stale reply, then it echoes each sync id it reads.
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            s.write_all(b"\xff{\"return\": 1}\n").await.unwrap();
            let mut buf = vec![0u8; 256];
            let n = s.read(&mut buf).await.unwrap();
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            let v: serde_json::Value = serde_json::from_str(text.trim_start_matches('\u{fffd}').trim()).unwrap();
            let mut reply = vec![SENTINEL];
            reply.extend_from_slice(format!("{{\"return\": {}}}\n", v["arguments"]["id"]).as_bytes());
            s.write_all(&reply).await.unwrap();
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        assert!(GuestAgent::connect(&path, Duration::from_secs(3)).await.is_ok());
    }
}
