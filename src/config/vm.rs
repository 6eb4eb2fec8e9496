//! `vm.*`: the original kvm-mcp's VM defaults (disk directory, default ISO and master
//! image, name, memory, vCPUs, disk size, profile, network) and `vm.ignition.*`, the
//! Fedora CoreOS defaults. Limits on memory, vCPUs and disk size live here as constants
//! every caller-facing check uses.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{ConfigError, absolute, in_range, invalid};
use crate::ids::IfName;

/// Smallest memory a VM may be given, in MiB.
pub const MIN_MEMORY_MIB: u64 = 16;
/// Largest memory a VM may be given, in MiB (1 TiB).
pub const MAX_MEMORY_MIB: u64 = 1024 * 1024;
/// Largest vCPU count QEMU's `pc`/`q35` machines accept without extra options.
pub const MAX_VCPUS: u32 = 255;
/// Largest disk size accepted, in GiB (64 TiB).
pub const MAX_DISK_SIZE_GIB: u64 = 64 * 1024;

/// The file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawVm {
    pub(super) disk_path: Option<PathBuf>,
    pub(super) default_iso: Option<PathBuf>,
    pub(super) default_master_image: Option<PathBuf>,
    pub(super) default_name: Option<String>,
    pub(super) default_memory: Option<u64>,
    pub(super) default_vcpus: Option<u32>,
    pub(super) default_disk_size: Option<u64>,
    pub(super) default_os_variant: Option<String>,
    pub(super) default_network: Option<String>,
    pub(super) ignition: RawIgnition,
}

/// `vm.ignition.*` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawIgnition {
    pub(super) default_hostname: Option<String>,
    pub(super) default_user: Option<String>,
    pub(super) default_ssh_key: Option<String>,
    pub(super) default_timezone: Option<String>,
    pub(super) default_locale: Option<String>,
    pub(super) default_password_hash: Option<String>,
}

/// VM defaults (`vm.*`), as in the original kvm-mcp.
#[derive(Debug, Clone, Serialize)]
pub struct VmDefaults {
    /// Where disk images live (`vm.disk_path`).
    pub disk_path: PathBuf,
    /// ISO used by installs when none is given.
    pub default_iso: Option<PathBuf>,
    /// Base image new VMs get an overlay on.
    pub default_master_image: Option<PathBuf>,
    /// Name used when a create call gives none.
    pub default_name: String,
    /// MiB.
    pub default_memory_mib: u64,
    /// vCPUs.
    pub default_vcpus: u32,
    /// GiB.
    pub default_disk_size_gib: u64,
    /// Profile name.
    pub default_os_variant: String,
    /// `"user"`, `"none"` or a bridge name.
    pub default_network: String,
    /// Ignition defaults for Fedora CoreOS.
    pub ignition: IgnitionDefaults,
}

/// `vm.ignition.*`: used where a create call's Ignition request leaves a field unset.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct IgnitionDefaults {
    /// Host name.
    pub hostname: Option<String>,
    /// User to create.
    pub user: Option<String>,
    /// An SSH public key, or the path of a `.pub` file.
    pub ssh_key: Option<String>,
    /// Time zone such as `Europe/Berlin`.
    pub timezone: Option<String>,
    /// Locale such as `en_US.UTF-8`.
    pub locale: Option<String>,
    /// crypt(3) hash of the user's password.
    pub password_hash: Option<String>,
}

pub(super) fn resolve(v: RawVm) -> Result<VmDefaults, ConfigError> {
    let default_name = v.default_name.unwrap_or_else(|| "newvm".into());
    crate::ids::VmName::new(&default_name).map_err(|e| invalid("vm.default_name", e.to_string()))?;
    let memory =
        in_range("vm.default_memory", v.default_memory.unwrap_or(2048), MIN_MEMORY_MIB, MAX_MEMORY_MIB, " MiB")?;
    let vcpus = in_range("vm.default_vcpus", u64::from(v.default_vcpus.unwrap_or(2)), 1, u64::from(MAX_VCPUS), "")?;
    let disk = in_range("vm.default_disk_size", v.default_disk_size.unwrap_or(20), 1, MAX_DISK_SIZE_GIB, " GiB")?;
    let network = v.default_network.unwrap_or_else(|| "brforvms".into());
    if !matches!(network.as_str(), "user" | "none") {
        IfName::new(&network)
            .map_err(|e| invalid("vm.default_network", format!("not \"user\", \"none\" or a bridge name: {e}")))?;
    }
    Ok(VmDefaults {
        disk_path: absolute("vm.disk_path", v.disk_path.unwrap_or_else(|| "/vm".into()))?,
        default_iso: v.default_iso,
        default_master_image: v.default_master_image,
        default_name,
        default_memory_mib: memory,
        #[allow(clippy::cast_possible_truncation)] // checked against MAX_VCPUS above
        default_vcpus: vcpus as u32,
        default_disk_size_gib: disk,
        default_os_variant: v.default_os_variant.unwrap_or_else(|| "generic".into()),
        default_network: network,
        ignition: IgnitionDefaults {
            hostname: v.ignition.default_hostname,
            user: v.ignition.default_user,
            ssh_key: v.ignition.default_ssh_key,
            timezone: v.ignition.default_timezone,
            locale: v.ignition.default_locale,
            password_hash: v.ignition.default_password_hash,
        },
    })
}
