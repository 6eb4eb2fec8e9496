//! The rmcp server handler: capabilities, protocol versions, tool dispatch with metrics
//! and drain accounting, `logging/setLevel`, and the per-session task that forwards
//! "the set of VMs changed" as `notifications/resources/list_changed`.
// The logging capability and `logging/setLevel` are deprecated by SEP-2577 for the 2026
// revision; the revisions this server speaks still define them.
#![allow(deprecated)]

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rmcp::handler::server::tool::{ToolCallContext, ToolRouter};
use rmcp::model::{
    CacheScope, CallToolRequestParams, CallToolResponse, CallToolResult, CancelTaskParams, ContentBlock,
    CreateTaskResult, DiscoverResult, GetTaskParams, GetTaskResult, Implementation, JsonObject,
    ListResourceTemplatesResult, ListResourcesResult, PaginatedRequestParams, ProtocolVersion,
    ReadResourceRequestParams, ReadResourceResponse, ServerCapabilities, ServerConfig, SetLevelRequestParams,
    SubscribeRequestParams, SubscriptionFilter, Tool, UnsubscribeRequestParams, UpdateTaskParams,
};
use rmcp::service::{NotificationContext, RequestContext, SubscriptionContext};
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler};
use tokio::sync::Notify;

use super::confirm::{self, Asked};
use super::log::{self, Level};
use super::subscribe::{self, Watched};
use super::tasks::{self, Outcome, Tasks};
use super::{params, schema};
use crate::metrics::{self, CallOutcome};
use crate::ops::{Ops, VmSetWatcher};

/// The protocol revisions this server speaks, each with its own wire (see [`Wire`]).
/// A client asking for another one is answered with the newest of these.
/// 2026-07-28 has no handshake: its requests carry their revision in `_meta`, and an
/// `initialize` asking for it is answered with 2025-11-25, the newest with a handshake.
pub static SUPPORTED_PROTOCOL_VERSIONS: [ProtocolVersion; 5] = [
    ProtocolVersion::V_2024_11_05,
    ProtocolVersion::V_2025_03_26,
    ProtocolVersion::V_2025_06_18,
    ProtocolVersion::V_2025_11_25,
    ProtocolVersion::V_2026_07_28,
];

/// What a session's protocol revision has on the wire, for the items that came later.
#[derive(Debug, Clone, Copy)]
struct Wire {
    /// `outputSchema`, `structuredContent` and `title` (2025-06-18).
    structured: bool,
    /// Tool `annotations` (2025-03-26).
    annotations: bool,
    /// The 2026-07-28 wire: cache hints on list and read results, per-request log levels.
    stateless: bool,
}

impl Wire {
    fn of(context: &RequestContext<RoleServer>) -> Self {
        // Revision names are dates, so they order as strings. A 2026 request names its
        // revision in `_meta`; a session's is the one its handshake agreed.
        let version = context.protocol_version();
        let at_least = |v: &ProtocolVersion| version.as_ref().is_none_or(|n| n.as_str() >= v.as_str());
        Self {
            structured: at_least(&ProtocolVersion::V_2025_06_18),
            annotations: at_least(&ProtocolVersion::V_2025_03_26),
            stateless: at_least(&ProtocolVersion::V_2026_07_28),
        }
    }

    /// How long a 2026 client may keep a result: `ttl` for what one server process never
    /// changes (tools, templates, discovery), nothing for what follows the VMs. Earlier
    /// revisions have no such fields.
    fn hints(self, ttl: Duration) -> (Option<u64>, Option<CacheScope>) {
        if self.stateless {
            (Some(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)), Some(CacheScope::Public))
        } else {
            (None, None)
        }
    }

    fn tool(self, mut tool: Tool) -> Tool {
        if !self.structured {
            tool.title = None;
            tool.output_schema = None;
        }
        if !self.annotations {
            tool.annotations = None;
        }
        tool
    }

    /// Before structured output, the result's JSON goes into `content` as text.
    fn result(self, mut result: CallToolResult) -> CallToolResult {
        if !self.structured
            && let Some(value) = result.structured_content.take()
        {
            result.content.push(ContentBlock::text(value.to_string()));
        }
        result
    }
}

/// How long a 2026 client may cache the tool list, the resource templates and the
/// discovery result: they change only with the server's version.
const STATIC_TTL: Duration = Duration::from_secs(3600);

/// How long a task whose tool does not watch cancellation gets to end on its own after
/// `tasks/cancel` before the task is settled as cancelled (the tool then finishes in the
/// background).
const TASK_CANCEL_GRACE: Duration = Duration::from_secs(2);

/// Time given to the last responses to be written before sessions close on shutdown.
const RESPONSE_FLUSH_GRACE: Duration = Duration::from_millis(500);

/// How often the VM set is compared when nothing in this process nudged it.
const VM_SET_POLL: Duration = Duration::from_secs(2);

const INSTRUCTIONS: &str = "Manages QEMU virtual machines on this host. `list_vms` shows what \
exists; `create_vm` defines a VM (defaults come from the server's config), `start_vm` and \
`stop_vm` run and stop it, `get_vm` shows details including the serial console log path. \
Failures explain what to do next.";

/// Counts tool calls in flight so a shutdown can wait for them.
#[derive(Debug, Default)]
pub struct InFlight {
    count: AtomicUsize,
    draining: AtomicBool,
    idle: Notify,
}

/// Decrements [`InFlight`] when a call ends, however it ends.
struct InFlightGuard<'a>(&'a InFlight);

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl InFlight {
    fn enter(&self) -> InFlightGuard<'_> {
        self.count.fetch_add(1, Ordering::AcqRel);
        InFlightGuard(self)
    }

    /// Refuses new tool calls from now on.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Calls running now.
    #[must_use]
    pub fn count(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// Refuses new calls, waits (up to `limit`) for running ones to finish, then gives
    /// their responses a moment to leave before the caller closes the sessions.
    /// Returns false when calls were still running at the limit.
    pub async fn drain(&self, limit: Duration) -> bool {
        self.start_draining();
        let had_calls = self.count() > 0;
        let idle = self.wait_idle(limit).await;
        if had_calls {
            // The handler returning is not the response being written: let it go out.
            tokio::time::sleep(RESPONSE_FLUSH_GRACE).await;
        }
        if !idle {
            tracing::warn!(calls = self.count(), "drain timeout passed; leaving calls unfinished");
        }
        idle
    }

    /// Waits until no call is running, or `limit` passes; true when idle.
    pub async fn wait_idle(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let idle = self.idle.notified();
            if self.count() == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                return self.count() == 0;
            }
        }
    }
}

/// What every session of one server process shares.
#[derive(Debug)]
pub struct Shared {
    pub(super) ops: Ops,
    pub(super) tools: ToolRouter<KvmMcp>,
    pub(super) watcher: VmSetWatcher,
    /// Tool calls in flight, for graceful shutdown.
    pub inflight: InFlight,
    /// Destructive calls asked about and not yet answered (2026 clients).
    pub(super) questions: confirm::Pending,
    /// Starting points of `subscriptions/listen` requests being acknowledged.
    pub(super) baselines: subscribe::Baselines,
    /// Long calls running as tasks, and the records of earlier ones.
    pub(super) tasks: Tasks,
}

impl Shared {
    /// The operations every session calls.
    #[must_use]
    pub fn ops(&self) -> &Ops {
        &self.ops
    }
}

/// One MCP session's handler. Cheap to clone; the HTTP transport makes one per session.
#[derive(Debug, Clone)]
pub struct KvmMcp {
    pub(super) shared: Arc<Shared>,
    /// The session's `logging/setLevel`, as [`Level`] rank.
    pub(super) log_level: Arc<AtomicU8>,
    /// The session's `resources/subscribe` set (2025 revisions).
    subscribed: Arc<std::sync::Mutex<subscribe::SessionWatch>>,
}

impl KvmMcp {
    /// Shared state for a server process: call inside a tokio runtime (it starts the
    /// VM-set watcher).
    #[must_use]
    pub fn shared(ops: Ops) -> Arc<Shared> {
        let watcher = ops.watch_vm_set(VM_SET_POLL);
        let tasks = Tasks::new(&ops.config().state_dir);
        Arc::new(Shared {
            ops,
            tools: Self::router(),
            watcher,
            inflight: InFlight::default(),
            questions: confirm::Pending::default(),
            baselines: subscribe::Baselines::default(),
            tasks,
        })
    }

    /// Every tool. A later area adds its tools in a file of its own with
    /// `#[tool_router(router = <area>_tools, vis = "pub(super)")] impl KvmMcp { … }`
    /// and adds `+ Self::<area>_tools()` here.
    #[must_use]
    pub fn router() -> ToolRouter<Self> {
        let mut router =
            Self::vm_tools() + Self::host_tools() + Self::storage_tools() + Self::net_tools() + Self::console_tools();
        for route in router.map.values_mut() {
            unwrap_tool_docs(&mut route.attr);
        }
        router
    }

    /// A handler for one new session.
    #[must_use]
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared, log_level: Arc::new(AtomicU8::new(Level::DEFAULT.rank())), subscribed: Arc::default() }
    }

    /// The operations this server calls.
    #[must_use]
    pub fn ops(&self) -> &Ops {
        &self.shared.ops
    }

    /// Sends `message` as `notifications/message` if the request's level lets it
    /// through: a 2026 request's `_meta` log level (none: no messages at all), else the
    /// session's `logging/setLevel`.
    pub(super) async fn log(&self, ctx: &RequestContext<RoleServer>, level: Level, vm: &str, message: String) {
        let threshold = if Wire::of(ctx).stateless {
            match ctx.meta.log_level() {
                Some(l) => Level::from_mcp(l).rank(),
                None => return,
            }
        } else {
            self.log_level.load(Ordering::Relaxed)
        };
        if level.rank() >= threshold {
            log::send_log(&ctx.peer, level, vm, message).await;
        }
    }

    /// Where a listen on `filter` starts from: its resources as they are now, and the
    /// VM-set changes from now on.
    fn listen_start(&self, filter: &SubscriptionFilter) -> subscribe::Start {
        subscribe::Start {
            watched: Watched::new(self.ops(), &subscribe::uris_of(filter)),
            changes: self.shared.watcher.subscribe(),
        }
    }

    /// Watches the session's `resources/subscribe` set until the session ends, sending
    /// `notifications/resources/updated` for each resource that changed.
    fn watch_subscriptions(&self, peer: rmcp::Peer<RoleServer>) {
        let (subscribed, ops) = (self.subscribed.clone(), self.ops().clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(subscribe::POLL).await;
                if peer.is_transport_closed() {
                    break;
                }
                let changed = subscribed.lock().unwrap_or_else(std::sync::PoisonError::into_inner).poll(&ops);
                for uri in changed {
                    let update = rmcp::model::ResourceUpdatedNotificationParam::new(uri);
                    if peer.notify_resource_updated(update).await.is_err() {
                        return;
                    }
                }
            }
        });
    }

    /// Tells the VM-set watcher to look now (after a create or delete).
    pub(super) fn vm_set_changed(&self) {
        self.shared.watcher.nudge();
    }
}

/// Joins the lines of a doc comment wrapped for the source file into flowing text,
/// keeping paragraph breaks: descriptions are read by models, not by rustfmt.
fn unwrap_doc(text: &str) -> String {
    let paragraphs: Vec<String> =
        text.split("\n\n").map(|p| p.lines().map(str::trim).collect::<Vec<_>>().join(" ")).collect();
    paragraphs.join("\n\n")
}

fn unwrap_descriptions(map: &mut JsonObject) {
    for (key, value) in map.iter_mut() {
        match value {
            serde_json::Value::String(s) if key == "description" => *s = unwrap_doc(s),
            serde_json::Value::Object(m) => unwrap_descriptions(m),
            serde_json::Value::Array(items) => {
                for m in items.iter_mut().filter_map(serde_json::Value::as_object_mut) {
                    unwrap_descriptions(m);
                }
            }
            _ => {}
        }
    }
}

fn unwrap_tool_docs(tool: &mut Tool) {
    if let Some(d) = &tool.description {
        tool.description = Some(unwrap_doc(d).into());
    }
    let input = Arc::make_mut(&mut tool.input_schema);
    unwrap_descriptions(input);
    schema::standardise(input, schema::Side::Input);
    if let Some(output) = &mut tool.output_schema {
        let output = Arc::make_mut(output);
        unwrap_descriptions(output);
        schema::standardise(output, schema::Side::Output);
    }
}

/// A routed tool call's answer as the client sees it: argument errors become tool
/// errors, error text is clipped, and older revisions get the JSON as text.
fn finish_call(wire: Wire, result: Result<CallToolResponse, McpError>) -> Result<CallToolResponse, McpError> {
    match result {
        // Wrong arguments are the model's to fix: it sees tool errors, not protocol errors.
        Err(e) => params::into_tool_error(e).map(|r| wire.result(r).into()),
        Ok(CallToolResponse::Complete(mut r)) => {
            params::clip_error_text(&mut r);
            Ok(CallToolResponse::Complete(wire.result(r)))
        }
        other => other,
    }
}

impl KvmMcp {
    /// Runs a long call as a task: returns its `CreateTaskResult` at once and runs the
    /// tool on the runtime with the task's own cancellation and progress. Too many
    /// running tasks is a tool error; `None` when the task record cannot be written: the
    /// call then runs plainly.
    fn start_task(
        &self,
        name: Cow<'static, str>,
        vm: String,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Option<CallToolResponse> {
        let started = match self.shared.tasks.create(&name, &vm) {
            Ok(s) => s,
            Err(e @ tasks::CreateError::Busy) => {
                metrics::observe_tool_call(&name, CallOutcome::ToolError, Duration::ZERO);
                return Some(CallToolResult::error(vec![ContentBlock::text(format!("{name}: {e}"))]).into());
            }
            Err(e) => {
                let e = crate::error::chain(&e);
                tracing::warn!(tool = %name, "{e}; running the call without a task");
                return None;
            }
        };
        let wire = Wire::of(&context);
        let mut ctx = context;
        ctx.ct = started.ct.clone();
        ctx.extensions.insert(started.progress.clone());
        let (id, ct) = (started.id, started.ct);
        let this = self.clone();
        tokio::spawn(async move {
            let shared = this.shared.clone();
            let _guard = shared.inflight.enter();
            let begun = Instant::now();
            let call = {
                let this = this.clone();
                tokio::spawn(async move {
                    // Counted on its own: after a cancel it may outlive the task.
                    let _guard = this.shared.inflight.enter();
                    finish_call(wire, this.shared.tools.call(ToolCallContext::new(&this, request, ctx)).await)
                })
            };
            tokio::pin!(call);
            let waited = tokio::select! {
                r = &mut call => Some(r),
                () = async { ct.cancelled().await; tokio::time::sleep(TASK_CANCEL_GRACE).await } => None,
            };
            let (outcome, message, metric) = match waited {
                Some(Ok(Ok(CallToolResponse::Complete(r)))) if ct.is_cancelled() && r.is_error == Some(true) => {
                    let text = tasks::text_of(&r);
                    let message = if text.starts_with(&format!("{name} cancelled:")) {
                        text
                    } else {
                        this.cancel_text(&name, &vm, &text)
                    };
                    (Outcome::Cancelled, message, CallOutcome::Cancelled)
                }
                Some(Ok(Ok(CallToolResponse::Complete(r)))) => {
                    let metric = if r.is_error == Some(true) { CallOutcome::ToolError } else { CallOutcome::Ok };
                    (Outcome::completed(&r), tasks::text_of(&r), metric)
                }
                Some(Ok(Ok(_))) => {
                    let e = McpError::internal_error(format!("{name} gave an answer a task cannot carry"), None);
                    (Outcome::failed(&e), e.message.to_string(), CallOutcome::ProtocolError)
                }
                Some(Ok(Err(e))) => (Outcome::failed(&e), e.message.to_string(), CallOutcome::ProtocolError),
                Some(Err(join)) => {
                    let e = McpError::internal_error(format!("{name} ended abnormally: {join}"), None);
                    (Outcome::failed(&e), e.message.to_string(), CallOutcome::ProtocolError)
                }
                None => {
                    let note = "the operation could not be interrupted and goes on in the background; its result is \
                                not kept, check with get_vm";
                    (Outcome::Cancelled, this.cancel_text(&name, &vm, note), CallOutcome::Cancelled)
                }
            };
            let elapsed = begun.elapsed();
            metrics::observe_tool_call(&name, metric, elapsed);
            tracing::debug!(tool = %name, task = %id, outcome = metric.as_str(), ms = elapsed.as_secs_f64() * 1e3, "task");
            shared.tasks.finish(id, outcome, Some(message));
        });
        Some(CallToolResponse::Task(CreateTaskResult::new(started.task)))
    }
}

fn outcome_of(result: &Result<CallToolResponse, McpError>, cancelled: bool) -> CallOutcome {
    match result {
        _ if cancelled => CallOutcome::Cancelled,
        Err(_) => CallOutcome::ProtocolError,
        Ok(CallToolResponse::Complete(r)) if r.is_error == Some(true) => CallOutcome::ToolError,
        Ok(_) => CallOutcome::Ok,
    }
}

impl ServerHandler for KvmMcp {
    fn get_info(&self) -> ServerConfig {
        let mut info = ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_resources()
                .enable_resources_list_changed()
                .enable_resources_subscribe()
                .enable_logging()
                .enable_tasks()
                .build(),
        )
        .with_server_info(Implementation::new("kvm-mcp", env!("CARGO_PKG_VERSION")))
        .with_instructions(INSTRUCTIONS.to_owned());
        info.protocol_version = ProtocolVersion::V_2025_11_25;
        info
    }

    fn supported_protocol_versions(&self) -> Cow<'static, [ProtocolVersion]> {
        Cow::Borrowed(&SUPPORTED_PROTOCOL_VERSIONS)
    }

    async fn discover(&self, _context: RequestContext<RoleServer>) -> Result<DiscoverResult, McpError> {
        let mut result = DiscoverResult::from_server_info(SUPPORTED_PROTOCOL_VERSIONS.to_vec(), self.get_info());
        result.ttl_ms = u64::try_from(STATIC_TTL.as_millis()).unwrap_or(u64::MAX);
        result.cache_scope = CacheScope::Public;
        Ok(result)
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        // Client-chosen names must not mint metric series: unknown ones share a label.
        let name = if self.shared.tools.has_route(&request.name) { request.name.clone() } else { "(unknown)".into() };
        // Counted before the draining check, so a drain that starts now waits for it.
        let _guard = self.shared.inflight.enter();
        if self.shared.inflight.draining.load(Ordering::Acquire) {
            metrics::observe_tool_call(&name, CallOutcome::ToolError, Duration::ZERO);
            return Ok(CallToolResult::error(vec![ContentBlock::text(
                "the server is shutting down; retry against a new server process",
            )])
            .into());
        }
        let started = Instant::now();
        // The user says yes before anything happens, a task included.
        if let Some(message) = request.arguments.as_ref().and_then(|a| confirm::question(self.ops(), &request.name, a))
        {
            let policy = self.ops().config().mcp.confirm_destructive;
            if let Asked::Answer(answer) =
                confirm::ask(policy, &self.shared.questions, &request, &context, message).await
            {
                let outcome = outcome_of(&Ok(answer.clone()), false);
                metrics::observe_tool_call(&name, outcome, started.elapsed());
                return Ok(answer);
            }
        }
        // A long call from a client that declared tasks runs as one (counted when it ends).
        if context.client_capabilities().is_some_and(|c| c.supports_tasks())
            && let Some(vm) = tasks::long_call(&name, request.arguments.as_ref(), &self.ops().config().vm.default_name)
            && let Some(created) = self.start_task(name.clone(), vm, request.clone(), context.clone())
        {
            return Ok(created);
        }
        let ct = context.ct.clone();
        let wire = Wire::of(&context);
        let result = finish_call(wire, self.shared.tools.call(ToolCallContext::new(self, request, context)).await);
        let outcome = outcome_of(&result, ct.is_cancelled());
        let elapsed = started.elapsed();
        metrics::observe_tool_call(&name, outcome, elapsed);
        tracing::debug!(tool = %name, outcome = outcome.as_str(), ms = elapsed.as_secs_f64() * 1e3, "tool call");
        result
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::ListToolsResult, McpError> {
        let wire = Wire::of(&context);
        let tools = self.shared.tools.list_all().into_iter().map(|t| wire.tool(t)).collect();
        let mut result = rmcp::model::ListToolsResult::with_all_items(tools);
        (result.ttl_ms, result.cache_scope) = wire.hints(STATIC_TTL);
        Ok(result)
    }

    async fn get_task(
        &self,
        request: GetTaskParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<GetTaskResult, McpError> {
        self.shared.tasks.get(&request.task_id, &|vm| self.vm_state(vm)).map(GetTaskResult::new)
    }

    async fn cancel_task(
        &self,
        request: CancelTaskParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        self.shared.tasks.cancel(&request.task_id)
    }

    async fn update_task(
        &self,
        request: UpdateTaskParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        self.shared.tasks.update(&request.task_id)
    }

    fn get_tool(&self, name: &str) -> Option<rmcp::model::Tool> {
        self.shared.tools.get(name).cloned()
    }

    async fn set_level(
        &self,
        request: SetLevelRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        self.log_level.store(Level::from_mcp(request.level).rank(), Ordering::Relaxed);
        Ok(())
    }

    async fn on_initialized(&self, context: NotificationContext<RoleServer>) {
        let mut changes = self.shared.watcher.subscribe();
        let peer = context.peer;
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    got = changes.recv() => match got {
                        Ok(()) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                            if peer.notify_resource_list_changed().await.is_err() {
                                break;
                            }
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                    },
                    () = tokio::time::sleep(Duration::from_secs(5)) => {
                        if peer.is_transport_closed() {
                            break;
                        }
                    }
                }
            }
        });
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, McpError> {
        let mut list = super::resources::list(self.ops())?;
        if !Wire::of(&context).structured {
            list.resources.iter_mut().for_each(|r| r.title = None);
        }
        Ok(list)
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, McpError> {
        let wire = Wire::of(&context);
        let mut list = super::resources::templates();
        if !wire.structured {
            list.resource_templates.iter_mut().for_each(|r| r.title = None);
        }
        (list.ttl_ms, list.cache_scope) = wire.hints(STATIC_TTL);
        Ok(list)
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, McpError> {
        super::resources::read(self.ops(), &request.uri).await.map(Into::into)
    }

    fn accepted_subscription_filter(&self, requested: &SubscriptionFilter) -> Option<SubscriptionFilter> {
        let accepted = subscribe::accepted(requested);
        self.shared.baselines.put(&accepted, self.listen_start(&accepted));
        Some(accepted)
    }

    async fn listen(&self, context: SubscriptionContext) -> Result<(), McpError> {
        let accepted = context.accepted().clone();
        let uris = subscribe::uris_of(&accepted);
        let list_changed = accepted.resources_list_changed == Some(true);
        let sink = context.sink().clone();
        let subscribe::Start { mut watched, mut changes } =
            self.shared.baselines.take(&accepted, || self.listen_start(&accepted));
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + subscribe::POLL, subscribe::POLL);
        loop {
            tokio::select! {
                () = context.cancelled() => return Ok(()),
                got = changes.recv(), if list_changed => match got {
                    Ok(()) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        if sink.notify_resource_list_changed().await.is_err() {
                            return Ok(());
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return Ok(()),
                },
                _ = tick.tick(), if !uris.is_empty() => {
                    for uri in watched.changed(self.ops(), &uris) {
                        if sink.notify_resource_updated(uri).await.is_err() {
                            return Ok(());
                        }
                    }
                }
            }
        }
    }

    async fn subscribe(
        &self,
        request: SubscribeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        let start = self
            .subscribed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .add(self.ops(), request.uri)
            .map_err(|e| McpError::invalid_params(e, None))?;
        if start {
            self.watch_subscriptions(context.peer);
        }
        Ok(())
    }

    async fn unsubscribe(
        &self,
        request: UnsubscribeRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        self.subscribed.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&request.uri);
        Ok(())
    }

    // Declared nowhere in the capabilities, so answered as unknown methods (rmcp's
    // defaults answer them with empty results).
    async fn list_prompts(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::ListPromptsResult, McpError> {
        Err(McpError::method_not_found::<rmcp::model::ListPromptsRequestMethod>())
    }

    async fn complete(
        &self,
        _request: rmcp::model::CompleteRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::CompleteResult, McpError> {
        Err(McpError::method_not_found::<rmcp::model::CompleteRequestMethod>())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn wrapped_doc_lines_join_and_paragraphs_stay() {
        assert_eq!(
            super::unwrap_doc("Stop a VM:\npress the button.\n\nThen wait."),
            "Stop a VM: press the button.\n\nThen wait."
        );
    }
}
