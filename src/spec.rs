//! A VM's definition (`spec.json`): what to run, written once at create and read by the
//! supervisor at every (re)start. Fields added later carry `#[serde(default)]` so older
//! spec files keep loading.

use std::path::PathBuf;

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::ids::{IdError, IfName, MacAddr, PortForward, VmName};

/// Current `spec.json` format version.
pub const SPEC_VERSION: u32 = 1;

/// What to do when QEMU exits on its own.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Leave it off.
    #[default]
    Never,
    /// Restart a QEMU that crashed (not one that was shut down).
    OnFailure,
    /// Restart after a crash or a guest poweroff; never after a stop kvm-mcp was asked for.
    Always,
}

impl std::str::FromStr for RestartPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "never" => Ok(Self::Never),
            "on-failure" => Ok(Self::OnFailure),
            "always" => Ok(Self::Always),
            _ => Err(format!("unknown restart policy {s:?}; use never, on-failure or always")),
        }
    }
}

/// Image format of a disk.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DiskFormat {
    Qcow2,
    Raw,
}

impl DiskFormat {
    /// QEMU's block driver name.
    #[must_use]
    pub fn driver(self) -> &'static str {
        match self {
            DiskFormat::Qcow2 => "qcow2",
            DiskFormat::Raw => "raw",
        }
    }
}

/// Disk or CD-ROM.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Media {
    #[default]
    Disk,
    Cdrom,
}

/// One block device.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
pub struct DiskSpec {
    /// Absolute path of the image.
    pub path: PathBuf,
    pub format: DiskFormat,
    #[serde(default)]
    pub media: Media,
    #[serde(default)]
    pub readonly: bool,
    /// kvm-mcp wrote this file for the VM (overlay, blank disk, clone, seed): `delete`
    /// removes it unless asked to keep disks. Images the caller adopted are never removed.
    #[serde(default, skip_serializing_if = "is_false")]
    pub owned: bool,
    /// A CD-ROM drive with no medium in it (`path` is the last medium, kept for reference).
    #[serde(default, skip_serializing_if = "is_false")]
    pub ejected: bool,
    /// Where the drive is plugged, fixed when it is added (absent in specs written
    /// before addresses were recorded: their layout is worked out as QEMU numbered it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addr: Option<DevAddr>,
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference
fn is_false(b: &bool) -> bool {
    !*b
}

/// UEFI firmware of a VM: OVMF's code (shared, read-only) and the VM's own copy of the
/// variable store.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct UefiSpec {
    /// `OVMF_CODE_4M.fd` (or the Secure Boot build).
    pub code: PathBuf,
    /// The VM's private copy of `OVMF_VARS_4M.fd`.
    pub vars: PathBuf,
    /// Secure Boot firmware: needs SMM and a secured flash.
    #[serde(default)]
    pub secure_boot: bool,
}

/// Where a NIC is plugged.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(tag = "mode", rename_all = "lowercase")]
pub enum NetworkMode {
    /// QEMU's user-mode NAT (slirp), with host ports forwarded into the guest.
    User {
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        port_forwards: Vec<PortForward>,
    },
    /// A tap on this bridge.
    Bridge { bridge: String },
}

impl NetworkMode {
    /// User-mode networking without port forwards.
    #[must_use]
    pub fn user() -> Self {
        NetworkMode::User { port_forwards: Vec::new() }
    }

    /// `"user"` or the bridge's name, as `create` takes it.
    #[must_use]
    pub fn label(&self) -> &str {
        match self {
            NetworkMode::User { .. } => "user",
            NetworkMode::Bridge { bridge } => bridge,
        }
    }
}

/// One network interface.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
pub struct NicSpec {
    #[serde(flatten)]
    pub mode: NetworkMode,
    /// Stable per VM and NIC, unique across defined VMs (see [`MacAddr::pick_unique`]).
    pub mac: MacAddr,
    /// Device model; the profile's when absent.
    #[serde(default)]
    pub model: Option<String>,
    /// Where the NIC is plugged, fixed when it is added (guests name NICs by slot).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addr: Option<DevAddr>,
}

/// How the VM boots.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(tag = "from", rename_all = "lowercase")]
pub enum Boot {
    /// Firmware boots the first disk (or CD-ROM).
    Disk,
    /// QEMU loads a kernel and initrd directly.
    Kernel {
        kernel: PathBuf,
        #[serde(default)]
        initrd: Option<PathBuf>,
        #[serde(default)]
        cmdline: Option<String>,
    },
}

/// Where a device is plugged. Written `pci:05.0` (slot and function on the machine's
/// root PCI bus), `mmio:23` (virtio-mmio transport of a microvm), `ata:1` (port of the
/// machine's built-in IDE or AHCI controller: on i440FX port `n` is bus `n / 2`, unit
/// `n % 2`) or `scsi:2` (target on the VM's virtio-scsi controller).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DevAddr {
    Pci { slot: u8, function: u8 },
    Mmio(u8),
    Ata(u8),
    Scsi(u8),
}

/// Highest PCI slot on a bus.
pub const MAX_PCI_SLOT: u8 = 31;
/// Highest PCI function in a slot.
pub const MAX_PCI_FUNCTION: u8 = 7;
impl DevAddr {
    /// A PCI slot, function 0.
    #[must_use]
    pub fn pci(slot: u8) -> Self {
        DevAddr::Pci { slot, function: 0 }
    }
}

impl std::fmt::Display for DevAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DevAddr::Pci { slot, function } => write!(f, "pci:{slot:02x}.{function}"),
            DevAddr::Mmio(n) => write!(f, "mmio:{n}"),
            DevAddr::Ata(n) => write!(f, "ata:{n}"),
            DevAddr::Scsi(n) => write!(f, "scsi:{n}"),
        }
    }
}

impl std::str::FromStr for DevAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a device address (pci:05.0, mmio:23, ata:1 or scsi:2)");
        let (kind, rest) = s.split_once(':').ok_or_else(bad)?;
        let index = |r: &str| r.parse::<u8>().map_err(|_| bad());
        match kind {
            "pci" => {
                let (slot, function) = rest.split_once('.').unwrap_or((rest, "0"));
                if slot.is_empty() || slot.len() > 2 || function.len() != 1 {
                    return Err(bad());
                }
                let slot = u8::from_str_radix(slot, 16).map_err(|_| bad())?;
                let function = function.parse::<u8>().map_err(|_| bad())?;
                if slot > MAX_PCI_SLOT || function > MAX_PCI_FUNCTION {
                    return Err(bad());
                }
                Ok(DevAddr::Pci { slot, function })
            }
            "mmio" => Ok(DevAddr::Mmio(index(rest)?)),
            "ata" => Ok(DevAddr::Ata(index(rest)?)),
            "scsi" => Ok(DevAddr::Scsi(index(rest)?)),
            _ => Err(bad()),
        }
    }
}

impl Serialize for DevAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DevAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl schemars::JsonSchema for DevAddr {
    fn schema_name() -> Cow<'static, str> {
        "DevAddr".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "Where the device is plugged: pci:SS.F (root PCI bus), mmio:N (virtio-mmio), ata:N (IDE/AHCI port), scsi:N (SCSI target)",
        })
    }
}

/// Addresses of the standard devices a profile gives every VM, recorded at create.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct StandardAddrs {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub video: Option<DevAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rng: Option<DevAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balloon: Option<DevAddr>,
    /// The virtio-serial controller carrying the guest agent's port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<DevAddr>,
    /// The virtio-scsi controller, for profiles with SCSI disks or CD-ROMs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scsi: Option<DevAddr>,
}

impl StandardAddrs {
    /// Nothing recorded (a spec written before addresses were).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// A VM definition.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VmSpec {
    pub version: u32,
    pub name: VmName,
    pub uuid: uuid::Uuid,
    /// Unix seconds.
    pub created_at: u64,
    /// Profile name.
    pub os_variant: String,
    pub memory_mib: u64,
    pub vcpus: u32,
    pub boot: Boot,
    #[serde(default)]
    pub disks: Vec<DiskSpec>,
    #[serde(default)]
    pub nics: Vec<NicSpec>,
    #[serde(default)]
    pub restart_policy: RestartPolicy,
    /// Source of linked clones: starting it would change the clones' base, so `start`
    /// refuses while clones exist.
    #[serde(default, skip_serializing_if = "is_false")]
    pub template: bool,
    /// Made a template by `create_template`: it stays one when no clone uses it (a
    /// source that became a template by a linked clone is an ordinary VM again once
    /// its clones are gone).
    #[serde(default, skip_serializing_if = "is_false")]
    pub made_template: bool,
    /// Ignition config handed to the guest through fw_cfg (`opt/com.coreos/config`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ignition: Option<PathBuf>,
    /// UEFI firmware; BIOS when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uefi: Option<UefiSpec>,
    /// Addresses of the profile's standard devices (disks and NICs carry their own).
    #[serde(default, skip_serializing_if = "StandardAddrs::is_empty")]
    pub addresses: StandardAddrs,
    /// A template's warm pool: how many booted, paused clones to keep ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<PoolSpec>,
    /// The template whose warm pool holds this VM, until a claim takes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_of: Option<String>,
    /// When the VM ends by itself: at a time, or with the process it was made for.
    #[serde(default, skip_serializing_if = "Lease::is_unset")]
    pub lease: Lease,
    /// Not stored: set by the supervisor for the runs of an ISO install, so the CD-ROM
    /// boots first and a guest reboot ends the run (the next run boots the disk).
    #[serde(skip)]
    pub install_boot: bool,
}

/// A template's warm pool.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct PoolSpec {
    /// Booted, paused clones kept ready.
    pub size: u32,
}

/// Longest time limit a VM may be given: 30 days.
pub const MAX_TTL_S: u64 = 30 * 24 * 3600;

/// When a throw-away VM ends: its supervisor stops it and the VM is deleted once its time
/// limit passes or the process it was made for is gone (`kvm-mcp run`), whether or not
/// any front end runs.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Lease {
    /// Unix milliseconds after which the VM is stopped and deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<u64>,
    /// The process the VM lives for: when it exits, the VM is stopped and deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<crate::procid::ProcIdentity>,
}

/// Why a lease ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseEnd {
    /// The time limit passed.
    Expired,
    /// The owning process (pid) is gone.
    OwnerGone(i32),
}

impl std::fmt::Display for LeaseEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LeaseEnd::Expired => f.write_str("its time limit passed"),
            LeaseEnd::OwnerGone(pid) => write!(f, "the process it was made for (pid {pid}) is gone"),
        }
    }
}

impl Lease {
    /// A lease that never ends.
    #[must_use]
    pub fn is_unset(&self) -> bool {
        self.expires_at_ms.is_none() && self.owner.is_none()
    }

    /// A lease ending `ttl_s` seconds after `now_ms` (none for no limit).
    #[must_use]
    pub fn with_ttl(now_ms: u64, ttl_s: Option<u64>) -> Self {
        Self { expires_at_ms: ttl_s.map(|t| now_ms.saturating_add(t.saturating_mul(1000))), owner: None }
    }

    /// Whether (and why) the lease has ended at `now_ms`.
    #[must_use]
    pub fn ended(&self, now_ms: u64) -> Option<LeaseEnd> {
        if self.expires_at_ms.is_some_and(|at| now_ms >= at) {
            return Some(LeaseEnd::Expired);
        }
        match &self.owner {
            Some(o) if !o.is_alive() => Some(LeaseEnd::OwnerGone(o.pid)),
            _ => None,
        }
    }

    /// Whole seconds left before the time limit, if there is one.
    #[must_use]
    pub fn seconds_left(&self, now_ms: u64) -> Option<u64> {
        self.expires_at_ms.map(|at| at.saturating_sub(now_ms).div_ceil(1000))
    }
}

impl VmSpec {
    /// The tap interface of NIC `index` (`<name>-<index>`, at most 15 bytes).
    ///
    /// # Errors
    /// The index does not fit (more than 255 NICs), which validated specs never have.
    pub fn tap_name(&self, index: usize) -> Result<IfName, IdError> {
        let i = u8::try_from(index)
            .map_err(|_| IdError::InvalidIfName { name: format!("NIC {index}"), reason: "too many NICs" })?;
        IfName::new(&self.name.tap_name(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_ends_at_its_time_and_with_its_owner() {
        let lease = Lease::with_ttl(1_000, Some(5));
        assert_eq!(lease.ended(5_999), None);
        assert_eq!(lease.seconds_left(5_001), Some(1));
        assert_eq!(lease.ended(6_000), Some(LeaseEnd::Expired));
        assert_eq!(lease.seconds_left(7_000), Some(0));
        assert!(Lease::with_ttl(0, None).is_unset());
        assert_eq!(Lease::with_ttl(0, Some(u64::MAX)).expires_at_ms, Some(u64::MAX));
        let me = crate::procid::ProcIdentity::capture(std::process::id().cast_signed()).unwrap();
        let mine = Lease { expires_at_ms: None, owner: Some(me.clone()) };
        assert_eq!(mine.ended(u64::MAX), None);
        let gone = Lease { owner: Some(crate::procid::ProcIdentity { starttime: me.starttime + 1, ..me }), ..mine };
        assert!(matches!(gone.ended(0), Some(LeaseEnd::OwnerGone(_))));
    }

    #[test]
    fn user_nic_without_forwards_loads_from_older_spec() {
        let nic: NicSpec = serde_json::from_str(r#"{"mode":"user","mac":"52:54:00:12:34:56","model":null}"#).unwrap();
        assert_eq!(nic.mode, NetworkMode::user());
    }

    #[test]
    fn user_nic_forwards_round_trip() {
        let nic = NicSpec {
            mode: NetworkMode::User { port_forwards: vec![PortForward::tcp(2222, 22)] },
            mac: "52:54:00:12:34:56".parse().unwrap(),
            model: None,
            addr: None,
        };
        let back: NicSpec = serde_json::from_str(&serde_json::to_string(&nic).unwrap()).unwrap();
        assert_eq!(back, nic);
    }

    #[test]
    fn bridge_nic_serialises_flat() {
        let nic = NicSpec {
            mode: NetworkMode::Bridge { bridge: "brforvms".into() },
            mac: "52:54:00:12:34:56".parse().unwrap(),
            model: None,
            addr: None,
        };
        assert_eq!(
            serde_json::to_value(&nic).unwrap(),
            serde_json::json!({"mode":"bridge","bridge":"brforvms","mac":"52:54:00:12:34:56","model":null})
        );
    }
}
