//! Resource updates: which resource URIs a client may watch, and the watcher that
//! tells it when one changed. Two wires share it: `subscriptions/listen` (2026-07-28,
//! one request held open per filter) and `resources/subscribe` (the 2025 revisions, a
//! set kept per session).
//!
//! A watched resource is compared once a second with what it was: `vms://` by the
//! VMs' names, states and reasons, `vm://{name}` by its definition and status (not by
//! its uptime, which moves every second), and `vmstats://{name}` is announced every
//! [`STATS_EVERY`] while the VM runs, since its figures change all the time.

use std::collections::{BTreeSet, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::Duration;

use rmcp::model::SubscriptionFilter;
use tokio::sync::broadcast;
use tokio::time::Instant;

use super::resources::{VM_PREFIX, VMS_URI, VMSTATS_PREFIX};
use crate::ids::VmName;
use crate::ops::Ops;
use crate::state::VmState;

/// How often watched resources are compared.
pub(super) const POLL: Duration = Duration::from_secs(1);

/// How often a running VM's `vmstats://` is announced as updated.
pub(super) const STATS_EVERY: Duration = Duration::from_secs(5);

/// The most resources one subscription (or one 2025 session) watches.
pub(super) const MAX_WATCHED: usize = 64;

/// Why a URI cannot be watched.
pub(super) fn check_uri(uri: &str) -> Result<(), String> {
    let shown = crate::error::quote(uri);
    if uri == VMS_URI {
        return Ok(());
    }
    let name = uri
        .strip_prefix(VMSTATS_PREFIX)
        .or_else(|| uri.strip_prefix(VM_PREFIX))
        .ok_or_else(|| format!("uri {shown} cannot be watched; watch vms://, vm://{{name}} or vmstats://{{name}}"))?;
    VmName::new(name).map(drop).map_err(|e| format!("uri {shown} names no possible VM: {e}"))
}

/// What this server accepts of a `subscriptions/listen` filter: the VM set's list
/// changes and updates of the resources it can watch, at most [`MAX_WATCHED`].
pub(super) fn accepted(requested: &SubscriptionFilter) -> SubscriptionFilter {
    let mut filter = SubscriptionFilter::new();
    if requested.resources_list_changed == Some(true) {
        filter.resources_list_changed = Some(true);
    }
    let uris: Vec<String> = requested
        .resource_subscriptions
        .iter()
        .flatten()
        .filter(|u| check_uri(u).is_ok())
        .take(MAX_WATCHED)
        .cloned()
        .collect();
    if !uris.is_empty() {
        filter.resource_subscriptions = Some(uris);
    }
    filter
}

/// Where a `subscriptions/listen` starts: the watched resources as they were and a
/// receiver of VM-set changes, both taken when the request is accepted, before its
/// acknowledgement goes out, so a change made right after the client saw the
/// acknowledgement is never missed.
#[derive(Debug)]
pub(super) struct Start {
    pub(super) watched: Watched,
    pub(super) changes: broadcast::Receiver<()>,
}

/// The [`Start`]s of listens being acknowledged, keyed by the accepted filter.
#[derive(Debug, Default)]
pub(super) struct Baselines(std::sync::Mutex<HashMap<String, Vec<Start>>>);

/// At most this many baselines wait for their listen (one whose acknowledgement could
/// not be sent is never taken).
const MAX_BASELINES: usize = 64;

impl Baselines {
    pub(super) fn put(&self, filter: &SubscriptionFilter, start: Start) {
        let mut map = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if map.values().map(Vec::len).sum::<usize>() >= MAX_BASELINES {
            map.clear();
        }
        map.entry(key(filter)).or_default().push(start);
    }

    /// The start taken for `filter`, or `fresh()` now.
    pub(super) fn take(&self, filter: &SubscriptionFilter, fresh: impl FnOnce() -> Start) -> Start {
        let mut map = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let k = key(filter);
        let found = map.get_mut(&k).and_then(Vec::pop);
        if map.get(&k).is_some_and(Vec::is_empty) {
            map.remove(&k);
        }
        drop(map);
        found.unwrap_or_else(fresh)
    }
}

fn key(filter: &SubscriptionFilter) -> String {
    serde_json::to_string(filter).unwrap_or_default()
}

/// The URIs a filter watches.
pub(super) fn uris_of(filter: &SubscriptionFilter) -> BTreeSet<String> {
    filter.resource_subscriptions.iter().flatten().cloned().collect()
}

/// A 2025 session's `resources/subscribe` set, what its resources looked like, and
/// whether the task that watches them runs.
#[derive(Debug, Default)]
pub(super) struct SessionWatch {
    uris: BTreeSet<String>,
    watched: Watched,
    running: bool,
}

impl SessionWatch {
    /// Adds `uri` with its current form as the starting point; true when the watching
    /// task is to be started.
    pub(super) fn add(&mut self, ops: &Ops, uri: String) -> Result<bool, String> {
        check_uri(&uri)?;
        if !self.uris.contains(&uri) && self.uris.len() >= MAX_WATCHED {
            return Err(format!(
                "this session already watches {MAX_WATCHED} resources, the most it may; unsubscribe from one first"
            ));
        }
        let _ = self.watched.changed(ops, &BTreeSet::from([uri.clone()]));
        self.uris.insert(uri);
        Ok(!std::mem::replace(&mut self.running, true))
    }

    pub(super) fn remove(&mut self, uri: &str) {
        self.uris.remove(uri);
    }

    /// The watched URIs that changed since the last call.
    pub(super) fn poll(&mut self, ops: &Ops) -> Vec<String> {
        self.watched.changed_among(ops, &self.uris)
    }
}

/// The last seen form of each watched resource.
#[derive(Debug, Default)]
pub(super) struct Watched {
    last: HashMap<String, u64>,
    /// When each running VM's statistics were last announced.
    stats_sent: HashMap<String, Instant>,
}

impl Watched {
    /// Takes the current form of `uris` as the baseline, so only later changes count.
    pub(super) fn new(ops: &Ops, uris: &BTreeSet<String>) -> Self {
        let mut w = Self::default();
        let _ = w.changed(ops, uris);
        w
    }

    /// The URIs among `uris` that changed since the last call, forgetting the others.
    pub(super) fn changed_among(&mut self, ops: &Ops, uris: &BTreeSet<String>) -> Vec<String> {
        self.last.retain(|u, _| uris.contains(u));
        self.stats_sent.retain(|u, _| uris.contains(u));
        self.changed(ops, uris)
    }

    /// The URIs among `uris` that changed since the last call (a URI first seen now is
    /// its own starting point).
    pub(super) fn changed(&mut self, ops: &Ops, uris: &BTreeSet<String>) -> Vec<String> {
        let mut out = Vec::new();
        for uri in uris {
            if let Some(name) = uri.strip_prefix(VMSTATS_PREFIX) {
                let running = ops.info(name).is_ok_and(|i| i.state == VmState::Running);
                let now = Instant::now();
                match self.stats_sent.get(uri) {
                    _ if !running => {
                        self.stats_sent.remove(uri);
                    }
                    Some(at) if now.duration_since(*at) < STATS_EVERY => {}
                    seen => {
                        // The first sighting is the baseline, not an update.
                        if seen.is_some() {
                            out.push(uri.clone());
                        }
                        self.stats_sent.insert(uri.clone(), now);
                    }
                }
                continue;
            }
            let print = fingerprint(ops, uri);
            if self.last.insert(uri.clone(), print).is_some_and(|before| before != print) {
                out.push(uri.clone());
            }
        }
        out
    }
}

/// A hash of what reading `uri` would show, without the parts that move every second.
fn fingerprint(ops: &Ops, uri: &str) -> u64 {
    let mut h = DefaultHasher::new();
    if uri == VMS_URI {
        match ops.list() {
            Ok(vms) => {
                for vm in vms {
                    (vm.name, vm.state, vm.pid, vm.unresponsive_s.is_some()).hash(&mut h);
                }
            }
            Err(e) => e.to_string().hash(&mut h),
        }
    } else if let Some(name) = uri.strip_prefix(VM_PREFIX) {
        match ops.info(name).map(|mut i| {
            i.uptime_s = None;
            serde_json::to_string(&i)
        }) {
            Ok(Ok(text)) => text.hash(&mut h),
            // A VM that does not exist (yet, or any more) is one form of its own.
            _ => "absent".hash(&mut h),
        }
    }
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_resources_with_possible_names_are_watched() {
        assert!(check_uri("vms://").is_ok());
        assert!(check_uri("vm://web-1").is_ok());
        assert!(check_uri("vmstats://web-1").is_ok());
        for bad in ["file:///etc/shadow", "vm://", "vm://../../etc", "vm://-rf", "vms://x", "test://static"] {
            let e = check_uri(bad).unwrap_err();
            assert!(e.contains("uri"), "{bad}: {e}");
        }
        let long = format!("vm://{}", "a".repeat(10_000));
        assert!(check_uri(&long).unwrap_err().len() < 600);
    }

    #[test]
    fn the_accepted_filter_keeps_what_can_be_watched_and_caps_it() {
        let mut requested = SubscriptionFilter::new();
        requested.resources_list_changed = Some(true);
        requested.tools_list_changed = Some(true);
        let mut uris = vec!["vm://a".to_owned(), "file:///etc/passwd".to_owned()];
        uris.extend((0..100).map(|i| format!("vm://v{i}")));
        requested.resource_subscriptions = Some(uris);
        let got = accepted(&requested);
        assert_eq!(got.resources_list_changed, Some(true));
        assert_eq!(got.tools_list_changed, None, "the tool list never changes");
        let got_uris = got.resource_subscriptions.unwrap();
        assert_eq!(got_uris.len(), MAX_WATCHED);
        assert_eq!(got_uris[0], "vm://a");
        assert!(!got_uris.iter().any(|u| u.starts_with("file:")));
        assert_eq!(accepted(&SubscriptionFilter::new()), SubscriptionFilter::new());
    }
}
