//! The storage tools' live paths through a real MCP client (rmcp, in process) against
//! running TCG guests: growing a disk, changing the CD-ROM medium, and a snapshot with
//! RAM state taken, listed, reverted to and deleted, with what the guest sees checked on
//! its serial console and the progress notifications checked on the client.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use kvm_mcp::ops::Ops;
use rmcp::model::{
    CallToolRequest, CallToolResult, ClientConfig, ClientRequest, ProgressNotificationParam, ProgressToken,
    ProtocolVersion, ServerResult,
};
use rmcp::service::{NotificationContext, PeerRequestOptions, RunningService};
use rmcp::{ClientHandler, RoleClient};
use serde_json::{Value, json};

use crate::common::images::{storage_env, type_until};
use crate::common::mcp::{failed, params, serve_in_process, succeeded, text};
use crate::common::vm::{GUEST_DEADLINE, TestEnv};

/// A client that keeps every `notifications/progress` it receives.
#[derive(Clone, Default)]
struct Recorder {
    progress: Arc<Mutex<Vec<ProgressNotificationParam>>>,
}

impl ClientHandler for Recorder {
    async fn on_progress(&self, params: ProgressNotificationParam, _ctx: NotificationContext<RoleClient>) {
        self.progress.lock().expect("progress list").push(params);
    }

    fn get_info(&self) -> ClientConfig {
        let mut info = ClientConfig::default();
        info.protocol_version = ProtocolVersion::V_2025_11_25;
        info
    }
}

impl Recorder {
    /// The progress notifications for `token` received so far, in the order of their
    /// `progress` values (rmcp hands each notification to its own task).
    fn for_token(&self, token: &ProgressToken) -> Vec<ProgressNotificationParam> {
        let mut v: Vec<_> = self
            .progress
            .lock()
            .expect("progress list")
            .iter()
            .filter(|p| &p.progress_token == token)
            .cloned()
            .collect();
        v.sort_by(|a, b| a.progress.total_cmp(&b.progress));
        v
    }

    /// Waits until a progress message for `token` contains `needle`, then returns all of
    /// that token's notifications. They may trail the tool's result by a little.
    async fn wait_for(&self, token: &ProgressToken, needle: &str) -> Vec<ProgressNotificationParam> {
        let start = Instant::now();
        loop {
            let got = self.for_token(token);
            if got.iter().any(|p| p.message.as_deref().is_some_and(|m| m.contains(needle))) {
                return got;
            }
            assert!(
                start.elapsed() < GUEST_DEADLINE,
                "no progress message with {needle:?} for {token:?}; got {got:#?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}

/// An MCP client and server over one `Ops` (the test environment's), joined in
/// process, like `kvm-mcp serve` on stdio.
struct Mcp {
    client: RunningService<RoleClient, Recorder>,
    seen: Recorder,
}

impl Mcp {
    async fn connect(ops: Ops) -> Self {
        let seen = Recorder::default();
        let client = serve_in_process(ops, seen.clone()).await;
        Self { client, seen }
    }

    /// `tools/call`, with the progress token rmcp put on the request; a call that takes
    /// longer than the guest deadline fails the test.
    async fn call(&self, name: &'static str, args: Value) -> (CallToolResult, ProgressToken) {
        let req = ClientRequest::CallToolRequest(CallToolRequest::new(params(name, args)));
        let handle = self
            .client
            .peer()
            .send_request_with_option(req, PeerRequestOptions::with_timeout(GUEST_DEADLINE))
            .await
            .expect("send tools/call");
        let token = handle.progress_token.clone();
        match handle.await_response().await {
            Ok(ServerResult::CallToolResult(r)) => (r, token),
            other => panic!("{name}: unexpected answer {other:?}"),
        }
    }

    /// Calls a tool that must succeed; returns its structured content and summary.
    async fn ok(&self, name: &'static str, args: Value) -> (Value, String) {
        let (r, _) = self.call(name, args).await;
        let summary = text(&r);
        (succeeded(name, r), summary)
    }

    /// Calls a tool that must fail; returns its error text.
    async fn err(&self, name: &'static str, args: Value) -> String {
        failed(name, &self.call(name, args).await.0)
    }

    /// Forces the VM off through `stop_vm` and checks it is off.
    async fn force_off(&self, name: &str) {
        let (stopped, _) = self.ok("stop_vm", json!({ "name": name, "force": true })).await;
        assert_eq!(stopped["state"], "shutoff", "{stopped:#}");
    }
}

/// `create_vm` with `start: true` of a 1 GiB overlay on the environment's master image;
/// returns once the guest's shell answers on the console.
async fn start_overlay_vm(env: &TestEnv, mcp: &Mcp, name: &str) -> Value {
    let args = json!({
        "name": name,
        "disk_source": { "type": "master", "image": "master.qcow2" },
        "disk_size_gib": 1,
        "network": "user",
        "start": true,
    });
    let (created, _) = mcp.ok("create_vm", args).await;
    assert_eq!(created["state"], "running", "{created:#}");
    env.wait_console(name, "FIXTURE-READY", 1).await;
    type_until(env, name, "echo SHELL-UP", "\nSHELL-UP").await;
    mcp.ok("get_vm", json!({ "name": name })).await.0
}

/// The first CD-ROM drive in a VM's `disks` as a tool result shows them.
fn cdrom(vm: &Value) -> &Value {
    vm["vm"]["disks"].as_array().and_then(|d| d.iter().find(|d| d["media"] == "cdrom")).expect("a CD-ROM drive")
}

/// Types a command that prints `<tag>-<n>`, n being how often the install ISO's
/// volume descriptor is found on /dev/sr0 (1 with the ISO in, 0 with the drive empty),
/// until `<tag>-<expect>` shows up. A read that misses right after a change is retried,
/// not failed: QEMU's ATAPI model reports a new medium as NOT READY once, and the guest
/// may notice the change late.
async fn guest_reads_iso(env: &TestEnv, vm: &str, tag: &str, expect: u32) {
    let line = format!("echo {tag}-$(dd if=/dev/sr0 bs=2048 skip=16 count=1 2>/dev/null | grep -c FIXTURE-ISO)");
    type_until(env, vm, &line, &format!("{tag}-{expect}")).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mcp_live_resize_disk_is_seen_by_the_guest() {
    let env = storage_env(json!({}));
    let mcp = Mcp::connect(env.ops.clone()).await;
    let vm = start_overlay_vm(&env, &mcp, "mgrow").await;
    let disk = vm["vm"]["disks"][0]["path"].as_str().expect("disk path").to_owned();
    type_until(&env, "mgrow", "echo VDA-BEFORE-$(cat /sys/block/vda/size)", "VDA-BEFORE-2097152").await;

    let (grown, summary) = mcp.ok("resize_disk", json!({ "name": "mgrow", "size_gib": 2 })).await;
    assert_eq!((&grown["state"], &grown["changed"]), (&json!("running"), &json!("disk 0 grown to 2 GiB")), "{grown:#}");
    assert!(summary.contains("grown to 2 GiB"), "{summary}");
    type_until(&env, "mgrow", "echo VDA-AFTER-$(cat /sys/block/vda/size)", "VDA-AFTER-4194304").await;

    let (images, _) = mcp.ok("list_images", json!({})).await;
    let image = images["images"].as_array().and_then(|i| i.iter().find(|i| i["path"] == disk.as_str()));
    let image = image.unwrap_or_else(|| panic!("{disk} not in {images:#}"));
    assert_eq!(image["virtual_size_bytes"], json!(2u64 << 30), "{image:#}");
    assert_eq!(image["used_by"], json!(["mgrow"]), "{image:#}");

    let msg = mcp.err("resize_disk", json!({ "name": "mgrow", "size_gib": 1 })).await;
    assert!(msg.contains("only grow"), "{msg}");
    type_until(&env, "mgrow", "echo VDA-LAST-$(cat /sys/block/vda/size)", "VDA-LAST-4194304").await;
    mcp.force_off("mgrow").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mcp_live_eject_and_attach_iso_change_what_the_guest_reads() {
    let env = storage_env(json!({}));
    let mcp = Mcp::connect(env.ops.clone()).await;
    let disk = env.disk("mmedia");
    mcp.ok("create_vm", json!({ "name": "mmedia", "disk": disk, "network": "user" })).await;
    let (vm, _) = mcp.ok("attach_iso", json!({ "name": "mmedia", "iso": "install.iso" })).await;
    assert_eq!(vm["state"], "shutoff", "{vm:#}");
    let (vm, _) = mcp.ok("start_vm", json!({ "name": "mmedia" })).await;
    assert_eq!(vm["state"], "running", "{vm:#}");
    env.wait_console("mmedia", "FIXTURE-READY", 1).await;
    guest_reads_iso(&env, "mmedia", "CD-A", 1).await;

    let (vm, summary) = mcp.ok("eject_iso", json!({ "name": "mmedia" })).await;
    let (info, _) = mcp.ok("get_vm", json!({ "name": "mmedia" })).await;
    assert_eq!((&vm["state"], &cdrom(&info)["ejected"]), (&json!("running"), &json!(true)), "{info:#}");
    assert!(summary.contains("ejected"), "{summary}");
    guest_reads_iso(&env, "mmedia", "CD-B", 0).await;
    let (isos, _) = mcp.ok("list_isos", json!({})).await;
    assert_eq!(isos["isos"][0]["used_by"], json!([]), "{isos:#}");

    let msg = mcp.err("attach_iso", json!({ "name": "mmedia" })).await;
    assert!(msg.contains("default_iso"), "{msg}");
    let msg = mcp.err("attach_iso", json!({ "name": "mmedia", "iso": "/etc/passwd" })).await;
    assert!(msg.contains("/etc/passwd") || msg.contains("iso"), "{msg}");
    guest_reads_iso(&env, "mmedia", "CD-C", 0).await;

    let (attached, summary) = mcp.ok("attach_iso", json!({ "name": "mmedia", "iso": "install.iso" })).await;
    assert_eq!(attached["changed"], "ISO attached", "{attached:#}");
    let (vm, _) = mcp.ok("get_vm", json!({ "name": "mmedia" })).await;
    let iso = env.dir.path().join("isos/install.iso");
    assert_eq!(cdrom(&vm)["path"], json!(iso), "{vm:#}");
    assert_ne!(cdrom(&vm)["ejected"], json!(true), "{vm:#}");
    assert!(summary.contains("attached") && summary.contains("running"), "{summary}");
    guest_reads_iso(&env, "mmedia", "CD-D", 1).await;
    let (isos, _) = mcp.ok("list_isos", json!({})).await;
    assert_eq!(isos["isos"][0]["used_by"], json!(["mmedia"]), "{isos:#}");
    mcp.force_off("mmedia").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mcp_live_snapshot_with_ram_reverts_a_file_written_after_it() {
    let env = storage_env(json!({}));
    let mcp = Mcp::connect(env.ops.clone()).await;
    start_overlay_vm(&env, &mcp, "msnap").await;
    let (listed, _) = mcp.ok("list_snapshots", json!({ "name": "msnap" })).await;
    assert_eq!(listed["snapshots"], json!([]), "{listed:#}");

    let (r, token) = mcp.call("create_snapshot", json!({ "name": "msnap", "snapshot": "before" })).await;
    assert_ne!(r.is_error, Some(true), "create_snapshot failed: {}", text(&r));
    let summary = text(&r);
    assert!(summary.contains("with RAM state"), "{summary}");
    let snap = r.structured_content.expect("structured content");
    assert_eq!((&snap["name"], &snap["snapshot"]["name"]), (&json!("msnap"), &json!("before")), "{snap:#}");
    assert_eq!(snap["snapshot"]["live"], true, "{snap:#}");
    assert!(snap["snapshot"]["vm_state_bytes"].as_u64().is_some_and(|b| b > 0), "{snap:#}");
    let progress = mcp.seen.wait_for(&token, "saved (with RAM state)").await;
    assert!(progress.len() >= 3, "the start, the job's own steps or heartbeats, the summary: {progress:#?}");
    let values: Vec<f64> = progress.iter().map(|p| p.progress).collect();
    let counted: Vec<f64> = (1..=u32::try_from(values.len()).expect("count")).map(f64::from).collect();
    assert_eq!(values, counted, "progress counts up by one: {progress:#?}");
    let first = progress[0].message.as_deref().unwrap_or_default();
    assert!(first.contains("saving snapshot \"before\""), "{progress:#?}");
    let last = progress.last().and_then(|p| p.message.as_deref()).unwrap_or_default();
    assert!(last.contains("saved (with RAM state)"), "{progress:#?}");

    let (listed, summary) = mcp.ok("list_snapshots", json!({ "name": "msnap" })).await;
    let snaps = listed["snapshots"].as_array().expect("snapshots");
    assert_eq!(snaps.len(), 1, "{listed:#}");
    assert_eq!((&snaps[0]["name"], &snaps[0]["live"]), (&json!("before"), &json!(true)), "{listed:#}");
    assert_eq!(snaps[0]["vm_state_bytes"], snap["snapshot"]["vm_state_bytes"], "{listed:#}");
    assert!(summary.contains("1 snapshot(s): before"), "{summary}");

    type_until(&env, "msnap", "echo late > /late-file && echo WROTE-LATE", "\nWROTE-LATE").await;
    let (r, token) = mcp.call("revert_snapshot", json!({ "name": "msnap", "snapshot": "before" })).await;
    assert_ne!(r.is_error, Some(true), "revert_snapshot failed: {}", text(&r));
    let vm = r.structured_content.expect("structured content");
    assert_eq!(vm["state"], "running", "{vm:#}");
    mcp.seen.wait_for(&token, "reverted to snapshot \"before\"").await;
    type_until(&env, "msnap", "test -e /late-file && echo LATE-STILL-THERE || echo LATE-GONE", "\nLATE-").await;
    let console = env.console("msnap");
    assert!(console.contains("\nLATE-GONE") && !console.contains("\nLATE-STILL-THERE"), "{console}");

    let (deleted, _) = mcp.ok("delete_snapshot", json!({ "name": "msnap", "snapshot": "before" })).await;
    assert_eq!(deleted, json!({ "name": "msnap", "deleted": "before" }));
    let (listed, _) = mcp.ok("list_snapshots", json!({ "name": "msnap" })).await;
    assert_eq!(listed["snapshots"], json!([]), "{listed:#}");
    let msg = mcp.err("revert_snapshot", json!({ "name": "msnap", "snapshot": "before" })).await;
    assert!(msg.contains("list_snapshots"), "{msg}");
    mcp.force_off("msnap").await;
}
