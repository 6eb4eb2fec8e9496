//! `kvm-mcp run`: one command in a throw-away VM, for CI jobs. The command's output is
//! shown as it comes, its exit status becomes ours (124 after `--timeout`, 125 when
//! kvm-mcp itself failed, 130 when interrupted), and the VM is deleted however the job
//! ends: the VM's lease names this process, so even a `kill -9` of it makes the VM's
//! supervisor delete the VM.

use std::io::{Read as _, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use tokio_util::sync::CancellationToken;

use crate::agent::stream::Stream;
use crate::error::{chain, quote};
use crate::ops::{
    DEFAULT_BOOT_TIMEOUT, DEFAULT_RUN_TIMEOUT, FileIn, Ops, OpsError, RunBase, RunReport, RunRequest, no_progress,
};

/// Exit status when kvm-mcp itself failed (as `docker run` and `env` do).
pub const EXIT_FAILED: u8 = 125;
/// Exit status after an interrupt (SIGINT, SIGTERM, SIGHUP).
pub const EXIT_INTERRUPTED: u8 = 130;

/// `kvm-mcp run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// A stopped VM to clone (linked) for the job instead of a master image.
    #[arg(long, conflicts_with = "master")]
    pub template: Option<String>,
    /// Master image (in the image directories) the job's VM overlays; default
    /// vm.default_master_image.
    #[arg(long)]
    pub master: Option<PathBuf>,
    /// Memory in MiB.
    #[arg(long)]
    pub memory: Option<u64>,
    #[arg(long)]
    pub vcpus: Option<u32>,
    /// Seconds the command may run (default 600); then it is killed and the exit
    /// status is 124.
    #[arg(long)]
    pub timeout: Option<u64>,
    /// Seconds the guest may take until its agent answers (default 600).
    #[arg(long)]
    pub boot_timeout: Option<u64>,
    /// Copy a host file into the guest before the command, `HOST:GUEST` (the host
    /// path without ':'); repeatable. Missing guest directories are made.
    #[arg(long = "copy-in", value_name = "HOST:GUEST")]
    pub copy_in: Vec<String>,
    /// Copy a guest file out after the command, `GUEST:HOST` (the guest path without
    /// ':'); repeatable.
    #[arg(long = "copy-out", value_name = "GUEST:HOST")]
    pub copy_out: Vec<String>,
    /// Set a variable in the command's environment, `NAME=value`; repeatable.
    #[arg(long = "env", value_name = "NAME=VALUE")]
    pub env: Vec<String>,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

fn fail(e: &OpsError, interrupted: bool) -> u8 {
    eprintln!("kvm-mcp run: {}", chain(e));
    if interrupted { EXIT_INTERRUPTED } else { EXIT_FAILED }
}

fn split_pair<'a>(field: &str, v: &'a str, form: &str) -> Result<(&'a str, &'a str), OpsError> {
    match v.split_once(':') {
        Some((a, b)) if !a.is_empty() && !b.is_empty() => Ok((a, b)),
        _ => Err(OpsError::invalid(field, format!("{} is not {form}", quote(v)))),
    }
}

/// Reads a host file to copy in: a regular file (no FIFO or device is opened for
/// reading: it is opened non-blocking and checked first), at most `max` bytes.
fn read_host_file(path: &Path, max: u64) -> Result<Vec<u8>, OpsError> {
    let bad = |reason: String| OpsError::invalid("copy-in", format!("{}: {reason}", quote(&path.to_string_lossy())));
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| bad(e.to_string()))?;
    let meta = f.metadata().map_err(|e| bad(e.to_string()))?;
    if !meta.is_file() {
        return Err(bad("not a regular file".into()));
    }
    if meta.len() > max {
        return Err(bad(format!("{} bytes, over agent.file_max_bytes ({max})", meta.len())));
    }
    let mut data = Vec::new();
    f.take(max + 1).read_to_end(&mut data).map_err(|e| bad(e.to_string()))?;
    if data.len() as u64 > max {
        return Err(bad(format!("grew past agent.file_max_bytes ({max}) while read")));
    }
    Ok(data)
}

fn request(ops: &Ops, a: &RunArgs) -> Result<(RunRequest, Vec<PathBuf>), OpsError> {
    let mut files_in = Vec::new();
    for c in &a.copy_in {
        let (host, guest) = split_pair("copy-in", c, "HOST:GUEST")?;
        let data = read_host_file(Path::new(host), ops.config().agent.file_max_bytes)?;
        files_in.push(FileIn { guest_path: guest.to_owned(), data });
    }
    let mut files_out = Vec::new();
    let mut hosts = Vec::new();
    for c in &a.copy_out {
        let (guest, host) = split_pair("copy-out", c, "GUEST:HOST")?;
        files_out.push(guest.to_owned());
        hosts.push(PathBuf::from(host));
    }
    let base = match &a.template {
        Some(t) => RunBase::Template(t.clone()),
        None => RunBase::Master(a.master.clone()),
    };
    let req = RunRequest {
        base,
        name: None,
        memory_mib: a.memory,
        vcpus: a.vcpus,
        argv: a.command.clone(),
        env: a.env.clone(),
        timeout: a.timeout.map_or(DEFAULT_RUN_TIMEOUT, Duration::from_secs),
        boot_timeout: a.boot_timeout.map_or(DEFAULT_BOOT_TIMEOUT, Duration::from_secs),
        files_in,
        files_out,
        owner: crate::procid::ProcIdentity::capture(std::process::id().cast_signed()),
    };
    Ok((req, hosts))
}

/// Cancels `cancel` on the first SIGINT, SIGTERM or SIGHUP (the job cleans up); a
/// second one exits at once, leaving the VM to its supervisor, which sees this process
/// gone.
fn on_interrupt(cancel: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let kinds = [SignalKind::interrupt(), SignalKind::terminate(), SignalKind::hangup()];
    let Ok(mut streams) = kinds.into_iter().map(signal).collect::<Result<Vec<_>, _>>() else {
        tracing::warn!("cannot watch for interrupts; an interrupted job is cleaned up by its VM's supervisor");
        return;
    };
    tokio::spawn(async move {
        for n in 0.. {
            let any = futures::future::select_all(streams.iter_mut().map(|s| Box::pin(s.recv())));
            any.await;
            if n > 0 {
                std::process::exit(i32::from(EXIT_INTERRUPTED));
            }
            eprintln!("kvm-mcp run: interrupted; deleting the job's VM (again to quit at once)");
            cancel.cancel();
        }
    });
}

fn write_out(report: &RunReport, hosts: &[PathBuf]) -> Vec<String> {
    let mut errors = report.copy_errors.clone();
    for (f, host) in report.files_out.iter().zip(hosts) {
        if let Err(e) = crate::fsutil::write_atomic(host, &f.data) {
            errors.push(format!("{}: cannot write {}: {e}", f.guest_path, host.display()));
        }
    }
    errors
}

/// Runs `kvm-mcp run`; returns the exit status.
pub async fn run(ops: &Ops, json: bool, a: &RunArgs) -> u8 {
    let (req, hosts) = match request(ops, a) {
        Ok(r) => r,
        Err(e) => return fail(&e, false),
    };
    let cancel = CancellationToken::new();
    on_interrupt(cancel.clone());
    // With --json, stdout carries the result object alone; the command's output goes
    // to stderr.
    let mut sink = |stream: Stream, data: &[u8]| {
        let r = if stream == Stream::Stdout && !json {
            let mut o = std::io::stdout().lock();
            o.write_all(data).and_then(|()| o.flush())
        } else {
            let mut e = std::io::stderr().lock();
            e.write_all(data).and_then(|()| e.flush())
        };
        if let Err(e) = r {
            tracing::debug!(error = %e, "cannot pass on the command's output");
        }
    };
    let report = match ops.run_job(&req, &mut sink, &no_progress, &cancel).await {
        Ok(r) => r,
        Err(e) => return fail(&e, cancel.is_cancelled()),
    };
    let errors = write_out(&report, &hosts);
    for e in &errors {
        eprintln!("kvm-mcp run: copy-out {e}");
    }
    if json {
        let mut v = serde_json::to_value(&report).unwrap_or_default();
        v["status"] = report.status().into();
        v["copy_errors"] = serde_json::json!(errors);
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    }
    if report.timed_out {
        eprintln!("kvm-mcp run: the command outlived --timeout and was killed");
    }
    match u8::try_from(report.status()) {
        Ok(0) if !errors.is_empty() => EXIT_FAILED,
        Ok(s) => s,
        Err(_) => EXIT_FAILED,
    }
}
