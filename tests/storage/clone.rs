//! Clones are new machines, checked on the files (no guest boots here; see
//! `guest::addresses` and `guest::debian`): the renewed seed read back from its FAT
//! image, device addresses carried over, forwards on free host ports, and what a clone
//! of a VM without a seed says it kept.

use kvm_mcp::error::ErrorKind;
use kvm_mcp::ids::PortForward;
use kvm_mcp::ops::{CloneRequest, CreateRequest, DiskSource, VmInfo};
use kvm_mcp::provision::cloudinit::CloudInitRequest;
use kvm_mcp::spec::DevAddr;

use crate::common::images::storage_env;
use crate::common::vm::TestEnv;

fn seeded(name: &str, ci: Option<CloudInitRequest>, forwards: Vec<PortForward>) -> CreateRequest {
    CreateRequest {
        name: Some(name.into()),
        disk: Some(DiskSource::Master(Some("master.qcow2".into()))),
        network: Some("user".into()),
        port_forwards: forwards,
        disk_size_gib: Some(1),
        cloud_init: ci,
        ..CreateRequest::default()
    }
}

fn clone(source: &str, name: &str) -> CloneRequest {
    CloneRequest { source: source.into(), name: name.into(), ..CloneRequest::default() }
}

/// `meta-data`, `user-data` and `network-config` of the VM's seed (`None` when absent).
fn seed_files(vm: &VmInfo) -> Vec<Option<String>> {
    let seed = vm.disks.iter().find(|d| d.path.starts_with(&vm.state_dir)).expect("a seed disk");
    kvm_mcp::storage::read_fat_files(&seed.path, &["meta-data", "user-data", "network-config"], 16 << 20, 1 << 20)
        .unwrap()
        .into_iter()
        .map(|f| f.map(|b| String::from_utf8(b).unwrap()))
        .collect()
}

fn addrs(vm: &VmInfo) -> Vec<Option<DevAddr>> {
    vm.disks.iter().map(|d| d.addr).chain(vm.nics.iter().map(|n| n.addr)).collect()
}

fn ci() -> CloudInitRequest {
    CloudInitRequest {
        hostname: Some("src".into()),
        network: Some(kvm_mcp::provision::cloudinit::SeedNetwork::Dhcp),
        ..CloudInitRequest::default()
    }
}

async fn create(env: &TestEnv, req: CreateRequest) -> VmInfo {
    env.ops.create(req).await.expect("create")
}

#[tokio::test]
async fn create_records_every_device_address() {
    let env = storage_env(serde_json::json!({}));
    let vm = create(&env, seeded("a1", Some(ci()), vec![])).await;
    assert_eq!(addrs(&vm), vec![Some(DevAddr::pci(5)), Some(DevAddr::pci(6)), Some(DevAddr::pci(7))]);
}

#[tokio::test]
async fn clone_gets_a_new_seed_at_the_seed_address_with_new_identity() {
    let env = storage_env(serde_json::json!({}));
    let src = create(&env, seeded("src", Some(ci()), vec![])).await;

    let r = env.ops.clone_vm(CloneRequest { hostname: Some("web-2".into()), ..clone("src", "c1") }).await.unwrap();

    let files = seed_files(&r.vm);
    let (meta, user, net) = (files[0].clone().unwrap(), files[1].clone().unwrap(), files[2].clone().unwrap());
    assert_eq!(addrs(&r.vm), addrs(&src));
    assert_eq!(meta, format!("instance-id: \"{}\"\nlocal-hostname: \"web-2\"\n", r.vm.uuid));
    assert!(user.contains("manage_etc_hosts: true") && user.contains("kvm-mcp-machine-id"), "{user}");
    assert!(net.contains(&r.vm.nics[0].mac.to_string()) && !net.contains(&src.nics[0].mac.to_string()), "{net}");
    assert_eq!(r.identity.instance_id.as_deref(), Some(r.vm.uuid.as_str()));
}

#[tokio::test]
async fn clone_of_a_clone_is_new_again() {
    let env = storage_env(serde_json::json!({}));
    create(&env, seeded("g0", Some(ci()), vec![])).await;
    env.ops.clone_vm(CloneRequest { full: true, ..clone("g0", "g1") }).await.unwrap();

    let r = env.ops.clone_vm(clone("g1", "g2")).await.unwrap();

    let user = seed_files(&r.vm)[1].clone().unwrap();
    assert_eq!((user.matches("kvm-mcp-machine-id").count(), r.identity.hostname.as_deref()), (1, Some("g2")));
}

#[tokio::test]
async fn clone_without_a_seed_says_what_stayed_the_same() {
    let env = storage_env(serde_json::json!({}));
    create(&env, seeded("plain", None, vec![])).await;

    let r = env.ops.clone_vm(clone("plain", "p1")).await.unwrap();

    assert_eq!(r.identity.instance_id, None);
    assert!(r.identity.unchanged.iter().any(|u| u.contains("machine-id") && u.contains("host name")), "{r:?}");
}

#[tokio::test]
async fn hostname_for_a_clone_without_a_seed_is_refused_and_nothing_is_left() {
    let env = storage_env(serde_json::json!({}));
    create(&env, seeded("plain", None, vec![])).await;

    let e = env.ops.clone_vm(CloneRequest { hostname: Some("x".into()), ..clone("plain", "p2") }).await.unwrap_err();

    assert!(e.to_string().starts_with("hostname: VM \"plain\" has no cloud-init seed"), "{e}");
    assert!(env.ops.info("p2").is_err() && !env.dir.path().join("disks/p2.qcow2").exists());
}

#[tokio::test]
async fn a_bad_clone_hostname_names_the_argument() {
    let env = storage_env(serde_json::json!({}));
    create(&env, seeded("src", Some(ci()), vec![])).await;

    let e = env.ops.clone_vm(CloneRequest { hostname: Some("no spaces".into()), ..clone("src", "c") }).await;

    assert!(e.unwrap_err().to_string().starts_with("hostname: \"no spaces\" is not a valid host name"));
}

#[tokio::test]
async fn clone_forwards_move_to_free_host_ports() {
    let env = storage_env(serde_json::json!({}));
    create(&env, seeded("fw", None, vec![PortForward::tcp(42222, 22)])).await;

    let r = env.ops.clone_vm(clone("fw", "fw1")).await.unwrap();

    let kvm_mcp::spec::NetworkMode::User { port_forwards } = &r.vm.nics[0].mode else { panic!("user NIC") };
    assert_eq!((port_forwards.len(), port_forwards[0].guest_port), (1, 22));
    assert_ne!(port_forwards[0].host_port, 42222);
}

#[tokio::test]
async fn clone_forwards_can_be_given_and_a_taken_one_is_refused() {
    let env = storage_env(serde_json::json!({}));
    create(&env, seeded("fw", None, vec![PortForward::tcp(42322, 22)])).await;
    let given = CloneRequest { port_forwards: Some(vec![PortForward::tcp(42323, 22)]), ..clone("fw", "fw2") };
    let taken = CloneRequest { port_forwards: Some(vec![PortForward::tcp(42322, 22)]), ..clone("fw", "fw3") };

    let r = env.ops.clone_vm(given).await.unwrap();
    let e = env.ops.clone_vm(taken).await.unwrap_err();

    let kvm_mcp::spec::NetworkMode::User { port_forwards } = &r.vm.nics[0].mode else { panic!("user NIC") };
    assert_eq!(port_forwards, &vec![PortForward::tcp(42323, 22)]);
    assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
}

#[tokio::test]
async fn attaching_a_cd_to_a_stopped_vm_moves_nothing() {
    let env = storage_env(serde_json::json!({}));
    let before = create(&env, seeded("cd", Some(ci()), vec![])).await;

    let after = env.ops.attach_iso("cd", Some(std::path::Path::new("install.iso"))).await.unwrap();

    let kept = |v: &VmInfo| (v.disks[0].addr, v.disks[1].addr, v.nics[0].addr);
    assert_eq!((kept(&after), after.disks[2].addr), (kept(&before), Some(DevAddr::Ata(0))));
}
