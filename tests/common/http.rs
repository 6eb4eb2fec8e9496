//! `kvm-mcp serve --http` as a real process on a loopback port, and a bare HTTP/1.1
//! client over raw TCP: enough to send exact bytes (half a header, a batch), keep a
//! connection alive, read an SSE stream, and see when the server closes a connection.

use std::net::{IpAddr, SocketAddr};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};

/// How long any wait in these tests may take before it counts as a failure.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// The protocol version the raw client speaks.
pub const PROTOCOL: &str = "2025-06-18";

/// A running `kvm-mcp serve --http 127.0.0.1:0`, killed (its whole process group) on drop.
pub struct Server {
    child: Child,
    log: PathBuf,
    pub addr: SocketAddr,
}

impl Server {
    /// Starts a server over a private state directory in `dir`, with `server` as the
    /// config's `server` section and `args` after `serve --http 127.0.0.1:0`.
    pub fn start(dir: &Path, server: &Value, args: &[&str]) -> Self {
        let config = dir.join("config.json");
        let text = serde_json::json!({
            "paths": { "state_dir": dir.join("state"), "run_dir": dir.join("run") },
            "qemu": { "accel": "tcg" },
            "vm": { "default_network": "user", "disk_path": dir },
            "logging": { "level": "debug" },
            "server": server,
        });
        std::fs::write(&config, text.to_string()).expect("write config");
        let log = dir.join("server.log");
        let stderr = std::fs::File::create(&log).expect("create server log");
        // KVM_MCP_BIN runs the tests against another build (say, an older one).
        let bin = std::env::var_os("KVM_MCP_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_kvm-mcp").into());
        let child = Command::new(bin)
            .arg("--config")
            .arg(&config)
            .args(["serve", "--http", "127.0.0.1:0"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .process_group(0)
            .spawn()
            .expect("spawn kvm-mcp serve --http");
        let mut server = Self { child, log, addr: SocketAddr::from(([127, 0, 0, 1], 0)) };
        server.addr = server.wait_listening();
        server
    }

    /// The server's stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_listening(&mut self) -> SocketAddr {
        let end = Instant::now() + DEADLINE;
        while Instant::now() < end {
            let log = self.log();
            if let Some(rest) = log.split("listening on http://").nth(1) {
                let addr = rest.split("/mcp").next().unwrap_or_default();
                return addr.parse().unwrap_or_else(|e| panic!("bad address {addr:?} in the log: {e}"));
            }
            if let Some(status) = self.child.try_wait().expect("poll server") {
                panic!("server exited with {status}:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("server never listened:\n{}", self.log());
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let pgid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).expect("pid"));
        let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

/// One HTTP response, body decoded (`Content-Length` or chunked).
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The body as JSON: plain, or the first `data:` line of an SSE body.
    pub fn json(&self) -> Value {
        let text = String::from_utf8_lossy(&self.body);
        let data = if self.header("content-type").is_some_and(|c| c.starts_with("text/event-stream")) {
            text.lines().filter_map(|l| l.strip_prefix("data:")).map(str::trim).find(|d| !d.is_empty()).unwrap_or("")
        } else {
            &text
        };
        serde_json::from_str(data).unwrap_or_else(|e| panic!("body is not JSON ({e}): {text}"))
    }
}

/// A client connection to the server.
pub struct Conn {
    pub stream: TcpStream,
    buf: Vec<u8>,
    host: String,
}

impl Conn {
    /// Connects to `server` from 127.0.0.1.
    pub async fn open(server: &Server) -> Self {
        Self::open_from(server, IpAddr::from([127, 0, 0, 1])).await
    }

    /// Connects to `server` from the loopback address `source` (any of 127.0.0.0/8).
    pub async fn open_from(server: &Server, source: IpAddr) -> Self {
        Self::connect(server.addr, source).await
    }

    /// Connects to a server at `addr` from 127.0.0.1.
    pub async fn open_to(addr: SocketAddr) -> Self {
        Self::connect(addr, IpAddr::from([127, 0, 0, 1])).await
    }

    async fn connect(addr: SocketAddr, source: IpAddr) -> Self {
        let socket = TcpSocket::new_v4().expect("socket");
        socket.bind(SocketAddr::new(source, 0)).expect("bind the source address");
        let stream = socket.connect(addr).await.expect("connect");
        Self { stream, buf: Vec::new(), host: addr.to_string() }
    }

    /// Sends raw bytes.
    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("send");
    }

    /// Sends a request (`Host` and `Content-Length` added) and reads its whole response.
    pub async fn request(&mut self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
        self.send_request(method, path, headers, body).await;
        self.read_response().await
    }

    /// Sends a request without reading the response.
    pub async fn send_request(&mut self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) {
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\n", self.host, body.len());
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(body);
        self.send(&bytes).await;
    }

    /// POSTs one JSON-RPC message to `/mcp` in `session` (if any) and reads the answer.
    pub async fn post_mcp(&mut self, session: Option<&str>, message: &Value) -> Response {
        let body = message.to_string();
        let mut headers = vec![
            ("Content-Type", "application/json"),
            ("Accept", "application/json, text/event-stream"),
            ("MCP-Protocol-Version", PROTOCOL),
        ];
        if let Some(s) = session {
            headers.push(("Mcp-Session-Id", s));
        }
        self.request("POST", "/mcp", &headers, body.as_bytes()).await
    }

    async fn fill(&mut self) -> usize {
        let mut chunk = [0u8; 8192];
        let n = tokio::time::timeout(DEADLINE, self.stream.read(&mut chunk))
            .await
            .expect("the server answered within the deadline")
            .expect("read");
        self.buf.extend_from_slice(&chunk[..n]);
        n
    }

    async fn take_line(&mut self) -> String {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..i]).into_owned();
                self.buf.drain(..i + 2);
                return line;
            }
            assert!(self.fill().await > 0, "connection closed in the middle of a response");
        }
    }

    async fn take_exact(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            assert!(self.fill().await > 0, "connection closed in the middle of a body");
        }
        self.buf.drain(..n).collect()
    }

    /// Reads a status line and headers, leaving the body unread.
    pub async fn read_head(&mut self) -> Response {
        let status_line = self.take_line().await;
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let mut headers = Vec::new();
        loop {
            let line = self.take_line().await;
            if line.is_empty() {
                break;
            }
            let (k, v) = line.split_once(':').unwrap_or_else(|| panic!("bad header line {line:?}"));
            headers.push((k.trim().to_owned(), v.trim().to_owned()));
        }
        Response { status, headers, body: Vec::new() }
    }

    /// Reads the next chunk of a chunked body; empty at its end.
    pub async fn read_chunk(&mut self) -> Vec<u8> {
        let size_line = self.take_line().await;
        let size_hex = size_line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_hex, 16).unwrap_or_else(|_| panic!("bad chunk size {size_line:?}"));
        let data = self.take_exact(size).await;
        assert!(self.take_line().await.is_empty(), "chunk not followed by CRLF");
        data
    }

    /// Reads a whole response.
    pub async fn read_response(&mut self) -> Response {
        let mut r = self.read_head().await;
        if r.header("transfer-encoding").is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
            loop {
                let chunk = self.read_chunk().await;
                if chunk.is_empty() {
                    break;
                }
                r.body.extend_from_slice(&chunk);
            }
        } else if let Some(len) = r.header("content-length") {
            let len = len.parse().expect("content-length");
            r.body = self.take_exact(len).await;
        }
        r
    }

    /// Waits (up to [`DEADLINE`]) until the server closes the connection, reading and
    /// dropping anything it sends; returns how long that took.
    pub async fn wait_closed(&mut self) -> Duration {
        let start = Instant::now();
        let mut chunk = [0u8; 8192];
        loop {
            let read = tokio::time::timeout(DEADLINE.saturating_sub(start.elapsed()), self.stream.read(&mut chunk))
                .await
                .unwrap_or_else(|_| panic!("the server kept the connection open for {DEADLINE:?}"));
            match read {
                Ok(0) | Err(_) => return start.elapsed(),
                Ok(_) => {}
            }
        }
    }
}

/// An `initialize` request.
pub fn initialize(id: u64) -> Value {
    serde_json::json!({
        "jsonrpc": "2.0", "id": id, "method": "initialize",
        "params": { "protocolVersion": PROTOCOL, "capabilities": {}, "clientInfo": { "name": "raw", "version": "1" } },
    })
}

/// Opens an MCP session on `conn` (initialize, then `notifications/initialized`) and
/// returns its id.
pub async fn open_session(conn: &mut Conn) -> String {
    let r = conn.post_mcp(None, &initialize(1)).await;
    assert_eq!(r.status, 200, "initialize: {}", String::from_utf8_lossy(&r.body));
    let id = r.header("mcp-session-id").expect("a session id").to_owned();
    let note = serde_json::json!({ "jsonrpc": "2.0", "method": "notifications/initialized" });
    let r = conn.post_mcp(Some(&id), &note).await;
    assert_eq!(r.status, 202, "notifications/initialized: {}", String::from_utf8_lossy(&r.body));
    id
}

/// A `ping` request.
pub fn ping(id: u64) -> Value {
    serde_json::json!({ "jsonrpc": "2.0", "id": id, "method": "ping" })
}
