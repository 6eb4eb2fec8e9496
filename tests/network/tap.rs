//! Taps: creation, attachment to a bridge, counters, and lifetime.

use kvm_mcp::network::{ErrorKind, LinkStats, Netlink, Tap};
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags};

use super::ifname;
use crate::common::netns::{in_netns, link_message, rtnl};

/// A minimal Ethernet frame: broadcast, from a QEMU-style MAC, with the
/// IEEE "local experimental" `EtherType` and zero padding to 60 bytes.
const FRAME: [u8; 60] = {
    let mut frame = [0u8; 60];
    let header = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 0x88, 0xb5];
    let mut i = 0;
    while i < header.len() {
        frame[i] = header[i];
        i += 1;
    }
    frame
};

#[test]
fn created_tap_exists_while_fd_is_open() {
    let found = in_netns(|| async {
        let nl = Netlink::connect().expect("netlink");
        let _tap = Tap::create(&ifname("kmtap0"), true).expect("tap");
        nl.link_index(&ifname("kmtap0")).await.expect("lookup")
    });

    assert!(found.is_some());
}

#[test]
fn tap_is_gone_after_its_fd_is_dropped() {
    let found = in_netns(|| async {
        let nl = Netlink::connect().expect("netlink");
        let tap = Tap::create(&ifname("kmtap1"), true).expect("tap");
        drop(tap);
        nl.link_index(&ifname("kmtap1")).await.expect("lookup")
    });

    assert_eq!(found, None);
}

#[test]
fn tap_with_a_taken_name_is_conflict() {
    let kind = in_netns(|| async {
        let _first = Tap::create(&ifname("kmtap2"), true).expect("tap");
        Tap::create(&ifname("kmtap2"), true).unwrap_err().kind()
    });

    assert_eq!(kind, ErrorKind::Conflict);
}

#[test]
fn tap_over_an_existing_bridge_name_is_conflict() {
    let result = in_netns(|| async {
        let nl = Netlink::connect().expect("netlink");
        nl.create_bridge(&ifname("kmbr0")).await.expect("bridge");
        Tap::create(&ifname("kmbr0"), false).map(drop).map_err(|e| e.kind())
    });

    assert_eq!(result, Err(ErrorKind::Conflict));
}

#[test]
fn attached_tap_has_bridge_as_master_and_is_up() {
    let (bridge_index, master, flags) = in_netns(|| async {
        let nl = Netlink::connect().expect("netlink");
        let bridge_index = nl.create_bridge(&ifname("kmbr0")).await.expect("bridge");
        let _tap = Tap::create(&ifname("kmtap3"), true).expect("tap");
        nl.attach_and_up(&ifname("kmtap3"), &ifname("kmbr0")).await.expect("attach");
        let msg = link_message(&rtnl(), "kmtap3").await;
        let master = msg.attributes.iter().find_map(|attr| match attr {
            LinkAttribute::Controller(index) => Some(*index),
            _ => None,
        });
        (bridge_index, master, msg.header.flags)
    });

    assert_eq!(master, Some(bridge_index));
    assert!(flags.contains(LinkFlags::Up));
}

#[test]
fn attaching_to_a_missing_bridge_is_not_found() {
    let kind = in_netns(|| async {
        let nl = Netlink::connect().expect("netlink");
        let _tap = Tap::create(&ifname("kmtap4"), true).expect("tap");
        nl.attach_and_up(&ifname("kmtap4"), &ifname("nosuchbr")).await.unwrap_err().kind()
    });

    assert_eq!(kind, ErrorKind::NotFound);
}

#[test]
fn set_up_raises_a_down_tap() {
    let flags = in_netns(|| async {
        let nl = Netlink::connect().expect("netlink");
        let _tap = Tap::create(&ifname("kmtap5"), false).expect("tap");
        nl.set_up(&ifname("kmtap5")).await.expect("up");
        link_message(&rtnl(), "kmtap5").await.header.flags
    });

    assert!(flags.contains(LinkFlags::Up));
}

#[test]
fn frame_written_to_tap_counts_as_tap_rx() {
    let (before, after) = in_netns(|| async {
        let nl = Netlink::connect().expect("netlink");
        nl.create_bridge(&ifname("kmbr0")).await.expect("bridge");
        let tap = Tap::create(&ifname("kmtap6"), false).expect("tap");
        nl.attach_and_up(&ifname("kmtap6"), &ifname("kmbr0")).await.expect("attach");
        let before = nl.link_stats(&ifname("kmtap6")).await.expect("stats");
        let written = nix::unistd::write(&tap, &FRAME).expect("write frame");
        assert_eq!(written, FRAME.len());
        let after = nl.link_stats(&ifname("kmtap6")).await.expect("stats");
        (before, after)
    });

    assert_eq!((before.rx_packets, before.rx_bytes), (0, 0), "fresh tap: {before:?}");
    assert_eq!(
        LinkStats { rx_packets: after.rx_packets, rx_bytes: after.rx_bytes, ..LinkStats::default() },
        LinkStats { rx_packets: 1, rx_bytes: 60, ..LinkStats::default() }
    );
}
