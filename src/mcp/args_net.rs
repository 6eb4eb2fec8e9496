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
    pub name: String,
    /// Seconds to wait for an address while the guest boots; default 0.
    pub wait_s: Option<u64>,
    /// Ask every source (agent, leases, neighbours, user-mode DHCP), not just the first that knows.
    #[serde(default)]
    pub all_sources: bool,
}

/// Arguments of `add_port_forward`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AddPortForwardArgs {
    pub name: String,
    /// Host port to listen on, e.g. 2222.
    pub host_port: u16,
    /// Guest port, e.g. 22 for SSH.
    pub guest_port: u16,
    /// Default "tcp".
    pub protocol: Option<Protocol>,
    /// Default 127.0.0.1; 0.0.0.0 for all.
    pub host_address: Option<Ipv4Addr>,
    /// Index of the "user" NIC; default: the first.
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
    pub name: String,
    pub host_port: u16,
    /// Default "tcp".
    pub protocol: Option<Protocol>,
    /// When two forwards share the port.
    pub host_address: Option<Ipv4Addr>,
    /// NIC index; default: every "user" NIC.
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
    pub name: String,
    /// Every forward of the VM's user-mode NICs. `active` says whether QEMU listens on
    /// it now (null while the VM is not running).
    pub forwards: Vec<PortForwardInfo>,
}

/// The NICs of a VM with their traffic counters.
#[derive(Debug, Serialize, JsonSchema)]
pub struct NicStatsList {
    pub name: String,
    /// One entry per NIC, in definition order. Counters exist only for bridged NICs
    /// of a running VM; `note` says why when they are missing.
    pub nics: Vec<NicStats>,
}
