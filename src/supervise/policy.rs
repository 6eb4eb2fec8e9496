//! The decisions a VM supervisor takes when a QEMU run ends, as pure functions: how the
//! run ended ([`classify`]: state, reason and a sentence, from QEMU's exit status, the
//! events its monitor sent and whether a stop was asked for) and what to do next
//! ([`next_step`]: leave it, restart it after a back-off, or give up at the limit).

use std::time::Duration;

use crate::qmp::qmp::ShutdownCause;
use crate::spec::RestartPolicy;
use crate::state::{ExitInfo, Reason, VmState};

use super::Backoff;

/// Restarts the policy may do before giving up.
pub const MAX_RESTARTS: u32 = 5;

/// How QEMU's process ended, as far as the supervisor knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// Its exit status (the supervisor is its parent).
    Status(ExitInfo),
    /// Unknown: an adopted QEMU, which only its real parent could reap.
    Unknown,
}

/// What the event monitor said during one run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Seen {
    /// The cause of the last SHUTDOWN event.
    pub shutdown: Option<ShutdownCause>,
    /// A GUEST_PANICKED event arrived.
    pub panicked: bool,
    /// QEMU was asked to stop (POWERDOWN, or a host-side shutdown cause): proof that a
    /// stop request was acted on, even if the front end that made it is gone.
    pub stop_seen: bool,
}

/// The stop request that applies to a run, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopAsked {
    /// Nobody asked for this run to stop.
    No,
    /// A graceful stop (the power button).
    Graceful,
    /// A forced stop, and why it was forced.
    Forced(String),
}

impl StopAsked {
    /// Whether a stop was asked for at all.
    #[must_use]
    pub fn asked(&self) -> bool {
        *self != StopAsked::No
    }
}

/// How one QEMU run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub state: VmState,
    pub reason: Reason,
    pub detail: String,
    pub exit: Option<ExitInfo>,
}

/// The reason a SHUTDOWN cause stands for.
#[must_use]
pub fn reason_of(cause: ShutdownCause) -> Reason {
    use ShutdownCause as C;
    match cause {
        C::guest_shutdown => Reason::GuestPoweroff,
        C::guest_panic => Reason::GuestPanic,
        C::guest_reset | C::subsystem_reset => Reason::GuestReset,
        C::host_signal => Reason::HostSignal,
        _ => Reason::HostRequest,
    }
}

/// Whether a SHUTDOWN cause means the host asked QEMU to stop.
#[must_use]
pub fn host_initiated(cause: ShutdownCause) -> bool {
    use ShutdownCause as C;
    matches!(cause, C::host_qmp_quit | C::host_signal | C::host_ui | C::host_error)
}

/// How a run ended: `exit` from the process, `seen` from the monitor, `stop` the stop
/// request that applies to this run.
#[must_use]
pub fn classify(exit: &Exit, seen: &Seen, stop: &StopAsked) -> Outcome {
    let info = match exit {
        Exit::Status(i) => Some(i.clone()),
        Exit::Unknown => None,
    };
    let out = |state, reason, detail: String| Outcome { state, reason, detail, exit: info.clone() };
    match exit {
        Exit::Status(ExitInfo { signal: Some(_), signal_name, .. }) => {
            return out(
                VmState::Crashed,
                Reason::QemuSignal,
                format!("QEMU was killed by {}", signal_name.as_deref().unwrap_or("a signal")),
            );
        }
        Exit::Status(ExitInfo { code: Some(c), .. }) if *c != 0 => {
            return out(VmState::Crashed, Reason::QemuExit, format!("QEMU exited with code {c}"));
        }
        _ => {}
    }
    if seen.panicked || seen.shutdown == Some(ShutdownCause::guest_panic) {
        return out(VmState::Crashed, Reason::GuestPanic, "the guest kernel panicked".into());
    }
    match (seen.shutdown, stop) {
        // The guest answered the power button (or powered off by itself).
        (Some(ShutdownCause::guest_shutdown), _) => {
            out(VmState::Shutoff, Reason::GuestPoweroff, "the guest powered off".into())
        }
        (_, StopAsked::Graceful) => out(VmState::Shutoff, Reason::HostRequest, "stopped on request".into()),
        (_, StopAsked::Forced(why)) => out(VmState::Shutoff, Reason::Forced, why.clone()),
        (Some(c), StopAsked::No) => out(VmState::Shutoff, reason_of(c), format!("shut down ({c:?})")),
        (None, StopAsked::No) if *exit == Exit::Unknown => out(
            VmState::Crashed,
            Reason::QemuSignal,
            "QEMU exited while adopted; its exit status is unknown (it was not our child)".into(),
        ),
        (None, StopAsked::No) => {
            out(VmState::Shutoff, Reason::QemuExit, "QEMU exited with code 0 without a shutdown event".into())
        }
    }
}

/// What the supervisor does after a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Leave the VM as it is.
    Stay,
    /// Start it again after `delay`.
    Restart { delay: Duration },
    /// The policy wants a restart but the limit is reached.
    GiveUp,
}

/// The restart decision: never after a stop that was asked for or a failed start;
/// `on-failure` restarts crashes, `always` crashes and guest poweroffs; at most
/// [`MAX_RESTARTS`] times, with a doubling delay.
#[must_use]
pub fn next_step(policy: RestartPolicy, outcome: &Outcome, stop_asked: bool, restarts: u32) -> Next {
    let crashed = outcome.state == VmState::Crashed;
    let wanted = !stop_asked
        && outcome.reason != Reason::StartFailed
        && match policy {
            RestartPolicy::Never => false,
            RestartPolicy::OnFailure => crashed,
            RestartPolicy::Always => crashed || outcome.reason == Reason::GuestPoweroff,
        };
    match (wanted, restarts >= MAX_RESTARTS) {
        (false, _) => Next::Stay,
        (true, true) => Next::GiveUp,
        (true, false) => Next::Restart { delay: Backoff::delay_for(restarts) },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ShutdownCause as C;

    fn signal() -> Exit {
        Exit::Status(ExitInfo { code: None, signal: Some(9), signal_name: Some("SIGKILL".into()) })
    }
    fn code(c: i32) -> Exit {
        Exit::Status(ExitInfo { code: Some(c), signal: None, signal_name: None })
    }
    fn seen(shutdown: Option<ShutdownCause>) -> Seen {
        Seen { shutdown, ..Seen::default() }
    }
    fn class(exit: &Exit, s: &Seen, stop: bool) -> (VmState, Reason) {
        let stop = if stop { StopAsked::Graceful } else { StopAsked::No };
        let o = classify(exit, s, &stop);
        (o.state, o.reason)
    }

    /// Every exit against every shutdown cause that matters, no stop asked, no panic.
    #[test]
    fn classification_of_every_exit_and_shutdown_cause() {
        use Reason::*;
        use VmState::*;
        let causes =
            [None, Some(C::guest_shutdown), Some(C::guest_reset), Some(C::host_qmp_quit), Some(C::host_signal)];
        let table: Vec<(Exit, [(VmState, Reason); 5])> = vec![
            (signal(), [(Crashed, QemuSignal); 5]),
            (code(1), [(Crashed, QemuExit); 5]),
            (
                code(0),
                [
                    (Shutoff, QemuExit),
                    (Shutoff, GuestPoweroff),
                    (Shutoff, GuestReset),
                    (Shutoff, HostRequest),
                    (Shutoff, HostSignal),
                ],
            ),
            (
                Exit::Unknown,
                [
                    (Crashed, QemuSignal),
                    (Shutoff, GuestPoweroff),
                    (Shutoff, GuestReset),
                    (Shutoff, HostRequest),
                    (Shutoff, HostSignal),
                ],
            ),
        ];
        let wrong: Vec<String> = table
            .iter()
            .flat_map(|(exit, want)| {
                causes.iter().zip(want).filter_map(move |(c, w)| {
                    let got = class(exit, &seen(*c), false);
                    (got != *w).then(|| format!("{exit:?} {c:?}: got {got:?}, want {w:?}"))
                })
            })
            .collect();
        assert_eq!(wrong, Vec::<String>::new());
    }

    #[test]
    fn a_stop_that_was_asked_for_is_a_host_request_unless_the_guest_powered_off() {
        let got = [None, Some(C::host_qmp_quit), Some(C::guest_reset), Some(C::guest_shutdown)]
            .map(|c| class(&code(0), &seen(c), true).1);

        assert_eq!(got, [Reason::HostRequest, Reason::HostRequest, Reason::HostRequest, Reason::GuestPoweroff]);
    }

    #[test]
    fn a_forced_stop_is_recorded_as_forced_with_its_reason_unless_the_guest_powered_off() {
        let forced = StopAsked::Forced("stopped by force on request".into());
        let got = [None, Some(C::host_qmp_quit), Some(C::host_signal), Some(C::guest_shutdown)]
            .map(|c| classify(&code(0), &seen(c), &forced))
            .map(|o| (o.reason, o.detail));

        assert_eq!(
            got,
            [
                (Reason::Forced, "stopped by force on request".into()),
                (Reason::Forced, "stopped by force on request".into()),
                (Reason::Forced, "stopped by force on request".into()),
                (Reason::GuestPoweroff, "the guest powered off".into()),
            ]
        );
    }

    #[test]
    fn a_panic_is_a_crash_whatever_the_shutdown_cause() {
        let s = Seen { panicked: true, ..seen(Some(C::guest_shutdown)) };

        assert_eq!(class(&code(0), &s, true), (VmState::Crashed, Reason::GuestPanic));
    }

    #[test]
    fn a_killed_qemu_is_a_crash_even_when_a_stop_was_asked_for() {
        assert_eq!(class(&signal(), &seen(None), true), (VmState::Crashed, Reason::QemuSignal));
    }

    fn outcome(state: VmState, reason: Reason) -> Outcome {
        Outcome { state, reason, detail: String::new(), exit: None }
    }

    /// Every policy against every kind of ending.
    #[test]
    fn restart_decision_for_every_policy_and_ending() {
        use Reason::*;
        use VmState::*;
        let endings = [
            outcome(Crashed, QemuSignal),
            outcome(Crashed, GuestPanic),
            outcome(Shutoff, GuestPoweroff),
            outcome(Shutoff, HostRequest),
            outcome(Shutoff, Forced),
            outcome(Shutoff, GuestReset),
            outcome(Shutoff, StartFailed),
        ];
        let restart =
            |p: RestartPolicy| endings.iter().map(|o| next_step(p, o, false, 0) != Next::Stay).collect::<Vec<_>>();

        assert_eq!(
            (restart(RestartPolicy::Never), restart(RestartPolicy::OnFailure), restart(RestartPolicy::Always)),
            (
                vec![false, false, false, false, false, false, false],
                vec![true, true, false, false, false, false, false],
                vec![true, true, true, false, false, false, false],
            )
        );
    }

    #[test]
    fn a_stop_that_was_asked_for_is_never_restarted() {
        let crash = outcome(VmState::Crashed, Reason::QemuSignal);

        assert_eq!(next_step(RestartPolicy::Always, &crash, true, 0), Next::Stay);
    }

    #[test]
    fn restarts_back_off_and_stop_at_the_limit() {
        let crash = outcome(VmState::Crashed, Reason::QemuSignal);
        let steps: Vec<Next> =
            (0..=MAX_RESTARTS).map(|n| next_step(RestartPolicy::OnFailure, &crash, false, n)).collect();

        assert_eq!(
            steps,
            [1, 2, 4, 8, 16]
                .map(|s| Next::Restart { delay: Duration::from_secs(s) })
                .into_iter()
                .chain([Next::GiveUp])
                .collect::<Vec<_>>()
        );
    }
}
