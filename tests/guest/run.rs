//! Throw-away VMs: `kvm-mcp run` end to end on the fixture disk guest (output shown as
//! it comes, files in and out, the command's status, 124 on timeout, 130 on an
//! interrupt), nothing left behind after an interrupt or a `kill -9` of `run` itself,
//! time limits (`ttl_s`) that delete a VM with no front end running, and `run_in_vm`
//! over MCP.

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kvm_mcp::ops::CreateRequest;
use rmcp::model::ProtocolVersion;
use serde_json::json;

use crate::common::mcp::{connect, ok};
use crate::common::vm::{GUEST_DEADLINE, TestEnv};

/// What a job may leave behind: VM directories, run directories, lock files, disks
/// other than the master, processes mentioning the environment.
fn leftovers(env: &TestEnv) -> Vec<String> {
    let root = env.dir.path();
    let list = |d: &Path| -> Vec<String> {
        std::fs::read_dir(d)
            .map(|rd| rd.flatten().map(|e| e.path().display().to_string()).collect())
            .unwrap_or_default()
    };
    let mut left: Vec<String> = list(&root.join("state/vms"));
    left.extend(list(&root.join("state/locks")));
    // Shared directories (`.vnc` claims, `.bridges`) stay.
    left.extend(
        list(&root.join("run")).into_iter().filter(|p| !p.rsplit('/').next().is_some_and(|f| f.starts_with('.'))),
    );
    left.extend(list(&root.join("disks")).into_iter().filter(|p| !p.ends_with("/base.qcow2")));
    left.extend(env.processes().iter().map(|p| format!("process {p}")));
    left
}

/// Waits until nothing is left behind.
fn wait_clean(env: &TestEnv, what: &str) {
    let start = Instant::now();
    loop {
        let left = leftovers(env);
        if left.is_empty() {
            return;
        }
        assert!(start.elapsed() < GUEST_DEADLINE, "{what}: still left after {GUEST_DEADLINE:?}: {left:#?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn env_with_master() -> TestEnv {
    let env = TestEnv::new();
    env.disk("base");
    env
}

fn run_cmd(env: &TestEnv, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kvm-mcp"));
    c.arg("--config").arg(&env.config_path).arg("run").arg("--master").arg("base.qcow2").args(args);
    c
}

/// Spawns `run` with stdout piped; returns the child and a channel of its stdout lines.
fn spawn_run(env: &TestEnv, args: &[&str]) -> (Child, std::sync::mpsc::Receiver<String>) {
    let mut child = run_cmd(env, args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn run");
    let out = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

fn expect_line(rx: &std::sync::mpsc::Receiver<String>, want: &str, child: &mut Child) {
    let end = Instant::now() + GUEST_DEADLINE;
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(l) if l == want => return,
            Ok(_) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                if let Ok(Some(st)) = child.try_wait() {
                    let mut err = String::new();
                    let _ = std::io::Read::read_to_string(child.stderr.as_mut().expect("stderr"), &mut err);
                    panic!("run exited ({st}) before printing {want:?}: {err}");
                }
                assert!(Instant::now() < end, "{want:?} not printed within {GUEST_DEADLINE:?}");
            }
            Err(e) => panic!("run's stdout closed before {want:?}: {e}"),
        }
    }
}

fn the_job_vm(env: &TestEnv) -> String {
    let vms = env.ops.list().expect("list");
    assert_eq!(vms.len(), 1, "{vms:?}");
    vms[0].name.clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn run_shows_output_as_it_comes_copies_files_and_exits_with_the_status() {
    let env = env_with_master();
    let root = env.dir.path();
    // Not UTF-8, so the bytes must round-trip exactly.
    let payload: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    std::fs::write(root.join("in.bin"), &payload).expect("write");
    let copy_in = format!("{}:/root/job/in.bin", root.join("in.bin").display());
    let copy_out = format!("/root/job/out.bin:{}", root.join("out.bin").display());
    // `second` can only be printed after the host saw `first`: the gate file is made
    // from here, once `first` arrived, so output that is only shown at the end fails.
    let script = "cp /root/job/in.bin /root/job/out.bin; echo \"FOO=$FOO\"; echo first; \
                  while [ ! -e /tmp/gate ]; do sleep 0.1; done; echo second; echo to-stderr >&2; exit 7";
    let (mut child, rx) = spawn_run(
        &env,
        &["--copy-in", &copy_in, "--copy-out", &copy_out, "--env", "FOO=bar baz", "--", "sh", "-c", script],
    );
    expect_line(&rx, "FOO=bar baz", &mut child);
    expect_line(&rx, "first", &mut child);
    let vm = the_job_vm(&env);
    assert!(vm.starts_with("run-"), "{vm}");
    let info = env.ops.info(&vm).expect("info");
    assert!(info.expires_in_s.is_some_and(|s| s > 0), "a job VM has a time limit: {info:?}");
    env.ops.guest_file_write(&vm, "/tmp/gate", b"", false).await.expect("open the gate");
    expect_line(&rx, "second", &mut child);
    let out = child.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(7), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("to-stderr"), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(std::fs::read(root.join("out.bin")).expect("copied out") == payload, "copy-out differs from copy-in");
    // Deleted before `run` exits: no wait.
    assert!(leftovers(&env).is_empty(), "{:#?}", leftovers(&env));
}

#[tokio::test(flavor = "multi_thread")]
async fn run_timeout_exits_124_and_json_reports_the_phases() {
    let env = env_with_master();
    let out = run_cmd(&env, &["--json", "--timeout", "2", "--", "sleep", "4242"]).output().expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(124), "{err}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object on stdout");
    assert_eq!((&v["status"], &v["timed_out"]), (&json!(124), &json!(true)), "{v:#}");
    let phases = &v["phases"];
    for p in ["create_ms", "boot_ms", "command_ms", "delete_ms", "total_ms"] {
        assert!(phases[p].is_u64(), "{p} missing: {v:#}");
    }
    assert!(phases["command_ms"].as_u64() >= Some(2000), "{v:#}");
    assert!(leftovers(&env).is_empty(), "{:#?}", leftovers(&env));
    // Hostile arguments are refused before any VM exists.
    for (args, field) in [
        (vec!["--env", "1BAD=x", "--", "true"], "env"),
        (vec!["--copy-out", "relative:/tmp/x", "--", "true"], "copy_out"),
        (vec!["--copy-in", "/dev/zero:/x", "--", "true"], "copy-in"),
    ] {
        let out = run_cmd(&env, &args).output().expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(125), "{args:?}: {err}");
        assert!(err.contains(field), "{args:?}: {err}");
        assert!(leftovers(&env).is_empty(), "{:#?}", leftovers(&env));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_of_run_leaves_no_vm_process_or_file() {
    let env = env_with_master();
    let (mut child, rx) = spawn_run(&env, &["--", "sh", "-c", "echo started; sleep 4242"]);
    expect_line(&rx, "started", &mut child);
    assert!(!leftovers(&env).is_empty(), "the job's VM exists while it runs");
    child.kill().expect("kill -9");
    let _ = child.wait();
    let t = Instant::now();
    wait_clean(&env, "after kill -9 of run");
    eprintln!("the VM of a killed run was gone {:?} after the kill", t.elapsed());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_interrupted_run_deletes_its_vm_before_it_exits() {
    let env = env_with_master();
    let (mut child, rx) = spawn_run(&env, &["--", "sh", "-c", "echo started; sleep 4242"]);
    expect_line(&rx, "started", &mut child);
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("SIGINT");
    let out = child.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(130), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(leftovers(&env).is_empty(), "{:#?}", leftovers(&env));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_time_limit_deletes_vms_with_no_front_end_running() {
    let env = TestEnv::new();
    // Running: its supervisor stops and deletes it on its own.
    let req = CreateRequest { ttl_s: Some(4), start: true, ..env.disk_vm("ttl") };
    let info = env.ops.create(req).await.expect("create");
    assert!(info.expires_in_s.is_some_and(|s| s <= 4), "{info:?}");
    let start = Instant::now();
    while env.dir.path().join("state/vms/ttl").exists() {
        assert!(start.elapsed() < GUEST_DEADLINE, "not deleted: {}", env.diagnostics("ttl"));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(env.processes().is_empty(), "{:?}", env.processes());

    // Off when its time passes: no supervisor, so the next listing deletes it.
    let req = CreateRequest { ttl_s: Some(1), ..env.disk_vm("off") };
    env.ops.create(req).await.expect("create");
    let start = Instant::now();
    while env.ops.list().expect("list").iter().any(|v| v.expires_in_s != Some(0)) {
        assert!(start.elapsed() < GUEST_DEADLINE, "the time limit never passed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let out = env.cli(&["--json", "vm", "list"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[]");
    assert!(!env.dir.path().join("state/vms/off").exists());
    assert!(leftovers(&env).iter().all(|l| l.ends_with(".qcow2")), "{:#?}", leftovers(&env));
    // Out of range.
    let e = env.ops.create(CreateRequest { ttl_s: Some(0), ..env.disk_vm("zero") }).await.unwrap_err();
    assert!(e.to_string().starts_with("ttl_s:"), "{e}");
    assert!(!env.dir.path().join("state/vms/zero").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn run_in_vm_over_mcp_returns_status_output_and_files() {
    let env = env_with_master();
    let c = connect(env.ops.clone(), ProtocolVersion::V_2025_11_25).await;
    let r = ok(
        &c,
        "run_in_vm",
        json!({
            "image": "base.qcow2",
            "command": ["sh", "-c", "tr a-z A-Z < /root/in.txt > /root/out.txt; echo done; echo oops >&2; exit 3"],
            "files": [{ "path": "/root/in.txt", "content": "hello" }],
            "fetch": ["/root/out.txt", "/no/such/file"],
            "timeout_s": 60
        }),
    )
    .await;
    assert_eq!((&r["status"], &r["exit_code"], &r["timed_out"]), (&json!(3), &json!(3), &json!(false)), "{r:#}");
    assert_eq!((&r["stdout"], &r["stderr"]), (&json!("done\n"), &json!("oops\n")), "{r:#}");
    assert_eq!(r["files"][0]["text"], json!("HELLO"), "{r:#}");
    assert_eq!(r["fetch_errors"].as_array().map(Vec::len), Some(1), "{r:#}");
    assert!(leftovers(&env).is_empty(), "{:#?}", leftovers(&env));
}
