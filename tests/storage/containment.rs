//! The host path rule from a hostile caller's side, without booting a guest: backing
//! files pointing outside (absolute, relative, through a symlink, a device), a raw
//! disk rewritten into a qcow2 header, kernels and initrds outside, SSH keys that are
//! /dev/zero, /proc/self/fd/0 or a FIFO, FIFOs as disks and ISOs. Every hostile
//! image is built with qemu-img. Where kvm-mcp might open a file outside, that file
//! is a FIFO nobody writes ("canary"): opening it would block for ever, so each call
//! runs under a generous deadline and the test asserts it came back with an error.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use kvm_mcp::error::ErrorKind;
use kvm_mcp::ops::{CreateRequest, DeleteOptions, DiskSource, VmInfo};
use kvm_mcp::provision::cloudinit::CloudInitRequest;

use crate::common::images::storage_env;
use crate::common::vm::TestEnv;

/// Far longer than any of these calls takes; a call that blocks on a FIFO never ends.
const DEADLINE: Duration = Duration::from_secs(120);

async fn bounded<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, fut).await.unwrap_or_else(|_| panic!("{what} blocked for {DEADLINE:?}"))
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn qemu_img(args: &[&str]) {
    let out = Command::new("qemu-img").args(args).output().expect("run qemu-img");
    assert!(out.status.success(), "qemu-img {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn mkfifo(p: &Path) {
    nix::unistd::mkfifo(p, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
}

/// `<root>/outside/`, holding `canary` (a FIFO nobody writes), outside every allowed
/// directory.
fn outside(env: &TestEnv) -> (PathBuf, PathBuf) {
    let dir = env.dir.path().join("outside");
    std::fs::create_dir_all(&dir).unwrap();
    let canary = dir.join("canary");
    mkfifo(&canary);
    (dir, canary)
}

/// A qcow2 in the image directory whose header names `backing` (unchecked, as given).
fn qcow2_naming(env: &TestEnv, name: &str, backing: &str) -> PathBuf {
    let p = env.dir.path().join("images").join(name);
    qemu_img(&["create", "-f", "qcow2", "-u", "-b", backing, "-F", "raw", s(&p), "1G"]);
    p
}

fn req(name: &str, disk: DiskSource) -> CreateRequest {
    CreateRequest {
        name: Some(name.into()),
        disk: Some(disk),
        network: Some("none".into()),
        disk_size_gib: Some(2),
        ..CreateRequest::default()
    }
}

async fn create_err(env: &TestEnv, r: CreateRequest) -> (ErrorKind, String) {
    let name = r.name.clone().unwrap();
    let err = bounded("create", env.ops.create(r)).await.expect_err("create must be refused");
    assert!(!env.dir.path().join("state/vms").join(&name).exists(), "a refused create left {name} behind");
    (err.kind(), kvm_mcp::error::chain(&err))
}

async fn create_ok(env: &TestEnv, r: CreateRequest) -> VmInfo {
    bounded("create", env.ops.create(r)).await.expect("create")
}

#[tokio::test]
async fn adopted_qcow2_with_absolute_backing_outside_is_refused() {
    let env = storage_env(serde_json::json!({}));
    let (_, canary) = outside(&env);
    let disk = qcow2_naming(&env, "abs.qcow2", s(&canary));

    let (kind, msg) = create_err(&env, req("abs", DiskSource::Existing(disk.clone()))).await;

    assert_eq!(kind, ErrorKind::InvalidInput);
    assert!(msg.starts_with(&format!("disk.existing: backing file of {}: ", disk.display())), "{msg}");
    assert!(msg.contains(&format!("{:?} is outside the allowed directories", s(&canary))), "{msg}");
}

#[tokio::test]
async fn adopted_qcow2_with_relative_backing_escaping_is_refused() {
    let env = storage_env(serde_json::json!({}));
    outside(&env);
    let disk = qcow2_naming(&env, "rel.qcow2", "../outside/canary");

    let (kind, msg) = create_err(&env, req("rel", DiskSource::Existing(disk))).await;

    assert_eq!(kind, ErrorKind::InvalidInput);
    assert!(msg.contains("\"../outside/canary\" is outside the allowed directories"), "{msg}");
}

#[tokio::test]
async fn adopted_qcow2_with_relative_backing_to_etc_shadow_is_refused() {
    let env = storage_env(serde_json::json!({}));
    let disk = qcow2_naming(&env, "shadow.qcow2", "../../../../../../../../../../etc/shadow");

    let (_, msg) = create_err(&env, req("shadow", DiskSource::Existing(disk))).await;

    assert!(msg.contains("etc/shadow\" is outside the allowed directories"), "{msg}");
}

#[tokio::test]
async fn adopted_qcow2_whose_backing_is_a_symlink_out_is_refused() {
    let env = storage_env(serde_json::json!({}));
    let (_, canary) = outside(&env);
    std::os::unix::fs::symlink(&canary, env.dir.path().join("images/base.raw")).unwrap();
    let disk = qcow2_naming(&env, "sym.qcow2", "base.raw");

    let (_, msg) = create_err(&env, req("sym", DiskSource::Existing(disk))).await;

    assert!(msg.contains("\"base.raw\" is outside the allowed directories"), "{msg}");
}

#[tokio::test]
async fn adopted_qcow2_whose_backing_is_dev_zero_is_refused() {
    let env = storage_env(serde_json::json!({}));
    let disk = qcow2_naming(&env, "zero.qcow2", "/dev/zero");

    let (_, msg) = create_err(&env, req("zero", DiskSource::Existing(disk))).await;

    assert!(msg.contains("\"/dev/zero\" is outside the allowed directories"), "{msg}");
}

#[tokio::test]
async fn master_whose_backing_points_outside_is_refused() {
    let env = storage_env(serde_json::json!({}));
    let (_, canary) = outside(&env);
    qcow2_naming(&env, "evil-master.qcow2", s(&canary));

    let (_, msg) = create_err(&env, req("evm", DiskSource::Master(Some("evil-master.qcow2".into())))).await;

    assert!(msg.starts_with("disk.master: backing file of"), "{msg}");
    assert!(crate::common::images::entries(&env.dir.path().join("disks")).is_empty());
}

/// A raw image `x.raw` in the image directory, adopted by VM `a`.
async fn adopted_raw(env: &TestEnv) -> PathBuf {
    let x = env.dir.path().join("images/x.raw");
    qemu_img(&["create", "-f", "raw", s(&x), "64M"]);
    create_ok(env, req("a", DiskSource::Existing(x.clone()))).await;
    x
}

/// What a guest with `x` as its raw disk can do: write a qcow2 header into it.
fn guest_writes_qcow2_header(x: &Path, backing: &Path) {
    qemu_img(&["create", "-f", "qcow2", "-u", "-b", s(backing), "-F", "raw", s(x), "64M"]);
}

#[tokio::test]
async fn raw_disk_rewritten_into_qcow2_stays_raw_for_the_next_vm() {
    let env = storage_env(serde_json::json!({}));
    let (_, canary) = outside(&env);
    let x = adopted_raw(&env).await;
    guest_writes_qcow2_header(&x, &canary);

    let b = create_ok(&env, req("b", DiskSource::Existing(x))).await;

    assert_eq!(b.disks[0].format, kvm_mcp::spec::DiskFormat::Raw);
}

#[tokio::test]
async fn raw_disk_rewritten_into_qcow2_is_refused_once_nobody_records_it() {
    let env = storage_env(serde_json::json!({}));
    let (_, canary) = outside(&env);
    let x = adopted_raw(&env).await;
    guest_writes_qcow2_header(&x, &canary);
    env.ops.delete("a", false).await.unwrap();

    let (_, msg) = create_err(&env, req("b", DiskSource::Existing(x))).await;

    assert!(msg.contains("is outside the allowed directories"), "{msg}");
}

#[tokio::test]
async fn start_after_the_header_changed_to_point_outside_is_refused() {
    // The chain is resolved again at every start: a header rewritten on the host
    // after create is caught before QEMU runs.
    let env = storage_env(serde_json::json!({}));
    let (_, canary) = outside(&env);
    let disk = qcow2_naming(&env, "later.qcow2", s(&env.dir.path().join("images/master.qcow2")));
    create_ok(&env, req("later", DiskSource::Existing(disk.clone()))).await;
    qemu_img(&["rebase", "-u", "-b", s(&canary), "-F", "raw", s(&disk)]);

    let err = bounded("start", env.ops.start("later")).await.unwrap_err();

    let msg = kvm_mcp::error::chain(&err);
    assert!(msg.contains(&format!("backing file of {}", disk.display())), "{msg}");
    assert!(msg.contains("is outside the allowed directories"), "{msg}");
    assert_eq!(env.ops.info("later").unwrap().pid, None, "no QEMU may run");
}

#[tokio::test]
async fn kernel_outside_the_kernel_dirs_is_refused() {
    let env = storage_env(serde_json::json!({}));
    let (dir, _) = outside(&env);
    std::fs::write(dir.join("vmlinuz"), b"not a kernel").unwrap();
    let r = CreateRequest {
        name: Some("kout".into()),
        kernel: Some(dir.join("vmlinuz")),
        network: Some("none".into()),
        ..CreateRequest::default()
    };

    let (kind, msg) = create_err(&env, r).await;

    assert_eq!(kind, ErrorKind::InvalidInput);
    assert!(msg.starts_with("kernel: ") && msg.contains("is outside the allowed directories"), "{msg}");
}

#[tokio::test]
async fn initrd_etc_shadow_is_refused() {
    let env = storage_env(serde_json::json!({}));
    std::fs::write(env.dir.path().join("disks/vmlinuz"), b"").unwrap();
    let r = CreateRequest {
        name: Some("iout".into()),
        kernel: Some("vmlinuz".into()),
        initrd: Some("/etc/shadow".into()),
        network: Some("none".into()),
        ..CreateRequest::default()
    };

    let (_, msg) = create_err(&env, r).await;

    assert!(msg.starts_with("initrd: \"/etc/shadow\" is outside the allowed directories"), "{msg}");
}

#[tokio::test]
async fn kernel_that_is_a_fifo_is_refused() {
    let env = storage_env(serde_json::json!({}));
    mkfifo(&env.dir.path().join("disks/vmlinuz"));
    let r = CreateRequest {
        name: Some("kfifo".into()),
        kernel: Some("vmlinuz".into()),
        network: Some("none".into()),
        ..CreateRequest::default()
    };

    let (_, msg) = create_err(&env, r).await;

    assert!(msg.starts_with("kernel: \"vmlinuz\" is a FIFO, not a regular file"), "{msg}");
}

fn with_keys(name: &str, keys: &[&str]) -> CreateRequest {
    let ci =
        CloudInitRequest { ssh_keys: keys.iter().map(|k| (*k).to_owned()).collect(), ..CloudInitRequest::default() };
    CreateRequest { cloud_init: Some(ci), ..req(name, DiskSource::Blank) }
}

/// An environment whose `keys/` directory is `storage.key_dirs`.
fn key_env() -> TestEnv {
    let mut env = storage_env(serde_json::json!({}));
    let keys = env.dir.path().join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    let mut cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(&env.config_path).unwrap()).unwrap();
    cfg["storage"]["key_dirs"] = serde_json::json!([keys]);
    std::fs::write(&env.config_path, serde_json::to_vec(&cfg).unwrap()).unwrap();
    let config = kvm_mcp::config::Config::discover(Some(&env.config_path)).unwrap();
    env.ops = kvm_mcp::ops::Ops::new(config).unwrap().with_exe(env!("CARGO_BIN_EXE_kvm-mcp").into());
    env
}

#[tokio::test]
async fn ssh_key_dev_zero_is_refused_at_once() {
    let env = key_env();

    let (kind, msg) = create_err(&env, with_keys("kz", &["/dev/zero"])).await;

    assert_eq!(kind, ErrorKind::InvalidInput);
    assert!(msg.starts_with("cloud_init.ssh_keys: \"/dev/zero\" is outside the allowed directories"), "{msg}");
}

#[tokio::test]
async fn ssh_key_proc_self_fd_0_is_refused() {
    let env = key_env();

    let (_, msg) = create_err(&env, with_keys("kp", &["/proc/self/fd/0"])).await;

    assert!(msg.starts_with("cloud_init.ssh_keys: \"/proc/self/fd/0\" is outside the allowed directories"), "{msg}");
}

#[tokio::test]
async fn ssh_key_file_that_is_a_fifo_is_refused() {
    let env = key_env();
    let fifo = env.dir.path().join("keys/id.pub");
    mkfifo(&fifo);

    let (_, msg) = create_err(&env, with_keys("kf", &[s(&fifo)])).await;

    assert!(msg.starts_with("cloud_init.ssh_keys: ") && msg.contains("is a FIFO, not a regular file"), "{msg}");
}

#[tokio::test]
async fn ignition_ssh_key_path_without_key_dirs_is_refused() {
    let env = storage_env(serde_json::json!({}));
    let ign =
        kvm_mcp::provision::ignition::IgnitionRequest { ssh_key: Some("/etc/shadow".into()), ..Default::default() };
    let r = CreateRequest { ignition: Some(ign), ..req("ign", DiskSource::Blank) };

    let (_, msg) = create_err(&env, r).await;

    assert!(msg.starts_with("ignition.ssh_key: \"/etc/shadow\" is not SSH public key text"), "{msg}");
}

#[tokio::test]
async fn fifo_as_adopted_disk_is_refused() {
    let env = storage_env(serde_json::json!({}));
    mkfifo(&env.dir.path().join("images/pipe.qcow2"));

    let (_, msg) = create_err(&env, req("pd", DiskSource::Existing("pipe.qcow2".into()))).await;

    assert_eq!(msg, "disk.existing: \"pipe.qcow2\" is a FIFO, not a regular file");
}

#[tokio::test]
async fn fifo_as_install_iso_is_refused() {
    let env = storage_env(serde_json::json!({}));
    mkfifo(&env.dir.path().join("isos/pipe.iso"));

    let (_, msg) = create_err(&env, req("pi", DiskSource::Install(Some("pipe.iso".into())))).await;

    assert_eq!(msg, "disk.install: \"pipe.iso\" is a FIFO, not a regular file");
}

#[tokio::test]
async fn fifo_as_attached_iso_is_refused() {
    let env = storage_env(serde_json::json!({}));
    create_ok(&env, req("att", DiskSource::Blank)).await;
    mkfifo(&env.dir.path().join("isos/pipe.iso"));

    let err = bounded("attach_iso", env.ops.attach_iso("att", Some(Path::new("pipe.iso")))).await.unwrap_err();

    assert_eq!(kvm_mcp::error::chain(&err), "iso: \"pipe.iso\" is a FIFO, not a regular file");
}

/// VM `inst` installing from `isos/install.iso`, whose ISO is then swapped for a FIFO.
async fn vm_whose_iso_became_a_fifo(env: &TestEnv) {
    create_ok(env, req("inst", DiskSource::Install(Some("install.iso".into())))).await;
    let iso = env.dir.path().join("isos/install.iso");
    std::fs::remove_file(&iso).unwrap();
    mkfifo(&iso);
}

#[tokio::test]
async fn list_images_answers_while_a_vm_iso_is_a_fifo() {
    let env = storage_env(serde_json::json!({}));
    vm_whose_iso_became_a_fifo(&env).await;

    let images = bounded("list_images", env.ops.list_images()).await.unwrap();

    assert!(images.iter().any(|i| i.path.ends_with("master.qcow2")), "{images:?}");
}

#[tokio::test]
async fn delete_completes_while_another_vm_iso_is_a_fifo() {
    // Delete asks every other VM whether it uses the disks going away.
    let env = storage_env(serde_json::json!({}));
    vm_whose_iso_became_a_fifo(&env).await;
    create_ok(&env, req("other", DiskSource::Master(Some("master.qcow2".into())))).await;

    let report = bounded("delete", env.ops.delete_with("other", DeleteOptions::default())).await.unwrap();

    assert_eq!(report.removed.len(), 1);
}

/// VM `bad` on an overlay of the master whose header is then rewritten (on the host)
/// to name the outside canary FIFO.
async fn vm_whose_backing_became_the_canary(env: &TestEnv) -> PathBuf {
    let (_, canary) = outside(env);
    let disk = create_ok(env, req("bad", DiskSource::Master(Some("master.qcow2".into())))).await.disks[0].path.clone();
    qemu_img(&["rebase", "-u", "-b", s(&canary), "-F", "raw", s(&disk)]);
    disk
}

#[tokio::test]
async fn list_images_never_follows_a_backing_file_outside() {
    let env = storage_env(serde_json::json!({}));
    let disk = vm_whose_backing_became_the_canary(&env).await;

    let images = bounded("list_images", env.ops.list_images()).await.unwrap();

    let own = images.iter().find(|i| i.path == disk).expect("the overlay is listed");
    assert_eq!(own.used_by, ["bad"]);
}

#[tokio::test]
async fn delete_of_another_vm_never_follows_a_backing_file_outside() {
    let env = storage_env(serde_json::json!({}));
    vm_whose_backing_became_the_canary(&env).await;
    create_ok(&env, req("other", DiskSource::Master(Some("master.qcow2".into())))).await;

    let report = bounded("delete", env.ops.delete_with("other", DeleteOptions::default())).await.unwrap();

    assert_eq!(report.removed.len(), 1);
}

#[tokio::test]
async fn reset_of_a_disk_whose_backing_points_outside_is_refused() {
    let env = storage_env(serde_json::json!({}));
    let disk = vm_whose_backing_became_the_canary(&env).await;

    let err = bounded("reset", env.ops.reset_vm_disk("bad")).await.unwrap_err();

    let msg = kvm_mcp::error::chain(&err);
    assert!(msg.starts_with(&format!("disk: backing file of {}: ", disk.display())), "{msg}");
}

#[tokio::test]
async fn image_without_backing_format_is_refused_with_the_fix() {
    let env = storage_env(serde_json::json!({}));
    let master = env.dir.path().join("images/master.qcow2");
    let disk = env.dir.path().join("images/nofmt.qcow2");
    qemu_img(&["create", "-f", "qcow2", "-b", s(&master), "-F", "qcow2", s(&disk)]);
    // Drop the backing-format extension as older tools wrote images: its type becomes
    // the end marker.
    let mut bytes = std::fs::read(&disk).unwrap();
    let at = bytes.windows(4).position(|w| w == [0xe2, 0x79, 0x2a, 0xca]).unwrap();
    bytes[at..at + 4].copy_from_slice(&[0; 4]);
    std::fs::write(&disk, bytes).unwrap();

    let (_, msg) = create_err(&env, req("nofmt", DiskSource::Existing(disk.clone()))).await;

    assert!(msg.contains(&format!("qemu-img rebase -u -F qcow2 -b {} {}", s(&master), s(&disk))), "{msg}");
}
