//! Disk sources, confinement, clones, resize, reset and media against real files,
//! each image checked with qemu-img. No guest boots here (see `guest::storage`).

use std::path::{Path, PathBuf};

use kvm_mcp::error::ErrorKind;
use kvm_mcp::ops::{CloneRequest, CreateRequest, DeleteOptions, DiskSource, VmInfo};
use kvm_mcp::spec::Media;

use crate::common::images::{Tmpfs, assert_check_clean, entries, qemu_img_info, qemu_io, storage_env};
use crate::common::vm::{TestEnv, fixtures};

const GIB: u64 = 1 << 30;

fn master(env: &TestEnv) -> PathBuf {
    env.dir.path().join("images/master.qcow2")
}

fn from(name: &str, disk: DiskSource) -> CreateRequest {
    CreateRequest {
        name: Some(name.into()),
        disk: Some(disk),
        network: Some("none".into()),
        disk_size_gib: Some(2),
        ..CreateRequest::default()
    }
}

async fn from_master(env: &TestEnv, name: &str) -> VmInfo {
    env.ops.create(from(name, DiskSource::Master(Some("master.qcow2".into())))).await.expect("create from master")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[tokio::test]
async fn master_source_writes_overlay_grown_to_disk_size() {
    let env = storage_env(serde_json::json!({}));
    let disk = from_master(&env, "m1").await.disks[0].path.clone();
    assert_check_clean(&disk);
    let chain = qemu_img_info(&disk);
    assert_eq!(
        (
            chain[0]["virtual-size"].as_u64(),
            chain[0]["backing-filename-format"].as_str(),
            chain[1]["filename"].as_str()
        ),
        (Some(2 * GIB), Some("qcow2"), Some(s(&master(&env))))
    );
}

#[tokio::test]
async fn default_master_image_is_used_when_no_disk_is_given() {
    let env = storage_env(serde_json::json!({ "default_master_image": "master.qcow2" }));
    let req = CreateRequest { name: Some("dm".into()), network: Some("none".into()), ..CreateRequest::default() };
    let disk = env.ops.create(req).await.unwrap().disks[0].path.clone();
    assert_eq!(qemu_img_info(&disk)[0]["backing-filename"].as_str(), Some(s(&master(&env))));
}

#[tokio::test]
async fn dot_dot_path_is_refused_naming_allowed_dirs() {
    let env = storage_env(serde_json::json!({}));
    let err = env.ops.create(from("t1", DiskSource::Existing("../../../etc/passwd".into()))).await.unwrap_err();
    let msg = kvm_mcp::error::chain(&err);
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(msg.contains("is outside the allowed directories") && msg.contains("/images"), "{msg}");
    assert!(!env.dir.path().join("state/vms/t1").exists());
}

#[tokio::test]
async fn symlink_out_of_image_dir_is_refused() {
    let env = storage_env(serde_json::json!({}));
    std::os::unix::fs::symlink(fixtures().join("disk.qcow2"), env.dir.path().join("images/link.qcow2")).unwrap();
    let err = env.ops.create(from("t2", DiskSource::Master(Some("link.qcow2".into())))).await.unwrap_err();
    assert!(kvm_mcp::error::chain(&err).contains("is outside the allowed directories"), "{err}");
}

#[tokio::test]
async fn iso_outside_iso_dirs_is_refused() {
    let env = storage_env(serde_json::json!({}));
    let err = env.ops.create(from("t3", DiskSource::Install(Some(fixtures().join("install.iso"))))).await.unwrap_err();
    assert!(kvm_mcp::error::chain(&err).contains("is outside the allowed directories"), "{err}");
    assert_eq!(entries(&env.dir.path().join("disks")), Vec::<String>::new());
}

#[tokio::test]
async fn full_disk_gives_clear_error_and_leaves_nothing() {
    let env = storage_env(serde_json::json!({}));
    let disks = env.dir.path().join("disks");
    let _fs = Tmpfs::mount(&disks);
    std::fs::write(disks.join("filler"), vec![1u8; 900 << 10]).unwrap();
    let err = env.ops.create(from("full", DiskSource::Master(Some("master.qcow2".into())))).await.unwrap_err();
    let msg = kvm_mcp::error::chain(&err);
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    assert!(msg.contains("not enough free space") && msg.contains("full.qcow2"), "{msg}");
    assert_eq!((entries(&disks), env.dir.path().join("state/vms/full").exists()), (vec!["filler".to_owned()], false));
}

#[tokio::test]
async fn install_source_gives_blank_disk_and_cdrom_boot_pending() {
    let env = storage_env(serde_json::json!({}));
    let info = env.ops.create(from("inst", DiskSource::Install(Some("install.iso".into())))).await.unwrap();
    let chain = qemu_img_info(&info.disks[0].path);
    assert_check_clean(&info.disks[0].path);
    assert_eq!(
        (chain[0]["virtual-size"].as_u64(), chain[0].get("backing-filename").is_none(), info.disks[1].media),
        (Some(2 * GIB), true, Media::Cdrom)
    );
    assert!(env.dir.path().join("state/vms/inst/install-pending").exists());
}

#[tokio::test]
async fn list_images_and_isos_show_what_uses_them() {
    let env = storage_env(serde_json::json!({}));
    from_master(&env, "u1").await;
    env.ops.create(from("u2", DiskSource::Install(Some("install.iso".into())))).await.unwrap();
    let images = env.ops.list_images().await.unwrap();
    let isos = env.ops.list_isos().unwrap();
    let m = images.iter().find(|i| i.path == master(&env)).expect("master listed");
    assert_eq!(m.used_by, ["u1"]);
    assert_eq!(
        isos.iter().map(|i| (i.path.file_name().unwrap().to_owned(), i.used_by.clone())).collect::<Vec<_>>(),
        [("install.iso".into(), vec!["u2".to_owned()])]
    );
}

#[tokio::test]
async fn delete_removes_own_overlay_and_keeps_master() {
    let env = storage_env(serde_json::json!({}));
    let disk = from_master(&env, "d1").await.disks[0].path.clone();
    let report = env.ops.delete_with("d1", DeleteOptions::default()).await.unwrap();
    assert_eq!((report.removed, disk.exists(), master(&env).exists()), (vec![disk], false, true));
}

#[tokio::test]
async fn delete_with_keep_disks_leaves_overlay() {
    let env = storage_env(serde_json::json!({}));
    let disk = from_master(&env, "d2").await.disks[0].path.clone();
    let report = env.ops.delete_with("d2", DeleteOptions { force: false, keep_disks: true }).await.unwrap();
    assert_eq!((report.kept, disk.exists()), (vec![disk], true));
}

#[tokio::test]
async fn delete_of_adopted_disk_vm_leaves_the_image() {
    let env = storage_env(serde_json::json!({}));
    let disk = env.disk("adopted");
    env.ops.create(from("a1", DiskSource::Existing(disk.clone()))).await.unwrap();
    let report = env.ops.delete_with("a1", DeleteOptions::default()).await.unwrap();
    assert_eq!((report.removed.len(), disk.exists()), (0, true));
}

#[tokio::test]
async fn linked_clone_is_overlay_on_source_disk() {
    let env = storage_env(serde_json::json!({}));
    let src = from_master(&env, "src").await.disks[0].path.clone();
    let req = CloneRequest { source: "src".into(), name: "c1".into(), ..CloneRequest::default() };
    let disk = env.ops.clone_vm(req).await.unwrap().vm.disks[0].path.clone();
    assert_check_clean(&disk);
    let chain = qemu_img_info(&disk);
    assert_eq!(
        (chain[0]["backing-filename"].as_str(), chain[2]["filename"].as_str()),
        (Some(s(&src)), Some(s(&master(&env))))
    );
}

#[tokio::test]
async fn template_of_linked_clone_refuses_to_start() {
    let env = storage_env(serde_json::json!({}));
    from_master(&env, "tpl").await;
    env.ops
        .clone_vm(CloneRequest { source: "tpl".into(), name: "c2".into(), ..CloneRequest::default() })
        .await
        .unwrap();
    let err = env.ops.start("tpl").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict);
    assert!(err.to_string().contains("template of linked clones") && err.to_string().contains("c2"), "{err}");
}

#[tokio::test]
async fn base_of_linked_clone_is_never_deleted() {
    let env = storage_env(serde_json::json!({}));
    let src = from_master(&env, "base").await.disks[0].path.clone();
    env.ops
        .clone_vm(CloneRequest { source: "base".into(), name: "c3".into(), ..CloneRequest::default() })
        .await
        .unwrap();
    let err = env.ops.delete_with("base", DeleteOptions::default()).await.unwrap_err();
    assert_eq!((err.kind(), src.exists(), env.ops.info("base").is_ok()), (ErrorKind::Conflict, true, true));
}

#[tokio::test]
async fn full_clone_copies_disk_and_leaves_source_startable() {
    let env = storage_env(serde_json::json!({}));
    from_master(&env, "fsrc").await;
    let req = CloneRequest { source: "fsrc".into(), name: "full".into(), full: true, ..CloneRequest::default() };
    let disk = env.ops.clone_vm(req).await.unwrap().vm.disks[0].path.clone();
    assert_check_clean(&disk);
    let spec = std::fs::read_to_string(env.dir.path().join("state/vms/fsrc/spec.json")).unwrap();
    assert_eq!(
        (qemu_img_info(&disk)[0]["backing-filename"].as_str(), spec.contains("template")),
        (Some(s(&master(&env))), false)
    );
}

#[tokio::test]
async fn offline_resize_grows_and_refuses_to_shrink() {
    let env = storage_env(serde_json::json!({}));
    let disk = from_master(&env, "rs").await.disks[0].path.clone();
    env.ops.resize_disk("rs", 3, None).await.unwrap();
    let err = env.ops.resize_disk("rs", 1, None).await.unwrap_err();
    assert_check_clean(&disk);
    assert_eq!(
        (qemu_img_info(&disk)[0]["virtual-size"].as_u64(), err.kind()),
        (Some(3 * GIB), ErrorKind::InvalidInput)
    );
}

#[tokio::test]
async fn reset_vm_disk_throws_writes_away() {
    let env = storage_env(serde_json::json!({}));
    let disk = from_master(&env, "rst").await.disks[0].path.clone();
    qemu_io(&disk, "write -P 0xab 1G 64k");
    env.ops.reset_vm_disk("rst").await.unwrap();
    assert_check_clean(&disk);
    assert!(qemu_io(&disk, "read -P 0 1G 64k").contains("read 65536/65536 bytes"), "data survived the reset");
    assert_eq!(qemu_img_info(&disk)[0]["virtual-size"].as_u64(), Some(2 * GIB));
}

#[tokio::test]
async fn attach_iso_adds_cdrom_to_stopped_vm_and_eject_empties_it() {
    let env = storage_env(serde_json::json!({}));
    env.ops.create(from("cd", DiskSource::Existing(env.disk("cd")))).await.unwrap();
    let attached = env.ops.attach_iso("cd", Some(Path::new("install.iso"))).await.unwrap();
    let ejected = env.ops.eject_iso("cd").await.unwrap();
    let iso = env.dir.path().join("isos/install.iso");
    assert_eq!(
        (&attached.disks[1].path, attached.disks[1].media, attached.disks[1].ejected, ejected.disks[1].ejected),
        (&iso, Media::Cdrom, false, true)
    );
}

#[test]
fn cli_creates_from_master_and_lists_images() {
    let env = storage_env(serde_json::json!({}));
    let out = env.cli(&["vm", "create", "cli1", "--master", "master.qcow2", "--disk-size", "2", "--network", "none"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = env.cli(&["--json", "storage", "images"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let users: Vec<&str> = list.as_array().unwrap().iter().filter_map(|i| i["used_by"][0].as_str()).collect();
    assert_eq!(users, ["cli1", "cli1"]);
}
mod clone;
mod containment;
mod provision;
mod template;

#[tokio::test(flavor = "multi_thread")]
async fn offline_snapshot_reverts_disk_writes() {
    let env = storage_env(serde_json::json!({}));
    let disk = from_master(&env, "snap").await.disks[0].path.clone();
    qemu_io(&disk, "write -P 0x11 1G 64k");
    let taken = env.ops.create_snapshot("snap", "clean", &kvm_mcp::ops::no_progress).await.unwrap();
    qemu_io(&disk, "write -P 0x22 1G 64k");
    env.ops.revert_snapshot("snap", "clean", &kvm_mcp::ops::no_progress).await.unwrap();
    assert_check_clean(&disk);
    assert!(qemu_io(&disk, "read -P 0x11 1G 64k").contains("read 65536/65536 bytes"), "revert lost");
    assert_eq!((taken.name.as_str(), taken.live), ("clean", false));
}

#[tokio::test(flavor = "multi_thread")]
async fn offline_snapshot_delete_and_duplicate_name() {
    let env = storage_env(serde_json::json!({}));
    from_master(&env, "snd").await;
    env.ops.create_snapshot("snd", "s1", &kvm_mcp::ops::no_progress).await.unwrap();
    let dup = env.ops.create_snapshot("snd", "s1", &kvm_mcp::ops::no_progress).await.unwrap_err();
    env.ops.delete_snapshot("snd", "s1", &kvm_mcp::ops::no_progress).await.unwrap();
    assert_eq!((dup.kind(), env.ops.list_snapshots("snd").unwrap()), (ErrorKind::Conflict, vec![]));
}
