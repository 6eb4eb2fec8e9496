//! `kvm-mcp serve`: picks the transport (stdio or Streamable HTTP), builds the runtime
//! for it, and turns SIGTERM/SIGINT into a graceful drain: no new calls, in-flight calls
//! get `server.drain_timeout_s` to finish, then the process exits. VMs are never touched
//! by a server's exit: each runs under its own supervisor.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::cli::ServeArgs;
use crate::config::Config;
use crate::error::ErrorKind;
use crate::http::HttpError;
use crate::mcp::{KvmMcp, McpServeError};
use crate::ops::{Ops, OpsError};

/// The server's log file name, in the state directory unless `logging.file` is set.
pub const LOG_FILE: &str = "kvm_mcp.log";

/// Why `serve` failed.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Ops(#[from] OpsError),
    #[error("cannot start the async runtime")]
    Runtime(#[source] std::io::Error),
    #[error(transparent)]
    Mcp(#[from] McpServeError),
    #[error(transparent)]
    Http(#[from] HttpError),
}

impl ServeError {
    /// The kind that picks the exit code.
    #[must_use]
    pub fn kind(&self) -> ErrorKind {
        match self {
            ServeError::Ops(e) => e.kind(),
            ServeError::Runtime(_) => ErrorKind::Internal,
            ServeError::Mcp(_) => ErrorKind::Unavailable,
            ServeError::Http(e) => e.kind(),
        }
    }
}

/// Cancels the returned token on the first SIGTERM or SIGINT.
fn shutdown_on_signals() -> std::io::Result<CancellationToken> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let which = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(signal = which, "shutting down: draining in-flight calls");
        t.cancel();
    });
    Ok(token)
}

/// Runs the server until the client goes away (stdio) or a signal arrives.
///
/// # Errors
/// Bad profiles or config, `--no-auth` off loopback, a port in use, unreadable TLS
/// files, or a failed stdio handshake.
pub fn run(cfg: Config, args: &ServeArgs) -> Result<(), ServeError> {
    let drain = Duration::from_secs(cfg.server.drain_timeout_s);
    let ops = Ops::new(cfg)?;
    match args.http {
        None => {
            // One session, mostly waiting: a single thread keeps start-up and memory small.
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(ServeError::Runtime)?;
            let served = rt.block_on(async move {
                let shutdown = shutdown_on_signals().map_err(ServeError::Runtime)?;
                let shared = KvmMcp::shared(ops);
                crate::mcp::serve_stdio(shared, shutdown, drain).await?;
                Ok(())
            });
            // The stdin reader is a blocking thread that only returns on input or EOF;
            // after a signal neither may come, so do not wait for it.
            rt.shutdown_background();
            served
        }
        Some(addr) => {
            let workers = std::thread::available_parallelism().map_or(2, std::num::NonZero::get).clamp(1, 4);
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(workers)
                .enable_all()
                .build()
                .map_err(ServeError::Runtime)?;
            let served = rt.block_on(async move {
                let shutdown = shutdown_on_signals().map_err(ServeError::Runtime)?;
                let settings = ops.config().server.clone();
                let state_dir = ops.config().state_dir.clone();
                let addr = addr.unwrap_or(settings.listen);
                let shared = KvmMcp::shared(ops);
                let opts = crate::http::HttpOptions { addr, no_auth: args.no_auth, settings, state_dir };
                crate::http::serve(shared, opts, shutdown).await?;
                Ok(())
            });
            rt.shutdown_timeout(Duration::from_secs(1));
            served
        }
    }
}
