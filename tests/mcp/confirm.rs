//! Destructive calls ask the user first when the client can: `elicitation/create` on a
//! 2025 session, an input-required result on a 2026 request. A decline changes
//! nothing; `mcp.confirm_destructive` turns asking off or makes it a must.

use serde_json::{Value, json};

use super::stdio::{Served, meta_2026, request_2026};
use crate::common::vm::TestEnv;

fn create(s: &mut Served, id: u64, name: &str) {
    let args =
        json!({ "name": "create_vm", "arguments": { "name": name, "disk": { "type": "blank" }, "disk_size_gib": 1 } });
    s.send(&json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":args}));
    let a = s.answer();
    assert_eq!(a["result"]["isError"], json!(false), "{a}");
}

fn vm_names(s: &mut Served, id: u64) -> Vec<String> {
    s.send(&json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":"list_vms","arguments":{}}}));
    names_listed(s)
}

fn names_listed(s: &Served) -> Vec<String> {
    let a = s.answer();
    a["result"]["structuredContent"]["vms"]
        .as_array()
        .unwrap_or_else(|| panic!("{a}"))
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_owned())
        .collect()
}

fn handshake_with_elicitation(s: &mut Served) {
    s.send(&json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{
        "protocolVersion":"2025-11-25","capabilities":{"elicitation":{"form":{}}},"clientInfo":{"name":"test","version":"0"}}}));
    assert_eq!(s.answer()["result"]["protocolVersion"], "2025-11-25");
    s.send(&json!({"jsonrpc":"2.0","method":"notifications/initialized"}));
}

/// Waits for the server's `elicitation/create`, answers it with `action`, and
/// returns the question.
fn answer_elicitation(s: &mut Served, action: &str) -> String {
    loop {
        let m = s.next();
        if m["method"] == "elicitation/create" {
            let question = m["params"]["message"].as_str().unwrap_or_else(|| panic!("{m}")).to_owned();
            s.send(&json!({"jsonrpc":"2.0","id":m["id"],"result":{"action":action}}));
            return question;
        }
        assert!(m.get("result").is_none() && m.get("error").is_none(), "answered before asking: {m}");
    }
}

#[test]
fn a_2025_client_is_asked_and_a_decline_changes_nothing() {
    let env = TestEnv::new();
    let mut s = Served::start(&env);
    handshake_with_elicitation(&mut s);
    create(&mut s, 1, "web");

    let delete =
        json!({"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"delete_vm","arguments":{"name":"web"}}});
    s.send(&delete);
    let question = answer_elicitation(&mut s, "decline");
    assert!(question.starts_with("Delete VM web, its disk files ("), "{question}");
    let a = s.answer();
    assert_eq!(a["result"]["isError"], true, "{a}");
    assert!(a["result"]["content"][0]["text"].as_str().unwrap().contains("nothing changed"), "{a}");
    assert_eq!(vm_names(&mut s, 3), ["web"]);

    s.send(&delete);
    answer_elicitation(&mut s, "accept");
    let a = s.answer();
    assert_eq!(a["result"]["isError"], false, "{a}");
    assert!(vm_names(&mut s, 4).is_empty());
}

#[test]
fn a_2026_client_gets_an_input_required_result_tied_to_its_call() {
    let env = TestEnv::new();
    let mut s = Served::start(&env);
    let mut meta = meta_2026();
    meta["io.modelcontextprotocol/clientCapabilities"] = json!({ "elicitation": { "form": {} } });
    let call = |id: u64, name: &str, extra: Value| {
        let mut params = json!({ "name": "delete_vm", "arguments": { "name": name }, "_meta": meta.clone() });
        if let Value::Object(m) = extra {
            params.as_object_mut().unwrap().extend(m);
        }
        json!({ "jsonrpc": "2.0", "id": id, "method": "tools/call", "params": params })
    };
    s.send(&request_2026(
        1,
        "tools/call",
        json!({ "name": "create_vm", "arguments": { "name": "a", "disk": { "type": "blank" }, "disk_size_gib": 1 } }),
    ));
    assert_eq!(s.answer()["result"]["isError"], false);
    s.send(&request_2026(
        2,
        "tools/call",
        json!({ "name": "create_vm", "arguments": { "name": "b", "disk": { "type": "blank" }, "disk_size_gib": 1 } }),
    ));
    assert_eq!(s.answer()["result"]["isError"], false);

    s.send(&call(3, "a", json!({})));
    let asked = s.answer();
    assert_eq!(asked["result"]["resultType"], "input_required", "{asked}");
    let message =
        asked["result"]["inputRequests"]["confirm"]["params"]["message"].as_str().unwrap_or_else(|| panic!("{asked}"));
    assert!(message.starts_with("Delete VM a"), "{message}");
    let state = asked["result"]["requestState"].as_str().unwrap().to_owned();
    let yes = json!({ "inputResponses": { "confirm": { "action": "accept" } }, "requestState": state });

    // The handle answers only the call it was given for, and a made-up one nothing.
    s.send(&call(4, "b", yes.clone()));
    assert_eq!(s.answer()["result"]["resultType"], "input_required");
    let forged = json!({ "inputResponses": { "confirm": { "action": "accept" } }, "requestState": "0".repeat(10_000) });
    s.send(&call(5, "a", forged));
    assert_eq!(s.answer()["result"]["resultType"], "input_required");

    s.send(&call(6, "a", yes.clone()));
    let done = s.answer();
    assert_eq!(done["result"]["isError"], false, "{done}");
    // Used once: the same answer again is a new question.
    s.send(&call(7, "b", yes));
    assert_eq!(s.answer()["result"]["resultType"], "input_required");
    s.send(&request_2026(8, "tools/call", json!({ "name": "list_vms", "arguments": {} })));
    assert_eq!(names_listed(&s), ["b"]);
}

#[test]
fn always_refuses_where_the_client_cannot_ask_and_never_does_not_ask() {
    let env = TestEnv::with_config(json!({ "mcp": { "confirm_destructive": "always" } }));
    let mut s = Served::start(&env);
    s.handshake();
    create(&mut s, 1, "keep");
    s.send(&json!({"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"delete_vm","arguments":{"name":"keep"}}}));
    let a = s.answer();
    assert_eq!(a["result"]["isError"], true, "{a}");
    assert!(a["result"]["content"][0]["text"].as_str().unwrap().contains("mcp.confirm_destructive"), "{a}");
    assert_eq!(vm_names(&mut s, 3), ["keep"]);

    let env = TestEnv::with_config(json!({ "mcp": { "confirm_destructive": "never" } }));
    let mut s = Served::start(&env);
    handshake_with_elicitation(&mut s);
    create(&mut s, 1, "gone");
    s.send(&json!({"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"delete_vm","arguments":{"name":"gone"}}}));
    let a = s.answer();
    assert_eq!(a["result"]["isError"], false, "asked although told never to: {a}");
    assert!(vm_names(&mut s, 3).is_empty());
}

#[test]
fn a_bad_policy_is_a_config_error_naming_the_key() {
    let env = TestEnv::new();
    let mut config: Value = serde_json::from_str(&std::fs::read_to_string(&env.config_path).unwrap()).unwrap();
    config["mcp"] = json!({ "confirm_destructive": "sometimes" });
    std::fs::write(&env.config_path, config.to_string()).unwrap();
    let out = env.cli(&["vm", "list"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("mcp.confirm_destructive"), "{err}");
}

#[test]
fn only_snapshots_that_exist_are_asked_about() {
    let env = TestEnv::new();
    let mut s = Served::start(&env);
    handshake_with_elicitation(&mut s);
    create(&mut s, 1, "snappy");
    let call = |id: u64, tool: &str, snapshot: &str| json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":tool,"arguments":{"name":"snappy","snapshot":snapshot}}});
    s.send(&call(2, "create_snapshot", "clean"));
    assert_eq!(s.answer()["result"]["isError"], false);

    // A name that is not there (here a 100 kB one) is the tool's to refuse: no question.
    s.send(&call(3, "delete_snapshot", &"x".repeat(100_000)));
    let a = s.answer();
    assert_eq!(a["id"], 3, "asked about a snapshot that does not exist: {a}");
    assert_eq!(a["result"]["isError"], true, "{a}");

    s.send(&call(4, "revert_snapshot", "clean"));
    let question = answer_elicitation(&mut s, "cancel");
    assert!(question.starts_with("Revert VM snappy to snapshot clean?"), "{question}");
    assert_eq!(s.answer()["result"]["isError"], true);
    s.send(&call(5, "delete_snapshot", "clean"));
    let question = answer_elicitation(&mut s, "accept");
    assert!(question.starts_with("Delete snapshot clean of VM snappy?"), "{question}");
    assert_eq!(s.answer()["result"]["isError"], false);
}
