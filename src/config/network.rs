//! `network.*`: whether a missing bridge may be created, the dnsmasq binary, and
//! `network.dhcp`, the managed bridge with its subnet, host address, lease range and
//! lease time.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{ConfigError, in_range, invalid};
use crate::ids::IfName;

/// Default `network.dhcp.lease_time_s`.
pub const DEFAULT_LEASE_TIME_S: u64 = 3600;
/// dnsmasq refuses leases shorter than two minutes.
const MIN_LEASE_TIME_S: u64 = 120;

/// The file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawNetwork {
    create_bridge: Option<bool>,
    dnsmasq: Option<PathBuf>,
    dhcp: Option<RawDhcp>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDhcp {
    #[serde(default)]
    bridge: Option<String>,
    subnet: String,
    #[serde(default)]
    host_address: Option<Ipv4Addr>,
    #[serde(default)]
    range: Option<String>,
    #[serde(default)]
    lease_time_s: Option<u64>,
}

/// `network.*`: host networking.
#[derive(Debug, Clone, Serialize)]
pub struct NetworkSettings {
    /// Create a missing bridge (no uplink, no address) instead of refusing to start.
    pub create_bridge: bool,
    /// The dnsmasq binary run for a managed bridge.
    pub dnsmasq: PathBuf,
    /// The managed bridge, when configured.
    pub dhcp: Option<DhcpSettings>,
}

impl NetworkSettings {
    /// The DHCP settings when `bridge` is the managed bridge.
    #[must_use]
    pub fn managed(&self, bridge: &str) -> Option<&DhcpSettings> {
        self.dhcp.as_ref().filter(|d| d.bridge.as_str() == bridge)
    }
}

/// `network.dhcp`: a bridge kvm-mcp manages for isolated labs. It is created when
/// missing, given `host_address`, and served by a dnsmasq bound to it alone.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DhcpSettings {
    /// The bridge (`network.dhcp.bridge`, default `vm.default_network`).
    pub bridge: IfName,
    /// Network address of the subnet.
    pub network: Ipv4Addr,
    /// Prefix length of the subnet (8..=30).
    pub prefix_len: u8,
    /// The host's address on the bridge (default: the subnet's first address).
    pub host_address: Ipv4Addr,
    /// First address handed out.
    pub range_start: Ipv4Addr,
    /// Last address handed out.
    pub range_end: Ipv4Addr,
    /// Lease length in seconds.
    pub lease_time_s: u64,
}

impl DhcpSettings {
    /// The subnet mask, e.g. `255.255.255.0`.
    #[must_use]
    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(mask_bits(self.prefix_len))
    }
}

fn mask_bits(prefix_len: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix_len)).unwrap_or(0)
}

/// Resolves the section; `default_network` (`vm.default_network`) is the managed
/// bridge when `network.dhcp.bridge` is unset.
pub(super) fn resolve(raw: RawNetwork, default_network: &str) -> Result<NetworkSettings, ConfigError> {
    let dhcp = raw.dhcp.map(|d| resolve_dhcp(d, default_network)).transpose()?;
    Ok(NetworkSettings {
        create_bridge: raw.create_bridge.unwrap_or(false),
        dnsmasq: raw.dnsmasq.unwrap_or_else(|| "/usr/sbin/dnsmasq".into()),
        dhcp,
    })
}
fn resolve_dhcp(d: RawDhcp, default_network: &str) -> Result<DhcpSettings, ConfigError> {
    let bridge_name = match d.bridge {
        Some(b) => b,
        None if !matches!(default_network, "user" | "none") => default_network.to_owned(),
        None => {
            return Err(invalid(
                "network.dhcp.bridge",
                format!("required, since vm.default_network is {default_network:?} and not a bridge"),
            ));
        }
    };
    let bridge = IfName::new(&bridge_name).map_err(|e| invalid("network.dhcp.bridge", e.to_string()))?;
    let subnet_err =
        || invalid("network.dhcp.subnet", format!("{:?} is not an IPv4 subnet such as \"192.168.150.0/24\"", d.subnet));
    let (addr, len) = d.subnet.split_once('/').ok_or_else(subnet_err)?;
    let network: Ipv4Addr = addr.parse().map_err(|_| subnet_err())?;
    let prefix_len: u8 = len.parse().map_err(|_| subnet_err())?;
    if !(8..=30).contains(&prefix_len) {
        return Err(invalid("network.dhcp.subnet", format!("prefix length /{prefix_len} is outside /8../30")));
    }
    let mask = mask_bits(prefix_len);
    let net = u32::from(network);
    if net & !mask != 0 {
        return Err(invalid(
            "network.dhcp.subnet",
            format!("{} has host bits set; the network address is {}", d.subnet, Ipv4Addr::from(net & mask)),
        ));
    }
    let broadcast = net | !mask;
    let inside = |a: Ipv4Addr| (net + 1..broadcast).contains(&u32::from(a));
    let host_address = d.host_address.unwrap_or(Ipv4Addr::from(net + 1));
    if !inside(host_address) {
        return Err(invalid(
            "network.dhcp.host_address",
            format!("{host_address} is not a host address of {}", d.subnet),
        ));
    }
    let (range_start, range_end) = match &d.range {
        None => {
            let (lo, hi) = if u32::from(host_address) == net + 1 {
                (net + 2, broadcast - 1)
            } else {
                (net + 1, u32::from(host_address) - 1)
            };
            (Ipv4Addr::from(lo), Ipv4Addr::from(hi))
        }
        Some(r) => {
            let bad = || {
                invalid(
                    "network.dhcp.range",
                    format!("{r:?} is not FIRST-LAST, e.g. \"192.168.150.100-192.168.150.199\""),
                )
            };
            let (a, b) = r.split_once('-').ok_or_else(bad)?;
            let a: Ipv4Addr = a.trim().parse().map_err(|_| bad())?;
            let b: Ipv4Addr = b.trim().parse().map_err(|_| bad())?;
            (a, b)
        }
    };
    if !inside(range_start) || !inside(range_end) || range_start > range_end {
        return Err(invalid(
            "network.dhcp.range",
            format!("{range_start}-{range_end} must be ascending host addresses of {}", d.subnet),
        ));
    }
    if (range_start..=range_end).contains(&host_address) {
        return Err(invalid(
            "network.dhcp.range",
            format!("{range_start}-{range_end} contains the host address {host_address}"),
        ));
    }
    let lease_time_s = d.lease_time_s.unwrap_or(DEFAULT_LEASE_TIME_S);
    in_range("network.dhcp.lease_time_s", lease_time_s, MIN_LEASE_TIME_S, 365 * 24 * 3600, " s")?;
    Ok(DhcpSettings { bridge, network, prefix_len, host_address, range_start, range_end, lease_time_s })
}
