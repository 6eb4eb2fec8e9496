//! Internal qcow2 snapshots of a VM's disks: create, list, revert, delete. A running
//! VM uses QMP's `snapshot-save` / `snapshot-load` / `snapshot-delete` jobs, with RAM
//! and device state, polled for progress. A stopped VM gets the same jobs from a QEMU
//! started with the VM's own devices and `-S` (the guest never runs): its snapshots
//! hold the machine as at power-on, so reverting to one later, even live, is a fresh
//! boot with the snapshot's disks. Bridged NICs become user-mode ones there: the
//! device state is the same and no tap is needed.

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixListener;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{Value, json};

use super::context::Vm;
use super::views::VmInfo;
use super::{Ops, OpsError, Progress, ProgressFn};
use crate::qemu::{accel, cmdline, launcher};
use crate::qmp::{DEFAULT_TIMEOUT, Qmp, QmpError, qmp};
use crate::spec::{DiskFormat, Media, NetworkMode};
use crate::storage;

/// Longest a snapshot job may run.
const JOB_TIMEOUT: Duration = Duration::from_secs(600);

macro_rules! raw_job {
    ($ty:ident, $name:literal, $ok:ty) => {
        #[derive(Serialize)]
        #[serde(transparent)]
        struct $ty(Value);
        impl qapi::Command for $ty {
            type Ok = $ok;
            const NAME: &'static str = $name;
            const ALLOW_OOB: bool = false;
        }
        impl qapi::qmp::QmpCommand for $ty {}
    };
}

raw_job!(SnapshotSave, "snapshot-save", qapi::Empty);
raw_job!(SnapshotLoad, "snapshot-load", qapi::Empty);
raw_job!(SnapshotDelete, "snapshot-delete", qapi::Empty);
raw_job!(QueryJobs, "query-jobs", Vec<Value>);
raw_job!(JobDismiss, "job-dismiss", qapi::Empty);

/// One snapshot of a VM.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, schemars::JsonSchema)]
pub struct SnapshotEntry {
    pub name: String,
    /// Unix seconds.
    pub created_s: u64,
    /// Bytes of saved RAM and device state.
    pub vm_state_bytes: u64,
    /// Taken while the guest ran (reverting resumes it there); otherwise a power-on state.
    pub live: bool,
}

#[derive(Clone, Copy)]
enum Job {
    Save,
    Load,
    Delete,
}

impl Job {
    fn verb(self) -> &'static str {
        match self {
            Job::Save => "saving",
            Job::Load => "loading",
            Job::Delete => "deleting",
        }
    }
}

fn check_tag(tag: &str) -> Result<(), OpsError> {
    let ok = !tag.is_empty()
        && tag.len() <= 128
        && !tag.chars().all(|c| c.is_ascii_digit())
        && tag.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(OpsError::invalid(
            "snapshot",
            format!("{tag:?} is not a snapshot name: 1-128 letters, digits, '.', '_' or '-', not only digits"),
        ))
    }
}

fn qmp_err(name: &str, what: &'static str) -> impl FnOnce(QmpError) -> OpsError {
    let name = name.to_owned();
    move |source| OpsError::Qmp { name, what, source }
}

/// Runs one snapshot job to its end, reporting QEMU's progress.
async fn run_job(q: &Qmp, job: Job, tag: &str, nodes: &[String], progress: ProgressFn<'_>) -> Result<(), QmpError> {
    let id = format!("kvm-mcp-{}-{}", job.verb(), crate::state::now_ms());
    let mut args = json!({ "job-id": id, "tag": tag, "devices": nodes });
    if !matches!(job, Job::Delete) {
        args["vmstate"] = json!(nodes[0]);
    }
    match job {
        Job::Save => q.execute(SnapshotSave(args), DEFAULT_TIMEOUT).await?,
        Job::Load => q.execute(SnapshotLoad(args), DEFAULT_TIMEOUT).await?,
        Job::Delete => q.execute(SnapshotDelete(args), DEFAULT_TIMEOUT).await?,
    };
    let started = Instant::now();
    let mut step = 0;
    loop {
        let jobs = q.execute(QueryJobs(json!({})), DEFAULT_TIMEOUT).await?;
        let Some(j) = jobs.iter().find(|j| j["id"] == id.as_str()) else {
            return Err(QmpError::Command { command: "query-jobs", message: format!("job {id} vanished") });
        };
        let (cur, total) = (j["current-progress"].as_u64().unwrap_or(0), j["total-progress"].as_u64().unwrap_or(0));
        step += 1;
        progress(Progress {
            step,
            total: None,
            message: format!(
                "{} snapshot {tag:?}: {cur}/{total} ({})",
                job.verb(),
                j["status"].as_str().unwrap_or("?")
            ),
        });
        if j["status"] == "concluded" {
            let _ = q.execute(JobDismiss(json!({ "id": id })), DEFAULT_TIMEOUT).await;
            return match j["error"].as_str() {
                Some(e) => Err(QmpError::Command { command: "snapshot job", message: e.to_owned() }),
                None => Ok(()),
            };
        }
        if started.elapsed() > JOB_TIMEOUT {
            return Err(QmpError::Timeout { command: "snapshot job", secs: JOB_TIMEOUT.as_secs() });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl Ops {
    /// Block nodes of the VM's writable qcow2 disks (what snapshots cover).
    fn snapshot_nodes(vm: &Vm) -> Result<Vec<String>, OpsError> {
        let nodes: Vec<String> = vm
            .spec
            .disks
            .iter()
            .enumerate()
            .filter(|(_, d)| d.media == Media::Disk && d.format == DiskFormat::Qcow2 && !d.readonly)
            .map(|(i, _)| format!("disk{i}"))
            .collect();
        if nodes.is_empty() {
            return Err(OpsError::invalid(
                "name",
                format!("VM {:?} has no writable qcow2 disk to hold snapshots", vm.spec.name.as_str()),
            ));
        }
        Ok(nodes)
    }

    /// The snapshots on the VM's first qcow2 disk.
    ///
    /// # Errors
    /// No qcow2 disk, unreadable image.
    pub fn list_snapshots(&self, name: &str) -> Result<Vec<SnapshotEntry>, OpsError> {
        let vm = self.load(name)?;
        Self::snapshot_nodes(&vm)?;
        Self::snapshots_of(&vm)
    }

    pub(super) fn snapshots_of(vm: &Vm) -> Result<Vec<SnapshotEntry>, OpsError> {
        let Some(d) =
            vm.spec.disks.iter().find(|d| d.media == Media::Disk && d.format == DiskFormat::Qcow2 && !d.readonly)
        else {
            return Ok(vec![]);
        };
        Ok(storage::snapshots(&d.path)
            .map_err(OpsError::storage("disk"))?
            .into_iter()
            .map(|s| SnapshotEntry {
                live: s.vm_clock_ns > 0,
                name: s.name,
                created_s: s.date_sec,
                vm_state_bytes: s.vm_state_bytes,
            })
            .collect())
    }

    /// Saves a snapshot of every writable qcow2 disk, with RAM state when running.
    ///
    /// # Errors
    /// Bad or taken name, QMP job failures.
    pub async fn create_snapshot(
        &self,
        name: &str,
        tag: &str,
        progress: ProgressFn<'_>,
    ) -> Result<SnapshotEntry, OpsError> {
        check_tag(tag)?;
        self.snapshot_job(name, tag, Job::Save, progress).await?;
        let vm = self.load(name)?;
        Self::snapshots_of(&vm)?
            .into_iter()
            .find(|s| s.name == tag)
            .ok_or_else(|| OpsError::invalid("snapshot", format!("QEMU did not record snapshot {tag:?}")))
    }

    /// Returns the VM to a snapshot: disks, and for a running VM its RAM too.
    ///
    /// # Errors
    /// Unknown snapshot, QMP job failures.
    pub async fn revert_snapshot(&self, name: &str, tag: &str, progress: ProgressFn<'_>) -> Result<VmInfo, OpsError> {
        self.snapshot_job(name, tag, Job::Load, progress).await?;
        self.info(name)
    }

    /// Deletes a snapshot from every disk.
    ///
    /// # Errors
    /// Unknown snapshot, QMP job failures.
    pub async fn delete_snapshot(&self, name: &str, tag: &str, progress: ProgressFn<'_>) -> Result<(), OpsError> {
        self.snapshot_job(name, tag, Job::Delete, progress).await
    }

    async fn snapshot_job(&self, name: &str, tag: &str, job: Job, progress: ProgressFn<'_>) -> Result<(), OpsError> {
        let (vm, _lock) = self.load_locked(name).await?;
        let nodes = Self::snapshot_nodes(&vm)?;
        let exists = Self::snapshots_of(&vm)?.iter().any(|s| s.name == tag);
        match (job, exists) {
            (Job::Save, true) => {
                return Err(OpsError::InUse {
                    what: format!("snapshot name {tag:?}"),
                    users: vec![name.into()],
                    hint: "pick another name or delete the old snapshot first".into(),
                });
            }
            (Job::Load | Job::Delete, false) => {
                return Err(OpsError::invalid(
                    "snapshot",
                    format!("VM {name:?} has no snapshot {tag:?}; `list_snapshots` shows them"),
                ));
            }
            _ => {}
        }
        if Self::observe(&vm).status.state.is_active() {
            let q = self.qmp(&vm).await?;
            return run_job(&q, job, tag, &nodes, progress).await.map_err(qmp_err(name, "the snapshot job failed"));
        }
        self.offline_job(&vm, job, tag, &nodes, progress).await
    }

    /// Runs a snapshot job in a QEMU with the VM's devices, started paused (`-S`).
    async fn offline_job(
        &self,
        vm: &Vm,
        job: Job,
        tag: &str,
        nodes: &[String],
        progress: ProgressFn<'_>,
    ) -> Result<(), OpsError> {
        let name = vm.spec.name.to_string();
        let profile = self.profiles.get(&vm.spec.os_variant)?;
        let decision =
            accel::detect(self.cfg.qemu.accel).map_err(|e| OpsError::invalid("qemu.accel", e.to_string()))?;
        let mut spec = crate::provision::install::run_spec(&vm.spec, &vm.paths);
        for n in &mut spec.nics {
            n.mode = NetworkMode::User { port_forwards: Vec::new() };
        }
        let fds = cmdline::FdPlan::standard(0);
        let host = crate::qemu::prepare::host_inputs(&self.cfg, &spec, &vm.paths)
            .await
            .map_err(|e| OpsError::invalid("name", crate::error::chain(&e)))?;
        let mut argv = cmdline::build(&spec, profile, decision.accel, &vm.paths, &fds, &host)
            .map_err(|e| OpsError::invalid("os_variant", e.to_string()))?;
        argv.push("-S".into());
        std::fs::create_dir_all(&vm.paths.run).map_err(OpsError::io("cannot create", &vm.paths.run))?;
        let bind = |p: &std::path::Path| -> Result<OwnedFd, OpsError> {
            let _ = std::fs::remove_file(p);
            UnixListener::bind(p).map(OwnedFd::from).map_err(OpsError::io("cannot bind", p))
        };
        let (qmp_fd, ev_fd) = (bind(&vm.paths.qmp_sock())?, bind(&vm.paths.events_sock())?);
        progress(Progress { step: 0, total: None, message: "starting a paused QEMU for the stopped VM".into() });
        let mut child = launcher::spawn_qemu(
            &self.cfg.qemu.binary,
            &argv,
            &[(&qmp_fd, fds.qmp), (&ev_fd, fds.events)],
            &vm.paths.qemu_log(),
        )
        .map_err(OpsError::io("cannot run", &self.cfg.qemu.binary))?;
        drop((qmp_fd, ev_fd));
        let res = async {
            let q = Qmp::connect(&vm.paths.qmp_sock(), Duration::from_secs(60))
                .await
                .map_err(qmp_err(&name, "the paused QEMU did not answer"))?;
            let r = run_job(&q, job, tag, nodes, progress).await.map_err(qmp_err(&name, "the snapshot job failed"));
            let _ = q.execute(qmp::quit {}, DEFAULT_TIMEOUT).await;
            r
        }
        .await;
        if tokio::time::timeout(Duration::from_secs(30), child.wait()).await.is_err() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
        for p in [vm.paths.qmp_sock(), vm.paths.events_sock(), vm.paths.serial_sock(), vm.paths.qga_sock()] {
            let _ = std::fs::remove_file(p);
        }
        res
    }
}
