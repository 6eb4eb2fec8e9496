//! Typed QMP client on `qapi`/`qapi-qmp`: connect to a monitor socket, negotiate, run
//! commands with a per-command timeout, and optionally receive events. The event stream
//! is always polled by a task (qapi completes command futures only while it is), and it
//! ends when QEMU closes the socket, which doubles as the "QEMU went away" signal.

pub mod extra;
pub mod fdpass;

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use qapi::futures::{QapiService, QmpStreamTokio};
pub use qapi::qmp;
use tokio::io::WriteHalf;
use tokio::net::UnixStream;
use tokio::sync::mpsc;

/// Default time a command may take.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

type Service = QapiService<QmpStreamTokio<WriteHalf<UnixStream>>>;

/// QMP failures.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("cannot connect to QMP socket {path}")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("QMP socket {path} did not greet within {secs} s")]
    ConnectTimeout { path: PathBuf, secs: u64 },
    #[error("QMP command {command} timed out after {secs} s")]
    Timeout { command: &'static str, secs: u64 },
    #[error("QMP command {command} failed: {message}")]
    Command { command: &'static str, message: String },
    #[error("QMP command {command} lost its connection")]
    Io {
        command: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("QMP command {command} not sent: an earlier command on this connection never got its answer; reconnect")]
    Broken { command: &'static str },
}

/// A negotiated QMP connection.
///
/// Commands carry no ids (qapi-qmp 0.15 never negotiates `oob`), so a command whose
/// answer was not awaited (it timed out, or the call was cancelled) leaves the
/// connection unusable: qapi would panic on the next command. Such a connection
/// refuses further commands with [`QmpError::Broken`] instead.
pub struct Qmp {
    svc: Service,
    pump: tokio::task::JoinHandle<()>,
    broken: std::sync::atomic::AtomicBool,
}

/// Marks the connection broken unless the command's answer arrived.
struct Awaited<'a> {
    broken: &'a std::sync::atomic::AtomicBool,
    answered: bool,
}

impl Drop for Awaited<'_> {
    fn drop(&mut self) {
        if !self.answered {
            self.broken.store(true, std::sync::atomic::Ordering::Release);
        }
    }
}

impl std::fmt::Debug for Qmp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qmp").finish_non_exhaustive()
    }
}

impl Drop for Qmp {
    fn drop(&mut self) {
        self.pump.abort();
    }
}

impl Qmp {
    /// Connects and negotiates; events are discarded.
    ///
    /// # Errors
    /// [`QmpError::Connect`] or [`QmpError::ConnectTimeout`].
    pub async fn connect(path: &Path, timeout: Duration) -> Result<Self, QmpError> {
        Self::open(path, timeout, None).await
    }

    /// Connects and negotiates; events arrive on the receiver, which closes at EOF.
    ///
    /// # Errors
    /// See [`Qmp::connect`].
    pub async fn connect_with_events(
        path: &Path,
        timeout: Duration,
    ) -> Result<(Self, mpsc::UnboundedReceiver<qmp::Event>), QmpError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let q = Self::open(path, timeout, Some(tx)).await?;
        Ok((q, rx))
    }

    async fn open(
        path: &Path,
        timeout: Duration,
        tx: Option<mpsc::UnboundedSender<qmp::Event>>,
    ) -> Result<Self, QmpError> {
        let fut = async {
            let neg = QmpStreamTokio::open_uds(path).await?;
            neg.negotiate().await
        };
        let stream = tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| QmpError::ConnectTimeout { path: path.into(), secs: timeout.as_secs() })?
            .map_err(|source| QmpError::Connect { path: path.into(), source })?;
        let (svc, mut events) = stream.into_parts();
        let pump = tokio::spawn(async move {
            while let Some(ev) = events.next().await {
                match (ev, &tx) {
                    (Ok(e), Some(tx)) => {
                        let _ = tx.send(e);
                    }
                    (Ok(_), None) => {}
                    (Err(e), _) => {
                        tracing::debug!(error = %e, "QMP stream ended with an error");
                        break;
                    }
                }
            }
        });
        Ok(Self { svc, pump, broken: std::sync::atomic::AtomicBool::new(false) })
    }

    /// Runs one command with a timeout.
    ///
    /// # Errors
    /// [`QmpError::Timeout`], [`QmpError::Command`] (QEMU refused) or [`QmpError::Io`].
    pub async fn execute<C>(&self, cmd: C, timeout: Duration) -> Result<C::Ok, QmpError>
    where
        C: qapi::qmp::QmpCommand + qapi::Command,
    {
        let name = C::NAME;
        if self.broken.load(std::sync::atomic::Ordering::Acquire) {
            return Err(QmpError::Broken { command: name });
        }
        let started = std::time::Instant::now();
        let mut awaited = Awaited { broken: &self.broken, answered: false };
        let res = tokio::time::timeout(timeout, async {
            let r = self.svc.execute(cmd).await;
            awaited.answered = true;
            r
        })
        .await;
        drop(awaited);
        crate::metrics::observe_qmp(name, started.elapsed());
        match res {
            Err(_) => Err(QmpError::Timeout { command: name, secs: timeout.as_secs() }),
            Ok(Ok(v)) => Ok(v),
            Ok(Err(qapi::ExecuteError::Qapi(e))) => Err(QmpError::Command { command: name, message: e.to_string() }),
            Ok(Err(qapi::ExecuteError::Io(source))) => Err(QmpError::Io { command: name, source }),
        }
    }

    /// `query-status` → (running, status name).
    ///
    /// # Errors
    /// See [`Qmp::execute`].
    pub async fn status(&self) -> Result<qmp::StatusInfo, QmpError> {
        self.execute(qmp::query_status {}, DEFAULT_TIMEOUT).await
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

    use super::*;

    /// A monitor that greets, accepts capabilities, and never answers anything else.
    async fn silent_monitor(path: &Path) {
        let listener = tokio::net::UnixListener::bind(path).unwrap();
        tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let (rd, mut wr) = s.into_split();
            let greeting = r#"{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": ""}, "capabilities": []}}"#;
            wr.write_all(format!("{greeting}\n").as_bytes()).await.unwrap();
            let mut lines = BufReader::new(rd).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains("qmp_capabilities") {
                    wr.write_all(b"{\"return\": {}}\n").await.unwrap();
                }
            }
        });
    }

    #[tokio::test]
    async fn a_command_after_a_timed_out_one_is_refused_not_a_panic() {
        let d = tempfile::tempdir().unwrap();
        let sock = d.path().join("qmp.sock");
        silent_monitor(&sock).await;
        let q = Qmp::connect(&sock, Duration::from_secs(30)).await.unwrap();
        let first = q.execute(qmp::query_status {}, Duration::from_millis(100)).await;

        let second = q.execute(qmp::query_status {}, Duration::from_millis(100)).await;

        assert!(
            matches!((first, second), (Err(QmpError::Timeout { .. }), Err(QmpError::Broken { .. }))),
            "a timed-out command must leave the connection refusing further commands"
        );
    }
}
