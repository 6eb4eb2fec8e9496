//! Forks of a running fixture guest: the copies go on from the moment of the fork (a
//! file in RAM written before it is there, uptime did not restart), diverge from each
//! other and from the original (RAM and disk), get their own MAC and host name, and
//! every file of the fork is gone once the last VM reading it is deleted. Refusals
//! leave nothing behind.

use std::path::Path;
use std::time::Duration;

use kvm_mcp::ops::{CreateRequest, DiskSource, ForkRequest, GuestExecRequest, OpsError, no_progress};
use kvm_mcp::state::VmState;
use tokio_util::sync::CancellationToken;

use crate::common::vm::{GUEST_DEADLINE, TestEnv, processes_mentioning};

/// Runs `script` with `/bin/sh -c` in the guest; its stdout, trimmed.
async fn sh(env: &TestEnv, vm: &str, script: &str) -> String {
    let req = GuestExecRequest {
        command: "/bin/sh".into(),
        args: vec!["-c".into(), script.into()],
        stdin: None,
        timeout: Some(Duration::from_secs(60)),
        output_max_bytes: None,
    };
    let r = env.ops.guest_exec(vm, req, &no_progress, &CancellationToken::new()).await.expect("guest exec");
    assert_eq!(r.exit_code, Some(0), "{vm}: {script}: {}", r.stderr);
    r.stdout.trim().to_owned()
}

/// Writes `text` (one word) at 20 MiB into the VM's disk, synced.
fn write_disk(text: &str) -> String {
    format!("printf '%-16s' {text} | dd of=/dev/vda bs=16 seek=1310720 count=1 conv=notrunc,fsync")
}
/// Reads it back from the disk itself (the page cache dropped first).
const READ_DISK: &str =
    "sync; echo 3 > /proc/sys/vm/drop_caches; dd if=/dev/vda bs=16 skip=1310720 count=1 2>/dev/null";

/// A fixture VM on a new overlay of `master` (a disk kvm-mcp creates, as a fork needs).
fn on_master(name: &str, master: std::path::PathBuf) -> CreateRequest {
    CreateRequest {
        name: Some(name.into()),
        disk: Some(DiskSource::Master(Some(master))),
        network: Some("user".into()),
        ..CreateRequest::default()
    }
}

fn fork_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .expect("disks dir")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.contains(".fork-"))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn copies_go_on_from_the_fork_diverge_and_leave_nothing_behind() {
    let env = TestEnv::new();
    let cancel = CancellationToken::new();
    let master = env.disk("base");
    let req = CreateRequest { start: true, ..on_master("orig", master) };
    env.ops.create(req).await.expect("create and start");
    env.ops.wait_for_agent("orig", GUEST_DEADLINE, &cancel).await.expect("the original's agent answers");
    sh(&env, "orig", "echo before-fork > /tmp/mark").await;
    sh(&env, "orig", &write_disk("BEFORE")).await;
    let orig_mac = env.ops.info("orig").expect("info").nics[0].mac.to_string();

    let r = env
        .ops
        .fork_vm(ForkRequest { name: "orig".into(), count: 2, names: None, ttl_s: None, owner: None }, &cancel)
        .await
        .expect("fork");

    let names: Vec<&str> = r.copies.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["orig-1", "orig-2"], "{r:#?}");
    assert!(r.state_bytes > 0 && r.disk_bytes > 0, "{r:#?}");
    assert_eq!(env.ops.info("orig").expect("info").state, VmState::Running, "the original goes on");
    for c in &r.copies {
        assert!(c.identity_refreshed, "{c:#?}");
        assert!(c.rss_bytes.is_some_and(|b| b > 0), "{c:#?}");
        // Resumed, not booted: the file in RAM from before the fork is there.
        assert_eq!(sh(&env, &c.name, "cat /tmp/mark").await, "before-fork");
        assert_eq!(sh(&env, &c.name, READ_DISK).await, "BEFORE");
        // Its own MAC, inside the guest too, and its own host name.
        assert_ne!(c.macs[0], orig_mac);
        let guest_mac = sh(&env, &c.name, "cat /sys/class/net/eth0/address").await;
        assert_eq!(guest_mac, c.macs[0], "the guest's NIC took the copy's MAC");
        assert_eq!(sh(&env, &c.name, "hostname").await, c.hostname);
        assert_eq!(c.hostname, c.name);
    }

    // They diverge: what one copy writes, in RAM or on disk, nobody else sees.
    sh(&env, "orig-1", "echo only-one > /tmp/after").await;
    sh(&env, "orig-1", &write_disk("COPY-ONE")).await;
    assert_eq!(sh(&env, "orig-1", READ_DISK).await, "COPY-ONE");
    for other in ["orig", "orig-2"] {
        assert_eq!(sh(&env, other, "cat /tmp/after 2>/dev/null || echo absent").await, "absent", "{other}");
        assert_eq!(sh(&env, other, READ_DISK).await, "BEFORE", "{other}");
    }
    assert_eq!(sh(&env, "orig", "cat /sys/class/net/eth0/address").await, orig_mac, "the original keeps its MAC");
    // A new VM generation ID per copy (it reseeds the guest's random number generator).
    let cmdline = |n: &str| {
        let pid = env.ops.info(n).expect("info").pid.expect("pid");
        String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).expect("cmdline")).replace('\0', " ")
    };
    let genid = |n: &str| cmdline(n).split("vmgenid,id=vmgenid0,guid=").nth(1).map(|s| s[..36].to_owned());
    assert!(genid("orig").is_some());
    assert_ne!(genid("orig"), genid("orig-1"));
    assert_ne!(genid("orig-1"), genid("orig-2"));

    // The frozen layer stays while anything reads it, and goes with the last reader.
    let disks = env.dir.path().join("disks");
    assert_eq!(fork_files(&disks).len(), 1, "{:?}", fork_files(&disks));
    env.ops.delete("orig", true).await.expect("delete the original");
    assert_eq!(fork_files(&disks).len(), 1, "the copies still read it");
    env.ops.delete("orig-1", true).await.expect("delete a copy");
    assert_eq!(sh(&env, "orig-2", READ_DISK).await, "BEFORE", "the last copy still reads the frozen layer");
    env.ops.delete("orig-2", true).await.expect("delete the last copy");
    assert!(fork_files(&disks).is_empty(), "{:?}", fork_files(&disks));
    assert!(env.ops.list().expect("list").is_empty());
    let left: Vec<_> = std::fs::read_dir(env.dir.path().join("state/vms"))
        .expect("vms dir")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| !n.starts_with('.'))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert!(processes_mentioning(&env.config_path.to_string_lossy()).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn forks_that_cannot_be_made_are_refused_and_change_nothing() {
    let env = TestEnv::new();
    let cancel = CancellationToken::new();
    env.ops.create(env.disk_vm("adopted")).await.expect("create");
    let master = env.disk("base");
    let req = on_master("stopped", master);
    env.ops.create(req).await.expect("create");
    let disks = env.dir.path().join("disks");
    let before: Vec<_> = {
        let mut v: Vec<_> = std::fs::read_dir(&disks).unwrap().filter_map(|e| Some(e.ok()?.file_name())).collect();
        v.sort();
        v
    };
    let fork = |name: &str, count: u32, names: Option<Vec<String>>| ForkRequest {
        name: name.into(),
        count,
        names,
        ttl_s: None,
        owner: None,
    };

    let e = env.ops.fork_vm(fork("stopped", 1, None), &cancel).await.unwrap_err();
    assert!(e.to_string().contains("a fork needs it running"), "{e}");
    // A disk the caller brought is never renamed into a frozen layer.
    let e = env.ops.fork_vm(fork("adopted", 1, None), &cancel).await.unwrap_err();
    assert!(e.to_string().contains("kvm-mcp did not create"), "{e}");
    for count in [0, 17] {
        let e = env.ops.fork_vm(fork("stopped", count, None), &cancel).await.unwrap_err();
        assert!(matches!(&e, OpsError::Invalid { field, .. } if field == "count"), "{e}");
    }
    let e = env.ops.fork_vm(fork("stopped", 1, Some(vec!["stopped".into()])), &cancel).await.unwrap_err();
    assert!(matches!(e, OpsError::Exists { .. }), "{e}");
    let e = env.ops.fork_vm(fork("stopped", 2, Some(vec!["a".into(), "a".into()])), &cancel).await.unwrap_err();
    assert!(e.to_string().contains("same name"), "{e}");
    let e = env.ops.fork_vm(fork("stopped", 1, Some(vec!["../x".into()])), &cancel).await.unwrap_err();
    assert!(matches!(e, OpsError::Name(_)), "{e}");
    let e = env.ops.fork_vm(fork("nosuch", 1, None), &cancel).await.unwrap_err();
    assert!(matches!(e, OpsError::NotFound { .. }), "{e}");

    let after: Vec<_> = {
        let mut v: Vec<_> = std::fs::read_dir(&disks).unwrap().filter_map(|e| Some(e.ok()?.file_name())).collect();
        v.sort();
        v
    };
    assert_eq!(before, after);
    let names: Vec<String> = env.ops.list().expect("list").into_iter().map(|v| v.name).collect();
    assert_eq!(names, ["adopted", "stopped"]);
}
