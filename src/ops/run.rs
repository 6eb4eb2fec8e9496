//! One throw-away VM for one command (`kvm-mcp run`, the `run_in_vm` tool): a VM made
//! from a master image (an overlay) or a template (a linked clone), booted until its
//! guest agent answers, files copied in, the command run with its output shown as it
//! comes, files copied out, and the VM deleted however the job ends (success, failure,
//! timeout, cancellation).
//!
//! The VM carries a lease: it ends when the process that asked for the job exits (the
//! CLI killed with `kill -9`) or when the job's time is up, and then the VM's own
//! supervisor stops it and deletes it, with no front end running. So nothing outlives
//! a job by more than the moment its supervisor needs to notice.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::clone::CloneRequest;
use super::create::CreateRequest;
use super::disks::DiskSource;
use super::{DeleteOptions, Ops, OpsError, Progress, ProgressFn};
use crate::agent::AgentClient;
use crate::agent::stream::{Stream, StreamRequest};

/// Default time the command may run.
pub const DEFAULT_RUN_TIMEOUT: Duration = Duration::from_secs(600);
/// Default time the guest gets to boot until its agent answers.
pub const DEFAULT_BOOT_TIMEOUT: Duration = Duration::from_secs(600);
/// Longest time either may be given.
pub const MAX_RUN_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// What the lease gives on top of boot and command: creating, copying, deleting.
const LEASE_SLACK: Duration = Duration::from_secs(300);
/// Most arguments, environment entries and files a job takes.
const MAX_ARGS: usize = 4096;
const MAX_ENV: usize = 256;
const MAX_FILES: usize = 64;
/// Longest argument or environment entry.
const MAX_ARG_BYTES: usize = 128 * 1024;
/// Longest guest path.
const MAX_GUEST_PATH: usize = 4096;

/// What the job's VM is made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunBase {
    /// A new overlay on this master image (`None`: `vm.default_master_image`).
    Master(Option<PathBuf>),
    /// A linked clone of this stopped VM.
    Template(String),
}

/// A file put into the guest before the command runs.
#[derive(Debug, Clone)]
pub struct FileIn {
    /// Absolute path in the guest; missing directories are made.
    pub guest_path: String,
    pub data: Vec<u8>,
}

/// A file fetched from the guest after the command ran.
#[derive(Debug, Clone, Serialize)]
pub struct FileOut {
    pub guest_path: String,
    /// Not serialised: front ends write or encode it.
    #[serde(skip)]
    pub data: Vec<u8>,
    pub bytes: u64,
}

/// One job.
#[derive(Debug, Clone)]
pub struct RunRequest {
    pub base: RunBase,
    /// The job VM's name; default `run-` and 8 hex digits.
    pub name: Option<String>,
    pub memory_mib: Option<u64>,
    pub vcpus: Option<u32>,
    /// The program and its arguments.
    pub argv: Vec<String>,
    /// `NAME=value` entries for the command's environment.
    pub env: Vec<String>,
    /// Kill the command after this long (exit status 124 on the command line).
    pub timeout: Duration,
    /// Give up when the guest agent has not answered after this long.
    pub boot_timeout: Duration,
    pub files_in: Vec<FileIn>,
    /// Absolute guest paths fetched after the command.
    pub files_out: Vec<String>,
    /// The process the VM lives for: when it exits, the VM goes too.
    pub owner: Option<crate::procid::ProcIdentity>,
}

/// How long each step of a job took, in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunPhases {
    /// Overlay or clone written.
    pub create_ms: u64,
    /// Start until the guest agent answered.
    pub boot_ms: u64,
    pub copy_in_ms: u64,
    pub command_ms: u64,
    pub copy_out_ms: u64,
    pub delete_ms: u64,
    pub total_ms: u64,
}

/// How a job ended.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// The job's VM (deleted by now).
    pub vm: String,
    /// It came booted from the template's warm pool.
    pub from_pool: bool,
    /// The command's exit code, when it exited.
    pub exit_code: Option<i64>,
    /// The signal that ended it, if one did.
    pub signal: Option<i64>,
    /// It outlived its timeout and was killed.
    pub timed_out: bool,
    pub stdout_bytes: u64,
    pub stderr_bytes: u64,
    pub files_out: Vec<FileOut>,
    /// Files that could not be fetched, and why.
    pub copy_errors: Vec<String>,
    pub phases: RunPhases,
}

impl RunReport {
    /// The status a shell would report: the exit code, 128 + the signal, 124 after
    /// a timeout.
    #[must_use]
    pub fn status(&self) -> i32 {
        if self.timed_out {
            return 124;
        }
        match (self.exit_code, self.signal) {
            (Some(c), _) => i32::try_from(c).unwrap_or(1),
            (None, Some(s)) => 128 + i32::try_from(s).unwrap_or(0),
            (None, None) => 1,
        }
    }
}

fn ms(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}

fn check_text(field: &str, value: &str, max: usize) -> Result<(), OpsError> {
    if value.len() > max {
        return Err(OpsError::invalid(field, format!("an entry is {} bytes; at most {max}", value.len())));
    }
    if value.contains('\0') {
        return Err(OpsError::invalid(field, format!("{} contains a NUL byte", crate::error::quote(value))));
    }
    Ok(())
}

fn check_guest_path(field: &str, p: &str) -> Result<(), OpsError> {
    check_text(field, p, MAX_GUEST_PATH)?;
    if !p.starts_with('/') || p.split('/').any(|c| c == "..") {
        return Err(OpsError::invalid(
            field,
            format!(
                "{} is not an absolute guest path without \"..\"; give one like /root/in.txt",
                crate::error::quote(p)
            ),
        ));
    }
    Ok(())
}

fn check_timeout(field: &str, t: Duration) -> Result<(), OpsError> {
    if t.is_zero() || t > MAX_RUN_TIMEOUT {
        return Err(OpsError::invalid(
            field,
            format!("{} s is outside 1..={} s", t.as_secs(), MAX_RUN_TIMEOUT.as_secs()),
        ));
    }
    Ok(())
}

/// Checks a request before anything is made.
fn check(req: &RunRequest) -> Result<(), OpsError> {
    if req.argv.first().is_none_or(|p| p.trim().is_empty()) {
        return Err(OpsError::invalid(
            "command",
            "give the program to run and its arguments, e.g. [\"uname\", \"-a\"]",
        ));
    }
    if req.argv.len() > MAX_ARGS {
        return Err(OpsError::invalid("command", format!("{} arguments; at most {MAX_ARGS}", req.argv.len())));
    }
    for a in &req.argv {
        check_text("command", a, MAX_ARG_BYTES)?;
    }
    if req.env.len() > MAX_ENV {
        return Err(OpsError::invalid("env", format!("{} entries; at most {MAX_ENV}", req.env.len())));
    }
    for e in &req.env {
        check_text("env", e, MAX_ARG_BYTES)?;
        let key = e.split_once('=').map(|(k, _)| k);
        let valid = key.is_some_and(|k| {
            k.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        });
        if !valid {
            return Err(OpsError::invalid(
                "env",
                format!("{} is not NAME=value (NAME: letters, digits, '_')", crate::error::quote(e)),
            ));
        }
    }
    if req.files_in.len() > MAX_FILES || req.files_out.len() > MAX_FILES {
        return Err(OpsError::invalid("files", format!("at most {MAX_FILES} files in and {MAX_FILES} out")));
    }
    for f in &req.files_in {
        check_guest_path("copy_in", &f.guest_path)?;
    }
    for p in &req.files_out {
        check_guest_path("copy_out", p)?;
    }
    check_timeout("timeout", req.timeout)?;
    check_timeout("boot_timeout", req.boot_timeout)
}

/// A fresh name for a job's VM: `run-` and 8 hex digits.
/// The job's VM: its name, and for a VM claimed from a pool, a connection to its agent
/// made before it resumed.
struct JobVm {
    name: String,
    agent: Option<AgentClient>,
}

fn job_name() -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("run-{}", &id[..8])
}

impl Ops {
    /// Runs one job in a VM of its own and deletes the VM afterwards; `sink` gets the
    /// command's output as it comes.
    ///
    /// # Errors
    /// Invalid requests (before anything is made); a VM that cannot be made, started or
    /// reached; cancellation. The VM is deleted in every case.
    pub async fn run_job(
        &self,
        req: &RunRequest,
        sink: &mut (dyn FnMut(Stream, &[u8]) + Send),
        progress: ProgressFn<'_>,
        cancel: &CancellationToken,
    ) -> Result<RunReport, OpsError> {
        check(req)?;
        for f in &req.files_in {
            if f.data.len() as u64 > self.cfg.agent.file_max_bytes {
                return Err(OpsError::invalid(
                    "copy_in",
                    format!(
                        "{} is {} bytes, over agent.file_max_bytes ({})",
                        crate::error::quote(&f.guest_path),
                        f.data.len(),
                        self.cfg.agent.file_max_bytes
                    ),
                ));
            }
        }
        let started = Instant::now();
        let mut phases = RunPhases::default();
        let job = self.make_job_vm(req).await?;
        let name = job.name.clone();
        phases.create_ms = ms(started);
        let res = self.run_job_in(job, req, sink, progress, cancel, &mut phases).await;
        let t = Instant::now();
        let deleted = self.delete_with(&name, DeleteOptions { force: true, keep_disks: false }).await;
        phases.delete_ms = ms(t);
        phases.total_ms = ms(started);
        if let Err(e) = &deleted {
            tracing::error!(vm = %name, error = %crate::error::chain(e), "cannot delete a job's VM; its lease ends it");
        }
        let mut report = res?;
        deleted?;
        report.phases = phases;
        Ok(report)
    }

    /// Defines the job's VM (not started), with its lease; or claims a running one from
    /// the template's pool, with a connection to its agent made before it resumed.
    async fn make_job_vm(&self, req: &RunRequest) -> Result<JobVm, OpsError> {
        let lease = req.boot_timeout + req.timeout + LEASE_SLACK;
        for attempt in 0.. {
            let name = req.name.clone().unwrap_or_else(job_name);
            let made = match &req.base {
                RunBase::Master(image) => {
                    let c = CreateRequest {
                        name: Some(name.clone()),
                        memory_mib: req.memory_mib,
                        vcpus: req.vcpus,
                        disk: Some(DiskSource::Master(image.clone())),
                        ttl_s: Some(lease.as_secs()),
                        owner: req.owner.clone(),
                        ..CreateRequest::default()
                    };
                    self.create(c).await.map(|_| ())
                }
                RunBase::Template(source) => {
                    if req.memory_mib.is_some() || req.vcpus.is_some() {
                        return Err(OpsError::invalid(
                            "template",
                            "a template's VMs have its memory and vCPUs; leave memory and vcpus out",
                        ));
                    }
                    // A warm VM from the template's pool when one is ready: booted, so
                    // the job's boot is a resume.
                    let pooled = self.load(source).is_ok_and(|t| t.spec.pool.is_some());
                    if pooled && req.name.is_none() {
                        let lease = super::create::lease(Some(lease.as_secs()), req.owner.clone())?;
                        if let Some((name, agent)) = self.claim(source, lease).await? {
                            return Ok(JobVm { name, agent });
                        }
                    }
                    let c = CloneRequest {
                        source: source.clone(),
                        name: name.clone(),
                        ttl_s: Some(lease.as_secs()),
                        owner: req.owner.clone(),
                        ..CloneRequest::default()
                    };
                    self.clone_vm(c).await.map(|_| ())
                }
            };
            match made {
                Err(OpsError::Exists { .. }) if attempt < 3 && req.name.is_none() => {}
                Err(e) => return Err(e),
                Ok(()) => return Ok(JobVm { name, agent: None }),
            }
        }
        unreachable!("the loop returns")
    }

    async fn run_job_in(
        &self,
        job: JobVm,
        req: &RunRequest,
        sink: &mut (dyn FnMut(Stream, &[u8]) + Send),
        progress: ProgressFn<'_>,
        cancel: &CancellationToken,
        phases: &mut RunPhases,
    ) -> Result<RunReport, OpsError> {
        let JobVm { name, mut agent } = job;
        let name = name.as_str();
        let say = |step: u32, message: String| progress(Progress { step, total: Some(4), message });
        say(1, format!("booting VM {name} until its guest agent answers"));
        let t = Instant::now();
        // A VM claimed from a warm pool runs already, and its agent answered before it
        // was paused: the command's own connection is the wait.
        let from_pool = self.info(name).is_ok_and(|i| i.state.is_active());
        if !from_pool {
            tokio::select! {
                r = self.start(name) => { r?; }
                () = cancel.cancelled() => return Err(OpsError::Cancelled { what: "starting the job's VM" }),
            }
            self.wait_for_agent(name, req.boot_timeout, cancel).await?;
        }
        phases.boot_ms = ms(t);

        let t = Instant::now();
        if !req.files_in.is_empty() {
            // The agent serves one connection at a time; the copies make their own.
            agent = None;
        }
        for f in &req.files_in {
            if let Some((dir, _)) = f.guest_path.rsplit_once('/').filter(|(d, _)| !d.is_empty()) {
                self.guest_mkdir(name, dir, cancel).await?;
            }
            self.guest_file_write(name, &f.guest_path, &f.data, false).await?;
        }
        phases.copy_in_ms = ms(t);

        say(2, format!("running {} in VM {name}", crate::error::quote(&req.argv[0])));
        let t = Instant::now();
        let stream = StreamRequest { argv: req.argv.clone(), env: req.env.clone(), timeout: req.timeout };
        let r = self.guest_exec_streamed_on(agent, name, &stream, sink, cancel).await?;
        phases.command_ms = ms(t);

        say(3, "fetching files".into());
        let t = Instant::now();
        let mut files_out = Vec::new();
        let mut copy_errors = Vec::new();
        for p in &req.files_out {
            match self.guest_file_read(name, p, None).await {
                Ok(f) => files_out.push(FileOut { guest_path: p.clone(), bytes: f.size, data: f.data }),
                Err(e) => copy_errors.push(format!("{p}: {}", crate::error::chain(&e))),
            }
        }
        phases.copy_out_ms = ms(t);
        say(4, format!("deleting VM {name}"));
        Ok(RunReport {
            vm: name.to_owned(),
            from_pool,
            exit_code: r.exit_code,
            signal: r.signal,
            timed_out: r.timed_out,
            stdout_bytes: r.stdout_bytes,
            stderr_bytes: r.stderr_bytes,
            files_out,
            copy_errors,
            phases: RunPhases::default(),
        })
    }

    /// `mkdir -p DIR` in the guest.
    async fn guest_mkdir(&self, name: &str, dir: &str, cancel: &CancellationToken) -> Result<(), OpsError> {
        let req = super::GuestExecRequest {
            command: "/bin/mkdir".into(),
            args: vec!["-p".into(), "--".into(), dir.into()],
            timeout: Some(Duration::from_secs(60)),
            ..super::GuestExecRequest::default()
        };
        let r = self.guest_exec(name, req, &super::no_progress, cancel).await?;
        if r.exit_code == Some(0) {
            return Ok(());
        }
        Err(OpsError::invalid(
            "copy_in",
            format!("cannot make the guest directory {}: {}", crate::error::quote(dir), r.stderr.trim()),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(argv: &[&str]) -> RunRequest {
        RunRequest {
            base: RunBase::Master(None),
            name: None,
            memory_mib: None,
            vcpus: None,
            argv: argv.iter().map(|s| (*s).to_owned()).collect(),
            env: vec![],
            timeout: DEFAULT_RUN_TIMEOUT,
            boot_timeout: DEFAULT_BOOT_TIMEOUT,
            files_in: vec![],
            files_out: vec![],
            owner: None,
        }
    }

    fn field(r: &RunRequest) -> String {
        match check(r) {
            Err(OpsError::Invalid { field, .. }) => field,
            other => panic!("expected an invalid field, got {other:?}"),
        }
    }

    #[test]
    fn hostile_requests_are_refused_by_field() {
        assert!(check(&req(&["uname", "-a"])).is_ok());
        assert_eq!(field(&req(&[])), "command");
        assert_eq!(field(&req(&[" "])), "command");
        assert_eq!(field(&req(&["sh", "a\0b"])), "command");
        for bad in ["1X=y", "NOEQUALS", "A B=c", "=v", "A\0=b"] {
            assert_eq!(field(&RunRequest { env: vec![bad.into()], ..req(&["true"]) }), "env", "{bad:?}");
        }
        assert!(check(&RunRequest { env: vec!["_A1=x=y".into()], ..req(&["true"]) }).is_ok());
        for bad in ["relative", "/a/../etc/passwd", "", "/x\0"] {
            assert_eq!(field(&RunRequest { files_out: vec![bad.into()], ..req(&["true"]) }), "copy_out", "{bad:?}");
            let f = FileIn { guest_path: bad.into(), data: vec![] };
            assert_eq!(field(&RunRequest { files_in: vec![f], ..req(&["true"]) }), "copy_in", "{bad:?}");
        }
        assert_eq!(field(&RunRequest { timeout: Duration::ZERO, ..req(&["true"]) }), "timeout");
        assert_eq!(field(&RunRequest { boot_timeout: MAX_RUN_TIMEOUT * 2, ..req(&["true"]) }), "boot_timeout");
        let many = vec!["x".to_owned(); MAX_ARGS + 1];
        assert_eq!(field(&RunRequest { argv: many, ..req(&[]) }), "command");
    }

    #[test]
    fn status_is_what_a_shell_reports() {
        let r = |exit_code, signal, timed_out| RunReport {
            vm: String::new(),
            from_pool: false,
            exit_code,
            signal,
            timed_out,
            stdout_bytes: 0,
            stderr_bytes: 0,
            files_out: vec![],
            copy_errors: vec![],
            phases: RunPhases::default(),
        };
        assert_eq!(r(Some(0), None, false).status(), 0);
        assert_eq!(r(Some(3), None, false).status(), 3);
        assert_eq!(r(None, Some(9), false).status(), 137);
        assert_eq!(r(None, Some(9), true).status(), 124);
        assert_eq!(job_name().len(), 12);
        assert!(crate::ids::VmName::new(&job_name()).is_ok());
    }
}
