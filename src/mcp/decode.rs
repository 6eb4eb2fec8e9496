//! Tool arguments decoded exactly as a tool call decodes them (the server's
//! `Parameters`: [`super::params::parse`], which names the bad argument), then through the pure
//! conversions and checks the tool runs before it touches a VM. No tool runs. For the
//! fuzz target `mcp_args` and its corpus replay test.

use rmcp::model::JsonObject;
use serde::de::DeserializeOwned;

use super::args::{DeleteVmArgs, ListVmsArgs, StopVmArgs, VmNameArgs};
use super::args_console::{
    ConsoleLogArgs, GuestExecArgs, GuestFileReadArgs, GuestFileWriteArgs, RunInVmArgs, SendKeysArgs, TypeTextArgs,
    VmStatsArgs, WaitConsoleArgs,
};
use super::args_net::{AddPortForwardArgs, GetVmIpArgs, RemovePortForwardArgs};
use super::args_storage::{AttachIsoArgs, CloneVmArgs, ResizeDiskArgs, SnapshotArgs};
use crate::console::log::compile_pattern;
use crate::display::keys;
use crate::ids::VmName;
use crate::ops::CreateRequest;

fn parse<T: DeserializeOwned>(args: &JsonObject) -> Result<T, String> {
    super::params::parse(&serde_json::Value::Object(args.clone()))
}

/// Checks a VM name as every tool does first.
fn name(n: &str) -> Result<(), String> {
    n.parse::<VmName>().map(drop).map_err(|e| e.to_string())
}

/// Decodes `args` for the tool `tool` and runs the argument checks that need no VM.
/// `None` for a tool name the server does not have; otherwise the first refusal, if
/// any, as the message the caller would see.
#[doc(hidden)]
#[must_use]
pub fn decode_tool_arguments(tool: &str, args: &JsonObject) -> Option<Result<(), String>> {
    Some(match tool {
        // Tools without arguments ignore whatever is sent.
        "host_info" | "list_profiles" | "list_images" | "list_isos" | "get_vnc_ports" | "host_stats" => Ok(()),
        "get_vm" | "start_vm" | "reboot_vm" | "pause_vm" | "resume_vm" | "eject_iso" | "reset_vm_disk"
        | "list_snapshots" | "list_port_forwards" | "nic_stats" | "get_vnc_info" | "screenshot_vm" | "guest_ping"
        | "guest_info" => parse::<VmNameArgs>(args).and_then(|a| name(&a.name)),
        "list_vms" => parse::<ListVmsArgs>(args).map(drop),
        "create_vm" => parse::<CreateRequest>(args).and_then(|a| a.name.as_deref().map_or(Ok(()), name)),
        "stop_vm" => parse::<StopVmArgs>(args).and_then(|a| name(&a.name)),
        "delete_vm" => parse::<DeleteVmArgs>(args).and_then(|a| name(&a.name)),
        "attach_iso" => parse::<AttachIsoArgs>(args).and_then(|a| name(&a.name)),
        "clone_vm" => parse::<CloneVmArgs>(args).and_then(|a| name(&a.source).and_then(|()| name(&a.name))),
        "resize_disk" => parse::<ResizeDiskArgs>(args).and_then(|a| name(&a.name)),
        "fork_vm" => parse::<crate::ops::ForkRequest>(args).and_then(|a| name(&a.name)),
        "create_template" => parse::<crate::ops::TemplateRequest>(args).and_then(|a| name(&a.name)),
        "create_snapshot" | "revert_snapshot" | "delete_snapshot" => {
            parse::<SnapshotArgs>(args).and_then(|a| name(&a.name))
        }
        "get_vm_ip" => parse::<GetVmIpArgs>(args).and_then(|a| name(&a.name)),
        "add_port_forward" => parse::<AddPortForwardArgs>(args).and_then(|a| {
            let _ = a.forward();
            name(&a.name)
        }),
        "remove_port_forward" => parse::<RemovePortForwardArgs>(args).and_then(|a| {
            let _ = a.selector();
            name(&a.name)
        }),
        "get_console_log" => parse::<ConsoleLogArgs>(args).and_then(|a| name(&a.name)),
        "wait_for_console" => parse::<WaitConsoleArgs>(args)
            .and_then(|a| name(&a.name).and_then(|()| compile_pattern(&a.pattern).map(drop))),
        "send_keys" => parse::<SendKeysArgs>(args).and_then(|a| {
            name(&a.name)?;
            a.keys.iter().try_for_each(|k| keys::parse_combo(k).map(drop).map_err(|e| e.to_string()))
        }),
        "type_text" => parse::<TypeTextArgs>(args).and_then(|a| {
            name(&a.name).and_then(|()| keys::text_to_keys(&a.text).map(drop).map_err(|e| e.to_string()))
        }),
        "guest_exec" => parse::<GuestExecArgs>(args).and_then(|a| name(&a.name)),
        "run_in_vm" => parse::<RunInVmArgs>(args).map(drop),
        "guest_file_read" => parse::<GuestFileReadArgs>(args).and_then(|a| name(&a.name)),
        "guest_file_write" => parse::<GuestFileWriteArgs>(args).and_then(|a| name(&a.name)),
        "vm_stats" => parse::<VmStatsArgs>(args).and_then(|a| name(&a.name)),
        _ => return None,
    })
}
