//! Per-VM figures move when the guest works; Prometheus lines name running VMs.

use std::time::Duration;

use kvm_mcp::ops::{GuestExecRequest, no_progress};
use tokio_util::sync::CancellationToken;

use super::console::{serial_type, wait_for};
use crate::common::vm::TestEnv;

#[tokio::test(flavor = "multi_thread")]
async fn cpu_figures_rise_while_the_guest_spins() {
    let env = TestEnv::new();
    env.start_disk_vm("spin").await;
    wait_for(&env, "spin", "FIXTURE-READY").await;
    let idle = env.ops.vm_stats("spin", Some(Duration::from_secs(2))).await.unwrap();
    serial_type(&env, "spin", "while :; do :; done &\n");
    let busy = env.ops.vm_stats("spin", Some(Duration::from_secs(2))).await.unwrap();
    let vcpu = |s: &kvm_mcp::ops::VmStats| s.cpu.vcpus.first().map_or(0.0, |v| v.percent_of_core);
    assert!(
        busy.cpu.cores_used > idle.cpu.cores_used * 2.0 && vcpu(&busy) > vcpu(&idle) * 2.0,
        "idle {:?} busy {:?}",
        idle.cpu,
        busy.cpu
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn disk_counters_move_after_a_guest_write() {
    let env = TestEnv::new();
    env.start_disk_vm("dw").await;
    wait_for(&env, "dw", "FIXTURE-QGA started").await;
    let before = env.ops.vm_stats("dw", None).await.unwrap();
    // 256 KiB at 24 MiB into the throw-away copy of the disk, flushed to the device.
    let dd = GuestExecRequest {
        command: "dd".into(),
        args: ["if=/dev/zero", "of=/dev/vda", "bs=64k", "count=4", "seek=384", "conv=fsync"].map(String::from).to_vec(),
        ..GuestExecRequest::default()
    };
    let r = env.ops.guest_exec("dw", dd, &no_progress, &CancellationToken::new()).await.unwrap();
    let after = env.ops.vm_stats("dw", None).await.unwrap();
    let (b, a) = (&before.disks[0], &after.disks[0]);
    assert_eq!((r.exit_code, a.node.as_str(), a.path.is_some()), (Some(0), "disk0", true), "{r:?} {a:?}");
    assert!(a.write_bytes >= b.write_bytes + 256 * 1024 && a.write_ops > b.write_ops, "{b:?} → {a:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn memory_figures_include_rss_and_balloon() {
    let env = TestEnv::new();
    env.start_disk_vm("mem").await;
    let s = env.ops.vm_stats("mem", None).await.unwrap();
    let m = &s.memory;
    assert_eq!((m.configured_bytes, m.balloon_actual_bytes), (256 << 20, Some(256 << 20)));
    assert!(m.qemu_rss_bytes.is_some_and(|r| r > 0), "{m:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_name_each_running_vm_and_its_disk() {
    let env = TestEnv::new();
    env.start_disk_vm("prom").await;
    let text = env.ops.prometheus_vms().await;
    assert!(text.contains("kvm_mcp_vm_cpu_seconds_total{vm=\"prom\"} "), "{text}");
    assert!(text.contains("kvm_mcp_vm_disk_written_bytes_total{vm=\"prom\",disk=\"disk0\"} "), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn user_mode_nic_is_listed_without_counters() {
    let env = TestEnv::new();
    env.start_disk_vm("nic").await;
    let s = env.ops.vm_stats("nic", None).await.unwrap();
    assert_eq!((s.nics.len(), s.nics[0].network.as_str(), s.nics[0].counters), (1, "user", None));
}
