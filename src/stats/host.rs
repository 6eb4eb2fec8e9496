//! Host capacity through sysinfo 0.40 (`System::new()` returns a `Result` there): CPU
//! use over one `MINIMUM_CPU_UPDATE_INTERVAL`, memory, load and free space of the file
//! system holding `vm.disk_path`.

use std::path::{Path, PathBuf};

use serde::Serialize;

/// What `host_stats` reports.
#[derive(Debug, Clone, Serialize)]
pub struct HostStats {
    pub cpus: usize,
    /// Use of all host CPUs together, 0–100.
    pub cpu_percent: f32,
    pub load_average: [f64; 3],
    pub memory_total_bytes: u64,
    pub memory_available_bytes: u64,
    pub memory_used_bytes: u64,
    /// The configured `vm.disk_path`.
    pub disk_path: PathBuf,
    /// Mount point of the file system holding it.
    pub disk_mount_point: Option<PathBuf>,
    pub disk_total_bytes: Option<u64>,
    pub disk_available_bytes: Option<u64>,
}

/// Samples the host; takes about 200 ms (sysinfo's minimum CPU interval).
///
/// # Errors
/// sysinfo cannot read the system.
pub async fn sample(disk_path: &Path) -> Result<HostStats, String> {
    let mut sys = sysinfo::System::new().map_err(|e| format!("cannot read host figures: {e}"))?;
    sys.refresh_cpu_usage();
    tokio::time::sleep(sysinfo::MINIMUM_CPU_UPDATE_INTERVAL).await;
    sys.refresh_cpu_usage();
    sys.refresh_memory();
    let load = sysinfo::System::load_average().ok();
    // The configured path may not exist yet: use its nearest existing ancestor.
    let probe = disk_path.ancestors().find(|p| p.exists()).unwrap_or(Path::new("/"));
    let probe = probe.canonicalize().unwrap_or_else(|_| probe.to_owned());
    let disks = sysinfo::Disks::new_with_refreshed_list().ok();
    let disk = disks.as_ref().and_then(|d| {
        d.iter().filter(|d| probe.starts_with(d.mount_point())).max_by_key(|d| d.mount_point().as_os_str().len())
    });
    let total = sys.total_memory();
    let available = sys.available_memory();
    Ok(HostStats {
        cpus: sys.cpus().len().max(1),
        cpu_percent: sys.global_cpu_usage(),
        load_average: load.map_or([0.0; 3], |l| [l.one, l.five, l.fifteen]),
        memory_total_bytes: total,
        memory_available_bytes: available,
        memory_used_bytes: total.saturating_sub(available),
        disk_path: disk_path.to_owned(),
        disk_mount_point: disk.map(|d| d.mount_point().to_owned()),
        disk_total_bytes: disk.map(sysinfo::Disk::total_space),
        disk_available_bytes: disk.map(sysinfo::Disk::available_space),
    })
}
