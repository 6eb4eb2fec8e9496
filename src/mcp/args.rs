//! Tool arguments and results as the model sees them. The doc comments here are the
//! manual: schemars turns them into the `description`s of each tool's input and output
//! schema, so write them for a reader who knows nothing of this code.

use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::ops::{ProfileInfo, VmInfo, VmSummary};

/// Names one VM.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VmNameArgs {
    /// The VM's name, as shown by `list_vms` (for example "web1").
    pub name: String,
}

/// Arguments of `list_vms`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListVmsArgs {
    /// Ask each running QEMU for its state over its monitor instead of reading the
    /// recorded status. Slower; use it only when the recorded state looks wrong.
    #[serde(default)]
    pub no_cache: bool,
}

/// Arguments of `stop_vm`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StopVmArgs {
    /// The VM's name.
    pub name: String,
    /// Skip the graceful shutdown: end QEMU at once (like pulling the power cord).
    /// The guest loses unsaved data. Default false.
    #[serde(default)]
    pub force: bool,
    /// Seconds to keep pressing the ACPI power button and waiting for the guest to
    /// power off before forcing it. Defaults to the server's configured stop timeout.
    pub timeout_s: Option<u64>,
}

/// Arguments of `delete_vm`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeleteVmArgs {
    /// The VM's name.
    pub name: String,
    /// Delete it even if it is running, by forcing it off first. Default false: a
    /// running VM is refused.
    #[serde(default)]
    pub force: bool,
    /// Leave the disk images kvm-mcp created for this VM (overlays, blank disks) on
    /// disk instead of removing them. Default false. Images the VM was given with
    /// `disk` are never removed.
    #[serde(default)]
    pub keep_disks: bool,
}

/// The defined VMs.
#[derive(Debug, Serialize, JsonSchema)]
pub struct VmList {
    /// One entry per VM, sorted by name.
    pub vms: Vec<VmSummary>,
}

/// The VM a lifecycle tool acted on, as it is now.
#[derive(Debug, Serialize, JsonSchema)]
pub struct VmResult {
    /// The VM's definition and current status.
    pub vm: VmInfo,
}

/// What `delete_vm` removed.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Deleted {
    /// Name of the VM that no longer exists.
    pub deleted: String,
    /// Disk images kvm-mcp had created for the VM and removed.
    pub removed: Vec<PathBuf>,
    /// The VM's own disk images left in place (`keep_disks: true`).
    pub kept: Vec<PathBuf>,
}

/// The QEMU profiles (values for `os_variant`).
#[derive(Debug, Serialize, JsonSchema)]
pub struct ProfileList {
    /// One entry per profile; `is_default` marks the configured default.
    pub profiles: Vec<ProfileInfo>,
}
