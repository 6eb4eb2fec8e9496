//! The managed bridge's DHCP server. With `network.dhcp` configured, a small per-bridge
//! supervisor (`kvm-mcp dhcp-supervise <bridge>`, the same pattern as the per-VM one)
//! owns Debian's dnsmasq: it creates the bridge and its host address, runs dnsmasq bound
//! to that bridge alone with its lease and pid files under `<run_dir>/.bridges/<bridge>/`,
//! restarts it (with back-off) when it dies, and stops it and exits once no running VM
//! has used the bridge for a minute.
//!
//! Why a supervisor of its own: dnsmasq serves every VM on the bridge, so it must not
//! live or die with any one VM's supervisor; and only its parent learns at once that it
//! died. VM supervisors start it on demand ([`ensure_running`]) before they plug a tap
//! into the bridge; `supervisor.lock` makes it a singleton, and dnsmasq gets SIGTERM
//! from the kernel (`PR_SET_PDEATHSIG`) if the DHCP supervisor itself is killed.

use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};

use crate::config::{Config, DhcpSettings};
use crate::error::ErrorKind;
use crate::fsutil;
use crate::ids::IfName;
use crate::layout::BridgePaths;
use crate::lock;
use crate::network::{Netlink, NetworkError};
use crate::procid::PidFd;
use crate::qemu::launcher;
use crate::spec::NetworkMode;
use crate::state::now_ms;
use crate::store::{self, Store};

use super::ready::{self, Reporter};
use super::{Backoff, PrepareError, take_singleton};

/// How long [`ensure_running`] waits for the DHCP supervisor's report.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long dnsmasq may take to write its pid file.
const DNSMASQ_START_TIMEOUT: Duration = Duration::from_secs(10);
/// A dnsmasq that ran this long resets the back-off.
const STABLE_RUN: Duration = Duration::from_secs(60);
/// How often the supervisor checks whether any VM still uses the bridge.
const IDLE_CHECK: Duration = Duration::from_secs(5);
/// How long the bridge must be unused before the supervisor stops dnsmasq and exits.
const IDLE_EXIT: Duration = Duration::from_secs(60);

/// DHCP supervisor failures.
#[derive(Debug, thiserror::Error)]
pub enum DhcpError {
    #[error("bridge {bridge} is not the managed bridge (network.dhcp.bridge)")]
    NotManaged { bridge: String },
    #[error(transparent)]
    Prepare(#[from] PrepareError),
    #[error("cannot start the DHCP supervisor {exe}")]
    Spawn {
        exe: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("managed bridge {bridge}")]
    Bridge {
        bridge: String,
        #[source]
        source: NetworkError,
    },
    #[error("dnsmasq for bridge {bridge} failed to start: {message}")]
    Dnsmasq { bridge: String, message: String },
    #[error("cannot run {binary}; install dnsmasq-base or set network.dnsmasq")]
    RunDnsmasq {
        binary: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the DHCP supervisor of bridge {bridge} did not report within {secs} s (see {log})")]
    Timeout { bridge: String, secs: u64, log: std::path::PathBuf },
}

impl DhcpError {
    /// The kind front ends present.
    #[must_use]
    pub fn kind(&self) -> ErrorKind {
        match self {
            DhcpError::NotManaged { .. } => ErrorKind::InvalidInput,
            DhcpError::Bridge { source, .. } => source.kind(),
            DhcpError::Prepare(_) => ErrorKind::Internal,
            DhcpError::Spawn { .. }
            | DhcpError::Dnsmasq { .. }
            | DhcpError::RunDnsmasq { .. }
            | DhcpError::Timeout { .. } => ErrorKind::Unavailable,
        }
    }
}

/// What the DHCP supervisor is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DhcpState {
    /// dnsmasq runs.
    Running,
    /// dnsmasq died; waiting to start it again.
    Restarting,
    /// Shutting down because the bridge is idle; a VM starting now must wait for the
    /// lock and start a new supervisor.
    Stopping,
}

/// `status.json` of a managed bridge.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DhcpStatus {
    pub bridge: String,
    pub state: DhcpState,
    pub supervisor_pid: i32,
    pub dnsmasq_pid: Option<i32>,
    /// Unix ms when the current dnsmasq started.
    pub started_at_ms: Option<u64>,
    /// dnsmasq restarts since the supervisor started.
    pub restarts: u32,
    /// How the previous dnsmasq ended.
    pub last_exit: Option<String>,
}

/// Reads the status file of `bridge`'s DHCP supervisor.
#[must_use]
pub fn read_status(paths: &BridgePaths) -> Option<DhcpStatus> {
    store::read_record(&paths.status()).present()
}

/// dnsmasq's argv for `d`: DHCP only (DNS off), bound to the bridge alone, no system
/// config, files under `paths`, log on stderr.
#[must_use]
pub fn dnsmasq_args(d: &DhcpSettings, paths: &BridgePaths) -> Vec<String> {
    let span = u32::from(d.range_end) - u32::from(d.range_start) + 1;
    vec![
        "--keep-in-foreground".into(),
        "--conf-file=/dev/null".into(),
        "--port=0".into(),
        "--no-resolv".into(),
        "--no-hosts".into(),
        "--bind-dynamic".into(),
        format!("--interface={}", d.bridge),
        "--except-interface=lo".into(),
        format!("--dhcp-range={},{},{},{}", d.range_start, d.range_end, d.netmask(), d.lease_time_s),
        format!("--dhcp-lease-max={span}"),
        "--dhcp-authoritative".into(),
        format!("--dhcp-leasefile={}", paths.leases().display()),
        format!("--pid-file={}", paths.pid().display()),
        "--log-facility=-".into(),
    ]
}

/// Makes sure the DHCP supervisor of the managed bridge `d` runs, starting it when
/// needed and waiting for its report that dnsmasq is up.
///
/// # Errors
/// [`DhcpError`] with dnsmasq's or the supervisor's reason.
pub async fn ensure_running(cfg: &Config, d: &DhcpSettings, exe: &Path) -> Result<(), DhcpError> {
    let paths = BridgePaths::new(&cfg.run_dir, &d.bridge);
    std::fs::create_dir_all(&paths.dir).map_err(|source| PrepareError::Io { path: paths.dir.clone(), source })?;
    let deadline = Instant::now() + READY_TIMEOUT;
    // A supervisor that is shutting down still holds the lock: wait it out.
    while lock::is_held(&paths.supervisor_lock()) {
        if read_status(&paths).is_none_or(|s| s.state != DhcpState::Stopping) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(DhcpError::Timeout {
                bridge: d.bridge.to_string(),
                secs: READY_TIMEOUT.as_secs(),
                log: paths.log(),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut args = vec!["dhcp-supervise".to_owned()];
    if let Some(p) = cfg.file() {
        args.extend(["--config".into(), p.to_string_lossy().into_owned()]);
    }
    let report = ready::spawn_and_wait(exe, &args, d.bridge.as_str(), &paths.log(), READY_TIMEOUT)
        .await
        .map_err(|source| DhcpError::Spawn { exe: exe.to_owned(), source })?
        .ok_or_else(|| DhcpError::Timeout {
            bridge: d.bridge.to_string(),
            secs: READY_TIMEOUT.as_secs(),
            log: paths.log(),
        })?;
    if report.ok {
        return Ok(());
    }
    let message = report.message.unwrap_or_else(|| {
        format!("the DHCP supervisor exited before reporting: {}", fsutil::tail_lines(&paths.log(), 3).join(" | "))
    });
    Err(DhcpError::Dnsmasq { bridge: d.bridge.to_string(), message })
}

/// Whether an active VM has a NIC on `bridge`, by the one liveness check
/// ([`store::Vm::observe`]): its status is active and its supervisor or QEMU lives. A
/// VM supervisor takes its lock before it records "starting", so a VM being started is
/// never missed.
fn bridge_in_use(cfg: &Config, bridge: &IfName) -> bool {
    Store::new(&cfg.state_dir, &cfg.run_dir).defined().iter().any(|vm| {
        vm.spec.nics.iter().any(|n| matches!(&n.mode, NetworkMode::Bridge { bridge: b } if b == bridge.as_str()))
            && vm.is_active()
    })
}

/// Creates the bridge if needed, gives it the host address and brings it up.
async fn prepare_bridge(d: &DhcpSettings) -> Result<(), NetworkError> {
    let nl = Netlink::connect()?;
    nl.ensure_bridge(&d.bridge, true).await?;
    nl.add_address(&d.bridge, IpAddr::V4(d.host_address), d.prefix_len).await?;
    nl.set_up(&d.bridge).await
}

/// Ends a dnsmasq left behind by an earlier supervisor (its pid file names a live
/// process whose command line carries our lease file).
fn kill_stale(paths: &BridgePaths) {
    let Some(pid) = std::fs::read_to_string(paths.pid()).ok().and_then(|s| s.trim().parse::<i32>().ok()) else {
        return;
    };
    let Ok(fd) = PidFd::open(pid) else { return };
    let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let marker = paths.leases().to_string_lossy().into_owned();
    if String::from_utf8_lossy(&cmd).contains(&marker) {
        tracing::warn!(pid, "stopping a dnsmasq left behind by an earlier supervisor");
        let _ = fd.signal(Signal::SIGKILL);
    }
}

struct Supervisor<'a> {
    cfg: &'a Config,
    d: &'a DhcpSettings,
    paths: BridgePaths,
    status: DhcpStatus,
}

impl Supervisor<'_> {
    fn flush(&self) {
        let _ = super::flush_status(&self.paths.status(), &self.status);
    }

    fn failed(&self, message: String) -> DhcpError {
        DhcpError::Dnsmasq { bridge: self.d.bridge.to_string(), message }
    }

    /// Prepares the bridge and starts dnsmasq; returns it once its pid file names it.
    async fn start_dnsmasq(&mut self) -> Result<tokio::process::Child, DhcpError> {
        prepare_bridge(self.d)
            .await
            .map_err(|source| DhcpError::Bridge { bridge: self.d.bridge.to_string(), source })?;
        let _ = std::fs::remove_file(self.paths.pid());
        let mut child = launcher::spawn_tied_child(
            &self.cfg.network.dnsmasq,
            &dnsmasq_args(self.d, &self.paths),
            &self.paths.log(),
        )
        .map_err(|source| DhcpError::RunDnsmasq { binary: self.cfg.network.dnsmasq.clone(), source })?;
        let pid = child.id().map_or(0, u32::cast_signed);
        let deadline = Instant::now() + DNSMASQ_START_TIMEOUT;
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                let tail = fsutil::tail_lines(&self.paths.log(), 1).join("");
                return Err(self.failed(format!("dnsmasq exited at once ({st}): {tail}")));
            }
            let written = std::fs::read_to_string(self.paths.pid()).ok().and_then(|s| s.trim().parse::<i32>().ok());
            if written == Some(pid) {
                break;
            }
            if Instant::now() >= deadline {
                let _ = child.start_kill();
                return Err(
                    self.failed(format!("dnsmasq wrote no pid file within {} s", DNSMASQ_START_TIMEOUT.as_secs()))
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.status.state = DhcpState::Running;
        self.status.dnsmasq_pid = Some(pid);
        self.status.started_at_ms = Some(now_ms());
        self.flush();
        tracing::info!(pid, bridge = %self.d.bridge, "dnsmasq running");
        Ok(child)
    }

    async fn stop_dnsmasq(child: &mut tokio::process::Child) {
        if let Some(pid) = child.id() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid.cast_signed()), Signal::SIGTERM);
        }
        if tokio::time::timeout(Duration::from_secs(5), child.wait()).await.is_err() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }
}

/// Entry point of `kvm-mcp dhcp-supervise <bridge>`.
///
/// # Errors
/// [`DhcpError`] when it cannot take charge of the bridge.
pub async fn run(cfg: &Config, bridge: &IfName, ready_fd: Option<i32>) -> Result<(), DhcpError> {
    // SAFETY: the starter passes the write end of a pipe at this number and nothing
    // else in this process owns it.
    let mut ready = unsafe { Reporter::from_raw_fd(ready_fd) };
    let Some(d) = cfg.network.managed(bridge.as_str()) else {
        let e = DhcpError::NotManaged { bridge: bridge.to_string() };
        ready.fail(e.kind(), &e.to_string(), &[]);
        return Err(e);
    };
    let paths = BridgePaths::new(&cfg.run_dir, bridge);
    let Some(_lock) = take_singleton(&paths.dir, &paths.supervisor_lock()).inspect_err(|e| {
        ready.fail(ErrorKind::Internal, &crate::error::chain(e), &[]);
    })?
    else {
        ready.ok("already running");
        return Ok(());
    };
    kill_stale(&paths);
    let status = DhcpStatus {
        bridge: bridge.to_string(),
        state: DhcpState::Restarting,
        supervisor_pid: std::process::id().cast_signed(),
        dnsmasq_pid: None,
        started_at_ms: None,
        restarts: 0,
        last_exit: None,
    };
    let mut sup = Supervisor { cfg, d, paths: paths.clone(), status };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|source| PrepareError::Io { path: paths.dir.clone(), source })?;
    let mut backoff = Backoff::default();
    let mut idle_since: Option<Instant> = None;
    loop {
        let mut child = match sup.start_dnsmasq().await {
            Ok(c) => c,
            Err(e) => {
                let message = crate::error::chain(&e);
                tracing::error!(%message, "dnsmasq did not start");
                if ready.pending() {
                    ready.fail(e.kind(), &message, &[]);
                    let _ = std::fs::remove_file(paths.status());
                    return Err(e);
                }
                sup.status.state = DhcpState::Restarting;
                sup.status.last_exit = Some(message);
                sup.flush();
                tokio::time::sleep(backoff.next_delay()).await;
                continue;
            }
        };
        ready.ok("running");
        let started = Instant::now();
        let mut tick = tokio::time::interval(IDLE_CHECK);
        let exit = loop {
            tokio::select! {
                st = child.wait() => break Some(st),
                _ = term.recv() => break None,
                _ = tick.tick() => {
                    if bridge_in_use(cfg, bridge) {
                        idle_since = None;
                    } else if idle_since.get_or_insert_with(Instant::now).elapsed() >= IDLE_EXIT {
                        // Mark first, then look once more: a VM supervisor that saw
                        // "running" took its own lock before looking, so it shows here.
                        sup.status.state = DhcpState::Stopping;
                        sup.flush();
                        if bridge_in_use(cfg, bridge) {
                            idle_since = None;
                            sup.status.state = DhcpState::Running;
                            sup.flush();
                        } else {
                            break None;
                        }
                    }
                }
            }
        };
        let Some(st) = exit else {
            sup.status.state = DhcpState::Stopping;
            sup.flush();
            Supervisor::stop_dnsmasq(&mut child).await;
            tracing::info!(bridge = %bridge, "dnsmasq stopped; DHCP supervisor exiting");
            let _ = std::fs::remove_file(paths.pid());
            let _ = std::fs::remove_file(paths.status());
            return Ok(());
        };
        let how = st.map_or_else(|e| format!("unknown ({e})"), |s| s.to_string());
        tracing::warn!(exit = %how, "dnsmasq died; restarting");
        if started.elapsed() >= STABLE_RUN {
            backoff.reset();
        }
        sup.status.state = DhcpState::Restarting;
        sup.status.dnsmasq_pid = None;
        sup.status.restarts += 1;
        sup.status.last_exit = Some(how);
        sup.flush();
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn settings() -> DhcpSettings {
        DhcpSettings {
            bridge: IfName::new("labbr0").unwrap(),
            network: Ipv4Addr::new(192, 0, 2, 0),
            prefix_len: 24,
            host_address: Ipv4Addr::new(192, 0, 2, 1),
            range_start: Ipv4Addr::new(192, 0, 2, 100),
            range_end: Ipv4Addr::new(192, 0, 2, 199),
            lease_time_s: 3600,
        }
    }

    #[test]
    fn dnsmasq_binds_the_bridge_alone_with_dns_off() {
        let args = dnsmasq_args(&settings(), &BridgePaths { dir: "/run/k/.bridges/labbr0".into() });
        for want in
            ["--interface=labbr0", "--bind-dynamic", "--except-interface=lo", "--port=0", "--conf-file=/dev/null"]
        {
            assert!(args.iter().any(|a| a == want), "{want} missing from {args:?}");
        }
    }

    #[test]
    fn dnsmasq_range_carries_mask_and_lease_time() {
        let args = dnsmasq_args(&settings(), &BridgePaths { dir: "/run/k/.bridges/labbr0".into() });
        assert!(args.contains(&"--dhcp-range=192.0.2.100,192.0.2.199,255.255.255.0,3600".to_owned()), "{args:?}");
    }

    #[test]
    fn dnsmasq_files_live_under_the_bridge_dir() {
        let args = dnsmasq_args(&settings(), &BridgePaths { dir: "/run/k/.bridges/labbr0".into() });
        assert!(args.contains(&"--dhcp-leasefile=/run/k/.bridges/labbr0/dnsmasq.leases".to_owned()), "{args:?}");
    }
}
