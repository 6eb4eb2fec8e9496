//! The VM lifecycle tools: list, get, create, start, stop, reboot, pause, resume,
//! delete. Each parses its arguments, calls `ops`, and formats a [`Reply`]; the long
//! ones report progress and stop waiting when the caller cancels.

use std::time::Duration;

use rmcp::handler::server::wrapper::Parameters;
use rmcp::service::RequestContext;
use rmcp::{RoleServer, tool, tool_router};

use super::args::{CreateVmArgs, DeleteVmArgs, Deleted, ListVmsArgs, StopVmArgs, VmList, VmNameArgs, VmResult};
use super::notify::{Forward, LongCall};
use super::reply::{Reply, ToolResult, fail, out};
use super::server::KvmMcp;
use crate::ops::{CreateRequest, DeleteOptions, StopOptions, VmInfo, VmSummary};

fn describe(i: &VmInfo) -> String {
    let mut s = format!("VM {:?} is {}", i.name, i.state);
    if let Some(d) = &i.detail {
        s.push_str(&format!(" ({d})"));
    }
    s.push_str(&format!(": {} vCPUs, {} MiB, profile {}", i.vcpus, i.memory_mib, i.os_variant));
    if let Some(pid) = i.pid {
        s.push_str(&format!(", QEMU pid {pid}"));
    }
    s.push_str(&format!("; serial console log {}", i.serial_log.display()));
    s
}

fn list_summary(vms: &[VmSummary]) -> String {
    if vms.is_empty() {
        return "no VMs are defined; create one with create_vm".into();
    }
    let items: Vec<String> =
        vms.iter().map(|v| format!("{} ({})", v.name, v.state.map_or("incomplete", |s| s.as_str()))).collect();
    format!("{} VM{}: {}", vms.len(), if vms.len() == 1 { "" } else { "s" }, items.join(", "))
}

#[tool_router(router = vm_tools, vis = "pub(super)")]
impl KvmMcp {
    /// List the defined VMs with their state (shutoff, starting, running, paused,
    /// shutting-down, crashed), vCPUs, memory, uptime and QEMU pid.
    #[tool(annotations(read_only_hint = true, open_world_hint = false), output_schema = out::<VmList>())]
    async fn list_vms(&self, Parameters(a): Parameters<ListVmsArgs>) -> ToolResult<VmList> {
        let vms = if a.no_cache { self.ops().list_live().await } else { self.ops().list() }.map_err(fail)?;
        let summary = list_summary(&vms);
        Ok(Reply::new(VmList { vms }, summary))
    }

    /// Show everything about one VM: definition (disks, NICs, boot), state and why,
    /// QEMU pid, uptime, exit status after a crash with QEMU's last log lines, the
    /// path of its serial console log, and while it runs the guest's IP addresses.
    #[tool(annotations(read_only_hint = true, open_world_hint = false), output_schema = out::<VmResult>())]
    async fn get_vm(&self, Parameters(a): Parameters<VmNameArgs>) -> ToolResult<VmResult> {
        let vm = self.ops().info_live(&a.name).await.map_err(fail)?;
        let summary = describe(&vm);
        Ok(Reply::new(VmResult { vm }, summary))
    }

    /// Define a new VM. Every argument is optional: with none, the VM gets the
    /// server's configured defaults (name, memory, vCPUs, OS profile, network). It
    /// needs something to boot: `disk` (an existing image), `disk_source` (a new
    /// overlay on a master image, an install ISO, or a blank disk), `kernel`, or the
    /// configured default master image. Pass
    /// `start: true` to start it too. Does not start it otherwise.
    #[tool(
        annotations(read_only_hint = false, destructive_hint = false, idempotent_hint = false, open_world_hint = false),
        output_schema = out::<VmResult>()
    )]
    async fn create_vm(
        &self,
        Parameters(a): Parameters<CreateVmArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> ToolResult<VmResult> {
        let name = a.name.clone().unwrap_or_else(|| self.ops().config().vm.default_name.clone());
        let start = a.start;
        let req = CreateRequest::try_from(a).map_err(fail)?;
        let call = LongCall {
            tool: "create_vm",
            vm: &name,
            start: Some(format!("defining VM {name:?}")),
            waiting_for: if start { "the VM to be defined and started" } else { "the VM to be defined" },
            if_cancelled: Some("its supervisor may still be starting it; check with get_vm"),
            log: true,
        };
        let summarise = |vm: &VmInfo| {
            if start {
                format!("created; {}", describe(vm))
            } else {
                format!("defined; {}; start it with start_vm", describe(vm))
            }
        };
        let (vm, summary) = self.run_long(&ctx, call, |_| self.ops().create(req), summarise).await?;
        self.vm_set_changed();
        Ok(Reply::new(VmResult { vm }, summary))
    }

    /// Start a defined VM and wait until QEMU runs it (the guest then boots on its
    /// own; watch its serial log, whose path `get_vm` shows). Fails if it is already
    /// running.
    #[tool(
        annotations(read_only_hint = false, destructive_hint = false, idempotent_hint = false, open_world_hint = false),
        output_schema = out::<VmResult>()
    )]
    async fn start_vm(
        &self,
        Parameters(a): Parameters<VmNameArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> ToolResult<VmResult> {
        let call = LongCall {
            tool: "start_vm",
            vm: &a.name,
            start: Some(format!("starting VM {:?}", a.name)),
            waiting_for: "QEMU to run",
            if_cancelled: Some("its supervisor goes on starting it; stop_vm undoes that"),
            log: true,
        };
        let (vm, summary) = self.run_long(&ctx, call, |_| self.ops().start(&a.name), describe).await?;
        Ok(Reply::new(VmResult { vm }, summary))
    }

    /// Stop a VM: press the ACPI power button until the guest powers off (a guest that
    /// shows no sign of shutting down is also asked through its guest agent), and force
    /// it off (QEMU quit, then signals) if it has not within `timeout_s`; or at once
    /// with `force: true`. The VM's `reason` says how it ended: `guest_poweroff`, or
    /// `forced` with a `detail` saying why. Stopping a stopped VM succeeds and changes
    /// nothing.
    #[tool(
        annotations(read_only_hint = false, destructive_hint = true, idempotent_hint = true, open_world_hint = false),
        output_schema = out::<VmResult>()
    )]
    async fn stop_vm(
        &self,
        Parameters(a): Parameters<StopVmArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> ToolResult<VmResult> {
        let opts = StopOptions { force: a.force, timeout: a.timeout_s.map(Duration::from_secs) };
        let call = LongCall {
            tool: "stop_vm",
            vm: &a.name,
            start: None,
            waiting_for: "the VM to power off",
            if_cancelled: Some("power button presses already sent may still shut the guest down"),
            log: true,
        };
        let name = &a.name;
        let op = |p: Forward| async move { self.ops().stop(name, opts, &*p).await };
        let (vm, summary) = self.run_long(&ctx, call, op, describe).await?;
        Ok(Reply::new(VmResult { vm }, summary))
    }

    /// Reset a running VM, like pressing its reset button: the guest reboots at once
    /// without shutting down, losing unsaved data.
    #[tool(
        annotations(read_only_hint = false, destructive_hint = true, idempotent_hint = false, open_world_hint = false),
        output_schema = out::<VmResult>()
    )]
    async fn reboot_vm(
        &self,
        Parameters(a): Parameters<VmNameArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> ToolResult<VmResult> {
        let vm = self.ops().reboot(&a.name).await.map_err(fail)?;
        let summary = format!("reset; {}", describe(&vm));
        self.logged(&ctx, &a.name, VmResult { vm }, summary).await
    }

    /// Pause a running VM's virtual CPUs; memory and devices stay as they are.
    /// `resume_vm` continues it.
    #[tool(
        annotations(read_only_hint = false, destructive_hint = false, idempotent_hint = true, open_world_hint = false),
        output_schema = out::<VmResult>()
    )]
    async fn pause_vm(
        &self,
        Parameters(a): Parameters<VmNameArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> ToolResult<VmResult> {
        let vm = self.ops().pause(&a.name).await.map_err(fail)?;
        let summary = describe(&vm);
        self.logged(&ctx, &a.name, VmResult { vm }, summary).await
    }

    /// Continue a VM paused by `pause_vm`.
    #[tool(
        annotations(read_only_hint = false, destructive_hint = false, idempotent_hint = true, open_world_hint = false),
        output_schema = out::<VmResult>()
    )]
    async fn resume_vm(
        &self,
        Parameters(a): Parameters<VmNameArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> ToolResult<VmResult> {
        let vm = self.ops().resume(&a.name).await.map_err(fail)?;
        let summary = describe(&vm);
        self.logged(&ctx, &a.name, VmResult { vm }, summary).await
    }

    /// Delete a VM's definition and state, and the disk images kvm-mcp created for it
    /// (unless `keep_disks: true`). Disk images given at create stay on disk. A
    /// running VM is refused unless `force: true`, which forces it off first.
    #[tool(
        annotations(read_only_hint = false, destructive_hint = true, idempotent_hint = false, open_world_hint = false),
        output_schema = out::<Deleted>()
    )]
    async fn delete_vm(
        &self,
        Parameters(a): Parameters<DeleteVmArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> ToolResult<Deleted> {
        let opts = DeleteOptions { force: a.force, keep_disks: a.keep_disks };
        let report = self.ops().delete_with(&a.name, opts).await.map_err(fail)?;
        self.vm_set_changed();
        let summary = format!(
            "deleted VM {:?}; {} disk image(s) removed, {} kept",
            a.name,
            report.removed.len(),
            report.kept.len()
        );
        let deleted = Deleted { deleted: a.name.clone(), removed: report.removed, kept: report.kept };
        self.logged(&ctx, &a.name, deleted, summary).await
    }
}
