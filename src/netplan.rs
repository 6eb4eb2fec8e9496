//! Per-start network plumbing the supervisor does before it spawns QEMU: one tap per
//! bridged NIC (made through `/dev/net/tun` with a vnet header, attached to its bridge
//! and brought up over rtnetlink, its fd handed to QEMU), the managed bridge's DHCP
//! server, and a check that every user-mode port forward's host port is free.
//!
//! The taps are not persistent: once QEMU (which inherits the fds) exits and the
//! supervisor has dropped its copies, the kernel deletes them, whatever way QEMU ended.

use std::os::fd::OwnedFd;
use std::path::Path;

use crate::config::Config;
use crate::error::chain;
use crate::ids::IfName;
use crate::network::{Netlink, Tap};
use crate::spec::{NetworkMode, VmSpec};

/// Taps are opened with a vnet header, so QEMU can offload checksums and GSO.
const VNET_HDR: bool = true;

/// The tap name of NIC `index` of `spec`.
///
/// # Errors
/// The name is not a valid interface name (cannot happen for a valid `VmName`).
pub fn tap_name(spec: &VmSpec, index: usize) -> Result<IfName, String> {
    let i = u8::try_from(index).map_err(|_| format!("NIC {index}: too many NICs"))?;
    IfName::new(&spec.name.tap_name(i)).map_err(|e| e.to_string())
}

/// Opens the taps for `spec`'s bridged NICs, in NIC order, each attached to its bridge
/// and up. A missing bridge is created only with `network.create_bridge` or when it is
/// the managed bridge, whose DHCP server is started first (by `exe dhcp-supervise`).
///
/// # Errors
/// A message naming the NIC and the bridge or tap that could not be plumbed.
pub async fn open_taps(cfg: &Config, spec: &VmSpec, exe: &Path) -> Result<Vec<OwnedFd>, String> {
    let bridged: Vec<(usize, &str)> = spec
        .nics
        .iter()
        .enumerate()
        .filter_map(|(i, n)| match &n.mode {
            NetworkMode::Bridge { bridge } => Some((i, bridge.as_str())),
            NetworkMode::User { .. } => None,
        })
        .collect();
    if bridged.is_empty() {
        return Ok(Vec::new());
    }
    let nl = Netlink::connect().map_err(|e| chain(&e))?;
    let mut taps = Vec::with_capacity(bridged.len());
    for (i, bridge) in bridged {
        let br = IfName::new(bridge).map_err(|e| format!("NIC {i}: {e}"))?;
        if let Some(d) = crate::dhcp::managed(cfg, bridge) {
            crate::dhcp::ensure_running(cfg, d, exe).await.map_err(|e| format!("NIC {i}: {}", chain(&e)))?;
        }
        nl.ensure_bridge(&br, cfg.network.create_bridge).await.map_err(|e| format!("NIC {i}: {}", chain(&e)))?;
        let name = tap_name(spec, i)?;
        let tap = Tap::create(&name, VNET_HDR).map_err(|e| format!("NIC {i}: {}", chain(&e)))?;
        nl.attach_and_up(&name, &br).await.map_err(|e| format!("NIC {i}: {}", chain(&e)))?;
        tracing::info!(tap = %name, bridge = %br, "tap attached");
        taps.push(tap.into_fd());
    }
    Ok(taps)
}

/// Checks that the host port of every user-mode forward can be bound, so a port held
/// by another program is a clear error rather than a QEMU start-up failure.
///
/// # Errors
/// A message naming the NIC, the forward and why its port cannot be used.
pub fn check_port_forwards(spec: &VmSpec) -> Result<(), String> {
    for (i, nic) in spec.nics.iter().enumerate() {
        if let NetworkMode::User { port_forwards } = &nic.mode {
            for f in port_forwards {
                crate::network::probe_host_port(f).map_err(|e| format!("NIC {i}: port forward {f}: {}", chain(&e)))?;
            }
        }
    }
    Ok(())
}
