//! The managed bridge's DHCP supervisor and dnsmasq, and start-up errors of bridged
//! and forwarded NICs, each in a network namespace of its own. No guest boots here.

use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use kvm_mcp::ids::PortForward;
use kvm_mcp::layout::BridgePaths;
use kvm_mcp::ops::{CreateRequest, OpsError};
use kvm_mcp::supervise::dhcp::{self, DhcpState, DhcpStatus};

use crate::common::net::{link_index, lo_up};
use crate::common::netns::{in_netns, ipv4_addresses};
use crate::common::vm::{TestEnv, alive};

fn lab_env(bridge: &str, subnet: &str) -> TestEnv {
    TestEnv::with_config(serde_json::json!({ "network": { "dhcp": { "bridge": bridge, "subnet": subnet } } }))
}

fn exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_kvm-mcp"))
}

async fn start_dhcp(env: &TestEnv) -> BridgePaths {
    let cfg = env.ops.config();
    let d = cfg.network.dhcp.as_ref().expect("dhcp configured");
    dhcp::ensure_running(cfg, d, &exe()).await.expect("DHCP supervisor starts");
    BridgePaths::new(&cfg.run_dir, &d.bridge)
}

fn status(paths: &BridgePaths) -> DhcpStatus {
    dhcp::read_status(paths).expect("status.json")
}

/// Waits until `pred` holds for the status file.
async fn wait_status(paths: &BridgePaths, pred: impl Fn(&DhcpStatus) -> bool) -> DhcpStatus {
    let start = Instant::now();
    loop {
        if let Some(s) = dhcp::read_status(paths).filter(|s| pred(s)) {
            return s;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "status not reached: {:?}", dhcp::read_status(paths));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn cmdline(pid: i32) -> String {
    String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default()).replace('\0', " ")
}

#[test]
fn managed_bridge_gets_its_host_address() {
    let addresses = in_netns(|| async {
        let env = lab_env("kmlab1", "192.0.2.0/24");
        start_dhcp(&env).await;
        let index = link_index("kmlab1").await.expect("bridge created");
        ipv4_addresses(index).await
    });
    assert_eq!(addresses, vec![IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))]);
}

#[test]
fn dnsmasq_runs_bound_to_the_managed_bridge_with_files_in_the_run_dir() {
    let (st, cmd, leases) = in_netns(|| async {
        let env = lab_env("kmlab2", "192.0.2.0/24");
        let paths = start_dhcp(&env).await;
        let st = status(&paths);
        let cmd = cmdline(st.dnsmasq_pid.expect("dnsmasq pid"));
        (st, cmd, paths.leases().display().to_string())
    });
    assert_eq!(st.state, DhcpState::Running);
    assert!(cmd.contains("--interface=kmlab2") && cmd.contains("--bind-dynamic"), "{cmd}");
    assert!(cmd.contains(&format!("--dhcp-leasefile={leases}")), "{cmd}");
}

#[test]
fn two_managed_bridges_each_get_a_dnsmasq_of_their_own() {
    let (a, b) = in_netns(|| async {
        let one = lab_env("kmlab3", "192.0.2.0/24");
        let two = lab_env("kmlab4", "198.51.100.0/24");
        let pa = start_dhcp(&one).await;
        let pb = start_dhcp(&two).await;
        // Both bind port 67; that works only because each is bound to its bridge.
        let (a, b) = (status(&pa).dnsmasq_pid.expect("pid"), status(&pb).dnsmasq_pid.expect("pid"));
        tokio::time::sleep(Duration::from_millis(500)).await;
        (alive(a), alive(b))
    });
    assert_eq!((a, b), (true, true));
}

#[test]
fn killed_dnsmasq_is_restarted() {
    let (first, after) = in_netns(|| async {
        let env = lab_env("kmlab5", "192.0.2.0/24");
        let paths = start_dhcp(&env).await;
        let first = status(&paths).dnsmasq_pid.expect("pid");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(first), nix::sys::signal::Signal::SIGKILL).expect("kill");
        let after = wait_status(&paths, |s| s.restarts == 1 && s.state == DhcpState::Running).await;
        (first, after.dnsmasq_pid.filter(|&p| alive(p)))
    });
    assert!(after.is_some_and(|p| p != first), "first {first}, now {after:?}");
}

#[test]
fn ensure_running_twice_keeps_one_dnsmasq() {
    let (first, second) = in_netns(|| async {
        let env = lab_env("kmlab6", "192.0.2.0/24");
        let paths = start_dhcp(&env).await;
        let first = status(&paths).dnsmasq_pid;
        start_dhcp(&env).await;
        (first, status(&paths).dnsmasq_pid)
    });
    assert_eq!(first, second);
}

#[test]
fn start_on_a_missing_bridge_names_it_and_the_setting() {
    let message = in_netns(|| async {
        let env = TestEnv::new();
        let req = CreateRequest { network: Some("kmnone0".into()), start: true, ..env.disk_vm("nobr") };
        match env.ops.create(req).await {
            Err(e @ OpsError::StartFailed { .. }) => e.to_string(),
            other => panic!("expected a start failure, got {other:?}"),
        }
    });
    assert!(
        message.contains("bridge kmnone0 does not exist") && message.contains("network.create_bridge"),
        "{message}"
    );
}

#[test]
fn start_with_a_forward_on_a_held_port_names_the_port() {
    let message = in_netns(|| async {
        lo_up().await;
        let held = TcpListener::bind("127.0.0.1:2222").expect("hold port 2222");
        let env = TestEnv::new();
        let req = CreateRequest { port_forwards: vec![PortForward::tcp(2222, 22)], start: true, ..env.disk_vm("held") };
        let msg = env.ops.create(req).await.map_or_else(|e| e.to_string(), |_| String::new());
        drop(held);
        msg
    });
    assert!(
        message.contains("port forward 127.0.0.1:2222:22/tcp: host port tcp:127.0.0.1:2222 cannot be used"),
        "{message}"
    );
}

#[test]
fn missing_dnsmasq_binary_is_a_clear_error() {
    let message = in_netns(|| async {
        let env = TestEnv::with_config(serde_json::json!({
            "network": { "dnsmasq": "/nonexistent/dnsmasq", "dhcp": { "bridge": "kmlab7", "subnet": "192.0.2.0/24" } }
        }));
        let cfg = env.ops.config();
        let d = cfg.network.dhcp.as_ref().expect("dhcp configured");
        dhcp::ensure_running(cfg, d, &exe()).await.unwrap_err().to_string()
    });
    assert!(message.contains("cannot run /nonexistent/dnsmasq") && message.contains("network.dnsmasq"), "{message}");
}
