//! A qemu-ga client on the VM's virtio-serial socket, and the one place that puts
//! deadlines on talking to the agent: with no agent in the guest nothing ever answers,
//! and the channel may still hold replies meant for an earlier client. So every
//! connection is synchronised first and every call runs under a deadline.
//!
//! Synchronisation uses `guest-sync-delimited`: the client sends 0xFF (which resets
//! the agent's JSON parser), then the request; the agent answers with 0xFF and the
//! reply, so everything before that byte (stale replies, half lines) is skipped. The
//! request is repeated with a new id every second until the newest id is echoed.
//! qapi's own `guest_sync` cannot do this: a stale reply completes the wrong request
//! and ends its stream. A call that timed out, or whose reply made no sense, may still
//! have a reply on its way, so the next call on that connection synchronises again.
//!
//! QEMU's socket chardev serves one client at a time, so connections are meant to be
//! short: connect, sync, a command or two, drop.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::time::Instant;

use super::AgentError;

/// Interval between sync requests while the agent stays silent.
const SYNC_RETRY: Duration = Duration::from_secs(1);
/// Longest reply line accepted. The longest real one is `guest-exec-status` of a
/// chatty command: qemu-ga keeps up to 16 MiB of each of stdout and stderr, which is
/// about 43 MiB once both are base64-encoded (our own cap applies after decoding).
const MAX_LINE: u64 = 48 * 1024 * 1024;
/// Resets the agent's parser and marks the start of a `guest-sync-delimited` reply.
const SENTINEL: u8 = 0xFF;

/// A synchronised connection to one guest agent.
#[derive(Debug)]
pub struct AgentClient {
    rd: BufReader<OwnedReadHalf>,
    wr: OwnedWriteHalf,
    sock: PathBuf,
    /// Deadline of a sync and of each call.
    timeout: Duration,
    /// A reply may be on its way that no request waits for: sync before the next one.
    unsynced: bool,
}

impl AgentClient {
    /// Connects to the agent socket `sock` and synchronises, giving the agent `timeout`
    /// for both; each call then gets `timeout` as well (see [`AgentClient::set_timeout`]).
    ///
    /// # Errors
    /// [`AgentError::Connect`] when the socket is missing (VM not running),
    /// [`AgentError::NoAgent`] when nothing answered in time (no agent in the guest, or
    /// not started yet).
    pub async fn connect(sock: &Path, timeout: Duration) -> Result<Self, AgentError> {
        let deadline = Instant::now() + timeout;
        let stream = tokio::time::timeout_at(deadline, UnixStream::connect(sock))
            .await
            .map_err(|_| AgentError::NoAgent { path: sock.into(), secs: timeout.as_secs() })?
            .map_err(|source| AgentError::Connect { path: sock.into(), source })?;
        let mut c = Self::new(stream, sock, timeout);
        c.sync(deadline).await?;
        Ok(c)
    }

    /// Connects to `sock` without synchronising: the first call does. For a paused
    /// VM's agent, connected before the VM resumes so that the agent, which looks for a
    /// new client only every 100 ms once the last one has gone, never sees it go.
    ///
    /// # Errors
    /// [`AgentError::Connect`] when the socket is missing; [`AgentError::NoAgent`] when
    /// the connection is not accepted within `timeout`.
    pub async fn attach(sock: &Path, timeout: Duration) -> Result<Self, AgentError> {
        let stream = tokio::time::timeout(timeout, UnixStream::connect(sock))
            .await
            .map_err(|_| AgentError::NoAgent { path: sock.into(), secs: timeout.as_secs() })?
            .map_err(|source| AgentError::Connect { path: sock.into(), source })?;
        Ok(Self::new(stream, sock, timeout))
    }

    /// `held` when there is one, else a new connection to `sock`, kept in `own` for the
    /// caller's scope (and dropped with it).
    ///
    /// # Errors
    /// See [`AgentClient::connect`].
    pub async fn held_or_connect<'a>(
        held: Option<&'a mut AgentClient>,
        own: &'a mut Option<AgentClient>,
        sock: &Path,
        timeout: Duration,
    ) -> Result<&'a mut AgentClient, AgentError> {
        match held {
            Some(c) => Ok(c),
            None => Ok(own.insert(Self::connect(sock, timeout).await?)),
        }
    }

    fn new(stream: UnixStream, sock: &Path, timeout: Duration) -> Self {
        let (rd, wr) = stream.into_split();
        Self { rd: BufReader::new(rd), wr, sock: sock.into(), timeout, unsynced: true }
    }

    /// Gives later calls `timeout` instead of the one given to [`AgentClient::connect`].
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Synchronises by `deadline`.
    async fn sync(&mut self, deadline: Instant) -> Result<(), AgentError> {
        let secs = self.timeout.as_secs();
        match tokio::time::timeout_at(deadline, self.sync_loop()).await {
            Err(_) => Err(AgentError::NoAgent { path: self.sock.clone(), secs }),
            Ok(r) => {
                self.unsynced = r.is_err();
                r
            }
        }
    }

    /// Sends sync requests, each [`SYNC_RETRY`] with a new id, until the newest id is
    /// echoed.
    async fn sync_loop(&mut self) -> Result<(), AgentError> {
        loop {
            let id = sync_id();
            let mut req = vec![SENTINEL];
            req.extend_from_slice(
                json!({"execute": "guest-sync-delimited", "arguments": {"id": id}}).to_string().as_bytes(),
            );
            req.push(b'\n');
            self.write(&req).await?;
            let retry = Instant::now() + SYNC_RETRY;
            while let Ok(line) = tokio::time::timeout_at(retry, self.read_delimited()).await {
                let reply: Value = serde_json::from_slice(&line?).unwrap_or_default();
                if reply["return"].as_u64() == Some(u64::from(id)) {
                    return Ok(());
                }
            }
        }
    }

    /// The next reply that follows a 0xFF, without anything before that byte.
    async fn read_delimited(&mut self) -> Result<Vec<u8>, AgentError> {
        loop {
            let mut line = self.read_line().await?;
            if let Some(i) = line.iter().rposition(|b| *b == SENTINEL) {
                line.drain(..=i);
                return Ok(line);
            }
        }
    }

    async fn read_line(&mut self) -> Result<Vec<u8>, AgentError> {
        let mut line = Vec::new();
        let read = (&mut self.rd).take(MAX_LINE).read_until(b'\n', &mut line).await;
        match read {
            Ok(0) => Err(AgentError::Closed { path: self.sock.clone() }),
            Ok(n) if n as u64 == MAX_LINE && line.last() != Some(&b'\n') => Err(AgentError::Io {
                path: self.sock.clone(),
                source: std::io::Error::other(format!("a reply is longer than {} MiB", MAX_LINE >> 20)),
            }),
            Ok(_) => Ok(line),
            Err(source) => Err(AgentError::Io { path: self.sock.clone(), source }),
        }
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), AgentError> {
        let written = self.wr.write_all(bytes).await;
        written.map_err(|source| AgentError::Io { path: self.sock.clone(), source })
    }

    /// Sends `command` by `deadline`, synchronising first when an earlier call left the
    /// stream out of step.
    async fn request(&mut self, command: &'static str, args: Value, deadline: Instant) -> Result<(), AgentError> {
        if self.unsynced {
            self.sync(deadline).await?;
        }
        let mut req = if args.is_null() {
            json!({ "execute": command }).to_string()
        } else {
            json!({ "execute": command, "arguments": args }).to_string()
        };
        req.push('\n');
        // Out of step until the reply is read (a command without a reply on success
        // may still answer with an error).
        self.unsynced = true;
        let secs = self.timeout.as_secs();
        tokio::time::timeout_at(deadline, self.write(req.as_bytes()))
            .await
            .map_err(|_| AgentError::Timeout { command, secs })?
    }

    /// Sends a command and returns its `return` value.
    ///
    /// # Errors
    /// [`AgentError::Command`] when the agent refused, [`AgentError::Timeout`] when it
    /// did not answer in time, [`AgentError::BadReply`], connection failures.
    pub async fn call(&mut self, command: &'static str, args: Value) -> Result<Value, AgentError> {
        let deadline = Instant::now() + self.timeout;
        self.request(command, args, deadline).await?;
        self.reply(command, deadline).await?
    }

    /// Sends `calls` at once and reads their replies in order: one round trip to the
    /// guest instead of one per command (the agent runs them one after another). Each
    /// call has its own result; a refusal of one does not stop the others.
    ///
    /// # Errors
    /// A failure that leaves the connection out of step (timeout, I/O, a reply that is
    /// not JSON); the connection then synchronises before its next call.
    pub async fn call_many(
        &mut self,
        calls: Vec<(&'static str, Value)>,
    ) -> Result<Vec<Result<Value, AgentError>>, AgentError> {
        let deadline = Instant::now() + self.timeout;
        let commands: Vec<&'static str> = calls.iter().map(|(c, _)| *c).collect();
        for (command, args) in calls {
            self.request(command, args, deadline).await?;
            // Out of step until the last reply is in; `request` must not sync between.
            self.unsynced = false;
        }
        let mut out = Vec::with_capacity(commands.len());
        for command in commands {
            let reply = self.reply(command, deadline).await;
            // In step only once every reply is read.
            self.unsynced = true;
            out.push(reply?);
        }
        self.unsynced = false;
        Ok(out)
    }

    /// Reads the reply to `command`: the outer error leaves the stream out of step, the
    /// inner one is the agent's answer.
    async fn reply(
        &mut self,
        command: &'static str,
        deadline: Instant,
    ) -> Result<Result<Value, AgentError>, AgentError> {
        let secs = self.timeout.as_secs();
        let line = tokio::time::timeout_at(deadline, self.read_line())
            .await
            .map_err(|_| AgentError::Timeout { command, secs })??;
        let v: Value =
            serde_json::from_slice(&line).map_err(|e| AgentError::BadReply { command, reason: e.to_string() })?;
        self.unsynced = false;
        if let Some(err) = v.get("error") {
            let desc = err.get("desc").and_then(Value::as_str).unwrap_or("unknown error");
            return Ok(Err(AgentError::Command { command, message: desc.to_owned() }));
        }
        Ok(v.get("return")
            .cloned()
            .ok_or_else(|| AgentError::BadReply { command, reason: format!("no return in {v}") }))
    }

    /// Like [`AgentClient::call`], decoding the reply (qapi's `qga` types fit many).
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
    /// The socket could not be written in time.
    pub async fn send(&mut self, command: &'static str, args: Value) -> Result<(), AgentError> {
        let deadline = Instant::now() + self.timeout;
        self.request(command, args, deadline).await
    }
}

/// A fresh sync id (the agent echoes it; a non-negative int).
fn sync_id() -> u32 {
    (uuid::Uuid::new_v4().as_u128() as u32) >> 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::UnixListener;

    /// A socket path in a fresh directory, with a listener on it.
    fn listen() -> (tempfile::TempDir, PathBuf, UnixListener) {
        let d = tempfile::tempdir().unwrap();
        let sock = d.path().join("qga.sock");
        let listener = UnixListener::bind(&sock).unwrap();
        (d, sock, listener)
    }

    /// Reads one request of a fake agent; returns its JSON (null once the client left).
    async fn request(rd: &mut BufReader<OwnedReadHalf>) -> Value {
        let mut line = Vec::new();
        rd.read_until(b'\n', &mut line).await.unwrap();
        let start = line.iter().rposition(|b| *b == SENTINEL).map_or(0, |i| i + 1);
        serde_json::from_slice(&line[start..]).unwrap_or_default()
    }

    /// The agent's answer to the sync request `req`.
    fn sync_reply(req: &Value) -> Vec<u8> {
        let mut reply = vec![SENTINEL];
        reply.extend_from_slice(format!("{{\"return\": {}}}\n", req["arguments"]["id"]).as_bytes());
        reply
    }

    #[tokio::test]
    async fn stale_replies_before_the_sentinel_are_skipped() {
        let (client, mut agent) = UnixStream::pair().unwrap();
        agent.write_all(b"{\"return\": 7}\n{\"ret\xff{\"return\": 42}\n").await.unwrap();
        let mut c = AgentClient::new(client, Path::new("qga.sock"), Duration::from_secs(1));
        assert_eq!(c.read_delimited().await.unwrap(), b"{\"return\": 42}\n");
    }

    #[tokio::test]
    async fn silent_socket_gives_no_agent_error_in_time() {
        let (_d, sock, _listener) = listen();
        let started = std::time::Instant::now();
        let e = AgentClient::connect(&sock, Duration::from_secs(1)).await.unwrap_err();
        let want = format!(
            "no guest agent answered in 1 s on {}; is qemu-ga installed and running in the guest?",
            sock.display()
        );
        assert_eq!((e.to_string(), started.elapsed() < Duration::from_secs(3)), (want, true));
    }

    #[tokio::test]
    async fn reply_to_an_old_sync_is_skipped() {
        let (_d, sock, listener) = listen();
        let agent = tokio::spawn(async move {
            let (rd, mut wr) = listener.accept().await.unwrap().0.into_split();
            let mut rd = BufReader::new(rd);
            let sync = request(&mut rd).await;
            wr.write_all(b"\xff{\"return\": 1}\n{\"return\": 2}\n").await.unwrap();
            wr.write_all(&sync_reply(&sync)).await.unwrap();
            let ping = request(&mut rd).await;
            wr.write_all(b"{\"return\": {}}\n").await.unwrap();
            ping
        });
        let mut c = AgentClient::connect(&sock, Duration::from_secs(5)).await.unwrap();
        let v = c.call("guest-ping", Value::Null).await.unwrap();
        assert_eq!((v, agent.await.unwrap()), (json!({}), json!({ "execute": "guest-ping" })));
    }

    /// What qemu-ga answers for a command that printed its whole output cap (16 MiB) on
    /// both stdout and stderr.
    #[tokio::test]
    async fn the_largest_exec_status_reply_is_read() {
        use base64::Engine as _;
        let out = base64::engine::general_purpose::STANDARD.encode(vec![b'x'; 16 << 20]);
        let reply = json!({ "return": { "exited": true, "exitcode": 0, "out-data": out, "err-data": out } });
        let (_d, sock, listener) = listen();
        tokio::spawn(async move {
            let (rd, mut wr) = listener.accept().await.unwrap().0.into_split();
            let mut rd = BufReader::new(rd);
            loop {
                let req = request(&mut rd).await;
                if req.is_null() {
                    return;
                }
                if req["execute"] == "guest-sync-delimited" {
                    wr.write_all(&sync_reply(&req)).await.unwrap();
                } else {
                    wr.write_all(format!("{reply}\n").as_bytes()).await.unwrap();
                }
            }
        });
        // The deadline only guards against a hang: decoding 43 MB of JSON in a debug
        // build on a loaded machine takes seconds, and this test is about size, not speed.
        let mut c = AgentClient::connect(&sock, Duration::from_secs(300)).await.unwrap();
        let v = c.call("guest-exec-status", json!({ "pid": 1 })).await.unwrap();
        let lens = (v["out-data"].as_str().map(str::len), v["err-data"].as_str().map(str::len));
        assert_eq!(lens, (Some(out.len()), Some(out.len())));
    }

    #[tokio::test]
    async fn a_late_reply_does_not_answer_the_next_call() {
        let (_d, sock, listener) = listen();
        tokio::spawn(async move {
            let (rd, mut wr) = listener.accept().await.unwrap().0.into_split();
            let mut rd = BufReader::new(rd);
            // Syncs are echoed; the first command is answered only once the next
            // request arrives (before it), later ones at once.
            let (mut first, mut late) = (true, None);
            loop {
                let req = request(&mut rd).await;
                if req.is_null() {
                    return;
                }
                if let Some(reply) = late.take() {
                    wr.write_all(reply).await.unwrap();
                }
                if req["execute"] == "guest-sync-delimited" {
                    wr.write_all(&sync_reply(&req)).await.unwrap();
                } else if std::mem::take(&mut first) {
                    late = Some(b"{\"return\": \"late\"}\n".as_slice());
                } else {
                    wr.write_all(b"{\"return\": \"fresh\"}\n").await.unwrap();
                }
            }
        });
        let mut c = AgentClient::connect(&sock, Duration::from_secs(5)).await.unwrap();
        c.set_timeout(Duration::from_millis(300));
        let first = c.call("guest-info", Value::Null).await.unwrap_err();
        c.set_timeout(Duration::from_secs(5));
        let second = c.call("guest-info", Value::Null).await.unwrap();
        assert!(matches!(first, AgentError::Timeout { .. }), "{first}");
        assert_eq!(second, json!("fresh"));
    }

    #[tokio::test]
    async fn calls_sent_at_once_get_their_own_replies_in_order() {
        let (_d, sock, listener) = listen();
        let agent = tokio::spawn(async move {
            let (rd, mut wr) = listener.accept().await.unwrap().0.into_split();
            let mut rd = BufReader::new(rd);
            let sync = request(&mut rd).await;
            wr.write_all(&sync_reply(&sync)).await.unwrap();
            // All three requests arrive before any reply goes out.
            let reqs = [request(&mut rd).await, request(&mut rd).await, request(&mut rd).await];
            wr.write_all(b"{\"return\": 7}\n{\"error\": {\"desc\": \"No such file\"}}\n{\"return\": 8}\n")
                .await
                .unwrap();
            // A later call is in step.
            let ping = request(&mut rd).await;
            wr.write_all(b"{\"return\": {}}\n").await.unwrap();
            (reqs.map(|r| r["execute"].as_str().unwrap().to_owned()), ping["execute"].clone())
        });
        let mut c = AgentClient::connect(&sock, Duration::from_secs(5)).await.unwrap();
        let calls = vec![
            ("guest-file-open", json!({ "path": "/a" })),
            ("guest-file-open", json!({ "path": "/b" })),
            ("guest-file-open", json!({ "path": "/c" })),
        ];
        let r = c.call_many(calls).await.unwrap();
        assert_eq!(r[0].as_ref().unwrap(), &json!(7));
        assert!(matches!(&r[1], Err(AgentError::Command { message, .. }) if message == "No such file"), "{r:?}");
        assert_eq!(r[2].as_ref().unwrap(), &json!(8));
        assert_eq!(c.call("guest-ping", Value::Null).await.unwrap(), json!({}));
        let (names, ping) = agent.await.unwrap();
        assert_eq!(
            (names, ping),
            (["guest-file-open".to_owned(), "guest-file-open".into(), "guest-file-open".into()], json!("guest-ping"))
        );
    }

    #[tokio::test]
    async fn an_attached_connection_syncs_on_its_first_call() {
        let (_d, sock, listener) = listen();
        let mut c = AgentClient::attach(&sock, Duration::from_secs(5)).await.unwrap();
        let agent = tokio::spawn(async move {
            let (rd, mut wr) = listener.accept().await.unwrap().0.into_split();
            let mut rd = BufReader::new(rd);
            // A reply left over from an earlier client, then the sync, then the call.
            wr.write_all(b"{\"return\": \"stale\"}\n").await.unwrap();
            let sync = request(&mut rd).await;
            wr.write_all(&sync_reply(&sync)).await.unwrap();
            let ping = request(&mut rd).await;
            wr.write_all(b"{\"return\": {}}\n").await.unwrap();
            (sync["execute"].clone(), ping["execute"].clone())
        });
        assert_eq!(c.call("guest-ping", Value::Null).await.unwrap(), json!({}));
        assert_eq!(agent.await.unwrap(), (json!("guest-sync-delimited"), json!("guest-ping")));
    }
}
