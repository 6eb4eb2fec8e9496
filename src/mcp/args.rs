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

/// Arguments of `create_vm`. Every field is optional: anything left out comes from the
/// server's `config.json` defaults (name, memory, vCPUs, OS profile, network).
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateVmArgs {
    /// Name for the new VM: 1 to 13 characters of letters, digits, '-', '_' or '.',
    /// not starting with '.'. Defaults to the configured default name.
    pub name: Option<String>,
    /// Memory in MiB (for example 2048 for 2 GiB). Defaults to the configured value.
    pub memory_mib: Option<u64>,
    /// Number of virtual CPUs. Defaults to the configured value.
    pub vcpus: Option<u32>,
    /// QEMU profile for the guest OS (machine type, firmware, disk and NIC models).
    /// `list_profiles` shows the choices. Defaults to the configured profile.
    pub os_variant: Option<String>,
    /// Absolute path of an existing disk image (qcow2 or raw) on the server to boot
    /// from. The VM uses the file in place; it is not copied. It must lie in an image
    /// directory (`list_images` shows them). Give this or `disk_source`, not both.
    pub disk: Option<PathBuf>,
    /// Where a new disk comes from, instead of `disk`: an overlay on a master image,
    /// a blank disk plus an installer ISO, a blank disk, or an existing image. When
    /// neither this nor `disk` nor `kernel` is given, the configured default master
    /// image (if any) is used.
    pub disk_source: Option<DiskSourceArg>,
    /// Size in GiB of a new disk (master overlay, install or blank); an overlay is
    /// grown to it. Defaults to the configured default disk size.
    pub disk_size_gib: Option<u64>,
    /// Give the guest a cloud-init NoCloud seed disk with these settings (user and
    /// groups, SSH keys, packages, files, first-boot commands, time zone, network, raw
    /// cloud-config in user_data). For cloud images.
    pub cloud_init: Option<CloudInitRequest>,
    /// Overrides of the configured Ignition settings, for Fedora CoreOS profiles
    /// (which get an Ignition config anyway).
    pub ignition: Option<IgnitionRequest>,
    /// A Linux kernel on the server (file name or path inside its kernel directories,
    /// by default its image directories), to boot directly instead of from a disk.
    /// Use with `initrd` and `cmdline`.
    pub kernel: Option<PathBuf>,
    /// An initrd for `kernel`, from the same directories.
    pub initrd: Option<PathBuf>,
    /// Kernel command line for `kernel`, for example "console=ttyS0".
    pub cmdline: Option<String>,
    /// Network: "user" (NAT through QEMU, no setup needed), "none", or the name of a
    /// host bridge to attach a tap device to. Defaults to the configured network.
    pub network: Option<String>,
    /// What to do when the VM's QEMU exits on its own: "never" (default),
    /// "on-failure" (restart after a crash) or "always" (also after a guest poweroff).
    pub restart_policy: Option<RestartPolicy>,
    /// Start the VM right after defining it.
    #[serde(default)]
    pub start: bool,
    /// Host ports forwarded into the guest, for the single NIC of `network` "user"
    /// (for example `[{"host_port": 2222, "guest_port": 22}]` to reach SSH at
    /// 127.0.0.1:2222). With `nics`, give each NIC its own `port_forwards` instead.
    #[serde(default)]
    pub port_forwards: Vec<crate::ids::PortForward>,
    /// Several NICs, in order (at most 8), instead of the one NIC `network` gives:
    /// each has a `network` ("user" or a host bridge name) and optional `mac`,
    /// `model` and `port_forwards`. Do not combine with `network` or `port_forwards`.
    #[serde(default)]
    pub nics: Vec<crate::ops::NicRequest>,
}

/// Where the disk of a new VM comes from (`type` picks the kind).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum DiskSourceArg {
    /// Use an existing image file as it is (same as the `disk` argument).
    Existing {
        /// Absolute path of the image (qcow2 or raw), inside an image directory.
        path: PathBuf,
    },
    /// A new qcow2 overlay on a master image; the master stays unchanged.
    Master {
        /// File name or absolute path of the master image inside the image
        /// directories (`list_images` shows them). Defaults to the configured default
        /// master image.
        #[serde(default)]
        image: Option<PathBuf>,
    },
    /// A blank disk plus an installer ISO in a CD-ROM drive that boots first until
    /// the installer reboots or powers off the VM.
    Install {
        /// File name or absolute path of the ISO inside the ISO directories
        /// (`list_isos` shows them). Defaults to the configured default ISO.
        #[serde(default)]
        iso: Option<PathBuf>,
    },
    /// A blank disk of `disk_size_gib`.
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

/// The clone `clone_vm` defined, and how it was made a new machine.
#[derive(Debug, Serialize, JsonSchema)]
pub struct CloneResult {
    /// The clone's definition and current status.
    pub vm: VmInfo,
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
