//! Protocol behaviour checked in-process with rmcp's client: version negotiation,
//! tool errors versus protocol errors, resources.

use rmcp::model::{ProtocolVersion, ReadResourceRequestParams};

use crate::common::mcp::params as call;

async fn negotiated(asked: ProtocolVersion) -> ProtocolVersion {
    let dir = tempfile::tempdir().expect("tempdir");
    let client = super::connect(super::ops(dir.path()), asked).await;
    client.peer_info().expect("server info").protocol_version.clone()
}

#[tokio::test]
async fn version_2025_06_18_is_kept() {
    assert_eq!(negotiated(ProtocolVersion::V_2025_06_18).await, ProtocolVersion::V_2025_06_18);
}

#[tokio::test]
async fn version_2025_11_25_is_kept() {
    assert_eq!(negotiated(ProtocolVersion::V_2025_11_25).await, ProtocolVersion::V_2025_11_25);
}

#[tokio::test]
async fn older_version_is_answered_with_2025_11_25() {
    assert_eq!(negotiated(ProtocolVersion::V_2024_11_05).await, ProtocolVersion::V_2025_11_25);
}

#[tokio::test]
async fn list_vms_returns_structured_content() {
    let dir = tempfile::tempdir().expect("tempdir");
    let client = crate::common::mcp::client(dir.path()).await;
    let result = client.call_tool(call("list_vms", serde_json::json!({}))).await.expect("tools/call");
    assert_eq!(result.structured_content, Some(serde_json::json!({ "vms": [] })));
}

#[tokio::test]
async fn stopping_unknown_vm_is_a_tool_error_not_a_protocol_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let client = crate::common::mcp::client(dir.path()).await;
    let result = client.call_tool(call("stop_vm", serde_json::json!({ "name": "ghost" }))).await.expect("tools/call");
    assert_eq!(result.is_error, Some(true));
}

#[tokio::test]
async fn unknown_tool_is_a_protocol_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let client = crate::common::mcp::client(dir.path()).await;
    assert!(client.call_tool(call("format_disk", serde_json::json!({}))).await.is_err());
}

#[tokio::test]
async fn unknown_vm_resource_is_not_found() {
    let dir = tempfile::tempdir().expect("tempdir");
    let client = crate::common::mcp::client(dir.path()).await;
    let err = client.read_resource(ReadResourceRequestParams::new("vm://ghost")).await.expect_err("no such VM");
    assert!(err.to_string().contains("ghost"), "{err}");
}
