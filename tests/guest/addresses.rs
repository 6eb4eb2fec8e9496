//! Stable device addresses against real QEMU: the explicit addresses kvm-mcp gives an
//! old spec (one written before addresses were recorded) are the slots QEMU picked for
//! it without them, and a clone of a cloud-init VM finds its NIC in the slot its
//! source's guest knew, with a fresh seed.

use kvm_mcp::ops::{CloneRequest, CreateRequest, DiskSource, StopOptions, no_progress};
use kvm_mcp::provision::cloudinit::CloudInitRequest;
use kvm_mcp::qemu::accel::Accel;
use kvm_mcp::qemu::cmdline::{self, FdPlan, HostInputs};
use kvm_mcp::qemu::profile::Profiles;
use kvm_mcp::spec::{Boot, DiskFormat, DiskSpec, Media, NetworkMode, NicSpec, RestartPolicy, SPEC_VERSION, VmSpec};
use tokio::process::Command;

use crate::common::images::{storage_env, type_until};
use crate::common::qemu::Qemu;

/// A spec as kvm-mcp wrote them before addresses were recorded: disk, seed, two NICs.
fn old_spec(dir: &std::path::Path, os_variant: &str) -> VmSpec {
    let disk = |name: &str| {
        let path = dir.join(name);
        std::fs::write(&path, vec![0u8; 1 << 20]).unwrap();
        DiskSpec {
            path,
            format: DiskFormat::Raw,
            media: Media::Disk,
            readonly: false,
            owned: true,
            ejected: false,
            addr: None,
        }
    };
    let nic = |mac: &str| NicSpec { mode: NetworkMode::user(), mac: mac.parse().unwrap(), model: None, addr: None };
    VmSpec {
        version: SPEC_VERSION,
        name: kvm_mcp::ids::VmName::new("old").unwrap(),
        uuid: uuid::Uuid::new_v4(),
        created_at: 0,
        os_variant: os_variant.into(),
        memory_mib: 128,
        vcpus: 1,
        boot: Boot::Disk,
        disks: vec![disk("disk.raw"), disk("seed.raw")],
        nics: vec![nic("52:54:00:00:00:01"), nic("52:54:00:00:00:02")],
        restart_policy: RestartPolicy::Never,
        template: false,
        made_template: false,
        ignition: None,
        uefi: None,
        addresses: Default::default(),
        pool: None,
        pool_of: None,
        lease: kvm_mcp::spec::Lease::default(),
        install_boot: false,
    }
}

/// `qdev_id slot` of every PCI device of a paused QEMU started with `argv` (monitors
/// replaced by QMP on stdio).
async fn pci_slots(argv: &[String]) -> Vec<String> {
    // Every option of the argv takes a value except these two, given below anyway.
    let options: Vec<&String> = argv.iter().filter(|a| *a != "-nodefaults" && *a != "-no-user-config").collect();
    let keep: Vec<&String> = options
        .chunks(2)
        .filter(|p| !(p[0] == "-mon" || (p[0] == "-chardev" && p[1].contains(",fd="))))
        .flatten()
        .copied()
        .collect();
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-nodefaults", "-no-user-config", "-S", "-qmp", "stdio"]).args(&keep);
    let mut qemu = Qemu::spawn(cmd).await;
    let pci = qemu.execute("query-pci").await;
    qemu.kill_and_wait().await;
    let mut out: Vec<String> = pci[0]["devices"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["qdev_id"].as_str().is_some_and(|id| !id.is_empty()))
        .map(|d| format!("{} {}", d["qdev_id"].as_str().unwrap(), d["slot"]))
        .collect();
    out.sort();
    out
}

/// The argv of `spec`, and the same argv with every `addr=` taken out (what kvm-mcp
/// passed before addresses were recorded).
fn argv_with_and_without_addr(dir: &std::path::Path, spec: &VmSpec) -> (Vec<String>, Vec<String>) {
    let profiles = Profiles::load(None).unwrap();
    let profile = profiles.get(&spec.os_variant).unwrap();
    let paths = kvm_mcp::layout::VmPaths::new(&dir.join("state"), &dir.join("run"), &spec.name);
    std::fs::create_dir_all(&paths.run).unwrap();
    std::fs::create_dir_all(&paths.state).unwrap();
    let host = HostInputs::single_nodes(spec);
    let with = cmdline::build(spec, profile, Accel::Tcg, &paths, &FdPlan::standard(0), &host).unwrap();
    let re = regex::Regex::new(r",addr=[0-9a-f]{2}\.[0-7]").unwrap();
    let without = with.iter().map(|a| re.replace_all(a, "").into_owned()).collect();
    (with, without)
}

#[tokio::test(flavor = "multi_thread")]
async fn old_q35_spec_gets_the_slots_qemu_gave_it() {
    let dir = tempfile::tempdir().unwrap();
    let (with, without) = argv_with_and_without_addr(dir.path(), &old_spec(dir.path(), "linux"));

    let (explicit, picked) = (pci_slots(&with).await, pci_slots(&without).await);

    assert_eq!(explicit, picked);
    assert!(explicit.contains(&"net1-dev 8".to_owned()), "{explicit:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn old_i440fx_spec_gets_the_slots_qemu_gave_it() {
    let dir = tempfile::tempdir().unwrap();
    let (with, without) = argv_with_and_without_addr(dir.path(), &old_spec(dir.path(), "legacy"));

    let (explicit, picked) = (pci_slots(&with).await, pci_slots(&without).await);

    assert_eq!(explicit, picked);
    assert!(explicit.contains(&"video0 2".to_owned()), "{explicit:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn clone_of_a_seeded_vm_finds_its_nic_in_the_same_slot_and_reads_a_new_seed() {
    let env = storage_env(serde_json::json!({}));
    let ci = CloudInitRequest { hostname: Some("source".into()), ..CloudInitRequest::default() };
    let src = CreateRequest {
        name: Some("src".into()),
        disk: Some(DiskSource::Master(Some("master.qcow2".into()))),
        network: Some("user".into()),
        disk_size_gib: Some(1),
        cloud_init: Some(ci),
        ..CreateRequest::default()
    };
    let created = env.ops.create(src).await.unwrap();
    let clone = CloneRequest { source: "src".into(), name: "cl".into(), start: true, ..CloneRequest::default() };

    let report = env.ops.clone_vm(clone).await.unwrap();
    env.wait_console("cl", "FIXTURE-READY", 1).await;
    let nic = "echo NIC-AT-$(basename $(readlink -f /sys/class/net/eth0/device/..))";
    type_until(&env, "cl", nic, "NIC-AT-0000:00:07.0").await;
    env.ops.stop("cl", StopOptions { force: true, timeout: None }, &no_progress).await.unwrap();

    let console = env.console("cl");
    let id = report.identity.instance_id.clone().unwrap();
    assert_eq!(id, report.vm.uuid);
    assert_ne!(report.vm.uuid, created.uuid);
    assert!(console.contains(&format!("FIXTURE-SEED instance-id: \"{id}\"")), "{console}");
    assert!(console.contains("FIXTURE-SEED local-hostname: \"cl\""), "{console}");
    assert!(console.contains("FIXTURE-SEED   - \"cloud-init-per instance kvm-mcp-machine-id"), "{console}");
}
