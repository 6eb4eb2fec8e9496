//! Warm pools on the fixture disk guest: `create_template` with a pool size; a pool fills with booted, paused clones; two
//! claims at once get two different VMs, resumed and answering; the pool refills after
//! claims and after a `kill -9` of its owner; members boot niced, a claimed VM is not; `run --template` takes a pooled VM; a
//! removed pool leaves nothing but the template.

use std::time::{Duration, Instant};

use kvm_mcp::spec::Lease;
use kvm_mcp::state::VmState;

use crate::common::vm::{GUEST_DEADLINE, TestEnv, processes_mentioning};

/// The pool's ready members (paused, marked) and all its members.
fn members(env: &TestEnv, template: &str) -> (Vec<String>, Vec<String>) {
    let vms = env.ops.list().expect("list");
    let all: Vec<_> = vms.iter().filter(|v| v.pool_of.as_deref() == Some(template)).collect();
    let ready = all
        .iter()
        .filter(|v| {
            v.state == Some(VmState::Paused)
                && env.dir.path().join("state/vms").join(&v.name).join("pool-ready").exists()
        })
        .map(|v| v.name.clone())
        .collect();
    (ready, all.iter().map(|v| v.name.clone()).collect())
}

async fn wait_ready(env: &TestEnv, template: &str, n: usize, what: &str) -> Vec<String> {
    let start = Instant::now();
    loop {
        let (ready, all) = members(env, template);
        if ready.len() == n && all.len() == n {
            return ready;
        }
        assert!(
            start.elapsed() < GUEST_DEADLINE * 2,
            "{what}: {ready:?} ready of {all:?}; owner log:\n{}",
            std::fs::read_to_string(env.dir.path().join("run/.pools").join(template).join("owner.log"))
                .unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The nice value of each thread of process `pid`.
fn nices(pid: i32) -> Vec<i32> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("tasks");
    tasks
        .flatten()
        .map(|t| {
            let stat = std::fs::read_to_string(t.path().join("stat")).expect("stat");
            // Fields after the command name, which ends at the last ')': nice is the 19th field.
            let rest = &stat[stat.rfind(')').expect("comm") + 2..];
            rest.split(' ').nth(16).expect("nice").parse().expect("a number")
        })
        .collect()
}

fn owner_pids(env: &TestEnv) -> Vec<i32> {
    processes_mentioning(&env.config_path.to_string_lossy())
        .into_iter()
        .filter(|p| std::fs::read(format!("/proc/{p}/cmdline")).is_ok_and(|c| c.windows(8).any(|w| w == b"pool-own")))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pool_fills_hands_out_each_vm_once_and_refills_after_claims_and_kill_9() {
    let env = TestEnv::new();
    env.ops.create(env.disk_vm("tpl")).await.expect("create the VM");
    let req = kvm_mcp::ops::TemplateRequest { name: "tpl".into(), pool_size: Some(2), ..Default::default() };
    let info = env.ops.create_template(req).await.expect("make it a template with a pool");
    assert_eq!((info.pool_size, info.template), (Some(2), true));
    assert!(env.ops.start("tpl").await.is_err(), "a template with a pool does not start");
    let first = wait_ready(&env, "tpl", 2, "the pool never filled").await;

    // Two claims at once: two different VMs, both running and answering.
    let (a, b) = tokio::join!(
        env.ops.claim_from_pool("tpl", Lease::default()),
        env.ops.claim_from_pool("tpl", Lease::default())
    );
    let (a, b) = (a.expect("claim a").expect("a VM"), b.expect("claim b").expect("a VM"));
    assert_ne!(a, b);
    assert!(first.contains(&a) && first.contains(&b), "{a} {b} {first:?}");
    for name in [&a, &b] {
        let i = env.ops.info(name).expect("info");
        assert_eq!((i.state, i.pool_of.as_deref()), (VmState::Running, None), "{i:?}");
        env.ops.guest_ping(name).await.expect("a claimed VM answers at once");
    }
    // Each is a machine of its own: its MAC differs from its sibling's.
    let mac = |n: &str| env.ops.info(n).expect("info").nics[0].mac;
    assert_ne!(mac(&a), mac(&b));
    // The pool is empty now; a third claim gets nothing rather than a claimed VM.
    let (ready, _) = members(&env, "tpl");
    if ready.is_empty() {
        assert_eq!(env.ops.claim_from_pool("tpl", Lease::default()).await.expect("claim"), None);
    }
    let refilled = wait_ready(&env, "tpl", 2, "no refill after two claims").await;
    assert!(!refilled.contains(&a) && !refilled.contains(&b));
    // Members boot at a lower priority; a claimed VM runs at the normal one.
    let nice_of = |n: &str| nices(env.ops.info(n).expect("info").pid.expect("a QEMU pid"));
    assert!(nice_of(&refilled[0]).iter().all(|n| *n == kvm_mcp::supervise::POOL_NICE), "{:?}", nice_of(&refilled[0]));
    assert!(nice_of(&a).iter().all(|n| *n == 0), "{:?}", nice_of(&a));

    // kill -9 of the owner: the next claim starts a new one, which refills.
    let owners = owner_pids(&env);
    assert_eq!(owners.len(), 1, "{owners:?}");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(owners[0]), nix::sys::signal::Signal::SIGKILL).expect("kill");
    let start = Instant::now();
    while crate::common::vm::alive(owners[0]) {
        assert!(start.elapsed() < GUEST_DEADLINE, "the owner did not die");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let c = env.ops.claim_from_pool("tpl", Lease::default()).await.expect("claim").expect("a VM");
    assert!(refilled.contains(&c));
    wait_ready(&env, "tpl", 2, "no refill after the owner was killed").await;
    assert_eq!(owner_pids(&env).len(), 1, "one new owner");

    // run --template takes a pooled VM.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kvm-mcp"))
        .arg("--config")
        .arg(&env.config_path)
        .args(["--json", "run", "--template", "tpl", "--", "uname", "-a"])
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(report["from_pool"], true, "{report:#}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("Linux"));

    // Removing the pool deletes the unclaimed members and ends the owner.
    for n in [&a, &b, &c] {
        env.ops.delete(n, true).await.expect("delete a claimed VM");
    }
    env.ops.set_pool("tpl", 0).await.expect("remove the pool");
    let start = Instant::now();
    while !members(&env, "tpl").1.is_empty() || !owner_pids(&env).is_empty() {
        assert!(start.elapsed() < GUEST_DEADLINE, "left: {:?} owners {:?}", members(&env, "tpl"), owner_pids(&env));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let names: Vec<String> = env.ops.list().expect("list").into_iter().map(|v| v.name).collect();
    assert_eq!(names, ["tpl"]);
    env.ops.delete("tpl", false).await.expect("the template is free to delete");
}
