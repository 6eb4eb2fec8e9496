//! Long tool calls as tasks (the MCP Tasks extension, SEP-2663, as rmcp 3.9 has it).
//!
//! A client that declared the extension gets a `CreateTaskResult` at once for the calls
//! [`long_call`] picks; the call then runs on the runtime with its own cancellation
//! token, its progress becomes the task's status message, and `tasks/get` and
//! `tasks/cancel` answer from the table here. Every task has a small record
//! `<state_dir>/tasks/<id>.json`, written when it starts and when it ends, so a later
//! server process still answers for it: with its outcome, or, when the process that ran
//! it ended first, with "outcome unknown" and the VM's state now. Records expire
//! [`TTL`] after their last change and at most [`KEEP`] are kept.
//!
//! Task ids are UUIDs this server made; a client's id is parsed as one (canonical
//! lowercase form only) before it names a file, so no client string reaches a path.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use rmcp::ErrorData as McpError;
use rmcp::model::{CallToolResult, ContentBlock, DetailedTask, ErrorCode, JsonObject, Task, TaskPayload, TaskStatus};
use rmcp::task_manager::current_timestamp;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::params::quote;
use crate::fsutil;
use crate::ids::VmName;
use crate::layout::TASKS_DIR;
use crate::procid::ProcIdentity;

/// How long a task's record is kept after its last change (and told to clients as
/// `ttlMs`).
pub const TTL: Duration = Duration::from_secs(3600);

/// The polling interval suggested to clients.
const POLL_INTERVAL_MS: u64 = 1000;

/// Records kept at most; the oldest go first.
pub const KEEP: usize = 256;

/// Tasks running at once in one server process, at most.
pub const MAX_RUNNING: usize = 64;

/// Largest result kept on disk, as JSON; a larger one is kept in memory only and the
/// record gets its text summary.
const RECORD_RESULT_MAX: usize = 64 * 1024;

/// Longest status message kept.
const MESSAGE_MAX: usize = 1000;

/// The VM a tool call acts on, when the call is one that runs as a task: the long ones,
/// decided from the arguments alone. `None` runs it as a plain call (including when the
/// VM name is missing or invalid: the plain call says what is wrong at once).
#[must_use]
pub fn long_call(tool: &str, args: Option<&JsonObject>, default_vm: &str) -> Option<String> {
    let arg = |k: &str| args.and_then(|a| a.get(k));
    let flag = |k: &str| arg(k).and_then(Value::as_bool) == Some(true);
    let vm = match tool {
        "start_vm" | "stop_vm" | "fork_vm" | "create_snapshot" | "revert_snapshot" | "resize_disk" | "guest_exec"
        | "wait_for_console" => arg("name"),
        "create_vm" if flag("start") => match arg("name") {
            None | Some(Value::Null) => return Some(default_vm.to_owned()),
            name => name,
        },
        "clone_vm" if flag("full") || flag("start") => arg("name"),
        // The job's VM is named when it is made.
        "run_in_vm" => return Some("a new job VM".to_owned()),
        "get_vm_ip" if arg("wait_s").and_then(Value::as_u64).is_some_and(|s| s > 0) => arg("name"),
        _ => None,
    }?;
    let vm = vm.as_str()?;
    VmName::new(vm).ok().map(|_| vm.to_owned())
}

/// How a task ended.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Outcome {
    /// The tool answered (a tool error included): its `CallToolResult`.
    Completed { result: JsonObject },
    /// A protocol error instead of a result.
    Failed { error: JsonObject },
    /// The caller cancelled it; the status message says what the VM was left in.
    Cancelled,
}

impl Outcome {
    /// A finished tool call's result.
    #[must_use]
    pub fn completed(result: &CallToolResult) -> Self {
        Self::Completed { result: object(result) }
    }

    /// A protocol error.
    #[must_use]
    pub fn failed(error: &McpError) -> Self {
        Self::Failed { error: object(error) }
    }

    fn payload(&self) -> TaskPayload {
        match self {
            Self::Completed { result } => TaskPayload::Completed { result: result.clone() },
            Self::Failed { error } => TaskPayload::Failed { error: error.clone() },
            Self::Cancelled => TaskPayload::Cancelled,
        }
    }

    /// The same outcome, small enough for a record.
    fn for_record(&self) -> Self {
        let Self::Completed { result } = self else { return self.clone() };
        let size = serde_json::to_vec(result).map_or(usize::MAX, |v| v.len());
        if size <= RECORD_RESULT_MAX {
            return self.clone();
        }
        let summary = serde_json::from_value::<CallToolResult>(Value::Object(result.clone()))
            .map(|r| text_of(&r))
            .unwrap_or_default();
        let mut small = CallToolResult::success(vec![ContentBlock::text(format!(
            "{} (the full result, {size} bytes, was too large to keep past the server process that ran it)",
            clip(&summary)
        ))]);
        small.is_error = result.get("isError").and_then(Value::as_bool);
        Self::Completed { result: object(&small) }
    }
}

fn object<T: Serialize>(value: &T) -> JsonObject {
    match serde_json::to_value(value) {
        Ok(Value::Object(m)) => m,
        _ => JsonObject::new(),
    }
}

/// The text blocks of a result, joined.
#[must_use]
pub fn text_of(r: &CallToolResult) -> String {
    r.content.iter().filter_map(|c| c.as_text().map(|t| t.text.as_str())).collect::<Vec<_>>().join("\n")
}

fn clip(s: &str) -> String {
    if s.chars().count() <= MESSAGE_MAX {
        s.to_owned()
    } else {
        format!("{}… (cut)", s.chars().take(MESSAGE_MAX).collect::<String>())
    }
}

/// What is kept on disk for one task.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    task_id: String,
    tool: String,
    vm: String,
    created_at: String,
    last_updated_at: String,
    /// The server process that runs it.
    owner: Option<ProcIdentity>,
    status_message: Option<String>,
    /// `None` while it runs.
    outcome: Option<Outcome>,
}

impl Record {
    fn task(&self, status: TaskStatus, message: Option<String>) -> Task {
        let mut t = Task::new(self.task_id.clone(), status, self.created_at.clone(), self.last_updated_at.clone())
            .with_ttl_ms(u64::try_from(TTL.as_millis()).unwrap_or(u64::MAX));
        if status == TaskStatus::Working {
            t = t.with_poll_interval_ms(POLL_INTERVAL_MS);
        }
        t.status_message = message;
        t
    }

    fn detailed(&self, outcome: &Outcome, message: Option<String>) -> DetailedTask {
        let payload = outcome.payload();
        DetailedTask::new(self.task(payload.status(), message), payload)
    }
}

/// Where a task's progress goes instead of `notifications/progress`: put in the tool
/// call's request extensions, read by the progress reporter.
#[derive(Debug, Clone, Default)]
pub struct TaskProgress(Arc<Mutex<Option<String>>>);

impl TaskProgress {
    /// Replaces the status message.
    pub fn set(&self, message: impl Into<String>) {
        *lock(&self.0) = Some(clip(&message.into()));
    }

    fn get(&self) -> Option<String> {
        lock(&self.0).clone()
    }
}

/// A task this process runs (or ran).
#[derive(Debug)]
struct Entry {
    record: Record,
    ct: CancellationToken,
    progress: TaskProgress,
    started: Instant,
    /// Set when it ended, with the full result.
    done: Option<(Outcome, Instant)>,
}

/// What the runner of a new task needs.
#[derive(Debug)]
pub struct Started {
    pub id: Uuid,
    /// The seed state for the `CreateTaskResult`.
    pub task: Task,
    /// The task's own cancellation, fired by `tasks/cancel`.
    pub ct: CancellationToken,
    pub progress: TaskProgress,
}

/// Why no task was made.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error(
        "{MAX_RUNNING} tasks are running in this server already; wait for one to end or cancel one with tasks/cancel"
    )]
    Busy,
    #[error("cannot write the task's record")]
    Record(#[source] std::io::Error),
}

/// The task table of one server process.
#[derive(Debug)]
pub struct Tasks {
    dir: PathBuf,
    me: Option<ProcIdentity>,
    live: Mutex<HashMap<Uuid, Entry>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The error for an id that names no task: the id quoted (clipped) and what ids look
/// like.
fn unknown(raw: &str) -> McpError {
    McpError::invalid_params(
        format!(
            "taskId: no task {} is known to this server (expired after {} s, or never made); task ids are the \
             taskId of a CreateTaskResult this server returned",
            quote(raw),
            TTL.as_secs()
        ),
        None,
    )
}

/// Parses a client's task id: one of ours is a canonical lowercase UUID.
fn parse_id(raw: &str) -> Result<Uuid, McpError> {
    if raw.len() != 36 {
        return Err(unknown(raw));
    }
    match Uuid::parse_str(raw) {
        Ok(id) if id.hyphenated().to_string() == raw => Ok(id),
        _ => Err(unknown(raw)),
    }
}

impl Tasks {
    /// The table for a server over `state_dir`; records go to `<state_dir>/tasks/`.
    #[must_use]
    pub fn new(state_dir: &Path) -> Self {
        let me = i32::try_from(std::process::id()).ok().and_then(ProcIdentity::capture);
        Self { dir: state_dir.join(TASKS_DIR), me, live: Mutex::new(HashMap::new()) }
    }

    fn path(&self, id: Uuid) -> PathBuf {
        self.dir.join(format!("{}.json", id.hyphenated()))
    }

    /// Atomic for readers, not fsynced: a record must outlive the server process, and
    /// a power loss ends the calls it describes anyway (as with VM status files).
    fn write(&self, id: Uuid, record: &Record) -> std::io::Result<()> {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&self.dir)?;
        fsutil::write_json_volatile(&self.path(id), record)
    }

    fn read(&self, id: Uuid) -> Result<Option<Record>, McpError> {
        match std::fs::read(self.path(id)) {
            Ok(data) => serde_json::from_slice(&data).map(Some).map_err(|e| {
                McpError::internal_error(format!("task record {} is damaged: {e}", self.path(id).display()), None)
            }),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => {
                Err(McpError::internal_error(format!("cannot read task record {}: {e}", self.path(id).display()), None))
            }
        }
    }

    /// Starts a task for `tool` on `vm`: writes its record and enters it in the table.
    ///
    /// # Errors
    /// [`MAX_RUNNING`] tasks run already; the record could not be written.
    pub fn create(&self, tool: &str, vm: &str) -> Result<Started, CreateError> {
        if lock(&self.live).values().filter(|e| e.done.is_none()).count() >= MAX_RUNNING {
            return Err(CreateError::Busy);
        }
        self.sweep();
        let id = Uuid::new_v4();
        let now = current_timestamp();
        let record = Record {
            task_id: id.hyphenated().to_string(),
            tool: tool.to_owned(),
            vm: vm.to_owned(),
            created_at: now.clone(),
            last_updated_at: now,
            owner: self.me.clone(),
            status_message: None,
            outcome: None,
        };
        self.write(id, &record).map_err(CreateError::Record)?;
        let progress = TaskProgress::default();
        progress.set(format!("{tool} on VM {vm:?} started"));
        let ct = CancellationToken::new();
        let task = record.task(TaskStatus::Working, progress.get());
        let entry = Entry { record, ct: ct.clone(), progress: progress.clone(), started: Instant::now(), done: None };
        lock(&self.live).insert(id, entry);
        Ok(Started { id, task, ct, progress })
    }

    /// Records how task `id` ended; `message` becomes its final status message.
    pub fn finish(&self, id: Uuid, outcome: Outcome, message: Option<String>) {
        let record = {
            let mut live = lock(&self.live);
            let Some(entry) = live.get_mut(&id) else { return };
            entry.record.last_updated_at = current_timestamp();
            entry.record.status_message = message.map(|m| clip(&m));
            entry.record.outcome = Some(outcome.for_record());
            entry.done = Some((outcome, Instant::now()));
            entry.record.clone()
        };
        if let Err(e) = self.write(id, &record) {
            tracing::warn!(task = %id, "cannot write the task's record: {e}");
        }
    }

    /// `tasks/get`: the task's state. `vm_state` says what a VM is now, for a task whose
    /// server process ended before it finished.
    ///
    /// # Errors
    /// An id that names no task (invalid params); a damaged record.
    pub fn get(&self, raw: &str, vm_state: &dyn Fn(&str) -> String) -> Result<DetailedTask, McpError> {
        let id = parse_id(raw)?;
        if let Some(entry) = lock(&self.live).get(&id) {
            return Ok(match &entry.done {
                Some((outcome, _)) => entry.record.detailed(outcome, entry.record.status_message.clone()),
                None => {
                    let secs = entry.started.elapsed().as_secs();
                    let mut message = entry.progress.get().unwrap_or_default();
                    if entry.ct.is_cancelled() {
                        message = format!("cancelling; {message}");
                    }
                    let message = format!("{message} ({secs} s since the call)");
                    DetailedTask::new(entry.record.task(TaskStatus::Working, Some(message)), TaskPayload::Working)
                }
            });
        }
        let record = self.read(id)?.ok_or_else(|| unknown(raw))?;
        if let Some(outcome) = &record.outcome {
            return Ok(record.detailed(outcome, record.status_message.clone()));
        }
        if let Some(owner) = record.owner.as_ref().filter(|o| Some(*o) != self.me.as_ref() && o.is_alive()) {
            let message = format!(
                "{} on VM {:?} runs in another server process (pid {}); its progress shows through that process",
                record.tool, record.vm, owner.pid
            );
            return Ok(DetailedTask::new(record.task(TaskStatus::Working, Some(message)), TaskPayload::Working));
        }
        let message = format!(
            "outcome unknown: the server process that ran {} on VM {:?} ended before the call finished; {}",
            record.tool,
            record.vm,
            vm_state(&record.vm)
        );
        let error = object(&McpError::internal_error(message.clone(), None));
        Ok(record.detailed(&Outcome::Failed { error }, Some(message)))
    }

    /// `tasks/cancel`: fires the task's cancellation. A task that already ended is
    /// acknowledged and left as it is.
    ///
    /// # Errors
    /// An id that names no task; a task another live server process runs.
    pub fn cancel(&self, raw: &str) -> Result<(), McpError> {
        let id = parse_id(raw)?;
        if let Some(entry) = lock(&self.live).get(&id) {
            entry.ct.cancel();
            return Ok(());
        }
        let record = self.read(id)?.ok_or_else(|| unknown(raw))?;
        match record.owner.filter(|o| Some(o) != self.me.as_ref() && o.is_alive()) {
            Some(owner) if record.outcome.is_none() => Err(McpError::new(
                ErrorCode::INVALID_REQUEST,
                format!(
                    "task {raw} runs in another server process (pid {}); cancel it through a session of that process",
                    owner.pid
                ),
                None,
            )),
            _ => Ok(()),
        }
    }

    /// `tasks/update`: no task here ever asks for input, so there is nothing to deliver.
    ///
    /// # Errors
    /// An id that names no task.
    pub fn update(&self, raw: &str) -> Result<(), McpError> {
        let id = parse_id(raw)?;
        if lock(&self.live).contains_key(&id) || self.read(id)?.is_some() { Ok(()) } else { Err(unknown(raw)) }
    }

    /// Tasks that ran more than [`TTL`] ago leave the table; records unchanged for
    /// [`TTL`] are deleted, and the oldest beyond [`KEEP`].
    fn sweep(&self) {
        let running: Vec<Uuid> = {
            let mut live = lock(&self.live);
            live.retain(|_, e| e.done.as_ref().is_none_or(|(_, at)| at.elapsed() < TTL));
            live.iter().filter(|(_, e)| e.done.is_none()).map(|(id, _)| *id).collect()
        };
        let Ok(dir) = std::fs::read_dir(&self.dir) else { return };
        let now = SystemTime::now();
        let mut kept: Vec<(SystemTime, PathBuf)> = Vec::new();
        for entry in dir.flatten() {
            let name = entry.file_name();
            let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".json")).and_then(|n| parse_id(n).ok()) else {
                continue;
            };
            if running.contains(&id) {
                continue;
            }
            let Ok(modified) = entry.metadata().and_then(|m| m.modified()) else { continue };
            if now.duration_since(modified).is_ok_and(|age| age > TTL) {
                let _ = std::fs::remove_file(entry.path());
            } else {
                kept.push((modified, entry.path()));
            }
        }
        if kept.len() >= KEEP {
            kept.sort();
            for (_, path) in &kept[..=kept.len() - KEEP] {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_long_calls_with_a_valid_vm_become_tasks() {
        let args = |v: Value| v.as_object().cloned();
        let long = |tool: &str, v: Value| long_call(tool, args(v).as_ref(), "dflt");
        assert_eq!(long("start_vm", serde_json::json!({"name": "a"})), Some("a".into()));
        assert_eq!(long("get_vm", serde_json::json!({"name": "a"})), None);
        assert_eq!(long("create_vm", serde_json::json!({"name": "a"})), None);
        assert_eq!(long("create_vm", serde_json::json!({"start": true})), Some("dflt".into()));
        assert_eq!(long("clone_vm", serde_json::json!({"source": "a", "name": "b"})), None);
        assert_eq!(long("clone_vm", serde_json::json!({"source": "a", "name": "b", "full": true})), Some("b".into()));
        assert_eq!(long("get_vm_ip", serde_json::json!({"name": "a"})), None);
        assert_eq!(long("get_vm_ip", serde_json::json!({"name": "a", "wait_s": 0})), None);
        assert_eq!(long("get_vm_ip", serde_json::json!({"name": "a", "wait_s": 5})), Some("a".into()));
        assert_eq!(long("start_vm", serde_json::json!({"name": "../x"})), None);
        assert_eq!(long("start_vm", serde_json::json!({"name": 3})), None);
        assert_eq!(long("start_vm", serde_json::json!({})), None);
    }

    #[test]
    fn ids_must_be_canonical_uuids() {
        let id = Uuid::new_v4();
        assert_eq!(parse_id(&id.hyphenated().to_string()).ok(), Some(id));
        for bad in [
            "../../etc/passwd".to_owned(),
            id.hyphenated().to_string().to_uppercase(),
            id.simple().to_string(),
            format!("{{{id}}}"),
            id.urn().to_string(),
            "x".repeat(10_000),
        ] {
            let e = parse_id(&bad).expect_err(&bad);
            assert!(e.message.contains("taskId"), "{}", e.message);
            assert!(e.message.len() < 600, "{}", e.message.len());
        }
    }

    #[test]
    fn a_large_result_is_kept_whole_in_memory_and_summarised_on_disk() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tasks = Tasks::new(dir.path());
        let s = tasks.create("guest_exec", "a").expect("create");
        let mut big = CallToolResult::success(vec![ContentBlock::text("ran \"cat\": exit 0")]);
        big.structured_content = Some(serde_json::json!({ "stdout": "x".repeat(RECORD_RESULT_MAX) }));
        tasks.finish(s.id, Outcome::completed(&big), Some("ran".into()));
        let id = s.id.hyphenated().to_string();
        let no_vm = |_: &str| String::new();
        let TaskPayload::Completed { result } = tasks.get(&id, &no_vm).expect("get").payload else { panic!() };
        assert_eq!(result, object(&big));
        let size = std::fs::metadata(tasks.path(s.id)).expect("record").len();
        assert!(size < 4096, "record of {size} bytes");
        // Another process over the same state directory reads the record.
        let later = Tasks::new(dir.path());
        let task = later.get(&id, &no_vm).expect("get");
        assert_eq!(task.task.status_message.as_deref(), Some("ran"));
        let TaskPayload::Completed { result } = task.payload else { panic!("{task:?}") };
        let r: CallToolResult = serde_json::from_value(Value::Object(result)).expect("result");
        let text = text_of(&r);
        assert!(text.starts_with("ran \"cat\": exit 0 (the full result,") && text.contains("too large"), "{text}");
        assert_eq!((r.is_error, r.structured_content), (Some(false), None));
    }

    #[test]
    fn records_expire_and_are_bounded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tasks = Tasks::new(dir.path());
        let first = tasks.create("start_vm", "a").expect("create");
        tasks.finish(first.id, Outcome::Cancelled, Some("stopped waiting".into()));
        let old = SystemTime::now() - TTL - Duration::from_secs(5);
        let f = std::fs::File::options().write(true).open(tasks.path(first.id)).expect("open");
        f.set_modified(old).expect("set mtime");
        // An unrelated file is left alone.
        std::fs::write(tasks.dir.join("notes.txt"), "x").expect("write");
        lock(&tasks.live).clear();
        for _ in 0..KEEP + 3 {
            let s = tasks.create("start_vm", "a").expect("create");
            tasks.finish(s.id, Outcome::Cancelled, None);
        }
        assert!(!tasks.path(first.id).exists(), "an expired record is deleted");
        let records = std::fs::read_dir(&tasks.dir).expect("dir").flatten().count();
        assert!(records <= KEEP + 1, "{records} files");
        assert!(tasks.dir.join("notes.txt").exists());
    }
}
