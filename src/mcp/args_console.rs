//! Arguments and results of the console, display, guest agent and statistics tools.
//! The doc comments are what the model reads as each field's `description`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::ops::VncPort;

/// Arguments of `get_console_log`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsoleLogArgs {
    /// The VM's name.
    pub name: String,
    /// How many last lines to return; default 50.
    pub lines: Option<usize>,
    /// Byte offset to read from instead: a previous `next_offset`.
    pub since_offset: Option<u64>,
    /// Most bytes to return; default and maximum 262144.
    pub max_bytes: Option<usize>,
}

/// Arguments of `wait_for_console`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WaitConsoleArgs {
    /// The VM's name.
    pub name: String,
    /// Regular expression (Rust syntax) for one line, for example "login:".
    pub pattern: String,
    /// Seconds to wait; default 60, at most 3600.
    pub timeout_s: Option<u64>,
    /// Byte offset to look from (a previous `next_offset`); default: the start of the current run, so earlier
    /// lines count.
    pub since_offset: Option<u64>,
}

/// Arguments of `send_keys`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SendKeysArgs {
    /// The VM's name.
    pub name: String,
    /// QEMU key names, '-' joining keys pressed together, e.g. ["ctrl-alt-delete"] or ["alt-f2", "ret"]
    /// (a-z, 0-9, f1-f12, ret, esc, spc, tab, up, ctrl, alt, shift, delete, …).
    pub keys: Vec<String>,
}

/// Arguments of `type_text`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TypeTextArgs {
    /// The VM's name.
    pub name: String,
    /// Printable ASCII, "\n" for Enter, "\t" for Tab.
    pub text: String,
}

/// Arguments of `guest_exec`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GuestExecArgs {
    /// The VM's name.
    pub name: String,
    /// Program to run, for example "uname" (searched in PATH). No shell: for a shell line use "/bin/sh" with
    /// args ["-c", "…"].
    pub command: String,
    /// Its arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// Text for its standard input.
    pub stdin: Option<String>,
    /// Seconds before it is killed; default 60, at most 3600.
    pub timeout_s: Option<u64>,
    /// Bytes kept of stdout and of stderr; default and maximum from the server's config.
    pub output_max_bytes: Option<u64>,
}

/// Arguments of `guest_file_read`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GuestFileReadArgs {
    /// The VM's name.
    pub name: String,
    /// Absolute path in the guest.
    pub path: String,
    /// Refuse files larger than this; default and maximum from the server's config.
    pub max_bytes: Option<u64>,
}

/// Arguments of `guest_file_write`. Give exactly one of `content` and `content_base64`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GuestFileWriteArgs {
    /// The VM's name.
    pub name: String,
    /// Absolute path in the guest.
    pub path: String,
    /// The content as text.
    pub content: Option<String>,
    /// The content as base64, for binary data.
    pub content_base64: Option<String>,
    /// Append instead of replacing.
    #[serde(default)]
    pub append: bool,
}

/// Arguments of `vm_stats`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VmStatsArgs {
    /// The VM's name.
    pub name: String,
    /// CPU sampling interval; default 500, 50 to 10000.
    pub interval_ms: Option<u64>,
}

/// The running VMs' VNC endpoints.
#[derive(Debug, Serialize, JsonSchema)]
pub struct VncPortList {
    /// One entry per running VM that has VNC: name, host, port, display number and
    /// websocket port. `get_vnc_info` gives the password.
    pub vnc: Vec<VncPort>,
}

/// A screenshot's size; the PNG itself is the image content of the result.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ScreenshotInfo {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Size of the PNG in bytes.
    pub bytes: usize,
}

/// What `send_keys` and `type_text` sent.
#[derive(Debug, Serialize, JsonSchema)]
pub struct KeysSent {
    /// Key presses (combinations) sent to the VM.
    pub presses: usize,
}

/// What `guest_ping` measured.
#[derive(Debug, Serialize, JsonSchema)]
pub struct GuestPong {
    /// Round trip to the guest agent, in milliseconds.
    pub round_trip_ms: f64,
}

/// What `guest_file_write` wrote.
#[derive(Debug, Serialize, JsonSchema)]
pub struct FileWritten {
    /// Path of the file in the guest.
    pub path: String,
    /// Bytes written.
    pub bytes_written: u64,
    /// The bytes were appended rather than replacing the file.
    pub appended: bool,
}
