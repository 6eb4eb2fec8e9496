//! Storage against real TCG guests: an ISO install onto a blank disk, booting an
//! overlay without touching its base, live disk growth and live CD-ROM changes.

use kvm_mcp::ops::{CreateRequest, DiskSource, StopOptions, no_progress};
use kvm_mcp::state::VmState;

use crate::common::images::{assert_check_clean, qemu_img_info, sha256, storage_env, type_until};

fn req(name: &str, disk: DiskSource) -> CreateRequest {
    CreateRequest {
        name: Some(name.into()),
        disk: Some(disk),
        network: Some("user".into()),
        disk_size_gib: Some(1),
        ..CreateRequest::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn iso_install_then_next_start_boots_the_disk() {
    let env = storage_env(serde_json::json!({}));
    let info = env.ops.create(CreateRequest { start: true, ..req("inst", DiskSource::Install(None)) }).await;
    let err = info.map(|_| ()).unwrap_err();
    assert!(err.to_string().contains("vm.default_iso"), "{err}");
    let info = env
        .ops
        .create(CreateRequest { start: true, ..req("inst", DiskSource::Install(Some("install.iso".into()))) })
        .await
        .unwrap();
    env.wait_console("inst", "FIXTURE-INSTALL-DONE", 1).await;
    env.wait_state("inst", VmState::Shutoff).await;
    env.ops.start("inst").await.unwrap();
    env.wait_console("inst", "FIXTURE-READY", 1).await;
    env.ops.stop("inst", StopOptions::default(), &no_progress).await.unwrap();
    assert_check_clean(&info.disks[0].path);
    assert_eq!(env.console("inst").matches("FIXTURE-INSTALL-START").count(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn booting_an_overlay_leaves_the_base_unchanged() {
    let env = storage_env(serde_json::json!({}));
    let base = env.dir.path().join("images/master.qcow2");
    let before = sha256(&base);
    let info = env.ops.create(CreateRequest { start: true, ..req("ov", DiskSource::Master(None)) }).await;
    assert!(info.is_err(), "no default master image is configured");
    let info = env
        .ops
        .create(CreateRequest { start: true, ..req("ov", DiskSource::Master(Some("master.qcow2".into()))) })
        .await
        .unwrap();
    env.wait_console("ov", "FIXTURE-READY", 1).await;
    let dd = "dd if=/dev/urandom of=/dev/vda bs=64k count=16 seek=256 conv=fsync && echo WROTE-DISK";
    type_until(&env, "ov", dd, "\nWROTE-DISK").await;
    env.ops.stop("ov", StopOptions::default(), &no_progress).await.unwrap();
    let overlay = &info.disks[0].path;
    assert_check_clean(overlay);
    let map = std::process::Command::new("qemu-img").args(["map", "--output=json"]).arg(overlay).output().unwrap();
    let map: serde_json::Value = serde_json::from_slice(&map.stdout).unwrap();
    let at = 16u64 << 20;
    let in_overlay = map.as_array().unwrap().iter().any(|e| {
        let (start, len) = (e["start"].as_u64().unwrap(), e["length"].as_u64().unwrap());
        e["depth"] == 0 && e["data"] == true && start <= at && at < start + len
    });
    assert_eq!((sha256(&base), in_overlay), (before, true));
}

#[tokio::test(flavor = "multi_thread")]
async fn live_resize_is_seen_by_the_guest() {
    let env = storage_env(serde_json::json!({}));
    let req = CreateRequest { start: true, ..req("grow", DiskSource::Master(Some("master.qcow2".into()))) };
    let info = env.ops.create(req).await.unwrap();
    env.wait_console("grow", "FIXTURE-READY", 1).await;
    env.ops.resize_disk("grow", 2, None).await.unwrap();
    type_until(&env, "grow", "echo VDA-SECTORS-$(cat /sys/block/vda/size)", "VDA-SECTORS-4194304").await;
    env.ops.stop("grow", StopOptions::default(), &no_progress).await.unwrap();
    assert_eq!(qemu_img_info(&info.disks[0].path)[0]["virtual-size"].as_u64(), Some(2 << 30));
}

#[tokio::test(flavor = "multi_thread")]
async fn live_eject_and_attach_change_what_the_guest_reads() {
    let env = storage_env(serde_json::json!({}));
    env.ops.create(req("media", DiskSource::Existing(env.disk("media")))).await.unwrap();
    env.ops.attach_iso("media", Some(std::path::Path::new("install.iso"))).await.unwrap();
    env.ops.start("media").await.unwrap();
    env.wait_console("media", "FIXTURE-READY", 1).await;
    type_until(
        &env,
        "media",
        "echo CD-A-$(dd if=/dev/sr0 bs=2048 skip=16 count=1 2>/dev/null | grep -c FIXTURE-ISO)",
        "CD-A-1",
    )
    .await;
    env.ops.eject_iso("media").await.unwrap();
    type_until(
        &env,
        "media",
        "echo CD-B-$(dd if=/dev/sr0 bs=2048 skip=16 count=1 2>/dev/null | grep -c FIXTURE-ISO)",
        "CD-B-0",
    )
    .await;
    env.ops.attach_iso("media", None).await.unwrap_err();
    env.ops.attach_iso("media", Some(std::path::Path::new("install.iso"))).await.unwrap();
    type_until(
        &env,
        "media",
        "echo CD-C-$(dd if=/dev/sr0 bs=2048 skip=16 count=1 2>/dev/null | grep -c FIXTURE-ISO)",
        "CD-C-1",
    )
    .await;
    env.ops.stop("media", StopOptions { force: true, timeout: None }, &no_progress).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn guest_reads_the_cloud_init_seed() {
    let env = storage_env(serde_json::json!({}));
    let ci = kvm_mcp::provision::cloudinit::CloudInitRequest {
        hostname: Some("seeded".into()),
        run_commands: vec!["echo seeded-by-kvm-mcp".into()],
        ..Default::default()
    };
    let r = req("ci", DiskSource::Master(Some("master.qcow2".into())));
    env.ops.create(CreateRequest { start: true, cloud_init: Some(ci), ..r }).await.unwrap();
    env.wait_console("ci", "FIXTURE-READY", 1).await;
    env.ops.stop("ci", StopOptions { force: true, timeout: None }, &no_progress).await.unwrap();
    let console = env.console("ci");
    assert!(console.contains("FIXTURE-SEED local-hostname: \"seeded\""), "{console}");
    assert!(console.contains("FIXTURE-SEED   - \"echo seeded-by-kvm-mcp\""), "{console}");
}

#[tokio::test(flavor = "multi_thread")]
async fn uefi_profile_boots_with_its_own_variable_store() {
    let env = storage_env(serde_json::json!({}));
    let r = req("efi", DiskSource::Master(Some("master.qcow2".into())));
    env.ops.create(CreateRequest { start: true, os_variant: Some("linux-uefi".into()), ..r }).await.unwrap();
    env.wait_console("efi", "FIXTURE-READY", 1).await;
    env.ops.stop("efi", StopOptions { force: true, timeout: None }, &no_progress).await.unwrap();
    let log = std::fs::read_to_string(env.dir.path().join("state/vms/efi/qemu.log")).unwrap();
    assert!(log.contains("pflash1=fw-vars") && log.contains("state/vms/efi/OVMF_VARS.fd"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn fedora_coreos_vm_runs_with_ignition_in_fw_cfg() {
    let env = storage_env(serde_json::json!({}));
    let r = req("fcos", DiskSource::Master(Some("master.qcow2".into())));
    let info = env.ops.create(CreateRequest { start: true, os_variant: Some("fedora-coreos".into()), ..r }).await;
    let info = info.unwrap();
    env.ops.stop("fcos", StopOptions { force: true, timeout: None }, &no_progress).await.unwrap();
    let log = std::fs::read_to_string(env.dir.path().join("state/vms/fcos/qemu.log")).unwrap();
    assert_eq!(info.state, VmState::Running);
    assert!(log.contains("-fw_cfg name=opt/com.coreos/config,file="), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn live_snapshot_revert_forgets_a_file_written_after_it() {
    let env = storage_env(serde_json::json!({}));
    let r = req("live", DiskSource::Master(Some("master.qcow2".into())));
    env.ops.create(CreateRequest { start: true, ..r }).await.unwrap();
    env.wait_console("live", "FIXTURE-READY", 1).await;
    type_until(&env, "live", "echo SHELL-UP", "\nSHELL-UP").await;
    let snap = env.ops.create_snapshot("live", "before", &no_progress).await.unwrap();
    type_until(&env, "live", "echo late > /late-file && echo WROTE-LATE", "\nWROTE-LATE").await;
    env.ops.revert_snapshot("live", "before", &no_progress).await.unwrap();
    type_until(&env, "live", "test -e /late-file && echo LATE-STILL-THERE || echo LATE-GONE", "\nLATE-").await;
    env.ops.stop("live", StopOptions { force: true, timeout: None }, &no_progress).await.unwrap();
    let console = env.console("live");
    assert!(snap.live && snap.vm_state_bytes > 0, "{snap:?}");
    assert!(console.contains("\nLATE-GONE") && !console.contains("\nLATE-STILL-THERE"), "{console}");
}
