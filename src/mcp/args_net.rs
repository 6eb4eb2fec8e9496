//! Arguments and results of the network tools (guest IPs, port forwards, NIC
//! counters). The doc comments are the manual the model reads.

use std::net::Ipv4Addr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::ids::{ForwardSelector, PortForward, Protocol};
use crate::ops::{NicStats, PortForwardInfo};

/// Arguments of `get_vm_ip`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GetVmIpArgs {
    /// The VM's name, as shown by `list_vms` (for example "web1"). It must be running.
    pub name: String,
    /// Seconds to wait for the guest to get an address (useful right after
    /// `start_vm`, while it boots). Default 0: answer at once with what is known.
    pub wait_s: Option<u64>,
    /// Ask every source (guest agent, DHCP leases, neighbour table, user-mode DHCP)
    /// instead of stopping at the first one that knows an address for each NIC.
    /// Default false.
    #[serde(default)]
    pub all_sources: bool,
}

/// Arguments of `add_port_forward`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AddPortForwardArgs {
    /// The VM's name. It may be running (the forward works at once) or stopped (it
    /// works from the next start); either way it is kept in the VM's definition.
    pub name: String,
    /// Host port to listen on, 1-65535 (for example 2222). Must not be used by
    /// another VM's forward or another program.
    pub host_port: u16,
    /// Port in the guest that connections are forwarded to, 1-65535 (for example 22).
    pub guest_port: u16,
    /// "tcp" (default) or "udp".
    pub protocol: Option<Protocol>,
    /// Host IPv4 address to listen on. Default "127.0.0.1" (this host only); give
    /// "0.0.0.0" to listen on every address.
    pub host_address: Option<Ipv4Addr>,
    /// Index of the user-mode NIC (0 = the VM's first NIC) to add it to. Default: the
    /// first user-mode NIC. Port forwards need a NIC on network "user".
    pub nic: Option<usize>,
}

impl AddPortForwardArgs {
    /// The forward the arguments describe (validated by `ops`).
    pub fn forward(&self) -> PortForward {
        PortForward {
            protocol: self.protocol.unwrap_or_default(),
            host_addr: self.host_address.unwrap_or(Ipv4Addr::LOCALHOST),
            host_port: self.host_port,
            guest_addr: None,
            guest_port: self.guest_port,
        }
    }
}

/// Arguments of `remove_port_forward`: which forward, by its host side.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RemovePortForwardArgs {
    /// The VM's name.
    pub name: String,
    /// Host port of the forward to remove, as `list_port_forwards` shows it.
    pub host_port: u16,
    /// "tcp" (default) or "udp".
    pub protocol: Option<Protocol>,
    /// Host address of the forward; needed only when two forwards use the same port
    /// on different addresses. Default: any address.
    pub host_address: Option<Ipv4Addr>,
    /// Index of the NIC to look on. Default: every user-mode NIC.
    pub nic: Option<usize>,
}

impl RemovePortForwardArgs {
    /// The selector `ops` takes.
    pub fn selector(&self) -> ForwardSelector {
        ForwardSelector {
            protocol: self.protocol.unwrap_or_default(),
            host_addr: self.host_address,
            host_port: self.host_port,
        }
    }
}

/// The port forwards of a VM.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ForwardList {
    /// The VM's name.
    pub name: String,
    /// Every forward of the VM's user-mode NICs. `active` says whether QEMU listens on
    /// it now (null while the VM is not running).
    pub forwards: Vec<PortForwardInfo>,
}

/// The NICs of a VM with their traffic counters.
#[derive(Debug, Serialize, JsonSchema)]
pub struct NicStatsList {
    /// The VM's name.
    pub name: String,
    /// One entry per NIC, in definition order. Counters exist only for bridged NICs
    /// of a running VM; `note` says why when they are missing.
    pub nics: Vec<NicStats>,
}
