//! Guest files through the agent (`guest-file-open/read/write/close`, size-capped), and
//! guest facts: OS, hostname, network interfaces.

use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{AgentClient, AgentError};

/// Bytes per `guest-file-read` / `guest-file-write` call.
pub(super) const CHUNK: usize = 48 * 1024;

/// A file read from the guest.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct FileData {
    pub path: String,
    /// The bytes read (not serialised; see `text` / `base64`).
    #[serde(skip)]
    pub data: Vec<u8>,
    pub size: u64,
    /// The content when it is valid UTF-8.
    pub text: Option<String>,
    /// The content, base64, when it is not UTF-8.
    pub base64: Option<String>,
}

/// `guest-file-read`'s answer.
#[derive(Debug, Deserialize)]
pub(super) struct ReadReply {
    count: usize,
    #[serde(rename = "buf-b64")]
    buf_b64: String,
    pub(super) eof: bool,
}

impl ReadReply {
    /// The bytes read.
    pub(super) fn bytes(&self) -> Result<Vec<u8>, AgentError> {
        B64.decode(&self.buf_b64).map_err(|e| AgentError::BadReply {
            command: "guest-file-read",
            reason: format!("invalid base64 ({e}) for {} bytes", self.count),
        })
    }
}

#[derive(Debug, Deserialize)]
struct WriteReply {
    count: usize,
}

async fn close(c: &mut AgentClient, handle: i64) {
    if let Err(e) = c.call("guest-file-close", json!({ "handle": handle })).await {
        tracing::warn!(error = %e, "cannot close a guest file handle");
    }
}

/// Reads a whole guest file of at most `max` bytes.
///
/// # Errors
/// [`AgentError::TooLarge`] when the file is bigger than `max`; agent failures.
pub async fn read(sock: &Path, timeout: Duration, path: &str, max: u64) -> Result<FileData, AgentError> {
    let mut c = AgentClient::connect(sock, timeout).await?;
    let handle: i64 = c.call_as("guest-file-open", json!({ "path": path, "mode": "r" })).await?;
    let mut data = Vec::new();
    let res = async {
        loop {
            let r: ReadReply = c.call_as("guest-file-read", json!({ "handle": handle, "count": CHUNK })).await?;
            let bytes = r.bytes()?;
            data.extend_from_slice(&bytes);
            if data.len() as u64 > max {
                return Err(AgentError::TooLarge { what: format!("guest file {path}"), size: data.len() as u64, max });
            }
            if r.eof || r.count == 0 {
                return Ok(());
            }
        }
    }
    .await;
    close(&mut c, handle).await;
    res?;
    let text = String::from_utf8(data.clone()).ok();
    let base64 = if text.is_none() { Some(B64.encode(&data)) } else { None };
    Ok(FileData { path: path.to_owned(), size: data.len() as u64, data, text, base64 })
}

/// Writes `data` to a guest file (created or truncated; appended with `append`).
///
/// # Errors
/// [`AgentError::TooLarge`] over `max`; agent failures.
pub async fn write(
    sock: &Path,
    timeout: Duration,
    path: &str,
    data: &[u8],
    append: bool,
    max: u64,
) -> Result<u64, AgentError> {
    if data.len() as u64 > max {
        return Err(AgentError::TooLarge { what: "the data to write".into(), size: data.len() as u64, max });
    }
    let mut c = AgentClient::connect(sock, timeout).await?;
    let mode = if append { "a" } else { "w" };
    let handle: i64 = c.call_as("guest-file-open", json!({ "path": path, "mode": mode })).await?;
    let mut written = 0u64;
    let res = async {
        for chunk in data.chunks(CHUNK) {
            let r: WriteReply =
                c.call_as("guest-file-write", json!({ "handle": handle, "buf-b64": B64.encode(chunk) })).await?;
            written += r.count as u64;
        }
        c.call("guest-file-flush", json!({ "handle": handle })).await.map(|_| ())
    }
    .await;
    close(&mut c, handle).await;
    res?;
    Ok(written)
}

/// Facts about the guest; each part is `None` when the agent did not provide it.
#[derive(Debug, Clone, Serialize, Default, schemars::JsonSchema)]
pub struct GuestInfo {
    /// qemu-ga's version.
    pub agent_version: Option<String>,
    /// `guest-get-osinfo` (name, pretty-name, version, kernel-release, machine, id …).
    pub os: Option<Value>,
    pub hostname: Option<String>,
    /// `guest-network-get-interfaces`: name, hardware-address, ip-addresses.
    pub interfaces: Option<Value>,
    /// Parts the agent refused, with its reason.
    pub errors: Vec<String>,
}

/// Collects [`GuestInfo`].
///
/// # Errors
/// Only when the agent cannot be reached at all.
pub async fn info(sock: &Path, timeout: Duration) -> Result<GuestInfo, AgentError> {
    let mut c = AgentClient::connect(sock, timeout).await?;
    let mut out = GuestInfo::default();
    match c.call("guest-info", Value::Null).await {
        Ok(v) => out.agent_version = v.get("version").and_then(Value::as_str).map(String::from),
        Err(e) => out.errors.push(e.to_string()),
    }
    match c.call("guest-get-osinfo", Value::Null).await {
        Ok(v) => out.os = Some(v),
        Err(e) => out.errors.push(e.to_string()),
    }
    match c.call("guest-get-host-name", Value::Null).await {
        Ok(v) => out.hostname = v.get("host-name").and_then(Value::as_str).map(String::from),
        Err(e) => out.errors.push(e.to_string()),
    }
    match c.call("guest-network-get-interfaces", Value::Null).await {
        Ok(v) => out.interfaces = Some(v),
        Err(e) => out.errors.push(e.to_string()),
    }
    Ok(out)
}

/// `guest-ping`; returns the round trip including the sync.
///
/// # Errors
/// The agent did not answer.
pub async fn ping(sock: &Path, timeout: Duration) -> Result<Duration, AgentError> {
    let started = std::time::Instant::now();
    let mut c = AgentClient::connect(sock, timeout).await?;
    c.call("guest-ping", Value::Null).await?;
    Ok(started.elapsed())
}

/// Asks the guest to power off (`guest-shutdown` sends no reply on success).
///
/// # Errors
/// The agent did not answer the sync.
pub async fn shutdown(sock: &Path, timeout: Duration) -> Result<(), AgentError> {
    let mut c = AgentClient::connect(sock, timeout).await?;
    c.send("guest-shutdown", json!({ "mode": "powerdown" })).await
}
