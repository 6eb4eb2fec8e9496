//! Wrong arguments over MCP: each is a tool error (the model sees it) that names the
//! argument, says what was expected in plain words, and quotes at most ~200
//! characters of what came, even when a value is 10 MB.

use serde_json::{Value, json};

use crate::common::mcp::{call, client, failed};

/// The error text of calling `tool` with `args`.
async fn refused(tool: &'static str, args: Value) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = client(dir.path()).await;
    let r = call(&c, tool, args).await;
    failed(tool, &r)
}

#[tokio::test]
async fn wrong_types_name_the_argument() {
    let cases: [(&'static str, Value, &str); 6] = [
        (
            "create_vm",
            json!({ "memory_mib": "abc" }),
            "argument `memory_mib`: expected a non-negative integer, got a string \"abc\"",
        ),
        (
            "create_vm",
            json!({ "vcpus": -2 }),
            "argument `vcpus`: expected an integer from 0 to 4294967295, got the number -2",
        ),
        (
            "stop_vm",
            json!({ "name": "web", "force": "yes" }),
            "argument `force`: expected true or false, got a string \"yes\"",
        ),
        ("get_vm", json!({ "name": 5 }), "argument `name`: expected a string, got the number 5"),
        (
            "add_port_forward",
            json!({ "name": "web", "host_port": 70000, "guest_port": 22 }),
            "argument `host_port`: expected an integer from 0 to 65535, got the number 70000",
        ),
        (
            "create_vm",
            json!({ "nics": [{ "network": "user", "port_forwards": [{ "host_port": "ssh", "guest_port": 22 }] }] }),
            "argument `nics[0].port_forwards[0].host_port`: expected an integer from 0 to 65535, got a string \"ssh\"",
        ),
    ];
    for (tool, args, want) in cases {
        assert_eq!(refused(tool, args.clone()).await, want, "{tool} {args}");
    }
}

#[tokio::test]
async fn missing_and_unknown_arguments_are_named() {
    assert_eq!(refused("get_vm", json!({})).await, "missing argument `name`");
    assert_eq!(
        refused("get_vm", json!({ "name": "web", "nmae": "x" })).await,
        "unknown argument `nmae`; expected `name`"
    );
}

#[tokio::test]
async fn a_ten_megabyte_value_is_quoted_in_part() {
    let huge = "a".repeat(10 << 20);
    // Wrong type: the extractor quotes it.
    let e = refused("create_vm", json!({ "memory_mib": huge })).await;
    assert!(e.len() < 600 && e.contains("(10485760 characters)"), "{} bytes: {}", e.len(), &e[..e.len().min(600)]);
    // Right type, bad value: the operation's own error is clipped on the way out.
    for args in [
        json!({ "name": huge }),
        json!({ "disk": format!("/{huge}") }),
        json!({ "cloud_init": { "hostname": huge } }),
        json!({ "name": "web", "network": huge }),
    ] {
        let e = refused("create_vm", args).await;
        assert!(e.len() < 2000, "{} bytes: {}", e.len(), &e[..600]);
    }
    // A 10 MB argument name.
    let e = refused("get_vm", json!({ "name": "web", huge.clone(): 1 })).await;
    assert!(e.len() < 2000, "{} bytes: {}", e.len(), &e[..600]);
}
