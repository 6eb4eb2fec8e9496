//! Defining a VM: the request (every field optional, defaults from `config.json`),
//! checked and planned part by part (disks, NICs, provisioning: each planner gets only
//! its part), then written under one rollback guard, so a failure at any step leaves
//! nothing behind: no directory, no disk, no seed.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::disks::{DiskPlan, DiskSource};
use super::net::NicRequest;
use super::provision::ProvisionPlan;
use super::views::VmInfo;
use super::{Ops, OpsError};
use crate::config::{MAX_MEMORY_MIB, MAX_VCPUS, MIN_MEMORY_MIB};
use crate::ids::{PortForward, VmName};
use crate::layout::VmPaths;
use crate::spec::{Boot, Lease, MAX_TTL_S, RestartPolicy, SPEC_VERSION, VmSpec};
use crate::state::now_ms;
use crate::store;

/// Arguments of `create_vm` (and of `vm create`, whose flags fill the same fields).
/// Every field is optional: anything left out comes from the server's `config.json`
/// defaults (name, memory, vCPUs, OS profile, network).
///
/// The doc comments below are the manual a model reads: schemars turns them into the
/// `description`s of the tool's input schema.
#[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    /// 1-13 letters, digits, '-', '_' or '.'; no leading '.' or '-'.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub memory_mib: Option<u64>,
    #[serde(default)]
    pub vcpus: Option<u32>,
    /// A profile from `list_profiles`.
    #[serde(default)]
    pub os_variant: Option<String>,
    /// An image path (`list_images`), used in place, or a new disk by `type`. Default: an overlay on the master
    /// image.
    #[serde(default, alias = "disk_source")]
    #[schemars(with = "Option<super::disks::DiskSourceWire>")]
    pub disk: Option<DiskSource>,
    /// A Linux kernel from the kernel directories to boot directly.
    #[serde(default)]
    pub kernel: Option<PathBuf>,
    /// An initrd for `kernel`.
    #[serde(default)]
    pub initrd: Option<PathBuf>,
    /// Kernel command line, e.g. "console=ttyS0".
    #[serde(default)]
    pub cmdline: Option<String>,
    /// "user" (QEMU's NAT), "none", or a host bridge name.
    #[serde(default)]
    pub network: Option<String>,
    /// Forwards into the guest on a "user" `network`.
    #[serde(default)]
    pub port_forwards: Vec<PortForward>,
    /// Up to 8 NICs instead of `network` and `port_forwards`.
    #[serde(default)]
    pub nics: Vec<NicRequest>,
    /// Restart when QEMU exits on its own; default "never".
    #[serde(default)]
    pub restart_policy: Option<RestartPolicy>,
    /// Start it right away.
    #[serde(default)]
    pub start: bool,
    /// Size in GiB of a new disk; an overlay grows to it.
    #[serde(default)]
    pub disk_size_gib: Option<u64>,
    /// A cloud-init seed, for cloud images.
    #[serde(default)]
    pub cloud_init: Option<crate::provision::cloudinit::CloudInitRequest>,
    /// Ignition overrides for Fedora CoreOS profiles.
    #[serde(default)]
    pub ignition: Option<crate::provision::ignition::IgnitionRequest>,
    /// Delete the VM after this many seconds.
    #[serde(default)]
    #[schemars(range(min = 1, max = 2_592_000))]
    pub ttl_s: Option<u64>,
    /// Not a request field: the process the VM lives for (`kvm-mcp run`); when it exits,
    /// the VM's supervisor stops it and the VM is deleted.
    #[serde(skip)]
    #[schemars(skip)]
    pub owner: Option<crate::procid::ProcIdentity>,
}

/// The lease of a new VM: `ttl_s` checked (1 s to [`MAX_TTL_S`]), counted from now.
pub(super) fn lease(ttl_s: Option<u64>, owner: Option<crate::procid::ProcIdentity>) -> Result<Lease, OpsError> {
    if let Some(t) = ttl_s
        && !(1..=MAX_TTL_S).contains(&t)
    {
        return Err(OpsError::invalid(
            "ttl_s",
            format!("{t} is outside 1..={MAX_TTL_S} seconds (30 days); leave it out for a VM that stays"),
        ));
    }
    Ok(Lease { owner, ..Lease::with_ttl(now_ms(), ttl_s) })
}

/// Longest kernel command line accepted (Linux's own limit on x86 is 2048 to 4096
/// bytes, by version).
pub const MAX_CMDLINE_BYTES: usize = 4096;

/// A kernel command line: one line of printable text, at most [`MAX_CMDLINE_BYTES`].
fn check_cmdline(c: &str) -> Result<String, OpsError> {
    if c.len() > MAX_CMDLINE_BYTES {
        return Err(OpsError::invalid("cmdline", format!("{} bytes; at most {MAX_CMDLINE_BYTES}", c.len())));
    }
    if let Some(ch) = c.chars().find(|ch| ch.is_control() && *ch != '\t') {
        return Err(OpsError::invalid(
            "cmdline",
            format!("contains the control character {ch:?}; give one line of kernel parameters"),
        ));
    }
    Ok(c.to_owned())
}

/// Undoes a create that did not finish: removes the files it wrote and the VM's
/// directory, unless [`CreateGuard::commit`] was called.
struct CreateGuard<'a> {
    paths: &'a VmPaths,
    disks: Option<&'a DiskPlan>,
    done: bool,
}

impl<'a> CreateGuard<'a> {
    fn new(paths: &'a VmPaths) -> Self {
        Self { paths, disks: None, done: false }
    }

    /// From now on the planned disks are the guard's to remove too.
    fn own_disks(&mut self, plan: &'a DiskPlan) {
        self.disks = Some(plan);
    }

    fn commit(mut self) {
        self.done = true;
    }
}

impl Drop for CreateGuard<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        if let Some(plan) = self.disks {
            plan.discard();
        }
        if let Err(e) = std::fs::remove_dir_all(&self.paths.state) {
            tracing::warn!(error = %e, path = %self.paths.state.display(), "cannot remove a failed create's directory");
        }
    }
}

impl Ops {
    /// Defines a VM (and starts it when asked).
    ///
    /// # Errors
    /// Invalid fields (named), a taken name, or a failed start.
    pub async fn create(&self, req: CreateRequest) -> Result<VmInfo, OpsError> {
        let d = &self.cfg.vm;
        let name = VmName::new(req.name.as_deref().unwrap_or(&d.default_name))?;
        let paths = self.paths(&name);
        // Held from the first look at the name to the last write: a create, delete or
        // start of the same name waits, and sees either nothing or the finished VM.
        let lock = self.lock(name.as_str(), &paths).await?;
        if paths.state.exists() {
            return Err(OpsError::Exists { name: name.to_string() });
        }
        let os_variant = req.os_variant.clone().unwrap_or_else(|| d.default_os_variant.clone());
        self.profiles.get(&os_variant)?;
        let memory_mib = req.memory_mib.unwrap_or(d.default_memory_mib);
        if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&memory_mib) {
            return Err(OpsError::invalid(
                "memory_mib",
                format!("{memory_mib} is outside {MIN_MEMORY_MIB}..={MAX_MEMORY_MIB} MiB"),
            ));
        }
        let lease = lease(req.ttl_s, req.owner.clone())?;
        let vcpus = req.vcpus.unwrap_or(d.default_vcpus);
        if !(1..=MAX_VCPUS).contains(&vcpus) {
            return Err(OpsError::invalid("vcpus", format!("{vcpus} is outside 1..={MAX_VCPUS}")));
        }
        let boot = match (&req.kernel, &req.initrd) {
            (Some(k), initrd) => Boot::Kernel {
                kernel: self.confine("kernel", k, &self.kernel_dirs())?,
                initrd: initrd.as_deref().map(|i| self.confine("initrd", i, &self.kernel_dirs())).transpose()?,
                cmdline: req.cmdline.as_deref().map(check_cmdline).transpose()?,
            },
            (None, Some(_)) => return Err(OpsError::invalid("initrd", "an initrd needs a kernel; pass kernel too")),
            (None, None) => Boot::Disk,
        };
        let profile = self.profiles.get(&os_variant)?.clone();
        let plan = self
            .plan_disks_bounded(req.disk.as_ref(), req.disk_size_gib, &name, &profile, matches!(boot, Boot::Disk))
            .await?;
        let disks = plan.disks.clone();
        if disks.is_empty() && matches!(boot, Boot::Disk) {
            return Err(OpsError::invalid(
                "disk",
                "nothing to boot: pass disk (an existing qcow2 or raw image) or kernel (with initrd) for direct boot",
            ));
        }
        let uuid = uuid::Uuid::new_v4();
        let nics = self.plan_nics(req.network.as_deref(), &req.port_forwards, &req.nics, &uuid)?;
        let prov: ProvisionPlan = self.plan_provisioning(
            req.cloud_init.as_ref(),
            req.ignition.as_ref(),
            &profile,
            name.as_str(),
            &uuid,
            &nics,
        )?;
        let mut spec = VmSpec {
            version: SPEC_VERSION,
            name: name.clone(),
            uuid,
            created_at: now_ms() / 1000,
            os_variant,
            memory_mib,
            vcpus,
            boot,
            disks,
            nics,
            restart_policy: req.restart_policy.unwrap_or_default(),
            template: false,
            made_template: false,
            ignition: None,
            uefi: None,
            addresses: crate::spec::StandardAddrs::default(),
            pool: None,
            pool_of: None,
            lease,
            install_boot: false,
        };
        self.make_vm_dir(&name, &paths)?;
        let mut guard = CreateGuard::new(&paths);
        store::begin_create(&paths, &plan.file_paths()).map_err(OpsError::io("cannot write", paths.creating()))?;
        guard.own_disks(&plan);
        Self::write_disks(&plan, &paths)?;
        Self::write_provisioning(&prov, &mut spec, &paths)?;
        crate::qemu::addresses::record(&mut spec, &profile).map_err(OpsError::addresses(name.as_str()))?;
        Self::commit_definition(&paths, &spec)?;
        guard.commit();
        drop(lock);
        tracing::info!(vm = %name, "defined");
        if req.start {
            return self.start(name.as_str()).await;
        }
        self.info(name.as_str())
    }
}
