//! The one owner of a VM's on-disk records. Every read and write of `spec.json`,
//! `status.json`, `events.jsonl`, the create and stop markers, the list of files kvm-mcp
//! wrote for the VM, and the small per-run records (`vnc.json`) goes through here, with
//! one policy for a file that is missing or damaged ([`Record`]), and the one liveness
//! check every front end and supervisor uses ([`observe`]).
//!
//! Policy: a missing `spec.json` means the VM does not exist (or, inside an existing
//! directory, that its create did not finish); a damaged one makes the VM *incomplete*
//! (listed, deletable, never started) with the reason, never "not found". A missing
//! `status.json` means "defined, never started"; a damaged one is read as that too, with
//! the damage in the status detail, until the supervisor writes the next transition.
//! Records are read with a size cap, so a stray huge file cannot exhaust memory.
//!
//! Mutations of one VM are serialised by a lock file under `<state_dir>/locks/`, outside
//! the VM's directory, so a delete that removes the directory never pulls the lock from
//! under a create or start of the same name.
//!
//! A serving process keeps a [`Cache`]: each VM's definition and status, re-read only
//! when its file changed. An inotify watch on each VM directory read so far says what
//! changed; each read first takes the events queued since the last one, so a write that
//! finished before a read (by any process) is always seen, and a list of 50 VMs makes no
//! `stat` and no file read when nothing changed. Where inotify is unavailable or its
//! watch limit is reached, records are read from disk.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use dashmap::DashMap;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::fsutil;
use crate::ids::VmName;
use crate::layout::{VMS_DIR, VmPaths};
use crate::lock::{self, FileLock};
use crate::procid::{Liveness, ProcIdentity};
use crate::spec::{Media, VmSpec};
use crate::state::{EventRecord, Reason, Status, VmState, now_ms};

/// Largest record file read: specs and statuses are a few KiB.
pub const MAX_RECORD_BYTES: u64 = 4 << 20;

/// Lines of QEMU's log kept in the status after a crash.
pub const LOG_TAIL_LINES: usize = 15;

/// A record file as found on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record<T> {
    /// No such file.
    Missing,
    /// The file exists but cannot be read or parsed; the reason says why.
    Damaged(String),
    /// The parsed record.
    Present(T),
}

impl<T> Record<T> {
    /// The record when present.
    pub fn present(self) -> Option<T> {
        match self {
            Record::Present(t) => Some(t),
            Record::Missing | Record::Damaged(_) => None,
        }
    }
}

/// Reads and parses a JSON record (at most [`MAX_RECORD_BYTES`]).
#[must_use]
pub fn read_record<T: DeserializeOwned>(path: &Path) -> Record<T> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Record::Missing,
        Err(e) => return Record::Damaged(format!("cannot open {}: {e}", path.display())),
    };
    let mut bytes = Vec::new();
    if let Err(e) = file.take(MAX_RECORD_BYTES + 1).read_to_end(&mut bytes) {
        return Record::Damaged(format!("cannot read {}: {e}", path.display()));
    }
    if bytes.len() as u64 > MAX_RECORD_BYTES {
        return Record::Damaged(format!("{} is larger than {MAX_RECORD_BYTES} bytes", path.display()));
    }
    parse_record(path, &bytes)
}

/// Parses the bytes of the JSON record read from `path` (named in the reason when it
/// does not parse).
#[must_use]
pub fn parse_record<T: DeserializeOwned>(path: &Path, bytes: &[u8]) -> Record<T> {
    match serde_json::from_slice(bytes) {
        Ok(t) => Record::Present(t),
        Err(e) => Record::Damaged(format!("{} does not parse: {e}", path.display())),
    }
}

/// Writes a record atomically and durably (definitions).
///
/// # Errors
/// Any I/O error; nothing half-written is left.
pub fn write_record<T: Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    fsutil::write_json_atomic(path, value)
}

/// Writes a record atomically for readers, without waiting for the disk (run-time
/// records rewritten often, such as `status.json`).
///
/// # Errors
/// Any I/O error; nothing half-written is left.
pub fn write_record_volatile<T: Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    fsutil::write_json_volatile(path, value)
}

/// A VM's definition.
#[must_use]
pub fn read_spec(paths: &VmPaths) -> Record<VmSpec> {
    read_record(&paths.spec())
}

/// Writes a VM's definition (durably) and the list of files kvm-mcp owns for it, so a
/// delete finds them even if the definition is damaged later.
///
/// # Errors
/// Any I/O error.
pub fn write_spec(paths: &VmPaths, spec: &VmSpec) -> std::io::Result<()> {
    write_record(&paths.spec(), spec)?;
    let owned: Vec<PathBuf> = owned_disks(spec, paths);
    write_owned(paths, &owned)
}

/// The files outside the state directory that kvm-mcp wrote for `spec` (overlays,
/// blank disks, clones).
#[must_use]
pub fn owned_disks(spec: &VmSpec, paths: &VmPaths) -> Vec<PathBuf> {
    spec.disks
        .iter()
        .filter(|d| d.owned && d.media == Media::Disk && !d.path.starts_with(&paths.state))
        .map(|d| d.path.clone())
        .collect()
}

fn write_owned(paths: &VmPaths, files: &[PathBuf]) -> std::io::Result<()> {
    write_record(&paths.owned(), &files)
}

/// The files kvm-mcp wrote (or was about to write) for this VM outside its state
/// directory, as last recorded: by its definition, or by a create that did not finish.
#[must_use]
pub fn recorded_owned(paths: &VmPaths) -> Vec<PathBuf> {
    read_record::<Vec<PathBuf>>(&paths.owned()).present().unwrap_or_default()
}

/// `status.json`; `created_at_s` fills in a missing or damaged one.
#[must_use]
pub fn read_status(paths: &VmPaths, created_at_s: u64) -> Status {
    match read_record::<Status>(&paths.status()) {
        Record::Present(s) => s,
        Record::Missing => Status::created(created_at_s * 1000),
        Record::Damaged(why) => {
            tracing::warn!(path = %paths.status().display(), %why, "damaged status record");
            let mut s = Status::created(created_at_s * 1000);
            s.detail = Some(format!("status record damaged ({why}); the supervisor rewrites it at the next change"));
            s
        }
    }
}

/// The raw `status.json`, for a supervisor taking over (no fill-in).
#[must_use]
pub fn read_status_record(paths: &VmPaths) -> Record<Status> {
    read_record(&paths.status())
}

/// Writes `status.json`.
///
/// # Errors
/// Any I/O error.
pub fn write_status(paths: &VmPaths, status: &Status) -> std::io::Result<()> {
    write_record_volatile(&paths.status(), status)
}

/// Appends one transition to `events.jsonl`.
///
/// # Errors
/// Any I/O error.
pub fn append_event(paths: &VmPaths, event: &EventRecord) -> std::io::Result<()> {
    let line = serde_json::to_string(event).map_err(std::io::Error::other)?;
    fsutil::append_line(&paths.events(), &line)
}

// ---------- create marker ----------

/// Marks a create under way and records the files it is about to write, before it
/// writes them, so an interrupted create is incomplete and `delete` finds its files.
///
/// # Errors
/// Any I/O error.
pub fn begin_create(paths: &VmPaths, files: &[PathBuf]) -> std::io::Result<()> {
    write_owned(paths, files)?;
    fsutil::write_atomic(&paths.creating(), b"")
}

/// Ends a create: the definition is complete.
///
/// # Errors
/// Any I/O error.
pub fn finish_create(paths: &VmPaths) -> std::io::Result<()> {
    std::fs::remove_file(paths.creating())
}

/// Whether a create of this VM did not finish.
#[must_use]
pub fn is_creating(paths: &VmPaths) -> bool {
    paths.creating().exists()
}

/// Gives the VM a saved state to resume from on its next run: a hard link to `state`
/// (a fork's copies share one file).
///
/// # Errors
/// The link cannot be made.
pub fn put_incoming(paths: &VmPaths, state: &Path) -> std::io::Result<()> {
    std::fs::hard_link(state, paths.incoming())
}

/// The saved state the next run resumes from, if any: opened never through a symlink,
/// and only a regular file. [`drop_incoming`] once QEMU has it, so a later restart boots.
///
/// # Errors
/// The file is there but cannot be opened or is not a regular file.
pub fn open_incoming(paths: &VmPaths) -> std::io::Result<Option<std::fs::File>> {
    use std::os::unix::fs::OpenOptionsExt;
    let p = paths.incoming();
    let f = match std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC).open(&p) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if !f.metadata()?.file_type().is_file() {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "the saved state is not a regular file"));
    }
    Ok(Some(f))
}

/// Removes a fork's saved state from the original's directory (the copies hold links).
pub fn remove_fork_state(path: &Path) {
    if let Err(e) = std::fs::remove_file(path) {
        tracing::warn!(path = %path.display(), error = %e, "cannot remove a fork's saved state");
    }
}

/// Forgets the saved state (the run that resumes from it has it open).
pub fn drop_incoming(paths: &VmPaths) {
    match std::fs::remove_file(paths.incoming()) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            tracing::warn!(error = %e, "cannot remove the saved state");
        }
        _ => {}
    }
}

/// Whether a warm pool's member is marked ready to claim.
#[must_use]
pub fn is_pool_ready(paths: &VmPaths) -> bool {
    paths.pool_ready().exists()
}

/// Marks a pool member ready to claim, or not. A mark that cannot be written leaves
/// the member unclaimable (the owner replaces it), never claimable twice.
pub fn set_pool_ready(paths: &VmPaths, ready: bool) {
    let r = if ready {
        fsutil::write_atomic(&paths.pool_ready(), b"")
    } else {
        match std::fs::remove_file(paths.pool_ready()) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            r => r,
        }
    };
    if let Err(e) = r {
        tracing::warn!(path = %paths.pool_ready().display(), error = %e, "cannot change a pool member's ready mark");
    }
}

// ---------- stop intent ----------

/// "Stop, do not restart": written by a front end before it stops a VM, read by the
/// supervisor when QEMU ends. It names the QEMU it is about and the process that wrote
/// it, so it cannot outlive the stop that wrote it: it counts only for that QEMU, and
/// only while its writer lives or once QEMU has seen a stop request (a power button
/// press or a `quit`) after it was written.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StopIntent {
    /// The front end that asked.
    pub writer: Option<ProcIdentity>,
    /// The QEMU to stop (`None`: the VM was between runs).
    pub qemu: Option<ProcIdentity>,
    /// Unix ms when it was written.
    pub at_ms: u64,
    /// A forced stop (QMP quit and signals, no power button), asked for or reached
    /// when a graceful one ran out of time.
    #[serde(default)]
    pub forced: bool,
    /// Why it was forced, as the VM's status will say it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forced_why: Option<String>,
}

/// Records a stop request for the QEMU `qemu`; `forced` says why the stop is (now)
/// forced, `None` while it is graceful. Written again when a graceful stop turns
/// forced.
///
/// # Errors
/// Any I/O error.
pub fn request_stop(paths: &VmPaths, qemu: Option<&ProcIdentity>, forced: Option<&str>) -> std::io::Result<()> {
    std::fs::create_dir_all(&paths.run)?;
    let intent = StopIntent {
        writer: ProcIdentity::capture(std::process::id().cast_signed()),
        qemu: qemu.cloned(),
        at_ms: now_ms(),
        forced: forced.is_some(),
        forced_why: forced.map(str::to_owned),
    };
    write_record_volatile(&paths.stop_intent(), &intent)
}

/// The stop request on file, if any.
#[must_use]
pub fn stop_intent(paths: &VmPaths) -> Option<StopIntent> {
    read_record(&paths.stop_intent()).present()
}

/// Removes the stop request.
pub fn clear_stop(paths: &VmPaths) {
    let _ = std::fs::remove_file(paths.stop_intent());
}

impl StopIntent {
    /// Whether this request applies to the run of `qemu` that ended: it names that QEMU
    /// (or none, for a request made between runs), and either its writer still lives or
    /// QEMU was asked to stop after it was written (`stop_seen`).
    #[must_use]
    pub fn applies(&self, qemu: Option<&ProcIdentity>, stop_seen: bool) -> bool {
        let same_run = match (&self.qemu, qemu) {
            (Some(a), Some(b)) => a.pid == b.pid && a.starttime == b.starttime,
            (None, _) => true,
            (Some(_), None) => false,
        };
        let writer_alive = self.writer.as_ref().is_some_and(ProcIdentity::is_alive);
        same_run && (writer_alive || stop_seen)
    }
}

// ---------- loading and liveness ----------

/// A defined VM, loaded.
#[derive(Debug, Clone)]
pub struct Vm {
    pub spec: VmSpec,
    pub paths: VmPaths,
}

/// What is on disk under a VM's name.
#[derive(Debug, Clone)]
pub enum Loaded {
    /// Nothing.
    Absent,
    /// A directory whose definition is missing (an interrupted create) or damaged.
    Incomplete { paths: VmPaths, reason: String },
    /// A complete definition.
    Defined(Box<Vm>),
}

/// Status as observed now: the file, corrected by what `/proc` and the locks say.
#[derive(Debug, Clone)]
pub struct Observed {
    pub status: Status,
    /// QEMU runs but no supervisor holds its lock.
    pub unsupervised: bool,
}

/// Whether the recorded QEMU is this VM's and alive.
#[must_use]
pub fn qemu_liveness(status: &Status, spec: &VmSpec) -> Liveness {
    status.qemu.as_ref().map_or(Liveness::Dead, |q| q.check(&spec.uuid.to_string()))
}

impl Observed {
    /// Seconds since QEMU started, while it runs.
    #[must_use]
    pub fn uptime_s(&self) -> Option<u64> {
        let s = &self.status;
        s.started_at_ms.filter(|_| s.state.is_active()).map(|t| now_ms().saturating_sub(t) / 1000)
    }

    /// QEMU's pid, while it runs.
    #[must_use]
    pub fn pid(&self) -> Option<i32> {
        self.status.qemu.as_ref().filter(|_| self.status.state.is_active()).map(|q| q.pid)
    }

    /// Seconds QEMU's monitor has not answered the supervisor, while it runs.
    #[must_use]
    pub fn unresponsive_s(&self) -> Option<u64> {
        let s = &self.status;
        s.unresponsive_since_ms.filter(|_| s.state.is_active()).map(|t| now_ms().saturating_sub(t) / 1000)
    }
}

/// [`Vm::observe_status`] for a definition and its paths.
fn observe_parts(spec: &VmSpec, paths: &VmPaths, mut status: Status) -> Observed {
    let mut unsupervised = false;
    if status.state.is_active() {
        let sup_alive = lock::is_held(&paths.supervisor_lock());
        match qemu_liveness(&status, spec) {
            Liveness::Alive => unsupervised = !sup_alive,
            Liveness::Dead | Liveness::Reused if !sup_alive => {
                status.state = VmState::Crashed;
                status.reason = Reason::Unsupervised;
                status.detail = Some("QEMU exited while no supervisor was watching it".into());
                status.qemu = None;
                status.log_tail = fsutil::tail_lines(&paths.qemu_log(), LOG_TAIL_LINES);
            }
            _ => {}
        }
    }
    Observed { status, unsupervised }
}

impl Vm {
    /// The status file corrected by liveness: an active VM whose QEMU and supervisor
    /// are both gone is crashed; a live QEMU without a supervisor is unsupervised.
    #[must_use]
    pub fn observe(&self) -> Observed {
        self.observe_status(read_status(&self.paths, self.spec.created_at))
    }

    /// [`Vm::observe`] with the status record already read.
    #[must_use]
    pub fn observe_status(&self, status: Status) -> Observed {
        observe_parts(&self.spec, &self.paths, status)
    }

    /// Whether the VM runs now: its status is active and its supervisor or its QEMU
    /// is alive.
    #[must_use]
    pub fn is_active(&self) -> bool {
        self.observe().status.state.is_active()
    }

    /// Writes the definition back (after a change).
    ///
    /// # Errors
    /// Any I/O error.
    pub fn save(&self) -> std::io::Result<()> {
        write_spec(&self.paths, &self.spec)
    }
}

/// What is on disk under a VM's directory, read now.
fn load_from_disk(paths: VmPaths) -> Loaded {
    if !paths.state.is_dir() {
        return Loaded::Absent;
    }
    if is_creating(&paths) {
        return Loaded::Incomplete { paths, reason: "its create did not finish".into() };
    }
    match read_spec(&paths) {
        Record::Present(spec) => Loaded::Defined(Box::new(Vm { spec, paths })),
        Record::Missing => Loaded::Incomplete { paths, reason: "it has no definition (spec.json)".into() },
        Record::Damaged(why) => Loaded::Incomplete { paths, reason: format!("its definition is damaged: {why}") },
    }
}

/// The state and run directories, and what lies under them.
#[derive(Debug, Clone)]
pub struct Store {
    state_dir: PathBuf,
    run_dir: PathBuf,
    cache: Option<Arc<Cache>>,
}

impl Store {
    /// The store under these roots, reading every record from disk.
    #[must_use]
    pub fn new(state_dir: &Path, run_dir: &Path) -> Self {
        Self { state_dir: state_dir.to_owned(), run_dir: run_dir.to_owned(), cache: None }
    }

    /// The same store, remembering records in `cache` between calls.
    #[must_use]
    pub fn with_cache(mut self, cache: Arc<Cache>) -> Self {
        self.cache = Some(cache);
        self
    }

    /// The status of `vm` corrected by liveness ([`Vm::observe`]), its file read from the
    /// cache when unchanged.
    #[must_use]
    pub fn observe(&self, vm: &Vm) -> Observed {
        match &self.cache {
            Some(c) => vm.observe_status(c.status(&vm.paths, vm.spec.created_at, true)),
            None => vm.observe(),
        }
    }

    /// Where `name`'s files live.
    #[must_use]
    pub fn paths(&self, name: &VmName) -> VmPaths {
        VmPaths::new(&self.state_dir, &self.run_dir, name)
    }

    /// The lock the owner of `template`'s warm pool holds for its whole life.
    #[must_use]
    pub fn pool_lock(&self, template: &VmName) -> PathBuf {
        self.run_dir.join(crate::layout::POOLS_DIR).join(template.as_str()).join("owner.lock")
    }

    /// The log of `template`'s pool owner.
    #[must_use]
    pub fn pool_log(&self, template: &VmName) -> PathBuf {
        self.run_dir.join(crate::layout::POOLS_DIR).join(template.as_str()).join("owner.log")
    }

    /// The run directory (sockets, pid files, per-host allocations).
    #[must_use]
    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// Names with a directory in the state directory, sorted.
    ///
    /// # Errors
    /// The state directory exists but cannot be read.
    pub fn names(&self) -> std::io::Result<Vec<VmName>> {
        let dir = self.state_dir.join(VMS_DIR);
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut names: Vec<VmName> = rd
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| e.file_name().into_string().ok())
            .filter_map(|n| VmName::new(&n).ok())
            .collect();
        names.sort();
        Ok(names)
    }

    /// What is on disk under `name`.
    #[must_use]
    pub fn load(&self, name: &VmName) -> Loaded {
        match &self.cache {
            Some(c) => c.load(self.paths(name), true),
            None => load_from_disk(self.paths(name)),
        }
    }

    /// `f` of every VM with a directory, sorted by name: its definition and observed
    /// status, or `None` when it is incomplete. What [`Store::names`], [`Store::load`]
    /// and [`Store::observe`] give one by one, with the cache brought up to date once
    /// for all of them and the cached definitions lent, not copied.
    ///
    /// # Errors
    /// The state directory exists but cannot be read.
    pub fn survey<T>(&self, mut f: impl FnMut(&VmName, Option<(&VmSpec, Observed)>) -> T) -> std::io::Result<Vec<T>> {
        let names = self.names()?;
        let Some(cache) = &self.cache else {
            return Ok(names
                .iter()
                .map(|name| match load_from_disk(self.paths(name)) {
                    Loaded::Defined(vm) => f(name, Some((&vm.spec, vm.observe()))),
                    Loaded::Absent | Loaded::Incomplete { .. } => f(name, None),
                })
                .collect());
        };
        cache.sync();
        Ok(names
            .iter()
            .map(|name| {
                let paths = self.paths(name);
                cache.with_spec(&paths, |spec| {
                    let observed = spec.map(|s| observe_parts(s, &paths, cache.status(&paths, s.created_at, false)));
                    f(name, spec.zip(observed))
                })
            })
            .collect())
    }

    /// Whether `name` has a complete definition, without parsing it (cheap enough to
    /// poll).
    #[must_use]
    pub fn is_defined(&self, name: &VmName) -> bool {
        let paths = self.paths(name);
        paths.spec().is_file() && !is_creating(&paths)
    }

    /// Every complete definition.
    #[must_use]
    pub fn defined(&self) -> Vec<Vm> {
        self.names()
            .unwrap_or_default()
            .iter()
            .filter_map(|n| match self.load(n) {
                Loaded::Defined(vm) => Some(*vm),
                Loaded::Absent | Loaded::Incomplete { .. } => None,
            })
            .collect()
    }

    /// Takes `name`'s mutation lock, waiting up to `timeout`; `Ok(None)` on timeout.
    ///
    /// # Errors
    /// The lock file cannot be created.
    pub async fn lock(&self, name: &VmName, timeout: Duration) -> std::io::Result<Option<FileLock>> {
        let path = self.paths(name).lock();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        FileLock::acquire(&path, timeout).await
    }
}

/// The changes to a VM directory that can change what [`Cache`] holds for it: its
/// records are replaced by rename (`write_json_atomic`, `write_json_volatile`) or, by
/// hand, written and closed; the create marker comes and goes; the directory itself is
/// removed or moved away. Writes to open files (logs, disks) raise none of these.
const WATCH_MASK: AddWatchFlags = AddWatchFlags::IN_CLOSE_WRITE
    .union(AddWatchFlags::IN_MOVED_TO)
    .union(AddWatchFlags::IN_MOVED_FROM)
    .union(AddWatchFlags::IN_CREATE)
    .union(AddWatchFlags::IN_DELETE)
    .union(AddWatchFlags::IN_DELETE_SELF)
    .union(AddWatchFlags::IN_MOVE_SELF)
    .union(AddWatchFlags::IN_ONLYDIR);

/// The files in a VM directory whose change makes a cached record stale.
const WATCHED_FILES: [&str; 3] = ["spec.json", "status.json", "creating"];

/// The VM directories watched, and the generation of each: a number that changes
/// whenever something in [`WATCHED_FILES`] may have changed.
///
/// Directories are keyed by their path's bytes (`OsString`): hashing a `Path` splits it
/// into components first, which was most of a cached lookup's cost.
#[derive(Debug, Default)]
struct Watched {
    by_wd: HashMap<WatchDescriptor, OsString>,
    dirs: HashMap<OsString, (WatchDescriptor, u64)>,
    next_gen: u64,
}

impl Watched {
    fn bump(&mut self) -> u64 {
        self.next_gen += 1;
        self.next_gen
    }

    fn forget(&mut self, wd: WatchDescriptor) -> Option<OsString> {
        let dir = self.by_wd.remove(&wd)?;
        self.dirs.remove(&dir);
        Some(dir)
    }
}

/// An inotify instance over the VM directories read so far.
#[derive(Debug)]
struct Watcher {
    inotify: Inotify,
    watched: Mutex<Watched>,
}

/// A serving process's memory of every VM's definition and status (see the module
/// documentation). Guards never leave its methods, so nothing holds a lock across an
/// `.await`.
#[derive(Debug, Default)]
pub struct Cache {
    /// Started on first use; `None` where inotify is unavailable (no caching then).
    watcher: OnceLock<Option<Watcher>>,
    specs: DashMap<OsString, (u64, VmSpec)>,
    statuses: DashMap<OsString, (u64, Status)>,
}

impl Cache {
    fn watcher(&self) -> Option<&Watcher> {
        self.watcher
            .get_or_init(|| match Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC) {
                Ok(inotify) => Some(Watcher { inotify, watched: Mutex::new(Watched::default()) }),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch the VM directories; every record is read from disk");
                    None
                }
            })
            .as_ref()
    }

    /// Applies every change reported so far. A write finished before this call is
    /// seen by it: the kernel queues the event inside the writer's `rename` or `close`.
    fn sync(&self) {
        let Some(w) = self.watcher() else { return };
        let mut gone = Vec::new();
        {
            let mut st = w.watched.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            while let Ok(events) = w.inotify.read_events() {
                for ev in events {
                    if ev.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
                        // Events were lost: nothing cached can be trusted.
                        let all: Vec<_> = st.by_wd.keys().copied().collect();
                        for wd in all {
                            let _ = w.inotify.rm_watch(wd);
                            gone.extend(st.forget(wd));
                        }
                        continue;
                    }
                    let ends = AddWatchFlags::IN_IGNORED | AddWatchFlags::IN_DELETE_SELF | AddWatchFlags::IN_MOVE_SELF;
                    if ev.mask.intersects(ends) {
                        // Moved away, the watch would follow the directory elsewhere.
                        if ev.mask.contains(AddWatchFlags::IN_MOVE_SELF) {
                            let _ = w.inotify.rm_watch(ev.wd);
                        }
                        gone.extend(st.forget(ev.wd));
                    } else if ev.name.as_deref().is_none_or(|n| WATCHED_FILES.iter().any(|f| n == *f))
                        && let Some(dir) = st.by_wd.get(&ev.wd).cloned()
                    {
                        let g = st.bump();
                        if let Some(entry) = st.dirs.get_mut(&dir) {
                            entry.1 = g;
                        }
                    }
                }
            }
        }
        for dir in gone {
            self.specs.remove(&dir);
            self.statuses.remove(&dir);
        }
    }

    /// The generation of `dir`, watching it from now on if it was not; `None` when it
    /// cannot be watched (gone, not a directory, or the watch limit reached).
    fn generation(&self, dir: &Path) -> Option<u64> {
        let w = self.watcher()?;
        let mut st = w.watched.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((_, g)) = st.dirs.get(dir.as_os_str()) {
            return Some(*g);
        }
        let wd = w.inotify.add_watch(dir, WATCH_MASK).ok()?;
        // The same directory under another name (renamed since): one watch, one name.
        if let Some(old) = st.by_wd.insert(wd, dir.as_os_str().to_owned()) {
            st.dirs.remove(&old);
        }
        let g = st.bump();
        st.dirs.insert(dir.as_os_str().to_owned(), (wd, g));
        Some(g)
    }

    fn load(&self, paths: VmPaths, sync: bool) -> Loaded {
        if sync {
            self.sync();
        }
        let Some(g) = self.generation(&paths.state) else {
            self.specs.remove(paths.state.as_os_str());
            return load_from_disk(paths);
        };
        if let Some(spec) = self.specs.get(paths.state.as_os_str()).filter(|e| e.0 == g).map(|e| e.1.clone()) {
            return Loaded::Defined(Box::new(Vm { spec, paths }));
        }
        let loaded = load_from_disk(paths);
        match &loaded {
            Loaded::Defined(vm) => {
                self.specs.insert(vm.paths.state.clone().into_os_string(), (g, vm.spec.clone()));
            }
            Loaded::Absent => {}
            Loaded::Incomplete { paths, .. } => {
                self.specs.remove(paths.state.as_os_str());
            }
        }
        loaded
    }

    /// `f` of `paths`' definition (`None` when incomplete or absent), lent from the cache
    /// when current, else read and remembered. Events are not taken first.
    fn with_spec<R>(&self, paths: &VmPaths, f: impl FnOnce(Option<&VmSpec>) -> R) -> R {
        if let Some(g) = self.generation(&paths.state)
            && let Some(e) = self.specs.get(paths.state.as_os_str()).filter(|e| e.0 == g)
        {
            return f(Some(&e.1));
        }
        match self.load(paths.clone(), false) {
            Loaded::Defined(vm) => f(Some(&vm.spec)),
            Loaded::Absent | Loaded::Incomplete { .. } => f(None),
        }
    }

    fn status(&self, paths: &VmPaths, created_at_s: u64, sync: bool) -> Status {
        if sync {
            self.sync();
        }
        let Some(g) = self.generation(&paths.state) else {
            self.statuses.remove(paths.state.as_os_str());
            return read_status(paths, created_at_s);
        };
        if let Some(s) = self.statuses.get(paths.state.as_os_str()).filter(|e| e.0 == g).map(|e| e.1.clone()) {
            return s;
        }
        let status = read_status(paths, created_at_s);
        self.statuses.insert(paths.state.clone().into_os_string(), (g, status.clone()));
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{Boot, RestartPolicy, SPEC_VERSION};

    fn spec(name: &str) -> VmSpec {
        VmSpec {
            version: SPEC_VERSION,
            name: VmName::new(name).unwrap(),
            uuid: uuid::Uuid::new_v4(),
            created_at: 1,
            os_variant: "generic".into(),
            memory_mib: 64,
            vcpus: 1,
            boot: Boot::Disk,
            disks: vec![],
            nics: vec![],
            restart_policy: RestartPolicy::Never,
            template: false,
            made_template: false,
            ignition: None,
            uefi: None,
            addresses: crate::spec::StandardAddrs::default(),
            pool: None,
            pool_of: None,
            lease: crate::spec::Lease::default(),
            install_boot: false,
        }
    }

    fn store() -> (tempfile::TempDir, Store) {
        let d = tempfile::tempdir().unwrap();
        let s = Store::new(&d.path().join("state"), &d.path().join("run"));
        (d, s)
    }

    fn define(s: &Store, name: &str) -> VmPaths {
        let n = VmName::new(name).unwrap();
        let p = s.paths(&n);
        std::fs::create_dir_all(&p.state).unwrap();
        write_spec(&p, &spec(name)).unwrap();
        p
    }

    #[test]
    fn damaged_spec_is_incomplete_with_the_reason() {
        let (_d, s) = store();
        let p = define(&s, "a");
        std::fs::write(p.spec(), b"{ not json").unwrap();

        let loaded = s.load(&VmName::new("a").unwrap());

        assert!(matches!(loaded, Loaded::Incomplete { reason, .. } if reason.contains("damaged")));
    }

    #[test]
    fn interrupted_create_is_incomplete() {
        let (_d, s) = store();
        let p = define(&s, "a");
        begin_create(&p, &[]).unwrap();

        assert!(matches!(s.load(&VmName::new("a").unwrap()), Loaded::Incomplete { .. }));
    }

    #[test]
    fn missing_directory_is_absent() {
        let (_d, s) = store();

        assert!(matches!(s.load(&VmName::new("a").unwrap()), Loaded::Absent));
    }

    #[test]
    fn huge_record_is_damaged_not_read() {
        let (d, _s) = store();
        let p = d.path().join("big.json");
        let f = std::fs::File::create(&p).unwrap();
        f.set_len(MAX_RECORD_BYTES + 10).unwrap();

        assert!(matches!(read_record::<serde_json::Value>(&p), Record::Damaged(r) if r.contains("larger")));
    }

    #[test]
    fn damaged_status_reads_as_created_with_the_damage_noted() {
        let (_d, s) = store();
        let p = define(&s, "a");
        std::fs::write(p.status(), b"garbage").unwrap();

        let st = read_status(&p, 7);

        assert_eq!(
            (st.state, st.since_ms, st.detail.is_some_and(|d| d.contains("damaged"))),
            (VmState::Shutoff, 7000, true)
        );
    }

    #[test]
    fn owned_files_survive_a_damaged_spec() {
        let (_d, s) = store();
        let p = define(&s, "a");
        let mut sp = spec("a");
        sp.disks.push(crate::spec::DiskSpec {
            path: "/vm/a.qcow2".into(),
            format: crate::spec::DiskFormat::Qcow2,
            media: Media::Disk,
            readonly: false,
            owned: true,
            ejected: false,
            addr: None,
        });
        write_spec(&p, &sp).unwrap();
        std::fs::write(p.spec(), b"").unwrap();

        assert_eq!(recorded_owned(&p), vec![PathBuf::from("/vm/a.qcow2")]);
    }

    #[test]
    fn names_skip_files_and_invalid_names() {
        let (_d, s) = store();
        define(&s, "b");
        define(&s, "a");
        std::fs::write(s.state_dir.join(VMS_DIR).join("file"), b"").unwrap();
        std::fs::create_dir_all(s.state_dir.join(VMS_DIR).join(".hidden")).unwrap();

        let names: Vec<String> = s.names().unwrap().iter().map(ToString::to_string).collect();

        assert_eq!(names, ["a", "b"]);
    }

    #[test]
    fn stop_intent_of_a_dead_writer_without_a_stop_seen_does_not_apply() {
        let intent = StopIntent {
            writer: Some(ProcIdentity { pid: i32::MAX, starttime: 1, boot_id: crate::procid::boot_id() }),
            qemu: None,
            at_ms: 0,
            forced: false,
            forced_why: None,
        };

        assert_eq!((intent.applies(None, false), intent.applies(None, true)), (false, true));
    }

    #[test]
    fn stop_intent_of_a_live_writer_applies_to_its_run_only() {
        let me = ProcIdentity::capture(std::process::id().cast_signed());
        let other = ProcIdentity { pid: 1, starttime: 1, boot_id: String::new() };
        let intent = StopIntent { writer: me.clone(), qemu: me.clone(), at_ms: 0, forced: false, forced_why: None };

        assert_eq!((intent.applies(me.as_ref(), false), intent.applies(Some(&other), false)), (true, false));
    }

    #[test]
    fn cached_status_follows_a_rewrite() {
        let (_d, s) = store();
        let p = define(&s, "a");
        let s = s.with_cache(Arc::new(Cache::default()));
        let vm = match s.load(&VmName::new("a").unwrap()) {
            Loaded::Defined(vm) => *vm,
            other => panic!("{other:?}"),
        };
        let before = s.observe(&vm).status.reason;
        let mut st = Status::created(0);
        st.reason = Reason::StartFailed;
        write_status(&p, &st).unwrap();

        let after = s.observe(&vm).status.reason;

        assert_eq!((before, after), (Reason::Created, Reason::StartFailed));
    }

    #[test]
    fn cached_definition_is_dropped_when_the_file_is_damaged() {
        let (_d, s) = store();
        let p = define(&s, "a");
        let s = s.with_cache(Arc::new(Cache::default()));
        let n = VmName::new("a").unwrap();
        let first = matches!(s.load(&n), Loaded::Defined(_));
        std::fs::write(p.spec(), b"{").unwrap();

        assert_eq!((first, matches!(s.load(&n), Loaded::Incomplete { .. })), (true, true));
    }

    fn reason_of(s: &Store, name: &str) -> Reason {
        match s.load(&VmName::new(name).unwrap()) {
            Loaded::Defined(vm) => s.observe(&vm).status.reason,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn recreated_directory_is_read_again_and_the_old_entries_are_dropped() {
        let (_d, s) = store();
        let p = define(&s, "a");
        let cache = Arc::new(Cache::default());
        let s = s.with_cache(cache.clone());
        assert_eq!(reason_of(&s, "a"), Reason::Created);
        std::fs::remove_dir_all(&p.state).unwrap();
        let absent = matches!(s.load(&VmName::new("a").unwrap()), Loaded::Absent);
        let left = (cache.specs.len(), cache.statuses.len());
        let p = define(&s, "a");
        let mut st = Status::created(0);
        st.reason = Reason::StartFailed;
        write_status(&p, &st).unwrap();

        assert_eq!((absent, left, reason_of(&s, "a")), (true, (0, 0), Reason::StartFailed));
    }

    #[test]
    fn directory_moved_away_stops_counting_for_its_old_name() {
        let (d, s) = store();
        let p = define(&s, "a");
        let s = s.with_cache(Arc::new(Cache::default()));
        assert_eq!(reason_of(&s, "a"), Reason::Created);
        let elsewhere = d.path().join("moved");
        std::fs::rename(&p.state, &elsewhere).unwrap();
        let p = define(&s, "a");
        let mut st = Status::created(0);
        st.reason = Reason::StartFailed;
        write_status(&p, &st).unwrap();
        let first = reason_of(&s, "a");
        // A change in the moved directory must not reach the name it left.
        st.reason = Reason::Created;
        write_status(&VmPaths { state: elsewhere, run: p.run.clone() }, &st).unwrap();

        assert_eq!((first, reason_of(&s, "a")), (Reason::StartFailed, Reason::StartFailed));
    }

    #[test]
    fn a_change_lost_to_a_full_event_queue_is_still_seen() {
        let limit: usize = std::fs::read_to_string("/proc/sys/fs/inotify/max_queued_events")
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(16384);
        assert!(limit <= 1 << 20, "max_queued_events {limit} is too large to overflow in a test");
        let (_d, s) = store();
        let p = define(&s, "a");
        let s = s.with_cache(Arc::new(Cache::default()));
        assert_eq!(reason_of(&s, "a"), Reason::Created);
        // Events for other files fill the queue; the status change's own event is lost.
        for i in 0..=limit {
            std::fs::File::create(p.state.join(format!("f{i}"))).unwrap();
        }
        let mut st = Status::created(0);
        st.reason = Reason::StartFailed;
        write_status(&p, &st).unwrap();

        assert_eq!(reason_of(&s, "a"), Reason::StartFailed);
    }

    #[test]
    fn survey_lists_every_directory_once_with_what_it_holds() {
        let (_d, s) = store();
        define(&s, "b");
        let broken = define(&s, "a");
        std::fs::write(broken.spec(), b"{").unwrap();
        let s = s.with_cache(Arc::new(Cache::default()));

        let got =
            s.survey(|n, vm| (n.to_string(), vm.map(|(spec, o)| (spec.name.to_string(), o.status.reason)))).unwrap();

        assert_eq!(got, vec![("a".into(), None), ("b".into(), Some(("b".into(), Reason::Created)))]);
    }

    #[tokio::test]
    async fn lock_outlives_the_vm_directory() {
        let (_d, s) = store();
        let p = define(&s, "a");
        let n = VmName::new("a").unwrap();
        let held = s.lock(&n, Duration::from_secs(1)).await.unwrap().unwrap();
        std::fs::remove_dir_all(&p.state).unwrap();

        let second = s.lock(&n, Duration::from_millis(50)).await.unwrap();

        drop(held);
        assert!(second.is_none());
    }
}
