//! Image helpers for storage tests: an environment with image and ISO directories
//! holding copies of the fixture's master disk and install ISO, QEMU's tools as the
//! oracle, a small tmpfs for out-of-space tests, and typing on a guest's console.

use std::path::{Path, PathBuf};
use std::process::Command;

use kvm_mcp::config::Config;
use kvm_mcp::ops::Ops;

use crate::common::vm::{TestEnv, fixtures};

/// A test environment whose config has `images/` (holding `master.qcow2`) as an image
/// directory and `isos/` (holding `install.iso`) as an ISO directory; `extra` is merged
/// into the `vm` section.
pub fn storage_env(vm_extra: serde_json::Value) -> TestEnv {
    let mut env = TestEnv::new();
    let root = env.dir.path().to_path_buf();
    for d in ["images", "isos"] {
        std::fs::create_dir_all(root.join(d)).expect("mkdir");
    }
    std::fs::copy(fixtures().join("disk.qcow2"), root.join("images/master.qcow2")).expect("copy master");
    let iso = root.join("isos/install.iso");
    if std::fs::hard_link(fixtures().join("install.iso"), &iso).is_err() {
        std::fs::copy(fixtures().join("install.iso"), &iso).expect("copy iso");
    }
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&env.config_path).expect("config")).expect("json");
    cfg["storage"]["image_dirs"] = serde_json::json!([root.join("images")]);
    cfg["storage"]["iso_dirs"] = serde_json::json!([root.join("isos")]);
    if let (Some(vm), Some(extra)) = (cfg["vm"].as_object_mut(), vm_extra.as_object()) {
        vm.extend(extra.clone());
    }
    std::fs::write(&env.config_path, serde_json::to_vec_pretty(&cfg).expect("json")).expect("write config");
    let config = Config::discover(Some(&env.config_path)).expect("config loads");
    env.ops = Ops::new(config).expect("ops").with_exe(PathBuf::from(env!("CARGO_BIN_EXE_kvm-mcp")));
    env
}

/// `qemu-img info --output=json --backing-chain`.
pub fn qemu_img_info(path: &Path) -> serde_json::Value {
    let out = Command::new("qemu-img")
        .args(["info", "--output=json", "--backing-chain", "-U"])
        .arg(path)
        .output()
        .expect("run qemu-img");
    assert!(out.status.success(), "qemu-img info: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("json")
}

/// Asserts `qemu-img check` finds no errors.
pub fn assert_check_clean(path: &Path) {
    let out = Command::new("qemu-img").arg("check").arg(path).output().expect("run qemu-img");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("No errors were found"),
        "qemu-img check {}: {text}{}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs one qemu-io command on a qcow2 image.
pub fn qemu_io(path: &Path, cmd: &str) -> String {
    let out = Command::new("qemu-io").args(["-f", "qcow2", "-c", cmd]).arg(path).output().expect("run qemu-io");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// sha256 of a file, by `sha256sum`.
pub fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().expect("run sha256sum");
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap_or_default().to_owned()
}

/// Names in a directory, sorted.
pub fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// A small tmpfs mounted over `dir`, unmounted on drop.
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    /// 1 MiB.
    pub fn mount(dir: &Path) -> Self {
        Self::mount_mib(dir, 1)
    }

    /// `mib` MiB, `dir` created if needed.
    pub fn mount_mib(dir: &Path, mib: u32) -> Self {
        std::fs::create_dir_all(dir).expect("mount point");
        let size = format!("size={mib}m");
        let out = Command::new("mount").args(["-t", "tmpfs", "-o", &size, "tmpfs"]).arg(dir).output().expect("mount");
        assert!(out.status.success(), "mounting a tmpfs needs root: {}", String::from_utf8_lossy(&out.stderr));
        Self(dir.to_path_buf())
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Fills what space is left with one file, so the next write fails with ENOSPC.
    pub fn fill(&self) {
        use std::io::Write as _;
        let mut f = std::fs::File::create(self.0.join("filler")).expect("filler");
        let block = vec![0u8; 64 * 1024];
        while f.write_all(&block).is_ok() {}
        let small = [0u8; 512];
        while f.write_all(&small).is_ok() {}
        let _ = f.write_all(&[0u8]);
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Types `line` on the VM's serial console (the fixture runs it in its shell), a few
/// bytes at a time: a TCG guest busy with the line editor drops a fast burst.
pub async fn type_line(env: &TestEnv, vm: &str, line: &str) {
    use std::io::Write as _;
    let sock = env.dir.path().join("run").join(vm).join("serial.sock");
    let mut s = std::os::unix::net::UnixStream::connect(sock).expect("serial socket");
    for chunk in format!("\n{line}\n").as_bytes().chunks(4) {
        s.write_all(chunk).expect("type on console");
        tokio::time::sleep(std::time::Duration::from_millis(60)).await;
    }
}

/// Types `line` until `marker` shows up on the console: input typed before the
/// console's shell is up is lost, so a single attempt is not enough.
pub async fn type_until(env: &TestEnv, vm: &str, line: &str, marker: &str) {
    let start = std::time::Instant::now();
    loop {
        type_line(env, vm, line).await;
        let tried = std::time::Instant::now();
        while tried.elapsed() < std::time::Duration::from_secs(10) {
            if env.console(vm).contains(marker) {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        assert!(
            start.elapsed() < crate::common::vm::GUEST_DEADLINE,
            "{marker:?} never appeared after typing {line:?}; console:\n{}",
            env.console(vm)
        );
    }
}
