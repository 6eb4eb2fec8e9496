//! Neighbour-table lookups by MAC on a bridge.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use kvm_mcp::ids::MacAddr;
use kvm_mcp::network::{ErrorKind, Netlink};

use super::ifname;
use crate::common::netns::{in_netns, rtnl};

const GUEST_MAC: &str = "52:54:00:12:34:56";
const GUEST_V4: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 77));
const GUEST_V6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x77));

/// Creates bridge `kmbr0` and adds permanent neighbour entries for the
/// guest MAC; returns a connection for the code under test.
async fn bridge_with_static_neighbours() -> Netlink {
    let nl = Netlink::connect().expect("netlink");
    let index = nl.create_bridge(&ifname("kmbr0")).await.expect("bridge");
    let mac: MacAddr = GUEST_MAC.parse().expect("mac");
    let handle = rtnl();
    for ip in [GUEST_V4, GUEST_V6] {
        handle
            .neighbours()
            .add(index, ip)
            .link_layer_address(&mac.octets())
            .execute()
            .await
            .expect("add static neighbour");
    }
    nl
}

#[test]
fn static_neighbours_are_found_by_their_mac() {
    let entries = in_netns(|| async {
        let nl = bridge_with_static_neighbours().await;
        let mac = GUEST_MAC.parse().expect("mac");
        nl.neighbours_by_mac(&ifname("kmbr0"), mac).await.expect("lookup")
    });

    let found: Vec<(std::net::IpAddr, String)> = entries.into_iter().map(|e| (e.ip, e.state)).collect();
    assert_eq!(found, vec![(GUEST_V4, "permanent".to_owned()), (GUEST_V6, "permanent".to_owned())]);
}

#[test]
fn neighbours_of_another_mac_are_not_returned() {
    let entries = in_netns(|| async {
        let nl = bridge_with_static_neighbours().await;
        let other = "52:54:00:65:43:21".parse().expect("mac");
        nl.neighbours_by_mac(&ifname("kmbr0"), other).await.expect("lookup")
    });

    assert_eq!(entries, vec![]);
}

#[test]
fn neighbours_of_a_missing_bridge_are_not_found() {
    let kind = in_netns(|| async {
        let nl = Netlink::connect().expect("netlink");
        let mac = GUEST_MAC.parse().expect("mac");
        nl.neighbours_by_mac(&ifname("nosuchbr"), mac).await.unwrap_err().kind()
    });

    assert_eq!(kind, ErrorKind::NotFound);
}
