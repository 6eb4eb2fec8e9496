//! The VM lifecycle tools: list, get, create, start, stop, reboot, pause, resume,
//! delete. Each parses its arguments, calls `ops`, and formats a [`Reply`]; the long
//! ones report progress and stop waiting when the caller cancels.

use std::fmt::Write as _;
use std::time::Duration;

use super::params::Parameters;
use rmcp::service::RequestContext;
use rmcp::{RoleServer, tool, tool_router};

use super::args::{DeleteVmArgs, Deleted, ListVmsArgs, StopVmArgs, VmChanged, VmList, VmNameArgs, VmResult};
use super::notify::{Forward, LongCall};
use super::reply::{Reply, ToolResult, fail, out, out_record};
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
    let mut out = format!("{} VM{}: ", vms.len(), if vms.len() == 1 { "" } else { "s" });
    for (i, v) in vms.iter().enumerate() {
        let sep = if i == 0 { "" } else { ", " };
        let _ = write!(out, "{sep}{} ({})", v.name, v.state.map_or("incomplete", |s| s.as_str()));
    }
    out
}

#[tool_router(router = vm_tools, vis = "pub(super)")]
impl KvmMcp {
    /// The defined VMs: state, vCPUs, memory, uptime, QEMU pid.
    #[tool(title = "List VMs", annotations(read_only_hint = true, open_world_hint = false), output_schema = out::<VmList>())]
    async fn list_vms(&self, Parameters(a): Parameters<ListVmsArgs>) -> ToolResult<VmList> {
        let mut vms = if a.no_cache { self.ops().list_live().await } else { self.ops().list() }.map_err(fail)?;
        if vms.iter().any(|v| v.lease_ended) {
            self.ops().reap_ended(&mut vms).await;
            self.vm_set_changed();
        }
        let summary = list_summary(&vms);
        Ok(Reply::new(VmList { vms }, summary))
    }

    /// One VM in full: definition, state and why, pid, uptime, how QEMU ended, serial log path, guest IPs.
    #[tool(title = "Get VM details", annotations(read_only_hint = true, open_world_hint = false), output_schema = out_record("vm"))]
    async fn get_vm(&self, Parameters(a): Parameters<VmNameArgs>) -> ToolResult<VmResult> {
        let vm = self.ops().info_live(&a.name).await.map_err(fail)?;
        let summary = describe(&vm);
        Ok(Reply::new(VmResult { vm }, summary))
    }

    /// Define a new VM; unset arguments take the server's defaults. It starts only with `start: true`.
    #[tool(
        title = "Create VM",
        annotations(read_only_hint = false, destructive_hint = false, idempotent_hint = false, open_world_hint = false),
        output_schema = out::<VmChanged>()
    )]
    async fn create_vm(
        &self,
        Parameters(req): Parameters<CreateRequest>,
        ctx: RequestContext<RoleServer>,
    ) -> ToolResult<VmChanged> {
        let name = req.name.clone().unwrap_or_else(|| self.ops().config().vm.default_name.clone());
        let start = req.start;
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
        let changed = if start { "defined and started" } else { "defined" };
        Ok(Reply::new(VmChanged::new(&vm, changed), summary))
    }

    /// Start a VM and wait until QEMU runs it; the guest then boots (`get_console_log` shows how far).
    #[tool(
        title = "Start VM",
        annotations(read_only_hint = false, destructive_hint = false, idempotent_hint = false, open_world_hint = false),
        output_schema = out::<VmChanged>()
    )]
    async fn start_vm(
        &self,
        Parameters(a): Parameters<VmNameArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> ToolResult<VmChanged> {
        let call = LongCall {
            tool: "start_vm",
            vm: &a.name,
            start: Some(format!("starting VM {:?}", a.name)),
            waiting_for: "QEMU to run",
            if_cancelled: Some("its supervisor goes on starting it; stop_vm undoes that"),
            log: true,
        };
        let (vm, summary) = self.run_long(&ctx, call, |_| self.ops().start(&a.name), describe).await?;
        Ok(Reply::new(VmChanged::new(&vm, "started"), summary))
    }

    /// Stop a VM: power button (then its guest agent if ignored), forced after `timeout_s` or with `force`.
    /// `reason` says how.
    #[tool(
        title = "Stop VM",
        annotations(read_only_hint = false, destructive_hint = true, idempotent_hint = true, open_world_hint = false),
        output_schema = out::<VmChanged>()
    )]
    async fn stop_vm(
        &self,
        Parameters(a): Parameters<StopVmArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> ToolResult<VmChanged> {
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
        let changed = if opts.force { "forced off" } else { "stopped" };
        Ok(Reply::new(VmChanged::new(&vm, changed), summary))
    }

    /// Reset a running VM like its reset button: it reboots at once, losing unsaved data.
    #[tool(
        title = "Reset VM",
        annotations(read_only_hint = false, destructive_hint = true, idempotent_hint = false, open_world_hint = false),
        output_schema = out::<VmChanged>()
    )]
    async fn reboot_vm(
        &self,
        Parameters(a): Parameters<VmNameArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> ToolResult<VmChanged> {
        let vm = self.ops().reboot(&a.name).await.map_err(fail)?;
        let summary = format!("reset; {}", describe(&vm));
        self.logged(&ctx, &a.name, VmChanged::new(&vm, "reset"), summary).await
    }

    /// Pause a running VM's vCPUs; `resume_vm` continues it.
    #[tool(
        title = "Pause VM",
        annotations(read_only_hint = false, destructive_hint = false, idempotent_hint = true, open_world_hint = false),
        output_schema = out::<VmChanged>()
    )]
    async fn pause_vm(
        &self,
        Parameters(a): Parameters<VmNameArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> ToolResult<VmChanged> {
        let vm = self.ops().pause(&a.name).await.map_err(fail)?;
        let summary = describe(&vm);
        self.logged(&ctx, &a.name, VmChanged::new(&vm, "paused"), summary).await
    }

    /// Continue a VM paused by `pause_vm`.
    #[tool(
        title = "Resume VM",
        annotations(read_only_hint = false, destructive_hint = false, idempotent_hint = true, open_world_hint = false),
        output_schema = out::<VmChanged>()
    )]
    async fn resume_vm(
        &self,
        Parameters(a): Parameters<VmNameArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> ToolResult<VmChanged> {
        let vm = self.ops().resume(&a.name).await.map_err(fail)?;
        let summary = describe(&vm);
        self.logged(&ctx, &a.name, VmChanged::new(&vm, "resumed"), summary).await
    }

    /// Delete a VM and the disk images kvm-mcp created for it.
    #[tool(
        title = "Delete VM",
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
