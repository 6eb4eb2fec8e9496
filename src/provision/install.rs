//! The install phase of a VM created from an ISO: while `install-pending` exists the
//! CD-ROM boots first and a guest reboot ends the QEMU run. When the guest reboots or
//! powers off on its own, the phase is over: a reboot starts the next run from the
//! disk at once (what the installer asked for), a poweroff leaves the VM off and its
//! next start boots the disk. A stop the host asked for keeps the phase, so an
//! interrupted install starts over from the CD.

use crate::layout::VmPaths;
use crate::spec::VmSpec;
use crate::state::Reason;

/// The spec for the next QEMU run, with the install phase applied.
#[must_use]
pub fn run_spec(spec: &VmSpec, paths: &VmPaths) -> VmSpec {
    let mut s = spec.clone();
    s.install_boot = paths.install_pending().exists();
    s
}

/// Ends the install phase when the guest rebooted or powered off. Returns true when
/// the run ended with the guest's reboot during the install, so the supervisor should
/// start the next run right away.
pub fn finish_run(paths: &VmPaths, reason: Reason) -> bool {
    let marker = paths.install_pending();
    if !marker.exists() || !matches!(reason, Reason::GuestPoweroff | Reason::GuestReset) {
        return false;
    }
    if let Err(e) = std::fs::remove_file(&marker) {
        tracing::warn!(error = %e, path = %marker.display(), "cannot end the install phase");
        return false;
    }
    tracing::info!(?reason, "install finished; the disk boots from now on");
    reason == Reason::GuestReset
}
