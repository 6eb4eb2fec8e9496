//! Host tools: facts about this machine and the available QEMU profiles.

use rmcp::{tool, tool_router};

use super::args::ProfileList;
use super::reply::{Reply, fail, out};
use super::server::KvmMcp;
use crate::ops::HostInfo;

#[tool_router(router = host_tools, vis = "pub(super)")]
impl KvmMcp {
    /// This host: accelerator (kvm or tcg) and why, QEMU version, CPUs, memory, free disk, VM counts.
    #[tool(title = "Get host info", annotations(read_only_hint = true, open_world_hint = false), output_schema = out::<HostInfo>())]
    async fn host_info(&self) -> Result<Reply<HostInfo>, String> {
        let h = self.ops().host_info().await.map_err(fail)?;
        let accel = h.accel.map_or("none usable", |a| a.as_str());
        let summary = format!(
            "accelerator {accel} ({}); {}; {} VMs defined, {} running",
            h.accel_reason, h.qemu_version, h.vms_defined, h.vms_running
        );
        Ok(Reply::new(h, summary))
    }

    /// The QEMU profiles (`os_variant` of `create_vm`): machine, firmware, disk bus, NIC model, display.
    #[tool(title = "List OS profiles", annotations(read_only_hint = true, open_world_hint = false), output_schema = out::<ProfileList>())]
    async fn list_profiles(&self) -> Result<Reply<ProfileList>, String> {
        let profiles = self.ops().list_profiles();
        let names: Vec<&str> = profiles.iter().map(|p| p.name.as_str()).collect();
        let summary = format!("{} profiles: {}", profiles.len(), names.join(", "));
        Ok(Reply::new(ProfileList { profiles }, summary))
    }
}
