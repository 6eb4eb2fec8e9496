//! An rmcp client joined in process to our server (like `kvm-mcp serve` on stdio), and
//! the small helpers every MCP test uses to call tools and read their results.

use std::path::Path;

use kvm_mcp::config::{Config, ConfigSource};
use kvm_mcp::mcp::KvmMcp;
use kvm_mcp::ops::Ops;
use rmcp::model::{
    CallToolRequestParams, CallToolResult, ClientCapabilities, ClientConfig, DetailedTask, GetTaskParams,
    ProtocolVersion, TaskPayload,
};
use rmcp::service::RunningService;
use rmcp::{ClientHandler, Peer, RoleClient, ServiceExt};
use serde_json::Value;

/// A client that only answers the handshake.
pub type Client = RunningService<RoleClient, ClientConfig>;

/// A config whose state and run dirs live under `dir`, for TCG and user networking.
pub fn config(dir: &Path) -> Config {
    let text = serde_json::json!({
        "paths": { "state_dir": dir.join("state"), "run_dir": dir.join("run") },
        "qemu": { "accel": "tcg" },
        "vm": { "default_network": "user", "disk_path": dir },
    })
    .to_string();
    Config::from_parts(ConfigSource::Flag(dir.join("config.json")), Some(&text), &|_| None).expect("test config")
}

/// The operations over a fresh temporary state directory.
pub fn ops(dir: &Path) -> Ops {
    Ops::new(config(dir)).expect("ops").with_exe(env!("CARGO_BIN_EXE_kvm-mcp").into())
}

/// `handler` as an MCP client of a server over `ops`, joined by an in-memory pipe.
pub async fn serve_in_process<H: ClientHandler>(ops: Ops, handler: H) -> RunningService<RoleClient, H> {
    let (client_io, server_io) = tokio::io::duplex(1 << 16);
    let shared = KvmMcp::shared(ops);
    tokio::spawn(async move {
        let server = KvmMcp::new(shared).serve(server_io).await.expect("server handshake");
        let _ = server.waiting().await;
    });
    handler.serve(client_io).await.expect("client handshake")
}

/// A plain client of a server over `ops`, asking for protocol `version`.
pub async fn connect(ops: Ops, version: ProtocolVersion) -> Client {
    let mut info = ClientConfig::default();
    info.protocol_version = version;
    serve_in_process(ops, info).await
}

/// A plain client (protocol 2025-11-25) of a server over a state directory in `dir`.
pub async fn client(dir: &Path) -> Client {
    connect(ops(dir), ProtocolVersion::V_2025_11_25).await
}

/// `tools/call` parameters.
pub fn params(name: &'static str, args: Value) -> CallToolRequestParams {
    let mut p = CallToolRequestParams::new(name);
    p.arguments = args.as_object().cloned();
    p
}

/// The text of a result's content blocks, joined.
pub fn text(r: &CallToolResult) -> String {
    r.content.iter().filter_map(|c| c.as_text().map(|t| t.text.clone())).collect::<Vec<_>>().join("\n")
}

/// Calls tool `name`; a protocol error fails the test.
pub async fn call(c: &Peer<RoleClient>, name: &'static str, args: Value) -> CallToolResult {
    c.call_tool(params(name, args)).await.expect("tools/call")
}

/// The structured content of a successful result of `name`; a tool error fails the test.
pub fn succeeded(name: &str, r: CallToolResult) -> Value {
    assert_ne!(r.is_error, Some(true), "{name} failed: {}", text(&r));
    r.structured_content.expect("structured content")
}

/// The error text of a result of `name` that must be a tool error.
pub fn failed(name: &str, r: &CallToolResult) -> String {
    assert_eq!(r.is_error, Some(true), "{name} should fail: {:?}", r.structured_content);
    text(r)
}

/// Calls tool `name`, which must succeed; its structured content.
pub async fn ok(c: &Peer<RoleClient>, name: &'static str, args: Value) -> Value {
    succeeded(name, call(c, name, args).await)
}

/// Calls tool `name`, which must fail; its error text.
pub async fn err(c: &Peer<RoleClient>, name: &'static str, args: Value) -> String {
    failed(name, &call(c, name, args).await)
}

/// A client that declares the Tasks extension (SEP-2663), protocol 2025-11-25.
pub fn tasks_client_info() -> ClientConfig {
    let mut info = ClientConfig::default();
    info.protocol_version = ProtocolVersion::V_2025_11_25;
    info.capabilities = ClientCapabilities::builder().enable_tasks().build();
    info
}

/// A client declaring tasks, of a server over `ops`.
pub async fn tasks_client(ops: Ops) -> Client {
    serve_in_process(ops, tasks_client_info()).await
}

/// `tasks/get` until `pred` holds for the task (polling every 50 ms), or `deadline`
/// passes (which fails the test, showing the last state).
pub async fn wait_task(
    c: &Peer<RoleClient>,
    id: &str,
    deadline: std::time::Duration,
    what: &str,
    pred: impl Fn(&DetailedTask) -> bool,
) -> DetailedTask {
    let start = std::time::Instant::now();
    loop {
        let got = c.get_task(GetTaskParams::new(id)).await.expect("tasks/get").task;
        if pred(&got) {
            return got;
        }
        assert!(start.elapsed() < deadline, "task {id}: {what} not reached within {deadline:?}; last: {got:#?}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The result a completed task carries; any other final state fails the test.
pub fn task_result(task: &DetailedTask) -> CallToolResult {
    match &task.payload {
        TaskPayload::Completed { result } => {
            serde_json::from_value(Value::Object(result.clone())).expect("a CallToolResult in the task")
        }
        other => panic!("task {} did not complete: {other:?} ({:?})", task.task.task_id, task.task.status_message),
    }
}
