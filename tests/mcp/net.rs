//! The network tools over rmcp's client: annotations, tool errors for bad input, and
//! port forwards, NIC counters and NICs of a created (never started) VM.

use serde_json::{Value, json};

use crate::common::mcp::{Client, client, err, ok as expect_ok};

const READ_ONLY: [&str; 3] = ["get_vm_ip", "list_port_forwards", "nic_stats"];

async fn expect_error(c: &Client, name: &'static str, args: Value, needle: &str) {
    let msg = err(c, name, args).await;
    assert!(msg.contains(needle), "{name}: {msg:?} lacks {needle:?}");
}

/// Defines VM "web" (direct kernel boot from an empty file, one user-mode NIC
/// forwarding host 127.0.0.1:42022 to guest port 22); it is never started.
async fn define_web(c: &Client, dir: &std::path::Path) -> Value {
    let kernel = dir.join("vmlinuz");
    std::fs::write(&kernel, b"").expect("kernel file");
    expect_ok(
        c,
        "create_vm",
        json!({
            "name": "web",
            "kernel": kernel,
            "network": "user",
            "port_forwards": [{ "host_port": 42022, "guest_port": 22 }],
        }),
    )
    .await
}

#[tokio::test]
async fn net_tools_are_listed_with_their_annotations() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = client(dir.path()).await;
    let tools = c.list_all_tools().await.expect("tools/list");
    for name in ["get_vm_ip", "add_port_forward", "remove_port_forward", "list_port_forwards", "nic_stats"] {
        let t = tools.iter().find(|t| t.name == name).unwrap_or_else(|| panic!("{name} is not listed"));
        let a = t.annotations.as_ref().expect("annotations");
        assert_eq!(a.read_only_hint, Some(READ_ONLY.contains(&name)), "{name} read_only_hint");
        assert_eq!(a.open_world_hint, Some(false), "{name} open_world_hint");
        assert!(t.output_schema.is_some(), "{name} has no output schema");
    }
    let remove = tools.iter().find(|t| t.name == "remove_port_forward").expect("listed");
    assert_eq!(remove.annotations.as_ref().and_then(|a| a.destructive_hint), Some(true));
    let add = tools.iter().find(|t| t.name == "add_port_forward").expect("listed");
    assert_eq!(add.annotations.as_ref().and_then(|a| a.destructive_hint), Some(false));
}

#[tokio::test]
async fn unknown_vm_is_a_tool_error_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = client(dir.path()).await;
    let name = json!({ "name": "ghost" });
    expect_error(&c, "get_vm_ip", name.clone(), "no VM named \"ghost\"").await;
    expect_error(&c, "list_port_forwards", name.clone(), "no VM named \"ghost\"").await;
    expect_error(&c, "nic_stats", name, "no VM named \"ghost\"").await;
    expect_error(&c, "add_port_forward", json!({ "name": "ghost", "host_port": 42080, "guest_port": 80 }), "ghost")
        .await;
    expect_error(&c, "remove_port_forward", json!({ "name": "ghost", "host_port": 42080 }), "ghost").await;
}

#[tokio::test]
async fn port_forwards_of_a_stopped_vm_are_added_listed_and_removed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = client(dir.path()).await;
    define_web(&c, dir.path()).await;

    let listed = expect_ok(&c, "list_port_forwards", json!({ "name": "web" })).await;
    assert_eq!(listed["forwards"].as_array().map(Vec::len), Some(1), "{listed}");
    assert_eq!(listed["forwards"][0]["host_port"], 42022);
    assert_eq!(listed["forwards"][0]["active"], Value::Null);

    let added = expect_ok(
        &c,
        "add_port_forward",
        json!({ "name": "web", "host_port": 42053, "guest_port": 53, "protocol": "udp", "host_address": "0.0.0.0" }),
    )
    .await;
    assert_eq!(added["forwards"].as_array().map(Vec::len), Some(2), "{added}");
    assert_eq!(added["forwards"][1]["protocol"], "udp");
    assert_eq!(added["forwards"][1]["host_addr"], "0.0.0.0");

    let left = expect_ok(&c, "remove_port_forward", json!({ "name": "web", "host_port": 42022 })).await;
    assert_eq!(left["forwards"].as_array().map(Vec::len), Some(1), "{left}");
    assert_eq!(left["forwards"][0]["host_port"], 42053);
}

#[tokio::test]
async fn bad_port_forwards_are_tool_errors_that_say_why() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = client(dir.path()).await;
    define_web(&c, dir.path()).await;
    expect_error(&c, "add_port_forward", json!({ "name": "web", "host_port": 0, "guest_port": 22 }), "1-65535").await;
    expect_error(
        &c,
        "add_port_forward",
        json!({ "name": "web", "host_port": 42022, "guest_port": 80 }),
        "already used",
    )
    .await;
    expect_error(
        &c,
        "add_port_forward",
        json!({ "name": "web", "host_port": 42023, "guest_port": 22, "nic": 3 }),
        "nic",
    )
    .await;
    expect_error(&c, "remove_port_forward", json!({ "name": "web", "host_port": 42999 }), "list_port_forwards").await;
}

#[tokio::test]
async fn nic_stats_of_a_stopped_vm_lists_its_nic_with_a_note() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = client(dir.path()).await;
    define_web(&c, dir.path()).await;
    let s = expect_ok(&c, "nic_stats", json!({ "name": "web" })).await;
    assert_eq!(s["nics"].as_array().map(Vec::len), Some(1), "{s}");
    assert_eq!(s["nics"][0]["network"], "user");
    assert_eq!(s["nics"][0]["counters"], Value::Null);
    assert!(s["nics"][0]["note"].is_string(), "{s}");
}

#[tokio::test]
async fn get_vm_ip_of_a_stopped_vm_says_to_start_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = client(dir.path()).await;
    define_web(&c, dir.path()).await;
    expect_error(&c, "get_vm_ip", json!({ "name": "web", "wait_s": 5 }), "start it first").await;
}

#[tokio::test]
async fn create_vm_takes_several_nics() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = client(dir.path()).await;
    let kernel = dir.path().join("vmlinuz");
    std::fs::write(&kernel, b"").expect("kernel file");
    let vm = expect_ok(
        &c,
        "create_vm",
        json!({
            "name": "multi",
            "kernel": kernel,
            "nics": [
                { "network": "user", "port_forwards": [{ "host_port": 42122, "guest_port": 22 }] },
                { "network": "user", "model": "e1000", "mac": "52:54:00:aa:bb:cc" },
            ],
        }),
    )
    .await;
    assert_eq!(vm["name"], "multi", "{vm}");
    let got = expect_ok(&c, "get_vm", json!({ "name": "multi" })).await;
    assert_eq!(got["vm"]["nics"].as_array().map(Vec::len), Some(2), "{got}");
    assert_eq!(got["vm"]["nics"][1]["mac"], "52:54:00:aa:bb:cc", "{got}");
}

#[tokio::test]
async fn create_vm_refuses_nics_with_network() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = client(dir.path()).await;
    let kernel = dir.path().join("vmlinuz");
    std::fs::write(&kernel, b"").expect("kernel file");
    expect_error(
        &c,
        "create_vm",
        json!({ "name": "both", "kernel": kernel, "network": "user", "nics": [{ "network": "user" }] }),
        "not both",
    )
    .await;
}
