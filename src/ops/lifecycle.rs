//! A defined VM's life: start (a supervisor re-executed in its own session, waited for
//! on its ready pipe), stop (power button pressed until the guest is off, its guest
//! agent asked only when the guest shows no sign of shutting down, then QMP quit,
//! SIGTERM, SIGKILL, recorded as forced), reboot, pause, resume, adopt, delete, and the
//! live views that ask QEMU and the guest (`list_live`, `info_live`). Composes the
//! areas it needs (disks for delete, clone for templates, shutdown and agent for the
//! graceful stop, ip for addresses).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::context::{Observed, Vm};
use super::shutdown::{self, GuestWatch};
use super::views::{VmInfo, VmSummary};
use super::{Ops, OpsError, Progress, ProgressFn, no_progress};
use crate::ids::VmName;
use crate::lock;
use crate::qmp::{DEFAULT_TIMEOUT, Qmp, qmp};
use crate::state::VmState;
use crate::store;

/// Interval between ACPI power button presses during a graceful stop.
const PRESS_INTERVAL: Duration = Duration::from_secs(3);
/// What the record says of a stop forced on request.
const FORCED_ON_REQUEST: &str = "stopped by force on request";

/// How the graceful part of a stop ended.
struct Graceful {
    /// Power-button presses sent.
    presses: u32,
    /// QEMU exited (the guest powered off).
    exited: bool,
    /// Why the stop goes on by force, when QEMU did not exit.
    why_forced: String,
}
/// Time each forcing step (QMP quit, SIGTERM, SIGKILL) gets before the next.
const FORCE_STEP: Duration = Duration::from_secs(10);

/// How long a live view waits for QEMU's monitor before calling it unresponsive.
const LIVE_PROBE: Duration = Duration::from_secs(2);

/// What QEMU's command monitor said when asked for its status.
enum Probe {
    /// It answered: running or paused.
    Answered(VmState),
    /// It accepted the connection (or the command) but did not answer in time.
    Silent,
    /// Nothing listens (QEMU is exiting, or the socket is gone).
    Unreachable,
}

async fn probe(sock: &std::path::Path) -> Probe {
    match Qmp::connect(sock, LIVE_PROBE).await {
        Ok(q) => match q.execute(qmp::query_status {}, LIVE_PROBE).await {
            Ok(st) => Probe::Answered(if st.running { VmState::Running } else { VmState::Paused }),
            Err(_) => Probe::Silent,
        },
        Err(crate::qmp::QmpError::ConnectTimeout { .. }) => Probe::Silent,
        Err(_) => Probe::Unreachable,
    }
}

/// Options of `stop`.
#[derive(Debug, Clone, Copy, Default)]
pub struct StopOptions {
    /// Skip the power button: QMP quit, then SIGTERM, then SIGKILL.
    pub force: bool,
    /// How long to press the power button before forcing; the config's default if unset.
    pub timeout: Option<Duration>,
}

impl Ops {
    /// Like [`Ops::info`], plus the guest's addresses discovered now (one pass over the
    /// sources of [`Ops::get_vm_ip`], no waiting) when the VM runs.
    ///
    /// # Errors
    /// [`OpsError::NotFound`].
    pub async fn info_live(&self, name: &str) -> Result<VmInfo, OpsError> {
        let vm = self.load(name)?;
        let obs = Self::observe(&vm);
        let mut info = Self::info_of(&vm, &obs);
        if !obs.status.state.is_active() {
            return Ok(info);
        }
        match probe(&vm.paths.qmp_sock()).await {
            Probe::Answered(state) => {
                info.state = state;
                info.unresponsive_s = None;
            }
            Probe::Silent => {
                info.unresponsive_s = Some(info.unresponsive_s.unwrap_or(0).max(LIVE_PROBE.as_secs()));
                return Ok(info);
            }
            Probe::Unreachable => {}
        }
        if !vm.spec.nics.is_empty() {
            info.ips = Some(self.discover(&vm, false, super::ip::AGENT_SYNC_TIMEOUT_QUICK).await);
        }
        Ok(info)
    }

    /// Like [`Ops::list`], but asks each running QEMU for its status over QMP; a QEMU
    /// whose monitor stays silent shows how long it has not answered.
    ///
    /// # Errors
    /// See [`Ops::list`].
    pub async fn list_live(&self) -> Result<Vec<VmSummary>, OpsError> {
        let mut out = self.list()?;
        for s in out.iter_mut().filter(|s| s.state.is_some_and(VmState::is_active)) {
            let sock = self.paths(&VmName::new(&s.name)?).qmp_sock();
            match probe(&sock).await {
                Probe::Answered(state) => {
                    s.state = Some(state);
                    s.unresponsive_s = None;
                }
                Probe::Silent => s.unresponsive_s = Some(s.unresponsive_s.unwrap_or(0).max(LIVE_PROBE.as_secs())),
                Probe::Unreachable => {}
            }
        }
        Ok(out)
    }

    /// Deletes the VMs of `list` whose lease ended (time limit passed, or the process
    /// they were made for is gone) and that are off, and drops them from `list`. A VM
    /// that still runs is left to its supervisor, which stops it and deletes it itself;
    /// one that was off when its lease ended has no supervisor, so the next listing
    /// deletes it.
    pub async fn reap_ended(&self, list: &mut Vec<VmSummary>) {
        let ended: Vec<String> = list
            .iter()
            .filter(|s| s.lease_ended && s.state.is_some_and(|st| !st.is_active()))
            .map(|s| s.name.clone())
            .collect();
        for name in ended {
            match self.delete(&name, false).await {
                Ok(()) => {
                    tracing::info!(vm = %name, "deleted: its time limit passed or its owner is gone");
                    list.retain(|s| s.name != name);
                }
                Err(e) => tracing::warn!(vm = %name, error = %crate::error::chain(&e), "cannot delete an ended VM"),
            }
        }
    }

    /// Starts a defined VM and waits until QEMU runs.
    ///
    /// # Errors
    /// [`OpsError::AlreadyRunning`], [`OpsError::StartFailed`] with QEMU's last log lines.
    pub async fn start(&self, name: &str) -> Result<VmInfo, OpsError> {
        let (vm, _lock) = self.load_locked(name).await?;
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
        let (vm, _lock) = self.load_locked(name).await?;
        let obs = Self::observe(&vm);
        if !obs.status.state.is_active() {
            return Err(OpsError::NotRunning { name: name.into(), state: obs.status.state.to_string() });
        }
        self.ensure_supervised(&vm, &obs).await?;
        Ok(Self::info_of(&vm, &Self::observe(&vm)))
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
        let (vm, _lock) = self.load_locked(name).await?;
        self.stop_locked(&vm, opts, progress).await
    }

    pub(super) async fn stop_locked(
        &self,
        vm: &Vm,
        opts: StopOptions,
        progress: ProgressFn<'_>,
    ) -> Result<VmInfo, OpsError> {
        let name = vm.spec.name.to_string();
        let obs = Self::observe(vm);
        let record_stop = |qemu, forced: Option<&str>| {
            store::request_stop(&vm.paths, qemu, forced)
                .map_err(OpsError::io("cannot record stop request in", vm.paths.stop_intent()))
        };
        let forced_on_request = opts.force.then_some(FORCED_ON_REQUEST);
        if !obs.status.state.is_active() {
            if lock::is_held(&vm.paths.supervisor_lock()) {
                // Between runs (waiting to restart by policy): ask it to stay down.
                record_stop(None, forced_on_request)?;
                return Ok(Self::info_of(vm, &self.wait_supervisor_done(vm).await));
            }
            return Ok(Self::info_of(vm, &obs));
        }
        // Someone must record the final state.
        self.ensure_supervised(vm, &obs).await?;
        record_stop(obs.status.qemu.as_ref(), forced_on_request)?;
        let Some(pidfd) = obs.status.qemu.as_ref().and_then(|q| q.open_verified(&vm.spec.uuid.to_string())) else {
            // Already gone: let the supervisor finish.
            let obs = self.wait_supervisor_done(vm).await;
            return Ok(Self::info_of(vm, &obs));
        };
        let timeout = opts.timeout.unwrap_or(Duration::from_secs(self.cfg.qemu.stop_timeout_s));
        let mut step = 0;
        let mut exited = false;
        let mut why_forced = FORCED_ON_REQUEST.to_owned();
        if !opts.force {
            let graceful = self.press_until_off(vm, &obs, &pidfd, timeout, progress).await;
            step = graceful.presses;
            exited = graceful.exited;
            why_forced = graceful.why_forced;
            if !exited {
                // The record says forced from here on, and why.
                record_stop(obs.status.qemu.as_ref(), Some(&why_forced))?;
            }
        }
        if !exited {
            progress(Progress { step: step + 1, total: None, message: format!("{why_forced}: QMP quit") });
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

    /// The graceful part of a stop: presses the power button every few seconds until
    /// QEMU exits or `timeout` passes, watching the guest for signs that it is shutting
    /// down ([`GuestWatch`]). Only a guest that shows none within the accelerator's
    /// patience is asked through its guest agent, and only then does `stop` say so.
    async fn press_until_off(
        &self,
        vm: &Vm,
        obs: &Observed,
        pidfd: &crate::procid::PidFd,
        timeout: Duration,
        progress: ProgressFn<'_>,
    ) -> Graceful {
        let started = Instant::now();
        let deadline = started + timeout;
        let patience = shutdown::patience(obs.status.accel.as_deref(), timeout);
        if obs.status.state == VmState::Paused
            && let Ok(q) = self.qmp(vm).await
        {
            let _ = q.execute(qmp::cont {}, DEFAULT_TIMEOUT).await;
        }
        let mut watch = GuestWatch::begin(vm);
        let mut asked_agent = None;
        let mut presses = 0;
        while Instant::now() < deadline {
            presses += 1;
            let q = self.qmp(vm).await.ok();
            if let Some(q) = &q {
                let _ = q.execute(qmp::system_powerdown {}, DEFAULT_TIMEOUT).await;
            }
            let new_sign = watch.look(vm, q.as_ref()).await;
            drop(q);
            let waited = started.elapsed().as_secs();
            let message = match (&new_sign, watch.sign()) {
                (Some(sign), _) => format!("the guest is shutting down ({sign}); waiting for it to power off"),
                (None, Some(_)) => format!("waiting for the guest to power off ({waited} s)"),
                (None, None) => format!("pressing the power button (press {presses})"),
            };
            progress(Progress { step: presses, total: None, message });
            if watch.sign().is_none() && asked_agent.is_none() && started.elapsed() >= patience {
                asked_agent = Some(self.agent_fallback(vm, &mut watch, waited, presses, progress).await);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if pidfd.wait_exit(PRESS_INTERVAL.min(left)).await {
                return Graceful { presses, exited: true, why_forced: String::new() };
            }
        }
        let secs = timeout.as_secs();
        let why_forced = match (watch.sign(), asked_agent) {
            (Some(sign), _) => {
                format!(
                    "stopped by force: the guest began shutting down ({sign}) but had not powered off after {secs} s"
                )
            }
            (None, Some(true)) => format!(
                "stopped by force: the guest did not power off within {secs} s, neither for the power button nor for its guest agent"
            ),
            (None, _) => format!("stopped by force: the guest did not answer the power button within {secs} s"),
        };
        Graceful { presses, exited: false, why_forced }
    }

    /// The guest has shown no sign of shutting down after the accelerator's patience:
    /// asks its guest agent, when one is connected, and says so. Returns whether the
    /// agent accepted. A failure is worth a note only while the guest still shows no
    /// sign of going down (it may have started meanwhile, taking its agent with it).
    async fn agent_fallback(
        &self,
        vm: &Vm,
        watch: &mut GuestWatch,
        waited: u64,
        step: u32,
        progress: ProgressFn<'_>,
    ) -> bool {
        let name = vm.spec.name.as_str();
        let say = |message: String| progress(Progress { step, total: None, message });
        if !self.has_agent_channel(vm) {
            return false;
        }
        if watch.agent_connected() == Some(false) {
            say(format!(
                "the guest shows no sign of shutting down {waited} s after the first power-button press, and no guest agent is connected to ask; pressing on"
            ));
            return false;
        }
        say(format!(
            "the guest shows no sign of shutting down {waited} s after the first power-button press; asking its guest agent to shut it down"
        ));
        match self.agent_shutdown(vm).await {
            Ok(()) => {
                tracing::info!(vm = %name, "asked the guest agent to shut down");
                true
            }
            Err(e) => {
                let q = self.qmp(vm).await.ok();
                watch.look(vm, q.as_ref()).await;
                if let Some(sign) = watch.sign() {
                    tracing::debug!(vm = %name, error = %e, "guest agent shutdown failed; the guest is shutting down anyway ({sign})");
                } else {
                    tracing::info!(vm = %name, error = %e, "guest agent shutdown not possible");
                    say(format!("the guest agent could not shut it down ({e}); pressing on"));
                }
                false
            }
        }
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
        self.delete_if(name, opts, |_| true).await
    }

    /// [`Ops::delete_with`], only if `still` holds for the VM's definition as read
    /// under its lock (a pool member not claimed meanwhile, say).
    ///
    /// # Errors
    /// As [`Ops::delete_with`]; [`OpsError::Conflict`]-kind [`OpsError::Taken`] when
    /// `still` does not hold.
    pub(crate) async fn delete_if(
        &self,
        name: &str,
        opts: super::DeleteOptions,
        still: impl Fn(&crate::spec::VmSpec) -> bool,
    ) -> Result<super::DeleteReport, OpsError> {
        let force = opts.force;
        let vname = VmName::new(name)?;
        let paths = self.paths(&vname);
        let _lock = self.lock(name, &paths).await?;
        // Looked at under the lock: a create or delete of the same name has finished.
        if !paths.state.exists() {
            return Err(OpsError::NotFound { name: name.into() });
        }
        if let Ok(vm) = self.load(name)
            && !still(&vm.spec)
        {
            return Err(OpsError::Taken { what: format!("VM {name:?}"), by: "another caller meanwhile".into() });
        }
        let own = self.owned_disks_for_delete(name, &paths, opts.keep_disks).await?;
        if let Ok(vm) = self.load(name) {
            let obs = Self::observe(&vm);
            // A supervisor that still runs owns a QEMU (or is about to), whatever the
            // status file says.
            let supervised = lock::is_held(&vm.paths.supervisor_lock());
            if obs.status.state.is_active() || supervised {
                if !force {
                    let state =
                        if obs.status.state.is_active() { obs.status.state.to_string() } else { "supervised".into() };
                    return Err(OpsError::Active { name: name.into(), state });
                }
                self.stop_locked(&vm, StopOptions { force: true, timeout: None }, &no_progress).await?;
                if lock::is_held(&vm.paths.supervisor_lock()) {
                    return Err(OpsError::Timeout {
                        name: name.into(),
                        what: "the supervisor's exit after a forced stop",
                        secs: super::context::SUPERVISOR_EXIT_TIMEOUT.as_secs(),
                    });
                }
            }
        }
        // Frozen layers of forks this VM reads: removed with the last VM that reads them.
        let layers: Vec<PathBuf> = match self.load(name) {
            Ok(vm) if !opts.keep_disks => {
                let dir =
                    std::fs::canonicalize(&self.cfg.vm.disk_path).unwrap_or_else(|_| self.cfg.vm.disk_path.clone());
                self.images_of(&vm)
                    .into_iter()
                    .filter(|p| p.parent() == Some(dir.as_path()) && super::disks::is_frozen_layer(p))
                    .collect()
            }
            _ => Vec::new(),
        };
        std::fs::remove_dir_all(&paths.state).map_err(OpsError::io("cannot remove", &paths.state))?;
        let _ = std::fs::remove_dir_all(&paths.run);
        let (mut removed, kept) =
            if opts.keep_disks { (vec![], own) } else { (super::disks::remove_files(own), vec![]) };
        let unread: Vec<PathBuf> = layers.into_iter().filter(|l| self.users_of(l, name).is_empty()).collect();
        removed.extend(super::disks::remove_files(unread));
        tracing::info!(vm = %name, removed = removed.len(), "deleted");
        Ok(super::DeleteReport { name: name.into(), removed, kept })
    }
}
