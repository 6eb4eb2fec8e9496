//! What operations answer about a VM: the summary `list` shows, the full record `info`
//! gives, and the guest addresses `get_vm_ip` finds. Plain data for front ends to
//! format; part of the context layer, so every module here may use it.

use std::net::IpAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::ids::MacAddr;
use crate::spec::{Boot, DiskSpec, NicSpec, RestartPolicy};
use crate::state::{ExitInfo, Reason, VmState};

/// One line of `list`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, schemars::JsonSchema)]
pub struct VmSummary {
    pub name: String,
    /// `None` when the VM's definition is incomplete (an interrupted create).
    pub state: Option<VmState>,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub uptime_s: Option<u64>,
    /// QEMU's pid while active.
    pub pid: Option<i32>,
    /// QEMU runs but no supervisor watches it; the next operation adopts it.
    pub unsupervised: bool,
    /// Seconds QEMU's monitor has not answered (a hung or stopped QEMU); absent while it
    /// answers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unresponsive_s: Option<u64>,
    /// Definition incomplete; `delete` removes it.
    pub incomplete: bool,
    /// Seconds until the VM's time limit (`ttl_s`) stops and deletes it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_in_s: Option<u64>,
    /// A template: linked clones overlay its disk, so it does not start while they exist.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub template: bool,
    /// The template whose warm pool holds this VM until a claim takes it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool_of: Option<String>,
    /// Its time limit passed or the process it was made for is gone: the VM is being
    /// (or, when off, will be) deleted.
    #[serde(skip)]
    #[schemars(skip)]
    pub lease_ended: bool,
}

/// Everything known about one VM.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct VmInfo {
    pub name: String,
    pub uuid: String,
    pub state: VmState,
    pub reason: Reason,
    pub detail: Option<String>,
    /// Unix milliseconds of the last transition.
    pub since_ms: u64,
    pub uptime_s: Option<u64>,
    pub pid: Option<i32>,
    pub supervisor_pid: Option<i32>,
    pub unsupervised: bool,
    /// Seconds QEMU's monitor has not answered (a hung or stopped QEMU); absent while it
    /// answers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unresponsive_s: Option<u64>,
    pub os_variant: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub restart_policy: RestartPolicy,
    /// Seconds until the VM's time limit (`ttl_s`) stops and deletes it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_in_s: Option<u64>,
    /// A template: linked clones overlay its disk, so it does not start while they exist.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub template: bool,
    /// A template's warm pool size.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool_size: Option<u32>,
    /// The template whose warm pool holds this VM until a claim takes it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool_of: Option<String>,
    pub restarts: u32,
    pub accel: Option<String>,
    pub exit: Option<ExitInfo>,
    pub log_tail: Vec<String>,
    pub boot: Boot,
    pub disks: Vec<DiskSpec>,
    pub nics: Vec<NicSpec>,
    pub serial_log: PathBuf,
    pub state_dir: PathBuf,
    /// Guest addresses, filled by [`Ops::info_live`] for a running VM.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ips: Option<VmIps>,
}

/// Where an address came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum IpSource {
    /// The guest agent reported it (live).
    Agent,
    /// The managed bridge's dnsmasq leased it.
    DhcpLease,
    /// The host's neighbour table saw it behind the NIC's MAC.
    Neighbour,
    /// A guess: QEMU's user-mode DHCP hands it out to the first guest that asks, but
    /// nothing confirmed this guest has it. Offered only for a user-mode NIC no guest
    /// agent answered for.
    Slirp,
}

/// One address of a NIC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct IpAnswer {
    /// The address (IPv4 or IPv6).
    pub ip: IpAddr,
    /// Network prefix length in bits, when the source knows it.
    pub prefix_len: Option<u8>,
    /// Where the address came from.
    pub source: IpSource,
    /// Seconds since the source learnt it (0 for a live answer); `None` when unknown.
    pub age_s: Option<u64>,
    /// Source-specific facts (lease expiry, neighbour state, hostname).
    pub detail: Option<String>,
}

/// The addresses of one NIC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct NicIps {
    /// Position of the NIC in the VM's definition (0 = first).
    pub index: usize,
    /// The NIC's MAC address.
    pub mac: MacAddr,
    /// `"user"` or the bridge's name.
    pub network: String,
    /// The guest's name for this NIC (`enp0s7`, `eth0`), when its guest agent answered.
    pub guest_interface: Option<String>,
    /// Addresses found for this NIC; empty when no source knows one.
    pub addresses: Vec<IpAnswer>,
    /// Why there is no address, when the guest agent said so (for example "the guest
    /// agent reports no IPv4 or global IPv6 address on enp0s7; the NIC may be down").
    pub note: Option<String>,
}

/// The answer of `get_vm_ip`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct VmIps {
    /// The VM's name.
    pub name: String,
    /// The best address: what the guest agent reports for a NIC when it answered
    /// (no address included: then `null`, with a note), else observed (lease,
    /// neighbour) before the slirp guess; IPv4 before IPv6, earlier NICs first.
    pub ip: Option<IpAddr>,
    /// Where `ip` came from.
    pub source: Option<IpSource>,
    /// Every NIC with the addresses found for it.
    pub nics: Vec<NicIps>,
    /// Sources that could not answer and why, NICs the agent reports without an
    /// address, and a warning when `ip` is only the slirp guess.
    pub notes: Vec<String>,
    /// How long the call waited for an address.
    pub waited_s: u64,
}
