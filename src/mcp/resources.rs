//! Resources: `vms://` (the VM list), `vm://{name}` (one VM's definition and live
//! status) and `vmstats://{name}` (a running VM's figures), all JSON. Each defined VM
//! is listed as a resource, so `notifications/resources/list_changed` tells clients
//! when VMs come and go.

use rmcp::ErrorData as McpError;
use rmcp::model::{
    ListResourceTemplatesResult, ListResourcesResult, ReadResourceResult, Resource, ResourceContents, ResourceTemplate,
};

use super::reply::fail;
use crate::error::ErrorKind;
use crate::ops::Ops;

const JSON: &str = "application/json";
/// The VM list resource.
pub const VMS_URI: &str = "vms://";
/// Prefix of one VM's resource.
pub const VM_PREFIX: &str = "vm://";
/// Prefix of one VM's statistics resource.
pub const VMSTATS_PREFIX: &str = "vmstats://";

fn internal(e: crate::ops::OpsError) -> McpError {
    McpError::internal_error(fail(e), None)
}

pub(super) fn list(ops: &Ops) -> Result<ListResourcesResult, McpError> {
    let names = ops.vm_names().map_err(internal)?;
    let mut items = vec![
        Resource::new(VMS_URI, "vms")
            .with_title("Defined VMs")
            .with_description("Every defined VM with its state, vCPUs, memory and uptime.")
            .with_mime_type(JSON),
    ];
    items.extend(names.into_iter().map(|n| {
        Resource::new(format!("{VM_PREFIX}{n}"), n.clone())
            .with_description(format!("VM {n:?}: definition and live status."))
            .with_mime_type(JSON)
    }));
    Ok(ListResourcesResult::with_all_items(items))
}

pub(super) fn templates() -> ListResourceTemplatesResult {
    ListResourceTemplatesResult::with_all_items(vec![
        ResourceTemplate::new("vm://{name}", "vm")
            .with_title("One VM")
            .with_description("A VM's definition and live status; {name} as listed by list_vms.")
            .with_mime_type(JSON),
        ResourceTemplate::new(format!("{VMSTATS_PREFIX}{{name}}"), "vmstats")
            .with_title("One VM's figures")
            .with_description(
                "A running VM's CPU (sampled over 0.5 s), memory, disk and NIC figures, as vm_stats returns them.",
            )
            .with_mime_type(JSON),
    ])
}

pub(super) async fn read(ops: &Ops, uri: &str) -> Result<ReadResourceResult, McpError> {
    let body = if uri == VMS_URI {
        serde_json::to_string(&serde_json::json!({ "vms": ops.list().map_err(internal)? }))
    } else if let Some(name) = uri.strip_prefix(VMSTATS_PREFIX) {
        let stats = ops.vm_stats(name, None).await.map_err(|e| match e.kind() {
            ErrorKind::NotFound | ErrorKind::InvalidInput => {
                McpError::resource_not_found(fail(e), Some(serde_json::json!({ "uri": uri })))
            }
            _ => internal(e),
        })?;
        serde_json::to_string(&stats)
    } else if let Some(name) = uri.strip_prefix(VM_PREFIX) {
        let info = ops.info(name).map_err(|e| match e.kind() {
            ErrorKind::NotFound | ErrorKind::InvalidInput => {
                McpError::resource_not_found(fail(e), Some(serde_json::json!({ "uri": uri })))
            }
            _ => internal(e),
        })?;
        serde_json::to_string(&info)
    } else {
        return Err(McpError::resource_not_found(
            format!("no resource {uri:?}; resources are vms://, vm://{{name}} and vmstats://{{name}}"),
            Some(serde_json::json!({ "uri": uri })),
        ));
    }
    .map_err(|e| McpError::internal_error(e.to_string(), None))?;
    Ok(ReadResourceResult::new(vec![ResourceContents::text(body, uri).with_mime_type(JSON)]))
}
