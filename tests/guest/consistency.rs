//! No orphan, no lie: what the record says matches what runs, whatever a front end
//! or the host does halfway (a stop killed after its marker, a full state directory,
//! a hung QEMU, a full disk, races on one name).

use std::time::{Duration, Instant};

use kvm_mcp::ids::VmName;
use kvm_mcp::layout::VmPaths;
use kvm_mcp::ops::{CreateRequest, DiskSource, OpsError};
use kvm_mcp::procid::ProcIdentity;
use kvm_mcp::spec::RestartPolicy;
use kvm_mcp::state::{Reason, VmState};
use kvm_mcp::store::StopIntent;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::common::images::Tmpfs;
use crate::common::vm::{GUEST_DEADLINE, TestEnv, alive};

fn signal(pid: i32, sig: Signal) {
    kill(Pid::from_raw(pid), sig).expect("signal");
}

fn paths(env: &TestEnv, name: &str) -> VmPaths {
    let cfg = env.ops.config();
    VmPaths::new(&cfg.state_dir, &cfg.run_dir, &VmName::new(name).unwrap())
}

/// A `vm stop` killed after writing its marker (before it pressed anything) must not
/// turn off the restart policy for the next crash.
#[tokio::test(flavor = "multi_thread")]
async fn stop_killed_after_its_marker_does_not_disable_the_restart_policy() {
    let env = TestEnv::new();
    let req = CreateRequest { restart_policy: Some(RestartPolicy::OnFailure), ..TestEnv::microvm("phoenix") };
    let first = env.ops.create(req).await.unwrap();
    let p = paths(&env, "phoenix");
    // The marker a killed front end leaves: its writer is gone, QEMU never saw a stop.
    let dead = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = dead.id().cast_signed();
    let writer = ProcIdentity::capture(dead_pid);
    let mut dead = dead;
    dead.wait().unwrap();
    let qemu = ProcIdentity::capture(first.pid.unwrap());
    let intent = StopIntent { writer, qemu, at_ms: 0, forced: false, forced_why: None };
    std::fs::write(p.stop_intent(), serde_json::to_vec(&intent).unwrap()).unwrap();

    signal(first.pid.unwrap(), Signal::SIGKILL);

    let info = env.wait_info("phoenix", "policy restart", |i| i.state == VmState::Running && i.restarts == 1).await;
    assert_ne!(info.pid, first.pid);
}

/// A QEMU that stops answering (SIGSTOP) shows as unresponsive, with how long, in the
/// live views and, once the supervisor's ping notices, in the cached ones.
#[tokio::test(flavor = "multi_thread")]
async fn stopped_qemu_shows_as_unresponsive() {
    let env = TestEnv::new();
    let pid = env.ops.create(TestEnv::microvm("frozen")).await.unwrap().pid.unwrap();
    signal(pid, Signal::SIGSTOP);

    let live = env.ops.list_live().await.unwrap();
    let recorded = env.wait_info("frozen", "unresponsive", |i| i.unresponsive_s.is_some()).await;
    signal(pid, Signal::SIGCONT);
    let back = env.wait_info("frozen", "answering again", |i| i.unresponsive_s.is_none()).await;

    assert_eq!(
        (live[0].unresponsive_s.is_some_and(|s| s >= 2), recorded.state, back.state),
        (true, VmState::Running, VmState::Running)
    );
}

/// A guest filling a disk whose host file system is full pauses, and the pause says
/// why (not "host request").
#[tokio::test(flavor = "multi_thread")]
async fn a_full_host_disk_pauses_the_vm_with_the_reason() {
    let env = TestEnv::new();
    let small = Tmpfs::mount_mib(&env.dir.path().join("small"), 24);
    let env = TestEnv::with_config(serde_json::json!({ "vm": { "disk_path": small.path() } }));
    let disk = small.path().join("filler.qcow2");
    std::fs::copy(crate::common::vm::fixtures().join("disk.qcow2"), &disk).unwrap();
    let req = CreateRequest { disk: Some(DiskSource::Existing(disk)), start: true, ..env.disk_vm("filler") };
    env.ops.create(req).await.unwrap();
    env.wait_console("filler", "FIXTURE-READY", 1).await;
    let ops = env.ops.clone();
    // The command never finishes: the VM pauses under it.
    let writer = tokio::spawn(async move {
        let req = kvm_mcp::ops::GuestExecRequest {
            command: "/bin/dd".into(),
            args: ["if=/dev/zero", "of=/dev/vda", "bs=1M", "count=64", "oflag=direct"].map(String::from).to_vec(),
            timeout: Some(Duration::from_secs(600)),
            ..Default::default()
        };
        let _ = ops.guest_exec("filler", req, &kvm_mcp::ops::no_progress, &Default::default()).await;
    });

    let info = env.wait_state("filler", VmState::Paused).await;
    writer.abort();

    assert_eq!(
        (info.reason, info.detail.as_deref().is_some_and(|d| d.contains("no space left"))),
        (Reason::IoError, true),
        "{info:#?}"
    );
}

/// A start whose status cannot be written (the state directory's file system is
/// full) fails and leaves no QEMU running behind a record that says shutoff.
#[tokio::test(flavor = "multi_thread")]
async fn start_on_a_full_state_directory_fails_and_leaves_nothing_running() {
    let base = TestEnv::new();
    let small = Tmpfs::mount_mib(&base.dir.path().join("state-fs"), 4);
    let env = TestEnv::with_config(serde_json::json!({ "paths": { "state_dir": small.path() } }));
    env.ops.create(CreateRequest { start: false, ..TestEnv::microvm("full") }).await.unwrap();
    small.fill();

    let err = env.ops.start("full").await.unwrap_err();

    let deadline = Instant::now() + GUEST_DEADLINE;
    while !env.processes().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        (matches!(err, OpsError::StartFailed { .. }), env.ops.info("full").unwrap().state, env.processes()),
        (true, VmState::Shutoff, vec![]),
        "{err}"
    );
}

/// Creates, deletes and starts of one name racing each other end in clear answers
/// (done, exists, not found, busy, running) and leave no half-deleted VM and no
/// orphan disk.
#[tokio::test(flavor = "multi_thread")]
async fn racing_create_delete_and_start_of_one_name_stay_consistent() {
    let env = TestEnv::new();
    let vm = || CreateRequest {
        disk: Some(DiskSource::Blank),
        disk_size_gib: Some(1),
        start: false,
        ..TestEnv::microvm("race")
    };
    let mut unexpected = Vec::new();
    for _ in 0..6 {
        let (a, b, c, d) = tokio::join!(
            env.ops.create(vm()),
            env.ops.delete("race", true),
            env.ops.start("race"),
            env.ops.create(vm()),
        );
        let errors = [a.err(), b.err(), c.err(), d.err()];
        unexpected.extend(
            errors
                .into_iter()
                .flatten()
                .filter(|e| {
                    !matches!(
                        e,
                        OpsError::Exists { .. }
                            | OpsError::NotFound { .. }
                            | OpsError::AlreadyRunning { .. }
                            | OpsError::Busy { .. }
                            | OpsError::Incomplete { .. }
                    )
                })
                .map(|e| e.to_string()),
        );
        let _ = env.ops.delete("race", true).await;
    }
    let disks: Vec<_> = std::fs::read_dir(env.dir.path().join("disks"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("race") || n.starts_with(".race"))
        .collect();

    assert_eq!(
        (unexpected, disks, env.ops.list().unwrap().len(), env.processes().iter().filter(|p| alive(**p)).count()),
        (Vec::<String>::new(), Vec::<String>::new(), 0, 0)
    );
}

/// Ten thousand keys are refused at once, naming the argument, before any is sent.
#[tokio::test(flavor = "multi_thread")]
async fn ten_thousand_keys_are_refused_at_once() {
    let env = TestEnv::new();
    env.ops.create(CreateRequest { start: false, ..TestEnv::microvm("keys") }).await.unwrap();
    let keys = vec!["a".to_owned(); 10_000];

    let r = tokio::time::timeout(Duration::from_secs(30), env.ops.send_keys("keys", &keys, None)).await;

    let e = r.expect("answered within the deadline").unwrap_err().to_string();
    assert!(e.starts_with("keys: 10000 key presses in one call; at most 512"), "{e}");
}

/// A name that reads as an option is refused by the CLI with the reason.
#[test]
fn option_like_vm_name_is_refused() {
    let env = TestEnv::new();

    let out = env.cli(&["vm", "create", "--", "-rf"]);

    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!((out.status.code(), err.contains("starts with '-'")), (Some(2), true), "{err}");
}

/// What an interrupted create left (its definition missing, a half-written disk
/// beside the planned one) is removed by delete and never listed as an image.
#[tokio::test(flavor = "multi_thread")]
async fn delete_removes_what_an_interrupted_create_left() {
    let env = TestEnv::new();
    let p = paths(&env, "cut");
    std::fs::create_dir_all(&p.state).unwrap();
    let disk = env.dir.path().join("disks/cut.qcow2");
    let temp = env.dir.path().join("disks/.cut.qcow2.tmp-4242-0");
    kvm_mcp::store::begin_create(&p, std::slice::from_ref(&disk)).unwrap();
    std::fs::write(&temp, b"half an overlay").unwrap();
    let listed = env.ops.list().unwrap();
    let images = env.ops.list_images().await.unwrap();

    let deleted = env.ops.delete("cut", false).await;

    assert_eq!(
        (
            listed.iter().map(|s| (s.name.as_str(), s.incomplete)).collect::<Vec<_>>(),
            images.iter().any(|i| i.path.to_string_lossy().contains("tmp")),
            deleted.is_ok(),
            temp.exists(),
            p.state.exists()
        ),
        (vec![("cut", true)], false, true, false, false)
    );
}

/// A damaged definition does not make delete leak the disk kvm-mcp made for the VM.
#[tokio::test(flavor = "multi_thread")]
async fn delete_of_a_vm_with_a_damaged_definition_removes_its_disk() {
    let env = TestEnv::new();
    let req = CreateRequest {
        disk: Some(DiskSource::Blank),
        disk_size_gib: Some(1),
        start: false,
        ..TestEnv::microvm("dmg")
    };
    let disk = env.ops.create(req).await.unwrap().disks[0].path.clone();
    std::fs::write(paths(&env, "dmg").spec(), b"{ damaged").unwrap();
    let start = env.ops.start("dmg").await.unwrap_err();

    env.ops.delete("dmg", false).await.unwrap();

    assert_eq!(
        (matches!(start, OpsError::Incomplete { .. }), disk.exists(), env.ops.list().unwrap().len()),
        (true, false, 0),
        "{start}"
    );
}
