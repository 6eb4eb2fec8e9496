//! Crashes, restart policies, dead supervisors, concurrent front ends.

use std::time::Duration;

use kvm_mcp::ops::{CreateRequest, StopOptions, no_progress};
use kvm_mcp::spec::RestartPolicy;
use kvm_mcp::state::{Reason, VmState};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::common::vm::{TestEnv, alive};

fn kill9(pid: i32) {
    kill(Pid::from_raw(pid), Signal::SIGKILL).expect("kill -9");
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_qemu_shows_crashed_with_signal_and_log() {
    let env = TestEnv::new();
    kill9(env.start_disk_vm("crash").await.pid.unwrap());
    let info = env.wait_state("crash", VmState::Crashed).await;
    let signal = info.exit.and_then(|e| e.signal_name);
    assert_eq!((info.reason, signal.as_deref()), (Reason::QemuSignal, Some("SIGKILL")));
    assert!(info.log_tail.iter().any(|l| l.contains("kvm-mcp: starting")), "{:?}", info.log_tail);
}

#[tokio::test(flavor = "multi_thread")]
async fn on_failure_policy_restarts_killed_qemu() {
    let env = TestEnv::new();
    let req = CreateRequest { restart_policy: Some(RestartPolicy::OnFailure), start: true, ..env.disk_vm("phoenix") };
    let first = env.ops.create(req).await.unwrap().pid.unwrap();
    kill9(first);
    let info = env.wait_info("phoenix", "restart", |i| i.state == VmState::Running && i.restarts == 1).await;
    assert_ne!(info.pid, Some(first));
}

#[tokio::test(flavor = "multi_thread")]
async fn always_policy_restarts_after_guest_poweroff_but_not_after_stop() {
    let env = TestEnv::new();
    let req = CreateRequest { restart_policy: Some(RestartPolicy::Always), start: true, ..env.disk_vm("always") };
    let first = env.ops.create(req).await.unwrap().pid.unwrap();
    env.wait_console("always", "FIXTURE-READY", 1).await;
    // The guest powers itself off through the serial console's shell.
    let sock = env.dir.path().join("run/always/serial.sock");
    let mut s = std::os::unix::net::UnixStream::connect(sock).unwrap();
    std::io::Write::write_all(&mut s, b"\n/sbin/fixture-poweroff\n").unwrap();
    env.wait_info("always", "restart after poweroff", |i| {
        i.restarts == 1 && i.state == VmState::Running && i.pid != Some(first)
    })
    .await;
    let stopped = env.ops.stop("always", StopOptions { force: true, timeout: None }, &no_progress).await.unwrap();
    tokio::time::timeout(Duration::from_secs(3), async {
        while env.processes().is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .ok();
    assert_eq!(
        (stopped.state, env.ops.info("always").unwrap().state, env.processes()),
        (VmState::Shutoff, VmState::Shutoff, vec![])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_supervisor_leaves_vm_running_and_unsupervised() {
    let env = TestEnv::new();
    let info = env.start_disk_vm("orphan").await;
    kill9(info.supervisor_pid.unwrap());
    let after = env.wait_info("orphan", "unsupervised", |i| i.unsupervised).await;
    assert_eq!((after.state, info.pid.is_some_and(alive)), (VmState::Running, true));
}

#[tokio::test(flavor = "multi_thread")]
async fn next_operation_adopts_vm_of_killed_supervisor() {
    let env = TestEnv::new();
    let info = env.start_disk_vm("adopt").await;
    kill9(info.supervisor_pid.unwrap());
    env.wait_info("adopt", "unsupervised", |i| i.unsupervised).await;
    let paused = env.ops.pause("adopt").await.unwrap();
    assert_eq!((paused.state, paused.unsupervised, paused.pid), (VmState::Paused, false, info.pid));
}

#[tokio::test(flavor = "multi_thread")]
async fn adopted_vm_records_its_stop() {
    let env = TestEnv::new();
    let info = env.start_disk_vm("adopt2").await;
    kill9(info.supervisor_pid.unwrap());
    // The killed supervisor holds its lock until it is gone; until then `vm adopt`
    // rightly finds nothing to adopt.
    env.wait_info("adopt2", "unsupervised", |i| i.unsupervised).await;
    let out = env.cli(&["vm", "adopt", "adopt2"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stopped = env.ops.stop("adopt2", StopOptions { force: true, timeout: None }, &no_progress).await.unwrap();
    assert_eq!((stopped.state, stopped.reason), (VmState::Shutoff, Reason::Forced));
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_cli_starts_give_one_success() {
    let env = TestEnv::new();
    env.ops.create(env.disk_vm("race")).await.unwrap();
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| env.cli(&["vm", "start", "race"]));
        let b = s.spawn(|| env.cli(&["vm", "start", "race"]));
        (a.join().unwrap(), b.join().unwrap())
    });
    let mut codes = [a.status.code(), b.status.code()];
    codes.sort_unstable();
    let loser = if a.status.success() { &b } else { &a };
    assert_eq!(codes, [Some(0), Some(4)]);
    assert_eq!(String::from_utf8_lossy(&loser.stderr).trim(), "kvm-mcp: VM \"race\" is already running");
}

#[tokio::test(flavor = "multi_thread")]
async fn stale_pid_of_unrelated_process_is_never_signalled() {
    let env = TestEnv::new();
    env.ops.create(env.disk_vm("stale")).await.unwrap();
    // An unrelated process whose pid and start time a forged status file records.
    let mut other = std::process::Command::new("sleep").arg("300").spawn().unwrap();
    let pid = other.id().cast_signed();
    let ident = kvm_mcp::procid::ProcIdentity::capture(pid).unwrap();
    let status_path = env.dir.path().join("state/vms/stale/status.json");
    let mut status: kvm_mcp::state::Status = serde_json::from_slice(&std::fs::read(&status_path).unwrap()).unwrap();
    status.state = VmState::Running;
    status.qemu = Some(ident);
    std::fs::write(&status_path, serde_json::to_vec(&status).unwrap()).unwrap();
    let stopped = env.ops.stop("stale", StopOptions { force: true, timeout: None }, &no_progress).await.unwrap();
    let survived = alive(pid);
    other.kill().ok();
    other.wait().ok();
    assert_eq!((stopped.state, survived), (VmState::Crashed, true));
}
