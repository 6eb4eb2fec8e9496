//! VM lifecycle operations: create, start, stop, reboot, pause, resume, delete, list,
//! info and adopt.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};

use super::ip::VmIps;
use super::net::NicRequest;
use super::{LOCK_TIMEOUT, Ops, OpsError, Progress, ProgressFn, no_progress};
use crate::config::{MAX_MEMORY_MIB, MAX_VCPUS, MIN_MEMORY_MIB};
use crate::fsutil;
use crate::ids::VmName;
use crate::layout::{VMS_DIR, VmPaths};
use crate::lock::{self, FileLock};
use crate::network::PortForward;
use crate::procid::Liveness;
use crate::qmp::{DEFAULT_TIMEOUT, Qmp, qmp};
use crate::ready;
use crate::spec::{Boot, DiskSpec, NicSpec, RestartPolicy, SPEC_VERSION, VmSpec};
use crate::state::{ExitInfo, Reason, Status, VmState, now_ms};
use crate::supervisor::qemu_liveness;

/// How long `start` waits for the supervisor to report QEMU running.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// Interval between ACPI power button presses during a graceful stop.
const PRESS_INTERVAL: Duration = Duration::from_secs(3);
/// Time each forcing step (QMP quit, SIGTERM, SIGKILL) gets before the next.
const FORCE_STEP: Duration = Duration::from_secs(10);

/// Where a new VM's disk comes from.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DiskSource {
    /// Use this existing image as it is (qcow2 or raw); it must lie in an image directory.
    Existing(PathBuf),
    /// A new qcow2 overlay on this master image (name or path inside the image
    /// directories; `null`: `vm.default_master_image`), grown to `disk_size_gib`.
    Master(Option<PathBuf>),
    /// A blank disk of `disk_size_gib` plus this ISO (inside the ISO directories; `null`:
    /// `vm.default_iso`) on a CD-ROM that boots first until the installer reboots or
    /// powers off.
    Install(Option<PathBuf>),
    /// A blank disk of `disk_size_gib`.
    Blank,
}

/// Everything `create` accepts; unset fields come from `config.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CreateRequest {
    pub name: Option<String>,
    pub memory_mib: Option<u64>,
    pub vcpus: Option<u32>,
    pub os_variant: Option<String>,
    pub disk: Option<DiskSource>,
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub cmdline: Option<String>,
    /// One NIC: `"user"`, `"none"` or a bridge name (default `vm.default_network`).
    pub network: Option<String>,
    /// Port forwards of that NIC when it is `"user"`.
    #[serde(default)]
    pub port_forwards: Vec<PortForward>,
    /// Several NICs, each on its own bridge or user mode; instead of `network`.
    #[serde(default)]
    pub nics: Vec<NicRequest>,
    pub restart_policy: Option<RestartPolicy>,
    /// Start it once defined.
    #[serde(default)]
    pub start: bool,
    /// Size of a new disk (overlay, blank, install) in GiB; `vm.default_disk_size` if unset.
    #[serde(default)]
    pub disk_size_gib: Option<u64>,
    /// A cloud-init NoCloud seed disk with these settings.
    #[serde(default)]
    pub cloud_init: Option<crate::provision::cloudinit::CloudInitRequest>,
    /// Ignition overrides of `vm.ignition.*` (Fedora CoreOS profiles get a config anyway).
    #[serde(default)]
    pub ignition: Option<crate::provision::ignition::IgnitionRequest>,
}

/// Options of `stop`.
#[derive(Debug, Clone, Copy, Default)]
pub struct StopOptions {
    /// Skip the power button: QMP quit, then SIGTERM, then SIGKILL.
    pub force: bool,
    /// How long to press the power button before forcing; the config's default if unset.
    pub timeout: Option<Duration>,
}

/// One line of `list`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, schemars::JsonSchema)]
pub struct VmSummary {
    pub name: String,
    /// `None` when the VM's definition is incomplete (an interrupted create).
    pub state: Option<VmState>,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub uptime_s: Option<u64>,
    /// QEMU's pid while active.
    pub pid: Option<i32>,
    /// QEMU runs but no supervisor watches it; the next operation adopts it.
    pub unsupervised: bool,
    /// Definition incomplete; `delete` removes it.
    pub incomplete: bool,
}

/// Everything known about one VM.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct VmInfo {
    pub name: String,
    pub uuid: String,
    pub state: VmState,
    pub reason: Reason,
    pub detail: Option<String>,
    /// Unix milliseconds of the last transition.
    pub since_ms: u64,
    pub uptime_s: Option<u64>,
    pub pid: Option<i32>,
    pub supervisor_pid: Option<i32>,
    pub unsupervised: bool,
    pub os_variant: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub restart_policy: RestartPolicy,
    pub restarts: u32,
    pub accel: Option<String>,
    pub exit: Option<ExitInfo>,
    pub log_tail: Vec<String>,
    pub boot: Boot,
    pub disks: Vec<DiskSpec>,
    pub nics: Vec<NicSpec>,
    pub serial_log: PathBuf,
    pub state_dir: PathBuf,
    /// Guest addresses, filled by [`Ops::info_live`] for a running VM.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ips: Option<VmIps>,
}

/// A defined VM, loaded.
#[derive(Debug, Clone)]
pub(crate) struct Vm {
    pub spec: VmSpec,
    pub paths: VmPaths,
}

/// Status as observed now: the file, corrected by what `/proc` and the locks say.
#[derive(Debug, Clone)]
pub(crate) struct Observed {
    pub status: Status,
    pub unsupervised: bool,
}

fn read_json<T: serde::de::DeserializeOwned>(p: &Path) -> Option<T> {
    std::fs::read(p).ok().and_then(|b| serde_json::from_slice(&b).ok())
}

impl Ops {
    fn paths(&self, name: &VmName) -> VmPaths {
        VmPaths::new(&self.cfg.state_dir, &self.cfg.run_dir, name)
    }

    pub(crate) fn load(&self, name: &str) -> Result<Vm, OpsError> {
        let name = VmName::new(name)?;
        let paths = self.paths(&name);
        match read_json::<VmSpec>(&paths.spec()) {
            Some(spec) if !paths.creating().exists() => Ok(Vm { spec, paths }),
            _ => Err(OpsError::NotFound { name: name.to_string() }),
        }
    }

    pub(crate) async fn lock(&self, vm_name: &str, paths: &VmPaths) -> Result<FileLock, OpsError> {
        FileLock::acquire(&paths.lock(), LOCK_TIMEOUT)
            .await
            .map_err(OpsError::io("cannot open lock file", paths.lock()))?
            .ok_or_else(|| OpsError::Busy { name: vm_name.into(), secs: LOCK_TIMEOUT.as_secs() })
    }

    pub(crate) fn observe(vm: &Vm) -> Observed {
        let mut status =
            read_json::<Status>(&vm.paths.status()).unwrap_or_else(|| Status::created(vm.spec.created_at * 1000));
        let mut unsupervised = false;
        if status.state.is_active() {
            let sup_alive = lock::is_held(&vm.paths.supervisor_lock());
            match qemu_liveness(&status, &vm.spec) {
                Liveness::Alive => unsupervised = !sup_alive,
                Liveness::Dead | Liveness::Reused if !sup_alive => {
                    status.state = VmState::Crashed;
                    status.reason = Reason::Unsupervised;
                    status.detail = Some("QEMU exited while no supervisor was watching it".into());
                    status.qemu = None;
                    status.log_tail = fsutil::tail_lines(&vm.paths.qemu_log(), crate::supervisor::LOG_TAIL_LINES);
                }
                _ => {}
            }
        }
        Observed { status, unsupervised }
    }

    fn info_of(vm: &Vm, obs: &Observed) -> VmInfo {
        let s = &obs.status;
        let active = s.state.is_active();
        VmInfo {
            name: vm.spec.name.to_string(),
            uuid: vm.spec.uuid.to_string(),
            state: s.state,
            reason: s.reason,
            detail: s.detail.clone(),
            since_ms: s.since_ms,
            uptime_s: s.started_at_ms.filter(|_| active).map(|t| now_ms().saturating_sub(t) / 1000),
            pid: s.qemu.as_ref().filter(|_| active).map(|q| q.pid),
            supervisor_pid: s.supervisor_pid.filter(|_| active && !obs.unsupervised),
            unsupervised: obs.unsupervised,
            os_variant: vm.spec.os_variant.clone(),
            vcpus: vm.spec.vcpus,
            memory_mib: vm.spec.memory_mib,
            restart_policy: vm.spec.restart_policy,
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

    /// Defines a VM (and starts it when asked).
    ///
    /// # Errors
    /// Invalid fields (named), a taken name, or a failed start.
    pub async fn create(&self, req: CreateRequest) -> Result<VmInfo, OpsError> {
        let d = &self.cfg.vm;
        let name = VmName::new(req.name.as_deref().unwrap_or(&d.default_name))?;
        let os_variant = req.os_variant.clone().unwrap_or_else(|| d.default_os_variant.clone());
        self.profiles.get(&os_variant)?;
        let memory_mib = req.memory_mib.unwrap_or(d.default_memory_mib);
        if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&memory_mib) {
            return Err(OpsError::invalid(
                "memory_mib",
                format!("{memory_mib} is outside {MIN_MEMORY_MIB}..={MAX_MEMORY_MIB} MiB"),
            ));
        }
        let vcpus = req.vcpus.unwrap_or(d.default_vcpus);
        if !(1..=MAX_VCPUS).contains(&vcpus) {
            return Err(OpsError::invalid("vcpus", format!("{vcpus} is outside 1..={MAX_VCPUS}")));
        }
        let boot = match (&req.kernel, &req.initrd) {
            (Some(k), initrd) => Boot::Kernel {
                kernel: self.confine("kernel", k, &self.kernel_dirs())?,
                initrd: initrd.as_deref().map(|i| self.confine("initrd", i, &self.kernel_dirs())).transpose()?,
                cmdline: req.cmdline.clone(),
            },
            (None, Some(_)) => return Err(OpsError::invalid("initrd", "an initrd needs a kernel; pass kernel too")),
            (None, None) => Boot::Disk,
        };
        let profile = self.profiles.get(&os_variant)?.clone();
        let plan = self.plan_disks_bounded(&req, &name, &profile, matches!(boot, Boot::Disk)).await?;
        let disks = plan.disks.clone();
        if disks.is_empty() && matches!(boot, Boot::Disk) {
            return Err(OpsError::invalid(
                "disk",
                "nothing to boot: pass disk (an existing qcow2 or raw image) or kernel (with initrd) for direct boot",
            ));
        }
        let uuid = uuid::Uuid::new_v4();
        let nics = self.plan_nics(req.network.as_deref(), &req.port_forwards, &req.nics, &uuid)?;
        let prov = self.plan_provisioning(&req, &profile, name.as_str(), &uuid, &nics)?;
        let mut spec = VmSpec {
            version: SPEC_VERSION,
            name: name.clone(),
            uuid,
            created_at: now_ms() / 1000,
            os_variant,
            memory_mib,
            vcpus,
            boot,
            disks,
            nics,
            restart_policy: req.restart_policy.unwrap_or_default(),
            template: false,
            ignition: None,
            uefi: None,
            install_boot: false,
        };
        let paths = self.paths(&name);
        let vms = self.cfg.state_dir.join(VMS_DIR);
        std::fs::create_dir_all(&vms).map_err(OpsError::io("cannot create state directory", &vms))?;
        match std::fs::create_dir(&paths.state) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(OpsError::Exists { name: name.to_string() });
            }
            Err(e) => return Err(OpsError::io("cannot create VM directory", &paths.state)(e)),
        }
        if let Err(e) = Self::write_disks(&plan, &paths) {
            let _ = std::fs::remove_dir_all(&paths.state);
            return Err(e);
        }
        if let Err(e) = Self::write_provisioning(&prov, &mut spec, &paths) {
            plan.discard();
            let _ = std::fs::remove_dir_all(&paths.state);
            return Err(e);
        }
        let written = (|| {
            fsutil::write_json_atomic(&paths.spec(), &spec)?;
            fsutil::write_json_volatile(&paths.status(), &Status::created(now_ms()))?;
            std::fs::remove_file(paths.creating())
        })();
        if let Err(e) = written {
            plan.discard();
            let _ = std::fs::remove_dir_all(&paths.state);
            return Err(OpsError::io("cannot write VM definition in", &paths.state)(e));
        }
        tracing::info!(vm = %name, "defined");
        if req.start {
            return self.start(name.as_str()).await;
        }
        self.info(name.as_str())
    }

    /// Details of one VM.
    ///
    /// # Errors
    /// [`OpsError::NotFound`].
    pub fn info(&self, name: &str) -> Result<VmInfo, OpsError> {
        let vm = self.load(name)?;
        Ok(Self::info_of(&vm, &Self::observe(&vm)))
    }

    /// Like [`Ops::info`], plus the guest's addresses discovered now (one pass over the
    /// sources of [`Ops::get_vm_ip`], no waiting) when the VM runs.
    ///
    /// # Errors
    /// [`OpsError::NotFound`].
    pub async fn info_live(&self, name: &str) -> Result<VmInfo, OpsError> {
        let vm = self.load(name)?;
        let obs = Self::observe(&vm);
        let mut info = Self::info_of(&vm, &obs);
        if obs.status.state.is_active() && !vm.spec.nics.is_empty() {
            info.ips = Some(self.discover(&vm, false, super::ip::AGENT_SYNC_TIMEOUT_QUICK).await);
        }
        Ok(info)
    }

    /// Every defined VM, sorted by name. Reads status files only.
    ///
    /// # Errors
    /// The state directory exists but cannot be read.
    pub fn list(&self) -> Result<Vec<VmSummary>, OpsError> {
        let dir = self.cfg.state_dir.join(VMS_DIR);
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => return Err(OpsError::io("cannot read state directory", &dir)(e)),
        };
        let mut out: Vec<VmSummary> = rd
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter_map(|n| VmName::new(&n).ok())
            .map(|name| match self.load(name.as_str()) {
                Ok(vm) => {
                    let obs = Self::observe(&vm);
                    let i = Self::info_of(&vm, &obs);
                    VmSummary {
                        name: i.name,
                        state: Some(i.state),
                        vcpus: i.vcpus,
                        memory_mib: i.memory_mib,
                        uptime_s: i.uptime_s,
                        pid: i.pid,
                        unsupervised: i.unsupervised,
                        incomplete: false,
                    }
                }
                Err(_) => VmSummary {
                    name: name.to_string(),
                    state: None,
                    vcpus: 0,
                    memory_mib: 0,
                    uptime_s: None,
                    pid: None,
                    unsupervised: false,
                    incomplete: true,
                },
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Like [`Ops::list`], but asks each running QEMU for its status over QMP.
    ///
    /// # Errors
    /// See [`Ops::list`].
    pub async fn list_live(&self) -> Result<Vec<VmSummary>, OpsError> {
        let mut out = self.list()?;
        for s in out.iter_mut().filter(|s| s.state.is_some_and(VmState::is_active)) {
            let sock = self.paths(&VmName::new(&s.name)?).qmp_sock();
            if let Ok(q) = Qmp::connect(&sock, DEFAULT_TIMEOUT).await
                && let Ok(st) = q.status().await
            {
                s.state = Some(if st.running { VmState::Running } else { VmState::Paused });
            }
        }
        Ok(out)
    }

    /// Starts a supervisor (adopting a running QEMU when `adopt`) and waits for its report.
    async fn spawn_supervisor(&self, vm: &Vm, adopt: bool) -> Result<(), OpsError> {
        let name = vm.spec.name.to_string();
        std::fs::create_dir_all(&vm.paths.run).map_err(OpsError::io("cannot create run directory", &vm.paths.run))?;
        let mut args = vec!["supervise".to_owned(), name.clone()];
        if adopt {
            args.push("--adopt".into());
        }
        if let Some(p) = self.cfg.file() {
            args.extend(["--config".into(), p.to_string_lossy().into_owned()]);
        }
        let report = ready::spawn_and_wait(&self.exe, &args, &vm.paths.supervisor_log(), START_TIMEOUT)
            .await
            .map_err(OpsError::io("cannot start supervisor", &self.exe))?
            .ok_or_else(|| OpsError::Timeout {
                name: name.clone(),
                what: "the supervisor's start report",
                secs: START_TIMEOUT.as_secs(),
            })?;
        if report.ok {
            return Ok(());
        }
        let message = report.message.unwrap_or_else(|| {
            let tail = fsutil::tail_lines(&vm.paths.supervisor_log(), 3).join(" | ");
            format!("the supervisor exited before reporting (see {}): {tail}", vm.paths.supervisor_log().display())
        });
        Err(OpsError::StartFailed { name, message, log_tail: report.log_tail })
    }

    /// Starts a new supervisor for a QEMU that runs without one.
    pub(crate) async fn ensure_supervised(&self, vm: &Vm, obs: &Observed) -> Result<(), OpsError> {
        if obs.unsupervised {
            tracing::info!(vm = %vm.spec.name, "adopting unsupervised QEMU");
            self.spawn_supervisor(vm, true).await?;
        }
        Ok(())
    }

    /// Starts a defined VM and waits until QEMU runs.
    ///
    /// # Errors
    /// [`OpsError::AlreadyRunning`], [`OpsError::StartFailed`] with QEMU's last log lines.
    pub async fn start(&self, name: &str) -> Result<VmInfo, OpsError> {
        let vm = self.load(name)?;
        let _lock = self.lock(name, &vm.paths).await?;
        let obs = Self::observe(&vm);
        if obs.status.state.is_active() {
            self.ensure_supervised(&vm, &obs).await?;
            return Err(OpsError::AlreadyRunning { name: name.into() });
        }
        self.check_startable(&vm).await?;
        if let Err(e) = self.spawn_supervisor(&vm, false).await {
            // Let the supervisor record the failure before anyone looks.
            self.wait_supervisor_done(&vm).await;
            return Err(e);
        }
        tracing::info!(vm = %name, "started");
        Ok(Self::info_of(&vm, &Self::observe(&vm)))
    }

    /// Re-attaches a supervisor to a VM whose supervisor died.
    ///
    /// # Errors
    /// [`OpsError::NotRunning`] when there is no QEMU to adopt.
    pub async fn adopt(&self, name: &str) -> Result<VmInfo, OpsError> {
        let vm = self.load(name)?;
        let _lock = self.lock(name, &vm.paths).await?;
        let obs = Self::observe(&vm);
        if !obs.status.state.is_active() {
            return Err(OpsError::NotRunning { name: name.into(), state: obs.status.state.to_string() });
        }
        self.ensure_supervised(&vm, &obs).await?;
        Ok(Self::info_of(&vm, &Self::observe(&vm)))
    }

    pub(crate) async fn qmp(&self, vm: &Vm) -> Result<Qmp, OpsError> {
        Qmp::connect(&vm.paths.qmp_sock(), DEFAULT_TIMEOUT).await.map_err(|source| OpsError::Qmp {
            name: vm.spec.name.to_string(),
            what: "cannot reach QEMU's monitor",
            source,
        })
    }

    /// Locks, checks the VM is active, adopts it if needed: the preamble of every
    /// operation on a running VM.
    async fn running(&self, name: &str) -> Result<(Vm, FileLock, Observed), OpsError> {
        let vm = self.load(name)?;
        let lock = self.lock(name, &vm.paths).await?;
        let obs = Self::observe(&vm);
        if !obs.status.state.is_active() {
            return Err(OpsError::NotRunning { name: name.into(), state: obs.status.state.to_string() });
        }
        self.ensure_supervised(&vm, &obs).await?;
        Ok((vm, lock, obs))
    }

    /// Waits until the supervisor has recorded a state satisfying `want`.
    async fn wait_status(vm: &Vm, want: impl Fn(VmState) -> bool, timeout: Duration) -> Observed {
        let deadline = Instant::now() + timeout;
        loop {
            let obs = Self::observe(vm);
            if want(obs.status.state) || Instant::now() >= deadline {
                return obs;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Runs one QMP command on a running VM and waits for the supervisor to record `want`.
    async fn qmp_to_state<C>(&self, name: &str, cmd: C, what: &'static str, want: VmState) -> Result<VmInfo, OpsError>
    where
        C: qmp::QmpCommand + qapi::Command,
    {
        let (vm, _lock, _) = self.running(name).await?;
        let q = self.qmp(&vm).await?;
        q.execute(cmd, DEFAULT_TIMEOUT).await.map_err(|source| OpsError::Qmp { name: name.into(), what, source })?;
        let obs = Self::wait_status(&vm, |s| s == want, Duration::from_secs(5)).await;
        Ok(Self::info_of(&vm, &obs))
    }

    /// Pauses the vCPUs.
    ///
    /// # Errors
    /// Not running, or QMP failed.
    pub async fn pause(&self, name: &str) -> Result<VmInfo, OpsError> {
        self.qmp_to_state(name, qmp::stop {}, "pause failed", VmState::Paused).await
    }

    /// Resumes paused vCPUs.
    ///
    /// # Errors
    /// Not running, or QMP failed.
    pub async fn resume(&self, name: &str) -> Result<VmInfo, OpsError> {
        self.qmp_to_state(name, qmp::cont {}, "resume failed", VmState::Running).await
    }

    /// Resets the VM (like pressing the reset button); the guest boots again.
    ///
    /// # Errors
    /// Not running, or QMP failed.
    pub async fn reboot(&self, name: &str) -> Result<VmInfo, OpsError> {
        let (vm, _lock, obs) = self.running(name).await?;
        let q = self.qmp(&vm).await?;
        q.execute(qmp::system_reset {}, DEFAULT_TIMEOUT).await.map_err(|source| OpsError::Qmp {
            name: name.into(),
            what: "reset failed",
            source,
        })?;
        if obs.status.state == VmState::Paused {
            let _ = q.execute(qmp::cont {}, DEFAULT_TIMEOUT).await;
        }
        Ok(Self::info_of(&vm, &Self::observe(&vm)))
    }

    /// Stops a VM: power button pressed every few seconds until the guest is off or the
    /// timeout passes, then forced (QMP `quit`, SIGTERM, SIGKILL). Stopping a stopped
    /// VM succeeds and changes nothing.
    ///
    /// # Errors
    /// The VM could not be stopped even by SIGKILL, or locking failed.
    pub async fn stop(&self, name: &str, opts: StopOptions, progress: ProgressFn<'_>) -> Result<VmInfo, OpsError> {
        let vm = self.load(name)?;
        let _lock = self.lock(name, &vm.paths).await?;
        self.stop_locked(&vm, opts, progress).await
    }

    async fn stop_locked(&self, vm: &Vm, opts: StopOptions, progress: ProgressFn<'_>) -> Result<VmInfo, OpsError> {
        let name = vm.spec.name.to_string();
        let obs = Self::observe(vm);
        if !obs.status.state.is_active() {
            return Ok(Self::info_of(vm, &obs));
        }
        // Someone must record the final state.
        self.ensure_supervised(vm, &obs).await?;
        std::fs::create_dir_all(&vm.paths.run).map_err(OpsError::io("cannot create run directory", &vm.paths.run))?;
        std::fs::write(vm.paths.stop_intent(), b"")
            .map_err(OpsError::io("cannot record stop request in", vm.paths.stop_intent()))?;
        let Some(pidfd) = obs.status.qemu.as_ref().and_then(|q| q.open_verified(&vm.spec.uuid.to_string())) else {
            // Already gone: let the supervisor finish.
            let obs = self.wait_supervisor_done(vm).await;
            return Ok(Self::info_of(vm, &obs));
        };
        let timeout = opts.timeout.unwrap_or(Duration::from_secs(self.cfg.qemu.stop_timeout_s));
        let mut step = 0;
        let mut exited = false;
        if !opts.force {
            let deadline = Instant::now() + timeout;
            if obs.status.state == VmState::Paused
                && let Ok(q) = self.qmp(vm).await
            {
                let _ = q.execute(qmp::cont {}, DEFAULT_TIMEOUT).await;
            }
            while Instant::now() < deadline {
                step += 1;
                progress(Progress { step, total: None, message: format!("pressing the power button (press {step})") });
                if let Ok(q) = self.qmp(vm).await {
                    let _ = q.execute(qmp::system_powerdown {}, DEFAULT_TIMEOUT).await;
                }
                self.agent_shutdown_fallback(vm, step, progress).await;
                let left = deadline.saturating_duration_since(Instant::now());
                if pidfd.wait_exit(PRESS_INTERVAL.min(left)).await {
                    exited = true;
                    break;
                }
            }
        }
        if !exited {
            progress(Progress { step: step + 1, total: None, message: "forcing: QMP quit".into() });
            if let Ok(q) = self.qmp(vm).await {
                let _ = q.execute(qmp::quit {}, DEFAULT_TIMEOUT).await;
            }
            exited = pidfd.wait_exit(FORCE_STEP).await;
        }
        for sig in [Signal::SIGTERM, Signal::SIGKILL] {
            if exited {
                break;
            }
            progress(Progress { step: step + 2, total: None, message: format!("forcing: {}", sig.as_str()) });
            tracing::warn!(vm = %name, signal = sig.as_str(), "QEMU did not exit; signalling");
            let _ = pidfd.signal(sig);
            exited = pidfd.wait_exit(FORCE_STEP).await;
        }
        if !exited {
            return Err(OpsError::Timeout { name, what: "QEMU's exit after SIGKILL", secs: FORCE_STEP.as_secs() });
        }
        let obs = self.wait_supervisor_done(vm).await;
        tracing::info!(vm = %name, state = %obs.status.state, "stopped");
        Ok(Self::info_of(vm, &obs))
    }

    /// Waits (bounded) for the supervisor to write the final status and exit.
    async fn wait_supervisor_done(&self, vm: &Vm) -> Observed {
        let deadline = Instant::now() + Duration::from_secs(10);
        while lock::is_held(&vm.paths.supervisor_lock()) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Self::observe(vm)
    }

    /// Removes a VM's definition and state. A running VM is refused unless `force`,
    /// which stops it first (forcefully). Disk images given at create stay.
    ///
    /// # Errors
    /// [`OpsError::Active`] when running and not forced.
    pub async fn delete(&self, name: &str, force: bool) -> Result<(), OpsError> {
        self.delete_with(name, super::DeleteOptions { force, keep_disks: false }).await.map(|_| ())
    }

    /// Removes a VM's definition, state, seed files and the disks kvm-mcp created for it
    /// (unless `keep_disks`). Images the caller adopted stay; a disk another VM is
    /// built on (a linked clone's base) makes the delete fail before anything changes.
    ///
    /// # Errors
    /// [`OpsError::Active`] when running and not forced; [`OpsError::InUse`].
    pub async fn delete_with(&self, name: &str, opts: super::DeleteOptions) -> Result<super::DeleteReport, OpsError> {
        let force = opts.force;
        let vname = VmName::new(name)?;
        let paths = self.paths(&vname);
        if !paths.state.exists() {
            return Err(OpsError::NotFound { name: name.into() });
        }
        let _lock = self.lock(name, &paths).await?;
        let own = self.owned_disks_for_delete(name, &paths, opts.keep_disks).await?;
        if let Ok(vm) = self.load(name) {
            let obs = Self::observe(&vm);
            if obs.status.state.is_active() {
                if !force {
                    return Err(OpsError::Active { name: name.into(), state: obs.status.state.to_string() });
                }
                self.stop_locked(&vm, StopOptions { force: true, timeout: None }, &no_progress).await?;
            }
        }
        std::fs::remove_dir_all(&paths.state).map_err(OpsError::io("cannot remove", &paths.state))?;
        let _ = std::fs::remove_dir_all(&paths.run);
        let (removed, kept) = if opts.keep_disks { (vec![], own) } else { (super::disks::remove_files(own), vec![]) };
        tracing::info!(vm = %name, removed = removed.len(), "deleted");
        Ok(super::DeleteReport { name: name.into(), removed, kept })
    }
}
