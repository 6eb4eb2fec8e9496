//! Guests on a bridge, each test in a network namespace of its own: kvm-mcp's
//! supervisor, the DHCP supervisor, dnsmasq and QEMU are all started from the test's
//! namespaced thread, so they and every bridge and tap live and die in that namespace.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use kvm_mcp::ops::{CreateRequest, IpQuery, IpSource, StopOptions, no_progress};
use kvm_mcp::state::VmState;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::common::net::{HTTP_MARKER, fixture_ip, http_get, link_index};
use crate::common::netns::{in_netns, link_message, rtnl};
use crate::common::vm::TestEnv;

const LAB_BRIDGE: &str = "kmlab0";

/// An environment whose managed bridge hands out 192.0.2.100-199 (TEST-NET-1).
fn lab_env() -> TestEnv {
    TestEnv::with_config(serde_json::json!({
        "network": { "dhcp": { "bridge": LAB_BRIDGE, "subnet": "192.0.2.0/24", "range": "192.0.2.100-192.0.2.199" } }
    }))
}

/// An environment that creates missing bridges (no DHCP).
fn plain_env() -> TestEnv {
    TestEnv::with_config(serde_json::json!({ "network": { "create_bridge": true } }))
}

fn bridged_vm(env: &TestEnv, name: &str, bridge: &str) -> CreateRequest {
    CreateRequest { network: Some(bridge.into()), start: true, ..env.disk_vm(name) }
}

/// Boots a guest on the lab bridge and waits until it printed its address and runs
/// httpd and qemu-ga.
async fn boot_lab_guest(env: &TestEnv, name: &str) -> Ipv4Addr {
    env.ops.create(bridged_vm(env, name, LAB_BRIDGE)).await.expect("create and start");
    env.wait_console(name, "FIXTURE-READY", 1).await;
    fixture_ip(&env.console(name))
}

#[test]
fn guest_gets_a_lease_from_the_managed_dnsmasq() {
    let ip = in_netns(|| async {
        let env = lab_env();
        boot_lab_guest(&env, "lease").await
    });
    assert!((Ipv4Addr::new(192, 0, 2, 100)..=Ipv4Addr::new(192, 0, 2, 199)).contains(&ip), "{ip}");
}

#[test]
fn host_reaches_the_guests_httpd_over_the_bridge() {
    let page = in_netns(|| async {
        let env = lab_env();
        let ip = boot_lab_guest(&env, "web").await;
        http_get(SocketAddr::new(IpAddr::V4(ip), 80)).await
    });
    assert!(page.contains(HTTP_MARKER), "{page}");
}

#[test]
fn get_vm_ip_answers_from_agent_leases_and_neighbours() {
    let (ip, sources) = in_netns(|| async {
        let env = lab_env();
        let ip = boot_lab_guest(&env, "ipsrc").await;
        // Talking to the guest puts it in the host's neighbour table.
        http_get(SocketAddr::new(IpAddr::V4(ip), 80)).await;
        let query = IpQuery { wait_s: Some(30), all_sources: true };
        let found = env.ops.get_vm_ip("ipsrc", query, &no_progress).await.expect("get_vm_ip");
        let sources: BTreeSet<String> = found.nics[0]
            .addresses
            .iter()
            .filter(|a| a.ip == IpAddr::V4(ip))
            .map(|a| format!("{:?}", a.source))
            .collect();
        (found.ip, sources)
    });
    let want: BTreeSet<String> =
        [IpSource::Agent, IpSource::DhcpLease, IpSource::Neighbour].iter().map(|s| format!("{s:?}")).collect();
    assert_eq!(sources, want, "best answer {ip:?}");
}

#[test]
fn tap_counters_move_with_guest_traffic_and_vm_stats_shows_them_too() {
    let (before, after, vm_stats) = in_netns(|| async {
        let env = lab_env();
        let ip = boot_lab_guest(&env, "count").await;
        let before = env.ops.nic_stats("count").await.expect("stats")[0].counters.expect("tap counters");
        http_get(SocketAddr::new(IpAddr::V4(ip), 80)).await;
        let after = env.ops.nic_stats("count").await.expect("stats")[0].counters.expect("tap counters");
        let vm_stats = env.ops.vm_stats("count", None).await.expect("vm_stats").nics[0].counters;
        (before, after, vm_stats)
    });
    // The guest received the request and sent the page.
    assert!(after.rx_bytes > before.rx_bytes && after.rx_packets > before.rx_packets, "{before:?} → {after:?}");
    assert!(after.tx_bytes > before.tx_bytes && after.tx_packets > before.tx_packets, "{before:?} → {after:?}");
    // vm_stats shows the same counters, read later.
    let later = vm_stats.expect("vm_stats has the tap's counters too");
    assert!(later.rx_bytes >= after.rx_bytes && later.tx_bytes >= after.tx_bytes, "{after:?} → {later:?}");
}

#[test]
fn missing_bridge_is_created_when_configured_and_the_tap_joins_it() {
    let (bridge, master) = in_netns(|| async {
        let env = plain_env();
        env.ops.create(bridged_vm(&env, "mkbr", "kmnew0")).await.expect("create and start");
        let bridge = link_index("kmnew0").await;
        let tap = link_message(&rtnl(), "mkbr-0").await;
        let master = tap.attributes.iter().find_map(|a| match a {
            rtnetlink::packet_route::link::LinkAttribute::Controller(i) => Some(*i),
            _ => None,
        });
        (bridge, master)
    });
    assert_eq!((bridge.is_some(), master), (true, bridge));
}

#[test]
fn tap_is_gone_after_stop() {
    let (while_running, after_stop) = in_netns(|| async {
        let env = plain_env();
        env.ops.create(bridged_vm(&env, "stoptap", "kmbr0")).await.expect("create and start");
        let while_running = link_index("stoptap-0").await;
        let opts = StopOptions { force: true, timeout: None };
        env.ops.stop("stoptap", opts, &no_progress).await.expect("stop");
        (while_running, link_index("stoptap-0").await)
    });
    assert_eq!((while_running.is_some(), after_stop), (true, None));
}

#[test]
fn tap_is_gone_after_qemu_is_killed() {
    let (while_running, state, after_kill) = in_netns(|| async {
        let env = plain_env();
        let pid = env.ops.create(bridged_vm(&env, "killtap", "kmbr0")).await.expect("start").pid.expect("pid");
        let while_running = link_index("killtap-0").await;
        kill(Pid::from_raw(pid), Signal::SIGKILL).expect("kill -9 QEMU");
        let info = env.wait_state("killtap", VmState::Crashed).await;
        (while_running, info.state, link_index("killtap-0").await)
    });
    assert_eq!((while_running.is_some(), state, after_kill), (true, VmState::Crashed, None));
}
