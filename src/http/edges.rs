//! The edges of `/mcp` that rmcp's `StreamableHttpService` answers loosely, fixed in a
//! thin layer in front of it: a POST body that is not JSON is 400 with JSON-RPC error
//! -32700 (rmcp says 415), a batch (JSON array) is 400 with -32600 (batches were removed
//! from MCP in 2025-06-18), a JSON value that is no JSON-RPC message is 400 with -32600,
//! and `DELETE` of a session is 204 while `DELETE` of an unknown or already deleted
//! session is 404 (rmcp answers 202 to both). Errors quote at most 200 characters.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rmcp::model::ClientJsonRpcMessage;
use rmcp::transport::streamable_http_server::SessionManager as _;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use serde::Deserialize as _;
use serde_json::{Value, json};

use crate::error::quote;

/// The session header rmcp reads and writes.
pub const SESSION_HEADER: &str = "mcp-session-id";

/// JSON-RPC "Parse error".
const PARSE_ERROR: i64 = -32700;
/// JSON-RPC "Invalid Request".
const INVALID_REQUEST: i64 = -32600;

/// What the layer needs: the live sessions and the body size rmcp accepts.
#[derive(Debug)]
pub struct Edges {
    pub sessions: Arc<LocalSessionManager>,
    pub max_body_bytes: usize,
}

/// The live session a request names in `Mcp-Session-Id`, if any.
pub async fn live_session(sessions: &LocalSessionManager, headers: &axum::http::HeaderMap) -> Option<String> {
    let id = headers.get(SESSION_HEADER)?.to_str().ok()?;
    let known = sessions.has_session(&Arc::from(id)).await.unwrap_or(false);
    known.then(|| id.to_owned())
}

/// A JSON-RPC error response with HTTP `status`.
fn rpc_error(status: StatusCode, id: Value, code: i64, message: String) -> Response {
    let body = json!({ "jsonrpc": "2.0", "id": id, "error": { "code": code, "message": message } });
    (status, axum::Json(body)).into_response()
}

/// Why `body` cannot go to rmcp, as the response to send instead.
fn check_message(body: &[u8]) -> Option<Response> {
    let value: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            let msg = format!(
                "Parse error: the request body is not JSON ({}); send one JSON-RPC message",
                quote(&e.to_string())
            );
            return Some(rpc_error(StatusCode::BAD_REQUEST, Value::Null, PARSE_ERROR, msg));
        }
    };
    if let Value::Array(items) = &value {
        let msg = format!(
            "Invalid Request: JSON-RPC batches are not supported (the body is an array of length {}); \
             send one message per request",
            items.len()
        );
        return Some(rpc_error(StatusCode::BAD_REQUEST, Value::Null, INVALID_REQUEST, msg));
    }
    if let Err(e) = ClientJsonRpcMessage::deserialize(&value) {
        let id = match value.get("id") {
            Some(id @ (Value::String(_) | Value::Number(_))) => id.clone(),
            _ => Value::Null,
        };
        let msg = format!(
            "Invalid Request: not a JSON-RPC 2.0 request, notification or response this server understands ({}); \
             send {{\"jsonrpc\":\"2.0\",\"id\":…,\"method\":…,\"params\":…}}",
            quote(&e.to_string())
        );
        return Some(rpc_error(StatusCode::BAD_REQUEST, id, INVALID_REQUEST, msg));
    }
    None
}

fn is_json(headers: &axum::http::HeaderMap) -> bool {
    headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| {
        let essence = v.split_once(';').map_or(v, |(e, _)| e);
        essence.trim().eq_ignore_ascii_case("application/json")
    })
}

/// The layer in front of rmcp at `/mcp`; runs after the gate (authenticated callers only).
pub async fn mcp_edges(State(e): State<Arc<Edges>>, req: Request, next: Next) -> Response {
    if req.method() == Method::POST && is_json(req.headers()) {
        let (parts, body) = req.into_parts();
        let bytes = match axum::body::to_bytes(body, e.max_body_bytes).await {
            Ok(b) => b,
            Err(err) => {
                let msg = format!(
                    "the request body could not be read or is larger than {} bytes ({})",
                    e.max_body_bytes,
                    quote(&err.to_string())
                );
                return rpc_error(StatusCode::PAYLOAD_TOO_LARGE, Value::Null, INVALID_REQUEST, msg);
            }
        };
        if let Some(refusal) = check_message(&bytes) {
            return refusal;
        }
        return next.run(Request::from_parts(parts, Body::from(bytes))).await;
    }
    if req.method() == Method::DELETE {
        let named = req.headers().get(SESSION_HEADER).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        if let Some(id) = named
            && live_session(&e.sessions, req.headers()).await.is_none()
        {
            let msg = format!("no session {}: it ended, was deleted or never existed", quote(&id));
            return (StatusCode::NOT_FOUND, axum::Json(json!({ "error": msg }))).into_response();
        }
        let mut response = next.run(req).await;
        if response.status() == StatusCode::ACCEPTED {
            *response.status_mut() = StatusCode::NO_CONTENT;
            *response.body_mut() = Body::empty();
            response.headers_mut().remove(header::CONTENT_TYPE);
            response.headers_mut().remove(header::CONTENT_LENGTH);
        }
        return response;
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(body: &[u8]) -> Option<StatusCode> {
        check_message(body).map(|r| r.status())
    }

    #[test]
    fn request_passes() {
        assert_eq!(status(br#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#), None);
    }

    #[test]
    fn not_json_is_400() {
        assert_eq!(status(b"{not json"), Some(StatusCode::BAD_REQUEST));
    }

    #[test]
    fn batch_is_400() {
        assert_eq!(status(br#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#), Some(StatusCode::BAD_REQUEST));
    }

    #[test]
    fn json_that_is_no_message_is_400() {
        assert_eq!(status(br#"{"hello":"world"}"#), Some(StatusCode::BAD_REQUEST));
    }
}
