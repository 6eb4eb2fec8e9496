//! The command line without guests: errors, exit codes, tables and JSON.

use crate::common::vm::TestEnv;

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).trim().to_owned()
}

#[test]
fn zero_memory_in_config_is_named() {
    let env = TestEnv::new();
    std::fs::write(&env.config_path, r#"{"vm":{"default_memory":0}}"#).unwrap();
    let out = env.cli(&["vm", "list"]);
    assert_eq!(
        (out.status.code(), stderr(&out)),
        (Some(2), "kvm-mcp: vm.default_memory: 0 is below the minimum of 16 MiB".into())
    );
}

#[test]
fn unknown_config_key_is_named() {
    let env = TestEnv::new();
    std::fs::write(&env.config_path, r#"{"vm":{"default_memroy":512}}"#).unwrap();
    let out = env.cli(&["vm", "list"]);
    assert!(stderr(&out).contains("vm.default_memroy: unknown field"), "{}", stderr(&out));
}

#[test]
fn bad_vm_name_is_refused_with_rule() {
    let env = TestEnv::new();
    let out = env.cli(&["vm", "create", "../etc", "--disk", "/nonexistent"]);
    assert_eq!(
        (out.status.code(), stderr(&out)),
        (Some(2), "kvm-mcp: VM name \"../etc\" contains '/'; use letters, digits, '-', '_' and '.'".into())
    );
}

#[test]
fn duplicate_name_is_conflict() {
    let env = TestEnv::new();
    let disk = env.disk("dup");
    let disk = disk.to_str().unwrap();
    env.cli(&["vm", "create", "dup", "--disk", disk]);
    let out = env.cli(&["vm", "create", "dup", "--disk", disk]);
    assert_eq!(
        (out.status.code(), stderr(&out)),
        (Some(4), "kvm-mcp: a VM named \"dup\" already exists; pick another name or delete it first".into())
    );
}

#[test]
fn unknown_os_variant_lists_profiles() {
    let env = TestEnv::new();
    let disk = env.disk("osv");
    let out = env.cli(&["vm", "create", "osv", "--os-variant", "beos", "--disk", disk.to_str().unwrap()]);
    assert!(
        stderr(&out)
            .ends_with("known profiles: fedora-coreos, generic, legacy, linux, linux-secureboot, linux-uefi, microvm"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn missing_vm_is_not_found() {
    let env = TestEnv::new();
    let out = env.cli(&["vm", "start", "ghost"]);
    assert_eq!(out.status.code(), Some(3));
}

#[test]
fn list_prints_aligned_table() {
    let env = TestEnv::new();
    let disk = env.disk("a");
    env.cli(&["vm", "create", "a", "--disk", disk.to_str().unwrap(), "--memory", "300"]);
    let out = String::from_utf8(env.cli(&["vm", "list"]).stdout).unwrap();
    assert_eq!(out, "NAME  STATE    VCPUS  MEMORY   UPTIME  PID\na     shutoff  1      300 MiB  -       -\n");
}

#[test]
fn list_json_is_machine_readable() {
    let env = TestEnv::new();
    let disk = env.disk("j");
    env.cli(&["vm", "create", "j", "--disk", disk.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_slice(&env.cli(&["vm", "list", "--json"]).stdout).unwrap();
    assert_eq!((v[0]["name"].as_str(), v[0]["state"].as_str()), (Some("j"), Some("shutoff")));
}

#[test]
fn interrupted_create_is_listed_incomplete_and_deletable() {
    let env = TestEnv::new();
    let dir = env.dir.path().join("state/vms/half");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("creating"), b"").unwrap();
    let listed: serde_json::Value = serde_json::from_slice(&env.cli(&["vm", "list", "--json"]).stdout).unwrap();
    let deleted = env.cli(&["vm", "delete", "half"]).status.success();
    assert_eq!((listed[0]["incomplete"].as_bool(), deleted, dir.exists()), (Some(true), true, false));
}

#[test]
fn host_info_reports_accelerator_and_qemu_version() {
    let env = TestEnv::new();
    let v: serde_json::Value = serde_json::from_slice(&env.cli(&["host", "info", "--json"]).stdout).unwrap();
    assert_eq!(v["accel"].as_str(), Some("tcg"));
    assert!(v["qemu_version"].as_str().unwrap().starts_with("QEMU emulator version"), "{v}");
}

#[test]
fn start_failure_reports_qemu_error() {
    let env = TestEnv::new();
    let disk = env.disk("bad");
    env.cli(&["vm", "create", "bad", "--disk", disk.to_str().unwrap()]);
    // A header kvm-mcp reads but QEMU refuses: an L1 table offset off cluster alignment.
    let f = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &0x1_0001u64.to_be_bytes(), 40).unwrap();
    let out = env.cli(&["vm", "start", "bad"]);
    let info: serde_json::Value = serde_json::from_slice(&env.cli(&["vm", "info", "bad", "--json"]).stdout).unwrap();
    assert_eq!(
        (out.status.code(), info["state"].as_str(), info["reason"].as_str(), env.processes()),
        (Some(5), Some("shutoff"), Some("start_failed"), vec![])
    );
    assert!(
        stderr(&out).starts_with("kvm-mcp: VM \"bad\" failed to start: QEMU exited during start-up"),
        "{}",
        stderr(&out)
    );
}

/// What MCP hosts capture: `serve`'s stderr in a file has its log lines (a warning and
/// info lines here) and not one ANSI escape byte.
#[test]
fn serve_logs_without_colour_when_stderr_is_a_file() {
    let env = TestEnv::new();
    let log = env.dir.path().join("stderr.log");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_kvm-mcp"))
        .arg("--config")
        .arg(&env.config_path)
        .args(["serve", "--http", "127.0.0.1:0", "--no-auth"])
        .env_remove("NO_COLOR")
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).expect("stderr file"))
        .spawn()
        .expect("run kvm-mcp serve");
    let start = std::time::Instant::now();
    while !std::fs::read_to_string(&log).unwrap_or_default().contains("listening on") {
        assert!(start.elapsed() < std::time::Duration::from_secs(60), "no 'listening on' in {log:?}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    child.wait().expect("serve exits");
    let bytes = std::fs::read(&log).expect("stderr file");
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.contains("WARN") && text.contains("HTTP server stopped"), "{text}");
    assert!(!bytes.contains(&0x1b), "escape bytes in {text:?}");
}
