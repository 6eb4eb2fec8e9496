//! A qemu-ga client on the VM's virtio-serial socket. Every connection starts with
//! `guest-sync-delimited` (re-sent each second until answered): the agent answers with
//! a 0xFF byte and the id, and everything before that — replies meant for an earlier
//! client, half-read lines — is skipped. Every read is under a timeout, so a guest
//! without an agent gives [`AgentError::NoAgent`], never a hang. After a timeout the
//! connection is dropped, since its reply stream can no longer be trusted.
//!
//! QEMU's socket chardev serves one client at a time, so connections are meant to be
//! short: connect, sync, a command or two, drop.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

use super::AgentError;

/// Interval between guest-sync attempts while the agent is silent.
const SYNC_RETRY: Duration = Duration::from_secs(1);
/// Longest reply line accepted (file reads return up to 48 KiB base64 per call).
const MAX_LINE: usize = 8 * 1024 * 1024;

/// A synced connection to the guest agent.
#[derive(Debug)]
pub struct AgentClient {
    rd: BufReader<OwnedReadHalf>,
    wr: OwnedWriteHalf,
    timeout: Duration,
    sock: PathBuf,
}

impl AgentClient {
    /// Connects and syncs, giving the agent `timeout` to answer.
    ///
    /// # Errors
    /// [`AgentError::Connect`] when the socket is missing, [`AgentError::NoAgent`] when
    /// nothing answered in time.
    pub async fn connect(sock: &Path, timeout: Duration) -> Result<Self, AgentError> {
        let stream = tokio::time::timeout(timeout, UnixStream::connect(sock))
            .await
            .map_err(|_| AgentError::NoAgent { secs: timeout.as_secs() })?
            .map_err(|source| AgentError::Connect { path: sock.into(), source })?;
        let (rd, wr) = stream.into_split();
        let mut c = Self { rd: BufReader::new(rd), wr, timeout, sock: sock.into() };
        c.sync().await?;
        Ok(c)
    }

    /// The socket this client talks to.
    #[must_use]
    pub fn socket(&self) -> &Path {
        &self.sock
    }

    async fn sync(&mut self) -> Result<(), AgentError> {
        let deadline = Instant::now() + self.timeout;
        let no_agent = AgentError::NoAgent { secs: self.timeout.as_secs() };
        loop {
            let id = u64::from(uuid::Uuid::new_v4().as_u128() as u32);
            let mut req = vec![0xffu8];
            req.extend_from_slice(
                json!({"execute": "guest-sync-delimited", "arguments": {"id": id}}).to_string().as_bytes(),
            );
            req.push(b'\n');
            self.wr.write_all(&req).await.map_err(AgentError::Io)?;
            let until = deadline.min(Instant::now() + SYNC_RETRY);
            loop {
                let left = until.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                match tokio::time::timeout(left, self.read_line()).await {
                    Err(_) => break,
                    Ok(Err(e)) => return Err(e),
                    Ok(Ok(line)) => {
                        if let Ok(v) = serde_json::from_slice::<Value>(after_delimiter(&line))
                            && v.get("return").and_then(Value::as_u64) == Some(id)
                        {
                            return Ok(());
                        }
                    }
                }
            }
            if Instant::now() >= deadline {
                return Err(no_agent);
            }
        }
    }

    async fn read_line(&mut self) -> Result<Vec<u8>, AgentError> {
        let mut line = Vec::new();
        let n = (&mut self.rd).take(MAX_LINE as u64).read_until(b'\n', &mut line).await.map_err(AgentError::Io)?;
        if n == 0 {
            return Err(AgentError::Closed);
        }
        Ok(line)
    }

    /// Sends a command and returns its `return` value.
    ///
    /// # Errors
    /// [`AgentError::Command`] when the agent refused, [`AgentError::Timeout`] when it
    /// did not answer in time.
    pub async fn call(&mut self, command: &'static str, args: Value) -> Result<Value, AgentError> {
        self.send(command, args).await?;
        let line = tokio::time::timeout(self.timeout, self.read_line())
            .await
            .map_err(|_| AgentError::Timeout { command, secs: self.timeout.as_secs() })??;
        let v: Value = serde_json::from_slice(after_delimiter(&line))
            .map_err(|e| AgentError::BadReply { command, reason: e.to_string() })?;
        if let Some(err) = v.get("error") {
            let desc = err.get("desc").and_then(Value::as_str).unwrap_or("unknown error");
            return Err(AgentError::Command { command, message: desc.to_owned() });
        }
        v.get("return").cloned().ok_or_else(|| AgentError::BadReply { command, reason: format!("no return in {v}") })
    }

    /// Like [`AgentClient::call`], decoding the reply.
    ///
    /// # Errors
    /// See [`AgentClient::call`]; [`AgentError::BadReply`] when the reply has another shape.
    pub async fn call_as<T: DeserializeOwned>(&mut self, command: &'static str, args: Value) -> Result<T, AgentError> {
        let v = self.call(command, args).await?;
        serde_json::from_value(v).map_err(|e| AgentError::BadReply { command, reason: e.to_string() })
    }

    /// Sends a command that has no reply on success (`guest-shutdown`).
    ///
    /// # Errors
    /// The socket could not be written.
    pub async fn send(&mut self, command: &'static str, args: Value) -> Result<(), AgentError> {
        let mut req = if args.is_null() {
            json!({ "execute": command }).to_string()
        } else {
            json!({ "execute": command, "arguments": args }).to_string()
        };
        req.push('\n');
        tokio::time::timeout(self.timeout, self.wr.write_all(req.as_bytes()))
            .await
            .map_err(|_| AgentError::Timeout { command, secs: self.timeout.as_secs() })?
            .map_err(AgentError::Io)
    }
}

/// The part of a line after the last 0xFF delimiter (the whole line when there is none).
fn after_delimiter(line: &[u8]) -> &[u8] {
    line.iter().rposition(|b| *b == 0xff).map_or(line, |i| &line[i + 1..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delimiter_drops_stale_bytes() {
        assert_eq!(after_delimiter(b"{\"retu\xff{\"return\": 7}\n"), b"{\"return\": 7}\n");
    }

    #[tokio::test]
    async fn silent_socket_gives_no_agent_error_in_time() {
        let d = tempfile::tempdir().unwrap();
        let sock = d.path().join("qga.sock");
        let _listener = tokio::net::UnixListener::bind(&sock).unwrap();
        let started = Instant::now();
        let e = AgentClient::connect(&sock, Duration::from_secs(1)).await.unwrap_err();
        assert_eq!(
            (e.to_string(), started.elapsed() < Duration::from_secs(3)),
            ("no guest agent answered in 1 s; is qemu-ga installed and running in the guest?".into(), true)
        );
    }

    #[tokio::test]
    async fn reply_to_an_old_sync_is_skipped() {
        let d = tempfile::tempdir().unwrap();
        let sock = d.path().join("qga.sock");
        let listener = tokio::net::UnixListener::bind(&sock).unwrap();
        let agent = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let (rd, mut wr) = s.into_split();
            let mut rd = BufReader::new(rd);
            let mut line = Vec::new();
            rd.read_until(b'\n', &mut line).await.unwrap();
            let v: Value = serde_json::from_slice(after_delimiter(&line)).unwrap();
            let id = v["arguments"]["id"].as_u64().unwrap();
            wr.write_all(b"{\"return\": 1}\n\xff").await.unwrap();
            wr.write_all(format!("{{\"return\": {id}}}\n").as_bytes()).await.unwrap();
            line.clear();
            rd.read_until(b'\n', &mut line).await.unwrap();
            wr.write_all(b"{\"return\": {}}\n").await.unwrap();
        });
        let mut c = AgentClient::connect(&sock, Duration::from_secs(5)).await.unwrap();
        let v = c.call("guest-ping", Value::Null).await.unwrap();
        agent.await.unwrap();
        assert_eq!(v, json!({}));
    }
}
