//! Running VMs' figures in Prometheus text format, for the `/metrics` endpoint:
//! counters need no sampling interval, so a scrape costs one QMP round trip per VM.

use std::fmt::Write as _;

use crate::ops::Ops;
use crate::state::VmState;

/// Label value escaping (backslash, quote, newline).
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// One metric family: its HELP/TYPE header and samples.
struct Family {
    name: &'static str,
    help: &'static str,
    kind: &'static str,
    samples: Vec<(String, f64)>,
}

impl Family {
    fn new(name: &'static str, kind: &'static str, help: &'static str) -> Self {
        Self { name, help, kind, samples: Vec::new() }
    }

    fn add(&mut self, labels: String, v: f64) {
        self.samples.push((labels, v));
    }

    fn render(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP {} {}\n# TYPE {} {}", self.name, self.help, self.name, self.kind);
        for (labels, v) in &self.samples {
            let _ = writeln!(out, "{}{{{labels}}} {v}", self.name);
        }
    }
}

/// Prometheus lines for every running VM (VMs that cannot be queried are skipped).
pub async fn render_vms(ops: &Ops) -> String {
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
        Family::new("kvm_mcp_vm_nic_transmit_bytes_total", "counter", "Bytes the guest sent per NIC."),
    ];
    let vms = ops.list().unwrap_or_default();
    for v in vms.iter().filter(|v| v.state.is_some_and(VmState::is_active)) {
        let Ok(c) = ops.counters(&v.name).await else { continue };
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
                // Seen from the host: what the tap receives, the guest sent.
                f[8].add(l.clone(), k.tx_bytes as f64);
                f[9].add(l, k.rx_bytes as f64);
            }
        }
    }
    let mut out = String::new();
    for fam in &f {
        fam.render(&mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn family_renders_help_type_and_samples() {
        let mut f = Family::new("x_total", "counter", "An x.");
        f.add("vm=\"a\\\"b\"".into(), 2.0);
        let mut s = String::new();
        f.render(&mut s);
        assert_eq!(s, "# HELP x_total An x.\n# TYPE x_total counter\nx_total{vm=\"a\\\"b\"} 2\n");
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(esc("a\"b\\c"), "a\\\"b\\\\c");
    }
}
