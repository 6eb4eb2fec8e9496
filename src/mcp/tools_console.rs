//! Console, display, guest agent and statistics tools: read and wait on the serial
//! console, VNC details, screenshots and keyboard input, commands and files through the
//! guest agent, VM and host figures. Each parses, calls `ops` and formats a [`Reply`].

use std::time::Duration;

use super::params::Parameters;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use rmcp::handler::server::tool::IntoCallToolResult;
use rmcp::model::{CallToolResponse, CallToolResult, ContentBlock};
use rmcp::service::RequestContext;
use rmcp::{RoleServer, tool, tool_router};

use super::args::VmNameArgs;
use super::args_console::{
    ConsoleLogArgs, FileWritten, GuestExecArgs, GuestFileReadArgs, GuestFileWriteArgs, GuestPong, KeysSent, RunFileOut,
    RunInVmArgs, RunInVmResult, ScreenshotInfo, SendKeysArgs, TypeTextArgs, VmStatsArgs, VncPortList, WaitConsoleArgs,
};
use super::notify::{Forward, Level, LongCall};
use super::reply::{Reply, ToolResult, fail, out};
use super::server::KvmMcp;
use crate::agent::exec::ExecResult;
use crate::agent::files::{FileData, GuestInfo};
use crate::agent::stream::Stream;
use crate::console::log::{ConsoleLog, ConsoleMatch};
use crate::error::quote;
use crate::ops::{
    ConsoleQuery, DEFAULT_BOOT_TIMEOUT, DEFAULT_RUN_TIMEOUT, FileIn, GuestExecRequest, Progress, RunBase, RunReport,
    RunRequest, VmStats, VncInfo,
};
use crate::stats::host::HostStats;

/// `wait_for_console`'s timeout when none is given.
const DEFAULT_WAIT: Duration = Duration::from_secs(60);

/// A screenshot: the PNG as image content, its size as structured content.
pub struct ImageReply {
    info: ScreenshotInfo,
    png: Vec<u8>,
}

impl IntoCallToolResult for ImageReply {
    fn into_call_tool_result(self) -> Result<CallToolResponse, rmcp::ErrorData> {
        let value = serde_json::to_value(&self.info)
            .map_err(|e| rmcp::ErrorData::internal_error(format!("cannot serialise the result: {e}"), None))?;
        let summary =
            format!("screenshot {}x{} pixels, {} bytes of PNG", self.info.width, self.info.height, self.info.bytes);
        let mut result = CallToolResult::structured(value);
        result.content = vec![ContentBlock::image(B64.encode(&self.png), "image/png"), ContentBlock::text(summary)];
        Ok(result.into())
    }
}

/// The run request of `run_in_vm`'s arguments; the VM lives for this server process.
fn run_request(a: RunInVmArgs) -> Result<RunRequest, String> {
    let mut files_in = Vec::with_capacity(a.files.len());
    for f in a.files {
        let data = match (f.content, f.content_base64) {
            (Some(t), None) => t.into_bytes(),
            (None, Some(b)) => {
                B64.decode(b.as_bytes()).map_err(|e| format!("files: {:?}: invalid base64 ({e})", f.path))?
            }
            _ => return Err(format!("files: {}: give exactly one of content and content_base64", quote(&f.path))),
        };
        files_in.push(FileIn { guest_path: f.path, data });
    }
    let base = match (a.template, a.image) {
        (Some(_), Some(_)) => return Err("template: give a template or an image, not both".into()),
        (Some(t), None) => RunBase::Template(t),
        (None, image) => RunBase::Master(image),
    };
    Ok(RunRequest {
        base,
        name: None,
        memory_mib: a.memory_mib,
        vcpus: None,
        argv: a.command,
        env: a.env,
        timeout: a.timeout_s.map_or(DEFAULT_RUN_TIMEOUT, Duration::from_secs),
        boot_timeout: DEFAULT_BOOT_TIMEOUT,
        files_in,
        files_out: a.fetch,
        owner: crate::procid::ProcIdentity::capture(std::process::id().cast_signed()),
    })
}

/// Keeps at most `max` bytes of one output stream.
#[derive(Default)]
struct Kept {
    data: Vec<u8>,
    cut: bool,
}

impl Kept {
    fn push(&mut self, bytes: &[u8], max: usize) {
        let room = max.saturating_sub(self.data.len());
        self.data.extend_from_slice(&bytes[..bytes.len().min(room)]);
        self.cut |= bytes.len() > room;
    }
}

/// How a guest command ended, in words.
fn how_it_ended(exit_code: Option<i64>, signal: Option<i64>, timed_out: bool) -> String {
    match (exit_code, signal) {
        _ if timed_out => "timed out and was killed".to_owned(),
        (Some(c), _) => format!("exited with code {c}"),
        (None, Some(s)) => format!("ended by signal {s}"),
        (None, None) => "ended".to_owned(),
    }
}

fn run_summary(r: &RunReport) -> String {
    let how = how_it_ended(r.exit_code, r.signal, r.timed_out);
    format!(
        "the command {how} in VM {} (booted in {} ms, ran {} ms, {} ms in all); the VM is deleted",
        r.vm, r.phases.boot_ms, r.phases.command_ms, r.phases.total_ms
    )
}

fn exec_summary(r: &ExecResult) -> String {
    let how = how_it_ended(r.exit_code, r.signal, r.timed_out);
    format!(
        "guest pid {} {how} after {} ms; {} bytes of stdout, {} of stderr",
        r.pid,
        r.duration_ms,
        r.stdout.len(),
        r.stderr.len()
    )
}

#[tool_router(router = console_tools, vis = "pub(super)")]
impl KvmMcp {
    /// Read a VM's serial console log: the last `lines` lines, or what follows `since_offset`.
    #[tool(title = "Read serial console log", annotations(read_only_hint = true, open_world_hint = false), output_schema = out::<ConsoleLog>())]
    async fn get_console_log(&self, Parameters(a): Parameters<ConsoleLogArgs>) -> ToolResult<ConsoleLog> {
        let q = ConsoleQuery { lines: a.lines, since_offset: a.since_offset, max_bytes: a.max_bytes };
        let log = self.ops().get_console_log(&a.name, q).map_err(fail)?;
        let summary = format!(
            "{} bytes of console text from offset {} to {}{}",
            log.text.len(),
            log.start_offset,
            log.next_offset,
            if log.truncated { " (truncated)" } else { "" }
        );
        Ok(Reply::new(log, summary))
    }

    /// Wait until a serial console line matches `pattern` and return it; fails with the last lines on timeout
    /// or when the VM stops.
    #[tool(title = "Wait for console output", annotations(read_only_hint = true, open_world_hint = false), output_schema = out::<ConsoleMatch>())]
    async fn wait_for_console(
        &self,
        Parameters(a): Parameters<WaitConsoleArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> ToolResult<ConsoleMatch> {
        let timeout = a.timeout_s.map_or(DEFAULT_WAIT, Duration::from_secs);
        let waiting_for = format!("/{}/ on the console", a.pattern);
        // The operation watches the caller's cancellation itself.
        let call = LongCall {
            tool: "wait_for_console",
            vm: &a.name,
            start: None,
            waiting_for: &waiting_for,
            if_cancelled: None,
            log: false,
        };
        let (name, pattern, ct) = (&a.name, &a.pattern, &ctx.ct);
        let op = |p: Forward| async move {
            self.ops().wait_for_console(name, pattern, timeout, a.since_offset, &*p, ct).await
        };
        let summarise = |m: &ConsoleMatch| format!("matched after {} ms: {}", m.waited_ms, m.line.trim_end());
        let (m, summary) = self.run_long(&ctx, call, op, summarise).await?;
        Ok(Reply::new(m, summary))
    }

    /// The VNC endpoints (host, port, display) of running VMs that have one.
    #[tool(title = "List VNC displays", annotations(read_only_hint = true, open_world_hint = false), output_schema = out::<VncPortList>())]
    async fn get_vnc_ports(&self) -> ToolResult<VncPortList> {
        let vnc = self.ops().get_vnc_ports().map_err(fail)?;
        let summary = if vnc.is_empty() {
            "no running VM has a VNC display".to_owned()
        } else {
            let items: Vec<String> = vnc.iter().map(|v| format!("{} at {}:{}", v.name, v.host, v.port)).collect();
            items.join(", ")
        };
        Ok(Reply::new(VncPortList { vnc }, summary))
    }

    /// A running VM's VNC endpoint, password for this run, `vnc://` URI and connected clients.
    #[tool(title = "Get VNC display", annotations(read_only_hint = true, open_world_hint = false), output_schema = out::<VncInfo>())]
    async fn get_vnc_info(&self, Parameters(a): Parameters<VmNameArgs>) -> ToolResult<VncInfo> {
        let v = self.ops().get_vnc_info(&a.name).await.map_err(fail)?;
        let summary = format!("VM {:?}: {} ({} clients connected)", v.name, v.uri, v.clients);
        Ok(Reply::new(v, summary))
    }

    /// Take a PNG screenshot of a running VM's display.
    #[tool(title = "Take screenshot", annotations(read_only_hint = true, open_world_hint = false), output_schema = out::<ScreenshotInfo>())]
    async fn screenshot_vm(&self, Parameters(a): Parameters<VmNameArgs>) -> Result<ImageReply, String> {
        let s = self.ops().screenshot(&a.name).await.map_err(fail)?;
        Ok(ImageReply { info: ScreenshotInfo { width: s.width, height: s.height, bytes: s.bytes }, png: s.png })
    }

    /// Press key combinations on a running VM's keyboard, one after another.
    #[tool(
        title = "Send key presses",
        annotations(read_only_hint = false, destructive_hint = true, idempotent_hint = false, open_world_hint = false),
        output_schema = out::<KeysSent>()
    )]
    async fn send_keys(
        &self,
        Parameters(a): Parameters<SendKeysArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> ToolResult<KeysSent> {
        let presses = self.ops().send_keys(&a.name, &a.keys, None).await.map_err(fail)?;
        let summary = format!("sent {presses} key presses to VM {:?}: {}", a.name, a.keys.join(" "));
        self.log(&ctx, Level::Info, &a.name, summary.clone()).await;
        Ok(Reply::new(KeysSent { presses }, summary))
    }

    /// Type text on a running VM's keyboard (graphical console, US layout).
    #[tool(
        title = "Type text",
        annotations(read_only_hint = false, destructive_hint = true, idempotent_hint = false, open_world_hint = false),
        output_schema = out::<KeysSent>()
    )]
    async fn type_text(&self, Parameters(a): Parameters<TypeTextArgs>) -> ToolResult<KeysSent> {
        let presses = self.ops().type_text(&a.name, &a.text, None).await.map_err(fail)?;
        let summary = format!("typed {} characters ({presses} key presses) on VM {:?}", a.text.chars().count(), a.name);
        Ok(Reply::new(KeysSent { presses }, summary))
    }

    /// Check that a running VM's guest agent answers, and how fast.
    #[tool(title = "Ping guest agent", annotations(read_only_hint = true, open_world_hint = false), output_schema = out::<GuestPong>())]
    async fn guest_ping(&self, Parameters(a): Parameters<VmNameArgs>) -> ToolResult<GuestPong> {
        let rtt = self.ops().guest_ping(&a.name).await.map_err(fail)?;
        let round_trip_ms = rtt.as_secs_f64() * 1e3;
        let summary = format!("the guest agent of VM {:?} answered in {round_trip_ms:.1} ms", a.name);
        Ok(Reply::new(GuestPong { round_trip_ms }, summary))
    }

    /// A running guest's agent version, OS, hostname and network interfaces, from its guest agent.
    #[tool(title = "Get guest OS info", annotations(read_only_hint = true, open_world_hint = false), output_schema = out::<GuestInfo>())]
    async fn guest_info(&self, Parameters(a): Parameters<VmNameArgs>) -> ToolResult<GuestInfo> {
        let g = self.ops().guest_info(&a.name).await.map_err(fail)?;
        let summary = format!(
            "VM {:?}: hostname {}, agent {}",
            a.name,
            g.hostname.as_deref().unwrap_or("unknown"),
            g.agent_version.as_deref().unwrap_or("version unknown")
        );
        Ok(Reply::new(g, summary))
    }

    /// Run a program in a running VM via its guest agent; returns exit code, stdout and stderr. Killed after
    /// `timeout_s` or on cancel.
    #[tool(
        title = "Run command in guest",
        annotations(read_only_hint = false, destructive_hint = true, idempotent_hint = false, open_world_hint = false),
        output_schema = out::<ExecResult>()
    )]
    async fn guest_exec(
        &self,
        Parameters(a): Parameters<GuestExecArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> ToolResult<ExecResult> {
        let waiting_for = format!("{:?} in the guest", a.command);
        let req = GuestExecRequest {
            command: a.command,
            args: a.args,
            stdin: a.stdin.map(String::into_bytes),
            timeout: a.timeout_s.map(Duration::from_secs),
            output_max_bytes: a.output_max_bytes,
        };
        // The operation kills the guest process itself when the caller cancels.
        let call = LongCall {
            tool: "guest_exec",
            vm: &a.name,
            start: None,
            waiting_for: &waiting_for,
            if_cancelled: None,
            log: true,
        };
        let (name, ct) = (&a.name, &ctx.ct);
        let op = |p: Forward| async move { self.ops().guest_exec(name, req, &*p, ct).await };
        let (r, summary) = self.run_long(&ctx, call, op, exec_summary).await?;
        Ok(Reply::new(r, summary))
    }

    /// Run a command in a throw-away VM (overlay on `image` or clone of `template`), then delete it; returns
    /// status, output and `fetch`ed files.
    #[tool(
        title = "Run command in throw-away VM",
        annotations(read_only_hint = false, destructive_hint = false, idempotent_hint = false, open_world_hint = false),
        output_schema = out::<RunInVmResult>()
    )]
    async fn run_in_vm(
        &self,
        Parameters(a): Parameters<RunInVmArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> ToolResult<RunInVmResult> {
        let req = run_request(a)?;
        let waiting_for = format!("{} in a throw-away VM", quote(req.argv.first().map_or("", String::as_str)));
        let vm = "a new job VM";
        // The job deletes its VM itself when the call is cancelled.
        let call =
            LongCall { tool: "run_in_vm", vm, start: None, waiting_for: &waiting_for, if_cancelled: None, log: true };
        let max = usize::try_from(self.ops().config().agent.exec_output_max_bytes).unwrap_or(usize::MAX);
        let ct = &ctx.ct;
        let (out, err) = (std::sync::Mutex::new(Kept::default()), std::sync::Mutex::new(Kept::default()));
        let op = |p: Forward| async {
            let p = p;
            let mut last = std::time::Instant::now();
            let mut sink = |stream: Stream, bytes: &[u8]| {
                let kept = if stream == Stream::Stdout { &out } else { &err };
                kept.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(bytes, max);
                // The newest line, at most once a second, as progress.
                if last.elapsed() >= Duration::from_secs(1) {
                    last = std::time::Instant::now();
                    let text = String::from_utf8_lossy(bytes);
                    if let Some(line) = text.lines().rev().find(|l| !l.trim().is_empty()) {
                        p(Progress { step: 0, total: None, message: format!("output: {}", quote(line)) });
                    }
                }
            };
            self.ops().run_job(&req, &mut sink, &*p, ct).await
        };
        let (r, summary) = self.run_long(&ctx, call, op, run_summary).await?;
        let take = |k: std::sync::Mutex<Kept>| {
            let k = k.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner);
            (String::from_utf8_lossy(&k.data).into_owned(), k.cut)
        };
        let ((stdout, stdout_truncated), (stderr, stderr_truncated)) = (take(out), take(err));
        let files = r
            .files_out
            .iter()
            .map(|f| {
                let text = String::from_utf8(f.data.clone()).ok();
                let base64 = if text.is_none() { Some(B64.encode(&f.data)) } else { None };
                RunFileOut { path: f.guest_path.clone(), bytes: f.bytes, text, base64 }
            })
            .collect();
        let result = RunInVmResult {
            vm: r.vm.clone(),
            status: r.status(),
            exit_code: r.exit_code,
            signal: r.signal,
            timed_out: r.timed_out,
            stdout,
            stderr,
            stdout_truncated,
            stderr_truncated,
            files,
            fetch_errors: r.copy_errors.clone(),
            phases: r.phases.clone(),
        };
        Ok(Reply::new(result, summary))
    }

    /// Read a file in a running VM via its guest agent: `text` when UTF-8, else `base64`.
    #[tool(title = "Read guest file", annotations(read_only_hint = true, open_world_hint = false), output_schema = out::<FileData>())]
    async fn guest_file_read(&self, Parameters(a): Parameters<GuestFileReadArgs>) -> ToolResult<FileData> {
        let f = self.ops().guest_file_read(&a.name, &a.path, a.max_bytes).await.map_err(fail)?;
        let kind = if f.text.is_some() { "text" } else { "binary, as base64" };
        let summary = format!("read {} bytes of {} ({kind})", f.size, f.path);
        Ok(Reply::new(f, summary))
    }

    /// Write a file in a running VM via its guest agent, creating or replacing it.
    #[tool(
        title = "Write guest file",
        annotations(read_only_hint = false, destructive_hint = true, idempotent_hint = false, open_world_hint = false),
        output_schema = out::<FileWritten>()
    )]
    async fn guest_file_write(
        &self,
        Parameters(a): Parameters<GuestFileWriteArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> ToolResult<FileWritten> {
        let data = match (a.content, a.content_base64) {
            (Some(t), None) => t.into_bytes(),
            (None, Some(b)) => B64.decode(b.trim()).map_err(|e| {
                format!("content_base64 is not valid base64 ({e}); give standard base64, or the text as `content`")
            })?,
            _ => return Err("give exactly one of `content` (text) and `content_base64` (binary)".into()),
        };
        let bytes_written = self.ops().guest_file_write(&a.name, &a.path, &data, a.append).await.map_err(fail)?;
        let summary = format!(
            "{} {bytes_written} bytes {} {} in VM {:?}",
            if a.append { "appended" } else { "wrote" },
            if a.append { "to" } else { "as" },
            a.path,
            a.name
        );
        self.log(&ctx, Level::Info, &a.name, summary.clone()).await;
        Ok(Reply::new(FileWritten { path: a.path, bytes_written, appended: a.append }, summary))
    }

    /// A running VM's CPU use over `interval_ms` (per vCPU too), memory, disk I/O and NIC counters.
    #[tool(title = "Get VM statistics", annotations(read_only_hint = true, open_world_hint = false), output_schema = out::<VmStats>())]
    async fn vm_stats(&self, Parameters(a): Parameters<VmStatsArgs>) -> ToolResult<VmStats> {
        let s = self.ops().vm_stats(&a.name, a.interval_ms.map(Duration::from_millis)).await.map_err(fail)?;
        let summary = format!(
            "VM {:?}: CPU {:.1}% of the host ({:.2} cores), {} disks, {} NICs",
            s.name,
            s.cpu.percent_of_host,
            s.cpu.cores_used,
            s.disks.len(),
            s.nics.len()
        );
        Ok(Reply::new(s, summary))
    }

    /// Host CPU use, load, memory, and free space where VM disks live.
    #[tool(title = "Get host statistics", annotations(read_only_hint = true, open_world_hint = false), output_schema = out::<HostStats>())]
    async fn host_stats(&self) -> ToolResult<HostStats> {
        let h = self.ops().host_stats().await.map_err(fail)?;
        let summary = format!(
            "{} CPUs at {:.1}%, {} of {} MiB memory available",
            h.cpus,
            h.cpu_percent,
            h.memory_available_bytes >> 20,
            h.memory_total_bytes >> 20
        );
        Ok(Reply::new(h, summary))
    }
}
