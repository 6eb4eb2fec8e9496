//! Where a VM's files live. Durable things (definition, status, event log, console and
//! QEMU logs) go under `<state_dir>/vms/<name>/`; sockets and pid files of a running VM
//! under `<run_dir>/<name>/`. A managed bridge's DHCP server keeps its files under
//! `<run_dir>/.bridges/<bridge>/` (VM names cannot start with a dot, so no VM clashes).

use std::path::{Path, PathBuf};

use crate::ids::IfName;
use crate::ids::VmName;

/// The state directory's VM folder name.
pub const VMS_DIR: &str = "vms";

/// The state directory's folder of per-name mutation locks (outside the VMs' own
/// directories, so a lock outlives the directory a delete removes).
pub const LOCKS_DIR: &str = "locks";

/// The state directory's folder of MCP task records (`<id>.json`, one per task).
pub const TASKS_DIR: &str = "tasks";

/// The run directory's folder of VNC display claims (one file per display).
pub const VNC_CLAIMS_DIR: &str = ".vnc";

/// The run directory's folder of managed bridges.
pub const BRIDGES_DIR: &str = ".bridges";

/// Per-template directories of warm pool owners under the run directory:
/// `<run_dir>/.pools/<template>/` with `owner.lock` and `owner.log`.
pub const POOLS_DIR: &str = ".pools";

/// Files of a managed bridge's DHCP supervisor and its dnsmasq.
#[derive(Debug, Clone)]
pub struct BridgePaths {
    /// `<run_dir>/.bridges/<bridge>`.
    pub dir: PathBuf,
}

impl BridgePaths {
    /// Paths of `bridge` under `run_dir`.
    #[must_use]
    pub fn new(run_dir: &Path, bridge: &IfName) -> Self {
        Self { dir: run_dir.join(BRIDGES_DIR).join(bridge.as_str()) }
    }
    /// Held (flock) by the live DHCP supervisor.
    #[must_use]
    pub fn supervisor_lock(&self) -> PathBuf {
        self.dir.join("supervisor.lock")
    }
    /// The DHCP supervisor's log; dnsmasq's own messages go here too.
    #[must_use]
    pub fn log(&self) -> PathBuf {
        self.dir.join("dhcp.log")
    }
    /// What the DHCP supervisor reports: dnsmasq's pid, restarts, last exit.
    #[must_use]
    pub fn status(&self) -> PathBuf {
        self.dir.join("status.json")
    }
    /// dnsmasq's pid file.
    #[must_use]
    pub fn pid(&self) -> PathBuf {
        self.dir.join("dnsmasq.pid")
    }
    /// dnsmasq's lease file.
    #[must_use]
    pub fn leases(&self) -> PathBuf {
        self.dir.join("dnsmasq.leases")
    }
}

/// Paths of one VM.
#[derive(Debug, Clone)]
pub struct VmPaths {
    /// `<state_dir>/vms/<name>`.
    pub state: PathBuf,
    /// `<run_dir>/<name>`.
    pub run: PathBuf,
}

impl VmPaths {
    /// Paths of `name` under the given roots.
    #[must_use]
    pub fn new(state_dir: &Path, run_dir: &Path, name: &VmName) -> Self {
        Self { state: state_dir.join(VMS_DIR).join(name.as_str()), run: run_dir.join(name.as_str()) }
    }

    /// The definition.
    #[must_use]
    pub fn spec(&self) -> PathBuf {
        self.state.join("spec.json")
    }
    /// flock target that serialises mutations: `<state_dir>/locks/<name>`.
    #[must_use]
    pub fn lock(&self) -> PathBuf {
        let name = self.state.file_name().unwrap_or_default();
        let state_dir = self.state.parent().and_then(Path::parent).unwrap_or(Path::new("/"));
        state_dir.join(LOCKS_DIR).join(name)
    }
    /// The files outside the state directory kvm-mcp wrote for this VM (JSON list),
    /// kept beside the definition so a delete finds them even if the definition is
    /// damaged.
    #[must_use]
    pub fn owned(&self) -> PathBuf {
        self.state.join("owned.json")
    }
    /// `vnc.json`: the running VM's VNC display and password (mode 0600).
    #[must_use]
    pub fn vnc(&self) -> PathBuf {
        self.run.join("vnc.json")
    }
    /// Present while a warm pool's member is booted, paused and free to claim.
    #[must_use]
    pub fn pool_ready(&self) -> PathBuf {
        self.state.join("pool-ready")
    }
    /// A fork's saved RAM and device state, present from the fork until the VM's next
    /// QEMU run takes it (that run resumes from it instead of booting).
    #[must_use]
    pub fn incoming(&self) -> PathBuf {
        self.state.join("incoming.state")
    }
    /// Where a fork of this VM saves its RAM and device state (named by the fork's id),
    /// removed once the copies link it as their [`VmPaths::incoming`].
    #[must_use]
    pub fn fork_state(&self, id: &str) -> PathBuf {
        self.state.join(format!("fork-{id}.state"))
    }
    /// Present while a create is under way; a VM with it is incomplete.
    #[must_use]
    pub fn creating(&self) -> PathBuf {
        self.state.join("creating")
    }
    /// Present from an ISO install's create until the guest first reboots or powers off:
    /// while it exists, the CD-ROM boots first.
    #[must_use]
    pub fn install_pending(&self) -> PathBuf {
        self.state.join("install-pending")
    }
    /// The cloud-init NoCloud seed disk (FAT, label `cidata`).
    #[must_use]
    pub fn cidata(&self) -> PathBuf {
        self.state.join("cidata.img")
    }
    /// The Ignition config passed through fw_cfg.
    #[must_use]
    pub fn ignition(&self) -> PathBuf {
        self.state.join("ignition.json")
    }
    /// The VM's copy of the UEFI variable store.
    #[must_use]
    pub fn uefi_vars(&self) -> PathBuf {
        self.state.join("OVMF_VARS.fd")
    }
    /// Status written by the supervisor.
    #[must_use]
    pub fn status(&self) -> PathBuf {
        self.state.join("status.json")
    }
    /// Transition log.
    #[must_use]
    pub fn events(&self) -> PathBuf {
        self.state.join("events.jsonl")
    }
    /// QEMU's stdout/stderr.
    #[must_use]
    pub fn qemu_log(&self) -> PathBuf {
        self.state.join("qemu.log")
    }
    /// The supervisor's own log.
    #[must_use]
    pub fn supervisor_log(&self) -> PathBuf {
        self.state.join("supervisor.log")
    }
    /// Serial console output.
    #[must_use]
    pub fn serial_log(&self) -> PathBuf {
        self.state.join("serial.log")
    }
    /// Command monitor.
    #[must_use]
    pub fn qmp_sock(&self) -> PathBuf {
        self.run.join("qmp.sock")
    }
    /// Event monitor held by the supervisor.
    #[must_use]
    pub fn events_sock(&self) -> PathBuf {
        self.run.join("qmp-events.sock")
    }
    /// Guest agent channel.
    #[must_use]
    pub fn qga_sock(&self) -> PathBuf {
        self.run.join("qga.sock")
    }
    /// Serial console socket.
    #[must_use]
    pub fn serial_sock(&self) -> PathBuf {
        self.run.join("serial.sock")
    }
    /// Held (flock) by the live supervisor for its whole life.
    #[must_use]
    pub fn supervisor_lock(&self) -> PathBuf {
        self.run.join("supervisor.lock")
    }
    /// Written by a front end before it stops the VM: "do not restart".
    #[must_use]
    pub fn stop_intent(&self) -> PathBuf {
        self.run.join("stop-requested")
    }
}
