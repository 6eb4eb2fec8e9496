//! NICs of new VMs (modes, MACs, models, port forwards) and port forwards of stopped
//! VMs: definitions only, nothing runs.

use kvm_mcp::error::ErrorKind;
use kvm_mcp::ids::{ForwardSelector, MacAddr, PortForward, Protocol};
use kvm_mcp::ops::{CreateRequest, NicRequest, VmInfo};
use kvm_mcp::spec::NetworkMode;

use crate::common::vm::TestEnv;

fn nic(network: &str) -> NicRequest {
    NicRequest { network: network.into(), ..NicRequest::default() }
}

async fn create(env: &TestEnv, name: &str, nics: Vec<NicRequest>) -> Result<VmInfo, kvm_mcp::ops::OpsError> {
    env.ops.create(CreateRequest { nics, network: None, ..env.disk_vm(name) }).await
}

#[tokio::test]
async fn several_nics_keep_their_order_and_modes() {
    let env = TestEnv::new();
    let info = create(&env, "multi", vec![nic("user"), nic("kmbr0"), nic("kmbr1")]).await.unwrap();
    let modes: Vec<&str> = info.nics.iter().map(|n| n.mode.label()).collect();
    assert_eq!(modes, vec!["user", "kmbr0", "kmbr1"]);
}

#[tokio::test]
async fn macs_are_derived_from_the_uuid_per_nic() {
    let env = TestEnv::new();
    let info = create(&env, "derive", vec![nic("user"), nic("kmbr0")]).await.unwrap();
    let uuid = info.uuid.parse().unwrap();
    assert_eq!(
        info.nics.iter().map(|n| n.mac).collect::<Vec<_>>(),
        vec![MacAddr::derive(&uuid, 0), MacAddr::derive(&uuid, 1)]
    );
}

#[tokio::test]
async fn mac_override_is_kept() {
    let env = TestEnv::new();
    let req = NicRequest { mac: Some("52:54:00:AB:CD:EF".into()), ..nic("user") };
    let info = create(&env, "macov", vec![req]).await.unwrap();
    assert_eq!(info.nics[0].mac.to_string(), "52:54:00:ab:cd:ef");
}

#[tokio::test]
async fn mac_of_another_vm_is_conflict() {
    let env = TestEnv::new();
    let first = create(&env, "first", vec![nic("user")]).await.unwrap();
    let req = NicRequest { mac: Some(first.nics[0].mac.to_string()), ..nic("user") };
    let err = create(&env, "second", vec![req]).await.unwrap_err();
    assert_eq!((err.kind(), err.to_string().contains("VM \"first\"")), (ErrorKind::Conflict, true), "{err}");
}

#[tokio::test]
async fn multicast_mac_is_invalid_and_names_the_field() {
    let env = TestEnv::new();
    let req = NicRequest { mac: Some("01:00:5e:00:00:01".into()), ..nic("user") };
    let err = create(&env, "mcast", vec![req]).await.unwrap_err();
    assert!(err.to_string().starts_with("nics[0].mac:"), "{err}");
}

#[tokio::test]
async fn model_override_is_kept() {
    let env = TestEnv::new();
    let req = NicRequest { model: Some("e1000".into()), ..nic("user") };
    let info = create(&env, "e1000", vec![req]).await.unwrap();
    assert_eq!(info.nics[0].model.as_deref(), Some("e1000"));
}

#[tokio::test]
async fn model_with_qemu_options_is_refused() {
    let env = TestEnv::new();
    let req = NicRequest { model: Some("e1000,romfile=/etc/shadow".into()), ..nic("user") };
    let err = create(&env, "inject", vec![req]).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
}

#[tokio::test]
async fn network_and_nics_together_are_refused() {
    let env = TestEnv::new();
    let req = CreateRequest { nics: vec![nic("user")], ..env.disk_vm("both") };
    let err = env.ops.create(req).await.unwrap_err();
    assert!(err.to_string().starts_with("nics: give either network"), "{err}");
}

#[tokio::test]
async fn forwards_on_a_bridged_nic_are_refused() {
    let env = TestEnv::new();
    let req = NicRequest { port_forwards: vec![PortForward::tcp(2222, 22)], ..nic("kmbr0") };
    let err = create(&env, "brfwd", vec![req]).await.unwrap_err();
    assert!(err.to_string().starts_with("nics[0].port_forwards: port forwards need network \"user\""), "{err}");
}

#[tokio::test]
async fn forwards_from_create_are_in_the_spec() {
    let env = TestEnv::new();
    let req = CreateRequest { port_forwards: vec![PortForward::tcp(2222, 22)], ..env.disk_vm("fwdspec") };
    let info = env.ops.create(req).await.unwrap();
    assert_eq!(info.nics[0].mode, NetworkMode::User { port_forwards: vec![PortForward::tcp(2222, 22)] });
}

#[tokio::test]
async fn forward_taken_by_another_vm_is_conflict_naming_it() {
    let env = TestEnv::new();
    let first = CreateRequest { port_forwards: vec![PortForward::tcp(2222, 22)], ..env.disk_vm("owner") };
    env.ops.create(first).await.unwrap();
    let second = CreateRequest { port_forwards: vec![PortForward::tcp(2222, 80)], ..env.disk_vm("late") };
    let err = env.ops.create(second).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "host port tcp:127.0.0.1:2222 is already used by VM \"owner\" (NIC 0); pick another host port"
    );
}

#[tokio::test]
async fn forward_added_to_a_stopped_vm_is_listed_inactive() {
    let env = TestEnv::new();
    env.ops.create(env.disk_vm("off")).await.unwrap();
    let udp: PortForward = "5353:53/udp".parse().unwrap();
    let listed = env.ops.add_port_forward("off", None, udp).await.unwrap();
    assert_eq!(listed.iter().map(|f| (f.nic, f.forward, f.active)).collect::<Vec<_>>(), vec![(0, udp, None)]);
}

#[tokio::test]
async fn removed_forward_leaves_the_spec() {
    let env = TestEnv::new();
    let req = CreateRequest { port_forwards: vec![PortForward::tcp(2222, 22)], ..env.disk_vm("rm") };
    env.ops.create(req).await.unwrap();
    let sel = ForwardSelector { protocol: Protocol::Tcp, host_addr: None, host_port: 2222 };
    env.ops.remove_port_forward("rm", None, sel).await.unwrap();
    assert_eq!(env.ops.info("rm").unwrap().nics[0].mode, NetworkMode::user());
}

#[tokio::test]
async fn removing_an_unknown_forward_is_not_found() {
    let env = TestEnv::new();
    env.ops.create(env.disk_vm("none")).await.unwrap();
    let sel = ForwardSelector { protocol: Protocol::Udp, host_addr: None, host_port: 9 };
    let err = env.ops.remove_port_forward("none", None, sel).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
}

#[tokio::test]
async fn forward_on_a_vm_without_user_nic_is_refused() {
    let env = TestEnv::new();
    create(&env, "bronly", vec![nic("kmbr0")]).await.unwrap();
    let err = env.ops.add_port_forward("bronly", None, PortForward::tcp(2222, 22)).await.unwrap_err();
    assert!(err.to_string().contains("has no user-mode NIC"), "{err}");
}

#[test]
fn cli_creates_a_vm_with_two_nics_and_a_forward() {
    let env = TestEnv::new();
    let disk = env.disk("cli2");
    let out = env.cli(&[
        "--json",
        "vm",
        "create",
        "cli2",
        "--disk",
        disk.to_str().unwrap(),
        "--nic",
        "user,forward=2222:22,model=e1000",
        "--nic",
        "kmbr0,mac=52:54:00:01:02:03",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        info["nics"],
        serde_json::json!([
            {"addr": "pci:06.0", "mode": "user", "mac": info["nics"][0]["mac"], "model": "e1000",
             "port_forwards": [{"protocol": "tcp", "host_addr": "127.0.0.1", "host_port": 2222, "guest_port": 22}]},
            {"addr": "pci:07.0", "mode": "bridge", "bridge": "kmbr0", "mac": "52:54:00:01:02:03", "model": null}
        ])
    );
}
