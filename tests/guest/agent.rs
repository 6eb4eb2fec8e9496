//! The guest agent: exec with output, exit codes and timeouts, files, guest facts, the
//! stop fallback (and no fallback for a guest already going down), addresses as the
//! agent reports them, and a VM without an answering agent.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use kvm_mcp::error::chain;
use kvm_mcp::ops::{CreateRequest, GuestExecRequest, IpQuery, IpSource, Progress, StopOptions, no_progress};
use kvm_mcp::state::{Reason, VmState};
use tokio_util::sync::CancellationToken;

use super::console::wait_for;
use crate::common::vm::TestEnv;

/// Starts a fixture VM and waits until its agent runs.
async fn agent_vm(env: &TestEnv, name: &str) {
    env.start_disk_vm(name).await;
    wait_for(env, name, "FIXTURE-QGA started").await;
}

/// Exits 0 while `sleep 4242` (the long command the tests start) runs in the guest; the
/// fixture has no pgrep, and its respawn loops run other sleeps.
const LONG_SLEEP_LEFT: &str =
    "for c in /proc/[0-9]*/cmdline; do tr '\\0' ' ' < $c 2>/dev/null | grep -q '^sleep 4242' && exit 0; done; exit 1";

fn sh(script: &str, timeout_s: u64) -> GuestExecRequest {
    GuestExecRequest {
        command: "/bin/sh".into(),
        args: vec!["-c".into(), script.into()],
        timeout: Some(Duration::from_secs(timeout_s)),
        ..GuestExecRequest::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn guest_exec_returns_output_and_exit_code() {
    let env = TestEnv::new();
    agent_vm(&env, "exec").await;
    let r = env
        .ops
        .guest_exec("exec", sh("echo out; echo err >&2; exit 3", 60), &no_progress, &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!((r.stdout.as_str(), r.stderr.as_str(), r.exit_code, r.timed_out), ("out\n", "err\n", Some(3), false));
}

#[tokio::test(flavor = "multi_thread")]
async fn guest_exec_passes_stdin() {
    let env = TestEnv::new();
    agent_vm(&env, "stdin").await;
    let req = GuestExecRequest {
        command: "/bin/cat".into(),
        stdin: Some(b"from the host\n".to_vec()),
        ..GuestExecRequest::default()
    };
    let r = env.ops.guest_exec("stdin", req, &no_progress, &CancellationToken::new()).await.unwrap();
    assert_eq!(r.stdout, "from the host\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn command_outliving_its_timeout_is_killed_with_its_children() {
    let env = TestEnv::new();
    agent_vm(&env, "slow").await;
    let cancel = CancellationToken::new();
    let r = env.ops.guest_exec("slow", sh("sleep 4242; echo never", 2), &no_progress, &cancel).await.unwrap();
    let left = env.ops.guest_exec("slow", sh(LONG_SLEEP_LEFT, 30), &no_progress, &cancel).await.unwrap();
    assert_eq!((r.timed_out, r.killed, r.signal, left.exit_code), (true, true, Some(9), Some(1)));
}

#[tokio::test(flavor = "multi_thread")]
async fn cancelled_exec_is_killed() {
    let env = TestEnv::new();
    agent_vm(&env, "cancel").await;
    let cancel = CancellationToken::new();
    let (ops, c2) = (env.ops.clone(), cancel.clone());
    // While the command runs, the check must see it (a control for the check itself).
    let during = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let r = ops.guest_exec("cancel", sh(LONG_SLEEP_LEFT, 30), &no_progress, &CancellationToken::new()).await;
        c2.cancel();
        r.map(|r| r.exit_code)
    });
    let err = env.ops.guest_exec("cancel", sh("sleep 4242; echo never", 600), &no_progress, &cancel).await.unwrap_err();
    let left =
        env.ops.guest_exec("cancel", sh(LONG_SLEEP_LEFT, 30), &no_progress, &CancellationToken::new()).await.unwrap();
    assert!(chain(&err).contains("cancelled and killed"), "{}", chain(&err));
    assert_eq!((during.await.unwrap().unwrap(), left.exit_code), (Some(0), Some(1)));
}

#[tokio::test(flavor = "multi_thread")]
async fn files_round_trip_through_the_agent() {
    let env = TestEnv::new();
    agent_vm(&env, "files").await;
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let written = env.ops.guest_file_write("files", "/tmp/rt.bin", &data, false).await.unwrap();
    let back = env.ops.guest_file_read("files", "/tmp/rt.bin", None).await.unwrap();
    assert_eq!((written, back.data == data, back.text.is_none()), (200_000, true, true));
}

#[tokio::test(flavor = "multi_thread")]
async fn file_over_the_cap_is_refused() {
    let env = TestEnv::with_config(serde_json::json!({ "agent": { "file_max_bytes": 1000 } }));
    agent_vm(&env, "capped").await;
    let err = chain(&env.ops.guest_file_read("capped", "/etc/rc", None).await.unwrap_err());
    assert!(err.contains("over the limit of 1000 bytes"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn guest_info_reports_hostname_os_and_interfaces() {
    let env = TestEnv::new();
    agent_vm(&env, "facts").await;
    let i = env.ops.guest_info("facts").await.unwrap();
    let os_id = i.os.as_ref().and_then(|o| o.get("id")).and_then(|v| v.as_str()).map(String::from);
    let ifaces = i.interfaces.map(|v| v.to_string()).unwrap_or_default();
    assert_eq!((i.hostname.as_deref(), os_id.as_deref()), (Some("fixture"), Some("kvm-mcp-fixture")));
    assert!(ifaces.contains("\"eth0\""), "{ifaces}");
}

/// Keeps the progress messages of one operation.
#[derive(Default)]
struct Messages(Mutex<Vec<String>>);

impl Messages {
    fn sink(&self) -> impl Fn(Progress) + Send + Sync + '_ {
        |p: Progress| self.0.lock().unwrap().push(p.message)
    }

    fn all(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn stop_falls_back_to_the_agent_when_acpi_is_ignored_and_says_so() {
    let env = TestEnv::new();
    agent_vm(&env, "deaf").await;
    env.ops.guest_exec("deaf", sh("killall acpid", 30), &no_progress, &CancellationToken::new()).await.unwrap();
    let messages = Messages::default();
    let info = env.ops.stop("deaf", StopOptions::default(), &messages.sink()).await.unwrap();
    assert_eq!((info.state, info.reason), (VmState::Shutoff, Reason::GuestPoweroff));
    assert!(env.console("deaf").contains("FIXTURE-SHUTDOWN-CMD"), "{}", env.console("deaf"));
    let fallback = messages.all().into_iter().filter(|m| m.contains("asking its guest agent")).count();
    assert_eq!(fallback, 1, "{:#?}", messages.all());
}

/// A guest that hears the first press but takes its time going down (here its
/// shutdown script sleeps 20 s after stopping its agent) is waited for: no fallback to
/// the agent is tried or named, and the progress says what the guest is doing.
#[tokio::test(flavor = "multi_thread")]
async fn stop_of_a_slow_guest_that_heard_the_button_names_no_fallback() {
    let env = TestEnv::new();
    agent_vm(&env, "slowoff").await;
    let slow = b"#!/bin/sh\nkillall qemu-ga httpd acpid 2>/dev/null\nsleep 20\nsync\numount -a -r 2>/dev/null\nsync\n";
    env.ops.guest_file_write("slowoff", "/etc/rc.shutdown", slow, false).await.unwrap();
    let messages = Messages::default();
    let info = env.ops.stop("slowoff", StopOptions::default(), &messages.sink()).await.unwrap();
    let all = messages.all();
    assert_eq!((info.state, info.reason), (VmState::Shutoff, Reason::GuestPoweroff), "{all:#?}");
    assert!(all.iter().all(|m| !m.contains("guest agent")), "{all:#?}");
    assert!(all.iter().any(|m| m.contains("the guest is shutting down (")), "{all:#?}");
}

/// The guest agent answers, and says the NIC has no address (its link is down and
/// flushed): that is the answer, with a note naming the guest's interface, and the
/// slirp guess is not offered in its place.
#[tokio::test(flavor = "multi_thread")]
async fn get_vm_ip_of_a_guest_whose_nic_is_down_reports_no_address() {
    let env = TestEnv::new();
    agent_vm(&env, "noip").await;
    let down = sh("ip addr flush dev eth0 && ip link set dev eth0 down", 30);
    let r = env.ops.guest_exec("noip", down, &no_progress, &CancellationToken::new()).await.unwrap();
    assert_eq!(r.exit_code, Some(0), "{r:?}");
    let ips = env.ops.get_vm_ip("noip", IpQuery::default(), &no_progress).await.unwrap();
    let nic = &ips.nics[0];
    assert_eq!(
        (ips.ip, ips.source, nic.addresses.len(), nic.guest_interface.as_deref()),
        (None, None, 0, Some("eth0")),
        "{ips:#?}"
    );
    assert!(nic.note.as_deref().is_some_and(|n| n.contains("no IPv4 or global IPv6 address on eth0")), "{ips:#?}");
}

/// With the agent answering and the NIC up, the address is the agent's, not the guess.
#[tokio::test(flavor = "multi_thread")]
async fn get_vm_ip_of_a_guest_with_an_agent_is_its_answer() {
    let env = TestEnv::new();
    agent_vm(&env, "agentip").await;
    wait_for(&env, "agentip", "FIXTURE-IP=").await;
    let ips = env.ops.get_vm_ip("agentip", IpQuery::default(), &no_progress).await.unwrap();
    assert_eq!(
        (ips.ip, ips.source, ips.nics[0].guest_interface.as_deref()),
        (Some(std::net::Ipv4Addr::new(10, 0, 2, 15).into()), Some(IpSource::Agent), Some("eth0")),
        "{ips:#?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn vm_without_an_answering_agent_fails_fast_and_clearly() {
    let env = TestEnv::with_config(serde_json::json!({ "agent": { "timeout_s": 2 } }));
    // microvm has the channel but the fixture kernel has no virtio-mmio: nobody answers.
    let req = CreateRequest { cmdline: Some("console=ttyS0 panic=-1 quiet".into()), ..TestEnv::microvm("mute") };
    env.ops.create(req).await.unwrap();
    let started = Instant::now();
    let err = chain(&env.ops.guest_ping("mute").await.unwrap_err());
    assert!(err.contains("no guest agent answered in 2 s") && started.elapsed() < Duration::from_secs(6), "{err}");
}
