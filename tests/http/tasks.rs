//! Tasks over Streamable HTTP: a task made in one session is answered in another
//! session of the same server after the first one was deleted.

use std::time::Instant;

use serde_json::{Value, json};

use crate::common::http::{Conn, DEADLINE, PROTOCOL, Response, Server};

/// The JSON-RPC answer in a response (an SSE body may carry notifications first).
fn answer(r: &Response) -> Value {
    let text = String::from_utf8_lossy(&r.body);
    let lines: Vec<&str> = if r.header("content-type").is_some_and(|c| c.starts_with("text/event-stream")) {
        text.lines().filter_map(|l| l.strip_prefix("data:")).map(str::trim).filter(|d| !d.is_empty()).collect()
    } else {
        vec![text.as_ref()]
    };
    lines
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|m| m.get("id").is_some() && m.get("method").is_none())
        .unwrap_or_else(|| panic!("no answer in: {text}"))
}

/// Opens a session that declares the tasks extension.
async fn tasks_session(conn: &mut Conn) -> String {
    let init = json!({ "jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": PROTOCOL, "clientInfo": { "name": "raw", "version": "1" },
        "capabilities": { "extensions": { "io.modelcontextprotocol/tasks": {} } } } });
    let r = conn.post_mcp(None, &init).await;
    assert_eq!(r.status, 200, "initialize: {}", String::from_utf8_lossy(&r.body));
    let id = r.header("mcp-session-id").expect("a session id").to_owned();
    let note = json!({ "jsonrpc": "2.0", "method": "notifications/initialized" });
    assert_eq!(conn.post_mcp(Some(&id), &note).await.status, 202);
    id
}

async fn call(conn: &mut Conn, session: &str, id: u64, method: &str, params: Value) -> Value {
    let r =
        conn.post_mcp(Some(session), &json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params })).await;
    assert_eq!(r.status, 200, "{method}: {}", String::from_utf8_lossy(&r.body));
    answer(&r)
}

#[tokio::test]
async fn a_task_outlives_the_session_that_made_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = dir.path().join("box.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).expect("write disk");
    let server = Server::start(dir.path(), &json!({}), &["--no-auth"]);
    let mut conn = Conn::open(&server).await;
    let first = tasks_session(&mut conn).await;
    let created = call(
        &mut conn,
        &first,
        2,
        "tools/call",
        json!({ "name": "create_vm", "arguments": { "name": "box", "disk": disk } }),
    )
    .await;
    assert_eq!(created["result"]["isError"], false, "{created:#}");
    let task = call(
        &mut conn,
        &first,
        3,
        "tools/call",
        json!({ "name": "stop_vm", "arguments": { "name": "box", "force": true } }),
    )
    .await;
    assert_eq!(task["result"]["resultType"], "task", "{task:#}");
    let id = task["result"]["taskId"].as_str().expect("taskId").to_owned();
    let headers = [("Mcp-Session-Id", first.as_str()), ("MCP-Protocol-Version", PROTOCOL)];
    assert_eq!(conn.request("DELETE", "/mcp", &headers, b"").await.status, 204);

    let second = tasks_session(&mut conn).await;
    let start = Instant::now();
    let done = loop {
        let got = call(&mut conn, &second, 4, "tasks/get", json!({ "taskId": id })).await;
        if got["result"]["status"] != "working" {
            break got;
        }
        assert!(start.elapsed() < DEADLINE, "still working: {got:#}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(done["result"]["status"], "completed", "{done:#}");
    assert_eq!(done["result"]["result"]["structuredContent"]["name"], "box", "{done:#}");
    assert!(dir.path().join(format!("state/tasks/{id}.json")).exists());
}
