//! What QEMU itself opens and how it runs: every regular file a started QEMU holds
//! lies inside the test's allowed, state and run directories (read from
//! `/proc/<pid>/fd`), even for a disk a guest rewrote into a qcow2 header naming a
//! canary file outside; QEMU runs under its seccomp filter; and with `qemu.user` it
//! drops to a real unprivileged user this test creates (and removes).

use std::path::PathBuf;
use std::process::Command;

use kvm_mcp::ops::{CreateRequest, DiskSource};

use crate::common::images::storage_env;
use crate::common::vm::TestEnv;

fn qemu_img(args: &[&str]) {
    let out = Command::new("qemu-img").args(args).output().expect("run qemu-img");
    assert!(out.status.success(), "qemu-img {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Absolute paths of the regular files `pid` holds open (memfds excluded).
fn open_files(pid: i32) -> Vec<PathBuf> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("QEMU's fd table")
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter(|t| t.is_absolute() && !t.starts_with("/memfd:"))
        .filter(|t| std::fs::metadata(t).is_ok_and(|m| m.is_file()))
        .collect()
}

/// One field of `/proc/<pid>/status`, e.g. `Seccomp`.
fn status_field(pid: i32, key: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("status")
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")).map(|v| v.trim().to_owned()))
        .unwrap_or_default()
}

fn started(name: &str, disk: DiskSource) -> CreateRequest {
    CreateRequest {
        name: Some(name.into()),
        disk: Some(disk),
        network: Some("none".into()),
        start: true,
        ..CreateRequest::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn qemu_opens_nothing_outside_for_a_raw_disk_a_guest_rewrote() {
    let env = storage_env(serde_json::json!({}));
    let root = env.dir.path();
    let outside = root.join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let canary = outside.join("canary.raw");
    qemu_img(&["create", "-f", "raw", canary.to_str().unwrap(), "1M"]);
    let x = root.join("images/x.raw");
    qemu_img(&["create", "-f", "raw", x.to_str().unwrap(), "64M"]);
    env.ops.create(CreateRequest { start: false, ..started("a", DiskSource::Existing(x.clone())) }).await.unwrap();
    // What the guest of `a` can do to its raw disk.
    qemu_img(&["create", "-f", "qcow2", "-u", "-b", canary.to_str().unwrap(), "-F", "raw", x.to_str().unwrap(), "64M"]);

    let b = env.ops.create(started("b", DiskSource::Existing(x))).await.unwrap();

    let files = open_files(b.pid.expect("QEMU runs"));
    let allowed: Vec<PathBuf> = ["images", "isos", "disks", "state", "run"].iter().map(|d| root.join(d)).collect();
    let stray: Vec<&PathBuf> = files.iter().filter(|f| !allowed.iter().any(|d| f.starts_with(d))).collect();
    assert_eq!(stray, Vec::<&PathBuf>::new(), "QEMU holds files outside: {files:?}");
    assert!(!files.contains(&canary), "{files:?}");
    assert!(files.contains(&root.join("images/x.raw")), "the disk itself is open: {files:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn qemu_runs_under_its_seccomp_filter() {
    let env = TestEnv::new();

    let info = env.start_disk_vm("sandboxed").await;

    assert_eq!(status_field(info.pid.expect("QEMU runs"), "Seccomp"), "2");
}

#[tokio::test(flavor = "multi_thread")]
async fn logs_of_a_started_vm_are_0640() {
    use std::os::unix::fs::PermissionsExt;
    let env = TestEnv::new();
    env.start_disk_vm("logs").await;

    let dir = env.dir.path().join("state/vms/logs");
    let modes: Vec<(&str, u32)> = ["qemu.log", "supervisor.log", "serial.log", "events.jsonl"]
        .into_iter()
        .map(|f| (f, std::fs::metadata(dir.join(f)).map_or(0, |m| m.permissions().mode() & 0o777)))
        .collect();
    assert_eq!(modes, [("qemu.log", 0o640), ("supervisor.log", 0o640), ("serial.log", 0o640), ("events.jsonl", 0o640)]);
}

/// A system user created for one test and removed when dropped.
struct TempUser(String);

impl TempUser {
    fn create() -> Self {
        let name = format!("kvmt{}", std::process::id());
        let out = Command::new("useradd")
            .args(["--system", "--no-create-home", "--shell", "/usr/sbin/nologin", &name])
            .output()
            .expect("run useradd");
        assert!(out.status.success(), "useradd: {}", String::from_utf8_lossy(&out.stderr));
        Self(name)
    }

    fn uid(&self) -> u32 {
        nix::unistd::User::from_name(&self.0).unwrap().expect("user exists").uid.as_raw()
    }
}

impl Drop for TempUser {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn qemu_drops_to_the_configured_user_and_the_guest_boots() {
    let user = TempUser::create();
    let env = TestEnv::with_config(serde_json::json!({ "qemu": { "user": user.0 } }));

    let boot = CreateRequest {
        name: Some("runas".into()),
        kernel: Some(crate::common::vm::fixtures().join("vmlinuz")),
        initrd: Some(crate::common::vm::fixtures().join("initrd.gz")),
        cmdline: Some("console=ttyS0 panic=-1 quiet".into()),
        network: Some("user".into()),
        start: true,
        ..CreateRequest::default()
    };
    let info = env.ops.create(boot).await.unwrap();
    env.wait_console("runas", "FIXTURE-READY", 1).await;

    let pid = info.pid.expect("QEMU runs");
    let uids: Vec<u32> = status_field(pid, "Uid").split_whitespace().map(|u| u.parse().unwrap()).collect();
    assert_eq!(uids, vec![user.uid(); 4], "real, effective, saved and fs uid");
    assert_eq!(status_field(pid, "Seccomp"), "2");
    // Stopped before the user goes: userdel refuses a user that runs a process.
    let force = kvm_mcp::ops::StopOptions { force: true, timeout: None };
    env.ops.stop("runas", force, &kvm_mcp::ops::no_progress).await.unwrap();
}
