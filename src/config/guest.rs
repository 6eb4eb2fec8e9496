//! The `console`, `display` and `agent` sections of `config.json`: serial log rotation,
//! VNC defaults and guest agent limits. Raw serde structs (unknown keys rejected) and
//! their resolved, checked forms.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// Default size at which the serial log is rotated.
pub const DEFAULT_CONSOLE_LOG_MAX_BYTES: u64 = 4 * 1024 * 1024;
/// Default number of rotated serial logs kept (`serial.log.1` … `.N`).
pub const DEFAULT_CONSOLE_LOG_KEEP: u32 = 3;
/// Default time the guest agent gets to answer guest-sync.
pub const DEFAULT_AGENT_TIMEOUT_S: u64 = 10;
/// Default cap on each of a guest command's stdout and stderr.
pub const DEFAULT_EXEC_OUTPUT_MAX_BYTES: u64 = 1024 * 1024;
/// Default cap on a file read or written through the agent.
pub const DEFAULT_FILE_MAX_BYTES: u64 = 8 * 1024 * 1024;
/// Hard upper bound of the size caps (qemu-ga itself keeps at most 16 MiB of output).
pub const MAX_TRANSFER_BYTES: u64 = 64 * 1024 * 1024;

/// `console.*` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawConsole {
    log_max_bytes: Option<u64>,
    log_keep: Option<u32>,
}

/// `display.*` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawDisplay {
    vnc: Option<bool>,
    vnc_listen: Option<IpAddr>,
    websocket: Option<bool>,
}

/// `agent.*` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawAgent {
    timeout_s: Option<u64>,
    exec_output_max_bytes: Option<u64>,
    file_max_bytes: Option<u64>,
}

/// Serial console log settings.
#[derive(Debug, Clone, Serialize)]
pub struct ConsoleSettings {
    /// `serial.log` is rotated once it grows past this.
    pub log_max_bytes: u64,
    /// Rotated logs kept.
    pub log_keep: u32,
}

/// VNC settings.
#[derive(Debug, Clone, Serialize)]
pub struct DisplaySettings {
    /// Give VMs with a graphics device a VNC server.
    pub vnc: bool,
    /// Address VNC (and its WebSocket) listen on; loopback unless set.
    pub vnc_listen: IpAddr,
    /// Also open a WebSocket port (for noVNC).
    pub websocket: bool,
}

/// Guest agent limits.
#[derive(Debug, Clone, Serialize)]
pub struct AgentSettings {
    /// Seconds the agent gets to answer guest-sync (and each command).
    pub timeout_s: u64,
    /// Cap on each of stdout and stderr returned by `guest_exec`.
    pub exec_output_max_bytes: u64,
    /// Cap on a file read or written through the agent.
    pub file_max_bytes: u64,
}

fn invalid(key: &str, reason: String) -> ConfigError {
    ConfigError::Invalid { key: key.into(), reason }
}

fn bounded(key: &str, v: u64, min: u64, max: u64) -> Result<u64, ConfigError> {
    if (min..=max).contains(&v) { Ok(v) } else { Err(invalid(key, format!("{v} is outside {min}..={max}"))) }
}

impl RawConsole {
    pub(super) fn resolve(self) -> Result<ConsoleSettings, ConfigError> {
        Ok(ConsoleSettings {
            log_max_bytes: bounded(
                "console.log_max_bytes",
                self.log_max_bytes.unwrap_or(DEFAULT_CONSOLE_LOG_MAX_BYTES),
                4096,
                1 << 40,
            )?,
            log_keep: u32::try_from(bounded(
                "console.log_keep",
                u64::from(self.log_keep.unwrap_or(DEFAULT_CONSOLE_LOG_KEEP)),
                0,
                100,
            )?)
            .unwrap_or(DEFAULT_CONSOLE_LOG_KEEP),
        })
    }
}

impl RawDisplay {
    pub(super) fn resolve(self) -> DisplaySettings {
        DisplaySettings {
            vnc: self.vnc.unwrap_or(true),
            vnc_listen: self.vnc_listen.unwrap_or(IpAddr::from([127, 0, 0, 1])),
            websocket: self.websocket.unwrap_or(false),
        }
    }
}

impl RawAgent {
    pub(super) fn resolve(self) -> Result<AgentSettings, ConfigError> {
        Ok(AgentSettings {
            timeout_s: bounded("agent.timeout_s", self.timeout_s.unwrap_or(DEFAULT_AGENT_TIMEOUT_S), 1, 600)?,
            exec_output_max_bytes: bounded(
                "agent.exec_output_max_bytes",
                self.exec_output_max_bytes.unwrap_or(DEFAULT_EXEC_OUTPUT_MAX_BYTES),
                1,
                MAX_TRANSFER_BYTES,
            )?,
            file_max_bytes: bounded(
                "agent.file_max_bytes",
                self.file_max_bytes.unwrap_or(DEFAULT_FILE_MAX_BYTES),
                1,
                MAX_TRANSFER_BYTES,
            )?,
        })
    }
}
