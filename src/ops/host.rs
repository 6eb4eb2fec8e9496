//! Host facts: accelerator and why, QEMU version, memory and disk space; and the
//! profile list.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{Ops, OpsError};
use crate::config::ConfigSource;
use crate::qemu::{accel, launcher};

/// Free and total bytes of the file system holding a path.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct DiskSpace {
    pub path: PathBuf,
    pub free_bytes: Option<u64>,
    pub total_bytes: Option<u64>,
}

/// What `host info` reports.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct HostInfo {
    /// `kvm` or `tcg`, or `None` when `accel: kvm` is configured but unusable.
    pub accel: Option<accel::Accel>,
    /// Why that accelerator.
    pub accel_reason: String,
    pub qemu_binary: PathBuf,
    /// `QEMU emulator version …`, or the error running it.
    pub qemu_version: String,
    pub memory_total_bytes: u64,
    pub memory_available_bytes: u64,
    pub cpus: usize,
    pub disk_path: DiskSpace,
    pub state_dir: DiskSpace,
    pub config: ConfigSource,
    pub vms_defined: usize,
    pub vms_running: usize,
    /// Warm pools: template, size, and how many members are there (booting or paused).
    pub pools: Vec<PoolInfo>,
}

/// One warm pool, for `host_info`.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct PoolInfo {
    pub template: String,
    pub size: u32,
    /// Members not yet claimed, ready or still booting.
    pub members: usize,
}

/// One profile, for `list_profiles`.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct ProfileInfo {
    pub name: String,
    pub description: String,
    pub machine: String,
    pub disk_bus: crate::qemu::profile::DiskBus,
    pub nic_model: String,
    pub display: crate::qemu::profile::Display,
    pub is_default: bool,
}

fn space(path: &Path) -> DiskSpace {
    // The configured path may not exist yet; report its nearest existing ancestor.
    let probe = path.ancestors().find(|p| p.exists()).unwrap_or(Path::new("/"));
    let st = nix::sys::statvfs::statvfs(probe).ok();
    DiskSpace {
        path: path.into(),
        free_bytes: st.as_ref().map(|s| s.blocks_available() * s.fragment_size()),
        total_bytes: st.as_ref().map(|s| s.blocks() * s.fragment_size()),
    }
}

fn meminfo() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |k: &str| {
        text.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(0, |kib| kib * 1024)
    };
    (field("MemTotal:"), field("MemAvailable:"))
}

impl Ops {
    /// Host capacity and the accelerator decision.
    ///
    /// # Errors
    /// The state directory cannot be read.
    pub async fn host_info(&self) -> Result<HostInfo, OpsError> {
        let (accel, accel_reason) = match accel::detect(self.cfg.qemu.accel) {
            Ok(d) => (Some(d.accel), d.reason),
            Err(e) => (None, e.to_string()),
        };
        let qemu_version = launcher::qemu_version(&self.cfg.qemu.binary)
            .await
            .unwrap_or_else(|e| format!("cannot run {}: {e}", self.cfg.qemu.binary.display()));
        let (memory_total_bytes, memory_available_bytes) = meminfo();
        let vms = self.list()?;
        let pools = self
            .store()
            .defined()
            .iter()
            .filter_map(|t| t.spec.pool.map(|p| (t.spec.name.to_string(), p.size)))
            .map(|(template, size)| {
                let members = vms.iter().filter(|v| v.pool_of.as_deref() == Some(template.as_str())).count();
                PoolInfo { template, size, members }
            })
            .collect();
        Ok(HostInfo {
            accel,
            accel_reason,
            qemu_binary: self.cfg.qemu.binary.clone(),
            qemu_version,
            memory_total_bytes,
            memory_available_bytes,
            cpus: std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
            disk_path: space(&self.cfg.vm.disk_path),
            state_dir: space(&self.cfg.state_dir),
            config: self.cfg.source.clone(),
            vms_defined: vms.len(),
            vms_running: vms.iter().filter(|v| v.state.is_some_and(crate::state::VmState::is_active)).count(),
            pools,
        })
    }

    /// The known profiles.
    #[must_use]
    pub fn list_profiles(&self) -> Vec<ProfileInfo> {
        self.profiles
            .iter()
            .map(|p| ProfileInfo {
                name: p.name.clone(),
                description: p.description.clone(),
                machine: p.machine.qemu_name().into(),
                disk_bus: p.disk_bus,
                nic_model: p.nic_model.clone(),
                display: p.display,
                is_default: p.name == self.cfg.vm.default_os_variant,
            })
            .collect()
    }
}
