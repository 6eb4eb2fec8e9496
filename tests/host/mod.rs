//! Host figures without guests: `host_stats` through ops and the CLI.

use crate::common::vm::TestEnv;

#[tokio::test]
async fn host_stats_report_memory_cpus_and_disk_space() {
    let env = TestEnv::new();
    let h = env.ops.host_stats().await.unwrap();
    assert!(h.cpus >= 1 && h.memory_total_bytes > 0, "{h:?}");
    assert!(h.disk_total_bytes.is_some_and(|t| t > 0) && h.disk_available_bytes.is_some(), "{h:?}");
}

#[test]
fn cli_host_stats_prints_json() {
    let env = TestEnv::new();
    let out = env.cli(&["--json", "host", "stats"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert!(v["memory_total_bytes"].as_u64().is_some_and(|m| m > 0), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn console_log_of_unknown_vm_is_not_found() {
    let env = TestEnv::new();
    let out = env.cli(&["vm", "console-log", "ghost"]);
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn send_keys_with_an_unknown_key_names_it() {
    let env = TestEnv::new();
    let out = env.cli(&["vm", "send-keys", "ghost", "ctrl-banana"]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(err.contains("unknown key \"banana\""), "{err}");
}
