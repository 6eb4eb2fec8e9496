//! The one command surface. The CLI, the MCP server and the HTTP server parse their
//! input, call these operations and format the result; none of them holds logic or
//! state of its own. Every operation works from the state directory, so front ends are
//! peers; mutations of one VM are serialised by its lock.
//!
//! Layers, and the rule that keeps them apart:
//! - [`context`]: the VM handle (load through the store, lock, observe, QMP, the
//!   running-VM preamble, the supervisor start), with [`views`], what a VM looks like
//!   to callers. Everything may use them; they use no other module here.
//! - Areas, one concern each: `disks`, `images`, `media`, `block`, `net`, `ip`,
//!   `provision`, `console`, `display`, `agent`, `stats`, `snapshot`, `host`, `watch`,
//!   `shutdown` (signs that a guest is going down, for `stop`).
//!   An area uses the context and never another area; a planner (`plan_disks`,
//!   `plan_nics`, `plan_provisioning`) takes only its part of a request.
//! - Composing modules, which alone call across areas: `create` (plans, then writes
//!   under one rollback guard), `lifecycle` (start, stop, delete, live views),
//!   `clone` (clone, resize, reset), `fork` (copies of a running VM), `pool` (warm pools of templates: the owner's
//!   loop and claims) and `run` (a throw-away VM for one command).

mod agent;
mod block;
mod clone;
mod console;
mod context;
mod create;
mod disks;
mod display;
mod fork;
mod host;
mod images;
mod ip;
mod lifecycle;
mod media;
mod net;
mod pool;
mod provision;
mod run;
mod shutdown;
mod snapshot;
mod stats;
mod views;
mod watch;

use std::path::PathBuf;
use std::time::Duration;

pub use crate::progress::{Progress, ProgressFn, no_progress};
pub use agent::GuestExecRequest;
pub use clone::{CloneIdentity, CloneReport, CloneRequest};
pub use console::ConsoleQuery;
pub use create::CreateRequest;
pub use disks::{DeleteOptions, DeleteReport, DiskSource};
pub use display::{Screenshot, VncInfo, VncPort};
pub use fork::{ForkCopy, ForkReport, ForkRequest, MAX_FORK_COUNT};
pub use host::{DiskSpace, HostInfo, ProfileInfo};
pub use images::{ImageEntry, IsoEntry};
pub use ip::IpQuery;
pub use lifecycle::StopOptions;
pub use net::{MAX_NICS, NIC_MODELS, NicRequest, PortForwardInfo};
pub use pool::{MAX_POOL_SIZE, TemplateRequest};
pub use run::{
    DEFAULT_BOOT_TIMEOUT, DEFAULT_RUN_TIMEOUT, FileIn, FileOut, MAX_RUN_TIMEOUT, RunBase, RunPhases, RunReport,
    RunRequest,
};
pub use snapshot::SnapshotEntry;
pub use stats::{CpuStats, DiskStats, MemoryStats, NicStats, VcpuStats, VmStats};
pub use views::{IpAnswer, IpSource, NicIps, VmInfo, VmIps, VmSummary};
pub use watch::VmSetWatcher;

use crate::config::{Config, ConfigError};
use crate::error::ErrorKind;
use crate::ids::NameError;
use crate::network::NetworkError;
use crate::qemu::profile::{ProfileError, Profiles};
use crate::qmp::QmpError;

/// How long a mutation waits for another front end to release a VM's lock.
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(120);

/// An operation that failed; `kind()` tells front ends how to present it.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error("no VM named {name:?}; `list_vms` shows the defined VMs")]
    NotFound { name: String },
    #[error("a VM named {name:?} already exists; pick another name or delete it first")]
    Exists { name: String },
    #[error("VM {name:?} is already running")]
    AlreadyRunning { name: String },
    #[error("VM {name:?} is {state}; stop it first or pass force: true")]
    Active { name: String, state: String },
    #[error("VM {name:?} is {state}, not running; start it first")]
    NotRunning { name: String, state: String },
    #[error("VM {name:?} is busy: another operation on it did not finish within {secs} s")]
    Busy { name: String, secs: u64 },
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error(transparent)]
    Name(#[from] NameError),
    #[error(transparent)]
    Profile(#[from] ProfileError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("VM {name:?} is incomplete ({reason}); delete it and create it again")]
    Incomplete { name: String, reason: String },
    #[error("VM {name:?} failed to start: {message}")]
    StartFailed { name: String, message: String, log_tail: Vec<String>, kind: ErrorKind },
    #[error("VM {name:?}: {what}")]
    Qmp {
        name: String,
        what: &'static str,
        #[source]
        source: QmpError,
    },
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("VM {name:?}: {what} did not happen within {secs} s")]
    Timeout { name: String, what: &'static str, secs: u64 },
    #[error("{what} is already used by {by}")]
    Taken { what: String, by: String },
    #[error("VM {name:?} has no port forward {selector}; `list_port_forwards` shows them")]
    NoSuchForward { name: String, selector: String },
    #[error("VM {name:?}")]
    Network {
        name: String,
        #[source]
        source: NetworkError,
    },
    #[error("{field}")]
    Storage {
        field: String,
        #[source]
        source: crate::storage::StorageError,
    },
    #[error("{what} is in use by {}; {hint}", users.join(", "))]
    InUse { what: String, users: Vec<String>, hint: String },
    #[error("VM {name:?} is {state}; {what} needs it stopped: stop it first")]
    MustBeStopped { name: String, state: String, what: &'static str },
    #[error("VM {name:?}")]
    Console {
        name: String,
        #[source]
        source: crate::console::ConsoleError,
    },
    #[error("VM {name:?}")]
    Display {
        name: String,
        #[source]
        source: crate::display::DisplayError,
    },
    #[error("VM {name:?}")]
    Agent {
        name: String,
        #[source]
        source: crate::agent::AgentError,
    },
    #[error("cancelled while {what}")]
    Cancelled { what: &'static str },
    #[error("VM {name:?}: device addresses")]
    Addresses {
        name: String,
        #[source]
        source: crate::qemu::addresses::AddrError,
    },
}

impl OpsError {
    /// The kind front ends map to exit codes, HTTP statuses and tool errors.
    #[must_use]
    pub fn kind(&self) -> ErrorKind {
        match self {
            OpsError::NotFound { .. } => ErrorKind::NotFound,
            OpsError::Exists { .. }
            | OpsError::AlreadyRunning { .. }
            | OpsError::Active { .. }
            | OpsError::NotRunning { .. }
            | OpsError::Busy { .. }
            | OpsError::Taken { .. }
            | OpsError::Incomplete { .. } => ErrorKind::Conflict,
            OpsError::NoSuchForward { .. } => ErrorKind::NotFound,
            OpsError::Network { source, .. } => source.kind(),
            OpsError::Invalid { .. } | OpsError::Name(_) | OpsError::Config(_) => ErrorKind::InvalidInput,
            OpsError::Profile(ProfileError::Unknown { .. }) => ErrorKind::InvalidInput,
            OpsError::Profile(_) | OpsError::Io { .. } => ErrorKind::Internal,
            OpsError::StartFailed { kind, .. } => *kind,
            OpsError::Qmp { .. } | OpsError::Timeout { .. } | OpsError::Cancelled { .. } => ErrorKind::Unavailable,
            OpsError::Storage { source, .. } => source.kind(),
            OpsError::InUse { .. } | OpsError::MustBeStopped { .. } => ErrorKind::Conflict,
            OpsError::Console { source, .. } => source.kind(),
            OpsError::Display { source, .. } => source.kind(),
            OpsError::Agent { source, .. } => source.kind(),
            OpsError::Addresses { .. } => ErrorKind::InvalidInput,
        }
    }

    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| OpsError::Io { what, path, source }
    }

    pub(crate) fn invalid(field: &str, reason: impl Into<String>) -> Self {
        OpsError::Invalid { field: field.into(), reason: reason.into() }
    }

    pub(crate) fn addresses(name: &str) -> impl FnOnce(crate::qemu::addresses::AddrError) -> Self {
        let name = name.to_owned();
        move |source| OpsError::Addresses { name, source }
    }

    pub(crate) fn storage(field: &str) -> impl FnOnce(crate::storage::StorageError) -> Self {
        let field = field.to_owned();
        move |source| OpsError::Storage { field, source }
    }

    /// The same error, naming `to` where it named a field under `prefix`: for an
    /// operation that passes its own argument on under another operation's name.
    pub(crate) fn renamed(self, prefix: &str, to: &str) -> Self {
        match self {
            OpsError::Invalid { field, reason } if field.starts_with(prefix) => {
                OpsError::Invalid { field: to.into(), reason }
            }
            OpsError::Storage { field, source } if field.starts_with(prefix) => {
                OpsError::Storage { field: to.into(), source }
            }
            e => e,
        }
    }
}

/// The operations, bound to one configuration.
#[derive(Debug, Clone)]
pub struct Ops {
    cfg: Config,
    profiles: Profiles,
    exe: PathBuf,
    /// Definitions and statuses read before, shared by every clone of this `Ops` (the
    /// serving process keeps one for its life).
    cache: std::sync::Arc<crate::store::Cache>,
}

impl Ops {
    /// Loads profiles and checks that the configured default profile exists.
    ///
    /// # Errors
    /// A profile file is bad or `vm.default_os_variant` names no profile.
    pub fn new(cfg: Config) -> Result<Self, OpsError> {
        let profiles = Profiles::load(cfg.qemu.profiles_dir.as_deref())?;
        if let Err(e) = profiles.get(&cfg.vm.default_os_variant) {
            return Err(OpsError::Config(ConfigError::Invalid {
                key: "vm.default_os_variant".into(),
                reason: e.to_string(),
            }));
        }
        let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("kvm-mcp"));
        Ok(Self { cfg, profiles, exe, cache: std::sync::Arc::default() })
    }

    /// Uses `exe` as the binary started as `supervise` (tests and embedders).
    #[must_use]
    pub fn with_exe(mut self, exe: PathBuf) -> Self {
        self.exe = exe;
        self
    }

    /// The configuration in use.
    #[must_use]
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The loaded profiles.
    #[must_use]
    pub fn profiles(&self) -> &Profiles {
        &self.profiles
    }
}
