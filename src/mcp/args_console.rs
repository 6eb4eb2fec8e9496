//! Arguments and results of the console, display, guest agent and statistics tools.
//! The doc comments are what the model reads as each field's `description`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::ops::VncPort;

/// Arguments of `get_console_log`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsoleLogArgs {
    pub name: String,
    /// Default 50.
    pub lines: Option<usize>,
    /// A previous `next_offset`, to read only what is new.
    pub since_offset: Option<u64>,
    /// Most bytes to return; default and maximum 262144.
    pub max_bytes: Option<usize>,
}

/// Arguments of `wait_for_console`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WaitConsoleArgs {
    pub name: String,
    /// Rust regex for one line, e.g. "login:".
    pub pattern: String,
    /// Seconds to wait; default 60, at most 3600.
    pub timeout_s: Option<u64>,
    /// A previous `next_offset`; default: the start of the current run.
    pub since_offset: Option<u64>,
}

/// Arguments of `send_keys`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SendKeysArgs {
    pub name: String,
    /// QEMU key names, '-' joining keys pressed together, e.g. ["ctrl-alt-delete"] or ["alt-f2", "ret"]
    /// (a-z, 0-9, f1-f12, ret, esc, spc, tab, up, ctrl, alt, shift, delete, …).
    pub keys: Vec<String>,
}

/// Arguments of `type_text`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TypeTextArgs {
    pub name: String,
    /// Printable ASCII, "\n" for Enter, "\t" for Tab.
    pub text: String,
}

/// Arguments of `guest_exec`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GuestExecArgs {
    pub name: String,
    /// Program, searched in PATH. No shell: for a shell line use "/bin/sh" with args ["-c", "…"].
    pub command: String,
    #[serde(default)]
    pub args: Vec<String>,
    /// Standard input text.
    pub stdin: Option<String>,
    /// Default 60, at most 3600.
    pub timeout_s: Option<u64>,
    /// Bytes kept per output stream; default and maximum: the server's.
    pub output_max_bytes: Option<u64>,
}

/// Arguments of `guest_file_read`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GuestFileReadArgs {
    pub name: String,
    /// Absolute path in the guest.
    pub path: String,
    /// Refuse larger files; default and maximum: the server's.
    pub max_bytes: Option<u64>,
}

/// Arguments of `guest_file_write`. Give exactly one of `content` and `content_base64`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GuestFileWriteArgs {
    pub name: String,
    /// Absolute path in the guest.
    pub path: String,
    /// Content as text.
    pub content: Option<String>,
    /// Content as base64, for binary data.
    pub content_base64: Option<String>,
    /// Append instead of replacing.
    #[serde(default)]
    pub append: bool,
}

/// Arguments of `vm_stats`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VmStatsArgs {
    pub name: String,
    /// Default 500, 50 to 10000.
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

/// Arguments of `run_in_vm`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunInVmArgs {
    /// Program and arguments, e.g. ["sh", "-c", "make test"].
    pub command: Vec<String>,
    /// A stopped VM to clone instead.
    pub template: Option<String>,
    /// Master image; default: the configured one.
    pub image: Option<std::path::PathBuf>,
    pub memory_mib: Option<u64>,
    /// NAME=value entries.
    #[serde(default)]
    pub env: Vec<String>,
    /// Files written first.
    #[serde(default)]
    pub files: Vec<RunFileIn>,
    /// Guest files returned afterwards.
    #[serde(default)]
    pub fetch: Vec<String>,
    /// Default 600.
    pub timeout_s: Option<u64>,
}

/// A file `run_in_vm` writes into the guest: give `content` or `content_base64`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunFileIn {
    pub path: String,
    pub content: Option<String>,
    pub content_base64: Option<String>,
}

/// A guest file `run_in_vm` fetched.
#[derive(Debug, Serialize, JsonSchema)]
pub struct RunFileOut {
    pub path: String,
    pub bytes: u64,
    /// The content when it is UTF-8.
    pub text: Option<String>,
    /// The content as base64 otherwise.
    pub base64: Option<String>,
}

/// How a `run_in_vm` job ended; its VM is deleted.
#[derive(Debug, Serialize, JsonSchema)]
pub struct RunInVmResult {
    /// The job's VM.
    pub vm: String,
    /// What a shell would report: the exit code, 128 + a signal, 124 after the timeout.
    pub status: i32,
    pub exit_code: Option<i64>,
    pub signal: Option<i64>,
    pub timed_out: bool,
    /// Standard output, cut at the server's exec output limit.
    pub stdout: String,
    pub stderr: String,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    pub files: Vec<RunFileOut>,
    /// Fetches that failed, and why.
    pub fetch_errors: Vec<String>,
    /// Milliseconds per step: create, boot, copy_in, command, copy_out, delete, total.
    #[schemars(with = "std::collections::BTreeMap<String, u64>")]
    pub phases: crate::ops::RunPhases,
}
