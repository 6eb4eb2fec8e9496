//! `vm_stats`, `nic_stats` and `host_stats`: CPU over a short interval, memory, per-disk
//! and per-NIC counters of a running VM; host capacity; and the same figures as
//! Prometheus lines. A NIC's traffic has one shape ([`NicStats`] with
//! [`NicCounters`]) in every one of them.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::context::Vm;
use super::{Ops, OpsError};
use crate::ids::MacAddr;
use crate::network::Netlink;
use crate::procid::Liveness;
use crate::qmp::DEFAULT_TIMEOUT;
use crate::qmp::extra::{BlockStatsEntry, QueryBalloon, QueryBlockstats};
use crate::spec::NetworkMode;
use crate::state::VmState;
use crate::stats::prom::{Family, esc};
use crate::stats::{self, NicCounters, host::HostStats};
use crate::store::qemu_liveness;

/// CPU sampling interval when none is given.
pub const DEFAULT_INTERVAL: Duration = Duration::from_millis(500);
/// Longest sampling interval accepted.
pub const MAX_INTERVAL: Duration = Duration::from_secs(10);

/// CPU use of the VM over the sampling interval.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct CpuStats {
    /// Share of all host CPUs used by the QEMU process, 0–100.
    pub percent_of_host: f64,
    /// Host cores' worth of CPU used (1.0 = one core busy).
    pub cores_used: f64,
    /// CPU seconds QEMU used since it started.
    pub total_seconds: f64,
    pub host_cpus: usize,
    pub vcpus: Vec<VcpuStats>,
}

/// One vCPU thread.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct VcpuStats {
    /// QEMU's thread name, e.g. `CPU 0/TCG`.
    pub thread: String,
    /// Percent of one host core.
    pub percent_of_core: f64,
}

/// Memory figures.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct MemoryStats {
    pub configured_bytes: u64,
    /// QEMU's resident set.
    pub qemu_rss_bytes: Option<u64>,
    /// What the balloon leaves the guest (`query-balloon`), when the VM has a balloon.
    pub balloon_actual_bytes: Option<u64>,
}

/// One disk's I/O counters since QEMU started.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct DiskStats {
    /// Block node name (`disk0`, …) or device id.
    pub node: String,
    pub path: Option<PathBuf>,
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub read_ops: u64,
    pub write_ops: u64,
}

/// One NIC of a VM and its traffic: what `nic_stats` lists and `vm_stats` includes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct NicStats {
    /// Position of the NIC in the VM's definition (0 = first).
    pub index: usize,
    /// The NIC's MAC address.
    pub mac: MacAddr,
    /// `"user"` or the bridge's name.
    pub network: String,
    /// The host-side tap, for bridged NICs.
    pub tap: Option<String>,
    /// The NIC's traffic as the guest sees it (`rx_*` received by the guest, `tx_*`
    /// sent by it), counted on its tap; absent for user-mode NICs, which have no
    /// host-side interface, and for a VM that is not running.
    pub counters: Option<NicCounters>,
    /// Why there are no counters, when there are none.
    pub note: Option<String>,
}

/// What `vm_stats` returns.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct VmStats {
    pub name: String,
    pub pid: i32,
    pub interval_ms: u64,
    pub cpu: CpuStats,
    pub memory: MemoryStats,
    pub disks: Vec<DiskStats>,
    pub nics: Vec<NicStats>,
}

/// Figures of a running VM that need no interval (for Prometheus).
#[derive(Debug, Clone)]
pub(crate) struct Counters {
    pub cpu_seconds: f64,
    pub memory: MemoryStats,
    pub disks: Vec<DiskStats>,
    pub nics: Vec<NicStats>,
}

fn disk_stats(vm: &Vm, entries: Vec<BlockStatsEntry>) -> Vec<DiskStats> {
    entries
        .into_iter()
        .filter_map(|e| {
            // `-blockdev node-name=diskN` + `-device …,id=diskN-dev`: find N either way.
            let node = e
                .node_name
                .clone()
                .filter(|n| !n.is_empty())
                .or_else(|| {
                    e.qdev
                        .as_deref()
                        .and_then(|q| q.split('/').find(|p| p.ends_with("-dev")))
                        .map(|p| p.trim_end_matches("-dev").to_owned())
                })
                .or_else(|| e.device.clone().filter(|d| !d.is_empty()))?;
            let path = node
                .strip_prefix("disk")
                .and_then(|i| i.parse::<usize>().ok())
                .and_then(|i| vm.spec.disks.get(i))
                .map(|d| d.path.clone());
            Some(DiskStats {
                node,
                path,
                read_bytes: e.stats.rd_bytes,
                write_bytes: e.stats.wr_bytes,
                read_ops: e.stats.rd_operations,
                write_ops: e.stats.wr_operations,
            })
        })
        .collect()
}

/// Per-NIC rows; `running` says whether the VM's taps exist. Counters come from each
/// bridged NIC's tap (named from the definition, as the supervisor names it) over
/// rtnetlink, so they are read in the caller's network namespace like the taps were
/// made; a NIC that cannot be read gets a note instead.
async fn nic_rows(vm: &Vm, running: bool) -> Vec<NicStats> {
    let bridged = vm.spec.nics.iter().any(|n| matches!(n.mode, NetworkMode::Bridge { .. }));
    let netlink = (running && bridged).then(Netlink::connect);
    let mut out = Vec::with_capacity(vm.spec.nics.len());
    for (index, n) in vm.spec.nics.iter().enumerate() {
        let mut row =
            NicStats { index, mac: n.mac, network: n.mode.label().to_owned(), tap: None, counters: None, note: None };
        match (&n.mode, &netlink) {
            (NetworkMode::User { .. }, _) => {
                row.note = Some("user-mode NIC: it has no host-side interface to count".into());
            }
            (NetworkMode::Bridge { .. }, None) => row.note = Some("the VM is not running".into()),
            (NetworkMode::Bridge { .. }, Some(Err(e))) => row.note = Some(crate::error::chain(e)),
            (NetworkMode::Bridge { .. }, Some(Ok(nl))) => match vm.spec.tap_name(index) {
                Ok(tap) => {
                    match nl.link_stats(&tap).await {
                        Ok(s) => row.counters = Some(NicCounters::from_tap(&s)),
                        Err(e) => row.note = Some(crate::error::chain(&e)),
                    }
                    row.tap = Some(tap.to_string());
                }
                Err(e) => row.note = Some(e.to_string()),
            },
        }
        out.push(row);
    }
    out
}

impl Ops {
    fn qemu_pid(&self, name: &str) -> Result<(Vm, i32), OpsError> {
        let vm = self.load(name)?;
        let obs = Self::observe(&vm);
        match obs.status.qemu.as_ref() {
            Some(q) if obs.status.state.is_active() && qemu_liveness(&obs.status, &vm.spec) == Liveness::Alive => {
                let pid = q.pid;
                Ok((vm, pid))
            }
            _ => Err(OpsError::NotRunning { name: name.into(), state: obs.status.state.to_string() }),
        }
    }

    pub(crate) async fn counters(&self, name: &str) -> Result<Counters, OpsError> {
        let (vm, pid) = self.qemu_pid(name)?;
        let q = self.qmp(&vm).await?;
        let blocks = q.execute(QueryBlockstats {}, DEFAULT_TIMEOUT).await.map_err(|source| OpsError::Qmp {
            name: name.into(),
            what: "query-blockstats failed",
            source,
        })?;
        let balloon = q.execute(QueryBalloon {}, DEFAULT_TIMEOUT).await.ok().map(|b| b.actual);
        drop(q);
        let tck = stats::clock_ticks_per_s() as f64;
        Ok(Counters {
            cpu_seconds: stats::process_ticks(pid).unwrap_or(0) as f64 / tck,
            memory: MemoryStats {
                configured_bytes: vm.spec.memory_mib * 1024 * 1024,
                qemu_rss_bytes: stats::rss_bytes(pid),
                balloon_actual_bytes: balloon,
            },
            disks: disk_stats(&vm, blocks),
            nics: nic_rows(&vm, true).await,
        })
    }

    /// CPU (sampled over `interval`, default 0.5 s), memory, disk and NIC figures of a
    /// running VM.
    ///
    /// # Errors
    /// Not running, or QMP failed.
    pub async fn vm_stats(&self, name: &str, interval: Option<Duration>) -> Result<VmStats, OpsError> {
        let interval = interval.unwrap_or(DEFAULT_INTERVAL).clamp(Duration::from_millis(50), MAX_INTERVAL);
        let (_, pid) = self.qemu_pid(name)?;
        let t0 = Instant::now();
        let p0 = stats::process_ticks(pid).unwrap_or(0);
        let v0 = stats::vcpu_ticks(pid);
        tokio::time::sleep(interval).await;
        let p1 = stats::process_ticks(pid).unwrap_or(p0);
        let v1 = stats::vcpu_ticks(pid);
        let secs = t0.elapsed().as_secs_f64();
        let tck = stats::clock_ticks_per_s() as f64;
        let pct = |d: u64| d as f64 / tck / secs * 100.0;
        let cores_used = pct(p1.saturating_sub(p0)) / 100.0;
        let host_cpus = stats::host_cpus();
        let vcpus = v1
            .iter()
            .map(|t| {
                let before = v0.iter().find(|b| b.name == t.name).map_or(t.ticks, |b| b.ticks);
                VcpuStats { thread: t.name.clone(), percent_of_core: pct(t.ticks.saturating_sub(before)) }
            })
            .collect();
        let c = self.counters(name).await?;
        Ok(VmStats {
            name: name.into(),
            pid,
            interval_ms: u64::try_from(interval.as_millis()).unwrap_or(u64::MAX),
            cpu: CpuStats {
                percent_of_host: cores_used * 100.0 / host_cpus as f64,
                cores_used,
                total_seconds: c.cpu_seconds,
                host_cpus,
                vcpus,
            },
            memory: c.memory,
            disks: c.disks,
            nics: c.nics,
        })
    }

    /// Each NIC of a VM with its traffic counters (bridged NICs of a running VM; the
    /// others are listed with a note saying why they have none).
    ///
    /// # Errors
    /// [`OpsError::NotFound`].
    pub async fn nic_stats(&self, name: &str) -> Result<Vec<NicStats>, OpsError> {
        let vm = self.load(name)?;
        let running = Self::observe(&vm).status.state.is_active();
        Ok(nic_rows(&vm, running).await)
    }

    /// Host CPU, memory and free space where VM disks live (`vm.disk_path`).
    ///
    /// # Errors
    /// The host figures cannot be read.
    pub async fn host_stats(&self) -> Result<HostStats, OpsError> {
        stats::host::sample(&self.cfg.vm.disk_path)
            .await
            .map_err(|e| OpsError::io("cannot read host figures for", &self.cfg.vm.disk_path)(std::io::Error::other(e)))
    }
}

impl Ops {
    /// Prometheus lines for every running VM (VMs that cannot be queried are skipped):
    /// counters need no sampling interval, so a scrape costs one QMP round trip per VM.
    pub async fn prometheus_vms(&self) -> String {
        let mut f = [
            Family::new("kvm_mcp_vm_cpu_seconds_total", "counter", "CPU time used by the VM's QEMU process."),
            Family::new("kvm_mcp_vm_memory_configured_bytes", "gauge", "Memory given to the VM."),
            Family::new("kvm_mcp_vm_memory_rss_bytes", "gauge", "Resident memory of the VM's QEMU process."),
            Family::new("kvm_mcp_vm_balloon_actual_bytes", "gauge", "Memory the balloon leaves the guest."),
            Family::new("kvm_mcp_vm_disk_read_bytes_total", "counter", "Bytes read by the guest per disk."),
            Family::new("kvm_mcp_vm_disk_written_bytes_total", "counter", "Bytes written by the guest per disk."),
            Family::new("kvm_mcp_vm_disk_reads_total", "counter", "Read operations per disk."),
            Family::new("kvm_mcp_vm_disk_writes_total", "counter", "Write operations per disk."),
            Family::new("kvm_mcp_vm_nic_receive_bytes_total", "counter", "Bytes the guest received per NIC."),
            Family::new("kvm_mcp_vm_nic_receive_packets_total", "counter", "Packets the guest received per NIC."),
            Family::new("kvm_mcp_vm_nic_receive_errors_total", "counter", "Packets for the guest that failed per NIC."),
            Family::new("kvm_mcp_vm_nic_receive_dropped_total", "counter", "Packets for the guest dropped per NIC."),
            Family::new("kvm_mcp_vm_nic_transmit_bytes_total", "counter", "Bytes the guest sent per NIC."),
            Family::new("kvm_mcp_vm_nic_transmit_packets_total", "counter", "Packets the guest sent per NIC."),
            Family::new(
                "kvm_mcp_vm_nic_transmit_errors_total",
                "counter",
                "Packets from the guest that failed per NIC.",
            ),
            Family::new("kvm_mcp_vm_nic_transmit_dropped_total", "counter", "Packets from the guest dropped per NIC."),
        ];
        let vms = self.list().unwrap_or_default();
        for v in vms.iter().filter(|v| v.state.is_some_and(VmState::is_active)) {
            let Ok(c) = self.counters(&v.name).await else { continue };
            let vm = format!("vm=\"{}\"", esc(&v.name));
            f[0].add(vm.clone(), c.cpu_seconds);
            f[1].add(vm.clone(), c.memory.configured_bytes as f64);
            if let Some(rss) = c.memory.qemu_rss_bytes {
                f[2].add(vm.clone(), rss as f64);
            }
            if let Some(b) = c.memory.balloon_actual_bytes {
                f[3].add(vm.clone(), b as f64);
            }
            for d in &c.disks {
                let l = format!("{vm},disk=\"{}\"", esc(&d.node));
                f[4].add(l.clone(), d.read_bytes as f64);
                f[5].add(l.clone(), d.write_bytes as f64);
                f[6].add(l.clone(), d.read_ops as f64);
                f[7].add(l, d.write_ops as f64);
            }
            for n in &c.nics {
                if let (Some(tap), Some(k)) = (&n.tap, n.counters) {
                    let l = format!("{vm},nic=\"{}\",tap=\"{}\"", n.index, esc(tap));
                    let figures = [
                        k.rx_bytes,
                        k.rx_packets,
                        k.rx_errors,
                        k.rx_dropped,
                        k.tx_bytes,
                        k.tx_packets,
                        k.tx_errors,
                        k.tx_dropped,
                    ];
                    for (fam, v) in f[8..].iter_mut().zip(figures) {
                        fam.add(l.clone(), v as f64);
                    }
                }
            }
        }
        let mut out = String::new();
        for fam in &f {
            fam.render(&mut out);
        }
        out
    }
}
