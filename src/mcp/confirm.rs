//! Asking the user before a destructive call: `delete_vm`, `revert_snapshot`,
//! `reset_vm_disk`, `delete_snapshot` and a forced `stop_vm`. The question says what
//! will be lost ("Delete VM web, its overlay (3.1 GiB used) and 2 snapshots?").
//!
//! A 2025 session that declared elicitation is asked with `elicitation/create`; a
//! 2026-07-28 request gets an input-required result and is answered when the client
//! calls again with the user's answer and the `requestState` it was given, which is
//! an opaque handle to the question kept here, tied to the exact tool and arguments.
//! A decline or a cancel changes nothing. `mcp.confirm_destructive` says whether to
//! ask when the client can (default), always (refusing when the client cannot ask),
//! or never.

use std::collections::{BTreeMap, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::os::unix::fs::MetadataExt as _;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rmcp::RoleServer;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ClientResult, ContentBlock, ElicitRequest,
    ElicitRequestParams, ElicitationAction, ElicitationSchema, InputRequest, InputRequiredResult, JsonObject,
    ProtocolVersion, ServerRequest,
};
use rmcp::service::{PeerRequestOptions, RequestContext};

use crate::config::ConfirmDestructive;
use crate::ops::Ops;

/// How long the user has to answer.
const ANSWER_TIME: Duration = Duration::from_secs(600);

/// The key of the one input request a confirmation makes.
const INPUT_KEY: &str = "confirm";

/// Questions asked of 2026 clients and not yet answered, at most this many.
const MAX_PENDING: usize = 1024;

/// What the call does now.
pub(super) enum Asked {
    /// Go ahead.
    Go,
    /// Answer with this instead of running the tool.
    Answer(CallToolResponse),
}

/// The 2026 questions awaiting an answer: handle → (what was asked, when).
#[derive(Debug, Default)]
pub(super) struct Pending(Mutex<HashMap<String, (u64, Instant)>>);

impl Pending {
    fn insert(&self, call: u64) -> String {
        let handle = uuid::Uuid::new_v4().simple().to_string();
        let mut map = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        map.retain(|_, (_, at)| now.duration_since(*at) < ANSWER_TIME);
        if map.len() >= MAX_PENDING
            && let Some(oldest) = map.iter().min_by_key(|(_, (_, at))| *at).map(|(k, _)| k.clone())
        {
            map.remove(&oldest);
        }
        map.insert(handle.clone(), (call, now));
        handle
    }

    /// Whether `handle` was given for this very call, and not too long ago; used once.
    fn take(&self, handle: &str, call: u64) -> bool {
        let mut map = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match map.get(handle) {
            Some((c, at)) if *c == call && at.elapsed() < ANSWER_TIME => {
                map.remove(handle);
                true
            }
            _ => false,
        }
    }
}

/// The question for a call that destroys something, or `None` when it does not (or
/// names no VM there is: the tool then fails with its own error).
pub(super) fn question(ops: &Ops, tool: &str, args: &JsonObject) -> Option<String> {
    let text = |k: &str| args.get(k).and_then(serde_json::Value::as_str);
    let flag = |k: &str| args.get(k).and_then(serde_json::Value::as_bool).unwrap_or(false);
    let vm = text("name")?;
    let info = ops.info(vm).ok()?;
    let running = info.state.is_active();
    match tool {
        "delete_vm" => {
            let mut lost = Vec::new();
            if !flag("keep_disks") {
                let used: u64 = info
                    .disks
                    .iter()
                    .filter(|d| d.owned)
                    .filter_map(|d| std::fs::symlink_metadata(&d.path).ok())
                    .map(|m| m.blocks() * 512)
                    .sum();
                if info.disks.iter().any(|d| d.owned) {
                    lost.push(format!("its disk files ({} used)", gib(used)));
                }
                match ops.list_snapshots(vm).map(|s| s.len()) {
                    Ok(0) | Err(_) => {}
                    Ok(1) => lost.push("1 snapshot".into()),
                    Ok(n) => lost.push(format!("{n} snapshots")),
                }
            }
            let what = match lost.len() {
                0 => format!("Delete VM {vm}"),
                _ => format!("Delete VM {vm}, {}", join(&lost)),
            };
            let power = if running { " It is running and will be powered off first." } else { "" };
            let kept = if flag("keep_disks") { " Its disk files are kept." } else { "" };
            Some(format!("{what}?{power}{kept}"))
        }
        "revert_snapshot" => {
            let snap = existing_snapshot(ops, vm, text("snapshot")?)?;
            let ram = if running { " and its running state" } else { "" };
            Some(format!("Revert VM {vm} to snapshot {snap}? What was written to its disk{ram} since then is lost."))
        }
        "delete_snapshot" => {
            let snap = existing_snapshot(ops, vm, text("snapshot")?)?;
            Some(format!("Delete snapshot {snap} of VM {vm}? The VM can no longer go back to it."))
        }
        "reset_vm_disk" => Some(format!(
            "Reset VM {vm}'s disk to its base image? Everything written to it since it was created is lost."
        )),
        "stop_vm" if flag("force") && running => {
            Some(format!("Force VM {vm} off? Like pulling the power: what the guest has not saved is lost."))
        }
        _ => None,
    }
}

/// `snapshot` if the VM has it: a name that is not there is the tool's to refuse, and
/// is never quoted into a question.
fn existing_snapshot<'a>(ops: &Ops, vm: &str, snapshot: &'a str) -> Option<&'a str> {
    ops.list_snapshots(vm).ok()?.iter().any(|s| s.name == snapshot).then_some(snapshot)
}

fn gib(bytes: u64) -> String {
    // Display only: GiB to one decimal.
    #[allow(clippy::cast_precision_loss)]
    let g = bytes as f64 / f64::from(1u32 << 30);
    format!("{g:.1} GiB")
}

fn join(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

/// A hash of the call's tool and arguments, so an answer counts only for the call
/// that was asked about.
fn call_id(request: &CallToolRequestParams) -> u64 {
    let mut h = DefaultHasher::new();
    request.name.hash(&mut h);
    serde_json::to_string(&request.arguments).unwrap_or_default().hash(&mut h);
    h.finish()
}

fn declined(tool: &str, action: &str) -> Asked {
    Asked::Answer(
        CallToolResult::error(vec![ContentBlock::text(format!(
            "{tool} not done: the user was asked and answered {action:?}; nothing changed. \
             Do not call it again unless the user asks for it."
        ))])
        .into(),
    )
}

fn refused(tool: &str, why: &str) -> Asked {
    Asked::Answer(
        CallToolResult::error(vec![ContentBlock::text(format!(
            "{tool} not done: this server asks the user before destructive calls, {why}; nothing changed. \
             Use a client that supports elicitation, or ask the server's operator to set \
             mcp.confirm_destructive to \"when_supported\"."
        ))])
        .into(),
    )
}

fn form(message: String) -> ElicitRequestParams {
    ElicitRequestParams::FormElicitationParams {
        meta: None,
        message,
        requested_schema: ElicitationSchema::new(BTreeMap::new()),
    }
}

fn action_name(action: &ElicitationAction) -> &'static str {
    match action {
        ElicitationAction::Accept => "accept",
        ElicitationAction::Decline => "decline",
        _ => "cancel",
    }
}

/// Asks `message` about `request` as `policy` and the client allow.
pub(super) async fn ask(
    policy: ConfirmDestructive,
    pending: &Pending,
    request: &CallToolRequestParams,
    context: &RequestContext<RoleServer>,
    message: String,
) -> Asked {
    if policy == ConfirmDestructive::Never {
        return Asked::Go;
    }
    let tool = request.name.as_ref();
    let can_ask = context.client_capabilities().is_some_and(|c| c.elicitation.is_some());
    let stateless = context.protocol_version().is_some_and(|v| v.as_str() >= ProtocolVersion::V_2026_07_28.as_str());
    if stateless {
        let call = call_id(request);
        // The answer to a question asked before: it must come with our handle for
        // this very call.
        if let (Some(handle), Some(answer)) =
            (&request.request_state, request.input_responses.as_ref().and_then(|r| r.get(INPUT_KEY)))
            && pending.take(handle, call)
        {
            return match serde_json::from_value::<rmcp::model::ElicitResult>(answer.clone()) {
                Ok(r) if r.action == ElicitationAction::Accept => Asked::Go,
                Ok(r) => declined(tool, action_name(&r.action)),
                Err(_) => declined(tool, "something unreadable"),
            };
        }
        if !can_ask {
            return if policy == ConfirmDestructive::Always {
                refused(tool, "and this request does not declare elicitation")
            } else {
                Asked::Go
            };
        }
        let mut requests = BTreeMap::new();
        requests.insert(INPUT_KEY.to_owned(), InputRequest::Elicitation(ElicitRequest::new(form(message))));
        let handle = pending.insert(call);
        return Asked::Answer(InputRequiredResult::new(Some(requests), Some(handle)).into());
    }
    if !can_ask {
        return if policy == ConfirmDestructive::Always {
            refused(tool, "and this client did not declare elicitation")
        } else {
            Asked::Go
        };
    }
    // Sent as a plain request: rmcp's `create_elicitation` needs its `elicitation`
    // feature, which brings a URL parser and 26 more crates for URL-mode elicitation.
    let mut options = PeerRequestOptions::no_options();
    options.timeout = Some(ANSWER_TIME);
    let asked = match context
        .peer
        .send_request_with_option(ServerRequest::ElicitRequest(ElicitRequest::new(form(message))), options)
        .await
    {
        Ok(handle) => handle.await_response().await,
        Err(e) => Err(e),
    };
    match asked {
        Ok(ClientResult::ElicitResult(r)) if r.action == ElicitationAction::Accept => Asked::Go,
        Ok(ClientResult::ElicitResult(r)) => declined(tool, action_name(&r.action)),
        Ok(_) => refused(tool, "and the client's answer was no elicitation result"),
        Err(e) => refused(tool, &format!("and asking failed ({e})")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_counts_once_and_only_for_its_call() {
        let p = Pending::default();
        let h = p.insert(7);
        assert!(!p.take(&h, 8), "another call");
        assert!(!p.take("made-up", 7), "a handle we never gave");
        assert!(p.take(&h, 7));
        assert!(!p.take(&h, 7), "used already");
    }

    #[test]
    fn pending_questions_are_bounded() {
        let p = Pending::default();
        let first = p.insert(1);
        for i in 0..MAX_PENDING as u64 {
            p.insert(i + 2);
        }
        assert!(p.0.lock().unwrap().len() <= MAX_PENDING);
        assert!(!p.take(&first, 1), "the oldest question made room");
    }

    #[test]
    fn lists_read_as_prose() {
        assert_eq!(join(&["a".into()]), "a");
        assert_eq!(join(&["a".into(), "b".into(), "c".into()]), "a, b and c");
        assert_eq!(gib(3 << 30), "3.0 GiB");
    }
}
