//! Network tools: the guest's IP addresses, port forwards of user-mode NICs, and
//! per-NIC traffic counters. `get_vm_ip` can wait for an address, reporting progress
//! and stopping when the caller cancels.

use super::params::Parameters;
use rmcp::service::RequestContext;
use rmcp::{RoleServer, tool, tool_router};

use super::args::VmNameArgs;
use super::args_net::{AddPortForwardArgs, ForwardList, GetVmIpArgs, NicStatsList, RemovePortForwardArgs};
use super::notify::{Forward, Level, LongCall};
use super::reply::{Reply, ToolResult, fail, out};
use super::server::KvmMcp;
use crate::ops::{IpQuery, IpSource, PortForwardInfo, VmIps};

fn forwards_summary(name: &str, forwards: &[PortForwardInfo]) -> String {
    if forwards.is_empty() {
        return format!("VM {name:?} has no port forwards");
    }
    let items: Vec<String> = forwards
        .iter()
        .map(|f| {
            let state = match f.active {
                Some(true) => ", active",
                Some(false) => ", not listening",
                None => "",
            };
            format!("{} (NIC {}{state})", f.forward, f.nic)
        })
        .collect();
    format!("VM {name:?} forwards {}", items.join(", "))
}

fn ips_summary(ips: &VmIps) -> String {
    let notes = if ips.notes.is_empty() { String::new() } else { format!("; {}", ips.notes.join("; ")) };
    match (ips.ip, ips.source) {
        (Some(ip), Some(IpSource::Slirp)) => format!(
            "no source confirmed an address of VM {:?}; {ip} is only the slirp guess (reach it through a port forward){notes}",
            ips.name
        ),
        (Some(ip), Some(source)) => {
            let source = serde_json::to_value(source).ok().and_then(|v| v.as_str().map(str::to_owned));
            format!("VM {:?} has address {ip} (from {}){notes}", ips.name, source.unwrap_or_default())
        }
        _ => format!("no address of VM {:?} is known{notes}", ips.name),
    }
}

#[tool_router(router = net_tools, vis = "pub(super)")]
impl KvmMcp {
    /// A running VM's IPs per NIC with their source; use `ip` (null with a note when the agent reports none).
    #[tool(title = "Get VM IP addresses", annotations(read_only_hint = true, open_world_hint = false), output_schema = out::<VmIps>())]
    async fn get_vm_ip(
        &self,
        Parameters(a): Parameters<GetVmIpArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> ToolResult<VmIps> {
        let call = LongCall {
            tool: "get_vm_ip",
            vm: &a.name,
            start: None,
            waiting_for: "an address of the guest",
            if_cancelled: Some("nothing changed"),
            log: false,
        };
        let (name, query) = (&a.name, IpQuery { wait_s: a.wait_s, all_sources: a.all_sources });
        let op = |p: Forward| async move { self.ops().get_vm_ip(name, query, &*p).await };
        let (ips, summary) = self.run_long(&ctx, call, op, ips_summary).await?;
        Ok(Reply::new(ips, summary))
    }

    /// Forward a host port to a guest port on a "user" NIC, live and for later starts.
    #[tool(
        title = "Add port forward",
        annotations(read_only_hint = false, destructive_hint = false, idempotent_hint = false, open_world_hint = false),
        output_schema = out::<ForwardList>()
    )]
    async fn add_port_forward(
        &self,
        Parameters(a): Parameters<AddPortForwardArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> ToolResult<ForwardList> {
        let fwd = a.forward();
        let forwards = self.ops().add_port_forward(&a.name, a.nic, fwd).await.map_err(fail)?;
        self.log(&ctx, Level::Info, &a.name, format!("port forward {fwd} added")).await;
        let summary = format!("added {fwd}; {}", forwards_summary(&a.name, &forwards));
        Ok(Reply::new(ForwardList { name: a.name, forwards }, summary))
    }

    /// Remove a port forward by its host port, live and for later starts.
    #[tool(
        title = "Remove port forward",
        annotations(read_only_hint = false, destructive_hint = true, idempotent_hint = false, open_world_hint = false),
        output_schema = out::<ForwardList>()
    )]
    async fn remove_port_forward(
        &self,
        Parameters(a): Parameters<RemovePortForwardArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> ToolResult<ForwardList> {
        let sel = a.selector();
        let forwards = self.ops().remove_port_forward(&a.name, a.nic, sel).await.map_err(fail)?;
        self.log(&ctx, Level::Info, &a.name, format!("port forward {sel} removed")).await;
        let summary = format!("removed {sel}; {}", forwards_summary(&a.name, &forwards));
        Ok(Reply::new(ForwardList { name: a.name, forwards }, summary))
    }

    /// A VM's port forwards, each marked active when QEMU listens on it now.
    #[tool(title = "List port forwards", annotations(read_only_hint = true, open_world_hint = false), output_schema = out::<ForwardList>())]
    async fn list_port_forwards(&self, Parameters(a): Parameters<VmNameArgs>) -> ToolResult<ForwardList> {
        let forwards = self.ops().list_port_forwards(&a.name).await.map_err(fail)?;
        let summary = forwards_summary(&a.name, &forwards);
        Ok(Reply::new(ForwardList { name: a.name, forwards }, summary))
    }

    /// A VM's NICs with traffic counters of bridged NICs while it runs (`rx_*`: received by the guest).
    #[tool(title = "Get NIC statistics", annotations(read_only_hint = true, open_world_hint = false), output_schema = out::<NicStatsList>())]
    async fn nic_stats(&self, Parameters(a): Parameters<VmNameArgs>) -> ToolResult<NicStatsList> {
        let nics = self.ops().nic_stats(&a.name).await.map_err(fail)?;
        let counted = nics.iter().filter(|n| n.counters.is_some()).count();
        let summary = format!("VM {:?}: {} NIC(s), {counted} with counters", a.name, nics.len());
        Ok(Reply::new(NicStatsList { name: a.name, nics }, summary))
    }
}
