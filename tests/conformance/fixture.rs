//! The fixture server the MCP conformance suite expects: its `test_*` tools (the
//! SEP-2322 ones in [`input_required`]), `test://` resources and template, prompts and
//! completion, and (in [`tasks`]) the tools and `tasks/*` methods of the Tasks extension
//! scenarios, each answering exactly what the suite's scenario text asks for.
//! Test-only: it lives in the test crate and is mounted on kvm-mcp's own HTTP stack by
//! `kvm_mcp::http::serve_with`, never in the shipped tool list. Results are written as
//! JSON and parsed into rmcp's types, so each reads like the scenario it answers.
// Logging, sampling and server-to-client elicitation are deprecated by SEP-2577 for the
// 2026 revision; the 2025-11-25 scenarios still test them.
#![allow(deprecated)]

mod input_required;
mod tasks;

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, CancelTaskParams, CompleteRequestParams, CompleteResult,
    ElicitRequest, GetPromptRequestParams, GetPromptResponse, GetPromptResult, GetTaskParams, GetTaskResult,
    ListPromptsResult, ListResourceTemplatesResult, ListResourcesResult, ListToolsResult, LoggingLevel,
    LoggingMessageNotificationParam, PaginatedRequestParams, ProgressNotificationParam, ReadResourceRequestParams,
    ReadResourceResponse, ReadResourceResult, ServerCapabilities, ServerConfig, ServerRequest, SetLevelRequestParams,
    SubscribeRequestParams, Tool, UnsubscribeRequestParams, UpdateTaskParams,
};
use rmcp::service::RequestContext;
use rmcp::task_manager::TaskManager;
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use input_required::{accepted, elicit_request, input_required_tool};

/// A 1x1 red PNG.
const PNG: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg==";
/// A WAV file with a header and no samples.
const WAV: &str = "UklGRiQAAABXQVZFZm10IBAAAAABAAEAQB8AAIA+AAACABAAZGF0YQAAAAA=";

/// `value` as an rmcp type; the fixture's JSON is fixed, so a mismatch is a bug here.
fn parse<T: DeserializeOwned>(value: Value) -> T {
    serde_json::from_value(value).unwrap_or_else(|e| panic!("fixture JSON does not fit its rmcp type: {e}"))
}

/// A complete result: 2026-07-28 wants `resultType` on it (rmcp strips it for older
/// revisions).
fn complete<T: DeserializeOwned>(mut value: Value) -> T {
    value["resultType"] = json!("complete");
    parse(value)
}

fn text_result(text: impl Into<String>) -> CallToolResult {
    complete(json!({ "content": [{ "type": "text", "text": text.into() }] }))
}

fn empty_object() -> Value {
    json!({ "type": "object", "properties": {} })
}

/// The tools the suite calls, in a fixed order.
fn tools() -> Value {
    let none = empty_object();
    json!([
        { "name": "test_simple_text", "description": "Returns simple text", "inputSchema": none },
        { "name": "test_image_content", "description": "Returns a PNG image", "inputSchema": none },
        { "name": "test_audio_content", "description": "Returns a WAV clip", "inputSchema": none },
        { "name": "test_embedded_resource", "description": "Returns an embedded resource", "inputSchema": none },
        { "name": "test_multiple_content_types", "description": "Returns text, an image and a resource", "inputSchema": none },
        { "name": "test_tool_with_logging", "description": "Logs three messages while it runs", "inputSchema": none },
        { "name": "test_tool_with_progress", "description": "Reports progress 0, 50, 100 of 100", "inputSchema": none },
        { "name": "test_error_handling", "description": "Always fails", "inputSchema": none },
        {
            "name": "test_sampling",
            "description": "Asks the client's model to answer a prompt",
            "inputSchema": {
                "type": "object",
                "properties": { "prompt": { "type": "string", "description": "What to ask the model" } },
                "required": ["prompt"],
            },
        },
        {
            "name": "test_elicitation",
            "description": "Asks the user for a username and an email",
            "inputSchema": {
                "type": "object",
                "properties": { "message": { "type": "string", "description": "What to show the user" } },
                "required": ["message"],
            },
        },
        { "name": "test_elicitation_sep1034_defaults", "description": "Elicits with defaults for every primitive type", "inputSchema": none },
        { "name": "test_elicitation_sep1330_enums", "description": "Elicits with all five enum forms", "inputSchema": none },
        { "name": "test_input_required_result_elicitation", "description": "Asks for a name with an input-required result", "inputSchema": none },
        { "name": "test_input_required_result_sampling", "description": "Asks the model with an input-required result", "inputSchema": none },
        { "name": "test_input_required_result_list_roots", "description": "Asks for roots with an input-required result", "inputSchema": none },
        { "name": "test_input_required_result_request_state", "description": "Round-trips a request state", "inputSchema": none },
        { "name": "test_input_required_result_multiple_inputs", "description": "Asks for three inputs at once", "inputSchema": none },
        { "name": "test_input_required_result_multi_round", "description": "Asks in two rounds", "inputSchema": none },
        { "name": "test_input_required_result_tampered_state", "description": "Refuses a tampered request state", "inputSchema": none },
        { "name": "test_input_required_result_capabilities", "description": "Asks only for what the client declared", "inputSchema": none },
        { "name": "test_missing_capability", "description": "Needs the client's sampling capability", "inputSchema": none },
        { "name": "test_streaming_elicitation", "description": "Asks for input with an input-required result", "inputSchema": none },
        { "name": "test_logging_tool", "description": "Logs at the level the request asks for", "inputSchema": none },
        {
            "name": "json_schema_2020_12_tool",
            "description": "Has a JSON Schema 2020-12 input schema",
            "inputSchema": {
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "type": "object",
                "$defs": {
                    "address": {
                        "$anchor": "addressDef",
                        "type": "object",
                        "properties": { "street": { "type": "string" }, "city": { "type": "string" } },
                    },
                },
                "properties": {
                    "name": { "type": "string" },
                    "address": { "$ref": "#/$defs/address" },
                    "contactMethod": { "type": "string", "enum": ["phone", "email"] },
                    "phone": { "type": "string" },
                    "email": { "type": "string" },
                },
                "allOf": [{ "anyOf": [{ "required": ["phone"] }, { "required": ["email"] }] }],
                "if": { "properties": { "contactMethod": { "const": "phone" } }, "required": ["contactMethod"] },
                "then": { "required": ["phone"] },
                "else": { "required": ["email"] },
                "additionalProperties": false,
            },
        },
    ])
}

fn sep1034_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "name": { "type": "string", "description": "Name", "default": "John Doe" },
            "age": { "type": "integer", "description": "Age", "default": 30 },
            "score": { "type": "number", "description": "Score", "default": 95.5 },
            "status": { "type": "string", "description": "Status", "enum": ["active", "inactive", "pending"], "default": "active" },
            "verified": { "type": "boolean", "description": "Verified", "default": true },
        },
    })
}

fn sep1330_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "untitledSingle": { "type": "string", "enum": ["option1", "option2", "option3"] },
            "titledSingle": {
                "type": "string",
                "oneOf": [
                    { "const": "value1", "title": "First Option" },
                    { "const": "value2", "title": "Second Option" },
                    { "const": "value3", "title": "Third Option" },
                ],
            },
            "legacyEnum": {
                "type": "string",
                "enum": ["opt1", "opt2", "opt3"],
                "enumNames": ["Option One", "Option Two", "Option Three"],
            },
            "untitledMulti": { "type": "array", "items": { "type": "string", "enum": ["option1", "option2", "option3"] } },
            "titledMulti": {
                "type": "array",
                "items": {
                    "anyOf": [
                        { "const": "value1", "title": "First Choice" },
                        { "const": "value2", "title": "Second Choice" },
                        { "const": "value3", "title": "Third Choice" },
                    ],
                },
            },
        },
    })
}

/// The suite's fixture server; one per session.
#[derive(Clone)]
pub struct Fixture {
    /// The session's `logging/setLevel`, as a rank (0 = debug).
    log_level: Arc<AtomicU8>,
    /// The server's tasks, shared by every session: on the stateless 2026-07-28 wire
    /// each request is a session of its own, and a task outlives the request that
    /// made it.
    tasks: TaskManager,
}

fn rank(level: LoggingLevel) -> u8 {
    match level {
        LoggingLevel::Debug => 0,
        LoggingLevel::Info => 1,
        LoggingLevel::Notice => 2,
        LoggingLevel::Warning => 3,
        LoggingLevel::Error => 4,
        LoggingLevel::Critical => 5,
        LoggingLevel::Alert => 6,
        LoggingLevel::Emergency => 7,
    }
}

impl Fixture {
    /// A maker of sessions for one server, for `serve_with`.
    pub fn sessions() -> impl Fn() -> Self + Send + Sync + 'static {
        let tasks = TaskManager::new();
        move || Self { log_level: Arc::default(), tasks: tasks.clone() }
    }

    async fn log(&self, ctx: &RequestContext<RoleServer>, message: &str) {
        if rank(LoggingLevel::Info) >= self.log_level.load(Ordering::Relaxed) {
            let p: LoggingMessageNotificationParam =
                parse(json!({ "level": "info", "logger": "fixture", "data": message }));
            let _ = ctx.peer.notify_logging_message(p).await;
        }
    }

    async fn elicit(&self, ctx: &RequestContext<RoleServer>, message: &str, schema: Value) -> Result<Value, String> {
        let params = parse(json!({ "mode": "form", "message": message, "requestedSchema": schema }));
        let request = ServerRequest::ElicitRequest(ElicitRequest::new(params));
        match ctx.peer.send_request(request).await {
            Ok(answer) => Ok(serde_json::to_value(answer).unwrap_or_default()),
            Err(e) => Err(format!("elicitation failed: {e}")),
        }
    }

    async fn call(&self, request: &CallToolRequestParams, ctx: &RequestContext<RoleServer>) -> CallToolResult {
        let arg = |name: &str| {
            request.arguments.as_ref().and_then(|a| a.get(name)).and_then(Value::as_str).unwrap_or_default().to_owned()
        };
        match &*request.name {
            "test_simple_text" => text_result("This is a simple text response for testing."),
            "test_image_content" => {
                complete(json!({ "content": [{ "type": "image", "data": PNG, "mimeType": "image/png" }] }))
            }
            "test_audio_content" => {
                complete(json!({ "content": [{ "type": "audio", "data": WAV, "mimeType": "audio/wav" }] }))
            }
            "test_embedded_resource" => complete(json!({ "content": [{ "type": "resource", "resource": {
                "uri": "test://embedded-resource", "mimeType": "text/plain", "text": "This is an embedded resource content.",
            } }] })),
            "test_multiple_content_types" => complete(json!({ "content": [
                { "type": "text", "text": "Multiple content types test:" },
                { "type": "image", "data": PNG, "mimeType": "image/png" },
                { "type": "resource", "resource": {
                    "uri": "test://mixed-content-resource", "mimeType": "application/json",
                    "text": json!({ "test": "data", "value": 123 }).to_string(),
                } },
            ] })),
            "test_tool_with_logging" => {
                self.log(ctx, "Tool execution started").await;
                tokio::time::sleep(Duration::from_millis(50)).await;
                self.log(ctx, "Tool processing data").await;
                tokio::time::sleep(Duration::from_millis(50)).await;
                self.log(ctx, "Tool execution completed").await;
                text_result("Logged three messages.")
            }
            "test_tool_with_progress" => {
                let token = ctx.meta.get_progress_token();
                for (i, progress) in [0, 50, 100].into_iter().enumerate() {
                    if i > 0 {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    if let Some(token) = &token {
                        let p = ProgressNotificationParam::new(token.clone(), f64::from(progress)).with_total(100.0);
                        let _ = ctx.peer.notify_progress(p).await;
                    }
                }
                text_result("Progress reported.")
            }
            "test_error_handling" => complete(json!({ "isError": true, "content": [
                { "type": "text", "text": "This tool intentionally returns an error for testing" },
            ] })),
            "test_sampling" => {
                let params = parse(json!({
                    "messages": [{ "role": "user", "content": { "type": "text", "text": arg("prompt") } }],
                    "maxTokens": 100,
                }));
                match ctx.peer.create_message(params).await {
                    Ok(answer) => {
                        let v = serde_json::to_value(answer).unwrap_or_default();
                        let said =
                            v["content"]["text"].as_str().map_or_else(|| v["content"].to_string(), str::to_owned);
                        text_result(format!("LLM response: {said}"))
                    }
                    Err(e) => {
                        CallToolResult::error(vec![rmcp::model::ContentBlock::text(format!("sampling failed: {e}"))])
                    }
                }
            }
            "test_elicitation" => {
                let schema = json!({
                    "type": "object",
                    "properties": {
                        "username": { "type": "string", "description": "User's response" },
                        "email": { "type": "string", "description": "User's email address" },
                    },
                    "required": ["username", "email"],
                });
                match self.elicit(ctx, &arg("message"), schema).await {
                    Ok(v) => text_result(format!("User response: action={}, content={}", v["action"], v["content"])),
                    Err(e) => CallToolResult::error(vec![rmcp::model::ContentBlock::text(e)]),
                }
            }
            name @ ("test_elicitation_sep1034_defaults" | "test_elicitation_sep1330_enums") => {
                let schema = if name.ends_with("defaults") { sep1034_schema() } else { sep1330_schema() };
                match self.elicit(ctx, "Please review and submit the form", schema).await {
                    Ok(v) => {
                        text_result(format!("Elicitation completed: action={}, content={}", v["action"], v["content"]))
                    }
                    Err(e) => CallToolResult::error(vec![rmcp::model::ContentBlock::text(e)]),
                }
            }
            "json_schema_2020_12_tool" => text_result("Schema accepted."),
            other => CallToolResult::error(vec![rmcp::model::ContentBlock::text(format!("unknown tool {other:?}"))]),
        }
    }
}

fn resource_not_found(uri: &str) -> McpError {
    McpError::invalid_params("Resource not found", Some(json!({ "uri": uri })))
}

impl ServerHandler for Fixture {
    fn get_info(&self) -> ServerConfig {
        let capabilities: ServerCapabilities = parse(json!({
            "tools": {},
            "resources": {},
            "prompts": {},
            "logging": {},
            "completions": {},
            "extensions": { "io.modelcontextprotocol/tasks": {} },
        }));
        let mut info = ServerConfig::new(capabilities).with_server_info(rmcp::model::Implementation::new(
            "kvm-mcp-conformance-fixture",
            env!("CARGO_PKG_VERSION"),
        ));
        info.protocol_version = rmcp::model::ProtocolVersion::V_2025_11_25;
        info
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        let mut all: Vec<Tool> = parse(tools());
        all.extend(parse::<Vec<Tool>>(tasks::tools()));
        Ok(ListToolsResult::with_all_items(all))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        if let Some(answer) = tasks::call(&self.tasks, &request, &context).await? {
            return Ok(answer);
        }
        let responses = request.input_responses.as_ref().map(|r| serde_json::to_value(r).unwrap_or_default());
        let responses = responses.unwrap_or_default();
        if let Some(answer) =
            input_required_tool(&request.name, &responses, request.request_state.as_deref(), &context)?
        {
            return Ok(answer);
        }
        if request.name == "test_logging_tool" {
            // Logs only when the request's `_meta` asks for a level.
            if let Some(level) = context.meta.log_level() {
                for message in ["Logging tool started", "Logging tool finished"] {
                    if rank(LoggingLevel::Info) >= rank(level) {
                        let p: LoggingMessageNotificationParam =
                            parse(json!({ "level": "info", "logger": "fixture", "data": message }));
                        let _ = context.peer.notify_logging_message(p).await;
                    }
                }
            }
            return Ok(text_result("Logged at the requested level.").into());
        }
        Ok(self.call(&request, &context).await.into())
    }

    async fn get_task(
        &self,
        request: GetTaskParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<GetTaskResult, McpError> {
        self.tasks.get_task(&request.task_id).map(GetTaskResult::new)
    }

    async fn update_task(
        &self,
        request: UpdateTaskParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        self.tasks.update_task(&request.task_id, request.input_responses)
    }

    async fn cancel_task(
        &self,
        request: CancelTaskParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        self.tasks.cancel_task(&request.task_id)
    }

    async fn set_level(
        &self,
        request: SetLevelRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        self.log_level.store(rank(request.level), Ordering::Relaxed);
        Ok(())
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, McpError> {
        Ok(complete(json!({ "resources": [
            { "uri": "test://static-text", "name": "static-text", "description": "A static text resource", "mimeType": "text/plain" },
            { "uri": "test://static-binary", "name": "static-binary", "description": "A static PNG", "mimeType": "image/png" },
            { "uri": "test://watched-resource", "name": "watched-resource", "description": "A resource to subscribe to", "mimeType": "text/plain" },
        ] })))
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, McpError> {
        Ok(complete(json!({ "resourceTemplates": [{
            "uriTemplate": "test://template/{id}/data", "name": "template-data",
            "description": "Data for an id", "mimeType": "application/json",
        }] })))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, McpError> {
        let uri = request.uri.as_str();
        let content = match uri {
            "test://static-text" => {
                json!({ "uri": uri, "mimeType": "text/plain", "text": "This is the content of the static text resource." })
            }
            "test://static-binary" => json!({ "uri": uri, "mimeType": "image/png", "blob": PNG }),
            "test://watched-resource" => {
                json!({ "uri": uri, "mimeType": "text/plain", "text": "Watched resource content." })
            }
            _ => {
                let id = uri
                    .strip_prefix("test://template/")
                    .and_then(|r| r.strip_suffix("/data"))
                    .filter(|id| !id.is_empty() && !id.contains('/'))
                    .ok_or_else(|| resource_not_found(uri))?;
                let text = json!({ "id": id, "templateTest": true, "data": format!("Data for ID: {id}") }).to_string();
                json!({ "uri": uri, "mimeType": "application/json", "text": text })
            }
        };
        let result: ReadResourceResult = complete(json!({ "contents": [content] }));
        Ok(result.into())
    }

    async fn subscribe(
        &self,
        _request: SubscribeRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        Ok(())
    }

    async fn unsubscribe(
        &self,
        _request: UnsubscribeRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        Ok(())
    }

    async fn list_prompts(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, McpError> {
        Ok(complete(json!({ "prompts": [
            { "name": "test_simple_prompt", "description": "A prompt without arguments" },
            { "name": "test_prompt_with_arguments", "description": "A prompt with two arguments", "arguments": [
                { "name": "arg1", "description": "First test argument", "required": true },
                { "name": "arg2", "description": "Second test argument", "required": true },
            ] },
            { "name": "test_prompt_with_embedded_resource", "description": "A prompt embedding a resource", "arguments": [
                { "name": "resourceUri", "description": "URI of the resource to embed", "required": true },
            ] },
            { "name": "test_prompt_with_image", "description": "A prompt with an image" },
            { "name": "test_input_required_result_prompt", "description": "A prompt that asks for context first" },
        ] })))
    }

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, McpError> {
        let arg = |name: &str| {
            request.arguments.as_ref().and_then(|a| a.get(name)).and_then(Value::as_str).unwrap_or_default().to_owned()
        };
        let user = |content: Value| json!({ "role": "user", "content": content });
        let messages = match &*request.name {
            "test_simple_prompt" => {
                vec![user(json!({ "type": "text", "text": "This is a simple prompt for testing." }))]
            }
            "test_prompt_with_arguments" => vec![user(json!({ "type": "text", "text": format!(
                "Prompt with arguments: arg1='{}', arg2='{}'", arg("arg1"), arg("arg2")
            ) }))],
            "test_prompt_with_embedded_resource" => vec![
                user(json!({ "type": "resource", "resource": {
                    "uri": arg("resourceUri"), "mimeType": "text/plain", "text": "Embedded resource content for testing.",
                } })),
                user(json!({ "type": "text", "text": "Please process the embedded resource above." })),
            ],
            "test_input_required_result_prompt" => {
                let responses = request.input_responses.as_ref().map(|r| serde_json::to_value(r).unwrap_or_default());
                let context =
                    responses.as_ref().and_then(|r| r.get("user_context")).and_then(|r| accepted(r, "context"));
                match context {
                    Some(c) => vec![user(json!({ "type": "text", "text": format!("Use this context: {c}") }))],
                    None => {
                        let requests = json!({ "user_context":
                            elicit_request("What context should the prompt use?", "context", "string") });
                        return Ok(GetPromptResponse::InputRequired(parse(
                            json!({ "resultType": "input_required", "inputRequests": requests }),
                        )));
                    }
                }
            }
            "test_prompt_with_image" => vec![
                user(json!({ "type": "image", "data": PNG, "mimeType": "image/png" })),
                user(json!({ "type": "text", "text": "Please analyze the image above." })),
            ],
            other => return Err(McpError::invalid_params(format!("unknown prompt {other:?}"), None)),
        };
        let result: GetPromptResult = complete(json!({ "messages": messages }));
        Ok(result.into())
    }

    async fn complete(
        &self,
        _request: CompleteRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CompleteResult, McpError> {
        Ok(complete(json!({ "completion": { "values": ["paris", "park", "party"], "total": 3, "hasMore": false } })))
    }
}
