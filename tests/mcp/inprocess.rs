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
async fn versions_2024_11_05_and_2025_03_26_are_kept() {
    assert_eq!(negotiated(ProtocolVersion::V_2024_11_05).await, ProtocolVersion::V_2024_11_05);
    assert_eq!(negotiated(ProtocolVersion::V_2025_03_26).await, ProtocolVersion::V_2025_03_26);
}

#[tokio::test]
async fn unknown_version_is_answered_with_2025_11_25() {
    let future: ProtocolVersion = serde_json::from_value(serde_json::json!("2099-01-01")).expect("version");
    assert_eq!(negotiated(future).await, ProtocolVersion::V_2025_11_25);
}

/// The tool list and a result as a client of `version` sees them.
async fn wire_of(version: ProtocolVersion) -> (serde_json::Value, serde_json::Value) {
    let dir = tempfile::tempdir().expect("tempdir");
    let client = super::connect(super::ops(dir.path()), version).await;
    let tools = client.list_all_tools().await.expect("tools/list");
    let result = client.call_tool(call("list_vms", serde_json::json!({}))).await.expect("tools/call");
    (serde_json::to_value(tools).expect("json"), serde_json::to_value(result).expect("json"))
}

fn tools_with(tools: &serde_json::Value, key: &str) -> usize {
    tools.as_array().expect("tools").iter().filter(|t| t.get(key).is_some()).count()
}

#[tokio::test]
async fn each_revision_gets_its_own_wire() {
    // 2024-11-05: no annotations, titles, output schemas or structured content; the
    // result's JSON is in its text content.
    let (tools, result) = wire_of(ProtocolVersion::V_2024_11_05).await;
    assert_eq!(
        (tools_with(&tools, "annotations"), tools_with(&tools, "title"), tools_with(&tools, "outputSchema")),
        (0, 0, 0)
    );
    assert_eq!(result.get("structuredContent"), None, "{result}");
    let texts: Vec<&str> =
        result["content"].as_array().expect("content").iter().filter_map(|c| c["text"].as_str()).collect();
    assert!(texts.contains(&r#"{"vms":[]}"#), "{texts:?}");
    // 2025-03-26 adds annotations.
    let (tools, result) = wire_of(ProtocolVersion::V_2025_03_26).await;
    let n = tools.as_array().expect("tools").len();
    assert_eq!(
        (tools_with(&tools, "annotations"), tools_with(&tools, "title"), tools_with(&tools, "outputSchema")),
        (n, 0, 0)
    );
    assert_eq!(result.get("structuredContent"), None, "{result}");
    // 2025-06-18 and later: titles, output schemas, structured content.
    let (tools, result) = wire_of(ProtocolVersion::V_2025_06_18).await;
    assert_eq!((tools_with(&tools, "title"), tools_with(&tools, "outputSchema")), (n, n));
    assert_eq!(result["structuredContent"], serde_json::json!({ "vms": [] }));
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
