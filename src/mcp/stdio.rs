//! The stdio transport: one JSON-RPC message per line on stdin and stdout, like
//! rmcp's, with the edges a caller can rely on:
//!
//! - a line that is not JSON gets `-32700` with `"id": null`; JSON that is not a
//!   message gets `-32600` (with its `id` when it has one); a batch (JSON array) gets
//!   `-32600` too. Nothing is dropped in silence, and serving goes on.
//! - a line longer than [`MAX_LINE`] is read to its end without being kept and
//!   answered with `-32600` (with its `id` when the line's start names one).
//! - a first message that is a request other than `initialize`, without the 2026
//!   `_meta` fields, starts a session without handshake at protocol 2025-11-25: the
//!   transport plays `initialize` for it (that answer is not written), so
//!   `echo '{…"method":"tools/call"…}' | kvm-mcp serve` prints the answer and exits 0.
//! - at the end of input, requests already read are answered before the session ends.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use rmcp::RoleServer;
use rmcp::model::{
    CallToolRequestParams, ClientJsonRpcMessage, ClientNotification, ClientRequest, JsonRpcMessage, RequestId,
    ServerJsonRpcMessage,
};
use rmcp::transport::Transport;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::{Mutex, watch};
use tokio::task::JoinSet;

use super::params::clip_quoted;

/// The longest line (one message) read; longer ones are answered with an error.
pub const MAX_LINE: usize = 16 << 20;

/// How much of an over-long line is kept to find its `id`.
const ID_PREFIX: usize = 4096;

/// The id of the `initialize` the transport plays for a session without handshake.
const IMPLICIT_INIT_ID: &str = "kvm-mcp-implicit-initialize";

/// The protocol revision of a session without handshake.
const IMPLICIT_VERSION: &str = "2025-11-25";

/// Requests of the protocol; one of these that does not parse has bad params.
const STANDARD_REQUESTS: &[&str] = &[
    "initialize",
    "ping",
    "server/discover",
    "tools/list",
    "tools/call",
    "resources/list",
    "resources/read",
    "resources/templates/list",
    "resources/subscribe",
    "resources/unsubscribe",
    "prompts/list",
    "prompts/get",
    "logging/setLevel",
    "completion/complete",
    "subscriptions/listen",
];

/// The `_meta` key a 2026-07-28 request carries instead of a handshake.
const META_VERSION_KEY: &str = "io.modelcontextprotocol/protocolVersion";

type Writer<W> = Arc<Mutex<Option<W>>>;

/// Newline-delimited JSON-RPC over a reader and a writer (stdin and stdout).
pub struct Stdio<R, W> {
    reader: BufReader<R>,
    line: Vec<u8>,
    max_line: usize,
    /// Over-long line being skipped: its first bytes and its length so far.
    skipping: Option<(Vec<u8>, usize)>,
    out: Writer<W>,
    /// Error replies written from `receive`, awaited before closing.
    replies: JoinSet<()>,
    queue: VecDeque<ClientJsonRpcMessage>,
    first: bool,
    eof: bool,
    /// The played `initialize` whose answer is not written.
    hidden: Option<String>,
    /// Requests read and not yet answered (ids as JSON text).
    pending: Arc<watch::Sender<HashSet<String>>>,
}

impl<R: AsyncRead + Unpin + Send, W: AsyncWrite + Unpin + Send + 'static> Stdio<R, W> {
    /// A transport reading `reader` and writing `writer`.
    pub fn new(reader: R, writer: W) -> Self {
        Self {
            reader: BufReader::new(reader),
            line: Vec::new(),
            max_line: MAX_LINE,
            skipping: None,
            out: Arc::new(Mutex::new(Some(writer))),
            replies: JoinSet::new(),
            queue: VecDeque::new(),
            first: true,
            eof: false,
            hidden: None,
            pending: Arc::new(watch::channel(HashSet::new()).0),
        }
    }

    /// Sets the longest line accepted (tests use a small one).
    #[must_use]
    pub fn with_max_line(mut self, max_line: usize) -> Self {
        self.max_line = max_line;
        self
    }

    /// Writes `reply` without holding up `receive` (which may be cancelled mid-way).
    fn reply(&mut self, reply: Value) {
        let out = self.out.clone();
        self.replies.spawn(async move {
            let _ = write_line(&out, &reply).await;
        });
    }

    fn error_reply(&mut self, id: Option<Value>, code: i64, message: String) {
        tracing::debug!(code, %message, "answering an unusable message");
        self.reply(
            json!({ "jsonrpc": "2.0", "id": id.unwrap_or(Value::Null), "error": { "code": code, "message": message } }),
        );
    }

    /// Reads the next line into `self.line`; `Ok(None)` at the end of input.
    /// Cancel-safe: a partial line stays in `self.line` for the next call.
    async fn read_line(&mut self) -> std::io::Result<Option<Line>> {
        loop {
            let available = self.reader.fill_buf().await?;
            if available.is_empty() {
                return Ok(None);
            }
            let newline = available.iter().position(|b| *b == b'\n');
            let take = newline.map_or(available.len(), |i| i + 1);
            if let Some((prefix, len)) = &mut self.skipping {
                let room = ID_PREFIX.saturating_sub(prefix.len()).min(take);
                prefix.extend_from_slice(&available[..room]);
                *len += take;
            } else if self.line.len() + take > self.max_line {
                let len = self.line.len() + take;
                let mut prefix = std::mem::take(&mut self.line);
                prefix.truncate(ID_PREFIX);
                let room = ID_PREFIX.saturating_sub(prefix.len()).min(take);
                prefix.extend_from_slice(&available[..room]);
                self.skipping = Some((prefix, len));
            } else {
                self.line.extend_from_slice(&available[..take]);
            }
            self.reader.consume(take);
            if newline.is_some() {
                return Ok(Some(match self.skipping.take() {
                    Some((prefix, len)) => Line::TooLong { prefix, len },
                    None => Line::Whole,
                }));
            }
        }
    }

    /// Turns one whole line into a message, or answers it.
    fn handle_line(&mut self) -> Option<ClientJsonRpcMessage> {
        let line = std::mem::take(&mut self.line);
        let text = line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&line);
        if text.iter().all(u8::is_ascii_whitespace) {
            return None;
        }
        let value: Value = match serde_json::from_slice(text) {
            Ok(v) => v,
            Err(e) => {
                self.error_reply(None, -32700, format!("Parse error: the line is not JSON ({e})"));
                return None;
            }
        };
        let Value::Object(object) = &value else {
            let message = if value.is_array() {
                "Invalid Request: batches are not supported; send one message per line"
            } else {
                "Invalid Request: a message is a JSON object"
            };
            self.error_reply(None, -32600, message.into());
            return None;
        };
        let id = object.get("id").filter(|id| id.is_string() || id.is_number()).cloned();
        let method = object.get("method").and_then(Value::as_str).map(str::to_owned);
        let first = std::mem::replace(&mut self.first, false);
        let implicit = first
            && method.as_deref().is_some_and(|m| !matches!(m, "initialize" | "ping" | "server/discover"))
            && id.is_some()
            && value.pointer("/params/_meta").and_then(|m| m.get(META_VERSION_KEY)).is_none();
        let message = match serde_json::from_value::<ClientJsonRpcMessage>(value) {
            Ok(m) => m,
            Err(e) => {
                match (method, id) {
                    // A notification gets no answer, even a broken one.
                    (Some(_), None) | (None, _) => {}
                    (Some(m), Some(id)) => {
                        let e = clip_quoted(&e.to_string());
                        self.error_reply(Some(id), -32602, format!("Invalid params for {m}: {e}"));
                    }
                }
                return None;
            }
        };
        if let JsonRpcMessage::Request(r) = &message
            && let ClientRequest::CustomRequest(c) = &r.request
            && STANDARD_REQUESTS.contains(&c.method.as_str())
        {
            // A known method whose params did not fit: rmcp would call it unknown.
            let why = match c.method.as_str() {
                "tools/call" => {
                    match serde_json::from_value::<CallToolRequestParams>(c.params.clone().unwrap_or_else(|| json!({})))
                    {
                        Err(e) => clip_quoted(&e.to_string()),
                        Ok(_) => "malformed params".into(),
                    }
                }
                _ => "`params` is missing or malformed".into(),
            };
            let id = serde_json::to_value(&r.id).ok();
            self.error_reply(id, -32602, format!("Invalid params for {}: {why}", c.method));
            return None;
        }
        self.track(&message);
        if implicit { self.start_without_handshake(message) } else { Some(message) }
    }

    /// Queues `request` behind a played `initialize` and `notifications/initialized`.
    fn start_without_handshake(&mut self, request: ClientJsonRpcMessage) -> Option<ClientJsonRpcMessage> {
        tracing::info!("first message is a request without initialize: serving it at protocol {IMPLICIT_VERSION}");
        let init = json!({
            "jsonrpc": "2.0", "id": IMPLICIT_INIT_ID, "method": "initialize",
            "params": { "protocolVersion": IMPLICIT_VERSION, "capabilities": {},
                        "clientInfo": { "name": "client without handshake", "version": "0" } }
        });
        let initialized = json!({ "jsonrpc": "2.0", "method": "notifications/initialized" });
        let init = serde_json::from_value(init).ok()?;
        let initialized = serde_json::from_value(initialized).ok()?;
        self.hidden = Some(json!(IMPLICIT_INIT_ID).to_string());
        self.queue.push_back(initialized);
        self.queue.push_back(request);
        Some(init)
    }

    /// Keeps the set of unanswered requests.
    fn track(&self, message: &ClientJsonRpcMessage) {
        match message {
            JsonRpcMessage::Request(r) => {
                let id = key(&r.id);
                self.pending.send_modify(|p| {
                    p.insert(id);
                });
            }
            JsonRpcMessage::Notification(n) => {
                if let ClientNotification::CancelledNotification(c) = &n.notification
                    && let Some(id) = &c.params.request_id
                {
                    let id = key(id);
                    self.pending.send_modify(|p| {
                        p.remove(&id);
                    });
                }
            }
            _ => {}
        }
    }
}

enum Line {
    Whole,
    TooLong { prefix: Vec<u8>, len: usize },
}

fn key(id: &RequestId) -> String {
    serde_json::to_string(id).unwrap_or_default()
}

async fn write_line<W: AsyncWrite + Unpin>(
    out: &Mutex<Option<W>>,
    message: &impl serde::Serialize,
) -> std::io::Result<()> {
    let mut bytes = serde_json::to_vec(message).map_err(std::io::Error::other)?;
    bytes.push(b'\n');
    let mut out = out.lock().await;
    let w = out.as_mut().ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotConnected, "output is closed"))?;
    w.write_all(&bytes).await?;
    w.flush().await
}

impl<R, W> Transport<RoleServer> for Stdio<R, W>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    type Error = std::io::Error;

    fn send(&mut self, item: ServerJsonRpcMessage) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static {
        let answered = match &item {
            JsonRpcMessage::Response(r) => Some(key(&r.id)),
            JsonRpcMessage::Error(e) => e.id.as_ref().map(key),
            _ => None,
        };
        let hide = answered.is_some() && answered == self.hidden;
        if hide {
            self.hidden = None;
        }
        let out = self.out.clone();
        let pending = self.pending.clone();
        async move {
            let written = if hide { Ok(()) } else { write_line(&out, &item).await };
            if let Some(id) = answered {
                pending.send_modify(|p| {
                    p.remove(&id);
                });
            }
            written
        }
    }

    async fn receive(&mut self) -> Option<ClientJsonRpcMessage> {
        loop {
            if let Some(message) = self.queue.pop_front() {
                return Some(message);
            }
            if self.eof {
                // Answer what was asked before ending the session.
                let mut pending = self.pending.subscribe();
                let _ = pending.wait_for(HashSet::is_empty).await;
                return None;
            }
            match self.read_line().await {
                Ok(Some(Line::Whole)) => {
                    if let Some(message) = self.handle_line() {
                        return Some(message);
                    }
                }
                Ok(Some(Line::TooLong { prefix, len })) => {
                    self.first = false;
                    let id = top_level_id(&prefix);
                    let limit = self.max_line;
                    self.error_reply(
                        id,
                        -32600,
                        format!(
                            "Invalid Request: the message is {len} bytes, over the limit of {limit} bytes for one \
                             line; nothing was done. Send smaller arguments."
                        ),
                    );
                }
                Ok(None) => {
                    // A last line without a newline is still a message.
                    self.eof = true;
                    if !self.line.is_empty()
                        && self.skipping.is_none()
                        && let Some(message) = self.handle_line()
                    {
                        return Some(message);
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot read stdin");
                    self.eof = true;
                }
            }
        }
    }

    async fn close(&mut self) -> Result<(), Self::Error> {
        while self.replies.join_next().await.is_some() {}
        let mut out = self.out.lock().await;
        if let Some(mut w) = out.take() {
            w.flush().await?;
        }
        Ok(())
    }
}

/// The `id` of a JSON-RPC object whose text starts with `prefix`, when it appears as
/// a top-level key there with a number or short string value.
fn top_level_id(prefix: &[u8]) -> Option<Value> {
    let text = String::from_utf8_lossy(prefix);
    let mut depth = 0_i32;
    let mut chars = text.char_indices().peekable();
    let mut last_string: Option<(usize, usize)> = None;
    while let Some((i, c)) = chars.next() {
        match c {
            '{' | '[' => depth += 1,
            '}' | ']' => depth -= 1,
            '"' => {
                let start = i + 1;
                let mut escaped = false;
                let mut end = None;
                for (j, d) in chars.by_ref() {
                    match d {
                        '\\' if !escaped => escaped = true,
                        '"' if !escaped => {
                            end = Some(j);
                            break;
                        }
                        _ => escaped = false,
                    }
                }
                last_string = Some((start, end?));
            }
            ':' if depth == 1 => {
                if let Some((s, e)) = last_string.take()
                    && &text[s..e] == "id"
                {
                    let rest = text[i + 1..].trim_start();
                    let token: String = if let Some(quoted) = rest.strip_prefix('"') {
                        let close = quoted.find('"')?;
                        rest[..close + 2].to_owned()
                    } else {
                        rest.chars().take_while(|c| c.is_ascii_digit() || *c == '-').collect()
                    };
                    let id: Value = serde_json::from_str(&token).ok()?;
                    return (id.is_number() || id.as_str().is_some_and(|s| s.len() <= 200)).then_some(id);
                }
            }
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::top_level_id;

    #[test]
    fn the_id_of_a_long_line_is_found_at_the_top_level_only() {
        assert_eq!(top_level_id(br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"argu"#), Some(json!(7)));
        assert_eq!(top_level_id(br#"{"id": "a-1", "params":{"#), Some(json!("a-1")));
        assert_eq!(top_level_id(br#"{"method":"x","params":{"id":5,"arguments":{"x":"aaaa"#), None);
        assert_eq!(top_level_id(br#"{"params":{"k":"v \" id"},"id":-3}"#), Some(json!(-3)));
    }
}
