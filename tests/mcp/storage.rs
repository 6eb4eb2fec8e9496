//! The storage tools over rmcp's in-process client: listed with the right
//! annotations, bad input as isError results that say what was wrong, and a real call
//! of each on stopped VMs with blank disks (QEMU runs only paused, for snapshots).

use serde_json::json;

use crate::common::mcp::{err, ok};

#[tokio::test]
async fn storage_tools_are_listed_with_annotations() {
    let dir = tempfile::tempdir().expect("tempdir");
    let client = crate::common::mcp::client(dir.path()).await;
    let tools = client.list_all_tools().await.expect("tools/list");
    let expect: [(&str, bool, bool); 11] = [
        ("list_images", true, false),
        ("list_isos", true, false),
        ("list_snapshots", true, false),
        ("attach_iso", false, false),
        ("eject_iso", false, false),
        ("clone_vm", false, false),
        ("resize_disk", false, false),
        ("create_snapshot", false, false),
        ("reset_vm_disk", false, true),
        ("revert_snapshot", false, true),
        ("delete_snapshot", false, true),
    ];
    for (name, read_only, destructive) in expect {
        let t = tools.iter().find(|t| t.name == name).unwrap_or_else(|| panic!("{name} not listed"));
        let a = t.annotations.as_ref().expect("annotations");
        assert_eq!(a.read_only_hint, Some(read_only), "{name} readOnlyHint");
        assert_eq!(a.open_world_hint, Some(false), "{name} openWorldHint");
        if !read_only {
            assert_eq!(a.destructive_hint, Some(destructive), "{name} destructiveHint");
        }
        assert!(t.output_schema.is_some(), "{name} has an output schema");
    }
}

#[tokio::test]
async fn bad_input_gives_useful_tool_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let client = crate::common::mcp::client(dir.path()).await;
    let ghost = json!({ "name": "ghost" });
    let snap = json!({ "name": "ghost", "snapshot": "s1" });
    for (tool, args) in [
        ("attach_iso", json!({ "name": "ghost", "iso": "/tmp/x.iso" })),
        ("eject_iso", ghost.clone()),
        ("resize_disk", json!({ "name": "ghost", "size_gib": 4 })),
        ("reset_vm_disk", ghost.clone()),
        ("list_snapshots", ghost.clone()),
        ("create_snapshot", snap.clone()),
        ("revert_snapshot", snap.clone()),
        ("delete_snapshot", snap.clone()),
        ("clone_vm", json!({ "source": "ghost", "name": "copy" })),
    ] {
        let msg = err(&client, tool, args).await;
        assert!(msg.contains("ghost"), "{tool}: {msg}");
    }
    let both = json!({ "name": "b", "disk": "/x.qcow2", "disk_source": { "type": "blank" } });
    let msg = err(&client, "create_vm", both).await;
    assert!(msg.contains("duplicate field `disk`"), "{msg}");
    let msg = err(&client, "create_vm", json!({ "name": "b", "disk": { "type": "floppy" } })).await;
    assert!(msg.contains("floppy") && msg.contains("master"), "{msg}");
    ok(&client, "create_vm", json!({ "name": "v", "disk": { "type": "blank" }, "disk_size_gib": 1 })).await;
    let msg = err(&client, "attach_iso", json!({ "name": "v", "iso": "/etc/passwd" })).await;
    assert!(msg.contains("/etc/passwd") || msg.contains("iso"), "{msg}");
    let msg = err(&client, "resize_disk", json!({ "name": "v", "size_gib": 0 })).await;
    assert!(msg.contains("size_gib"), "{msg}");
    let msg = err(&client, "revert_snapshot", json!({ "name": "v", "snapshot": "nope" })).await;
    assert!(msg.contains("list_snapshots"), "{msg}");
}

#[tokio::test(flavor = "multi_thread")]
async fn storage_tools_work_on_stopped_vms() {
    let dir = tempfile::tempdir().expect("tempdir");
    let client = crate::common::mcp::client(dir.path()).await;
    assert_eq!(ok(&client, "list_images", json!({})).await, json!({ "images": [] }));
    assert_eq!(ok(&client, "list_isos", json!({})).await, json!({ "isos": [] }));

    let vm = ok(
        &client,
        "create_vm",
        json!({ "name": "src", "network": "none", "disk_source": { "type": "blank" }, "disk_size_gib": 1 }),
    )
    .await;
    assert_eq!(
        (&vm["name"], &vm["state"], &vm["changed"]),
        (&json!("src"), &json!("shutoff"), &json!("defined")),
        "{vm}"
    );
    let vm = ok(&client, "get_vm", json!({ "name": "src" })).await;
    let disk = vm["vm"]["disks"][0]["path"].as_str().expect("disk path").to_owned();
    let images = ok(&client, "list_images", json!({})).await;
    assert_eq!(images["images"][0]["used_by"], json!(["src"]), "{images}");
    assert_eq!(images["images"][0]["virtual_size_bytes"], json!(1u64 << 30));

    ok(&client, "resize_disk", json!({ "name": "src", "size_gib": 2 })).await;
    let images = ok(&client, "list_images", json!({})).await;
    assert_eq!(images["images"][0]["virtual_size_bytes"], json!(2u64 << 30));

    std::fs::write(dir.path().join("tools.iso"), b"not really an ISO").expect("write iso");
    ok(&client, "attach_iso", json!({ "name": "src", "iso": "tools.iso" })).await;
    let isos = ok(&client, "list_isos", json!({})).await;
    assert_eq!(isos["isos"][0]["used_by"], json!(["src"]), "{isos}");
    ok(&client, "eject_iso", json!({ "name": "src" })).await;
    let isos = ok(&client, "list_isos", json!({})).await;
    assert_eq!(isos["isos"][0]["used_by"], json!([]), "{isos}");

    assert_eq!(ok(&client, "list_snapshots", json!({ "name": "src" })).await["snapshots"], json!([]));
    let s = ok(&client, "create_snapshot", json!({ "name": "src", "snapshot": "clean" })).await;
    assert_eq!((&s["snapshot"]["name"], &s["snapshot"]["live"]), (&json!("clean"), &json!(false)));
    let listed = ok(&client, "list_snapshots", json!({ "name": "src" })).await;
    assert_eq!(listed["snapshots"][0]["name"], "clean");
    ok(&client, "revert_snapshot", json!({ "name": "src", "snapshot": "clean" })).await;
    let d = ok(&client, "delete_snapshot", json!({ "name": "src", "snapshot": "clean" })).await;
    assert_eq!(d, json!({ "name": "src", "deleted": "clean" }));

    let c = ok(&client, "clone_vm", json!({ "source": "src", "name": "copy" })).await;
    assert_eq!(c["vm"]["name"], "copy", "{c}");
    let c = ok(&client, "get_vm", json!({ "name": "copy" })).await;
    let clone_disk = c["vm"]["disks"][0]["path"].as_str().expect("clone disk").to_owned();
    assert_ne!(clone_disk, disk);
    ok(&client, "reset_vm_disk", json!({ "name": "copy" })).await;
    let del = ok(&client, "delete_vm", json!({ "name": "copy", "keep_disks": true })).await;
    assert_eq!(del["kept"], json!([clone_disk]), "{del}");
    assert!(std::path::Path::new(&clone_disk).exists());
    let del = ok(&client, "delete_vm", json!({ "name": "src" })).await;
    assert_eq!(del["removed"], json!([disk]), "{del}");
}
