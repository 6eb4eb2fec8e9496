//! Forks of a running VM: copies that go on from the moment of the fork, not from a
//! boot.
//!
//! Under the VM's lock: QEMU pauses and writes its RAM and device state into a file
//! kvm-mcp opened and hands over (`getfd` + `migrate fd:`, no shell, no path QEMU
//! opens itself), which also flushes the disks and makes QEMU let go of them; that
//! QEMU is then stopped. Each of the VM's own qcow2 disks is frozen: renamed to
//! `<disk>.fork-<id>.qcow2` (nothing has it open, so no process can confuse the two
//! names), and a new overlay on it takes the disk's name, so the original's
//! definition does not change. The original and each copy then resume from the saved
//! state in a new QEMU (`-incoming fd:N`, see `supervise::launch`): the guest does not
//! reboot, only its QEMU process is new. A copy is a linked clone of the frozen layers
//! (new UUID, MACs, seed and host name, as `clone_vm` gives); once its agent answers,
//! the agent moves its NICs to their new MACs and sets its host name, and its new VM
//! generation ID (from the UUID) tells its kernel to reseed its random number
//! generator.
//!
//! A frozen layer belongs to no VM: it is removed with the last VM that reads it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::context::Vm;
use super::lifecycle::StopOptions;
use super::{CloneRequest, Ops, OpsError};
use crate::ids::{VM_NAME_MAX_LEN, VmName};
use crate::qmp::QmpError;
use crate::qmp::fdpass::FdSession;
use crate::spec::{DiskFormat, Media};
use crate::state::VmState;

/// The most copies one fork makes.
pub const MAX_FORK_COUNT: u32 = 16;

/// How long the state may take to save (a large guest under TCG, on a slow disk).
const SAVE_TIMEOUT: Duration = Duration::from_secs(600);

/// How long a copy may take to resume and answer its agent.
const RESUME_TIMEOUT: Duration = Duration::from_secs(120);

/// A fork of a running VM.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ForkRequest {
    /// The running (or paused) VM to fork; it goes on running.
    pub name: String,
    /// How many copies.
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 16))]
    pub count: u32,
    /// Names of the copies (default `<name>-1`, `<name>-2`, …, shortened to fit).
    #[serde(default)]
    pub names: Option<Vec<String>>,
    /// Delete each copy after this many seconds.
    #[serde(default)]
    #[schemars(range(min = 1, max = 2_592_000))]
    pub ttl_s: Option<u64>,
    /// Who the copies' time limit follows (a `run` job); set by front ends only.
    #[serde(skip)]
    #[schemars(skip)]
    pub owner: Option<crate::procid::ProcIdentity>,
}

fn one() -> u32 {
    1
}

/// One copy a fork made.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct ForkCopy {
    pub name: String,
    /// MAC of each NIC.
    pub macs: Vec<String>,
    pub hostname: String,
    /// Resident memory of the copy's QEMU once its agent answered.
    pub rss_bytes: Option<u64>,
    /// Whether the agent took the new MACs and host name (`false`: the guest still
    /// uses the original's; the error says why).
    pub identity_refreshed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity_error: Option<String>,
}

/// What a fork did.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct ForkReport {
    pub source: String,
    pub copies: Vec<ForkCopy>,
    /// How long the original was paused.
    pub paused_ms: u64,
    /// From the request to every copy answering its agent.
    pub total_ms: u64,
    /// Size of the saved RAM and device state (removed once every copy has read it).
    pub state_bytes: u64,
    /// Disk space the fork's new overlays take.
    pub disk_bytes: u64,
}

impl Ops {
    /// Forks a running VM into `count` copies that go on from this moment.
    ///
    /// # Errors
    /// The VM is not running, has no guest agent, uses disks kvm-mcp did not create or
    /// has snapshots; a name is bad or taken; QEMU refused to save its state; a copy did
    /// not resume (copies made so far are deleted; the original always goes on).
    pub async fn fork_vm(&self, req: ForkRequest, cancel: &CancellationToken) -> Result<ForkReport, OpsError> {
        let started = Instant::now();
        if req.count == 0 || req.count > MAX_FORK_COUNT {
            return Err(OpsError::invalid("count", format!("{} is not 1 to {MAX_FORK_COUNT}", req.count)));
        }
        let names = self.copy_names(&req)?;
        let lease = super::create::lease(req.ttl_s, req.owner.clone())?;
        let (vm, lock) = self.load_locked(&req.name).await?;
        self.check_forkable(&vm)?;
        let id = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
        let paused_at = Instant::now();
        let (v, i) = (vm.clone(), id.clone());
        let (state, was_running) =
            tokio::task::spawn_blocking(move || Self::save(&v, &i)).await.map_err(|e| OpsError::Io {
                what: "the fork's worker failed in",
                path: vm.paths.state.clone(),
                source: std::io::Error::other(e),
            })??;
        // The state is saved and QEMU has let go of the disks: this QEMU is done. The
        // original goes on in a new one, from the same state, like its copies.
        let stopped = self.stop_locked(&vm, StopOptions { force: true, timeout: None }, &super::no_progress).await;
        let frozen = stopped.and_then(|_| Self::freeze_disks(&vm, &id));
        let resume_original = crate::store::put_incoming(&vm.paths, &state);
        let (layers, mut made) = (frozen.as_ref().map(Vec::clone).unwrap_or_default(), Vec::new());
        let res = match (frozen, resume_original) {
            (Err(e), _) => Err(e),
            (Ok(_), Err(e)) => Err(OpsError::io("cannot link the saved state for", &vm.paths.state)(e)),
            (Ok(layers), Ok(())) => {
                // The copies: linked clones of the frozen layers, resuming from the state.
                let mut src = vm.clone();
                for (i, layer) in &layers {
                    src.spec.disks[*i].path.clone_from(layer);
                }
                self.make_copies(&src, &names, &state, &lease, &mut made).await
            }
        };
        let state_bytes = std::fs::metadata(&state).map_or(0, |m| m.len());
        crate::store::remove_fork_state(&state);
        drop(lock);
        let original = self.start(&req.name).await;
        if let Err(e) = res {
            self.undo_copies(&made).await;
            return Err(original.err().unwrap_or(e));
        }
        let starts = futures::future::join_all(made.iter().map(|n| self.start(n))).await;
        if let Some(e) = original.err().or_else(|| starts.into_iter().find_map(Result::err)) {
            self.undo_copies(&made).await;
            return Err(e);
        }
        // QEMU keeps the run state it loads (paused, as saved): the copies, and the
        // original when it ran, are resumed once their state is in.
        let resumes =
            made.iter().map(|n| self.resume_loaded(n)).chain(was_running.then(|| self.resume_loaded(&req.name)));
        if let Some(e) = futures::future::join_all(resumes).await.into_iter().find_map(Result::err) {
            self.undo_copies(&made).await;
            return Err(e);
        }
        if was_running && let Err(e) = self.wait_for_agent(&req.name, RESUME_TIMEOUT, cancel).await {
            self.undo_copies(&made).await;
            return Err(e);
        }
        let paused_ms = u64::try_from(paused_at.elapsed().as_millis()).unwrap_or(u64::MAX);
        let settled = futures::future::join_all(made.iter().map(|n| self.settle_copy(n, &vm, cancel))).await;
        let copies = match settled.into_iter().collect::<Result<Vec<_>, _>>() {
            Ok(c) => c,
            Err(e) => {
                self.undo_copies(&made).await;
                return Err(e);
            }
        };
        let disk_bytes = made
            .iter()
            .filter_map(|n| self.load(n).ok())
            .flat_map(|c| crate::store::owned_disks(&c.spec, &c.paths))
            .chain(layers.iter().map(|(i, _)| vm.spec.disks[*i].path.clone()))
            .map(|p| allocated(&p))
            .sum();
        tracing::info!(vm = %req.name, copies = made.len(), paused_ms, "forked");
        Ok(ForkReport {
            source: req.name,
            copies,
            paused_ms,
            total_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            state_bytes,
            disk_bytes,
        })
    }

    /// The copies' names: given, or `<name>-<k>` (the name shortened to fit) skipping
    /// names in use.
    fn copy_names(&self, req: &ForkRequest) -> Result<Vec<String>, OpsError> {
        let count = usize::try_from(req.count).unwrap_or(usize::MAX);
        if let Some(given) = &req.names {
            if given.len() != count {
                return Err(OpsError::invalid("names", format!("{} names for {count} copies", given.len())));
            }
            for n in given {
                let v = VmName::new(n)?;
                if self.store().is_defined(&v) || self.paths(&v).state.exists() {
                    return Err(OpsError::Exists { name: n.clone() });
                }
            }
            let mut sorted = given.clone();
            sorted.sort();
            sorted.dedup();
            if sorted.len() != given.len() {
                return Err(OpsError::invalid("names", "two copies cannot have the same name"));
            }
            return Ok(given.clone());
        }
        let mut out = Vec::with_capacity(count);
        let mut k = 1u32;
        while out.len() < count {
            let suffix = format!("-{k}");
            let keep = VM_NAME_MAX_LEN.saturating_sub(suffix.len()).min(req.name.len());
            let base = req.name.get(..keep).unwrap_or(&req.name).trim_end_matches('-');
            let candidate = format!("{base}{suffix}");
            let v = VmName::new(&candidate)?;
            if !self.store().is_defined(&v) && !self.paths(&v).state.exists() {
                out.push(candidate);
            }
            k += 1;
            if k > 10_000 {
                return Err(OpsError::invalid("names", "no free names for the copies; give them"));
            }
        }
        Ok(out)
    }

    fn check_forkable(&self, vm: &Vm) -> Result<(), OpsError> {
        let name = vm.spec.name.as_str();
        for d in own_disks(vm) {
            if !d.owned || d.format != DiskFormat::Qcow2 || d.readonly {
                return Err(OpsError::invalid(
                    "name",
                    format!(
                        "VM {name:?} has a disk kvm-mcp did not create ({}); only its own qcow2 disks can be frozen for a fork",
                        d.path.display()
                    ),
                ));
            }
        }
        if !Self::snapshots_of(vm)?.is_empty() {
            return Err(OpsError::invalid(
                "name",
                format!("VM {name:?} has snapshots, which would stay in the frozen layer; delete them first"),
            ));
        }
        let state = Self::observe(vm).status.state;
        if !matches!(state, VmState::Running | VmState::Paused) {
            return Err(OpsError::invalid(
                "name",
                format!("VM {name:?} is {state}; a fork needs it running (clone_vm copies a stopped VM)"),
            ));
        }
        if !self.profiles.get(&vm.spec.os_variant)?.devices.guest_agent {
            return Err(OpsError::invalid("name", format!("VM {name:?} has no guest agent channel for its copies")));
        }
        Ok(())
    }

    /// Pauses the VM and saves its RAM and device state; QEMU flushes and lets go of
    /// its disks once the state is out.
    fn save(vm: &Vm, id: &str) -> Result<(PathBuf, bool), OpsError> {
        let name = vm.spec.name.as_str();
        let qmp_err = |what: &'static str| move |source: QmpError| OpsError::Qmp { name: name.into(), what, source };
        let mut q = FdSession::connect(&vm.paths.qmp_sock(), crate::qmp::DEFAULT_TIMEOUT)
            .map_err(qmp_err("cannot reach QEMU's monitor"))?;
        let status = q.execute("query-status", &json!({})).map_err(qmp_err("cannot read its state"))?;
        let was_running = status["running"].as_bool().unwrap_or(false);
        q.execute("stop", &json!({})).map_err(qmp_err("cannot pause it"))?;
        let state = vm.paths.fork_state(id);
        let saved = save_state(&mut q, &state).map_err(qmp_err("cannot save its state"));
        if saved.is_err() && was_running && q.execute("cont", &json!({})).is_err() {
            tracing::error!(vm = %name, "cannot resume the VM after a failed fork");
        }
        saved.map(|()| (state, was_running))
    }

    /// Freezes each of the VM's own disks (no QEMU has them open): the file becomes
    /// the read-only layer `<disk>.fork-<id>.qcow2` and a new overlay on it takes its
    /// name. A failure puts back the disks frozen so far.
    fn freeze_disks(vm: &Vm, id: &str) -> Result<Vec<(usize, PathBuf)>, OpsError> {
        let mut layers: Vec<(usize, PathBuf)> = Vec::new();
        let undo = |layers: &[(usize, PathBuf)]| {
            for (i, layer) in layers {
                let disk = &vm.spec.disks[*i].path;
                let _ = std::fs::remove_file(disk);
                let _ = std::fs::rename(layer, disk);
            }
        };
        for (i, d) in vm.spec.disks.iter().enumerate() {
            if !is_own_disk(vm, d) {
                continue;
            }
            let layer = super::disks::frozen_path(&d.path, id);
            if let Err(e) = std::fs::rename(&d.path, &layer) {
                undo(&layers);
                return Err(OpsError::io("cannot freeze disk", &d.path)(e));
            }
            layers.push((i, layer.clone()));
            if let Err(e) = crate::storage::create_overlay(&d.path, &layer, crate::storage::ImageFormat::Qcow2, None) {
                undo(&layers);
                return Err(OpsError::storage("disk")(e));
            }
        }
        Ok(layers)
    }

    /// Resumes a VM whose QEMU loads a saved state, once the state is in.
    async fn resume_loaded(&self, name: &str) -> Result<(), OpsError> {
        let vm = self.load(name)?;
        let q = self.qmp(&vm).await?;
        let qmp_err = |what: &'static str| move |source: QmpError| OpsError::Qmp { name: name.into(), what, source };
        let end = Instant::now() + RESUME_TIMEOUT;
        loop {
            let s = q.status().await.map_err(qmp_err("cannot read its state"))?;
            match s.status {
                crate::qmp::qmp::RunState::inmigrate if Instant::now() < end => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                crate::qmp::qmp::RunState::inmigrate => {
                    return Err(OpsError::Timeout {
                        name: name.into(),
                        what: "loading the saved state",
                        secs: RESUME_TIMEOUT.as_secs(),
                    });
                }
                _ if s.running => return Ok(()),
                _ => {
                    q.execute(crate::qmp::qmp::cont {}, crate::qmp::DEFAULT_TIMEOUT)
                        .await
                        .map_err(qmp_err("cannot resume it"))?;
                    return Ok(());
                }
            }
        }
    }

    /// Defines the copies (linked clones of `src`, whose disks are the frozen layers),
    /// each to resume from `state`. `made` collects the names defined.
    async fn make_copies(
        &self,
        src: &Vm,
        names: &[String],
        state: &Path,
        lease: &crate::spec::Lease,
        made: &mut Vec<String>,
    ) -> Result<(), OpsError> {
        for n in names {
            let req = CloneRequest {
                source: src.spec.name.to_string(),
                name: n.clone(),
                full: false,
                start: false,
                hostname: None,
                port_forwards: None,
                ttl_s: None,
                owner: None,
            };
            let lease = lease.clone();
            self.define_clone(src, &req, move |spec| spec.lease = lease).await?;
            made.push(n.clone());
            let paths = self.paths(&VmName::new(n)?);
            crate::store::put_incoming(&paths, state)
                .map_err(OpsError::io("cannot link the saved state for", &paths.state))?;
        }
        Ok(())
    }

    async fn undo_copies(&self, made: &[String]) {
        for n in made {
            if let Err(e) = self.delete(n, true).await {
                tracing::warn!(vm = %n, error = %e, "cannot delete a copy of a failed fork");
            }
        }
    }

    /// Waits for a copy's agent, then moves its NICs to their own MACs and sets its
    /// host name.
    async fn settle_copy(&self, name: &str, original: &Vm, cancel: &CancellationToken) -> Result<ForkCopy, OpsError> {
        self.wait_for_agent(name, RESUME_TIMEOUT, cancel).await?;
        let copy = self.load(name)?;
        let hostname = crate::provision::cloudinit::default_hostname(name);
        // sh -c SCRIPT sh HOSTNAME OLD1 NEW1 OLD2 NEW2 …: values are arguments, never code.
        let script = r#"h=$1; shift
while [ $# -ge 2 ]; do
  for d in /sys/class/net/*; do
    [ "$(cat "$d/address" 2>/dev/null)" = "$1" ] && ip link set dev "${d##*/}" address "$2"
  done
  shift 2
done
hostname "$h" 2>/dev/null || echo "$h" > /proc/sys/kernel/hostname
[ -w /etc/hostname ] && echo "$h" > /etc/hostname
command -v networkctl >/dev/null 2>&1 && networkctl renew '*' >/dev/null 2>&1
true"#;
        let mut args = vec!["-c".to_owned(), script.to_owned(), "sh".to_owned(), hostname.clone()];
        for (old, new) in original.spec.nics.iter().zip(&copy.spec.nics) {
            args.push(old.mac.to_string());
            args.push(new.mac.to_string());
        }
        let req = super::GuestExecRequest {
            command: "/bin/sh".into(),
            args,
            stdin: None,
            timeout: Some(Duration::from_secs(30)),
            output_max_bytes: Some(4096),
        };
        let refreshed = self.guest_exec(name, req, &super::no_progress, cancel).await;
        let identity_error = match refreshed {
            Ok(r) if r.exit_code == Some(0) => None,
            Ok(r) => {
                Some(format!("the guest's script ended with {:?}: {}", r.exit_code, crate::error::quote(&r.stderr)))
            }
            Err(e) => Some(crate::error::chain(&e)),
        };
        let rss_bytes = Self::observe(&copy).status.qemu.as_ref().and_then(|p| crate::stats::rss_bytes(p.pid));
        Ok(ForkCopy {
            name: name.to_owned(),
            macs: copy.spec.nics.iter().map(|n| n.mac.to_string()).collect(),
            hostname,
            rss_bytes,
            identity_refreshed: identity_error.is_none(),
            identity_error,
        })
    }
}

/// The VM's writable disks kvm-mcp keeps outside its state directory.
fn own_disks(vm: &Vm) -> impl Iterator<Item = &crate::spec::DiskSpec> {
    vm.spec.disks.iter().filter(|d| is_own_disk(vm, d))
}

fn is_own_disk(vm: &Vm, d: &crate::spec::DiskSpec) -> bool {
    d.media == Media::Disk && !d.ejected && !d.path.starts_with(&vm.paths.state)
}

/// Saves the paused VM's RAM and device state into a new file at `path`, which QEMU
/// gets as a descriptor; the file is removed when the save fails.
fn save_state(q: &mut FdSession, path: &Path) -> Result<(), QmpError> {
    use std::os::fd::AsFd;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| QmpError::Io { command: "migrate", source };
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(io)?;
    let res = (|| {
        // The VM is paused: nothing is gained by throttling the one pass.
        q.execute("migrate-set-parameters", &json!({ "max-bandwidth": 64u64 << 30 }))?;
        q.send_fd("kvm-mcp-fork", file.as_fd())?;
        q.execute("migrate", &json!({ "uri": "fd:kvm-mcp-fork" }))?;
        let end = Instant::now() + SAVE_TIMEOUT;
        loop {
            let m = q.execute("query-migrate", &json!({}))?;
            match m["status"].as_str() {
                Some("completed") => return Ok(()),
                Some(s @ ("failed" | "cancelled")) => {
                    let why = m["error-desc"].as_str().unwrap_or(s).to_owned();
                    return Err(QmpError::Command { command: "migrate", message: why });
                }
                _ if Instant::now() > end => {
                    let _ = q.execute("migrate_cancel", &json!({}));
                    return Err(QmpError::Timeout { command: "migrate", secs: SAVE_TIMEOUT.as_secs() });
                }
                _ => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(path);
    }
    res
}

/// Bytes a file takes on disk.
fn allocated(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(p).map_or(0, |m| m.blocks() * 512)
}

#[cfg(test)]
mod tests {
    use super::super::disks::{frozen_path, is_frozen_layer};
    use super::*;

    #[test]
    fn frozen_layers_are_named_beside_their_disk_and_recognised() {
        let p = frozen_path(Path::new("/var/lib/kvm-mcp/disks/web.qcow2"), "0a1b2c3d");

        assert_eq!(p, Path::new("/var/lib/kvm-mcp/disks/web.fork-0a1b2c3d.qcow2"));
        assert!(is_frozen_layer(&p));
        assert!(!is_frozen_layer(Path::new("/var/lib/kvm-mcp/disks/web-disk1.qcow2")));
    }
}
