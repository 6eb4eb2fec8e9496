//! Neighbour (ARP and NDP) lookups: which IP addresses the host has seen
//! behind a VM's MAC on its bridge, so a guest's address can be reported
//! without a guest agent.

use std::net::IpAddr;

use futures::TryStreamExt;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState};
use serde::Serialize;

use super::bridge::Netlink;
use super::error::{NetworkError, Result, netlink_errno, netlink_io};
use crate::ids::IfName;
use crate::ids::MacAddr;

/// One neighbour-table entry for a MAC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NeighbourEntry {
    /// The neighbour's IPv4 or IPv6 address.
    pub ip: IpAddr,
    /// The kernel's NUD state in lower case, as `ip neigh` prints it
    /// (`reachable`, `stale`, `permanent`, ...).
    pub state: String,
    /// Seconds since the kernel last confirmed or updated the entry, when it says.
    pub age_s: Option<u64>,
}

impl Netlink {
    /// Entries of the IPv4 and IPv6 neighbour tables of `bridge` whose
    /// link-layer address is `mac`, IPv4 first, in kernel order.
    ///
    /// An entry appears only once the host has exchanged traffic with the
    /// guest (or one was added by hand), so an empty list is normal for a
    /// guest that is still booting. Families the kernel does not support
    /// (IPv6 disabled) are skipped.
    ///
    /// # Errors
    ///
    /// [`NetworkError::LinkMissing`] if the bridge does not exist,
    /// [`NetworkError::ListNeighbours`] if a dump fails.
    pub async fn neighbours_by_mac(&self, bridge: &IfName, mac: MacAddr) -> Result<Vec<NeighbourEntry>> {
        let index = self.require_link(bridge).await?.header.index;
        let mut entries = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut dump = self.handle.neighbours().get().set_address_family(family).execute();
            loop {
                match dump.try_next().await {
                    Ok(Some(msg)) => entries.extend(entry_for(&msg, index, mac)),
                    Ok(None) => break,
                    Err(e) if netlink_errno(&e) == Some(libc::EAFNOSUPPORT) => break,
                    Err(e) => {
                        return Err(NetworkError::ListNeighbours { bridge: bridge.to_string(), source: netlink_io(e) });
                    }
                }
            }
        }
        Ok(entries)
    }
}

/// The entry `msg` describes, if it is on link `index` and has address `mac`.
fn entry_for(msg: &NeighbourMessage, index: u32, mac: MacAddr) -> Option<NeighbourEntry> {
    if msg.header.ifindex != index {
        return None;
    }
    let mut lladdr = None;
    let mut ip = None;
    let mut age_s = None;
    for attr in &msg.attributes {
        match attr {
            NeighbourAttribute::LinkLayerAddress(bytes) => lladdr = Some(bytes.as_slice()),
            NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => {
                ip = Some(IpAddr::V4(*v4));
            }
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => {
                ip = Some(IpAddr::V6(*v6));
            }
            // Both are clock ticks (USER_HZ, 100 a second) since the event.
            NeighbourAttribute::CacheInfo(c) => age_s = Some(u64::from(c.confirmed.min(c.updated)) / 100),
            _ => {}
        }
    }
    if lladdr? != mac.octets().as_slice() {
        return None;
    }
    Some(NeighbourEntry { ip: ip?, state: state_name(msg.header.state), age_s })
}

fn state_name(state: NeighbourState) -> String {
    match state {
        // The library prints `other(N` without the closing parenthesis.
        NeighbourState::Other(n) => format!("other({n})"),
        known => known.to_string(),
    }
}
