//! Test helpers: QEMU's tools as the oracle, and a small tmpfs for
//! out-of-space tests. Tests that need them fail (never skip) when the tools
//! or root are missing.

#![allow(clippy::disallowed_methods)] // tests run qemu-img, qemu-io and mount directly

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} (install qemu-utils): {e}"))
}

fn stdout_of(program: &str, args: &[&str]) -> String {
    let out = run(program, args);
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `qemu-img` and returns its stdout; panics on failure.
pub(crate) fn qemu_img(args: &[&str]) -> String {
    stdout_of("qemu-img", args)
}

/// `qemu-img info --output=json --backing-chain`, always an array.
pub(crate) fn qemu_img_info(path: &Path) -> serde_json::Value {
    let out = qemu_img(&["info", "--output=json", "--backing-chain", path.to_str().expect("utf-8 test path")]);
    serde_json::from_str(&out).expect("qemu-img info output is JSON")
}

/// Asserts `qemu-img check` exits 0 and reports no errors.
pub(crate) fn assert_check_clean(path: &Path) {
    let out = run("qemu-img", &["check", path.to_str().expect("utf-8 test path")]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("No errors were found"),
        "qemu-img check {} failed: {}\n{stdout}{}",
        path.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs one `qemu-io` command on a qcow2 image and returns its stdout.
pub(crate) fn qemu_io(path: &Path, command: &str) -> String {
    let out = stdout_of("qemu-io", &["-f", "qcow2", "-c", command, path.to_str().expect("utf-8 test path")]);
    assert!(!out.contains("Pattern verification failed"), "{out}");
    out
}

/// Names in `dir`, sorted.
pub(crate) fn dir_entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("readable directory")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// A 1 MiB tmpfs mounted on a fresh temporary directory, unmounted on drop
/// (also when the test panics). Needs root.
pub(crate) struct SmallTmpfs {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
}

impl SmallTmpfs {
    pub(crate) fn mount() -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().to_path_buf();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
            .arg(&path)
            .output()
            .expect("cannot run mount");
        assert!(out.status.success(), "mounting a tmpfs needs root: {}", String::from_utf8_lossy(&out.stderr));
        Self { dir: Some(dir), path }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SmallTmpfs {
    fn drop(&mut self) {
        let status = Command::new("umount").arg(&self.path).status();
        if !matches!(status, Ok(s) if s.success()) {
            eprintln!("cannot unmount {}: {status:?}", self.path.display());
            // Leave the directory alone rather than delete into the mount.
            std::mem::forget(self.dir.take());
        }
    }
}

/// A `qemu-io` process holding an image open (and so its QEMU locks), in
/// its own process group, killed and reaped on drop.
pub(crate) struct QemuHolding {
    child: std::process::Child,
}

impl QemuHolding {
    /// Starts `qemu-io` on `path` and waits (up to 5 s) until it holds
    /// QEMU's locks.
    pub(crate) fn start(path: &Path) -> Self {
        use std::os::unix::process::CommandExt;
        let child = Command::new("qemu-io")
            .args(["-f", "qcow2", "-c", "sleep 30000"])
            .arg(path)
            .process_group(0)
            .stdin(std::process::Stdio::null())
            .spawn()
            .expect("cannot run qemu-io (install qemu-utils)");
        let holding = Self { child };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !qemu_lock_held(path) {
            assert!(std::time::Instant::now() < deadline, "qemu-io never locked");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        holding
    }
}

impl Drop for QemuHolding {
    fn drop(&mut self) {
        let pgid = nix::unistd::Pid::from_raw(self.child.id().cast_signed());
        let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

/// Whether some process holds a lock on QEMU's lock bytes of `path`.
fn qemu_lock_held(path: &Path) -> bool {
    let file = std::fs::File::open(path).expect("image exists");
    let mut lock = libc::flock {
        l_type: libc::F_WRLCK as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: 100,
        l_len: 200,
        l_pid: 0,
    };
    nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_OFD_GETLK(&mut lock)).expect("F_OFD_GETLK");
    lock.l_type != libc::F_UNLCK as libc::c_short
}
