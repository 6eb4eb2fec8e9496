//! Long calls as tasks (the Tasks extension, SEP-2663) without a guest: the server
//! declares the extension, calls that are not long (or whose arguments say they will
//! not wait) never become tasks, a `stop_vm` task ends with what the plain call
//! returns, and task ids a client makes up are refused with an error naming them,
//! never read from a file outside `<state>/tasks`.

use std::path::Path;
use std::time::{Duration, Instant};

use rmcp::ServiceError;
use rmcp::model::{CallToolResponse, CancelTaskParams, ErrorCode, GetTaskParams, ProtocolVersion, TaskStatus};
use serde_json::{Value, json};

use crate::common::mcp::{connect, ops, params, task_result, tasks_client, text, wait_task};

/// Writes an empty raw disk for a VM that is only defined, never booted.
fn blank_disk(dir: &Path) -> std::path::PathBuf {
    let disk = dir.join("box.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).expect("write disk");
    disk
}

/// The records in `<state>/tasks`.
fn records(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir.join("state/tasks"))
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn calls_that_do_not_wait_are_answered_plainly_even_to_a_tasks_client() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = blank_disk(dir.path());
    let c = tasks_client(ops(dir.path())).await;
    let caps = &c.peer_info().expect("server info").capabilities;
    assert!(caps.supports_tasks(), "the server declares the tasks extension: {caps:?}");
    let long_name = "x".repeat(10_000);
    for (tool, args) in [
        ("create_vm", json!({ "name": "box", "disk": disk })),
        ("list_vms", json!({})),
        ("get_vm", json!({ "name": "box" })),
        ("get_vm_ip", json!({ "name": "box" })),
        ("get_vm_ip", json!({ "name": "box", "wait_s": 0 })),
        ("clone_vm", json!({ "source": "box", "name": "copy" })),
        ("reboot_vm", json!({ "name": "box" })),
        // Long tools whose VM name is no VM name: the plain call says so at once.
        ("start_vm", json!({ "name": "../../etc" })),
        ("stop_vm", json!({ "name": long_name })),
        ("wait_for_console", json!({ "pattern": "x" })),
    ] {
        match c.call_tool_once(params(tool, args.clone())).await.expect("tools/call") {
            CallToolResponse::Complete(r) => {
                let t = text(&r);
                assert!(t.len() < 4000, "{tool}: {} bytes of text", t.len());
            }
            other => panic!("{tool} {args}: expected a plain result, got {other:?}"),
        }
    }
    assert_eq!(records(dir.path()), Vec::<String>::new(), "no task record was made");
}

#[tokio::test]
async fn a_stop_task_ends_with_what_the_plain_call_returns() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = blank_disk(dir.path());
    let tc = tasks_client(ops(dir.path())).await;
    let plain = connect(ops(dir.path()), ProtocolVersion::V_2025_11_25).await;
    crate::common::mcp::ok(&plain, "create_vm", json!({ "name": "box", "disk": disk })).await;
    let args = json!({ "name": "box", "force": true });

    let t0 = Instant::now();
    let created = match tc.call_tool_once(params("stop_vm", args.clone())).await.expect("tools/call") {
        CallToolResponse::Task(t) => t,
        other => panic!("expected a task, got {other:?}"),
    };
    eprintln!("stop_vm: CreateTaskResult after {:?}", t0.elapsed());
    assert_eq!(created.task.status, TaskStatus::Working);
    assert!(created.task.status_message.as_deref().is_some_and(|m| m.contains("stop_vm")), "{created:?}");
    assert!(created.task.ttl_ms.is_some_and(|t| t > 0) && created.task.poll_interval_ms.is_some(), "{created:?}");
    let id = created.task.task_id.clone();
    assert_eq!(records(dir.path()), vec![format!("{id}.json")]);

    let done = wait_task(tc.peer(), &id, Duration::from_secs(120), "an end", |t| t.status().is_terminal()).await;
    let from_task = task_result(&done);
    let from_plain = plain.call_tool(params("stop_vm", args)).await.expect("plain tools/call");
    assert_eq!(from_task.is_error, from_plain.is_error, "{} / {}", text(&from_task), text(&from_plain));
    assert_eq!(from_task.structured_content, from_plain.structured_content);
    assert_eq!(text(&from_task), text(&from_plain));
    assert_eq!(done.task.status_message.as_deref(), Some(text(&from_plain).as_str()));

    // A second get answers the same; a cancel of an ended task changes nothing.
    tc.peer().cancel_task(CancelTaskParams::new(id.clone())).await.expect("tasks/cancel of an ended task");
    let again = tc.peer().get_task(GetTaskParams::new(id.clone())).await.expect("tasks/get").task;
    assert_eq!(again, done);
    let record: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join(format!("state/tasks/{id}.json"))).expect("record"))
            .expect("record JSON");
    assert_eq!(record["outcome"]["status"], "completed", "{record:#}");
}

/// The error of a `tasks/get` or `tasks/cancel` that must be refused as invalid params.
fn refused(got: Result<impl std::fmt::Debug, ServiceError>, id: &str) -> String {
    match got {
        Err(ServiceError::McpError(e)) => {
            assert_eq!(e.code, ErrorCode::INVALID_PARAMS, "{e:?}");
            e.message.into_owned()
        }
        other => panic!("task id {:?}: expected invalid params, got {other:?}", &id[..id.len().min(60)]),
    }
}

#[tokio::test]
async fn made_up_task_ids_are_refused_naming_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = tasks_client(ops(dir.path())).await;
    // A record-like file beside the task folder: `../planted` must not reach it.
    let state = dir.path().join("state");
    std::fs::create_dir_all(state.join("tasks")).expect("tasks dir");
    let planted = json!({ "task_id": "../planted", "tool": "start_vm", "vm": "box", "created_at": "2026-01-01T00:00:00Z",
        "last_updated_at": "2026-01-01T00:00:00Z", "owner": null, "status_message": "PLANTED",
        "outcome": { "status": "cancelled" } });
    std::fs::write(state.join("planted.json"), planted.to_string()).expect("plant");
    let unknown = uuid::Uuid::new_v4().to_string();
    let huge = "a".repeat(10_000);
    for id in [unknown.as_str(), huge.as_str(), "../../etc/passwd", "../planted", "", "..", "/etc/passwd"] {
        for msg in [
            refused(c.peer().get_task(GetTaskParams::new(id)).await, id),
            refused(c.peer().cancel_task(CancelTaskParams::new(id)).await, id),
        ] {
            assert!(msg.contains("taskId") && msg.contains("no task"), "{msg}");
            assert!(msg.len() < 600, "the id is clipped: {} bytes", msg.len());
            assert!(!msg.contains("PLANTED") && !msg.contains("root:"), "{msg}");
            if id.len() < 100 {
                assert!(msg.contains(&format!("{id:?}")), "the id is quoted: {msg}");
            }
        }
    }
    assert_eq!(records(dir.path()), Vec::<String>::new());
}

#[tokio::test]
async fn a_client_without_tasks_is_told_it_must_declare_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = connect(ops(dir.path()), ProtocolVersion::V_2025_11_25).await;
    match c.peer().get_task(GetTaskParams::new(uuid::Uuid::new_v4().to_string())).await {
        Err(ServiceError::McpError(e)) => assert_eq!(e.code, ErrorCode::MISSING_REQUIRED_CLIENT_CAPABILITY, "{e:?}"),
        other => panic!("expected a missing-capability error, got {other:?}"),
    }
}
