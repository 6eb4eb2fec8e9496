//! Templates and warm pools. `create_template` makes a stopped VM, or a new VM on an
//! image, a template for good: a base that linked clones overlay, which refuses to
//! start or be deleted while clones or a pool use it. A template may keep
//! `pool.size` of its clones booted until their guest agent answers, then paused. A
//! claim (`kvm-mcp run --template`, `claim_from_pool`) resumes one and hands it over at
//! once; the pool's owner refills it in the background.
//!
//! Members are ordinary VMs (`pl-` and 8 hex digits), each a linked clone with its own
//! MAC, UUID, hostname and cloud-init instance, marked in their spec as the pool's
//! (`pool_of`) and, once paused with an answering agent, ready (a marker file). A claim
//! takes a ready member's name lock without waiting, checks under it that the member is
//! still the pool's and ready, and clears both before it lets go: the spec write is the
//! moment of handing over, so two claims never get the same VM.
//!
//! The owner (`kvm-mcp pool-own TEMPLATE`, started on demand like a supervisor, one per
//! pool by a lock in the run directory) keeps no state of its own: it reads the members
//! from the state directory every round, so after a crash or `kill -9` the next claim or
//! pool change starts a new owner that goes on where the old one stopped. It boots one
//! member at a time (guests share the host's CPUs), at nice 10 when it runs as root so
//! a refill yields to the VMs in use (a claim sets the claimed VM back to 0), deletes
//! members that stopped or never answered, and exits, deleting the unclaimed members,
//! when the pool is removed or the template deleted.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::clone::CloneRequest;
use super::context::Vm;
use super::{CreateRequest, DeleteOptions, DiskSource, Ops, OpsError, VmInfo};
use crate::agent::AgentClient;
use crate::ids::VmName;
use crate::lock::FileLock;
use crate::spec::PoolSpec;
use crate::state::VmState;
use crate::store;

/// Largest pool.
pub const MAX_POOL_SIZE: u32 = 16;
/// Name prefix of pool members.
const MEMBER_PREFIX: &str = "pl-";
/// How often the owner looks at its pool.
const ROUND: Duration = Duration::from_secs(1);
/// How long a member may take to boot until its agent answers.
const MEMBER_BOOT_TIMEOUT: Duration = Duration::from_secs(900);
/// How long the owner's start report may take.
const OWNER_START_TIMEOUT: Duration = Duration::from_secs(30);

/// What `create_template` accepts (the MCP tool's arguments too).
#[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TemplateRequest {
    /// A stopped VM to make a template; with `image`, the new template's name.
    pub name: String,
    /// Make a new template on this image (`list_images`): an overlay, the image itself is never written.
    #[serde(default)]
    pub image: Option<PathBuf>,
    /// With `image`: guest RAM in MiB.
    #[serde(default)]
    #[schemars(range(min = 16, max = 1_048_576))]
    pub memory_mib: Option<u64>,
    /// With `image`: virtual CPUs.
    #[serde(default)]
    #[schemars(range(min = 1, max = 255))]
    pub vcpus: Option<u32>,
    /// With `image`: a profile from `list_profiles`.
    #[serde(default)]
    pub os_variant: Option<String>,
    /// Keep this many clones booted and paused for instant claims (0 removes the pool).
    #[serde(default)]
    #[schemars(range(max = 16))]
    pub pool_size: Option<u32>,
}

/// One pool's members as the owner sees them.
#[derive(Debug, Default)]
struct Members {
    ready: Vec<String>,
    /// Booting, or paused without the ready mark: an earlier owner ended before it
    /// finished them.
    unfinished: Vec<String>,
    /// Off, crashed, or otherwise of no use: to be deleted.
    dead: Vec<String>,
}

fn member_name() -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("{MEMBER_PREFIX}{}", &id[..8])
}

impl Ops {
    /// The lock the owner of `template`'s pool holds.
    #[must_use]
    pub fn pool_lock(&self, template: &VmName) -> std::path::PathBuf {
        self.store().pool_lock(template)
    }

    /// Makes `req.name` a template for good: a stopped VM as it is, or, with `image`, a
    /// new VM (not started) on an overlay of that image. With `pool_size`, gives it a
    /// warm pool too (also to change the pool of a template). A template made here may
    /// start while no clone uses it (to update its disk) and stays a template.
    ///
    /// # Errors
    /// The VM is running, a pool member or has a time limit; shape fields without
    /// `image`; everything `create` refuses for the image. A new template that cannot
    /// be marked is deleted again.
    pub async fn create_template(&self, req: TemplateRequest) -> Result<VmInfo, OpsError> {
        if req.image.is_none() {
            let stray = [
                ("memory_mib", req.memory_mib.is_some()),
                ("vcpus", req.vcpus.is_some()),
                ("os_variant", req.os_variant.is_some()),
            ];
            if let Some((field, _)) = stray.iter().find(|(_, set)| *set) {
                return Err(OpsError::invalid(
                    field,
                    "only with image: a template made of a VM keeps that VM's shape; leave it out or give image",
                ));
            }
        }
        if let Some(size) = req.pool_size
            && size > MAX_POOL_SIZE
        {
            return Err(OpsError::invalid("pool_size", format!("{size} is over {MAX_POOL_SIZE}")));
        }
        let made = if let Some(image) = &req.image {
            let c = CreateRequest {
                name: Some(req.name.clone()),
                memory_mib: req.memory_mib,
                vcpus: req.vcpus,
                os_variant: req.os_variant.clone(),
                disk: Some(DiskSource::Master(Some(image.clone()))),
                ..CreateRequest::default()
            };
            // The image is this request's `image`, whatever `create` calls its disk.
            self.create(c).await.map_err(|e| e.renamed("disk", "image"))?;
            true
        } else {
            false
        };
        let marked = async {
            self.mark_template(&req.name).await?;
            match req.pool_size {
                Some(size) => self.set_pool(&req.name, size).await,
                None => self.info(&req.name),
            }
        }
        .await;
        if marked.is_err() && made {
            let _ = self.delete_with(&req.name, DeleteOptions { force: true, keep_disks: false }).await;
        }
        let info = marked?;
        tracing::info!(vm = %req.name, pool = ?req.pool_size, "template made");
        Ok(info)
    }

    /// A template is stopped, and lasts: no pool member, no time limit.
    fn can_be_template(vm: &Vm, what: &'static str) -> Result<(), OpsError> {
        Self::stopped(vm, what)?;
        if vm.spec.pool_of.is_some() || !vm.spec.lease.is_unset() {
            let name = vm.spec.name.as_str();
            return Err(OpsError::invalid(
                "name",
                format!("VM {name:?} is a pool member or has a time limit; a template must stay"),
            ));
        }
        Ok(())
    }

    async fn mark_template(&self, name: &str) -> Result<(), OpsError> {
        let (mut vm, _lock) = self.load_locked(name).await?;
        Self::can_be_template(&vm, "making a template")?;
        if !(vm.spec.template && vm.spec.made_template) {
            vm.spec.template = true;
            vm.spec.made_template = true;
            Self::save_spec(&vm)?;
        }
        Ok(())
    }

    /// Gives template `name` a warm pool of `size` booted, paused clones (0 removes it,
    /// deleting the unclaimed ones), and starts the pool's owner.
    ///
    /// # Errors
    /// `size` over [`MAX_POOL_SIZE`]; the VM is running, is itself a pool member or a
    /// job; the owner did not start.
    pub async fn set_pool(&self, name: &str, size: u32) -> Result<VmInfo, OpsError> {
        if size > MAX_POOL_SIZE {
            return Err(OpsError::invalid("size", format!("{size} is over {MAX_POOL_SIZE}")));
        }
        let (mut vm, lock) = self.load_locked(name).await?;
        Self::can_be_template(&vm, "a warm pool")?;
        vm.spec.pool = (size > 0).then_some(PoolSpec { size });
        if size > 0 {
            vm.spec.template = true;
        }
        Self::save_spec(&vm)?;
        drop(lock);
        self.ensure_pool_owner(name).await?;
        self.info(name)
    }

    /// Starts the owner of `template`'s pool unless one runs.
    ///
    /// # Errors
    /// The owner could not be started or did not report.
    pub async fn ensure_pool_owner(&self, template: &str) -> Result<(), OpsError> {
        let vname = VmName::new(template)?;
        let lock = self.pool_lock(&vname);
        if crate::lock::is_held(&lock) {
            return Ok(());
        }
        let log = self.store().pool_log(&vname);
        if let Some(dir) = log.parent() {
            std::fs::create_dir_all(dir).map_err(OpsError::io("cannot create", dir))?;
        }
        let what = ("cannot start the pool owner", "the pool owner's start report");
        let report =
            self.spawn_background(vec!["pool-own".to_owned()], template, &log, OWNER_START_TIMEOUT, what).await?;
        if report.ok {
            return Ok(());
        }
        Err(OpsError::StartFailed {
            name: template.into(),
            message: report.message.unwrap_or_else(|| "the pool owner exited before reporting".into()),
            log_tail: report.log_tail,
            kind: report.kind.unwrap_or(crate::error::ErrorKind::Unavailable),
        })
    }

    /// Hands over a ready member of `template`'s pool, resumed, with `lease` (a time
    /// limit and/or an owning process); `None` when none is ready. The owner refills.
    ///
    /// # Errors
    /// The claimed VM could not be resumed (it is deleted then).
    pub async fn claim_from_pool(&self, template: &str, lease: crate::spec::Lease) -> Result<Option<String>, OpsError> {
        Ok(self.claim(template, lease).await?.map(|(name, _)| name))
    }

    /// [`Ops::claim_from_pool`], with a connection to the VM's agent made before it
    /// resumed (when one could be made): the agent never sees a client go, so the first
    /// call on it is answered at once instead of after up to 100 ms (see
    /// [`AgentClient::attach`]).
    pub(super) async fn claim(
        &self,
        template: &str,
        lease: crate::spec::Lease,
    ) -> Result<Option<(String, Option<AgentClient>)>, OpsError> {
        let store = self.store();
        let mut candidates: Vec<Vm> = store
            .defined()
            .into_iter()
            .filter(|vm| vm.spec.pool_of.as_deref() == Some(template) && store::is_pool_ready(&vm.paths))
            .collect();
        // Spread concurrent claims over the members.
        candidates.sort_by_key(|vm| std::cmp::Reverse(vm.spec.uuid.as_u128() ^ u128::from(std::process::id())));
        for vm in candidates {
            let Ok(Some(lock)) = FileLock::try_acquire(&vm.paths.lock()) else { continue };
            // Under the lock: still the pool's and ready (another claim may have won).
            let Ok(mut now) = self.load(vm.spec.name.as_str()) else { continue };
            if now.spec.pool_of.as_deref() != Some(template) || !store::is_pool_ready(&now.paths) {
                continue;
            }
            now.spec.pool_of = None;
            now.spec.lease = lease.clone();
            Self::save_spec(&now)?;
            store::set_pool_ready(&now.paths, false);
            drop(lock);
            let name = now.spec.name.to_string();
            Self::unnice(&now);
            let agent = AgentClient::attach(&now.paths.qga_sock(), self.agent_timeout()).await.ok();
            if let Err(e) = self.resume(&name).await {
                let _ = self.delete_with(&name, DeleteOptions { force: true, keep_disks: false }).await;
                return Err(e);
            }
            tracing::info!(vm = %name, template, "claimed from the warm pool");
            // The owner refills; start it again if it died.
            if let Err(e) = self.ensure_pool_owner(template).await {
                tracing::warn!(template, error = %crate::error::chain(&e), "cannot start the pool owner");
            }
            return Ok(Some((name, agent)));
        }
        Ok(None)
    }

    /// Sets a claimed member's QEMU and supervisor back to nice 0 (the owner booted it
    /// at [`crate::supervise::POOL_NICE`]).
    fn unnice(vm: &Vm) {
        let obs = Self::observe(vm);
        for pid in [obs.pid(), obs.status.supervisor_pid].into_iter().flatten() {
            if let Err(e) = crate::supervise::renice(pid, 0) {
                tracing::debug!(vm = %vm.spec.name, pid, error = %e, "cannot set a claimed VM's priority back");
            }
        }
    }

    fn members(&self, template: &str) -> Members {
        let mut m = Members::default();
        for vm in self.store().defined().into_iter().filter(|vm| vm.spec.pool_of.as_deref() == Some(template)) {
            let name = vm.spec.name.to_string();
            let state = Self::observe(&vm).status.state;
            if store::is_pool_ready(&vm.paths) && state == VmState::Paused {
                m.ready.push(name);
            } else if matches!(state, VmState::Starting | VmState::Running | VmState::Paused) {
                m.unfinished.push(name);
            } else {
                m.dead.push(name);
            }
        }
        m
    }

    /// Deletes `name` if it still is an unclaimed member of `template`'s pool.
    async fn delete_member(&self, name: &str, template: &str) {
        let Ok(vm) = self.load(name) else { return };
        if vm.spec.pool_of.as_deref() != Some(template) {
            return;
        }
        let opts = DeleteOptions { force: true, keep_disks: false };
        match self.delete_if(name, opts, |spec| spec.pool_of.as_deref() == Some(template)).await {
            Ok(_) => tracing::info!(vm = %name, template, "pool member deleted"),
            Err(e) => tracing::warn!(vm = %name, error = %crate::error::chain(&e), "cannot delete a pool member"),
        }
    }

    /// Makes one new member and boots it until its agent answers, then pauses it.
    async fn add_member(&self, template: &str, cancel: &CancellationToken) -> Result<(), OpsError> {
        let name = member_name();
        let req = CloneRequest { source: template.to_owned(), name: name.clone(), ..CloneRequest::default() };
        self.clone_vm_with(req, |spec| spec.pool_of = Some(template.to_owned())).await?;
        if let Err(e) = self.start(&name).await {
            self.delete_member(&name, template).await;
            return Err(e);
        }
        self.finish_member(&name, template, cancel).await
    }

    /// Boots a started member until its agent answers, pauses it and marks it ready;
    /// a member that cannot get there is deleted.
    async fn finish_member(&self, name: &str, template: &str, cancel: &CancellationToken) -> Result<(), OpsError> {
        let paused = self.load(name).is_ok_and(|vm| Self::observe(&vm).status.state == VmState::Paused);
        // A paused member without the mark was paused by an owner that ended before it
        // marked it: it had answered.
        if !paused {
            let booted = async {
                self.wait_for_agent(name, MEMBER_BOOT_TIMEOUT, cancel).await?;
                // Paused with a client on the agent: it goes while the VM is paused, and
                // the claim's connection comes before the resume, so the agent never
                // sees the channel empty (and never waits its 100 ms for a new client).
                let sock = self.paths(&VmName::new(name)?).qga_sock();
                let held = AgentClient::connect(&sock, self.agent_timeout()).await;
                let paused = self.pause(name).await;
                drop(held);
                paused
            }
            .await;
            if let Err(e) = booted {
                self.delete_member(name, template).await;
                return Err(e);
            }
        }
        // Ready only if it still is the pool's (a removal may have run meanwhile).
        let vname = VmName::new(name)?;
        let paths = self.paths(&vname);
        let lock = self.lock(name, &paths).await?;
        if self.load(name).is_ok_and(|vm| vm.spec.pool_of.as_deref() == Some(template)) {
            store::set_pool_ready(&paths, true);
        }
        drop(lock);
        tracing::info!(vm = %name, template, "pool member ready");
        Ok(())
    }

    /// The pool owner's loop (`kvm-mcp pool-own`): keeps the pool full until it is
    /// removed or its template deleted, then deletes the unclaimed members and returns.
    pub async fn own_pool(&self, template: &str, cancel: &CancellationToken) {
        let mut failures = 0u32;
        loop {
            let want = self.load(template).ok().and_then(|vm| vm.spec.pool.map(|p| p.size)).unwrap_or(0);
            let m = self.members(template);
            for name in &m.dead {
                self.delete_member(name, template).await;
            }
            let have = u32::try_from(m.ready.len() + m.unfinished.len()).unwrap_or(u32::MAX);
            if want == 0 {
                for name in m.ready.iter().chain(&m.unfinished) {
                    self.delete_member(name, template).await;
                }
                tracing::info!(template, "the pool is removed; its owner exits");
                return;
            }
            // Surplus after a shrink: the newest ready ones go.
            for name in m.ready.iter().take(usize::try_from(have.saturating_sub(want)).unwrap_or(0)) {
                self.delete_member(name, template).await;
            }
            if let Some(name) = m.unfinished.first() {
                if let Err(e) = self.finish_member(name, template, cancel).await {
                    tracing::warn!(template, vm = %name, error = %crate::error::chain(&e), "a pool member did not boot");
                }
                continue;
            }
            if have < want {
                let t = Instant::now();
                match self.add_member(template, cancel).await {
                    Ok(()) => {
                        failures = 0;
                        tracing::info!(template, ms = t.elapsed().as_millis(), "pool refilled by one");
                        continue;
                    }
                    Err(e) => {
                        failures += 1;
                        tracing::warn!(template, failures, error = %crate::error::chain(&e), "cannot add a pool member");
                    }
                }
            }
            // Back off after failures (a template that cannot boot), up to a minute.
            let wait = ROUND * 2u32.saturating_pow(failures.min(6));
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = cancel.cancelled() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_names_are_valid_and_distinct() {
        let (a, b) = (member_name(), member_name());
        assert!(VmName::new(&a).is_ok(), "{a}");
        assert_ne!(a, b);
        assert!(a.starts_with(MEMBER_PREFIX) && a.len() == 11, "{a}");
    }
}
