//! Storage tools: the images and ISOs on the server, CD-ROM media, clones, growing and
//! resetting disks, and internal snapshots. Each parses its arguments, calls `ops`,
//! and formats a [`Reply`]; the snapshot jobs report progress and stop waiting when
//! the caller cancels.

use super::params::Parameters;
use rmcp::service::RequestContext;
use rmcp::{RoleServer, tool, tool_router};

use super::args::{CloneResult, VmChanged, VmNameArgs};
use super::args_storage::{
    AttachIsoArgs, CloneVmArgs, ImageList, IsoList, ResizeDiskArgs, SnapshotArgs, SnapshotDeleted, SnapshotList,
    SnapshotResult,
};
use super::notify::{Forward, LongCall};
use super::reply::{Reply, ToolResult, fail, out};
use super::server::KvmMcp;
use crate::ops::{ForkReport, ForkRequest, SnapshotEntry, VmInfo};

fn gib(bytes: u64) -> String {
    #[allow(clippy::cast_precision_loss)]
    let g = bytes as f64 / f64::from(1u32 << 30);
    format!("{g:.1} GiB")
}

fn users(used_by: &[String]) -> String {
    if used_by.is_empty() { "unused".into() } else { format!("used by {}", used_by.join(", ")) }
}

fn state(vm: &VmInfo) -> String {
    format!("VM {:?} is {}", vm.name, vm.state)
}

#[tool_router(router = storage_tools, vis = "pub(super)")]
impl KvmMcp {
    /// The disk images in the server's image directories (format, sizes, backing file, users), for `create_vm`.
    #[tool(title = "List disk images", annotations(read_only_hint = true, open_world_hint = false), output_schema = out::<ImageList>())]
    async fn list_images(&self) -> ToolResult<ImageList> {
        let images = self.ops().list_images().await.map_err(fail)?;
        let summary = if images.is_empty() {
            "no disk images in the image directories".into()
        } else {
            let items: Vec<String> = images
                .iter()
                .map(|i| format!("{} ({}, {})", i.path.display(), gib(i.virtual_size_bytes), users(&i.used_by)))
                .collect();
            format!("{} image(s): {}", images.len(), items.join("; "))
        };
        Ok(Reply::new(ImageList { images }, summary))
    }

    /// The .iso files in the server's ISO directories (size, users), for `attach_iso` and installs.
    #[tool(title = "List ISO images", annotations(read_only_hint = true, open_world_hint = false), output_schema = out::<IsoList>())]
    async fn list_isos(&self) -> ToolResult<IsoList> {
        let isos = self.ops().list_isos().map_err(fail)?;
        let summary = if isos.is_empty() {
            "no ISO files in the ISO directories".into()
        } else {
            let items: Vec<String> =
                isos.iter().map(|i| format!("{} ({})", i.path.display(), users(&i.used_by))).collect();
            format!("{} ISO(s): {}", isos.len(), items.join("; "))
        };
        Ok(Reply::new(IsoList { isos }, summary))
    }

    /// Put an ISO in a VM's CD-ROM drive: now if it runs (it needs a drive), else from the next start (a drive
    /// is added).
    #[tool(
        title = "Insert ISO",
        annotations(read_only_hint = false, destructive_hint = false, idempotent_hint = true, open_world_hint = false),
        output_schema = out::<VmChanged>()
    )]
    async fn attach_iso(
        &self,
        Parameters(a): Parameters<AttachIsoArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> ToolResult<VmChanged> {
        let vm = self.ops().attach_iso(&a.name, a.iso.as_deref()).await.map_err(fail)?;
        let summary = format!("ISO attached; {}", state(&vm));
        self.logged(&ctx, &a.name, VmChanged::new(&vm, "ISO attached"), summary).await
    }

    /// Empty a VM's CD-ROM drive; the drive stays.
    #[tool(
        title = "Eject ISO",
        annotations(read_only_hint = false, destructive_hint = false, idempotent_hint = true, open_world_hint = false),
        output_schema = out::<VmChanged>()
    )]
    async fn eject_iso(
        &self,
        Parameters(a): Parameters<VmNameArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> ToolResult<VmChanged> {
        let vm = self.ops().eject_iso(&a.name).await.map_err(fail)?;
        let summary = format!("CD-ROM ejected; {}", state(&vm));
        self.logged(&ctx, &a.name, VmChanged::new(&vm, "CD-ROM ejected"), summary).await
    }

    /// A new VM from a stopped one, with new MACs and cloud-init identity; `identity` says what it still shares.
    #[tool(
        title = "Clone VM",
        annotations(read_only_hint = false, destructive_hint = false, idempotent_hint = false, open_world_hint = false),
        output_schema = out::<CloneResult>()
    )]
    async fn clone_vm(
        &self,
        Parameters(a): Parameters<CloneVmArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> ToolResult<CloneResult> {
        let kind = if a.full { "full" } else { "linked" };
        let source = a.source.clone();
        let r = self.ops().clone_vm(a).await.map_err(fail)?;
        self.vm_set_changed();
        let unchanged = if r.identity.unchanged.is_empty() {
            String::new()
        } else {
            format!("; still the source's: {}", r.identity.unchanged.join("; "))
        };
        let summary = match &r.identity.instance_id {
            Some(id) => {
                format!("{kind} clone of {source:?}, a new machine (instance-id {id}); {}{unchanged}", state(&r.vm))
            }
            None => format!("{kind} clone of {source:?}; {}{unchanged}", state(&r.vm)),
        };
        let name = r.vm.name.clone();
        let vm = VmChanged::new(&r.vm, format!("defined as a {kind} clone of {source:?}"));
        self.logged(&ctx, &name, CloneResult { vm, identity: r.identity }, summary).await
    }

    /// Make a stopped VM (or a new VM on `image`) a template for linked clones and `run_in_vm`; `pool_size` keeps
    /// that many clones booted and paused for instant claims.
    #[tool(
        title = "Make template",
        annotations(read_only_hint = false, destructive_hint = false, idempotent_hint = true, open_world_hint = false),
        output_schema = out::<VmChanged>()
    )]
    async fn create_template(
        &self,
        Parameters(a): Parameters<crate::ops::TemplateRequest>,
        ctx: RequestContext<RoleServer>,
    ) -> ToolResult<VmChanged> {
        let name = a.name.clone();
        let new = a.image.is_some();
        let vm = self.ops().create_template(a).await.map_err(fail)?;
        if new {
            self.vm_set_changed();
        }
        let pool = vm.pool_size.map_or(String::new(), |n| format!(", warm pool of {n}"));
        let change = format!("a template{pool}");
        let summary = format!("VM {name:?} is {change}; {}", state(&vm));
        self.logged(&ctx, &name, VmChanged::new(&vm, change), summary).await
    }

    /// Fork a running VM into copies that go on from this moment (RAM, devices, disk), each with its own MAC and host
    /// name; the original keeps running.
    #[tool(
        title = "Fork running VM",
        annotations(read_only_hint = false, destructive_hint = false, idempotent_hint = false, open_world_hint = false),
        output_schema = out::<ForkReport>()
    )]
    async fn fork_vm(
        &self,
        Parameters(a): Parameters<ForkRequest>,
        ctx: RequestContext<RoleServer>,
    ) -> ToolResult<ForkReport> {
        let name = a.name.clone();
        let waiting_for = format!("{} copies of {name:?} to answer", a.count);
        // A cancelled fork deletes the copies it made; the original goes on.
        let call = LongCall {
            tool: "fork_vm",
            vm: &name,
            start: None,
            waiting_for: &waiting_for,
            if_cancelled: None,
            log: true,
        };
        let ct = &ctx.ct;
        let op = |_: Forward| async move { self.ops().fork_vm(a, ct).await };
        let (r, summary) = self
            .run_long(&ctx, call, op, |r: &ForkReport| {
                let names: Vec<&str> = r.copies.iter().map(|c| c.name.as_str()).collect();
                format!(
                    "forked {:?} into {} in {} ms (paused {} ms)",
                    r.source,
                    names.join(", "),
                    r.total_ms,
                    r.paused_ms
                )
            })
            .await?;
        self.vm_set_changed();
        Ok(Reply::new(r, summary))
    }

    /// Grow a VM's disk to `size_gib`, live if it runs; the guest then grows its partition and file system.
    #[tool(
        title = "Grow disk",
        annotations(read_only_hint = false, destructive_hint = false, idempotent_hint = true, open_world_hint = false),
        output_schema = out::<VmChanged>()
    )]
    async fn resize_disk(
        &self,
        Parameters(a): Parameters<ResizeDiskArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> ToolResult<VmChanged> {
        let vm = self.ops().resize_disk(&a.name, a.size_gib, a.disk).await.map_err(fail)?;
        let grown = format!("disk {} grown to {} GiB", a.disk.unwrap_or(0), a.size_gib);
        let summary = format!("{grown}; {}", state(&vm));
        self.logged(&ctx, &a.name, VmChanged::new(&vm, grown), summary).await
    }

    /// Throw away what a stopped VM wrote to the disks kvm-mcp created (overlays back to their base, install
    /// disks blank) and its snapshots.
    #[tool(
        title = "Reset VM disks",
        annotations(read_only_hint = false, destructive_hint = true, idempotent_hint = false, open_world_hint = false),
        output_schema = out::<VmChanged>()
    )]
    async fn reset_vm_disk(
        &self,
        Parameters(a): Parameters<VmNameArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> ToolResult<VmChanged> {
        let vm = self.ops().reset_vm_disk(&a.name).await.map_err(fail)?;
        let summary = format!("disks reset to their base; {}", state(&vm));
        self.logged(&ctx, &a.name, VmChanged::new(&vm, "disks reset to their base"), summary).await
    }

    /// Take a named internal snapshot of a VM's qcow2 disks, with RAM and device state if it runs.
    #[tool(
        title = "Create snapshot",
        annotations(read_only_hint = false, destructive_hint = false, idempotent_hint = false, open_world_hint = false),
        output_schema = out::<SnapshotResult>()
    )]
    async fn create_snapshot(
        &self,
        Parameters(a): Parameters<SnapshotArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> ToolResult<SnapshotResult> {
        let call = LongCall {
            tool: "create_snapshot",
            vm: &a.name,
            start: Some(format!("saving snapshot {:?} of VM {:?}", a.snapshot, a.name)),
            waiting_for: "the snapshot to be saved",
            if_cancelled: Some("QEMU may still finish the snapshot; check list_snapshots"),
            log: true,
        };
        let (name, tag) = (&a.name, &a.snapshot);
        let op = |p: Forward| async move { self.ops().create_snapshot(name, tag, &*p).await };
        let summarise = |s: &SnapshotEntry| {
            let what = if s.live { "with RAM state" } else { "power-on state" };
            format!("snapshot {:?} of VM {name:?} saved ({what})", s.name)
        };
        let (snapshot, summary) = self.run_long(&ctx, call, op, summarise).await?;
        Ok(Reply::new(SnapshotResult { name: a.name, snapshot }, summary))
    }

    /// A VM's snapshots: name, time, saved RAM size, and whether it was running.
    #[tool(title = "List snapshots", annotations(read_only_hint = true, open_world_hint = false), output_schema = out::<SnapshotList>())]
    async fn list_snapshots(&self, Parameters(a): Parameters<VmNameArgs>) -> ToolResult<SnapshotList> {
        let snapshots = self.ops().list_snapshots(&a.name).map_err(fail)?;
        let summary = if snapshots.is_empty() {
            format!("VM {:?} has no snapshots; create_snapshot takes one", a.name)
        } else {
            let names: Vec<&str> = snapshots.iter().map(|s| s.name.as_str()).collect();
            format!("VM {:?} has {} snapshot(s): {}", a.name, snapshots.len(), names.join(", "))
        };
        Ok(Reply::new(SnapshotList { name: a.name, snapshots }, summary))
    }

    /// Return a VM to a snapshot: disk writes since are lost, and a running VM gets the snapshot's RAM back.
    #[tool(
        title = "Revert to snapshot",
        annotations(read_only_hint = false, destructive_hint = true, idempotent_hint = false, open_world_hint = false),
        output_schema = out::<VmChanged>()
    )]
    async fn revert_snapshot(
        &self,
        Parameters(a): Parameters<SnapshotArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> ToolResult<VmChanged> {
        let call = LongCall {
            tool: "revert_snapshot",
            vm: &a.name,
            start: Some(format!("reverting VM {:?} to snapshot {:?}", a.name, a.snapshot)),
            waiting_for: "the snapshot to be loaded",
            if_cancelled: Some("QEMU may still finish loading the snapshot"),
            log: true,
        };
        let (name, tag) = (&a.name, &a.snapshot);
        let op = |p: Forward| async move { self.ops().revert_snapshot(name, tag, &*p).await };
        let summarise = |vm: &VmInfo| format!("reverted to snapshot {tag:?}; {}", state(vm));
        let (vm, summary) = self.run_long(&ctx, call, op, summarise).await?;
        Ok(Reply::new(VmChanged::new(&vm, format!("reverted to snapshot {tag:?}")), summary))
    }

    /// Delete a VM's snapshot from all its disks; the VM itself is not changed.
    #[tool(
        title = "Delete snapshot",
        annotations(read_only_hint = false, destructive_hint = true, idempotent_hint = false, open_world_hint = false),
        output_schema = out::<SnapshotDeleted>()
    )]
    async fn delete_snapshot(
        &self,
        Parameters(a): Parameters<SnapshotArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> ToolResult<SnapshotDeleted> {
        let call = LongCall {
            tool: "delete_snapshot",
            vm: &a.name,
            start: Some(format!("deleting snapshot {:?} of VM {:?}", a.snapshot, a.name)),
            waiting_for: "the snapshot to be deleted",
            if_cancelled: Some("QEMU may still delete it; check list_snapshots"),
            log: true,
        };
        let (name, tag) = (&a.name, &a.snapshot);
        let op = |p: Forward| async move { self.ops().delete_snapshot(name, tag, &*p).await };
        let summarise = |(): &()| format!("deleted snapshot {tag:?} of VM {name:?}");
        let ((), summary) = self.run_long(&ctx, call, op, summarise).await?;
        Ok(Reply::new(SnapshotDeleted { name: a.name, deleted: a.snapshot }, summary))
    }
}
