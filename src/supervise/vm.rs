//! The per-VM supervisor process (`kvm-mcp supervise <name>`). It plans each QEMU run
//! ([`super::launch`]), spawns QEMU as its child, holds the event monitor, records every
//! transition (`status.json`, `events.jsonl`, through [`crate::store`]), applies the
//! restart policy ([`super::policy`]), and records how QEMU ended. It holds
//! `supervisor.lock` for its whole life. In adopt mode it re-attaches to a QEMU whose
//! supervisor died: identity checked, exit watched through a pidfd.
//!
//! A run whose start cannot be recorded is undone: QEMU is stopped and the start
//! reported as failed, so no QEMU ever runs while its record says otherwise.

use std::time::Duration;

use crate::config::Config;
use crate::error::ErrorKind;
use crate::fsutil;
use crate::ids::VmName;
use crate::layout::VmPaths;
use crate::procid::{PidFd, ProcIdentity};
use crate::qemu::launcher;
use crate::qmp::qmp::{self, BlockErrorAction};
use crate::qmp::{Qmp, QmpError};
use crate::spec::{Lease, LeaseEnd, VmSpec};
use crate::state::{EventRecord, ExitInfo, Reason, Status, VmState, now_ms};
use crate::store::{self, LOG_TAIL_LINES};
use nix::sys::signal::Signal;

use super::launch::{self, LaunchError};
use super::policy::{self, Exit, Next, Outcome, Seen, StopAsked};
use super::ready::Reporter;
use super::{PrepareError, take_singleton};

/// How long QEMU may take to answer on its event monitor after spawning.
const QMP_CONNECT_TIMEOUT: Duration = Duration::from_secs(60);
/// How often the supervisor checks that QEMU's monitor answers.
const PING_INTERVAL: Duration = Duration::from_secs(10);
/// How long a ping may take before QEMU counts as unresponsive.
const PING_TIMEOUT: Duration = Duration::from_secs(5);
/// Starts tried when QEMU finds its VNC port taken at bind time.
const VNC_BIND_ATTEMPTS: u32 = 5;
/// How often the back-off wait looks for a stop request.
const STOP_POLL: Duration = Duration::from_millis(100);

/// Supervisor failures that prevent it from running at all.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("another supervisor is already running for VM {name}")]
    AlreadySupervised { name: String },
    #[error(transparent)]
    Prepare(#[from] PrepareError),
    #[error("VM {name} cannot be started: {reason}")]
    Spec { name: String, reason: String },
    #[error("VM {name}: no running QEMU to adopt")]
    NothingToAdopt { name: String },
}

/// Keeps the status record and the event log. Losing a record of a transition while
/// QEMU runs is logged; losing the record of a start undoes the start (see
/// [`run_once`]).
struct Recorder {
    paths: VmPaths,
    status: Status,
}

impl Recorder {
    fn set(&mut self, state: VmState, reason: Reason, detail: Option<String>) -> std::io::Result<()> {
        if self.status.state != state && !self.status.state.valid_transition(state) {
            tracing::warn!(from = %self.status.state, to = %state, "unexpected state transition");
        }
        self.status.state = state;
        self.status.reason = reason;
        self.status.detail.clone_from(&detail);
        self.status.since_ms = now_ms();
        let written = self.flush();
        self.event(state, reason, detail);
        written
    }

    fn event(&self, state: VmState, reason: Reason, detail: Option<String>) {
        let rec = EventRecord { ts_ms: now_ms(), state, reason, detail };
        if let Err(e) = store::append_event(&self.paths, &rec) {
            tracing::warn!(error = %e, "cannot append to events.jsonl");
        }
    }

    fn flush(&self) -> std::io::Result<()> {
        super::flush_status(&self.paths.status(), &self.status)
    }
}

/// How a supervisor's work ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finished {
    /// QEMU is gone and stays off (stopped, crashed, powered off, or no restart left).
    Off,
    /// The VM's lease ended (time limit, or its owning process exited): QEMU was stopped
    /// and the VM is to be deleted, which the caller does once this process holds no
    /// lock of the VM any more.
    LeaseEnded(LeaseEnd),
}

/// Resolves when `lease` ends: at its time limit or when its owner exits (watched
/// through a pidfd, so the end is seen at once). Never, for a VM without a lease.
async fn lease_end(lease: &Lease) -> LeaseEnd {
    if lease.is_unset() {
        return std::future::pending().await;
    }
    let owner = lease.owner.as_ref().and_then(|o| PidFd::open(o.pid).ok().filter(|_| o.is_alive()));
    loop {
        if let Some(end) = lease.ended(now_ms()) {
            return end;
        }
        // Look again at least every second: the wall clock may jump.
        let left = lease.expires_at_ms.map_or(1000, |at| at.saturating_sub(now_ms()).clamp(1, 1000));
        let nap = Duration::from_millis(left);
        match &owner {
            Some(fd) => {
                fd.wait_exit(nap).await;
            }
            None => tokio::time::sleep(nap).await,
        }
    }
}

/// Entry point of `kvm-mcp supervise`.
///
/// # Errors
/// [`SupervisorError`] when it cannot take charge of the VM.
pub async fn run(cfg: &Config, name: &VmName, adopt: bool, ready_fd: Option<i32>) -> Result<Finished, SupervisorError> {
    // SAFETY: the front end passes the write end of a pipe at this number and nothing
    // else in this process owns it.
    let mut ready = unsafe { Reporter::from_raw_fd(ready_fd) };
    let store = store::Store::new(&cfg.state_dir, &cfg.run_dir);
    let paths = store.paths(name);
    let Some(_lock) = take_singleton(&paths.run, &paths.supervisor_lock()).inspect_err(|e| {
        ready.fail(ErrorKind::Internal, &crate::error::chain(e), &[]);
    })?
    else {
        ready.fail(ErrorKind::Conflict, "another supervisor is already running", &[]);
        return Err(SupervisorError::AlreadySupervised { name: name.to_string() });
    };
    let spec = match store.load(name) {
        store::Loaded::Defined(vm) => vm.spec.clone(),
        store::Loaded::Absent => {
            return Err(refuse(&mut ready, name, ErrorKind::NotFound, "it is not defined".into()));
        }
        store::Loaded::Incomplete { reason, .. } => {
            return Err(refuse(&mut ready, name, ErrorKind::Conflict, format!("it is incomplete: {reason}")));
        }
    };
    if let Some(end) = spec.lease.ended(now_ms()) {
        ready.fail(ErrorKind::Conflict, &format!("VM {name} is not started: {end}; it is being deleted"), &[]);
        return Ok(Finished::LeaseEnded(end));
    }
    let old = store::read_status_record(&paths).present();
    let mut rec = Recorder { paths: paths.clone(), status: old.clone().unwrap_or_else(|| Status::created(now_ms())) };
    rec.status.supervisor_pid = Some(std::process::id().cast_signed());

    let mut ended = if adopt {
        let marker = spec.uuid.to_string();
        let found = old.as_ref().and_then(|s| s.qemu.clone()).and_then(|i| i.open_verified(&marker).map(|fd| (i, fd)));
        let Some((ident, pidfd)) = found else {
            ready.fail(ErrorKind::Conflict, "no running QEMU of this VM to adopt", &[]);
            return Err(SupervisorError::NothingToAdopt { name: name.to_string() });
        };
        tracing::info!(pid = ident.pid, "adopting running QEMU");
        let _ = rec.flush();
        ready.ok("adopted");
        let lease = lease_end(&spec.lease);
        tokio::pin!(lease);
        let watched = tokio::select! {
            ended = watch_adopted(&mut rec, &ident, &pidfd) => Ok(ended),
            end = &mut lease => Err(end),
        };
        match watched {
            Ok(ended) => ended,
            Err(end) => {
                stop_for_lease(&rec, Some(&ident), &end);
                let _ = pidfd.signal(Signal::SIGKILL);
                while !pidfd.wait_exit(Duration::from_secs(3600)).await {}
                let stop_asked = consume_stop(&paths, Some(&ident), false);
                let outcome = policy::classify(&Exit::Unknown, &Seen::default(), &stop_asked);
                Ended { outcome, stop_asked, lease: Some(end) }
            }
        }
    } else {
        rec.status.restarts = 0;
        store::clear_stop(&paths);
        run_once(cfg, &mut rec, &spec, &mut ready, Reason::Start).await
    };

    let finished = loop {
        let Ended { outcome, stop_asked, lease } = &ended;
        let stop_asked = stop_asked.asked();
        finish(&mut rec, outcome);
        if let Some(end) = lease.clone().or_else(|| spec.lease.ended(now_ms())) {
            break Finished::LeaseEnded(end);
        }
        if crate::provision::install::finish_run(&paths, outcome.reason) && !stop_asked {
            ended = run_once(cfg, &mut rec, &spec, &mut ready, Reason::GuestReset).await;
            continue;
        }
        match policy::next_step(spec.restart_policy, outcome, stop_asked, rec.status.restarts) {
            Next::Stay => break Finished::Off,
            Next::GiveUp => {
                rec.event(
                    rec.status.state,
                    rec.status.reason,
                    Some(format!("restart limit of {} reached; leaving it off", policy::MAX_RESTARTS)),
                );
                break Finished::Off;
            }
            Next::Restart { delay } => {
                tracing::info!(?delay, restarts = rec.status.restarts, "restarting by policy");
                if wait_unless_stopped(&paths, delay).await {
                    break Finished::Off;
                }
            }
        }
        rec.status.restarts += 1;
        // Re-read the definition: port forwards changed at run time live there.
        let spec = store::read_spec(&paths).present().unwrap_or_else(|| spec.clone());
        ended = run_once(cfg, &mut rec, &spec, &mut ready, Reason::PolicyRestart).await;
    };
    cleanup(cfg, name, &paths);
    Ok(finished)
}

/// Records that the lease ended and asks for a forced stop of `qemu`'s run, so the
/// run's end is classified as a stop kvm-mcp asked for (never restarted).
fn stop_for_lease(rec: &Recorder, qemu: Option<&ProcIdentity>, end: &LeaseEnd) {
    tracing::info!(%end, "the VM's lease ended; stopping it");
    let why = format!("stopped because {end}; the VM is deleted");
    if let Err(e) = store::request_stop(&rec.paths, qemu, Some(&why)) {
        tracing::warn!(error = %e, "cannot record the stop request");
    }
    rec.event(rec.status.state, Reason::HostRequest, Some(why));
}

fn refuse(ready: &mut Reporter, name: &VmName, kind: ErrorKind, reason: String) -> SupervisorError {
    ready.fail(kind, &format!("VM {name} cannot be started: {reason}"), &[]);
    SupervisorError::Spec { name: name.to_string(), reason }
}

/// Sleeps `delay`, returning early (true) if a stop is requested meanwhile.
async fn wait_unless_stopped(paths: &VmPaths, delay: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + delay;
    while tokio::time::Instant::now() < deadline {
        if store::stop_intent(paths).is_some() {
            return true;
        }
        tokio::time::sleep(STOP_POLL).await;
    }
    store::stop_intent(paths).is_some()
}

fn finish(rec: &mut Recorder, o: &Outcome) {
    rec.status.qemu = None;
    rec.status.exit.clone_from(&o.exit);
    rec.status.log_tail = if o.state == VmState::Crashed || o.reason == Reason::StartFailed {
        fsutil::tail_lines(&rec.paths.qemu_log(), LOG_TAIL_LINES)
    } else {
        Vec::new()
    };
    if let Err(e) = rec.set(o.state, o.reason, Some(o.detail.clone())) {
        tracing::error!(error = %e, "cannot record how QEMU ended");
    }
}

fn cleanup(cfg: &Config, name: &VmName, paths: &VmPaths) {
    crate::display::vnc::cleanup(&cfg.run_dir, name, paths);
    for p in [paths.qmp_sock(), paths.events_sock(), paths.qga_sock(), paths.serial_sock()] {
        let _ = std::fs::remove_file(p);
    }
    store::clear_stop(paths);
}

/// A start that did not get QEMU running: the VM stays off, the reason recorded and
/// reported with its kind.
fn start_failed(ready: &mut Reporter, paths: &VmPaths, kind: ErrorKind, detail: String) -> Outcome {
    let tail = fsutil::tail_lines(&paths.qemu_log(), LOG_TAIL_LINES);
    ready.fail(kind, &detail, &tail);
    Outcome { state: VmState::Shutoff, reason: Reason::StartFailed, detail, exit: None }
}

fn launch_failed(ready: &mut Reporter, paths: &VmPaths, e: &LaunchError) -> Outcome {
    start_failed(ready, paths, e.kind(), crate::error::chain(e))
}

/// How a run ended, the stop request that applied to it, and whether the VM's lease
/// ended it.
struct Ended {
    outcome: Outcome,
    stop_asked: StopAsked,
    lease: Option<LeaseEnd>,
}

impl From<Outcome> for Ended {
    fn from(outcome: Outcome) -> Self {
        Self { outcome, stop_asked: StopAsked::No, lease: None }
    }
}

/// Spawns QEMU once and follows it until it exits.
async fn run_once(cfg: &Config, rec: &mut Recorder, spec: &VmSpec, ready: &mut Reporter, why: Reason) -> Ended {
    for attempt in 1.. {
        match start_and_follow(cfg, rec, spec, ready, why, attempt < VNC_BIND_ATTEMPTS).await {
            Ok(ended) => return ended,
            Err(Failed::Outcome(o)) => {
                crate::display::vnc::cleanup(&cfg.run_dir, &spec.name, &rec.paths);
                return o.into();
            }
            Err(Failed::VncPortTaken) => {
                tracing::info!(attempt, "another program took the VNC port first; trying the next display");
            }
        }
    }
    unreachable!("the last attempt never asks for a retry")
}

/// How a start failed.
enum Failed {
    /// Reported and recorded.
    Outcome(Outcome),
    /// QEMU could not bind the VNC port it was given (another installation or program
    /// took it between the probe and QEMU's bind): worth another display.
    VncPortTaken,
}

impl From<Outcome> for Failed {
    fn from(o: Outcome) -> Self {
        Failed::Outcome(o)
    }
}

/// Whether QEMU's last words say its VNC port was taken.
fn vnc_port_taken(tail: &[String]) -> bool {
    tail.iter().any(|l| l.contains("-vnc ") && l.contains("Address already in use"))
}

/// The body of [`run_once`]; `Err` carries the outcome of a start that failed.
async fn start_and_follow(
    cfg: &Config,
    rec: &mut Recorder,
    spec: &VmSpec,
    ready: &mut Reporter,
    why: Reason,
    may_retry: bool,
) -> Result<Ended, Failed> {
    rec.status.exit = None;
    rec.status.log_tail.clear();
    rec.status.unresponsive_since_ms = None;
    let paths = rec.paths.clone();
    if let Err(e) = rec.set(VmState::Starting, why, None) {
        return Err(start_failed(ready, &paths, ErrorKind::Unavailable, format!("cannot record the start: {e}")).into());
    }
    let exe = std::env::current_exe().unwrap_or_else(|_| "kvm-mcp".into());
    let plan = launch::plan(cfg, spec, &paths, &exe).await.map_err(|e| launch_failed(ready, &paths, &e))?;
    rec.status.accel = Some(plan.accel.accel.as_str().to_owned());
    if let Err(e) = crate::console::log::begin_run(&paths, &cfg.console) {
        tracing::warn!(error = %e, "cannot rotate the serial log");
    }
    let _ = fsutil::append_line(
        &paths.qemu_log(),
        &format!("kvm-mcp: starting {} {}", cfg.qemu.binary.display(), plan.argv.join(" ")),
    );
    let pass: Vec<_> = plan.fds.iter().map(|(fd, n)| (fd, *n)).collect();
    let mut child = match launcher::spawn_qemu(&cfg.qemu.binary, &plan.argv, &pass, &paths.qemu_log()) {
        Ok(c) => c,
        Err(source) => {
            crate::display::vnc::cleanup(&cfg.run_dir, &spec.name, &paths);
            let e = LaunchError::Spawn { binary: cfg.qemu.binary.clone(), source };
            return Err(launch_failed(ready, &paths, &e).into());
        }
    };
    drop(pass);
    drop(plan.fds);
    store::drop_incoming(&paths);
    let pid = child.id().map_or(0, u32::cast_signed);
    rec.status.qemu = ProcIdentity::capture(pid);
    rec.status.started_at_ms = Some(now_ms());
    let qemu = rec.status.qemu.clone();
    if let Err(e) = rec.flush() {
        return Err(undo(&mut child, ready, &paths, &format!("cannot record QEMU's pid: {e}")).await.into());
    }

    // Connect to the event monitor, unless QEMU dies first (bad option, missing file).
    let events_sock = paths.events_sock();
    let connected = tokio::select! {
        c = Qmp::connect_with_events(&events_sock, QMP_CONNECT_TIMEOUT) => Ok(c),
        st = child.wait() => Err(st.ok()),
    };
    let (qmp, events) = match connected {
        Ok(Ok(c)) => c,
        Ok(Err(_)) => {
            let _ = child.start_kill();
            return Err(early_exit(cfg, spec, ready, &paths, child.wait().await.ok(), plan.vnc.is_some() && may_retry));
        }
        Err(st) => return Err(early_exit(cfg, spec, ready, &paths, st, plan.vnc.is_some() && may_retry)),
    };
    if let Some(v) = &plan.vnc
        && let Err(e) = crate::display::vnc::activate(v, &qmp, &paths).await
    {
        tracing::warn!(error = %crate::error::chain(&e), "VNC stays closed");
    }
    let running = qmp.status().await.map_or(true, |s| s.running);
    if let Err(e) = rec.set(if running { VmState::Running } else { VmState::Paused }, why, None) {
        drop(qmp);
        return Err(undo(&mut child, ready, &paths, &format!("cannot record that QEMU runs: {e}")).await.into());
    }
    ready.ok("running");

    let mut seen = Seen::default();
    // begin_run rotated just now: the first check is one period away.
    let every = crate::console::log::ROTATE_CHECK;
    let mut rotate = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + PING_INTERVAL, PING_INTERVAL);
    // The event monitor, dropped while QEMU does not answer (a command without its
    // answer leaves a connection unusable) and opened again once it greets.
    let mut monitor = Some((qmp, events));
    let lease = lease_end(&spec.lease);
    tokio::pin!(lease);
    let mut lease_over = None;
    let status = loop {
        let next_event = async {
            match monitor.as_mut() {
                Some((_, events)) => events.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            st = child.wait() => break st.ok(),
            end = &mut lease, if lease_over.is_none() => {
                stop_for_lease(rec, qemu.as_ref(), &end);
                lease_over = Some(end);
                // A throw-away VM: nothing in it is kept, so no shutdown is waited for.
                let _ = child.start_kill();
            }
            _ = rotate.tick() => {
                if let Err(e) = crate::console::log::rotate_if_needed(&paths, &cfg.console) {
                    tracing::warn!(error = %e, "cannot rotate the serial log");
                }
            }
            _ = ping.tick() => {
                let answered = match &monitor {
                    Some((q, _)) => q.execute(qmp::query_status {}, PING_TIMEOUT).await.is_ok(),
                    None => match Qmp::connect_with_events(&events_sock, PING_TIMEOUT).await {
                        Ok(m) => {
                            monitor = Some(m);
                            true
                        }
                        Err(_) => false,
                    },
                };
                if !answered {
                    monitor = None;
                }
                record_responsiveness(rec, answered);
            }
            ev = next_event => match ev {
                Some(ev) => on_event(rec, &mut seen, &ev),
                // Monitor closed: QEMU is exiting; wait for it.
                None => break child.wait().await.ok(),
            },
        }
    };
    drop(monitor);
    let exit = status.map_or(Exit::Unknown, |s| Exit::Status(exit_info(s)));
    let stop_asked = consume_stop(&paths, qemu.as_ref(), seen.stop_seen);
    Ok(Ended { outcome: policy::classify(&exit, &seen, &stop_asked), stop_asked, lease: lease_over })
}

/// The stop request that applies to the run of `qemu` that just ended, if any. A
/// request naming that run is used up either way (it can never apply to another run);
/// a request made between runs stays for the back-off wait.
fn consume_stop(paths: &VmPaths, qemu: Option<&ProcIdentity>, stop_seen: bool) -> StopAsked {
    let Some(intent) = store::stop_intent(paths) else { return StopAsked::No };
    let applies = intent.applies(qemu, stop_seen);
    if intent.qemu.is_some() {
        store::clear_stop(paths);
    }
    match (applies, intent.forced) {
        (false, _) => StopAsked::No,
        (true, false) => StopAsked::Graceful,
        (true, true) => {
            StopAsked::Forced(intent.forced_why.unwrap_or_else(|| "stopped by force on request".to_owned()))
        }
    }
}

/// Stops a QEMU whose start could not be recorded and reports the start as failed.
async fn undo(child: &mut tokio::process::Child, ready: &mut Reporter, paths: &VmPaths, why: &str) -> Outcome {
    tracing::error!(%why, "undoing the start");
    let _ = child.start_kill();
    let _ = child.wait().await;
    start_failed(ready, paths, ErrorKind::Unavailable, format!("{why}; QEMU was stopped again"))
}

/// QEMU exited (or never answered) during start-up: the display claim is released, and
/// the start either retried on another display or reported as failed.
fn early_exit(
    cfg: &Config,
    spec: &VmSpec,
    ready: &mut Reporter,
    paths: &VmPaths,
    st: Option<std::process::ExitStatus>,
    may_retry_vnc: bool,
) -> Failed {
    crate::display::vnc::cleanup(&cfg.run_dir, &spec.name, paths);
    if may_retry_vnc && vnc_port_taken(&fsutil::tail_lines(&paths.qemu_log(), 2)) {
        return Failed::VncPortTaken;
    }
    Failed::Outcome(exited_early(ready, paths, st))
}

fn exited_early(ready: &mut Reporter, paths: &VmPaths, st: Option<std::process::ExitStatus>) -> Outcome {
    let tail = fsutil::tail_lines(&paths.qemu_log(), LOG_TAIL_LINES);
    let how = st.map_or_else(
        || "QEMU did not answer on its monitor".to_owned(),
        |s| format!("QEMU exited during start-up ({s})"),
    );
    let detail = match tail.last() {
        Some(l) => format!("{how}: {l}"),
        None => how,
    };
    Outcome { exit: st.map(exit_info), ..start_failed(ready, paths, ErrorKind::Unavailable, detail) }
}

fn on_event(rec: &mut Recorder, seen: &mut Seen, ev: &qmp::Event) {
    let result = match ev {
        qmp::Event::BLOCK_IO_ERROR { data, .. } if data.action == BlockErrorAction::stop => {
            seen_io_error(rec, data.nospace.unwrap_or(false), &data.device, &data.reason)
        }
        qmp::Event::STOP { .. } if rec.status.state == VmState::Running => {
            rec.set(VmState::Paused, Reason::HostRequest, None)
        }
        qmp::Event::RESUME { .. } if matches!(rec.status.state, VmState::Paused | VmState::Starting) => {
            rec.set(VmState::Running, Reason::HostRequest, None)
        }
        qmp::Event::POWERDOWN { .. } => {
            seen.stop_seen = true;
            if rec.status.state == VmState::ShuttingDown {
                return;
            }
            rec.set(VmState::ShuttingDown, Reason::HostRequest, Some("power button pressed".into()))
        }
        qmp::Event::SHUTDOWN { data, .. } => {
            seen.shutdown = Some(data.reason);
            seen.stop_seen |= policy::host_initiated(data.reason);
            if rec.status.state == VmState::ShuttingDown {
                return;
            }
            rec.set(VmState::ShuttingDown, policy::reason_of(data.reason), Some(format!("{:?}", data.reason)))
        }
        qmp::Event::RESET { data, .. } => {
            rec.event(rec.status.state, Reason::GuestReset, Some(format!("reset ({:?})", data.reason)));
            Ok(())
        }
        qmp::Event::GUEST_PANICKED { .. } => {
            seen.panicked = true;
            rec.event(rec.status.state, Reason::GuestPanic, Some("guest reported a panic".into()));
            Ok(())
        }
        _ => Ok(()),
    };
    if let Err(e) = result {
        tracing::error!(error = %e, "cannot record a transition");
    }
}

/// Notes when QEMU's monitor stops or starts answering again (a hung QEMU, or one
/// stopped with SIGSTOP): the state stays as it was, the status says since when.
fn record_responsiveness(rec: &mut Recorder, answered: bool) {
    let change = match (answered, rec.status.unresponsive_since_ms) {
        (false, None) => {
            let since = now_ms().saturating_sub(u64::try_from(PING_TIMEOUT.as_millis()).unwrap_or(0));
            rec.status.unresponsive_since_ms = Some(since);
            Some("QEMU's monitor stopped answering")
        }
        (true, Some(_)) => {
            rec.status.unresponsive_since_ms = None;
            Some("QEMU's monitor answers again")
        }
        _ => None,
    };
    if let Some(what) = change {
        tracing::warn!("{what}");
        let _ = rec.flush();
        rec.event(rec.status.state, rec.status.reason, Some(what.into()));
    }
}

/// A disk write failed and QEMU paused the guest (its STOP event follows).
fn seen_io_error(rec: &mut Recorder, nospace: bool, device: &str, why: &str) -> std::io::Result<()> {
    if rec.status.state != VmState::Running {
        return Ok(());
    }
    let detail = if nospace {
        format!("disk {device}: no space left on the host; free space, then resume the VM")
    } else {
        format!("disk {device}: {why}; fix the host's storage, then resume the VM")
    };
    rec.set(VmState::Paused, Reason::IoError, Some(detail))
}

fn exit_info(st: std::process::ExitStatus) -> ExitInfo {
    use std::os::unix::process::ExitStatusExt;
    let signal = st.signal();
    ExitInfo {
        code: st.code(),
        signal,
        signal_name: signal.and_then(|s| nix::sys::signal::Signal::try_from(s).ok()).map(|s| s.as_str().to_owned()),
    }
}

/// Follows a QEMU we are not the parent of: events from the monitor, exit via pidfd.
async fn watch_adopted(rec: &mut Recorder, qemu: &ProcIdentity, pidfd: &PidFd) -> Ended {
    let paths = rec.paths.clone();
    let mut seen = Seen::default();
    let conn: Result<_, QmpError> = Qmp::connect_with_events(&paths.events_sock(), Duration::from_secs(10)).await;
    if let Ok((qmp, mut events)) = conn {
        let running = qmp.status().await.map_or(true, |s| s.running);
        let st = if running { VmState::Running } else { VmState::Paused };
        rec.status.state = st;
        rec.event(st, Reason::HostRequest, Some("adopted by a new supervisor".into()));
        let _ = rec.flush();
        while let Some(ev) = events.recv().await {
            on_event(rec, &mut seen, &ev);
        }
        drop(qmp);
    } else {
        tracing::warn!("cannot reach the event monitor of the adopted QEMU; watching its pid only");
    }
    // The monitor closed (or was unreachable): wait for the process itself.
    while !pidfd.wait_exit(Duration::from_secs(3600)).await {}
    let stop_asked = consume_stop(&paths, Some(qemu), seen.stop_seen);
    Ended { outcome: policy::classify(&Exit::Unknown, &seen, &stop_asked), stop_asked, lease: None }
}
