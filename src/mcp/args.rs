//! Tool arguments and results as the model sees them. The doc comments here are the
//! manual: schemars turns them into the `description`s of each tool's input and output
//! schema, so write them for a reader who knows nothing of this code.

use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::ops::{CreateRequest, DiskSource, OpsError, ProfileInfo, VmInfo, VmSummary};
use crate::provision::cloudinit::CloudInitRequest;
use crate::provision::ignition::IgnitionRequest;
use crate::spec::RestartPolicy;

/// Names one VM.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VmNameArgs {
    /// The VM's name.
    pub name: String,
}

/// Arguments of `list_vms`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListVmsArgs {
    /// Ask each running QEMU for its state instead of reading the recorded one. Slower; for when the recorded
    /// state looks wrong.
    #[serde(default)]
    pub no_cache: bool,
}

/// Arguments of `create_vm`. Every field is optional: anything left out comes from the
/// server's `config.json` defaults (name, memory, vCPUs, OS profile, network).
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateVmArgs {
    /// Name: 1-13 letters, digits, '-', '_' or '.', not starting with '.'.
    pub name: Option<String>,
    /// Memory in MiB.
    pub memory_mib: Option<u64>,
    /// Number of vCPUs.
    pub vcpus: Option<u32>,
    /// QEMU profile for the guest OS, from `list_profiles`.
    pub os_variant: Option<String>,
    /// An existing disk image (qcow2 or raw) in an image directory (`list_images`), used in place. Not with
    /// `disk_source`.
    pub disk: Option<PathBuf>,
    /// Where a new disk comes from, instead of `disk`.
    pub disk_source: Option<DiskSourceArg>,
    /// Size in GiB of a new disk; an overlay grows to it.
    pub disk_size_gib: Option<u64>,
    /// A cloud-init NoCloud seed for cloud images.
    pub cloud_init: Option<CloudInitRequest>,
    /// Ignition overrides for Fedora CoreOS profiles.
    pub ignition: Option<IgnitionRequest>,
    /// A Linux kernel in the kernel (default: image) directories to boot instead of a disk, with `initrd` and
    /// `cmdline`.
    pub kernel: Option<PathBuf>,
    /// An initrd for `kernel`.
    pub initrd: Option<PathBuf>,
    /// Kernel command line, for example "console=ttyS0".
    pub cmdline: Option<String>,
    /// "user" (QEMU's NAT), "none", or a host bridge name.
    pub network: Option<String>,
    /// When QEMU exits on its own: "never" (default), "on-failure" (restart after a crash) or "always" (also
    /// after a guest poweroff).
    pub restart_policy: Option<RestartPolicy>,
    /// Start it right away.
    #[serde(default)]
    pub start: bool,
    /// Host ports forwarded into the guest on a "user" `network`, for example [{"host_port": 2222,
    /// "guest_port": 22}] for SSH at 127.0.0.1:2222.
    #[serde(default)]
    pub port_forwards: Vec<crate::ids::PortForward>,
    /// Up to 8 NICs instead of `network` and `port_forwards`.
    #[serde(default)]
    pub nics: Vec<crate::ops::NicRequest>,
}

/// Where the disk of a new VM comes from (`type` picks the kind).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum DiskSourceArg {
    /// An existing image, used in place.
    Existing {
        /// Absolute path of the image in an image directory.
        path: PathBuf,
    },
    /// A new overlay on a master image.
    Master {
        /// Master image name or path (`list_images`); default: the configured one.
        #[serde(default)]
        image: Option<PathBuf>,
    },
    /// A blank disk plus an installer ISO that boots first.
    Install {
        /// ISO name or path (`list_isos`); default: the configured one.
        #[serde(default)]
        iso: Option<PathBuf>,
    },
    /// A blank disk.
    Blank,
}

impl TryFrom<CreateVmArgs> for CreateRequest {
    type Error = OpsError;

    fn try_from(a: CreateVmArgs) -> Result<Self, OpsError> {
        let disk = match (a.disk, a.disk_source) {
            (Some(_), Some(_)) => {
                return Err(OpsError::Invalid {
                    field: "disk".into(),
                    reason: "give either `disk` or `disk_source`, not both".into(),
                });
            }
            (Some(p), None) => Some(DiskSource::Existing(p)),
            (None, Some(src)) => Some(match src {
                DiskSourceArg::Existing { path } => DiskSource::Existing(path),
                DiskSourceArg::Master { image } => DiskSource::Master(image),
                DiskSourceArg::Install { iso } => DiskSource::Install(iso),
                DiskSourceArg::Blank => DiskSource::Blank,
            }),
            (None, None) => None,
        };
        Ok(CreateRequest {
            name: a.name,
            memory_mib: a.memory_mib,
            vcpus: a.vcpus,
            os_variant: a.os_variant,
            disk,
            kernel: a.kernel,
            initrd: a.initrd,
            cmdline: a.cmdline,
            network: a.network,
            restart_policy: a.restart_policy,
            start: a.start,
            disk_size_gib: a.disk_size_gib,
            cloud_init: a.cloud_init,
            ignition: a.ignition,
            port_forwards: a.port_forwards,
            nics: a.nics,
        })
    }
}

/// Arguments of `stop_vm`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StopVmArgs {
    /// The VM's name.
    pub name: String,
    /// End QEMU at once, like pulling the power cord; the guest loses unsaved data.
    #[serde(default)]
    pub force: bool,
    /// Seconds to wait for a graceful poweroff before forcing it; default: the server's stop timeout.
    pub timeout_s: Option<u64>,
}

/// Arguments of `delete_vm`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeleteVmArgs {
    /// The VM's name.
    pub name: String,
    /// Force a running VM off first instead of refusing.
    #[serde(default)]
    pub force: bool,
    /// Keep the disk images kvm-mcp created for it. Images given with `disk` are never removed.
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
    /// The VM's name.
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
