//! VNC for one QEMU run: a free display chosen on the configured address (loopback by
//! default), an optional WebSocket port for noVNC, and a fresh per-run password set
//! over QMP (`change-vnc-password`). QEMU starts with `password=on` and no password,
//! which refuses every client, so the display is never open without one.
//!
//! The choice is made under a host-wide lock (`$TMPDIR/kvm-mcp-vnc.lock`, shared by every
//! kvm-mcp installation on the host, whatever its run directory) that is held until
//! QEMU answers on its monitor (by then it has bound its VNC port), so two supervisors
//! never pick the same display. A foreign program grabbing the port in that window
//! makes QEMU fail to start, with the reason in its log.

use std::io::Write as _;
use std::net::{IpAddr, TcpListener};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::DisplaySettings;
use crate::layout::VmPaths;
use crate::lock::FileLock;
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
/// How long to wait for another supervisor choosing a display.
const ALLOC_LOCK_TIMEOUT: Duration = Duration::from_secs(60);

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

/// The VNC chosen for a run, holding the allocation lock until [`VncPlan::activate`].
#[derive(Debug)]
pub struct VncPlan {
    pub record: VncRecord,
    lock: Option<FileLock>,
}

/// `<run_dir>/<vm>/vnc.json`.
#[must_use]
pub fn record_path(paths: &VmPaths) -> PathBuf {
    paths.run.join("vnc.json")
}

/// The recorded VNC of a running VM.
#[must_use]
pub fn read_record(paths: &VmPaths) -> Option<VncRecord> {
    std::fs::read(record_path(paths)).ok().and_then(|b| serde_json::from_slice(&b).ok())
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

/// Ports recorded by other running VMs under `run_dir`.
fn taken_ports(run_dir: &Path) -> Vec<u16> {
    let Ok(rd) = std::fs::read_dir(run_dir) else { return Vec::new() };
    rd.flatten()
        .filter_map(|e| std::fs::read(e.path().join("vnc.json")).ok())
        .filter_map(|b| serde_json::from_slice::<VncRecord>(&b).ok())
        .flat_map(|r| [Some(r.port), r.websocket_port])
        .flatten()
        .collect()
}

/// Chooses VNC for the next run, or `None` when VNC is off or the profile has no
/// graphics device.
///
/// # Errors
/// A message when no display is free or the allocation lock cannot be taken.
pub async fn plan(
    settings: &DisplaySettings,
    profile: &Profile,
    run_dir: &Path,
    paths: &VmPaths,
) -> Result<Option<VncPlan>, String> {
    if !settings.vnc || profile.display == Display::None {
        return Ok(None);
    }
    let _ = std::fs::remove_file(record_path(paths));
    let lock = alloc_lock(run_dir).await?;
    let taken = taken_ports(run_dir);
    let host = settings.vnc_listen;
    let free = |p: u16| !taken.contains(&p) && port_free(host, p);
    let display = DISPLAYS
        .clone()
        .find(|d| free(VNC_BASE_PORT + d) && (!settings.websocket || free(WEBSOCKET_BASE_PORT + d)))
        .ok_or_else(|| {
            format!(
                "no free VNC display on {host} (ports {}-{} are all taken); stop a VM or set display.vnc to false",
                VNC_BASE_PORT + DISPLAYS.start,
                VNC_BASE_PORT + DISPLAYS.end - 1
            )
        })?;
    let record = VncRecord {
        host,
        display,
        port: VNC_BASE_PORT + display,
        websocket_port: settings.websocket.then_some(WEBSOCKET_BASE_PORT + display),
        password: password(),
    };
    Ok(Some(VncPlan { record, lock: Some(lock) }))
}

/// Takes the host-wide allocation lock (the run directory's when the shared file cannot
/// be opened, e.g. it belongs to another user).
async fn alloc_lock(run_dir: &Path) -> Result<FileLock, String> {
    let shared = std::env::temp_dir().join("kvm-mcp-vnc.lock");
    let (path, got) = match FileLock::acquire(&shared, ALLOC_LOCK_TIMEOUT).await {
        Ok(l) => (shared, l),
        Err(_) => {
            let own = run_dir.join(".vnc-alloc.lock");
            let l = FileLock::acquire(&own, ALLOC_LOCK_TIMEOUT)
                .await
                .map_err(|e| format!("cannot open {}: {e}", own.display()))?;
            (own, l)
        }
    };
    got.ok_or_else(|| format!("another VM held the VNC allocation lock {} too long", path.display()))
}

fn host_arg(host: IpAddr) -> String {
    match host {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("[{a}]"),
    }
}

impl VncPlan {
    /// QEMU arguments for this plan.
    #[must_use]
    pub fn args(&self) -> Vec<String> {
        let r = &self.record;
        let mut v = format!("{}:{},password=on", host_arg(r.host), r.display);
        if let Some(ws) = r.websocket_port {
            v.push_str(&format!(",websocket={}:{ws}", host_arg(r.host)));
        }
        vec!["-vnc".into(), v]
    }

    /// Sets the password over QMP, records the plan for front ends and releases the
    /// allocation lock.
    ///
    /// # Errors
    /// The password could not be set (VNC then stays closed) or the record not written.
    pub async fn activate(mut self, qmp: &Qmp, paths: &VmPaths) -> Result<VncRecord, String> {
        self.lock.take();
        qmp.execute(ChangeVncPassword { password: self.record.password.clone() }, DEFAULT_TIMEOUT)
            .await
            .map_err(|e: QmpError| format!("cannot set the VNC password: {e}"))?;
        write_private(&record_path(paths), &self.record)
            .map_err(|e| format!("cannot write {}: {e}", record_path(paths).display()))?;
        Ok(self.record)
    }
}

/// Writes JSON readable by the owner only, atomically for readers. Not flushed: the
/// record lives in the run directory and describes this run only.
fn write_private<T: Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    f.write_all(&serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?)?;
    std::fs::rename(&tmp, path)
}

/// Removes the record when the VM stops.
pub fn cleanup(paths: &VmPaths) {
    let _ = std::fs::remove_file(record_path(paths));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan_for(ws: bool, host: IpAddr) -> VncPlan {
        VncPlan {
            record: VncRecord {
                host,
                display: 3,
                port: 5903,
                websocket_port: ws.then_some(5703),
                password: "x".into(),
            },
            lock: None,
        }
    }

    #[test]
    fn args_ask_for_a_password_and_loopback() {
        assert_eq!(plan_for(false, IpAddr::from([127, 0, 0, 1])).args(), ["-vnc", "127.0.0.1:3,password=on"]);
    }

    #[test]
    fn websocket_listens_on_the_same_host() {
        let a = plan_for(true, "::1".parse().unwrap()).args();
        assert_eq!(a[1], "[::1]:3,password=on,websocket=[::1]:5703");
    }

    #[test]
    fn passwords_are_eight_characters_and_differ() {
        let (a, b) = (password(), password());
        assert_eq!((a.len(), b.len(), a == b), (8, 8, false));
    }
}
