//! Process-wide metrics in Prometheus text format: QMP command latency, MCP tool calls
//! by name and outcome with their latency, and gauges the caller supplies at scrape
//! time (running VMs). The HTTP front end serves [`render_all`] at `/metrics`.

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

/// How a tool call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallOutcome {
    /// The tool did what was asked.
    Ok,
    /// The tool ran and reported a failure (`isError: true`).
    ToolError,
    /// The request could not be routed (unknown tool, malformed call).
    ProtocolError,
    /// The caller cancelled it.
    Cancelled,
}

impl CallOutcome {
    const ALL: [CallOutcome; 4] =
        [CallOutcome::Ok, CallOutcome::ToolError, CallOutcome::ProtocolError, CallOutcome::Cancelled];

    /// The `outcome` label value.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            CallOutcome::Ok => "ok",
            CallOutcome::ToolError => "tool_error",
            CallOutcome::ProtocolError => "protocol_error",
            CallOutcome::Cancelled => "cancelled",
        }
    }
}

#[derive(Debug, Default)]
struct ToolSeries {
    outcomes: [u64; CallOutcome::ALL.len()],
    latency: Histogram,
}

static TOOLS: LazyLock<Mutex<BTreeMap<String, ToolSeries>>> = LazyLock::new(|| Mutex::new(BTreeMap::new()));

/// Records one tool call.
pub fn observe_tool_call(tool: &str, outcome: CallOutcome, d: Duration) {
    if let Ok(mut m) = TOOLS.lock() {
        let series = if let Some(s) = m.get_mut(tool) { s } else { m.entry(tool.to_owned()).or_default() };
        series.outcomes[outcome as usize] += 1;
        series.latency.observe(d);
    }
}

/// Escapes a label value for the text format.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// The tool-call series in Prometheus text format.
#[must_use]
pub fn render_tools() -> String {
    let mut out = String::from(
        "# HELP kvm_mcp_tool_calls_total MCP tool calls by tool and outcome.\n# TYPE kvm_mcp_tool_calls_total counter\n",
    );
    let Ok(m) = TOOLS.lock() else { return out };
    for (tool, s) in m.iter() {
        for o in CallOutcome::ALL {
            let _ = writeln!(
                out,
                "kvm_mcp_tool_calls_total{{tool=\"{}\",outcome=\"{}\"}} {}",
                label(tool),
                o.as_str(),
                s.outcomes[o as usize]
            );
        }
    }
    out.push_str(
        "# HELP kvm_mcp_tool_call_seconds MCP tool call latency.\n# TYPE kvm_mcp_tool_call_seconds histogram\n",
    );
    for (tool, s) in m.iter() {
        s.latency.render(&mut out, "kvm_mcp_tool_call_seconds", &format!("tool=\"{}\"", label(tool)));
    }
    out
}

/// A gauge in Prometheus text format.
#[must_use]
pub fn render_gauge(name: &str, help: &str, value: u64) -> String {
    format!("# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}\n")
}

/// Everything: tool calls, QMP latency and the VM gauges.
#[must_use]
pub fn render_all(vms_defined: usize, vms_running: usize) -> String {
    let mut out = render_tools();
    out.push_str(&render_qmp());
    out.push_str(&render_gauge("kvm_mcp_vms_defined", "VMs defined.", vms_defined as u64));
    out.push_str(&render_gauge("kvm_mcp_vms_running", "VMs with a QEMU process.", vms_running as u64));
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

    #[test]
    fn tool_calls_are_counted_by_outcome() {
        observe_tool_call("metrics_test_tool", CallOutcome::ToolError, Duration::from_millis(1));
        let s = render_tools();
        assert!(s.contains("kvm_mcp_tool_calls_total{tool=\"metrics_test_tool\",outcome=\"tool_error\"} 1\n"), "{s}");
    }

    #[test]
    fn gauge_has_type_line() {
        assert_eq!(render_gauge("g", "h.", 3), "# HELP g h.\n# TYPE g gauge\ng 3\n");
    }
}
