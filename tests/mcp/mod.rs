//! The MCP server: in-process protocol checks with rmcp's own client (handshake,
//! errors, resources, the golden tool list), and the real-client suite in
//! `tests/mcp_py` (the official Python SDK over stdio and HTTP, including a full VM
//! lifecycle on a TCG guest).

mod golden;
mod inprocess;
mod python;
mod storage;

use std::path::Path;

use kvm_mcp::config::{Config, ConfigSource};
use kvm_mcp::mcp::KvmMcp;
use kvm_mcp::ops::Ops;
use rmcp::model::{ClientConfig, ProtocolVersion};
use rmcp::service::RunningService;
use rmcp::{RoleClient, ServiceExt};

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

/// An rmcp client connected in-process to a server over `ops`, asking for `version`.
pub async fn connect(ops: Ops, version: ProtocolVersion) -> RunningService<RoleClient, ClientConfig> {
    let (client_io, server_io) = tokio::io::duplex(1 << 16);
    let shared = KvmMcp::shared(ops);
    tokio::spawn(async move {
        let server = KvmMcp::new(shared).serve(server_io).await.expect("server handshake");
        let _ = server.waiting().await;
    });
    let mut info = ClientConfig::default();
    info.protocol_version = version;
    info.serve(client_io).await.expect("client handshake")
}
