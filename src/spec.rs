//! A VM's definition (`spec.json`): what to run, written once at create and read by the
//! supervisor at every (re)start. Fields added later carry `#[serde(default)]` so older
//! spec files keep loading.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::ids::VmName;

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
}

/// Where a NIC is plugged.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(tag = "mode", rename_all = "lowercase")]
pub enum NetworkMode {
    /// QEMU's user-mode NAT (slirp).
    User,
    /// A tap on this bridge.
    Bridge { bridge: String },
}

/// One network interface.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
pub struct NicSpec {
    #[serde(flatten)]
    pub mode: NetworkMode,
    /// `52:54:00:xx:xx:xx`.
    pub mac: String,
    /// Device model; the profile's when absent.
    #[serde(default)]
    pub model: Option<String>,
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
}
