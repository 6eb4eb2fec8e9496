//! Per-VM figures from the host side: CPU time of the QEMU process and its vCPU threads
//! (`/proc`), resident memory, and NIC counters of the VM's taps
//! (`/sys/class/net/<tap>/statistics`). Block and balloon figures come over QMP (see
//! `ops::stats`); host capacity through sysinfo (`host`); Prometheus lines in `prom`.

pub mod host;
pub mod prom;

use std::path::Path;

use serde::Serialize;

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

/// Tap interface names QEMU `pid` holds at the given descriptor numbers, from
/// `/proc/<pid>/fdinfo/<fd>` (`iff:` line of a tun/tap fd).
#[must_use]
pub fn tap_name(pid: i32, fd: i32) -> Option<String> {
    let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).ok()?;
    info.lines().find_map(|l| l.strip_prefix("iff:")).map(|s| s.trim().to_owned())
}

/// Traffic counters of one interface.
#[derive(Debug, Clone, Copy, Serialize, Default, PartialEq, Eq)]
pub struct LinkCounters {
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub tx_packets: u64,
}

/// Counters from `/sys/class/net/<ifname>/statistics`. Seen from the host, so the
/// guest's transmit is the tap's receive.
#[must_use]
pub fn link_counters(sys_class_net: &Path, ifname: &str) -> Option<LinkCounters> {
    let dir = sys_class_net.join(ifname).join("statistics");
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).ok()?.trim().parse::<u64>().ok();
    Some(LinkCounters {
        rx_bytes: read("rx_bytes")?,
        tx_bytes: read("tx_bytes")?,
        rx_packets: read("rx_packets")?,
        tx_packets: read("tx_packets")?,
    })
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
    fn loopback_counters_are_read() {
        assert!(link_counters(Path::new("/sys/class/net"), "lo").is_some());
    }
}
