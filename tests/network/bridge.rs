//! Bridges, addresses and link lookups over rtnetlink.

use std::net::{IpAddr, Ipv4Addr};

use kvm_mcp::network::{ErrorKind, Netlink, Tap};

use super::ifname;
use crate::common::netns::{in_netns, ipv4_addresses};

#[test]
fn created_bridge_is_found_by_name() {
    let (created, found) = in_netns(|| async {
        let nl = Netlink::connect().expect("netlink");
        let created = nl.create_bridge(&ifname("kmbr0")).await.expect("create");
        let found = nl.link_index(&ifname("kmbr0")).await.expect("lookup");
        (created, found)
    });

    assert_eq!(found, Some(created));
}

#[test]
fn missing_link_index_is_none() {
    let found = in_netns(|| async {
        let nl = Netlink::connect().expect("netlink");
        nl.link_index(&ifname("nosuch0")).await.expect("lookup")
    });

    assert_eq!(found, None);
}

#[test]
fn ensure_missing_bridge_without_create_names_it_and_the_setting() {
    let err = in_netns(|| async {
        let nl = Netlink::connect().expect("netlink");
        nl.ensure_bridge(&ifname("kmbr9"), false).await.unwrap_err()
    });

    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert!(err.to_string().contains("bridge kmbr9 does not exist"));
    assert!(err.to_string().contains("network.create_bridge"));
}

#[test]
fn ensure_missing_bridge_with_create_creates_it() {
    let (ensured, found) = in_netns(|| async {
        let nl = Netlink::connect().expect("netlink");
        let ensured = nl.ensure_bridge(&ifname("kmbr1"), true).await.expect("ensure");
        let found = nl.link_index(&ifname("kmbr1")).await.expect("lookup");
        (ensured, found)
    });

    assert_eq!(found, Some(ensured));
}

#[test]
fn ensure_existing_bridge_returns_its_index() {
    let (created, ensured) = in_netns(|| async {
        let nl = Netlink::connect().expect("netlink");
        let created = nl.create_bridge(&ifname("kmbr2")).await.expect("create");
        let ensured = nl.ensure_bridge(&ifname("kmbr2"), false).await.expect("ensure");
        (created, ensured)
    });

    assert_eq!(ensured, created);
}

#[test]
fn ensure_bridge_over_a_tap_is_conflict() {
    let kind = in_netns(|| async {
        let nl = Netlink::connect().expect("netlink");
        let _tap = Tap::create(&ifname("kmtap9"), false).expect("tap");
        nl.ensure_bridge(&ifname("kmtap9"), true).await.unwrap_err().kind()
    });

    assert_eq!(kind, ErrorKind::Conflict);
}

#[test]
fn creating_an_existing_bridge_is_conflict() {
    let kind = in_netns(|| async {
        let nl = Netlink::connect().expect("netlink");
        nl.create_bridge(&ifname("kmbr3")).await.expect("create");
        nl.create_bridge(&ifname("kmbr3")).await.unwrap_err().kind()
    });

    assert_eq!(kind, ErrorKind::Conflict);
}

#[test]
fn deleted_bridge_is_gone() {
    let (deleted, found) = in_netns(|| async {
        let nl = Netlink::connect().expect("netlink");
        nl.create_bridge(&ifname("kmbr4")).await.expect("create");
        let deleted = nl.delete_link(&ifname("kmbr4")).await.expect("delete");
        let found = nl.link_index(&ifname("kmbr4")).await.expect("lookup");
        (deleted, found)
    });

    assert!(deleted);
    assert_eq!(found, None);
}

#[test]
fn deleting_a_missing_link_returns_false() {
    let deleted = in_netns(|| async {
        let nl = Netlink::connect().expect("netlink");
        nl.delete_link(&ifname("nosuch1")).await.expect("delete")
    });

    assert!(!deleted);
}

#[test]
fn added_address_appears_on_bridge_and_adding_again_succeeds() {
    let addresses = in_netns(|| async {
        let nl = Netlink::connect().expect("netlink");
        let index = nl.create_bridge(&ifname("kmbr5")).await.expect("create");
        let ip = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
        nl.add_address(&ifname("kmbr5"), ip, 24).await.expect("add");
        nl.add_address(&ifname("kmbr5"), ip, 24).await.expect("add again");
        ipv4_addresses(index).await
    });

    assert_eq!(addresses, vec![IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))]);
}

#[test]
fn address_with_too_long_prefix_is_invalid_input() {
    let kind = in_netns(|| async {
        let nl = Netlink::connect().expect("netlink");
        nl.create_bridge(&ifname("kmbr6")).await.expect("create");
        let ip = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
        nl.add_address(&ifname("kmbr6"), ip, 33).await.unwrap_err().kind()
    });

    assert_eq!(kind, ErrorKind::InvalidInput);
}

#[test]
fn stats_of_missing_link_are_not_found() {
    let kind = in_netns(|| async {
        let nl = Netlink::connect().expect("netlink");
        nl.link_stats(&ifname("nosuch2")).await.unwrap_err().kind()
    });

    assert_eq!(kind, ErrorKind::NotFound);
}
