//! The console, display, guest agent and statistics tools over rmcp's in-process
//! client: annotations, errors that say what was wrong, and the calls that need no
//! booted guest (console log of a stopped VM, VNC list, host figures).

use std::path::Path;

use rmcp::model::ReadResourceRequestParams;
use serde_json::json;

use crate::common::mcp::{Client, client, err as error_of, ok};

/// A client with a stopped VM "box" defined on an empty raw disk.
async fn with_stopped_vm(dir: &Path) -> Client {
    let disk = dir.join("box.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).expect("write disk");
    let c = client(dir).await;
    ok(&c, "create_vm", json!({ "name": "box", "disk": disk })).await;
    c
}

#[tokio::test]
async fn tools_are_listed_with_their_annotations() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = client(dir.path()).await;
    let tools = c.list_all_tools().await.expect("tools/list");
    let read_only = [
        "get_console_log",
        "wait_for_console",
        "get_vnc_ports",
        "get_vnc_info",
        "screenshot_vm",
        "guest_ping",
        "guest_info",
        "guest_file_read",
        "vm_stats",
        "host_stats",
    ];
    let destructive = ["send_keys", "type_text", "guest_exec", "guest_file_write"];
    for name in read_only.iter().chain(&destructive) {
        let t = tools.iter().find(|t| t.name == *name).unwrap_or_else(|| panic!("{name} is not listed"));
        let a = t.annotations.as_ref().expect("annotations");
        let ro = read_only.contains(name);
        assert_eq!(a.read_only_hint, Some(ro), "{name} read_only_hint");
        if !ro {
            assert_eq!(a.destructive_hint, Some(true), "{name} destructive_hint");
        }
        assert_eq!(a.open_world_hint, Some(false), "{name} open_world_hint");
        assert!(t.output_schema.is_some(), "{name} has an output schema");
    }
}

#[tokio::test]
async fn unknown_vm_is_a_tool_error_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = client(dir.path()).await;
    let n = json!({ "name": "ghost" });
    for (tool, args) in [
        ("get_console_log", n.clone()),
        ("wait_for_console", json!({ "name": "ghost", "pattern": "x", "timeout_s": 1 })),
        ("get_vnc_info", n.clone()),
        ("screenshot_vm", n.clone()),
        ("send_keys", json!({ "name": "ghost", "keys": ["ret"] })),
        ("type_text", json!({ "name": "ghost", "text": "hi" })),
        ("guest_ping", n.clone()),
        ("guest_info", n.clone()),
        ("guest_exec", json!({ "name": "ghost", "command": "/bin/true" })),
        ("guest_file_read", json!({ "name": "ghost", "path": "/etc/hostname" })),
        ("guest_file_write", json!({ "name": "ghost", "path": "/tmp/x", "content": "x" })),
        ("vm_stats", n.clone()),
    ] {
        let msg = error_of(&c, tool, args).await;
        assert!(msg.contains("ghost"), "{tool}: {msg}");
    }
}

#[tokio::test]
async fn stopped_vm_is_refused_with_its_state() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = with_stopped_vm(dir.path()).await;
    let n = json!({ "name": "box" });
    for (tool, args) in [
        ("get_vnc_info", n.clone()),
        ("screenshot_vm", n.clone()),
        ("send_keys", json!({ "name": "box", "keys": ["ctrl-alt-delete"] })),
        ("type_text", json!({ "name": "box", "text": "root\n" })),
        ("guest_ping", n.clone()),
        ("guest_info", n.clone()),
        ("guest_exec", json!({ "name": "box", "command": "/bin/true" })),
        ("guest_file_read", json!({ "name": "box", "path": "/etc/hostname" })),
        ("guest_file_write", json!({ "name": "box", "path": "/tmp/x", "content": "x" })),
        ("vm_stats", n.clone()),
    ] {
        let msg = error_of(&c, tool, args).await;
        assert!(msg.contains("box") && msg.contains("shutoff"), "{tool}: {msg}");
    }
}

#[tokio::test]
async fn bad_input_is_explained() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = with_stopped_vm(dir.path()).await;
    let msg = error_of(&c, "send_keys", json!({ "name": "box", "keys": ["ctrl-nosuchkey"] })).await;
    assert!(msg.contains("nosuchkey"), "{msg}");
    let msg = error_of(&c, "wait_for_console", json!({ "name": "box", "pattern": "(unclosed" })).await;
    assert!(msg.contains("(unclosed"), "{msg}");
    let msg = error_of(&c, "guest_exec", json!({ "name": "box", "command": " " })).await;
    assert!(msg.contains("command"), "{msg}");
    let both = json!({ "name": "box", "path": "/tmp/x", "content": "a", "content_base64": "YQ==" });
    assert!(error_of(&c, "guest_file_write", both).await.contains("exactly one"));
    let neither = json!({ "name": "box", "path": "/tmp/x" });
    assert!(error_of(&c, "guest_file_write", neither).await.contains("exactly one"));
    let bad = json!({ "name": "box", "path": "/tmp/x", "content_base64": "!!" });
    assert!(error_of(&c, "guest_file_write", bad).await.contains("base64"));
}

#[tokio::test]
async fn console_log_of_a_stopped_vm_is_read_and_matched() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = with_stopped_vm(dir.path()).await;
    let empty = ok(&c, "get_console_log", json!({ "name": "box" })).await;
    assert_eq!(empty["text"], "");
    let path = empty["path"].as_str().expect("log path").to_owned();
    std::fs::write(&path, "booting\nubuntu login: \n").expect("write console log");
    let log = ok(&c, "get_console_log", json!({ "name": "box", "lines": 1 })).await;
    assert!(log["text"].as_str().expect("text").contains("login:"), "{log}");
    let all = ok(&c, "get_console_log", json!({ "name": "box", "since_offset": 0 })).await;
    assert!(all["text"].as_str().expect("text").starts_with("booting"), "{all}");
    assert_eq!(all["next_offset"], 23);
    let m = ok(&c, "wait_for_console", json!({ "name": "box", "pattern": "log[i]n:", "timeout_s": 5 })).await;
    assert_eq!(m["line"].as_str().map(str::trim_end), Some("ubuntu login:"), "{m}");
    // A stopped VM prints nothing more: waiting for anything else fails at once.
    let msg = error_of(&c, "wait_for_console", json!({ "name": "box", "pattern": "never", "timeout_s": 30 })).await;
    assert!(msg.contains("never"), "{msg}");
}

#[tokio::test]
async fn vnc_ports_and_host_stats_need_no_guest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = with_stopped_vm(dir.path()).await;
    assert_eq!(ok(&c, "get_vnc_ports", json!({})).await, json!({ "vnc": [] }));
    let h = ok(&c, "host_stats", json!({})).await;
    assert!(h["cpus"].as_u64().is_some_and(|n| n > 0), "{h}");
    assert!(h["memory_total_bytes"].as_u64().is_some_and(|n| n > 0), "{h}");
}

#[tokio::test]
async fn vmstats_resource_is_a_template_and_refuses_unknown_vms() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = with_stopped_vm(dir.path()).await;
    let templates = c.list_all_resource_templates().await.expect("templates");
    assert!(templates.iter().any(|t| t.uri_template == "vmstats://{name}"), "{templates:?}");
    let err = c.read_resource(ReadResourceRequestParams::new("vmstats://ghost")).await.expect_err("no such VM");
    assert!(err.to_string().contains("ghost"), "{err}");
    let err = c.read_resource(ReadResourceRequestParams::new("vmstats://box")).await.expect_err("not running");
    assert!(err.to_string().contains("box"), "{err}");
}
