#![allow(clippy::disallowed_methods)] // the bench spawns the server binary itself
//! MCP server figures (see bench/README.md): `list_vms` over MCP in-process with 50 VMs
//! defined, a one-shot stdio session, and the server's resident memory with 50 VMs.
//! Each figure is printed next to a reference measured in the same run.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kvm_mcp::config::{Config, ConfigSource};
use kvm_mcp::mcp::KvmMcp;
use kvm_mcp::ops::{CreateRequest, DiskSource, Ops};
use rmcp::ServiceExt;
use rmcp::model::{CallToolRequestParams, ClientConfig};

const VMS: usize = 50;
const IN_PROCESS_CALLS: usize = 1000;
const ONE_SHOT_RUNS: usize = 40;
const HTTP_CALLS: usize = 200;
const BIN: &str = env!("CARGO_BIN_EXE_kvm-mcp");

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn p90(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() * 9 / 10]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

fn write_config(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("config.json");
    let text = serde_json::json!({
        "paths": { "state_dir": dir.join("state"), "run_dir": dir.join("run") },
        "qemu": { "accel": "tcg" },
        "vm": { "default_network": "none", "disk_path": dir },
        "logging": { "level": "warn", "file": dir.join("kvm_mcp.log") },
        // The HTTP figures time calls back to back, which the default limits would cut.
        "server": { "rate_limit": { "per_second": 100_000, "burst": 100_000, "client_per_second": 100_000, "client_burst": 100_000 } },
    });
    std::fs::write(&path, text.to_string()).expect("write config");
    path
}

async fn define_vms(ops: &Ops, dir: &Path) {
    let disk = dir.join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).expect("disk");
    for i in 0..VMS {
        let req = CreateRequest {
            name: Some(format!("vm{i:02}")),
            disk: Some(DiskSource::Existing(disk.clone())),
            memory_mib: Some(256),
            ..CreateRequest::default()
        };
        ops.create(req).await.expect("create");
    }
}

/// Medians of `list_vms` over MCP, `Ops::list` called directly, and `list_profiles`
/// over MCP (a small reply: the fixed cost of one round trip), plus `list_vms`'s p90.
async fn in_process(ops: Ops) -> (Duration, Duration, Duration, Duration) {
    let (client_io, server_io) = tokio::io::duplex(1 << 20);
    let shared = KvmMcp::shared(ops.clone());
    tokio::spawn(async move {
        let server = KvmMcp::new(shared).serve(server_io).await.expect("server");
        let _ = server.waiting().await;
    });
    let client = ClientConfig::default().serve(client_io).await.expect("client");
    let mut calls = Vec::with_capacity(IN_PROCESS_CALLS);
    let mut direct = Vec::with_capacity(IN_PROCESS_CALLS);
    let mut small = Vec::with_capacity(IN_PROCESS_CALLS);
    for _ in 0..IN_PROCESS_CALLS {
        let t = Instant::now();
        let r = client.call_tool(CallToolRequestParams::new("list_profiles")).await.expect("list_profiles");
        small.push(t.elapsed());
        assert_eq!(r.is_error, Some(false));
        let t = Instant::now();
        let r = client.call_tool(CallToolRequestParams::new("list_vms")).await.expect("list_vms");
        calls.push(t.elapsed());
        assert_eq!(r.structured_content.as_ref().and_then(|v| v["vms"].as_array()).map(Vec::len), Some(VMS));
        let t = Instant::now();
        let listed = ops.list().expect("list");
        direct.push(t.elapsed());
        assert_eq!(listed.len(), VMS);
    }
    (median(calls.clone()), p90(calls), median(direct), median(small))
}

/// `list_vms` round trips over the in-memory pipe with a bare line client: the server
/// and transport alone, without rmcp's client-side decoding of the reply.
async fn in_process_raw(ops: Ops) -> Duration {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let (client_io, server_io) = tokio::io::duplex(1 << 20);
    let shared = KvmMcp::shared(ops);
    tokio::spawn(async move {
        let server = KvmMcp::new(shared).serve(server_io).await.expect("server");
        let _ = server.waiting().await;
    });
    let (rd, mut wr) = tokio::io::split(client_io);
    let mut lines = tokio::io::BufReader::new(rd).lines();
    let init = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"bench","version":"1"}}}"#;
    wr.write_all(format!("{init}\n").as_bytes()).await.expect("write");
    lines.next_line().await.expect("read").expect("initialize response");
    wr.write_all(b"{\"jsonrpc\":\"2.0\",\"method\":\"notifications/initialized\"}\n").await.expect("write");
    let mut calls = Vec::with_capacity(IN_PROCESS_CALLS);
    for id in 2..IN_PROCESS_CALLS + 2 {
        let req = format!(
            "{{\"jsonrpc\":\"2.0\",\"id\":{id},\"method\":\"tools/call\",\"params\":{{\"name\":\"list_vms\"}}}}\n"
        );
        let t = Instant::now();
        wr.write_all(req.as_bytes()).await.expect("write");
        let line = lines.next_line().await.expect("read").expect("response");
        calls.push(t.elapsed());
        assert!(line.contains("\"vm49\""), "{line}");
    }
    median(calls)
}

/// Reads lines until the JSON-RPC response with `id`.
fn read_response(out: &mut impl BufRead, id: u64) -> serde_json::Value {
    let mut line = String::new();
    loop {
        line.clear();
        assert!(out.read_line(&mut line).expect("read") > 0, "server closed stdout");
        let v: serde_json::Value = serde_json::from_str(&line).expect("json line");
        if v["id"] == id {
            return v;
        }
    }
}

fn spawn_serve(config: &Path) -> std::process::Child {
    Command::new(BIN)
        .args(["--config", &config.to_string_lossy(), "serve"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn kvm-mcp serve")
}

/// initialize, initialized, list_vms; returns the session's stdin and stdout.
fn handshake_and_list(
    child: &mut std::process::Child,
) -> (std::process::ChildStdin, BufReader<std::process::ChildStdout>) {
    let mut stdin = child.stdin.take().expect("stdin");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let init = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"bench","version":"1"}}}"#;
    writeln!(stdin, "{init}").expect("write");
    read_response(&mut stdout, 1);
    writeln!(stdin, r#"{{"jsonrpc":"2.0","method":"notifications/initialized"}}"#).expect("write");
    writeln!(stdin, r#"{{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{{"name":"list_vms"}}}}"#)
        .expect("write");
    let r = read_response(&mut stdout, 2);
    assert_eq!(r["result"]["structuredContent"]["vms"].as_array().map(Vec::len), Some(VMS));
    (stdin, stdout)
}

fn one_shot(config: &Path) -> (Duration, Duration) {
    let mut sessions = Vec::with_capacity(ONE_SHOT_RUNS);
    let mut bare = Vec::with_capacity(ONE_SHOT_RUNS);
    for _ in 0..ONE_SHOT_RUNS {
        let t = Instant::now();
        let mut child = spawn_serve(config);
        let (stdin, _stdout) = handshake_and_list(&mut child);
        drop(stdin);
        assert!(child.wait().expect("wait").success());
        sessions.push(t.elapsed());
        let t = Instant::now();
        let status = Command::new(BIN).arg("--version").stdout(Stdio::null()).status().expect("run --version");
        assert!(status.success());
        bare.push(t.elapsed());
    }
    (median(sessions), median(bare))
}

fn status_kib(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    text.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .expect("field")
}

fn rss_stdio(config: &Path) -> (u64, u64) {
    let mut child = spawn_serve(config);
    let (stdin, _stdout) = handshake_and_list(&mut child);
    let pid = child.id();
    let figures = (status_kib(pid, "VmRSS:"), status_kib(pid, "VmHWM:"));
    drop(stdin);
    let _ = child.wait();
    figures
}

/// Starts `serve --http` on a free loopback port without auth; returns it and its address.
fn spawn_http(config: &Path) -> (std::process::Child, String) {
    let mut child = Command::new(BIN)
        .args(["--config", &config.to_string_lossy(), "serve", "--http", "127.0.0.1:0", "--no-auth"])
        .env("KVM_MCP_LOG_LEVEL", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kvm-mcp serve --http");
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr"));
    let mut line = String::new();
    let addr = loop {
        line.clear();
        assert!(stderr.read_line(&mut line).expect("read stderr") > 0, "server exited");
        if let Some(rest) = line.split("listening on http://").nth(1) {
            break rest.trim().trim_end_matches("/mcp").to_owned();
        }
    };
    // Keep reading, so a full pipe never blocks the server's logging.
    std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
    (child, addr)
}

/// One POST to `/mcp` on a new connection (`Connection: close`); the whole response.
fn post(addr: &str, headers: &[(&str, &str)], body: &str) -> String {
    let mut conn = std::net::TcpStream::connect(addr).expect("connect");
    let mut head = format!(
        "POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: application/json\r\n\
         Accept: application/json, text/event-stream\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    write!(conn, "{head}\r\n{body}").expect("request");
    let mut out = String::new();
    std::io::Read::read_to_string(&mut conn, &mut out).expect("response");
    out
}

/// Medians of `tools/call list_vms` over HTTP: in a 2025-11-25 session, and as a
/// stateless 2026-07-28 request (no session; `_meta` and `Mcp-Method`/`Mcp-Name`).
fn http_calls(config: &Path) -> (Duration, Duration) {
    let (mut child, addr) = spawn_http(config);
    let init = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"bench","version":"1"}}}"#;
    let reply = post(&addr, &[], init);
    let session = reply
        .lines()
        .find_map(|l| l.strip_prefix("mcp-session-id: ").or_else(|| l.strip_prefix("Mcp-Session-Id: ")))
        .expect("a session id")
        .trim()
        .to_owned();
    let in_session = [("Mcp-Session-Id", session.as_str()), ("MCP-Protocol-Version", "2025-11-25")];
    post(&addr, &in_session, r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#);
    let call_2025 = r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"list_vms"}}"#;
    let call_2026 = r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"list_vms","_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{},"io.modelcontextprotocol/clientInfo":{"name":"bench","version":"1"}}}}"#;
    let stateless = [("MCP-Protocol-Version", "2026-07-28"), ("Mcp-Method", "tools/call"), ("Mcp-Name", "list_vms")];
    let (mut old, mut new) = (Vec::new(), Vec::new());
    for _ in 0..HTTP_CALLS {
        let t = Instant::now();
        let r = post(&addr, &in_session, call_2025);
        old.push(t.elapsed());
        assert!(r.contains("vm49"), "{r}");
        let t = Instant::now();
        let r = post(&addr, &stateless, call_2026);
        new.push(t.elapsed());
        assert!(r.contains("vm49"), "{r}");
    }
    let _ = child.kill();
    let _ = child.wait();
    (median(old), median(new))
}

/// `serve --http` (multi-thread runtime) after serving `/metrics`, which lists the VMs.
fn rss_http(config: &Path) -> (u64, u64) {
    let (mut child, addr) = spawn_http(config);
    let mut conn = std::net::TcpStream::connect(&addr).expect("connect");
    write!(conn, "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").expect("request");
    let mut body = String::new();
    std::io::Read::read_to_string(&mut conn, &mut body).expect("response");
    assert!(body.contains(&format!("kvm_mcp_vms_defined {VMS}")), "{body}");
    let pid = child.id();
    let figures = (status_kib(pid, "VmRSS:"), status_kib(pid, "VmHWM:"));
    let _ = child.kill();
    let _ = child.wait();
    figures
}

fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config_path = write_config(dir.path());
    let text = std::fs::read_to_string(&config_path).expect("config");
    let cfg = Config::from_parts(ConfigSource::Flag(config_path.clone()), Some(&text), &|_| None).expect("config");
    let ops = Ops::new(cfg).expect("ops");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(define_vms(&ops, dir.path()));

    let raw_median = rt.block_on(in_process_raw(ops.clone()));
    let (call_median, call_p90, direct_median, small_median) = rt.block_on(in_process(ops));
    println!("list_vms over MCP, in-process, {VMS} VMs ({IN_PROCESS_CALLS} calls):");
    println!("  median {}  p90 {}  (goal < 1 ms)", ms(call_median), ms(call_p90));
    println!(
        "  reference ops.list() median {}  -> MCP overhead x{:.2}",
        ms(direct_median),
        call_median.as_secs_f64() / direct_median.as_secs_f64()
    );
    println!("  reference list_profiles over MCP (one small round trip) median {}", ms(small_median));
    println!("  server and transport only (bare line client, no rmcp client decoding): median {}", ms(raw_median));

    let (session, bare) = one_shot(&config_path);
    println!("one-shot stdio session (spawn, initialize, list_vms, exit), {VMS} VMs ({ONE_SHOT_RUNS} runs):");
    println!("  median {}  (goal < 30 ms)", ms(session));
    println!(
        "  reference `kvm-mcp --version` median {}  -> session costs x{:.2} a bare start",
        ms(bare),
        session.as_secs_f64() / bare.as_secs_f64()
    );

    let (rss, hwm) = rss_stdio(&config_path);
    #[allow(clippy::cast_precision_loss)]
    let mib = |kib: u64| kib as f64 / 1024.0;
    println!("resident memory of `kvm-mcp serve` (stdio) after list_vms, {VMS} VMs:");
    println!("  VmRSS {:.1} MiB  VmHWM {:.1} MiB  (goal < 12 MiB)", mib(rss), mib(hwm));
    let (old, new) = http_calls(&config_path);
    println!("tools/call list_vms over HTTP, a new connection each, {VMS} VMs ({HTTP_CALLS} calls each):");
    println!("  2025-11-25 session median {}  2026-07-28 stateless median {}", ms(old), ms(new));

    let (rss, hwm) = rss_http(&config_path);
    println!("resident memory of `kvm-mcp serve --http` after /metrics, {VMS} VMs:");
    println!("  VmRSS {:.1} MiB  VmHWM {:.1} MiB", mib(rss), mib(hwm));
}
