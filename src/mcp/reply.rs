//! How a tool answers: [`Reply`] carries the structured result (`structuredContent`,
//! checked against the tool's `outputSchema`) plus a short text summary as `content`;
//! [`fail`] turns an `OpsError` into the text of an `isError: true` result.
//!
//! The spec suggests repeating the JSON as text for clients older than structured
//! output; every revision this server negotiates (2025-06-18 and later) has it, so the
//! text is a summary instead, which also halves what each reply carries.

use std::sync::Arc;

use rmcp::handler::server::tool::{IntoCallToolResult, schema_for_output};
use rmcp::model::{CallToolResponse, CallToolResult, ContentBlock, JsonObject};
use schemars::JsonSchema;
use serde::Serialize;

use crate::error::chain;
use crate::ops::OpsError;

/// What a tool returns: a reply, or the text of an `isError: true` result.
pub type ToolResult<T> = Result<Reply<T>, String>;

/// A successful tool result: the value and a short human summary.
#[derive(Debug)]
pub struct Reply<T> {
    value: T,
    summary: String,
}

impl<T> Reply<T> {
    /// Wraps `value` with `summary`, one sentence for the reader.
    pub fn new(value: T, summary: impl Into<String>) -> Self {
        Self { value, summary: summary.into() }
    }
}

impl<T: Serialize> IntoCallToolResult for Reply<T> {
    fn into_call_tool_result(self) -> Result<CallToolResponse, rmcp::ErrorData> {
        let value = serde_json::to_value(&self.value)
            .map_err(|e| rmcp::ErrorData::internal_error(format!("cannot serialise the result: {e}"), None))?;
        let mut result = CallToolResult::structured(value);
        result.content = vec![ContentBlock::text(self.summary)];
        Ok(result.into())
    }
}

/// The `outputSchema` of a tool answering with `Reply<T>`.
#[must_use]
pub fn out<T: JsonSchema + 'static>() -> Arc<JsonObject> {
    schema_for_output::<T>()
}

/// The `outputSchema` of a tool whose result is one large record under `key` (`get_vm`):
/// the record's own schema would be most of the tool list, so only its shape is given.
#[must_use]
pub fn out_record(key: &str) -> Arc<JsonObject> {
    let schema = serde_json::json!({
        "type": "object",
        "properties": { key: { "type": "object" } },
        "required": [key],
    });
    Arc::new(schema.as_object().cloned().unwrap_or_default())
}

/// The text of a failed tool call: what went wrong and what to do, causes joined.
#[must_use]
#[allow(clippy::needless_pass_by_value)] // used as `.map_err(fail)`
pub fn fail(e: OpsError) -> String {
    chain(&e)
}
