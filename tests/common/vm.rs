//! A throw-away kvm-mcp installation for one test: its own config, state and run
//! directories under a temp dir, the fixture guests, helpers to wait on the serial
//! console and on status files (deadlines, never fixed sleeps), and a drop that kills
//! every supervisor and QEMU whose command line mentions the temp dir.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use kvm_mcp::config::Config;
use kvm_mcp::ops::{CreateRequest, DiskSource, Ops, VmInfo};
use kvm_mcp::state::VmState;

/// Generous deadline for anything a TCG guest does on a loaded 2-core machine.
pub const GUEST_DEADLINE: Duration = Duration::from_secs(180);

/// Where the fixtures are (or will be) built: `$FIXTURE_DIR` or `fixtures/cache`.
pub fn fixture_dir() -> PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::env::var_os("FIXTURE_DIR").map_or_else(|| repo.join("fixtures/cache"), PathBuf::from)
}

/// The fixture directory, built (or found up to date) once per test process.
pub fn fixtures() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
        let out = std::process::Command::new(repo.join("fixtures/build-guests.sh"))
            .output()
            .expect("run fixtures/build-guests.sh");
        assert!(out.status.success(), "fixtures/build-guests.sh failed: {}", String::from_utf8_lossy(&out.stderr));
        fixture_dir()
    })
}

/// One test's kvm-mcp world.
pub struct TestEnv {
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub ops: Ops,
}

impl TestEnv {
    /// A fresh environment with `extra` merged into the config's top-level object.
    pub fn with_config(extra: serde_json::Value) -> Self {
        let dir = tempfile::Builder::new().prefix("kvmt").tempdir_in("/tmp").expect("tempdir");
        let root = dir.path();
        let mut cfg = serde_json::json!({
            "vm": { "disk_path": root.join("disks"), "default_network": "user", "default_memory": 256, "default_vcpus": 1 },
            "qemu": { "accel": "tcg", "stop_timeout_s": 60 },
            "paths": { "state_dir": root.join("state"), "run_dir": root.join("run") },
            "logging": { "level": "debug" },
            // Direct-boot tests take the fixture kernel and initrd from where they are built.
            "storage": { "kernel_dirs": [root.join("disks"), fixture_dir()] }
        });
        if let (Some(base), Some(add)) = (cfg.as_object_mut(), extra.as_object()) {
            for (k, v) in add {
                match (base.get_mut(k).and_then(|b| b.as_object_mut()), v.as_object()) {
                    (Some(b), Some(v)) => b.extend(v.clone()),
                    _ => {
                        base.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        std::fs::create_dir_all(root.join("disks")).expect("disks dir");
        let config_path = root.join("config.json");
        std::fs::write(&config_path, serde_json::to_vec_pretty(&cfg).expect("json")).expect("write config");
        let config = Config::discover(Some(&config_path)).expect("test config loads");
        let ops = Ops::new(config).expect("ops").with_exe(PathBuf::from(env!("CARGO_BIN_EXE_kvm-mcp")));
        Self { dir, config_path, ops }
    }

    /// The default test environment.
    pub fn new() -> Self {
        Self::with_config(serde_json::json!({}))
    }

    /// Runs the CLI with this environment's config.
    pub fn cli(&self, args: &[&str]) -> Output {
        std::process::Command::new(env!("CARGO_BIN_EXE_kvm-mcp"))
            .arg("--config")
            .arg(&self.config_path)
            .args(args)
            .output()
            .expect("run kvm-mcp")
    }

    /// A private copy of the fixture's bootable disk.
    pub fn disk(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join("disks").join(format!("{name}.qcow2"));
        std::fs::copy(fixtures().join("disk.qcow2"), &p).expect("copy fixture disk");
        p
    }

    /// A create request for a VM booting the fixture disk with user networking.
    pub fn disk_vm(&self, name: &str) -> CreateRequest {
        CreateRequest {
            name: Some(name.into()),
            disk: Some(DiskSource::Existing(self.disk(name))),
            network: Some("user".into()),
            ..CreateRequest::default()
        }
    }

    /// A create-and-start request for a microvm booting the fixture kernel directly,
    /// without a network.
    pub fn microvm(name: &str) -> CreateRequest {
        CreateRequest {
            name: Some(name.into()),
            os_variant: Some("microvm".into()),
            kernel: Some(fixtures().join("vmlinuz")),
            initrd: Some(fixtures().join("initrd.gz")),
            cmdline: Some("console=ttyS0 panic=-1".into()),
            network: Some("none".into()),
            start: true,
            ..CreateRequest::default()
        }
    }

    /// Creates and starts a disk-booted fixture VM.
    pub async fn start_disk_vm(&self, name: &str) -> VmInfo {
        let req = CreateRequest { start: true, ..self.disk_vm(name) };
        self.ops.create(req).await.expect("create and start")
    }

    /// The VM's serial log as text.
    pub fn console(&self, name: &str) -> String {
        let p = self.ops.info(name).expect("info").serial_log;
        String::from_utf8_lossy(&std::fs::read(p).unwrap_or_default()).into_owned()
    }

    /// Waits until `marker` appears `count` times on the serial console.
    pub async fn wait_console(&self, name: &str, marker: &str, count: usize) {
        let start = Instant::now();
        while self.console(name).matches(marker).count() < count {
            assert!(
                start.elapsed() < GUEST_DEADLINE,
                "{marker:?} not seen {count}× on {name}'s console within {GUEST_DEADLINE:?}; console:\n{}\n{}",
                self.console(name),
                self.diagnostics(name)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The VM's info, QEMU log tail and supervisor log tail, for failure messages.
    pub fn diagnostics(&self, name: &str) -> String {
        let dir = self.dir.path().join("state/vms").join(name);
        let tail = |f: &str| kvm_mcp::fsutil::tail_lines(&dir.join(f), 10).join("\n");
        format!(
            "info: {:#?}\nqemu.log:\n{}\nsupervisor.log:\n{}\nevents:\n{}",
            self.ops.info(name).ok(),
            tail("qemu.log"),
            tail("supervisor.log"),
            tail("events.jsonl")
        )
    }

    /// Waits until `pred` holds for the VM's info.
    pub async fn wait_info(&self, name: &str, what: &str, pred: impl Fn(&VmInfo) -> bool) -> VmInfo {
        let start = Instant::now();
        loop {
            let i = self.ops.info(name).expect("info");
            if pred(&i) {
                return i;
            }
            assert!(
                start.elapsed() < GUEST_DEADLINE,
                "{name}: {what} not reached within {GUEST_DEADLINE:?}; last info: {i:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the VM is in `state`.
    pub async fn wait_state(&self, name: &str, state: VmState) -> VmInfo {
        self.wait_info(name, &format!("state {state}"), |i| i.state == state).await
    }

    /// Pids of processes whose command line mentions this environment's directory.
    pub fn processes(&self) -> Vec<i32> {
        processes_mentioning(&self.dir.path().to_string_lossy())
    }
}

/// Pids whose `/proc/<pid>/cmdline` contains `needle` (zombies excluded).
pub fn processes_mentioning(needle: &str) -> Vec<i32> {
    let me = std::process::id().cast_signed();
    std::fs::read_dir("/proc")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()))
                .filter(|&pid| pid != me)
                .filter(|pid| {
                    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                    let zombie = stat.rsplit(')').next().is_some_and(|r| r.trim_start().starts_with('Z'));
                    let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                    !zombie && String::from_utf8_lossy(&cmd).contains(needle)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// True while `/proc/<pid>` shows a live (non-zombie) process.
pub fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| !s.rsplit(')').next().is_some_and(|r| r.trim_start().starts_with('Z')))
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        for pid in self.processes() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }
}
