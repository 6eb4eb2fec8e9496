//! The edges of `/mcp`: a body that is not JSON, a batch, a JSON value that is no
//! JSON-RPC message, and deleting a session twice.

use serde_json::json;

use crate::common::http::{Conn, Server, open_session};

const JSON_HEADERS: [(&str, &str); 3] = [
    ("Content-Type", "application/json"),
    ("Accept", "application/json, text/event-stream"),
    ("MCP-Protocol-Version", crate::common::http::PROTOCOL),
];

#[tokio::test]
async fn body_that_is_not_json_is_400_parse_error() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &json!({}), &["--no-auth"]);
    let mut conn = Conn::open(&server).await;

    let r = conn.request("POST", "/mcp", &JSON_HEADERS, b"{\"jsonrpc\": \"2.0\", \"id\": 1, ").await;

    let body = r.json();
    assert_eq!((r.status, &body["error"]["code"], &body["id"]), (400, &json!(-32700), &json!(null)), "{body}");
}

#[tokio::test]
async fn batch_is_400_invalid_request() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &json!({}), &["--no-auth"]);
    let mut conn = Conn::open(&server).await;
    let batch = json!([crate::common::http::ping(1), crate::common::http::ping(2)]).to_string();

    let r = conn.request("POST", "/mcp", &JSON_HEADERS, batch.as_bytes()).await;

    let body = r.json();
    assert_eq!((r.status, &body["error"]["code"]), (400, &json!(-32600)), "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("batches are not supported"), "{body}");
}

#[tokio::test]
async fn json_that_is_no_message_is_400_with_a_short_quote() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &json!({}), &["--no-auth"]);
    let mut conn = Conn::open(&server).await;
    let huge = "x".repeat(100_000);
    let bad = json!({ "jsonrpc": "2.0", "id": 7, "method": huge.clone() }).to_string();
    let bad = bad.replace(&format!("\"{huge}\""), &format!("[\"{huge}\"]"));

    let r = conn.request("POST", "/mcp", &JSON_HEADERS, bad.as_bytes()).await;

    let body = r.json();
    assert_eq!((r.status, &body["error"]["code"], &body["id"]), (400, &json!(-32600), &json!(7)), "{body}");
    assert!(body.to_string().len() < 1000, "the error quotes too much: {} bytes", body.to_string().len());
}

#[tokio::test]
async fn deleting_a_session_twice_is_204_then_404() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &json!({}), &["--no-auth"]);
    let mut conn = Conn::open(&server).await;
    let session = open_session(&mut conn).await;
    let headers = [("Mcp-Session-Id", session.as_str()), ("MCP-Protocol-Version", crate::common::http::PROTOCOL)];

    let first = conn.request("DELETE", "/mcp", &headers, b"").await;
    let second = conn.request("DELETE", "/mcp", &headers, b"").await;

    assert_eq!((first.status, second.status), (204, 404), "{first:?} {second:?}");
}

#[tokio::test]
async fn deleted_session_refuses_requests_with_404() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &json!({}), &["--no-auth"]);
    let mut conn = Conn::open(&server).await;
    let session = open_session(&mut conn).await;
    let headers = [("Mcp-Session-Id", session.as_str()), ("MCP-Protocol-Version", crate::common::http::PROTOCOL)];
    assert_eq!(conn.request("DELETE", "/mcp", &headers, b"").await.status, 204);

    let r = conn.post_mcp(Some(&session), &crate::common::http::ping(2)).await;

    assert_eq!(r.status, 404);
}
