//! One QEMU run, planned before anything is spawned: the profile and accelerator, the
//! install phase, user-mode port forwards checked free, one tap per bridged NIC (made
//! through `/dev/net/tun` with a vnet header, attached to its bridge and brought up over
//! rtnetlink, the managed bridge's DHCP server started first), a VNC display claimed,
//! the monitor sockets bound, and the whole argv from the pure builder. Every failure
//! keeps its kind ([`LaunchError::kind`]), so a spec that does not fit its profile
//! reaches the caller as invalid input, a taken port as a conflict.
//!
//! A VM with a saved state (a fork's copy) resumes from it: QEMU inherits the file as
//! `-incoming fd:N`, and the name is removed once QEMU runs, so a restart boots.
//!
//! The taps are not persistent: once QEMU (which inherits the fds) exits and the
//! supervisor has dropped its copies, the kernel deletes them, whatever way QEMU ended.

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::display::vnc::{self, VncError, VncRecord};
use crate::error::ErrorKind;
use crate::ids::IfName;
use crate::layout::VmPaths;
use crate::network::{Netlink, NetworkError, Tap};
use crate::qemu::accel::{self, AccelDecision, KvmUnusable};
use crate::qemu::cmdline::{self, CmdlineError, FdPlan, HostInputs};
use crate::qemu::prepare::{self, PrepareError};
use crate::qemu::profile::{Profile, ProfileError, Profiles};
use crate::spec::{NetworkMode, VmSpec};

use super::dhcp::{self, DhcpError};

/// Taps are opened with a vnet header, so QEMU can offload checksums and GSO.
const VNET_HDR: bool = true;

/// Why a run could not be launched.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error(transparent)]
    Profile(#[from] ProfileError),
    #[error(transparent)]
    Accel(#[from] KvmUnusable),
    #[error("NIC {nic}: port forward {forward}")]
    PortForward {
        nic: usize,
        forward: String,
        #[source]
        source: NetworkError,
    },
    #[error("NIC {nic}")]
    Nic {
        nic: usize,
        #[source]
        source: NetworkError,
    },
    #[error("NIC {nic}")]
    Dhcp {
        nic: usize,
        #[source]
        source: DhcpError,
    },
    #[error(transparent)]
    Prepare(#[from] PrepareError),
    #[error(transparent)]
    Cmdline(#[from] CmdlineError),
    #[error(transparent)]
    Vnc(#[from] VncError),
    #[error("cannot bind the monitor sockets in {dir}")]
    Sockets {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open the saved state {path} to resume from")]
    Incoming {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot run {binary}; install qemu-system-x86 or set qemu.binary")]
    Spawn {
        binary: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl LaunchError {
    /// The kind the caller of `start` sees.
    #[must_use]
    pub fn kind(&self) -> ErrorKind {
        match self {
            LaunchError::Profile(ProfileError::Unknown { .. }) | LaunchError::Cmdline(_) => ErrorKind::InvalidInput,
            LaunchError::Profile(_) | LaunchError::Sockets { .. } | LaunchError::Incoming { .. } => ErrorKind::Internal,
            LaunchError::PortForward { source, .. } | LaunchError::Nic { source, .. } => source.kind(),
            LaunchError::Vnc(e) => e.kind(),
            LaunchError::Prepare(e) => e.kind(),
            LaunchError::Accel(_) | LaunchError::Dhcp { .. } | LaunchError::Spawn { .. } => ErrorKind::Unavailable,
        }
    }
}

/// Everything one QEMU run needs, ready to spawn.
#[derive(Debug)]
pub struct LaunchPlan {
    /// The accelerator and why.
    pub accel: AccelDecision,
    /// QEMU's arguments.
    pub argv: Vec<String>,
    /// Descriptors QEMU inherits, with the numbers it finds them at.
    pub fds: Vec<(OwnedFd, i32)>,
    /// The VNC claimed for this run (its password is set once QEMU answers).
    pub vnc: Option<VncRecord>,
}

/// Binds a listening socket at `path` (replacing a stale file) for QEMU to inherit.
fn listen(path: &Path) -> std::io::Result<OwnedFd> {
    let _ = std::fs::remove_file(path);
    Ok(OwnedFd::from(UnixListener::bind(path)?))
}

/// Plans the next run of `spec`. `exe` is the kvm-mcp binary (to start the DHCP
/// supervisor of a managed bridge).
///
/// # Errors
/// [`LaunchError`], with its kind.
pub async fn plan(cfg: &Config, spec: &VmSpec, paths: &VmPaths, exe: &Path) -> Result<LaunchPlan, LaunchError> {
    let profile = Profiles::load(cfg.qemu.profiles_dir.as_deref())?.get(&spec.os_variant)?.clone();
    let accel = accel::detect(cfg.qemu.accel)?;
    check_port_forwards(spec)?;
    let run_spec = crate::provision::install::run_spec(spec, paths);
    let incoming = crate::store::open_incoming(paths)
        .map_err(|source| LaunchError::Incoming { path: paths.incoming(), source })?;
    let fd_plan = FdPlan::standard(bridged(spec).len());
    let fd_plan = if incoming.is_some() { fd_plan.with_incoming() } else { fd_plan };
    // Every file QEMU opens, checked now: chains may have changed since create.
    let mut host = prepare::host_inputs(cfg, &run_spec, paths).await?;
    // Checked before taps are made or a display is claimed: a spec that cannot run
    // with its profile fails here, having changed nothing.
    cmdline::build(&run_spec, &profile, accel.accel, paths, &fd_plan, &host)?;
    let taps = open_taps(cfg, spec, exe).await?;
    let vnc = vnc::claim(&cfg.display, &profile, &cfg.run_dir, &spec.name, paths)?;
    host.vnc = vnc.as_ref().map(VncRecord::listen);
    let argv = build_argv(&run_spec, &profile, &accel, paths, &fd_plan, &host);
    let argv = match argv {
        Ok(a) => a,
        Err(e) => {
            vnc::cleanup(&cfg.run_dir, &spec.name, paths);
            return Err(e);
        }
    };
    let sockets = (|| Ok::<_, std::io::Error>((listen(&paths.qmp_sock())?, listen(&paths.events_sock())?)))();
    let (qmp, events) = match sockets {
        Ok(s) => s,
        Err(source) => {
            vnc::cleanup(&cfg.run_dir, &spec.name, paths);
            return Err(LaunchError::Sockets { dir: paths.run.clone(), source });
        }
    };
    let mut fds = vec![(qmp, fd_plan.qmp), (events, fd_plan.events)];
    fds.extend(taps.into_iter().zip(fd_plan.taps.iter().copied()));
    fds.extend(incoming.map(OwnedFd::from).zip(fd_plan.incoming));
    Ok(LaunchPlan { accel, argv, fds, vnc })
}

fn build_argv(
    spec: &VmSpec,
    profile: &Profile,
    accel: &AccelDecision,
    paths: &VmPaths,
    fds: &FdPlan,
    host: &HostInputs,
) -> Result<Vec<String>, LaunchError> {
    Ok(cmdline::build(spec, profile, accel.accel, paths, fds, host)?)
}

/// Bridged NICs of `spec`: (index, bridge).
fn bridged(spec: &VmSpec) -> Vec<(usize, &str)> {
    spec.nics
        .iter()
        .enumerate()
        .filter_map(|(i, n)| match &n.mode {
            NetworkMode::Bridge { bridge } => Some((i, bridge.as_str())),
            NetworkMode::User { .. } => None,
        })
        .collect()
}

/// Opens the taps for `spec`'s bridged NICs, in NIC order, each attached to its bridge
/// and up. A missing bridge is created only with `network.create_bridge` or when it is
/// the managed bridge, whose DHCP server is started first (by `exe dhcp-supervise`).
async fn open_taps(cfg: &Config, spec: &VmSpec, exe: &Path) -> Result<Vec<OwnedFd>, LaunchError> {
    let bridged = bridged(spec);
    if bridged.is_empty() {
        return Ok(Vec::new());
    }
    let nic_err = |nic: usize| move |source: NetworkError| LaunchError::Nic { nic, source };
    let nl = Netlink::connect().map_err(nic_err(bridged[0].0))?;
    let mut taps = Vec::with_capacity(bridged.len());
    for (i, bridge) in bridged {
        let br = IfName::new(bridge).map_err(|e| LaunchError::Nic { nic: i, source: e.into() })?;
        if let Some(d) = cfg.network.managed(bridge) {
            dhcp::ensure_running(cfg, d, exe).await.map_err(|source| LaunchError::Dhcp { nic: i, source })?;
        }
        nl.ensure_bridge(&br, cfg.network.create_bridge).await.map_err(nic_err(i))?;
        let name = spec.tap_name(i).map_err(|e| LaunchError::Nic { nic: i, source: e.into() })?;
        let tap = Tap::create(&name, VNET_HDR).map_err(nic_err(i))?;
        nl.attach_and_up(&name, &br).await.map_err(nic_err(i))?;
        tracing::info!(tap = %name, bridge = %br, "tap attached");
        taps.push(tap.into_fd());
    }
    Ok(taps)
}

/// Checks that the host port of every user-mode forward can be bound, so a port held
/// by another program is a clear error rather than a QEMU start-up failure.
///
/// # Errors
/// [`LaunchError::PortForward`] naming the NIC and the forward.
pub fn check_port_forwards(spec: &VmSpec) -> Result<(), LaunchError> {
    for (i, nic) in spec.nics.iter().enumerate() {
        if let NetworkMode::User { port_forwards } = &nic.mode {
            for f in port_forwards {
                crate::network::probe_host_port(f).map_err(|source| LaunchError::PortForward {
                    nic: i,
                    forward: f.to_string(),
                    source,
                })?;
            }
        }
    }
    Ok(())
}
