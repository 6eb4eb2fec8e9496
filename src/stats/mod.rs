//! Per-VM figures from the host side: CPU time of the QEMU process and its vCPU threads
//! (`/proc`), resident memory, and the one shape of a NIC's traffic ([`NicCounters`],
//! read from the VM's taps over rtnetlink by `ops::stats`). Block and balloon figures
//! come over QMP (see `ops::stats`); host capacity through sysinfo (`host`); Prometheus
//! lines in `prom`.

pub mod host;
pub mod prom;

use serde::Serialize;

use crate::network::LinkStats;

/// CPU time of one thread or process, in clock ticks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadTicks {
    /// Thread name (`CPU 0/TCG`, `CPU 1/KVM`, … with `debug-threads=on`).
    pub name: String,
    pub ticks: u64,
}

/// utime + stime from a `/proc/…/stat` line (fields after the last `)`).
#[must_use]
pub fn stat_ticks(stat: &str) -> Option<u64> {
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is the state (field 3); utime and stime are fields 14 and 15.
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Total CPU ticks of process `pid`.
#[must_use]
pub fn process_ticks(pid: i32) -> Option<u64> {
    stat_ticks(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// CPU ticks of each vCPU thread of QEMU `pid` (threads whose name starts with `CPU `).
#[must_use]
pub fn vcpu_ticks(pid: i32) -> Vec<ThreadTicks> {
    let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return Vec::new() };
    let mut out: Vec<ThreadTicks> = rd
        .flatten()
        .filter_map(|e| {
            let dir = e.path();
            let name = std::fs::read_to_string(dir.join("comm")).ok()?.trim().to_owned();
            if !name.starts_with("CPU ") {
                return None;
            }
            let ticks = stat_ticks(&std::fs::read_to_string(dir.join("stat")).ok()?)?;
            Some(ThreadTicks { name, ticks })
        })
        .collect();
    out.sort_by_key(|t| t.name.split(['/', ' ']).nth(1).and_then(|n| n.parse::<u32>().ok()).unwrap_or(u32::MAX));
    out
}

/// Clock ticks per second (`_SC_CLK_TCK`).
#[must_use]
pub fn clock_ticks_per_s() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|v| u64::try_from(v).ok())
        .unwrap_or(100)
}

/// Resident memory of process `pid` (`VmRSS`), in bytes.
#[must_use]
pub fn rss_bytes(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: u64 = status.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Host CPUs, for "% of host" figures.
#[must_use]
pub fn host_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}

/// One NIC's traffic, the same figures everywhere they are shown (`nic_stats`,
/// `vm_stats`, the `vmstats://` resource and `/metrics`). Counted on the host side of
/// the NIC (its tap) but named from the guest's side: `rx_*` is what the guest
/// received, `tx_*` what it sent.
#[derive(Debug, Clone, Copy, Serialize, Default, PartialEq, Eq, schemars::JsonSchema)]
pub struct NicCounters {
    /// Bytes the guest received.
    pub rx_bytes: u64,
    /// Packets the guest received.
    pub rx_packets: u64,
    /// Packets for the guest that failed on the way (the tap's transmit errors).
    pub rx_errors: u64,
    /// Packets for the guest that were dropped, usually because the guest did not take
    /// them in time (the tap's transmit drops).
    pub rx_dropped: u64,
    /// Bytes the guest sent.
    pub tx_bytes: u64,
    /// Packets the guest sent.
    pub tx_packets: u64,
    /// Packets from the guest that failed on the way (the tap's receive errors).
    pub tx_errors: u64,
    /// Packets from the guest that were dropped on the host (the tap's receive drops).
    pub tx_dropped: u64,
}

impl NicCounters {
    /// The guest's view of its tap's counters: what the tap receives, the guest sent.
    #[must_use]
    pub fn from_tap(tap: &LinkStats) -> Self {
        Self {
            rx_bytes: tap.tx_bytes,
            rx_packets: tap.tx_packets,
            rx_errors: tap.tx_errors,
            rx_dropped: tap.tx_dropped,
            tx_bytes: tap.rx_bytes,
            tx_packets: tap.rx_packets,
            tx_errors: tap.rx_errors,
            tx_dropped: tap.rx_dropped,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_ticks_survives_spaces_and_parens_in_the_name() {
        let line = "1234 (CPU 0/T) x) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 99";
        assert_eq!(stat_ticks(line), Some(300));
    }

    #[test]
    fn own_process_has_ticks_and_rss() {
        let pid = std::process::id().cast_signed();
        assert!(process_ticks(pid).is_some() && rss_bytes(pid).is_some_and(|b| b > 0));
    }

    #[test]
    fn the_guest_receives_what_its_tap_transmits() {
        let tap = LinkStats {
            rx_bytes: 1,
            rx_packets: 2,
            rx_errors: 3,
            rx_dropped: 4,
            tx_bytes: 5,
            tx_packets: 6,
            tx_errors: 7,
            tx_dropped: 8,
        };
        let want = NicCounters {
            rx_bytes: 5,
            rx_packets: 6,
            rx_errors: 7,
            rx_dropped: 8,
            tx_bytes: 1,
            tx_packets: 2,
            tx_errors: 3,
            tx_dropped: 4,
        };
        assert_eq!(NicCounters::from_tap(&tap), want);
    }
}
