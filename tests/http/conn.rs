//! Limits below HTTP: a slow header, an idle keep-alive, an SSE stream that must
//! survive the idle timeout, and the cap on connections per peer address.

use std::net::IpAddr;

use serde_json::json;

use crate::common::http::{Conn, Server, open_session};

#[tokio::test]
async fn half_a_header_is_closed_after_the_header_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &json!({ "header_timeout_s": 1 }), &["--no-auth"]);
    let mut conn = Conn::open(&server).await;
    conn.send(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ").await;

    let took = conn.wait_closed().await;

    eprintln!("half a header (header_timeout_s 1): closed after {took:?}");
}

#[tokio::test]
async fn silent_connection_is_closed_after_the_header_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &json!({ "header_timeout_s": 1 }), &["--no-auth"]);
    let mut conn = Conn::open(&server).await;

    let took = conn.wait_closed().await;

    eprintln!("no bytes at all (header_timeout_s 1): closed after {took:?}");
}

#[tokio::test]
async fn idle_keep_alive_is_closed_after_the_idle_timeout() {
    let dir = tempfile::tempdir().unwrap();
    // A header timeout longer than the wait below: only the idle timeout can close it.
    let server = Server::start(dir.path(), &json!({ "header_timeout_s": 600, "idle_timeout_s": 1 }), &["--no-auth"]);
    let mut conn = Conn::open(&server).await;
    let r = conn.request("GET", "/healthz", &[], b"").await;
    assert_eq!(r.status, 200);

    let took = conn.wait_closed().await;

    eprintln!("idle keep-alive (idle_timeout_s 1): closed after {took:?}");
}

#[tokio::test]
async fn open_sse_stream_outlives_the_idle_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &json!({ "header_timeout_s": 600, "idle_timeout_s": 1 }), &["--no-auth"]);
    let mut setup = Conn::open(&server).await;
    let session = open_session(&mut setup).await;
    let mut sse = Conn::open(&server).await;
    sse.send_request(
        "GET",
        "/mcp",
        &[("Accept", "text/event-stream"), ("Mcp-Session-Id", &session), ("MCP-Protocol-Version", "2025-06-18")],
        b"",
    )
    .await;
    let head = sse.read_head().await;
    assert_eq!(head.status, 200, "GET /mcp: {head:?}");
    let priming = sse.read_chunk().await;
    assert!(!priming.is_empty(), "the SSE stream ended at once");
    // A connection that went idle after the stream opened is closed first...
    let mut idle = Conn::open(&server).await;
    assert_eq!(idle.request("GET", "/healthz", &[], b"").await.status, 200);
    idle.wait_closed().await;

    // ...while the stream, idle on the wire for longer, still delivers (rmcp's
    // keep-alive comes every 15 s).
    let next = sse.read_chunk().await;

    assert!(!next.is_empty(), "the SSE stream ended");
}

#[tokio::test]
async fn connection_over_the_per_peer_cap_is_closed_while_another_peer_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = json!({ "token": "test-token-0123456789abcdef", "max_connections_per_peer": 3, "header_timeout_s": 600 });
    let server = Server::start(dir.path(), &cfg, &[]);
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut c = Conn::open(&server).await;
        // Served (and so counted) before the next one opens; no token needed.
        assert_eq!(c.request("GET", "/healthz", &[], b"").await.status, 200);
        held.push(c);
    }
    let mut extra = Conn::open(&server).await;
    extra.send_request("GET", "/healthz", &[], b"").await;

    extra.wait_closed().await;
    let mut other = Conn::open_from(&server, IpAddr::from([127, 0, 0, 2])).await;
    let r = other.request("GET", "/healthz", &[], b"").await;

    assert_eq!(r.status, 200);
    assert!(server.log().contains("server.max_connections_per_peer"), "{}", server.log());
}

#[tokio::test]
async fn closed_connection_frees_its_place_under_the_cap() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &json!({ "max_connections_per_peer": 1 }), &["--no-auth"]);
    let mut first = Conn::open(&server).await;
    assert_eq!(first.request("GET", "/healthz", &[], b"").await.status, 200);
    let mut refused = Conn::open(&server).await;
    refused.wait_closed().await;
    drop(first);

    // The server sees the close asynchronously: retry until a connection is served.
    let end = std::time::Instant::now() + crate::common::http::DEADLINE;
    let served = loop {
        let mut c = Conn::open(&server).await;
        c.send_request("GET", "/healthz", &[], b"").await;
        let mut byte = [0u8; 1];
        let n = tokio::io::AsyncReadExt::read(&mut c.stream, &mut byte).await.unwrap_or(0);
        if n == 1 || std::time::Instant::now() > end {
            break n == 1;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };

    assert!(served, "no connection was served after the first closed");
}
