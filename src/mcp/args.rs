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
    pub name: String,
}

/// Arguments of `list_vms`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListVmsArgs {
    /// Ask each running QEMU for its state instead of the recorded one (slower).
    #[serde(default)]
    pub no_cache: bool,
}

/// Arguments of `stop_vm`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StopVmArgs {
    pub name: String,
    /// End QEMU at once (power cord pulled); the guest loses unsaved data.
    #[serde(default)]
    pub force: bool,
    /// Seconds before forcing; default: the server's.
    pub timeout_s: Option<u64>,
}

/// Arguments of `delete_vm`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeleteVmArgs {
    pub name: String,
    /// Force a running VM off first instead of refusing.
    #[serde(default)]
    pub force: bool,
    /// Keep the disks kvm-mcp created. Images given with `disk` are never removed.
    #[serde(default)]
    pub keep_disks: bool,
}

/// The defined VMs.
#[derive(Debug, Serialize, JsonSchema)]
pub struct VmList {
    /// One entry per VM, sorted by name.
    pub vms: Vec<VmSummary>,
}

/// One VM's whole record (`get_vm`).
#[derive(Debug, Serialize, JsonSchema)]
pub struct VmResult {
    /// The VM's definition and current status.
    pub vm: VmInfo,
}

/// A VM after a tool changed it, in short; `get_vm` shows the whole record.
#[derive(Debug, Serialize, JsonSchema)]
pub struct VmChanged {
    pub name: String,
    /// Its state now: shutoff, starting, running, paused, shutting-down or crashed.
    pub state: String,
    /// Why it is in that state, for example `start`, `host_request`, `guest_poweroff`.
    pub reason: String,
    /// More about the reason, when there is more.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// What this call changed, in a few words.
    pub changed: String,
}

impl VmChanged {
    /// `vm` as it is after `changed`.
    pub fn new(vm: &VmInfo, changed: impl Into<String>) -> Self {
        let reason =
            serde_json::to_value(vm.reason).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
        Self {
            name: vm.name.clone(),
            state: vm.state.as_str().to_owned(),
            reason,
            detail: vm.detail.clone(),
            changed: changed.into(),
        }
    }
}

/// The clone `clone_vm` defined, and how it was made a new machine.
#[derive(Debug, Serialize, JsonSchema)]
pub struct CloneResult {
    /// The clone, in short.
    pub vm: VmChanged,
    /// What was made new (instance-id, host name, machine-id, host keys, MACs) and what
    /// the clone still shares with its source.
    pub identity: crate::ops::CloneIdentity,
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
