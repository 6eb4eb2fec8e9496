//! VM states, their allowed moves, and the status record the supervisor writes
//! (`status.json`, plus one line per transition in `events.jsonl`).

use serde::{Deserialize, Serialize};

use crate::procid::ProcIdentity;

/// Where a VM is in its life.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum VmState {
    /// Defined, not running.
    Shutoff,
    /// QEMU spawned, not yet confirmed running.
    Starting,
    Running,
    Paused,
    /// A stop is in progress (power button pressed).
    ShuttingDown,
    /// QEMU died on its own (signal, error exit) or could not start.
    Crashed,
}

impl VmState {
    /// All states, for exhaustive tests and help texts.
    pub const ALL: [VmState; 6] = [
        VmState::Shutoff,
        VmState::Starting,
        VmState::Running,
        VmState::Paused,
        VmState::ShuttingDown,
        VmState::Crashed,
    ];

    /// True when a QEMU process belongs to this state.
    #[must_use]
    pub fn is_active(self) -> bool {
        matches!(self, VmState::Starting | VmState::Running | VmState::Paused | VmState::ShuttingDown)
    }

    /// Whether `self → to` is a move the supervisor may record.
    #[must_use]
    pub fn valid_transition(self, to: VmState) -> bool {
        use VmState::{Crashed, Paused, Running, Shutoff, ShuttingDown, Starting};
        match (self, to) {
            (Shutoff | Crashed, Starting)
            | (Starting, Running | Paused | Shutoff | Crashed)
            | (Running, Paused | ShuttingDown | Shutoff | Crashed)
            | (Paused, Running | ShuttingDown | Shutoff | Crashed)
            | (ShuttingDown, Running | Shutoff | Crashed) => true,
            // A restart after a crash or poweroff goes straight back to starting.
            (Shutoff, Shutoff) | (Crashed, Crashed) => false,
            _ => false,
        }
    }

    /// Kebab-case name as printed.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            VmState::Shutoff => "shutoff",
            VmState::Starting => "starting",
            VmState::Running => "running",
            VmState::Paused => "paused",
            VmState::ShuttingDown => "shutting-down",
            VmState::Crashed => "crashed",
        }
    }
}

impl std::fmt::Display for VmState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why the last transition happened.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Defined and never started.
    Created,
    /// A start was asked for.
    Start,
    /// Restarted by the restart policy.
    PolicyRestart,
    /// The guest powered itself off (or answered the power button).
    GuestPoweroff,
    /// kvm-mcp was asked to stop, pause or resume it (a stop that ended without the
    /// guest powering off and without force).
    HostRequest,
    /// kvm-mcp stopped it by force (QMP `quit`, then signals): asked for with `force`,
    /// or because the guest had not powered off when a graceful stop's time ran out.
    /// The detail says which.
    Forced,
    /// QEMU was told to stop by a signal (SIGTERM, SIGINT, SIGHUP) and exited cleanly.
    HostSignal,
    /// QEMU exited with a non-zero code.
    QemuExit,
    /// QEMU was killed by a signal.
    QemuSignal,
    /// The guest kernel panicked.
    GuestPanic,
    /// The guest rebooted (or was reset).
    GuestReset,
    /// QEMU could not be started.
    StartFailed,
    /// QEMU went away while no supervisor was watching.
    Unsupervised,
    /// QEMU paused the guest because a disk write failed (ENOSPC on the host, most
    /// often); free space and resume it.
    IoError,
}

/// How QEMU ended.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default, schemars::JsonSchema)]
pub struct ExitInfo {
    /// Exit code, when it exited.
    pub code: Option<i32>,
    /// Signal number, when it was killed.
    pub signal: Option<i32>,
    /// Signal name such as `SIGKILL`.
    pub signal_name: Option<String>,
}

/// `status.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Status {
    pub state: VmState,
    pub reason: Reason,
    /// Human detail for the reason.
    #[serde(default)]
    pub detail: Option<String>,
    /// Unix milliseconds of the transition.
    pub since_ms: u64,
    /// The QEMU process while active.
    #[serde(default)]
    pub qemu: Option<ProcIdentity>,
    /// The supervisor's pid while it runs.
    #[serde(default)]
    pub supervisor_pid: Option<i32>,
    /// Unix milliseconds when the current QEMU started.
    #[serde(default)]
    pub started_at_ms: Option<u64>,
    /// Restarts done by the policy since the last start request.
    #[serde(default)]
    pub restarts: u32,
    /// Last exit of QEMU.
    #[serde(default)]
    pub exit: Option<ExitInfo>,
    /// Last lines of QEMU's log after a crash.
    #[serde(default)]
    pub log_tail: Vec<String>,
    /// Accelerator in use (`kvm` or `tcg`).
    #[serde(default)]
    pub accel: Option<String>,
    /// Unix ms since when QEMU's monitor has not answered the supervisor's pings (a
    /// hung or stopped QEMU); absent while it answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unresponsive_since_ms: Option<u64>,
}

impl Status {
    /// The status of a VM that was just defined.
    #[must_use]
    pub fn created(now_ms: u64) -> Self {
        Status {
            state: VmState::Shutoff,
            reason: Reason::Created,
            detail: None,
            since_ms: now_ms,
            qemu: None,
            supervisor_pid: None,
            started_at_ms: None,
            restarts: 0,
            exit: None,
            log_tail: Vec::new(),
            accel: None,
            unresponsive_since_ms: None,
        }
    }
}

/// One line of `events.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EventRecord {
    /// Unix milliseconds.
    pub ts_ms: u64,
    pub state: VmState,
    pub reason: Reason,
    #[serde(default)]
    pub detail: Option<String>,
}

/// Milliseconds since the Unix epoch.
#[must_use]
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::VmState::{self, *};

    /// Every (from, to) pair and whether it is allowed.
    const ALLOWED: &[(VmState, VmState)] = &[
        (Shutoff, Starting),
        (Crashed, Starting),
        (Starting, Running),
        (Starting, Paused),
        (Starting, Shutoff),
        (Starting, Crashed),
        (Running, Paused),
        (Running, ShuttingDown),
        (Running, Shutoff),
        (Running, Crashed),
        (Paused, Running),
        (Paused, ShuttingDown),
        (Paused, Shutoff),
        (Paused, Crashed),
        (ShuttingDown, Running),
        (ShuttingDown, Shutoff),
        (ShuttingDown, Crashed),
    ];

    #[test]
    fn transition_table_matches_every_pair() {
        let mismatches: Vec<_> = VmState::ALL
            .iter()
            .flat_map(|&a| VmState::ALL.iter().map(move |&b| (a, b)))
            .filter(|&(a, b)| a.valid_transition(b) != ALLOWED.contains(&(a, b)))
            .collect();
        assert_eq!(mismatches, []);
    }

    #[test]
    fn shutoff_cannot_jump_to_running() {
        assert!(!Shutoff.valid_transition(Running));
    }

    #[test]
    fn states_serialise_kebab_case() {
        assert_eq!(serde_json::to_string(&ShuttingDown).unwrap(), "\"shutting-down\"");
    }
}
