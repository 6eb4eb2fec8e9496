//! The per-VM supervisor process (`kvm-mcp supervise <name>`). It binds the monitor
//! sockets, spawns QEMU as its child, holds the event monitor, writes `status.json` and
//! `events.jsonl` on every transition, applies the restart policy, and records how QEMU
//! ended. It holds `supervisor.lock` for its whole life. In adopt mode it re-attaches to
//! a QEMU whose supervisor died: identity checked, exit watched through a pidfd.

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::time::Duration;

use crate::config::Config;
use crate::fsutil;
use crate::ids::VmName;
use crate::layout::VmPaths;
use crate::lock::FileLock;
use crate::procid::{Liveness, PidFd, ProcIdentity};
use crate::profile::Profiles;
use crate::qemu::{accel, cmdline, launcher};
use crate::qmp::{Qmp, qmp};
use crate::ready::Reporter;
use crate::spec::{RestartPolicy, VmSpec};
use crate::state::{EventRecord, ExitInfo, Reason, Status, VmState, now_ms};

/// Restarts the policy may do before giving up.
pub const MAX_RESTARTS: u32 = 5;
/// First back-off delay; doubles per restart.
const BACKOFF_BASE: Duration = Duration::from_secs(1);
/// Longest back-off delay.
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How long QEMU may take to answer on its event monitor after spawning.
const QMP_CONNECT_TIMEOUT: Duration = Duration::from_secs(60);
/// Lines of QEMU's log kept in the status after a crash.
pub const LOG_TAIL_LINES: usize = 15;

/// Supervisor failures that prevent it from running at all.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("another supervisor is already running for VM {name}")]
    AlreadySupervised { name: String },
    #[error("cannot prepare {path}")]
    Prepare {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the definition of VM {name}")]
    Spec {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("VM {name}: no running QEMU to adopt")]
    NothingToAdopt { name: String },
}

/// How one QEMU run ended.
#[derive(Debug, Clone)]
struct Outcome {
    state: VmState,
    reason: Reason,
    detail: String,
    exit: Option<ExitInfo>,
}

/// Writes status and appends the event line. Errors are logged, never fatal: the VM
/// matters more than its bookkeeping.
struct Recorder {
    paths: VmPaths,
    status: Status,
}

impl Recorder {
    fn set(&mut self, state: VmState, reason: Reason, detail: Option<String>) {
        if self.status.state != state && !self.status.state.valid_transition(state) {
            tracing::warn!(from = %self.status.state, to = %state, "unexpected state transition");
        }
        self.status.state = state;
        self.status.reason = reason;
        self.status.detail = detail.clone();
        self.status.since_ms = now_ms();
        self.flush();
        self.event(state, reason, detail);
    }

    fn event(&self, state: VmState, reason: Reason, detail: Option<String>) {
        let rec = EventRecord { ts_ms: now_ms(), state, reason, detail };
        if let Ok(line) = serde_json::to_string(&rec)
            && let Err(e) = fsutil::append_line(&self.paths.events(), &line)
        {
            tracing::warn!(error = %e, "cannot append to events.jsonl");
        }
    }

    fn flush(&self) {
        if let Err(e) = fsutil::write_json_volatile(&self.paths.status(), &self.status) {
            tracing::warn!(error = %e, "cannot write status.json");
        }
    }
}

/// Entry point of `kvm-mcp supervise`.
///
/// # Errors
/// [`SupervisorError`] when it cannot take charge of the VM.
pub async fn run(cfg: &Config, name: &VmName, adopt: bool, ready_fd: Option<i32>) -> Result<(), SupervisorError> {
    // SAFETY: the front end passes the write end of a pipe at this number and nothing
    // else in this process owns it.
    let mut ready = unsafe { Reporter::from_raw_fd(ready_fd) };
    let paths = VmPaths::new(&cfg.state_dir, &cfg.run_dir, name);
    let prep = |p: &Path| SupervisorError::Prepare { path: p.into(), source: std::io::Error::last_os_error() };
    std::fs::create_dir_all(&paths.run).map_err(|_| prep(&paths.run))?;
    let Some(_lock) = FileLock::try_acquire(&paths.supervisor_lock()).map_err(|_| prep(&paths.supervisor_lock()))?
    else {
        ready.send(false, "another supervisor is already running", &[]);
        return Err(SupervisorError::AlreadySupervised { name: name.to_string() });
    };
    let spec: VmSpec = std::fs::read(paths.spec())
        .and_then(|b| serde_json::from_slice(&b).map_err(std::io::Error::other))
        .map_err(|source| SupervisorError::Spec { name: name.to_string(), source })?;
    let old: Option<Status> = std::fs::read(paths.status()).ok().and_then(|b| serde_json::from_slice(&b).ok());
    let mut rec = Recorder { paths: paths.clone(), status: old.clone().unwrap_or_else(|| Status::created(now_ms())) };
    rec.status.supervisor_pid = Some(std::process::id().cast_signed());

    let mut outcome = if adopt {
        let marker = spec.uuid.to_string();
        let found = old.as_ref().and_then(|s| s.qemu.clone()).and_then(|i| i.open_verified(&marker).map(|fd| (i, fd)));
        let Some((ident, pidfd)) = found else {
            ready.send(false, "no running QEMU of this VM to adopt", &[]);
            return Err(SupervisorError::NothingToAdopt { name: name.to_string() });
        };
        tracing::info!(pid = ident.pid, "adopting running QEMU");
        rec.flush();
        ready.send(true, "adopted", &[]);
        watch_adopted(&mut rec, &spec, &pidfd).await
    } else {
        rec.status.restarts = 0;
        let _ = std::fs::remove_file(paths.stop_intent());
        run_once(cfg, &mut rec, &spec, &mut ready, Reason::Start).await
    };

    loop {
        finish(&mut rec, &outcome);
        let stop_asked = paths.stop_intent().exists();
        if crate::provision::install::finish_run(&paths, outcome.reason) && !stop_asked {
            outcome = run_once(cfg, &mut rec, &spec, &mut ready, Reason::GuestReset).await;
            continue;
        }
        let restart = !stop_asked
            && match spec.restart_policy {
                RestartPolicy::Never => false,
                RestartPolicy::OnFailure => outcome.state == VmState::Crashed,
                RestartPolicy::Always => outcome.state == VmState::Crashed || outcome.reason == Reason::GuestPoweroff,
            };
        if !restart {
            break;
        }
        if rec.status.restarts >= MAX_RESTARTS {
            rec.event(
                rec.status.state,
                rec.status.reason,
                Some(format!("restart limit of {MAX_RESTARTS} reached; leaving it off")),
            );
            break;
        }
        let delay = BACKOFF_BASE.saturating_mul(1 << rec.status.restarts.min(5)).min(BACKOFF_MAX);
        tracing::info!(?delay, restarts = rec.status.restarts, "restarting by policy");
        if wait_unless_stopped(&paths, delay).await {
            break;
        }
        rec.status.restarts += 1;
        // Re-read the definition: port forwards changed at run time live there.
        let spec = reload_spec(&paths).unwrap_or_else(|| spec.clone());
        outcome = run_once(cfg, &mut rec, &spec, &mut ready, Reason::PolicyRestart).await;
    }
    cleanup(&paths);
    Ok(())
}

fn reload_spec(paths: &VmPaths) -> Option<VmSpec> {
    std::fs::read(paths.spec()).ok().and_then(|b| serde_json::from_slice(&b).ok())
}

/// Sleeps `delay`, returning early (true) if a stop is requested meanwhile.
async fn wait_unless_stopped(paths: &VmPaths, delay: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + delay;
    while tokio::time::Instant::now() < deadline {
        if paths.stop_intent().exists() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    paths.stop_intent().exists()
}

fn finish(rec: &mut Recorder, o: &Outcome) {
    rec.status.qemu = None;
    rec.status.exit.clone_from(&o.exit);
    rec.status.log_tail = if o.state == VmState::Crashed {
        fsutil::tail_lines(&rec.paths.qemu_log(), LOG_TAIL_LINES)
    } else {
        Vec::new()
    };
    rec.set(o.state, o.reason, Some(o.detail.clone()));
}

fn cleanup(paths: &VmPaths) {
    crate::display::vnc::cleanup(paths);
    for p in [paths.qmp_sock(), paths.events_sock(), paths.qga_sock(), paths.serial_sock(), paths.stop_intent()] {
        let _ = std::fs::remove_file(p);
    }
}

/// Binds a listening socket at `path` (replacing a stale file) for QEMU to inherit.
fn listen(path: &Path) -> std::io::Result<OwnedFd> {
    let _ = std::fs::remove_file(path);
    Ok(OwnedFd::from(UnixListener::bind(path)?))
}

fn crashed(reason: Reason, detail: String) -> Outcome {
    Outcome { state: VmState::Crashed, reason, detail, exit: None }
}

/// Spawns QEMU once and follows it until it exits.
async fn run_once(cfg: &Config, rec: &mut Recorder, spec: &VmSpec, ready: &mut Reporter, why: Reason) -> Outcome {
    rec.status.exit = None;
    rec.status.log_tail.clear();
    rec.set(VmState::Starting, why, None);
    let paths = rec.paths.clone();
    let fail = |ready: &mut Reporter, detail: String, paths: &VmPaths| {
        let tail = fsutil::tail_lines(&paths.qemu_log(), LOG_TAIL_LINES);
        ready.send(false, &detail, &tail);
        crashed(Reason::StartFailed, detail)
    };
    let profile = match Profiles::load(cfg.qemu.profiles_dir.as_deref())
        .map_err(|e| e.to_string())
        .and_then(|p| p.get(&spec.os_variant).cloned().map_err(|e| e.to_string()))
    {
        Ok(p) => p,
        Err(e) => return fail(ready, e, &paths),
    };
    let decision = match accel::detect(cfg.qemu.accel) {
        Ok(d) => d,
        Err(e) => return fail(ready, e.to_string(), &paths),
    };
    rec.status.accel = Some(decision.accel.as_str().to_owned());
    if let Err(e) = crate::netplan::check_port_forwards(spec) {
        return fail(ready, e, &paths);
    }
    let exe = std::env::current_exe().unwrap_or_else(|_| "kvm-mcp".into());
    let taps = match crate::netplan::open_taps(cfg, spec, &exe).await {
        Ok(t) => t,
        Err(e) => return fail(ready, e, &paths),
    };
    let fds = cmdline::FdPlan::standard(taps.len());
    let run_spec = crate::provision::install::run_spec(spec, &paths);
    // Every file QEMU opens, checked now: chains may have changed since create.
    let host = match crate::qemu::prepare::host_inputs(cfg, &run_spec, &paths).await {
        Ok(h) => h,
        Err(e) => return fail(ready, crate::error::chain(&e), &paths),
    };
    let mut argv = match cmdline::build(&run_spec, &profile, decision.accel, &paths, &fds, &host) {
        Ok(a) => a,
        Err(e) => return fail(ready, e.to_string(), &paths),
    };
    // VNC on a free display; the allocation lock is held until QEMU answers on QMP.
    let vnc = match crate::display::vnc::plan(&cfg.display, &profile, &cfg.run_dir, &paths).await {
        Ok(v) => v,
        Err(e) => return fail(ready, e, &paths),
    };
    argv.extend(vnc.iter().flat_map(crate::display::vnc::VncPlan::args));
    if let Err(e) = crate::console::log::begin_run(&paths, &cfg.console) {
        tracing::warn!(error = %e, "cannot rotate the serial log");
    }
    let (qmp_fd, ev_fd) = match (listen(&paths.qmp_sock()), listen(&paths.events_sock())) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            return fail(ready, format!("cannot bind monitor sockets in {}: {e}", paths.run.display()), &paths);
        }
    };
    let mut pass: Vec<(&OwnedFd, i32)> = vec![(&qmp_fd, fds.qmp), (&ev_fd, fds.events)];
    pass.extend(taps.iter().zip(&fds.taps).map(|(t, n)| (t, *n)));
    let _ = fsutil::append_line(
        &paths.qemu_log(),
        &format!("kvm-mcp: starting {} {}", cfg.qemu.binary.display(), argv.join(" ")),
    );
    let mut child = match launcher::spawn_qemu(&cfg.qemu.binary, &argv, &pass, &paths.qemu_log()) {
        Ok(c) => c,
        Err(e) => {
            return fail(
                ready,
                format!("cannot run {}: {e}; install qemu-system-x86 or set qemu.binary", cfg.qemu.binary.display()),
                &paths,
            );
        }
    };
    drop((qmp_fd, ev_fd, taps));
    let pid = child.id().map_or(0, u32::cast_signed);
    rec.status.qemu = ProcIdentity::capture(pid);
    rec.status.started_at_ms = Some(now_ms());
    rec.flush();

    // Connect to the event monitor, unless QEMU dies first (bad option, missing file).
    let events_sock = paths.events_sock();
    let connected = tokio::select! {
        c = Qmp::connect_with_events(&events_sock, QMP_CONNECT_TIMEOUT) => Some(c),
        st = child.wait() => { let st = st.ok(); return exited_early(ready, &paths, st); }
    };
    let Some(Ok((qmp, mut events))) = connected else {
        let _ = child.start_kill();
        let st = child.wait().await.ok();
        return exited_early(ready, &paths, st);
    };
    if let Some(v) = vnc
        && let Err(e) = v.activate(&qmp, &paths).await
    {
        tracing::warn!(error = %e, "VNC stays closed");
    }
    let running = qmp.status().await.map(|s| s.running).unwrap_or(true);
    rec.set(if running { VmState::Running } else { VmState::Paused }, why, None);
    ready.send(true, "running", &[]);

    let mut seen = Seen::default();
    // begin_run rotated just now: the first check is one period away.
    let every = crate::console::log::ROTATE_CHECK;
    let mut rotate = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    let status = loop {
        tokio::select! {
            st = child.wait() => break st.ok(),
            _ = rotate.tick() => {
                if let Err(e) = crate::console::log::rotate_if_needed(&paths, &cfg.console) {
                    tracing::warn!(error = %e, "cannot rotate the serial log");
                }
            }
            ev = events.recv() => match ev {
                Some(ev) => on_event(rec, &mut seen, &ev),
                // Monitor closed: QEMU is exiting; wait for it.
                None => break child.wait().await.ok(),
            },
        }
    };
    drop(qmp);
    classify(&paths, &seen, status)
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
    ready.send(false, &detail, &tail);
    Outcome { exit: st.map(exit_info), ..crashed(Reason::StartFailed, detail) }
}

/// What the event monitor told us during one run.
#[derive(Debug, Default)]
struct Seen {
    shutdown: Option<qmp::ShutdownCause>,
    panicked: bool,
}

fn on_event(rec: &mut Recorder, seen: &mut Seen, ev: &qmp::Event) {
    match ev {
        qmp::Event::STOP { .. } if rec.status.state == VmState::Running => {
            rec.set(VmState::Paused, Reason::HostRequest, None);
        }
        qmp::Event::RESUME { .. } if matches!(rec.status.state, VmState::Paused | VmState::Starting) => {
            rec.set(VmState::Running, Reason::HostRequest, None);
        }
        qmp::Event::POWERDOWN { .. } if rec.status.state != VmState::ShuttingDown => {
            rec.set(VmState::ShuttingDown, Reason::HostRequest, Some("power button pressed".into()));
        }
        qmp::Event::SHUTDOWN { data, .. } => {
            seen.shutdown = Some(data.reason);
            if rec.status.state != VmState::ShuttingDown {
                rec.set(VmState::ShuttingDown, reason_of(data.reason), Some(format!("{:?}", data.reason)));
            }
        }
        qmp::Event::RESET { data, .. } => {
            rec.event(rec.status.state, Reason::GuestReset, Some(format!("reset ({:?})", data.reason)));
        }
        qmp::Event::GUEST_PANICKED { .. } => {
            seen.panicked = true;
            rec.event(rec.status.state, Reason::GuestPanic, Some("guest reported a panic".into()));
        }
        _ => {}
    }
}

fn reason_of(cause: qmp::ShutdownCause) -> Reason {
    use qmp::ShutdownCause as C;
    match cause {
        C::guest_shutdown => Reason::GuestPoweroff,
        C::guest_panic => Reason::GuestPanic,
        C::guest_reset | C::subsystem_reset => Reason::GuestReset,
        C::host_signal => Reason::HostSignal,
        _ => Reason::HostRequest,
    }
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

fn classify(paths: &VmPaths, seen: &Seen, status: Option<std::process::ExitStatus>) -> Outcome {
    let exit = status.map(exit_info);
    let stop_asked = paths.stop_intent().exists();
    let (state, reason, detail) = match &exit {
        Some(ExitInfo { signal: Some(_), signal_name, .. }) => (
            VmState::Crashed,
            Reason::QemuSignal,
            format!("QEMU was killed by {}", signal_name.as_deref().unwrap_or("a signal")),
        ),
        Some(ExitInfo { code: Some(c), .. }) if *c != 0 => {
            (VmState::Crashed, Reason::QemuExit, format!("QEMU exited with code {c}"))
        }
        _ if seen.panicked || seen.shutdown == Some(qmp::ShutdownCause::guest_panic) => {
            (VmState::Crashed, Reason::GuestPanic, "the guest kernel panicked".into())
        }
        _ => match seen.shutdown {
            // The guest answered the power button (or powered off by itself).
            Some(qmp::ShutdownCause::guest_shutdown) => {
                (VmState::Shutoff, Reason::GuestPoweroff, "the guest powered off".into())
            }
            Some(_) | None if stop_asked => (VmState::Shutoff, Reason::HostRequest, "stopped on request".into()),
            Some(c) => (VmState::Shutoff, reason_of(c), format!("shut down ({c:?})")),
            None => (VmState::Shutoff, Reason::QemuExit, "QEMU exited with code 0 without a shutdown event".into()),
        },
    };
    Outcome { state, reason, detail, exit }
}

/// Follows a QEMU we are not the parent of: events from the monitor, exit via pidfd.
async fn watch_adopted(rec: &mut Recorder, spec: &VmSpec, pidfd: &PidFd) -> Outcome {
    let paths = rec.paths.clone();
    let mut seen = Seen::default();
    let conn = Qmp::connect_with_events(&paths.events_sock(), Duration::from_secs(10)).await;
    if let Ok((qmp, mut events)) = conn {
        let running = qmp.status().await.map(|s| s.running).unwrap_or(true);
        let st = if running { VmState::Running } else { VmState::Paused };
        rec.status.state = st;
        rec.event(st, Reason::HostRequest, Some("adopted by a new supervisor".into()));
        rec.flush();
        while let Some(ev) = events.recv().await {
            on_event(rec, &mut seen, &ev);
        }
        drop(qmp);
    } else {
        tracing::warn!("cannot reach the event monitor of the adopted QEMU; watching its pid only");
    }
    // The monitor closed (or was unreachable): wait for the process itself.
    while !pidfd.wait_exit(Duration::from_secs(3600)).await {}
    let _ = spec;
    let mut o = classify(&paths, &seen, None);
    if seen.shutdown.is_none() && !paths.stop_intent().exists() {
        o = crashed(
            Reason::QemuSignal,
            "QEMU exited while adopted; its exit status is unknown (it was not our child)".into(),
        );
    }
    o
}

/// Used by front ends: whether the recorded QEMU is this VM's and alive.
#[must_use]
pub fn qemu_liveness(status: &Status, spec: &VmSpec) -> Liveness {
    status.qemu.as_ref().map_or(Liveness::Dead, |q| q.check(&spec.uuid.to_string()))
}
