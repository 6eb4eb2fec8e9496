//! Overlay creation: kvm-mcp's in-process writer against
//! `qemu-img create -f qcow2 -b BASE -F qcow2`, measured in the same run on the same
//! file system, alternating batches so both see the same machine load.
//!
//! `cargo run --release --example overlay_bench -- [COUNT] [DIR]`; prints one JSON line.

#![allow(clippy::disallowed_methods)] // the reference is the qemu-img process itself

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use kvm_mcp::storage::{CreateOptions, ImageFormat, create_blank, create_overlay};

const BATCHES: usize = 5;

fn ours(dir: &Path, base: &Path, tag: &str, n: usize) -> Duration {
    let t = Instant::now();
    for i in 0..n {
        create_overlay(&dir.join(format!("ours-{tag}-{i}.qcow2")), base, ImageFormat::Qcow2, None).expect("overlay");
    }
    t.elapsed()
}

fn qemu_img(dir: &Path, base: &Path, tag: &str, n: usize) -> Duration {
    let t = Instant::now();
    for i in 0..n {
        let st = Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
            .arg(base)
            .arg(dir.join(format!("qemu-{tag}-{i}.qcow2")))
            .status()
            .expect("run qemu-img (install qemu-utils)");
        assert!(st.success(), "qemu-img create failed");
    }
    t.elapsed()
}

fn main() {
    let mut args = std::env::args().skip(1);
    let count: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(200);
    let parent = args.next().unwrap_or_else(|| "/tmp".into());
    let dir = tempfile::Builder::new().prefix("overlay-bench").tempdir_in(parent).expect("temp dir");
    let base = dir.path().join("base.qcow2");
    create_blank(&base, 20 << 30, &CreateOptions::default()).expect("base");
    let per_batch = count.div_ceil(BATCHES);
    let (mut a, mut b) = (Duration::ZERO, Duration::ZERO);
    for batch in 0..BATCHES {
        let tag = batch.to_string();
        a += ours(dir.path(), &base, &tag, per_batch);
        b += qemu_img(dir.path(), &base, &tag, per_batch);
    }
    let n = (per_batch * BATCHES) as f64;
    let ours_ms = a.as_secs_f64() * 1000.0 / n;
    let qemu_ms = b.as_secs_f64() * 1000.0 / n;
    println!(
        "{{\"overlays_each\":{},\"in_process_ms\":{ours_ms:.3},\"qemu_img_ms\":{qemu_ms:.3},\"speedup\":{:.1}}}",
        per_batch * BATCHES,
        qemu_ms / ours_ms
    );
}
