//! Prometheus text format: metric families with HELP/TYPE headers and escaped label
//! values. `ops` fills them with running VMs' counters for the `/metrics` endpoint.

use std::fmt::Write as _;

/// Label value escaping (backslash, quote, newline).
#[must_use]
pub fn esc(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// One metric family: its HELP/TYPE header and samples.
pub struct Family {
    name: &'static str,
    help: &'static str,
    kind: &'static str,
    samples: Vec<(String, f64)>,
}

impl Family {
    #[must_use]
    pub fn new(name: &'static str, kind: &'static str, help: &'static str) -> Self {
        Self { name, help, kind, samples: Vec::new() }
    }

    pub fn add(&mut self, labels: String, v: f64) {
        self.samples.push((labels, v));
    }

    pub fn render(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP {} {}\n# TYPE {} {}", self.name, self.help, self.name, self.kind);
        for (labels, v) in &self.samples {
            let _ = writeln!(out, "{}{{{labels}}} {v}", self.name);
        }
    }
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
