//! VNC for one QEMU run: a free display chosen on the configured address (loopback by
//! default), an optional WebSocket port for noVNC, and a fresh per-run password set
//! over QMP (`change-vnc-password`). QEMU starts with `password=on` and no password,
//! which refuses every client, so the display is never open without one.
//!
//! A display is claimed by creating `<run_dir>/.vnc/<display>` exclusively, naming the
//! VM and the supervisor that claimed it; the claim lasts for the VM's run and is
//! released when it stops. A claim whose supervisor is dead is stale and taken over.
//! No lock is held while QEMU starts, so one QEMU that hangs at start-up delays no
//! other VM. Ports another program holds are skipped (probed by binding); a program
//! grabbing the port between the probe and QEMU's bind makes QEMU fail to start, with
//! the reason in its log.

use std::io::Write as _;
use std::net::{IpAddr, TcpListener};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::DisplaySettings;
use crate::ids::VmName;
use crate::layout::{VNC_CLAIMS_DIR, VmPaths};
use crate::procid::ProcIdentity;
use crate::qemu::profile::{Display, Profile};
use crate::qmp::extra::ChangeVncPassword;
use crate::qmp::{DEFAULT_TIMEOUT, Qmp, QmpError};

/// VNC displays tried (port = 5900 + display).
pub const DISPLAYS: std::ops::Range<u16> = 0..100;
/// First VNC port.
pub const VNC_BASE_PORT: u16 = 5900;
/// First WebSocket port (QEMU's own default is 5700 + display).
pub const WEBSOCKET_BASE_PORT: u16 = 5700;
/// VNC passwords are at most 8 characters (the protocol's DES key).
const PASSWORD_LEN: usize = 8;

/// What a running VM's VNC looks like; kept in `<run_dir>/<vm>/vnc.json` (mode 0600).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VncRecord {
    /// Address VNC listens on.
    pub host: IpAddr,
    /// VNC display number (port − 5900).
    pub display: u16,
    /// TCP port of the VNC server.
    pub port: u16,
    /// TCP port of the WebSocket (noVNC) listener, if enabled.
    pub websocket_port: Option<u16>,
    /// The per-run password (at most 8 characters).
    pub password: String,
}

impl VncRecord {
    /// Where QEMU listens, for its argv.
    #[must_use]
    pub fn listen(&self) -> crate::qemu::cmdline::VncListen {
        crate::qemu::cmdline::VncListen { host: self.host, display: self.display, websocket_port: self.websocket_port }
    }
}

/// Why no VNC could be set up.
#[derive(Debug, thiserror::Error)]
pub enum VncError {
    #[error(
        "no free VNC display on {host} (ports {first}-{last} are all taken); stop a VM or set display.vnc to false"
    )]
    NoFreeDisplay { host: IpAddr, first: u16, last: u16 },
    #[error("cannot claim a VNC display in {dir}")]
    Claim {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot set the VNC password")]
    Password(#[source] QmpError),
    #[error("cannot write {path}")]
    Record {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl VncError {
    /// The kind front ends present.
    #[must_use]
    pub fn kind(&self) -> crate::error::ErrorKind {
        use crate::error::ErrorKind;
        match self {
            VncError::NoFreeDisplay { .. } => ErrorKind::Conflict,
            VncError::Claim { .. } | VncError::Record { .. } => ErrorKind::Internal,
            VncError::Password(_) => ErrorKind::Unavailable,
        }
    }
}

/// Who holds a display: `<run_dir>/.vnc/<display>`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Claim {
    vm: String,
    supervisor: Option<ProcIdentity>,
}

/// The recorded VNC of a running VM.
#[must_use]
pub fn read_record(paths: &VmPaths) -> Option<VncRecord> {
    crate::store::read_record(&paths.vnc()).present()
}

fn password() -> String {
    const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    uuid::Uuid::new_v4().as_bytes()[..PASSWORD_LEN]
        .iter()
        .map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]))
        .collect()
}

fn port_free(host: IpAddr, port: u16) -> bool {
    TcpListener::bind((host, port)).is_ok()
}

fn claims_dir(run_dir: &Path) -> PathBuf {
    run_dir.join(VNC_CLAIMS_DIR)
}

/// Claims `display` for `vm` by creating its claim file exclusively; a claim whose
/// supervisor is dead (or that names this very VM, left by its earlier run) is
/// replaced once.
fn try_claim(dir: &Path, display: u16, vm: &VmName) -> std::io::Result<bool> {
    let path = dir.join(display.to_string());
    let claim = Claim { vm: vm.to_string(), supervisor: ProcIdentity::capture(std::process::id().cast_signed()) };
    let body = serde_json::to_vec(&claim).map_err(std::io::Error::other)?;
    for _ in 0..2 {
        match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path) {
            Ok(mut f) => {
                f.write_all(&body)?;
                return Ok(true);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let old: Option<Claim> = crate::store::read_record(&path).present();
                let stale = old.is_none_or(|c| c.vm == vm.as_str() || !c.supervisor.is_some_and(|p| p.is_alive()));
                if !stale {
                    return Ok(false);
                }
                std::fs::remove_file(&path)
                    .or_else(|e| if e.kind() == std::io::ErrorKind::NotFound { Ok(()) } else { Err(e) })?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(false)
}

/// Chooses and claims VNC for `vm`'s next run, or `None` when VNC is off or the
/// profile has no graphics device. The claim lasts until [`release`].
///
/// # Errors
/// [`VncError::NoFreeDisplay`] when every display is taken, or the claim directory
/// cannot be used.
pub fn claim(
    settings: &DisplaySettings,
    profile: &Profile,
    run_dir: &Path,
    vm: &VmName,
    paths: &VmPaths,
) -> Result<Option<VncRecord>, VncError> {
    if !settings.vnc || profile.display == Display::None {
        return Ok(None);
    }
    let _ = std::fs::remove_file(paths.vnc());
    let dir = claims_dir(run_dir);
    let claim_err = |source| VncError::Claim { dir: dir.clone(), source };
    std::fs::create_dir_all(&dir).map_err(claim_err)?;
    let host = settings.vnc_listen;
    for display in DISPLAYS {
        let ws = WEBSOCKET_BASE_PORT + display;
        if !port_free(host, VNC_BASE_PORT + display) || (settings.websocket && !port_free(host, ws)) {
            continue;
        }
        if try_claim(&dir, display, vm).map_err(claim_err)? {
            return Ok(Some(VncRecord {
                host,
                display,
                port: VNC_BASE_PORT + display,
                websocket_port: settings.websocket.then_some(ws),
                password: password(),
            }));
        }
    }
    Err(VncError::NoFreeDisplay { host, first: VNC_BASE_PORT + DISPLAYS.start, last: VNC_BASE_PORT + DISPLAYS.end - 1 })
}

/// Releases `vm`'s display claim (when its run ends).
pub fn release(run_dir: &Path, vm: &VmName, paths: &VmPaths) {
    let Some(r) = read_record(paths) else { return };
    let path = claims_dir(run_dir).join(r.display.to_string());
    if crate::store::read_record::<Claim>(&path).present().is_some_and(|c| c.vm == vm.as_str()) {
        let _ = std::fs::remove_file(path);
    }
}

/// Sets the run's password over QMP and records the VNC for front ends.
///
/// # Errors
/// The password could not be set (VNC then stays closed) or the record not written.
pub async fn activate(record: &VncRecord, qmp: &Qmp, paths: &VmPaths) -> Result<(), VncError> {
    qmp.execute(ChangeVncPassword { password: record.password.clone() }, DEFAULT_TIMEOUT)
        .await
        .map_err(VncError::Password)?;
    write_private(&paths.vnc(), record).map_err(|source| VncError::Record { path: paths.vnc(), source })
}

/// Writes JSON readable by the owner only, atomically for readers. Not flushed: the
/// record lives in the run directory and describes this run only.
fn write_private<T: Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    f.write_all(&serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?)?;
    std::fs::rename(&tmp, path)
}

/// Releases the display and removes the record when the VM stops.
pub fn cleanup(run_dir: &Path, vm: &VmName, paths: &VmPaths) {
    release(run_dir, vm, paths);
    let _ = std::fs::remove_file(paths.vnc());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> DisplaySettings {
        DisplaySettings { vnc: true, vnc_listen: IpAddr::from([127, 0, 0, 1]), websocket: false }
    }

    fn profile() -> Profile {
        crate::qemu::profile::Profiles::load(None).unwrap().get("generic").unwrap().clone()
    }

    fn vm(run: &Path, name: &str) -> (VmName, VmPaths) {
        let n = VmName::new(name).unwrap();
        let p = VmPaths::new(&run.join("state"), run, &n);
        std::fs::create_dir_all(&p.run).unwrap();
        (n, p)
    }

    #[test]
    fn passwords_are_eight_characters_and_differ() {
        let (a, b) = (password(), password());
        assert_eq!((a.len(), b.len(), a == b), (8, 8, false));
    }

    #[test]
    fn two_vms_get_two_displays() {
        let d = tempfile::tempdir().unwrap();
        let (a, pa) = vm(d.path(), "a");
        let (b, pb) = vm(d.path(), "b");

        let ra = claim(&settings(), &profile(), d.path(), &a, &pa).unwrap().unwrap();
        let rb = claim(&settings(), &profile(), d.path(), &b, &pb).unwrap().unwrap();

        assert_ne!(ra.display, rb.display);
    }

    #[test]
    fn a_claim_of_a_dead_supervisor_is_taken_over() {
        let d = tempfile::tempdir().unwrap();
        let (a, pa) = vm(d.path(), "a");
        let dir = claims_dir(d.path());
        std::fs::create_dir_all(&dir).unwrap();
        let first = claim(&settings(), &profile(), d.path(), &a, &pa).unwrap().unwrap();
        let dead = Claim {
            vm: "gone".into(),
            supervisor: Some(ProcIdentity { pid: i32::MAX, starttime: 1, boot_id: crate::procid::boot_id() }),
        };
        std::fs::write(dir.join(first.display.to_string()), serde_json::to_vec(&dead).unwrap()).unwrap();
        let (b, pb) = vm(d.path(), "b");

        let rb = claim(&settings(), &profile(), d.path(), &b, &pb).unwrap().unwrap();

        assert_eq!(rb.display, first.display);
    }

    #[test]
    fn release_frees_the_display_for_the_next_vm() {
        let d = tempfile::tempdir().unwrap();
        let (a, pa) = vm(d.path(), "a");
        let ra = claim(&settings(), &profile(), d.path(), &a, &pa).unwrap().unwrap();
        write_private(&pa.vnc(), &ra).unwrap();
        cleanup(d.path(), &a, &pa);
        let (b, pb) = vm(d.path(), "b");

        let rb = claim(&settings(), &profile(), d.path(), &b, &pb).unwrap().unwrap();

        assert_eq!(rb.display, ra.display);
    }
}
