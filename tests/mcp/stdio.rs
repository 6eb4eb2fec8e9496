//! `kvm-mcp serve` on stdio, the real binary: a request without handshake (the
//! predecessor's one-shot), lines that are not JSON, batches, and a line over the
//! limit all get an answer, and serving goes on after each.

use std::io::Write as _;
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::serve::ServeProcess;
use crate::common::vm::TestEnv;

/// A `serve` process and the lines it writes.
pub(super) struct Served(ServeProcess);

/// Generous: nothing here waits on a guest.
const DEADLINE: Duration = Duration::from_secs(60);

impl Served {
    pub(super) fn start(env: &TestEnv) -> Self {
        Self(ServeProcess::start(&env.config_path))
    }

    pub(super) fn send_raw(&mut self, bytes: &[u8]) {
        self.0.send_raw(bytes);
    }

    pub(super) fn send(&mut self, message: &Value) {
        self.0.send(message);
    }

    pub(super) fn next(&self) -> Value {
        let line = self.0.lines.recv_timeout(DEADLINE).expect("a line from the server");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
    }

    /// The next message that is not a notification.
    pub(super) fn answer(&self) -> Value {
        loop {
            let m = self.next();
            if m.get("method").is_none() {
                return m;
            }
        }
    }

    pub(super) fn handshake(&mut self) {
        self.send(&json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{
            "protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"test","version":"0"}}}));
        assert_eq!(self.answer()["result"]["protocolVersion"], "2025-11-25");
        self.send(&json!({"jsonrpc":"2.0","method":"notifications/initialized"}));
    }

    pub(super) fn ping(&mut self, id: u64) {
        self.send(&json!({"jsonrpc":"2.0","id":id,"method":"ping"}));
        assert_eq!(self.answer(), json!({"jsonrpc":"2.0","id":id,"result":{}}));
    }

    /// Closes stdin; the exit code and whatever else was written.
    pub(super) fn finish(mut self) -> (Option<i32>, Vec<String>) {
        drop(self.0.stdin.take());
        let mut rest = Vec::new();
        while let Ok(line) = self.0.lines.recv_timeout(DEADLINE) {
            rest.push(line);
        }
        let status = self.0.child.wait().expect("wait");
        (status.code(), rest)
    }
}

#[test]
fn the_predecessors_one_shot_prints_the_answer_and_exits_0() {
    let env = TestEnv::new();
    let mut s = Served::start(&env);
    s.send_raw(
        br#"{"jsonrpc":"2.0","method":"tools/call","params":{"name":"list_vms","arguments":{"no_cache":true}},"id":1}"#,
    );
    s.send_raw(b"\n");
    let (code, lines) = s.finish();
    assert_eq!(code, Some(0), "{lines:?}");
    // Only the answer: the handshake played for it is not written.
    let answers: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str::<Value>(l).expect("json"))
        .filter(|m| m.get("id").is_some())
        .collect();
    assert_eq!(answers.len(), 1, "{lines:?}");
    assert_eq!(answers[0]["id"], 1);
    assert_eq!(answers[0]["result"]["structuredContent"], json!({ "vms": [] }), "{}", answers[0]);
}

#[test]
fn a_line_that_is_not_json_gets_a_parse_error_and_serving_goes_on() {
    let env = TestEnv::new();
    let mut s = Served::start(&env);
    s.handshake();
    s.send_raw(b"{\"jsonrpc\": \"2.0\", \"id\": 3, \"method\": \n");
    let e = s.answer();
    assert_eq!((e["id"].clone(), e["error"]["code"].clone()), (Value::Null, json!(-32700)), "{e}");
    assert!(e.as_object().expect("object").contains_key("id"), "\"id\": null must be there: {e}");
    s.send_raw(b"[{\"jsonrpc\":\"2.0\",\"id\":4,\"method\":\"ping\"}]\n");
    let e = s.answer();
    assert_eq!((e["id"].clone(), e["error"]["code"].clone()), (Value::Null, json!(-32600)), "{e}");
    s.send(&json!({"jsonrpc":"2.0","id":5,"method":"tools/call"}));
    let e = s.answer();
    assert_eq!((e["id"].clone(), e["error"]["code"].clone()), (json!(5), json!(-32602)), "{e}");
    s.ping(6);
    let (code, _) = s.finish();
    assert_eq!(code, Some(0));
}

#[test]
fn an_over_long_line_gets_an_error_with_its_id_and_serving_goes_on() {
    let env = TestEnv::new();
    let mut s = Served::start(&env);
    s.handshake();
    let limit = kvm_mcp::mcp::MAX_LINE;
    let head = r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"create_vm","arguments":{"name":""#;
    let mut line = head.as_bytes().to_vec();
    line.resize(limit + 1024, b'a');
    line.extend_from_slice(b"\"}}}\n");
    // Written from another thread: the pipe is smaller than the line.
    let mut stdin = s.0.stdin.take().expect("stdin");
    let writer = std::thread::spawn(move || {
        stdin.write_all(&line).expect("write the long line");
        stdin
    });
    let e = s.answer();
    s.0.stdin = Some(writer.join().expect("writer"));
    assert_eq!((e["id"].clone(), e["error"]["code"].clone()), (json!(7), json!(-32600)), "{e}");
    assert!(e["error"]["message"].as_str().expect("message").contains("over the limit"), "{e}");
    s.ping(8);
    let (code, _) = s.finish();
    assert_eq!(code, Some(0));
}

#[test]
fn every_request_read_before_the_end_of_input_is_answered() {
    let env = TestEnv::new();
    let mut s = Served::start(&env);
    s.handshake();
    for id in 10..13 {
        s.send(&json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":"list_vms","arguments":{"no_cache":true}}}));
    }
    let (code, lines) = s.finish();
    let mut ids: Vec<i64> =
        lines.iter().filter_map(|l| serde_json::from_str::<Value>(l).ok()).filter_map(|m| m["id"].as_i64()).collect();
    ids.sort_unstable();
    assert_eq!((code, ids), (Some(0), vec![10, 11, 12]));
}

/// The `_meta` every 2026-07-28 request carries instead of a handshake.
pub(super) fn meta_2026() -> Value {
    json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {},
        "io.modelcontextprotocol/clientInfo": { "name": "test", "version": "0" },
    })
}

pub(super) fn request_2026(id: u64, method: &str, mut params: Value) -> Value {
    params["_meta"] = meta_2026();
    json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params })
}

#[test]
fn a_2026_client_is_served_without_handshake_with_cache_hints() {
    let env = TestEnv::new();
    let mut s = Served::start(&env);

    s.send(&request_2026(1, "server/discover", json!({})));
    let found = s.answer();
    let versions = &found["result"]["supportedVersions"];
    for v in ["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25", "2026-07-28"] {
        assert!(versions.as_array().unwrap().contains(&json!(v)), "{v} missing: {found}");
    }
    let caps = &found["result"]["capabilities"];
    assert_eq!(caps["resources"]["subscribe"], true, "{found}");
    assert!(caps.get("prompts").is_none() && caps.get("completions").is_none(), "{found}");
    assert_eq!(found["result"]["ttlMs"], 3_600_000, "{found}");

    s.send(&request_2026(2, "tools/list", json!({})));
    let listed = s.answer();
    assert_eq!((&listed["result"]["ttlMs"], &listed["result"]["cacheScope"]), (&json!(3_600_000), &json!("public")));
    assert!(listed["result"]["tools"].as_array().unwrap().iter().all(|t| t["title"].is_string()), "{listed}");

    s.send(&request_2026(3, "resources/list", json!({})));
    assert_eq!(s.answer()["result"]["ttlMs"], 0, "the VM set may change at any time");

    s.send(&request_2026(4, "tools/call", json!({ "name": "list_vms", "arguments": {} })));
    assert_eq!(s.answer()["result"]["structuredContent"], json!({ "vms": [] }));

    // Removed in 2026 or never declared: unknown methods.
    for (id, method) in [(5, "ping"), (6, "resources/subscribe"), (7, "prompts/list"), (8, "completion/complete")] {
        let params = match method {
            "resources/subscribe" => json!({ "uri": "vms://" }),
            "completion/complete" => {
                json!({ "ref": { "type": "ref/prompt", "name": "p" }, "argument": { "name": "a", "value": "" } })
            }
            _ => json!({}),
        };
        s.send(&request_2026(id, method, params));
        let a = s.answer();
        assert_eq!(a["error"]["code"], -32601, "{method}: {a}");
    }

    // A revision nobody speaks, named in `_meta`, is refused with the supported ones.
    let mut odd = request_2026(9, "tools/list", json!({}));
    odd["params"]["_meta"]["io.modelcontextprotocol/protocolVersion"] = json!("2099-01-01");
    s.send(&odd);
    let a = s.answer();
    assert!(a["error"]["code"].is_i64(), "{a}");
    assert!(a["error"].to_string().contains("2026-07-28"), "{a}");

    let (code, _) = s.finish();
    assert_eq!(code, Some(0));
}

#[test]
fn a_2025_session_gets_no_2026_items() {
    let env = TestEnv::new();
    let mut s = Served::start(&env);
    s.handshake();
    s.send(&json!({"jsonrpc":"2.0","id":1,"method":"tools/list"}));
    let listed = s.answer();
    assert!(listed["result"].get("ttlMs").is_none() && listed["result"].get("resultType").is_none(), "{listed}");
    s.send(&json!({"jsonrpc":"2.0","id":2,"method":"server/discover","params":{}}));
    let a = s.answer();
    assert!(a.get("error").is_some(), "discover is a 2026 method: {a}");
    s.ping(3);
}

/// The next notification with `method`, skipping others.
pub(super) fn notification(s: &Served, method: &str) -> Value {
    loop {
        let m = s.next();
        if m["method"] == method {
            return m;
        }
    }
}

#[test]
fn a_2026_listen_reports_vms_coming_and_their_changes() {
    let env = TestEnv::new();
    let mut s = Served::start(&env);
    let filter = json!({ "notifications": {
        "resourcesListChanged": true,
        "resourceSubscriptions": ["vm://w1", "file:///etc/shadow", "vm://../../etc"],
    }});
    s.send(&request_2026(1, "subscriptions/listen", filter));
    let ack = notification(&s, "notifications/subscriptions/acknowledged");
    let accepted = ack["params"].to_string();
    assert!(accepted.contains("vm://w1") && !accepted.contains("shadow") && !accepted.contains(".."), "{ack}");

    let create =
        json!({ "name": "create_vm", "arguments": { "name": "w1", "disk": { "type": "blank" }, "disk_size_gib": 1 } });
    s.send(&request_2026(2, "tools/call", create));
    let mut seen = (false, false, false);
    while !(seen.0 && seen.1 && seen.2) {
        let m = s.next();
        match m["method"].as_str() {
            Some("notifications/resources/list_changed") => seen.0 = true,
            Some("notifications/resources/updated") => {
                assert_eq!(m["params"]["uri"], "vm://w1", "{m}");
                seen.1 = true;
            }
            None if m["id"] == 2 => {
                assert!(m["result"]["isError"] != json!(true), "{m}");
                seen.2 = true;
            }
            _ => {}
        }
    }
    s.send(&json!({"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":1,"_meta":meta_2026()}}));
    s.send(&request_2026(3, "tools/call", json!({ "name": "list_vms", "arguments": {} })));
    assert_eq!(s.answer()["id"], 3);
}

#[test]
fn a_2025_subscription_reports_a_vms_changes_and_refuses_other_uris() {
    let env = TestEnv::new();
    let mut s = Served::start(&env);
    s.handshake();
    for (id, uri) in [(1, "file:///etc/shadow"), (2, "vm://-rf")] {
        s.send(&json!({"jsonrpc":"2.0","id":id,"method":"resources/subscribe","params":{"uri":uri}}));
        let a = s.answer();
        assert_eq!(a["error"]["code"], -32602, "{uri}: {a}");
    }
    s.send(&json!({"jsonrpc":"2.0","id":3,"method":"resources/subscribe","params":{"uri":"vm://w2"}}));
    assert_eq!(s.answer()["result"], json!({}));
    let create =
        json!({ "name": "create_vm", "arguments": { "name": "w2", "disk": { "type": "blank" }, "disk_size_gib": 1 } });
    s.send(&json!({"jsonrpc":"2.0","id":4,"method":"tools/call","params":create}));
    let updated = notification(&s, "notifications/resources/updated");
    assert_eq!(updated["params"]["uri"], "vm://w2", "{updated}");
}

#[test]
fn a_2026_request_gets_log_messages_only_at_the_level_it_asks_for() {
    let env = TestEnv::new();
    let mut s = Served::start(&env);
    let create = |id: u64, name: &str| {
        request_2026(
            id,
            "tools/call",
            json!({ "name": "create_vm", "arguments": { "name": name, "disk": { "type": "blank" }, "disk_size_gib": 1 } }),
        )
    };
    // Everything written before the answer to `id`.
    let until_answer = |s: &Served, id: u64| {
        let mut before = Vec::new();
        loop {
            let m = s.next();
            if m["id"] == id {
                return (m, before);
            }
            before.push(m);
        }
    };

    s.send(&create(1, "quiet"));
    let (answer, before) = until_answer(&s, 1);
    assert_eq!(answer["result"]["isError"], false, "{answer}");
    assert!(!before.iter().any(|m| m["method"] == "notifications/message"), "{before:?}");

    let mut asked = create(2, "chatty");
    asked["params"]["_meta"]["io.modelcontextprotocol/logLevel"] = json!("info");
    s.send(&asked);
    let (answer, before) = until_answer(&s, 2);
    assert_eq!(answer["result"]["isError"], false, "{answer}");
    let logged: Vec<&Value> = before.iter().filter(|m| m["method"] == "notifications/message").collect();
    assert_eq!(logged.len(), 1, "{before:?}");
    assert_eq!(logged[0]["params"]["data"]["vm"], "chatty");
}
