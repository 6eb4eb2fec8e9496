//! Process-wide metrics in Prometheus text format: QMP command latency here; front ends
//! add their own series (tool calls, call latency) through the same types.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

/// Histogram bucket bounds in seconds.
pub const BUCKETS_S: [f64; 12] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

/// A latency histogram.
#[derive(Debug, Clone, Default)]
pub struct Histogram {
    counts: [u64; BUCKETS_S.len()],
    sum_s: f64,
    count: u64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&mut self, d: Duration) {
        let s = d.as_secs_f64();
        for (i, b) in BUCKETS_S.iter().enumerate() {
            if s <= *b {
                self.counts[i] += 1;
            }
        }
        self.sum_s += s;
        self.count += 1;
    }

    /// Appends this histogram's lines for `name{labels}`.
    pub fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (i, b) in BUCKETS_S.iter().enumerate() {
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {}", self.counts[i]);
        }
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum_s);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", self.count);
    }
}

static QMP: LazyLock<Mutex<BTreeMap<&'static str, Histogram>>> = LazyLock::new(|| Mutex::new(BTreeMap::new()));

/// Records the latency of one QMP command.
pub fn observe_qmp(command: &'static str, d: Duration) {
    if let Ok(mut m) = QMP.lock() {
        m.entry(command).or_default().observe(d);
    }
}

/// The QMP series in Prometheus text format.
#[must_use]
pub fn render_qmp() -> String {
    let mut out = String::from(
        "# HELP kvm_mcp_qmp_command_seconds QMP command latency.\n# TYPE kvm_mcp_qmp_command_seconds histogram\n",
    );
    if let Ok(m) = QMP.lock() {
        for (cmd, h) in m.iter() {
            h.render(&mut out, "kvm_mcp_qmp_command_seconds", &format!("command=\"{cmd}\""));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_counts_cumulatively() {
        let mut h = Histogram::default();
        h.observe(Duration::from_millis(2));
        let mut s = String::new();
        h.render(&mut s, "x", "");
        assert!(s.contains("x_bucket{le=\"0.001\"} 0\n") && s.contains("x_bucket{le=\"0.0025\"} 1\n"), "{s}");
    }
}
