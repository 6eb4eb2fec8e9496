//! Per-start network plumbing the supervisor needs before it spawns QEMU: one tap
//! descriptor per bridged NIC. User-mode NICs need nothing here.

use std::os::fd::OwnedFd;

use crate::spec::{NetworkMode, VmSpec};

/// Opens the taps for `spec`'s bridged NICs, in NIC order.
///
/// # Errors
/// A message naming the NIC and bridge that could not be plumbed.
pub async fn open_taps(spec: &VmSpec) -> Result<Vec<OwnedFd>, String> {
    let mut taps = Vec::new();
    for (i, nic) in spec.nics.iter().enumerate() {
        if let NetworkMode::Bridge { bridge } = &nic.mode {
            let _ = (&mut taps, i);
            return Err(format!(
                "NIC {i} is on bridge {bridge:?}, but this build cannot attach taps to bridges yet; use network \"user\" or \"none\""
            ));
        }
    }
    Ok(taps)
}
