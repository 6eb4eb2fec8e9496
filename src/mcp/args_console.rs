//! Arguments and results of the console, display, guest agent and statistics tools.
//! The doc comments are what the model reads as each field's `description`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::ops::VncPort;

/// Arguments of `get_console_log`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsoleLogArgs {
    /// The VM's name, as shown by `list_vms`. The VM may be running or stopped.
    pub name: String,
    /// Return the last this many lines of the serial console log. Default 50. Ignored
    /// when `since_offset` is given.
    pub lines: Option<usize>,
    /// Return everything from this absolute byte offset of the log instead of the
    /// last lines: pass the `next_offset` of a previous call to read only what is new.
    pub since_offset: Option<u64>,
    /// Most bytes of log text to return. Default and maximum 262144 (256 KiB).
    pub max_bytes: Option<usize>,
}

/// Arguments of `wait_for_console`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WaitConsoleArgs {
    /// The VM's name, as shown by `list_vms`.
    pub name: String,
    /// Regular expression (Rust regex syntax) matched against each line of the serial
    /// console, for example "login:" or "Reached target .*Multi-User".
    pub pattern: String,
    /// Seconds to wait before giving up. Default 60, at most 3600.
    pub timeout_s: Option<u64>,
    /// Absolute byte offset of the log to start looking from (a previous
    /// `next_offset`). Default: the start of the VM's current run, so a line printed
    /// before this call counts too.
    pub since_offset: Option<u64>,
}

/// Arguments of `send_keys`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SendKeysArgs {
    /// The VM's name; it must be running and have a graphical display.
    pub name: String,
    /// Key combinations pressed one after another, each a QEMU key name or several
    /// joined by '-' and pressed together: for example ["ctrl-alt-delete"] (reboots
    /// most guests) or ["alt-f2", "ret"]. Names: a-z, 0-9, f1-f12, ret, esc, spc,
    /// tab, backspace, up, down, left, right, ctrl, alt, shift, meta_l, delete, …
    pub keys: Vec<String>,
}

/// Arguments of `type_text`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TypeTextArgs {
    /// The VM's name; it must be running and have a graphical display.
    pub name: String,
    /// Text typed on the VM's keyboard (US layout): printable ASCII, "\n" for Enter
    /// and "\t" for Tab. It goes to the graphical console, not the serial one.
    pub text: String,
}

/// Arguments of `guest_exec`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GuestExecArgs {
    /// The VM's name; it must be running with the QEMU guest agent (qemu-ga) in the guest.
    pub name: String,
    /// Program to run in the guest, for example "/bin/sh" or "uname" (looked up in
    /// the guest's PATH when not absolute). No shell is involved: to run a shell
    /// line, use command "/bin/sh" with args ["-c", "…"].
    pub command: String,
    /// Arguments passed to the program. Default none.
    #[serde(default)]
    pub args: Vec<String>,
    /// Text fed to the program's standard input. Default none.
    pub stdin: Option<String>,
    /// Seconds the program may run before it is killed (reported with
    /// `timed_out`). Default 60, at most 3600.
    pub timeout_s: Option<u64>,
    /// Cap on the bytes kept of each of stdout and stderr. Default and maximum: the
    /// server's `agent.exec_output_max_bytes`.
    pub output_max_bytes: Option<u64>,
}

/// Arguments of `guest_file_read`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GuestFileReadArgs {
    /// The VM's name; it must be running with the QEMU guest agent in the guest.
    pub name: String,
    /// Absolute path of the file inside the guest, for example "/etc/os-release".
    pub path: String,
    /// Most bytes to read; a larger file is refused. Default and maximum: the
    /// server's `agent.file_max_bytes`.
    pub max_bytes: Option<u64>,
}

/// Arguments of `guest_file_write`. Give exactly one of `content` and `content_base64`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GuestFileWriteArgs {
    /// The VM's name; it must be running with the QEMU guest agent in the guest.
    pub name: String,
    /// Absolute path of the file inside the guest. It is created, or replaced
    /// unless `append` is true.
    pub path: String,
    /// The new content as text (written as UTF-8).
    pub content: Option<String>,
    /// The new content as base64, for binary data.
    pub content_base64: Option<String>,
    /// Add to the end of the file instead of replacing it. Default false.
    #[serde(default)]
    pub append: bool,
}

/// Arguments of `vm_stats`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VmStatsArgs {
    /// The VM's name; it must be running.
    pub name: String,
    /// Milliseconds over which CPU use is sampled. Default 500, between 50 and 10000.
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
