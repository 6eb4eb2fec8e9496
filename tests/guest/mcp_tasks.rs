//! Long calls as tasks (the Tasks extension, SEP-2663) against TCG guests: `start_vm`
//! as a task ends with what the plain call returns, `tasks/cancel` stops a console wait
//! and says what the VM was left in (the VM goes on untouched), and task records
//! written by one `kvm-mcp serve` process are answered by another, while the first runs
//! and after it was killed in the middle of one.

use std::time::{Duration, Instant};

use kvm_mcp::ops::{CreateRequest, DiskSource, StopOptions};
use kvm_mcp::state::VmState;
use rmcp::model::{CallToolResponse, CancelTaskParams, ProtocolVersion, TaskStatus};
use serde_json::{Value, json};

use crate::common::mcp::{connect, ok, params, succeeded, task_result, tasks_client, text, wait_task};
use crate::common::serve::ServeProcess;
use crate::common::vm::{GUEST_DEADLINE, TestEnv};

/// A pattern no guest prints.
const NEVER: &str = "NEVER-PRINTED-[0-9]{12}";

#[tokio::test(flavor = "multi_thread")]
async fn start_as_a_task_then_cancel_a_console_wait_leaves_the_vm_running() {
    let env = TestEnv::new();
    let disk = env.disk("tk");
    let plain = connect(env.ops.clone(), ProtocolVersion::V_2025_11_25).await;
    let tc = tasks_client(env.ops.clone()).await;
    ok(&plain, "create_vm", json!({ "name": "tk", "disk": disk, "network": "user" })).await;

    // start_vm: a task at once, working with a message, then completed.
    let t0 = Instant::now();
    let created = match tc.call_tool_once(params("start_vm", json!({ "name": "tk" }))).await.expect("tools/call") {
        CallToolResponse::Task(t) => t,
        other => panic!("expected a task, got {other:?}"),
    };
    let to_task = t0.elapsed();
    assert_eq!(created.task.status, TaskStatus::Working);
    let first = created.task.status_message.clone().unwrap_or_default();
    assert!(first.contains("start_vm") && first.contains("\"tk\""), "{first}");
    let id = created.task.task_id.clone();
    let working = tc.peer().get_task(rmcp::model::GetTaskParams::new(id.clone())).await.expect("tasks/get").task;
    assert!(working.task.status_message.is_some(), "{working:?}");
    let done = wait_task(tc.peer(), &id, GUEST_DEADLINE, "an end", |t| t.status().is_terminal()).await;
    let to_done = t0.elapsed();
    let from_task = task_result(&done);
    let started = succeeded("start_vm", from_task.clone());
    assert_eq!((&started["state"], &started["changed"]), (&json!("running"), &json!("started")), "{started:#}");
    eprintln!("start_vm task: CreateTaskResult after {to_task:?}, completed seen after {to_done:?}");

    // The plain client gets the plain result for the same call, with the same content.
    env.ops.stop("tk", StopOptions { force: true, timeout: None }, &|_| {}).await.expect("force off");
    match plain.call_tool_once(params("start_vm", json!({ "name": "tk" }))).await.expect("plain tools/call") {
        CallToolResponse::Complete(r) => {
            assert_eq!(r.structured_content, from_task.structured_content, "{}", text(&r));
        }
        other => panic!("a client without tasks got {other:?}"),
    }
    env.wait_console("tk", "FIXTURE-READY", 1).await;
    let pid = env.ops.info("tk").expect("info").pid;

    // A console wait for a line that never comes, cancelled.
    let args = json!({ "name": "tk", "pattern": NEVER, "timeout_s": 900 });
    let wait = match tc.call_tool_once(params("wait_for_console", args)).await.expect("tools/call") {
        CallToolResponse::Task(t) => t.task.task_id,
        other => panic!("expected a task, got {other:?}"),
    };
    let waiting = wait_task(tc.peer(), &wait, GUEST_DEADLINE, "a heartbeat", |t| {
        t.task.status_message.as_deref().is_some_and(|m| m.contains("waiting for"))
    })
    .await;
    assert_eq!(waiting.status(), TaskStatus::Working, "{waiting:?}");
    let t1 = Instant::now();
    tc.peer().cancel_task(CancelTaskParams::new(wait.clone())).await.expect("tasks/cancel");
    let cancelled = wait_task(tc.peer(), &wait, GUEST_DEADLINE, "an end", |t| t.status().is_terminal()).await;
    eprintln!("wait_for_console task: cancelled seen {:?} after tasks/cancel", t1.elapsed());
    assert_eq!(cancelled.status(), TaskStatus::Cancelled, "{cancelled:?}");
    let msg = cancelled.task.status_message.clone().unwrap_or_default();
    assert!(msg.starts_with("wait_for_console cancelled: VM \"tk\" is running"), "{msg}");
    let after = env.ops.info("tk").expect("info");
    assert_eq!((after.state, after.pid), (VmState::Running, pid), "the VM is untouched");
    let (_, summary) = {
        let r = crate::common::mcp::call(&plain, "get_vm", json!({ "name": "tk" })).await;
        (succeeded("get_vm", r.clone()), text(&r))
    };
    assert!(summary.contains("running"), "{summary}");
    ok(&plain, "stop_vm", json!({ "name": "tk", "force": true })).await;
}

/// A `serve` process that declared the tasks extension, numbering its requests.
struct Served {
    process: ServeProcess,
    next_id: u64,
}

impl Served {
    /// Starts `kvm-mcp serve` and shakes hands declaring the tasks extension.
    fn start(env: &TestEnv) -> Self {
        let mut s = Self { process: ServeProcess::start(&env.config_path), next_id: 1 };
        let caps = json!({ "extensions": { "io.modelcontextprotocol/tasks": {} } });
        let init = s.request(
            "initialize",
            json!({ "protocolVersion": "2025-11-25", "capabilities": caps, "clientInfo": { "name": "t", "version": "0" } }),
        );
        assert!(init["result"]["capabilities"]["extensions"]["io.modelcontextprotocol/tasks"].is_object(), "{init}");
        s.send(&json!({ "jsonrpc": "2.0", "method": "notifications/initialized" }));
        s
    }

    fn send(&mut self, message: &Value) {
        self.process.send(message);
    }

    /// Sends a request and returns its answer (notifications in between are skipped).
    fn request(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        self.send(&json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params }));
        loop {
            let line = self.process.lines.recv_timeout(Duration::from_secs(60)).expect("an answer from the server");
            let m: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
            if m.get("method").is_none() && m["id"] == id {
                return m;
            }
        }
    }

    fn get(&mut self, task: &str) -> Value {
        let got = self.request("tasks/get", json!({ "taskId": task }));
        got["result"].clone()
    }

    /// `tasks/get` until `pred` holds.
    fn wait(&mut self, task: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let start = Instant::now();
        loop {
            let got = self.get(task);
            if pred(&got) {
                return got;
            }
            assert!(start.elapsed() < GUEST_DEADLINE, "task {task}: {what} not reached; last {got:#}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `tools/call` that must answer with a task; its id.
    fn task(&mut self, tool: &str, args: Value) -> String {
        let got = self.request("tools/call", json!({ "name": tool, "arguments": args }));
        assert_eq!(got["result"]["resultType"], "task", "{got:#}");
        got["result"]["taskId"].as_str().expect("taskId").to_owned()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn task_records_are_answered_by_the_next_server_process() {
    let env = TestEnv::new();
    // A VM with a blank disk: QEMU runs, nothing ever boots.
    let disk = env.dir.path().join("disks/blank.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).expect("write disk");
    let req = CreateRequest {
        name: Some("blank".into()),
        disk: Some(DiskSource::Existing(disk)),
        network: Some("none".into()),
        ..CreateRequest::default()
    };
    env.ops.create(req).await.expect("create");

    let mut first = Served::start(&env);
    let started = first.task("start_vm", json!({ "name": "blank" }));
    let done = first.wait(&started, "an end", |t| t["status"] != "working");
    assert_eq!(done["status"], "completed", "{done:#}");
    assert_eq!(done["result"]["structuredContent"]["state"], "running", "{done:#}");
    let waiting = first.task("wait_for_console", json!({ "name": "blank", "pattern": NEVER, "timeout_s": 900 }));
    first.wait(&waiting, "a heartbeat", |t| t["statusMessage"].as_str().is_some_and(|m| m.contains("waiting for")));
    // One process runs 64 tasks at most; one more is refused, saying why.
    for _ in 1..64 {
        first.task("wait_for_console", json!({ "name": "blank", "pattern": NEVER, "timeout_s": 900 }));
    }
    let refused = first.request("tools/call", json!({ "name": "start_vm", "arguments": { "name": "blank" } }));
    assert_eq!(refused["result"]["isError"], true, "{refused:#}");
    let why = refused["result"]["content"][0]["text"].as_str().unwrap_or_default();
    assert!(why.contains("64 tasks are running") && why.contains("tasks/cancel"), "{why}");
    // A second process sees the first one's running task as running there.
    let mut second = Served::start(&env);
    let elsewhere = second.get(&waiting);
    assert_eq!(elsewhere["status"], "working", "{elsewhere:#}");
    let pid = first.process.child.id();
    let msg = elsewhere["statusMessage"].as_str().unwrap_or_default();
    assert!(msg.contains(&format!("another server process (pid {pid})")), "{msg}");
    let refused = second.request("tasks/cancel", json!({ "taskId": waiting }));
    let why = refused["error"]["message"].as_str().unwrap_or_default();
    assert!(why.contains(&format!("pid {pid}")), "{refused:#}");
    // The first process dies in the middle of the waits.
    first.process.child.kill().expect("kill serve");
    first.process.child.wait().expect("reap serve");
    let again = second.get(&started);
    for key in ["taskId", "status", "result", "createdAt", "statusMessage"] {
        assert_eq!(again[key], done[key], "{key}: {again:#} vs {done:#}");
    }
    let lost = second.get(&waiting);
    assert_eq!(lost["status"], "failed", "{lost:#}");
    let msg = lost["error"]["message"].as_str().unwrap_or_default();
    assert!(msg.starts_with("outcome unknown:") && msg.contains("wait_for_console"), "{msg}");
    assert!(msg.contains("VM \"blank\" is running"), "{msg}");
    assert_eq!(lost["statusMessage"], lost["error"]["message"], "{lost:#}");
    let ack = second.request("tasks/cancel", json!({ "taskId": waiting }));
    assert!(ack.get("result").is_some(), "{ack:#}");
    let unknown = second.request("tasks/get", json!({ "taskId": uuid::Uuid::new_v4().to_string() }));
    assert_eq!(unknown["error"]["code"], -32602, "{unknown:#}");

    drop(second);
    env.ops.stop("blank", StopOptions { force: true, timeout: None }, &|_| {}).await.expect("force off");
}
