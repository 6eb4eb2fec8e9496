//! Both eras on one HTTP endpoint: 2025 sessions (handshake, `Mcp-Session-Id`) and
//! 2026-07-28 stateless requests (no session; revision, capabilities and client in
//! `_meta`; `Mcp-Method` and `Mcp-Name` headers that must agree with the body).

use serde_json::{Value, json};

use crate::common::http::{Conn, Server, open_session};

fn meta() -> Value {
    json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {},
        "io.modelcontextprotocol/clientInfo": { "name": "raw", "version": "1" },
    })
}

/// POSTs a 2026 request with the standard headers (`name` goes in `Mcp-Name`).
async fn post_2026(
    conn: &mut Conn,
    method: &str,
    name: Option<&str>,
    mut params: Value,
) -> crate::common::http::Response {
    params["_meta"] = meta();
    let body = json!({ "jsonrpc": "2.0", "id": 1, "method": method, "params": params }).to_string();
    let mut headers = vec![
        ("Content-Type", "application/json"),
        ("Accept", "application/json, text/event-stream"),
        ("MCP-Protocol-Version", "2026-07-28"),
        ("Mcp-Method", method),
    ];
    if let Some(n) = name {
        headers.push(("Mcp-Name", n));
    }
    conn.request("POST", "/mcp", &headers, body.as_bytes()).await
}

#[tokio::test]
async fn a_2026_request_is_served_without_a_session_beside_2025_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &json!({}), &["--no-auth"]);
    let mut conn = Conn::open(&server).await;

    let r = post_2026(&mut conn, "server/discover", None, json!({})).await;
    let body = r.json();
    assert_eq!(r.status, 200, "{body}");
    assert!(r.header("mcp-session-id").is_none(), "2026 has no sessions");
    assert!(body["result"]["supportedVersions"].to_string().contains("2026-07-28"), "{body}");

    let r = post_2026(&mut conn, "tools/call", Some("list_vms"), json!({ "name": "list_vms", "arguments": {} })).await;
    let body = r.json();
    assert_eq!((r.status, &body["result"]["structuredContent"]), (200, &json!({ "vms": [] })), "{body}");

    let r = post_2026(&mut conn, "tools/list", None, json!({})).await;
    let body = r.json();
    assert_eq!(body["result"]["ttlMs"], 3_600_000, "{body}");

    // The header must name what the body does.
    let r = post_2026(&mut conn, "tools/call", Some("delete_vm"), json!({ "name": "list_vms", "arguments": {} })).await;
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));

    // A 2025 session on the same endpoint keeps its wire.
    let session = open_session(&mut conn).await;
    let r = conn.post_mcp(Some(&session), &json!({ "jsonrpc": "2.0", "id": 2, "method": "tools/list" })).await;
    let body = r.json();
    assert!(body["result"].get("ttlMs").is_none() && body["result"]["tools"].is_array(), "{body}");
}
