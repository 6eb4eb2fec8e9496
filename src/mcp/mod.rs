//! The MCP front end (rmcp): every operation as a tool, VMs as resources, progress and
//! cancellation for long waits (or tasks, for clients that declare them), MCP logging.
//! It only parses, calls `ops` and formats.
//!
//! Adding tools: write `src/mcp/tools_<area>.rs` with
//! `#[tool_router(router = <area>_tools, vis = "pub(super)")] impl KvmMcp { … }`, return
//! `Result<Reply<T>, String>` with `output_schema = out::<T>()`, and add the router in
//! [`KvmMcp::router`]. Argument structs (with doc comments for the model) go in
//! `args.rs` or next to the tools.

mod args;
mod args_console;
mod args_net;
mod args_storage;
mod confirm;
mod decode;
mod log;
mod notify;
mod params;
mod reply;
mod resources;
mod schema;
mod server;
mod stdio;
mod subscribe;
mod tasks;
mod tools_console;
mod tools_host;
mod tools_net;
mod tools_storage;
mod tools_vm;

use std::sync::Arc;
use std::time::Duration;

use rmcp::ServiceExt;
use tokio_util::sync::CancellationToken;

pub use args::{DeleteVmArgs, ListVmsArgs, StopVmArgs, VmNameArgs};
#[doc(hidden)]
pub use decode::decode_tool_arguments;
pub use log::Level;
pub use reply::{Reply, fail, out};
pub use resources::{VM_PREFIX, VMS_URI};
pub use server::{InFlight, KvmMcp, SUPPORTED_PROTOCOL_VERSIONS, Shared};
pub use stdio::{MAX_LINE, Stdio};

/// Why serving stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum McpServeError {
    #[error("MCP session over stdio failed to start")]
    Start(#[source] Box<rmcp::service::ServerInitializeError>),
    #[error("MCP session task failed")]
    Join(#[source] tokio::task::JoinError),
}

/// Serves one MCP session on stdin/stdout until the client closes it or `shutdown`
/// fires; on shutdown, in-flight tool calls get `drain` to finish first.
///
/// # Errors
/// The handshake failed (including stdin closing before `initialize`).
pub async fn serve_stdio(
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    drain: Duration,
) -> Result<(), McpServeError> {
    let server = KvmMcp::new(shared.clone());
    let running = tokio::select! {
        r = server.serve(stdio::Stdio::new(tokio::io::stdin(), tokio::io::stdout())) => r.map_err(|e| McpServeError::Start(Box::new(e)))?,
        () = shutdown.cancelled() => return Ok(()),
    };
    let session_ct = running.cancellation_token();
    let waiting = running.waiting();
    tokio::pin!(waiting);
    tokio::select! {
        r = &mut waiting => {
            r.map_err(McpServeError::Join)?;
        }
        () = shutdown.cancelled() => {
            shared.inflight.drain(drain).await;
            session_ct.cancel();
            let _ = waiting.await;
        }
    }
    Ok(())
}
