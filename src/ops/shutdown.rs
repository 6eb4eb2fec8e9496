//! What a guest does with the power button during a graceful `stop`: signs that it is
//! shutting down by itself, so `stop` names a fallback only when it takes one. Two
//! signs, read without disturbing the guest:
//! - the serial console: a line after the first press that speaks of shutting down
//!   (systemd's "Stopping …", the kernel's "reboot: Power down", acpid's messages);
//! - the guest agent's channel: the guest closes it when its init stops the agent,
//!   which a shutdown does early (QMP `query-chardev`, `frontend-open` of the agent's
//!   chardev).
//!
//! QEMU's own events need no watching here: a guest that powers off makes QEMU exit,
//! which `stop` sees at once. How long a guest may take to show a sign before `stop`
//! asks its agent scales with the accelerator: software emulation (TCG) is several
//! times slower than KVM at everything a shutdown does.

use std::sync::LazyLock;
use std::time::Duration;

use super::context::Vm;
use crate::console::log;
use crate::qmp::DEFAULT_TIMEOUT;
use crate::qmp::Qmp;
use crate::qmp::extra::QueryChardev;

/// The guest agent's chardev, as `qemu::cmdline` names it.
pub(crate) const AGENT_CHARDEV: &str = "qga0";
/// How long a guest under KVM may take to show that it heard the power button before
/// `stop` asks its guest agent.
const PATIENCE_KVM: Duration = Duration::from_secs(8);
/// The same under TCG.
const PATIENCE_TCG: Duration = Duration::from_secs(30);
/// Most console bytes looked at per check (the rest waits for the next one).
const CONSOLE_STEP: usize = 256 * 1024;

/// Console lines that say the guest is going down.
static SHUTTING_DOWN: LazyLock<regex::Regex> = LazyLock::new(|| {
    regex::Regex::new(
        r"(?i)power(ing)?[ _-]?(off|down)|power[ _-]?(button|key)|shut(ting)?[ _-]?down|\bstopping\b|\bstopped\b|going down|\breboot(ing)?\b|\bhalt(ing|ed)?\b|sending sigterm|\bunmount(ing|ed)\b",
    )
    .unwrap_or_else(|_| unreachable!())
});

/// How long `stop` waits for a sign of shutdown before it asks the guest agent: the
/// accelerator's patience, but at most half the stop's whole timeout.
pub(super) fn patience(accel: Option<&str>, timeout: Duration) -> Duration {
    let base = if accel == Some("tcg") { PATIENCE_TCG } else { PATIENCE_KVM };
    base.min(timeout / 2)
}

/// Follows one graceful stop.
pub(super) struct GuestWatch {
    console: log::Matcher,
    console_at: u64,
    /// Whether the agent's channel was open at the first look (`None`: unknown).
    agent_open_first: Option<bool>,
    /// Whether it is open now (`None`: unknown).
    agent_open_now: Option<bool>,
    /// The first sign seen, described.
    sign: Option<String>,
}

impl GuestWatch {
    /// Starts watching at the console's current end.
    pub(super) fn begin(vm: &Vm) -> Self {
        let at = log::end(&vm.paths);
        Self {
            console: log::Matcher::new(SHUTTING_DOWN.clone(), at),
            console_at: at,
            agent_open_first: None,
            agent_open_now: None,
            sign: None,
        }
    }

    /// The first sign that the guest is shutting down, once one was seen.
    pub(super) fn sign(&self) -> Option<&str> {
        self.sign.as_deref()
    }

    /// Whether a program in the guest holds the agent's channel open, as last seen.
    pub(super) fn agent_connected(&self) -> Option<bool> {
        self.agent_open_now
    }

    /// Looks at the agent's channel (through `q`, when QEMU's monitor answered) and at
    /// the console since the last look; returns the sign when this look found the first.
    pub(super) async fn look(&mut self, vm: &Vm, q: Option<&Qmp>) -> Option<String> {
        if let Some(q) = q {
            self.agent_open_now = q
                .execute(QueryChardev {}, DEFAULT_TIMEOUT)
                .await
                .ok()
                .and_then(|all| all.into_iter().find(|c| c.label == AGENT_CHARDEV))
                .map(|c| c.frontend_open);
            if self.agent_open_first.is_none() {
                self.agent_open_first = self.agent_open_now;
            }
        }
        if self.sign.is_some() {
            return None;
        }
        let sign = self.console_sign(vm).or_else(|| {
            (self.agent_open_first == Some(true) && self.agent_open_now == Some(false))
                .then(|| "its guest agent closed its channel".to_owned())
        })?;
        self.sign = Some(sign.clone());
        Some(sign)
    }

    fn console_sign(&mut self, vm: &Vm) -> Option<String> {
        loop {
            let chunk = log::read_from(&vm.paths, self.console_at, CONSOLE_STEP).ok()?;
            if chunk.bytes.is_empty() {
                return None;
            }
            self.console_at = chunk.end();
            if let Some((line, _, _)) = self.console.feed(&chunk) {
                return Some(format!("its console says {}", crate::error::quote(&line)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shutdown_lines_of_systemd_the_kernel_and_the_fixtures_are_signs() {
        let lines = [
            "[  OK  ] Stopped target graphical.target - Graphical Interface.",
            "         Stopping ssh.service - OpenBSD Secure Shell server...",
            "[   42.1] reboot: Power down",
            "DEBIAN-STOPPING uptime=80.2 host=deb",
            "FIXTURE-ACPI-POWERBUTTON",
            "The system is going down for poweroff NOW!",
            "systemd-logind[301]: Power key pressed short.",
        ];
        let missed: Vec<&str> = lines.into_iter().filter(|l| !SHUTTING_DOWN.is_match(l)).collect();
        assert_eq!(missed, Vec::<&str>::new());
    }

    #[test]
    fn ordinary_boot_lines_are_not_signs() {
        let lines = [
            "DEBIAN-READY uptime=90.1 host=deb cloud-init=done nics=enp0s7 addrs=enp0s7=10.0.2.15/24",
            "[  OK  ] Started ssh.service - OpenBSD Secure Shell server.",
            "deb login: ",
            "FIXTURE-READY uptime=6.1",
        ];
        let matched: Vec<&str> = lines.into_iter().filter(|l| SHUTTING_DOWN.is_match(l)).collect();
        assert_eq!(matched, Vec::<&str>::new());
    }

    #[test]
    fn patience_scales_with_the_accelerator_and_the_timeout() {
        let long = Duration::from_secs(300);
        let got = [patience(Some("kvm"), long), patience(Some("tcg"), long), patience(Some("tcg"), long / 30)];
        assert_eq!(got, [PATIENCE_KVM, PATIENCE_TCG, Duration::from_secs(5)]);
    }
}
