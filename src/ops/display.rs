//! Display operations: VNC addresses and passwords, screenshots (QMP `screendump` to
//! PNG) and keyboard input (QMP `send-key`).

use std::net::IpAddr;
use std::time::Duration;

use serde::Serialize;

use super::context::Vm;
use super::{Ops, OpsError};
use crate::display::{DisplayError, keys, png_size, vnc};
use crate::qemu::profile::Display;
use crate::qmp::DEFAULT_TIMEOUT;
use crate::qmp::extra::{QueryVnc, Screendump, SendKey};
use crate::state::VmState;

/// How long each key is held by default, in ms (QEMU's own default is 100).
pub const DEFAULT_HOLD_MS: u32 = 50;
/// Most key presses (combos or typed characters) in one call.
pub const MAX_KEY_PRESSES: usize = 512;
/// Longest time one call may hold keys down in all (presses × hold).
pub const MAX_PRESS_TIME: Duration = Duration::from_secs(60);
/// Presses sent over one monitor connection before it is let go.
const PRESSES_PER_CONNECTION: usize = 32;

/// One running VM's VNC endpoint (`get_vnc_ports`).
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct VncPort {
    pub name: String,
    pub host: IpAddr,
    pub port: u16,
    pub display: u16,
    pub websocket_port: Option<u16>,
}

/// One VM's VNC details, with the password (`get_vnc_info`).
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct VncInfo {
    pub name: String,
    pub host: IpAddr,
    pub port: u16,
    pub display: u16,
    pub websocket_port: Option<u16>,
    /// VNC password for this run (it changes at every start).
    pub password: String,
    /// `vnc://host:port`, for a VNC viewer.
    pub uri: String,
    /// Clients connected now, from QMP `query-vnc`.
    pub clients: usize,
}

/// A screenshot.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct Screenshot {
    pub width: u32,
    pub height: u32,
    /// PNG bytes (not serialised).
    #[serde(skip)]
    pub png: Vec<u8>,
    pub bytes: usize,
}

fn display_err(name: &str) -> impl FnOnce(DisplayError) -> OpsError + '_ {
    move |source| OpsError::Display { name: name.into(), source }
}

/// Refuses more than [`MAX_KEY_PRESSES`] presses in one call, before any work.
fn too_many_presses(field: &str, n: usize) -> Result<(), OpsError> {
    if n > MAX_KEY_PRESSES {
        return Err(OpsError::invalid(
            field,
            format!("{n} key presses in one call; at most {MAX_KEY_PRESSES}: split the input into several calls"),
        ));
    }
    Ok(())
}

impl Ops {
    fn require_display(&self, vm: &Vm) -> Result<(), OpsError> {
        let profile = self.profiles.get(&vm.spec.os_variant)?;
        if profile.display == Display::None {
            return Err(display_err(vm.spec.name.as_str())(DisplayError::NoDisplay {
                name: vm.spec.name.to_string(),
                profile: profile.name.clone(),
            }));
        }
        Ok(())
    }

    /// Every running VM's VNC host and port (the original kvm-mcp's `get_vnc_ports`).
    ///
    /// # Errors
    /// The state directory cannot be read.
    pub fn get_vnc_ports(&self) -> Result<Vec<VncPort>, OpsError> {
        let mut out = Vec::new();
        for s in self.list()?.into_iter().filter(|s| s.state.is_some_and(VmState::is_active)) {
            let Ok(vm) = self.load(&s.name) else { continue };
            if let Some(r) = vnc::read_record(&vm.paths) {
                out.push(VncPort {
                    name: s.name,
                    host: r.host,
                    port: r.port,
                    display: r.display,
                    websocket_port: r.websocket_port,
                });
            }
        }
        Ok(out)
    }

    /// One running VM's VNC endpoint and password.
    ///
    /// # Errors
    /// Not running, or no VNC for this VM.
    pub async fn get_vnc_info(&self, name: &str) -> Result<VncInfo, OpsError> {
        let vm = self.active(name)?;
        let r =
            vnc::read_record(&vm.paths).ok_or_else(|| display_err(name)(DisplayError::NoVnc { name: name.into() }))?;
        let q = self.qmp(&vm).await?;
        let live = q.execute(QueryVnc {}, DEFAULT_TIMEOUT).await.map_err(|source| OpsError::Qmp {
            name: name.into(),
            what: "query-vnc failed",
            source,
        })?;
        let clients = live.get("clients").and_then(|c| c.as_array()).map_or(0, Vec::len);
        let host = match r.host {
            IpAddr::V6(a) => format!("[{a}]"),
            IpAddr::V4(a) => a.to_string(),
        };
        Ok(VncInfo {
            name: name.into(),
            host: r.host,
            port: r.port,
            display: r.display,
            websocket_port: r.websocket_port,
            password: r.password,
            uri: format!("vnc://{host}:{}", r.port),
            clients,
        })
    }

    /// The VM's screen as a PNG (QMP `screendump`, format png).
    ///
    /// # Errors
    /// Not running, no graphics device, or QEMU failed.
    pub async fn screenshot(&self, name: &str) -> Result<Screenshot, OpsError> {
        let vm = self.active(name)?;
        self.require_display(&vm)?;
        let file = vm.paths.run.join(format!("screendump-{}.png", uuid::Uuid::new_v4().simple()));
        let q = self.qmp(&vm).await?;
        let res = q
            .execute(Screendump { filename: file.to_string_lossy().into_owned(), format: "png" }, DEFAULT_TIMEOUT)
            .await;
        let png = std::fs::read(&file);
        let _ = std::fs::remove_file(&file);
        res.map_err(|source| OpsError::Qmp { name: name.into(), what: "screendump failed", source })?;
        let png = png.map_err(OpsError::io("cannot read the screenshot QEMU wrote to", &file))?;
        let (width, height) = png_size(&png).map_err(display_err(name))?;
        Ok(Screenshot { width, height, bytes: png.len(), png })
    }

    /// Presses key combinations one after another, e.g. `["ctrl-alt-delete"]` or
    /// `["alt-f2", "ret"]`.
    ///
    /// # Errors
    /// An unknown key name (nothing is sent then), not running, or QMP failed.
    pub async fn send_keys(&self, name: &str, combos: &[String], hold_ms: Option<u32>) -> Result<usize, OpsError> {
        too_many_presses("keys", combos.len())?;
        let parsed = combos
            .iter()
            .map(|c| keys::parse_combo(c))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| display_err(name)(e.into()))?;
        self.press(name, parsed, hold_ms).await
    }

    /// Types `text` on the VM's keyboard (US layout; printable ASCII, newline, tab).
    /// The keyboard drives the graphical console, not the serial one.
    ///
    /// # Errors
    /// A character that cannot be typed (nothing is sent then), not running, or QMP failed.
    pub async fn type_text(&self, name: &str, text: &str, hold_ms: Option<u32>) -> Result<usize, OpsError> {
        too_many_presses("text", text.chars().count())?;
        let parsed = keys::text_to_keys(text).map_err(|e| display_err(name)(e.into()))?;
        self.press(name, parsed, hold_ms).await
    }

    async fn press(
        &self,
        name: &str,
        presses: Vec<Vec<crate::qmp::extra::KeyValue>>,
        hold_ms: Option<u32>,
    ) -> Result<usize, OpsError> {
        let hold = hold_ms.unwrap_or(DEFAULT_HOLD_MS).clamp(1, 10_000);
        let n = presses.len();
        too_many_presses("keys", n)?;
        let held_ms = u64::from(hold) * n as u64;
        if held_ms > MAX_PRESS_TIME.as_millis() as u64 {
            return Err(OpsError::invalid(
                "hold_ms",
                format!(
                    "{n} presses of {hold} ms hold the keyboard {} s; at most {} s per call: fewer keys or a shorter hold",
                    held_ms / 1000,
                    MAX_PRESS_TIME.as_secs()
                ),
            ));
        }
        let vm = self.active(name)?;
        self.require_display(&vm)?;
        // The monitor serves one client at a time: let go of it between batches, so a
        // long input never keeps other calls on this VM waiting for long.
        for batch in presses.chunks(PRESSES_PER_CONNECTION) {
            let q = self.qmp(&vm).await?;
            for keys in batch {
                q.execute(SendKey { keys: keys.clone(), hold_time: Some(hold) }, DEFAULT_TIMEOUT)
                    .await
                    .map_err(|source| OpsError::Qmp { name: name.into(), what: "send-key failed", source })?;
            }
        }
        // QEMU queues the releases behind timers; wait until the last one has gone out,
        // so a caller that looks at the screen next sees the effect.
        tokio::time::sleep(Duration::from_millis(u64::from(hold) * n as u64 + 50)).await;
        Ok(n)
    }
}
