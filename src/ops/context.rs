//! The context every operation works in: loading a VM through the store (the VM
//! handle), its mutation lock, the preamble of operations on a running VM (lock, check,
//! adopt an unsupervised QEMU, connect to its monitor), starting its supervisor, the
//! views of a VM (`VmInfo`, `VmSummary`), and the few questions several areas ask
//! (which directories a caller's path may come from, which VMs read an image). Area
//! modules use this module and never each other.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::views::{VmInfo, VmSummary};
use super::{LOCK_TIMEOUT, Ops, OpsError};
use crate::error::ErrorKind;
use crate::fsutil;
use crate::ids::VmName;
use crate::layout::{VMS_DIR, VmPaths};
use crate::lock::{self, FileLock};
use crate::qmp::{DEFAULT_TIMEOUT, Qmp};
use crate::spec::{DiskFormat, Media, VmSpec};
use crate::state::{Status, now_ms};
use crate::storage::{self, AllowedDirs, HostFile, ImageFormat};
use crate::store::{self, Loaded, Store};
use crate::supervise::ready;

pub(crate) use crate::store::{Observed, Vm};

/// How long an operation waits for a supervisor to record the end and exit.
pub(crate) const SUPERVISOR_EXIT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long `start` waits for the supervisor to report QEMU running.
pub(crate) const START_TIMEOUT: Duration = Duration::from_secs(120);

impl Ops {
    /// The store of this configuration's state and run directories.
    pub(crate) fn store(&self) -> Store {
        Store::new(&self.cfg.state_dir, &self.cfg.run_dir).with_cache(self.cache.clone())
    }

    pub(crate) fn paths(&self, name: &VmName) -> VmPaths {
        VmPaths::new(&self.cfg.state_dir, &self.cfg.run_dir, name)
    }

    /// A complete VM; [`OpsError::NotFound`] or [`OpsError::Incomplete`] otherwise.
    pub(crate) fn load(&self, name: &str) -> Result<Vm, OpsError> {
        let name = VmName::new(name)?;
        match self.store().load(&name) {
            Loaded::Defined(vm) => Ok(*vm),
            Loaded::Absent => Err(OpsError::NotFound { name: name.to_string() }),
            Loaded::Incomplete { reason, .. } => Err(OpsError::Incomplete { name: name.to_string(), reason }),
        }
    }

    /// Takes the VM's mutation lock (outside its directory, so a delete holds it to the
    /// end; the file goes when it is released and the VM does not exist).
    pub(crate) async fn lock(&self, vm_name: &str, paths: &VmPaths) -> Result<FileLock, OpsError> {
        let path = paths.lock();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(OpsError::io("cannot create lock directory", dir))?;
        }
        // The lock file goes with its release when the VM does not exist (deleted, a
        // create that failed, a name nobody defined), so names leave no files behind.
        FileLock::acquire(&path, LOCK_TIMEOUT)
            .await
            .map_err(OpsError::io("cannot open lock file", &path))?
            .map(|l| l.remove_unless(&path, &paths.state))
            .ok_or_else(|| OpsError::Busy { name: vm_name.into(), secs: LOCK_TIMEOUT.as_secs() })
    }

    /// Takes the VM's lock, then loads it, so what was loaded cannot change (or vanish)
    /// under the caller.
    pub(crate) async fn load_locked(&self, name: &str) -> Result<(Vm, FileLock), OpsError> {
        let vname = VmName::new(name)?;
        let lock = self.lock(name, &self.paths(&vname)).await?;
        Ok((self.load(name)?, lock))
    }

    /// The VM's status as observed now.
    pub(crate) fn observe(vm: &Vm) -> Observed {
        vm.observe()
    }

    pub(crate) fn info_of(vm: &Vm, obs: &Observed) -> VmInfo {
        let s = &obs.status;
        let active = s.state.is_active();
        VmInfo {
            name: vm.spec.name.to_string(),
            uuid: vm.spec.uuid.to_string(),
            state: s.state,
            reason: s.reason,
            detail: s.detail.clone(),
            since_ms: s.since_ms,
            uptime_s: obs.uptime_s(),
            pid: obs.pid(),
            supervisor_pid: s.supervisor_pid.filter(|_| active && !obs.unsupervised),
            unsupervised: obs.unsupervised,
            unresponsive_s: obs.unresponsive_s(),
            os_variant: vm.spec.os_variant.clone(),
            vcpus: vm.spec.vcpus,
            memory_mib: vm.spec.memory_mib,
            restart_policy: vm.spec.restart_policy,
            expires_in_s: vm.spec.lease.seconds_left(crate::state::now_ms()),
            template: vm.spec.template,
            pool_size: vm.spec.pool.map(|p| p.size),
            pool_of: vm.spec.pool_of.clone(),
            restarts: s.restarts,
            accel: s.accel.clone(),
            exit: s.exit.clone(),
            log_tail: s.log_tail.clone(),
            boot: vm.spec.boot.clone(),
            disks: vm.spec.disks.clone(),
            nics: vm.spec.nics.clone(),
            serial_log: vm.paths.serial_log(),
            state_dir: vm.paths.state.clone(),
            ips: None,
        }
    }

    /// Details of one VM.
    ///
    /// # Errors
    /// [`OpsError::NotFound`].
    pub fn info(&self, name: &str) -> Result<VmInfo, OpsError> {
        let vm = self.load(name)?;
        Ok(Self::info_of(&vm, &Self::observe(&vm)))
    }

    /// Every defined VM, sorted by name. Reads status files only.
    ///
    /// # Errors
    /// The state directory exists but cannot be read.
    pub fn list(&self) -> Result<Vec<VmSummary>, OpsError> {
        let now = crate::state::now_ms();
        self.store()
            .survey(|name, vm| match vm {
                Some((spec, obs)) => VmSummary {
                    name: spec.name.to_string(),
                    state: Some(obs.status.state),
                    vcpus: spec.vcpus,
                    memory_mib: spec.memory_mib,
                    uptime_s: obs.uptime_s(),
                    pid: obs.pid(),
                    unsupervised: obs.unsupervised,
                    unresponsive_s: obs.unresponsive_s(),
                    incomplete: false,
                    expires_in_s: spec.lease.seconds_left(now),
                    template: spec.template,
                    pool_of: spec.pool_of.clone(),
                    lease_ended: spec.lease.ended(now).is_some(),
                },
                None => VmSummary {
                    name: name.to_string(),
                    state: None,
                    vcpus: 0,
                    memory_mib: 0,
                    uptime_s: None,
                    pid: None,
                    unsupervised: false,
                    unresponsive_s: None,
                    incomplete: true,
                    expires_in_s: None,
                    template: false,
                    pool_of: None,
                    lease_ended: false,
                },
            })
            .map_err(OpsError::io("cannot read state directory", self.cfg.state_dir.join(VMS_DIR)))
    }

    /// Starts `kvm-mcp ARGS… NAME` (with this config) in a session of its own, logging to
    /// `log`, and waits up to `timeout` for its start report on the ready pipe. `what`
    /// names the failure to start and the report in errors.
    pub(crate) async fn spawn_background(
        &self,
        mut args: Vec<String>,
        name: &str,
        log: &Path,
        timeout: Duration,
        what: (&'static str, &'static str),
    ) -> Result<ready::Report, OpsError> {
        if let Some(p) = self.cfg.file() {
            args.extend(["--config".into(), p.to_string_lossy().into_owned()]);
        }
        ready::spawn_and_wait(&self.exe, &args, name, log, timeout)
            .await
            .map_err(OpsError::io(what.0, &self.exe))?
            .ok_or_else(|| OpsError::Timeout { name: name.into(), what: what.1, secs: timeout.as_secs() })
    }

    /// Starts a supervisor (adopting a running QEMU when `adopt`) and waits for its report.
    pub(crate) async fn spawn_supervisor(&self, vm: &Vm, adopt: bool) -> Result<(), OpsError> {
        let name = vm.spec.name.to_string();
        std::fs::create_dir_all(&vm.paths.run).map_err(OpsError::io("cannot create run directory", &vm.paths.run))?;
        let mut args = vec!["supervise".to_owned()];
        if adopt {
            args.push("--adopt".into());
        }
        let log = vm.paths.supervisor_log();
        let report = self
            .spawn_background(
                args,
                &name,
                &log,
                START_TIMEOUT,
                ("cannot start supervisor", "the supervisor's start report"),
            )
            .await?;
        if report.ok {
            return Ok(());
        }
        let message = report.message.unwrap_or_else(|| {
            let tail = fsutil::tail_lines(&vm.paths.supervisor_log(), 3).join(" | ");
            format!("the supervisor exited before reporting (see {}): {tail}", vm.paths.supervisor_log().display())
        });
        let kind = report.kind.unwrap_or(ErrorKind::Unavailable);
        Err(OpsError::StartFailed { name, message, log_tail: report.log_tail, kind })
    }

    /// Starts a new supervisor for a QEMU that runs without one.
    pub(crate) async fn ensure_supervised(&self, vm: &Vm, obs: &Observed) -> Result<(), OpsError> {
        if obs.unsupervised {
            tracing::info!(vm = %vm.spec.name, "adopting unsupervised QEMU");
            self.spawn_supervisor(vm, true).await?;
        }
        Ok(())
    }

    /// A monitor connection to a running VM (one command at a time; QEMU serves one
    /// client per monitor).
    pub(crate) async fn qmp(&self, vm: &Vm) -> Result<Qmp, OpsError> {
        Qmp::connect(&vm.paths.qmp_sock(), DEFAULT_TIMEOUT).await.map_err(|source| OpsError::Qmp {
            name: vm.spec.name.to_string(),
            what: "cannot reach QEMU's monitor",
            source,
        })
    }

    /// Locks, checks the VM is active, adopts it if needed: the preamble of every
    /// operation on a running VM.
    pub(crate) async fn running(&self, name: &str) -> Result<(Vm, FileLock, Observed), OpsError> {
        let (vm, lock) = self.load_locked(name).await?;
        let obs = Self::observe(&vm);
        if !obs.status.state.is_active() {
            return Err(OpsError::NotRunning { name: name.into(), state: obs.status.state.to_string() });
        }
        self.ensure_supervised(&vm, &obs).await?;
        Ok((vm, lock, obs))
    }

    /// A VM that has a QEMU process now (no lock taken: these operations change no state).
    pub(crate) fn active(&self, name: &str) -> Result<Vm, OpsError> {
        let vm = self.load(name)?;
        let state = Self::observe(&vm).status.state;
        if !state.is_active() {
            return Err(OpsError::NotRunning { name: name.into(), state: state.to_string() });
        }
        Ok(vm)
    }

    /// Writes a changed definition back.
    pub(crate) fn save_spec(vm: &Vm) -> Result<(), OpsError> {
        vm.save().map_err(OpsError::io("cannot write", vm.paths.spec()))
    }

    /// Refuses when the VM runs: `what` needs it stopped.
    pub(crate) fn stopped(vm: &Vm, what: &'static str) -> Result<(), OpsError> {
        let state = Self::observe(vm).status.state;
        if state.is_active() {
            return Err(OpsError::MustBeStopped { name: vm.spec.name.to_string(), state: state.to_string(), what });
        }
        Ok(())
    }

    /// Waits (bounded) for the supervisor to write the final status and exit.
    pub(crate) async fn wait_supervisor_done(&self, vm: &Vm) -> Observed {
        let deadline = Instant::now() + SUPERVISOR_EXIT_TIMEOUT;
        while lock::is_held(&vm.paths.supervisor_lock()) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Self::observe(vm)
    }

    /// Image directories that exist (`vm.disk_path` is created on demand).
    pub(crate) fn image_dirs(&self) -> Vec<PathBuf> {
        let _ = std::fs::create_dir_all(&self.cfg.vm.disk_path);
        self.cfg.storage.image_dirs(&self.cfg.vm.disk_path).into_iter().filter(|d| d.is_dir()).collect()
    }

    /// ISO directories that exist.
    pub(crate) fn iso_dirs(&self) -> Vec<PathBuf> {
        let _ = std::fs::create_dir_all(&self.cfg.vm.disk_path);
        self.cfg.storage.iso_dirs(&self.cfg.vm.disk_path).into_iter().filter(|d| d.is_dir()).collect()
    }

    /// Kernel and initrd directories that exist.
    pub(crate) fn kernel_dirs(&self) -> Vec<PathBuf> {
        let _ = std::fs::create_dir_all(&self.cfg.vm.disk_path);
        self.cfg.storage.kernel_dirs(&self.cfg.vm.disk_path).into_iter().filter(|d| d.is_dir()).collect()
    }

    /// `dirs` as the host path rule checks them (block devices as configured).
    pub(crate) fn allowed(&self, field: &str, dirs: &[PathBuf]) -> Result<AllowedDirs, OpsError> {
        Ok(AllowedDirs::new(dirs)
            .map_err(OpsError::storage(field))?
            .with_block_devices(self.cfg.storage.allow_block_devices))
    }

    /// Opens a caller's path under the host path rule (inside `dirs`, a regular
    /// file, opened without blocking); a bare name is searched in each directory.
    pub(crate) fn confine_open(&self, field: &str, p: &Path, dirs: &[PathBuf]) -> Result<HostFile, OpsError> {
        let s = p.to_str().ok_or_else(|| OpsError::invalid(field, "the path is not valid UTF-8"))?;
        self.allowed(field, dirs)?.open(s).map_err(OpsError::storage(field))
    }

    /// The real path of a caller's file, checked as [`Ops::confine_open`] checks it.
    pub(crate) fn confine(&self, field: &str, p: &Path, dirs: &[PathBuf]) -> Result<PathBuf, OpsError> {
        self.confine_open(field, p, dirs).map(|f| f.path().to_path_buf())
    }

    /// Runs blocking file work of a request on the blocking pool, under
    /// [`storage::FILE_WORK_DEADLINE`].
    pub(crate) async fn file_work<T, F>(&self, field: &str, what: &'static str, work: F) -> Result<T, OpsError>
    where
        T: Send + 'static,
        F: FnOnce(Ops) -> Result<T, OpsError> + Send + 'static,
    {
        let ops = self.clone();
        storage::with_deadline(what, storage::FILE_WORK_DEADLINE, move || work(ops))
            .await
            .map_err(OpsError::storage(field))?
    }

    /// Every defined VM but `except`, loaded.
    pub(crate) fn other_vms(&self, except: &str) -> Vec<Vm> {
        self.store().defined().into_iter().filter(|vm| vm.spec.name.as_str() != except).collect()
    }

    /// Canonical paths of every image a VM reads: its disks, their backing chains
    /// (resolved under the host path rule, each disk read as its recorded format)
    /// and its CD-ROM media. A chain that breaks the rule counts as its top file
    /// alone; raw files and ISOs are never opened.
    pub(crate) fn images_of(&self, vm: &Vm) -> BTreeSet<PathBuf> {
        let images = self.allowed("disk", &self.image_dirs()).ok();
        let mut out = BTreeSet::new();
        for d in vm.spec.disks.iter().filter(|d| !d.ejected) {
            let chain = match (&images, d.format, d.media) {
                (Some(allowed), DiskFormat::Qcow2, Media::Disk) => {
                    storage::resolve_chain(&d.path, ImageFormat::Qcow2, allowed).ok()
                }
                _ => None,
            };
            match chain {
                Some(chain) => out.extend(chain.into_iter().map(|i| i.path)),
                None => out.extend(std::fs::canonicalize(&d.path).ok()),
            }
        }
        out
    }

    /// Names of the other VMs that read `image` (directly or as a backing file).
    pub(crate) fn users_of(&self, image: &Path, except: &str) -> Vec<String> {
        let Ok(image) = std::fs::canonicalize(image) else { return vec![] };
        self.other_vms(except)
            .into_iter()
            .filter(|vm| self.images_of(vm).contains(&image))
            .map(|vm| vm.spec.name.to_string())
            .collect()
    }

    /// The definitions of every complete VM.
    pub(crate) fn defined_specs(&self) -> Vec<VmSpec> {
        self.store().defined().into_iter().map(|vm| vm.spec).collect()
    }

    /// Creates `<state>/vms/<name>`; [`OpsError::Exists`] when the name is taken (or an
    /// incomplete VM holds it).
    pub(crate) fn make_vm_dir(&self, name: &VmName, paths: &VmPaths) -> Result<(), OpsError> {
        let vms = self.cfg.state_dir.join(VMS_DIR);
        std::fs::create_dir_all(&vms).map_err(OpsError::io("cannot create state directory", &vms))?;
        match std::fs::create_dir(&paths.state) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(OpsError::Exists { name: name.to_string() }),
            Err(e) => Err(OpsError::io("cannot create VM directory", &paths.state)(e)),
        }
    }

    /// Writes the definition and the first status, then ends the create.
    pub(crate) fn commit_definition(paths: &VmPaths, spec: &VmSpec) -> Result<(), OpsError> {
        (|| {
            store::write_spec(paths, spec)?;
            store::write_status(paths, &Status::created(now_ms()))?;
            store::finish_create(paths)
        })()
        .map_err(OpsError::io("cannot write VM definition in", &paths.state))
    }
}
