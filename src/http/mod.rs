//! The Streamable HTTP front end: rmcp's `StreamableHttpService` at `/mcp` (behind a
//! thin layer that fixes its edges, [`edges`]), `/healthz` and Prometheus `/metrics`,
//! behind one gate that checks Host/Origin (403), the bearer token (401) and the rate
//! of the caller's session and of the caller (429 with `Retry-After`), in that order.
//! Below HTTP, [`conn`] caps connections per peer address and closes connections that
//! are slow to send headers or idle. TLS with rustls (ring) when `server.tls` is set. A
//! shutdown signal stops accepting, lets in-flight tool calls finish (up to
//! `server.drain_timeout_s`), then closes sessions.

mod auth;
mod conn;
mod edges;
mod guard;
mod ratelimit;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{any_service, get};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use tokio_util::sync::CancellationToken;

pub use auth::Tokens;
pub use guard::HostGuard;
pub use ratelimit::Limiter;

use crate::config::ServerSettings;
use crate::error::ErrorKind;
use crate::mcp::{KvmMcp, Shared};

/// Why the HTTP server could not run.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("--no-auth is only allowed on a loopback address, not {addr}; configure a token instead")]
    NoAuthOffLoopback { addr: SocketAddr },
    #[error("{key}: cannot use token file {path}")]
    TokenFile {
        key: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("server.token_file: {path} holds no token; put one token per line")]
    NoToken { path: PathBuf },
    #[error("server.tls: cannot load certificate {cert} and key {key}")]
    Tls {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot serve HTTP on {addr}")]
    Serve {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

impl HttpError {
    /// The kind that picks the exit code.
    #[must_use]
    pub fn kind(&self) -> ErrorKind {
        match self {
            HttpError::NoAuthOffLoopback { .. } | HttpError::NoToken { .. } | HttpError::Tls { .. } => {
                ErrorKind::InvalidInput
            }
            HttpError::TokenFile { .. } | HttpError::Serve { .. } => ErrorKind::Unavailable,
        }
    }
}

/// What `serve --http` was asked for.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    pub addr: SocketAddr,
    pub no_auth: bool,
    pub settings: ServerSettings,
    /// Where a generated token file goes.
    pub state_dir: PathBuf,
}

/// The gate's state: who may call, from where, how often.
#[derive(Debug)]
struct Gate {
    tokens: Option<Tokens>,
    guard: HostGuard,
    /// One bucket per live MCP session, and per address for failed authentications.
    session_limiter: Limiter,
    /// One bucket per client: the token it authenticated with, else its address.
    client_limiter: Limiter,
    sessions: Arc<LocalSessionManager>,
    shared: Arc<Shared>,
}

fn refuse(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(serde_json::json!({ "error": message }))).into_response()
}

fn too_many(wait: Duration) -> Response {
    let mut r = refuse(StatusCode::TOO_MANY_REQUESTS, "rate limit exceeded; retry after the Retry-After seconds");
    let secs = wait.as_secs_f64().ceil().max(1.0);
    if let Ok(v) = HeaderValue::from_str(&format!("{secs:.0}")) {
        r.headers_mut().insert(header::RETRY_AFTER, v);
    }
    r
}

async fn gate(
    State(g): State<Arc<Gate>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
    next: Next,
) -> Response {
    if let Some(why) = g.guard.refusal(req.headers(), req.uri()) {
        return refuse(StatusCode::FORBIDDEN, &why);
    }
    if req.uri().path() == "/healthz" {
        return next.run(req).await;
    }
    let now = Instant::now();
    let client = match &g.tokens {
        None => format!("addr:{}", peer.ip().to_canonical()),
        Some(tokens) => match tokens.check(req.headers()) {
            Some(i) => format!("token:{i}"),
            None => {
                // Failed attempts are limited per address, so guessing is slow too.
                if let Err(wait) = g.session_limiter.check(&format!("fail:{}", peer.ip().to_canonical()), now) {
                    return too_many(wait);
                }
                let mut r = refuse(
                    StatusCode::UNAUTHORIZED,
                    "missing or wrong token; send Authorization: Bearer <token> or X-API-Key: <token>",
                );
                r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"kvm-mcp\""));
                return r;
            }
        },
    };
    // A session's requests draw from its own bucket, so agents sharing a token or an
    // address do not starve each other; every request also draws from its client's
    // bucket, so opening sessions is no way around the limit.
    if let Some(id) = edges::live_session(&g.sessions, req.headers()).await
        && let Err(wait) = g.session_limiter.check(&format!("session:{id}"), now)
    {
        return too_many(wait);
    }
    if let Err(wait) = g.client_limiter.check(&client, now) {
        return too_many(wait);
    }
    next.run(req).await
}

async fn metrics(State(g): State<Arc<Gate>>) -> Response {
    let vms = g.shared.ops().list().unwrap_or_default();
    let running = vms.iter().filter(|v| v.state.is_some_and(crate::state::VmState::is_active)).count();
    let mut body = crate::metrics::render_all(vms.len(), running);
    body.push_str(&g.shared.ops().prometheus_vms().await);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// Serves kvm-mcp's tools until `shutdown` fires, then drains and returns.
///
/// # Errors
/// `--no-auth` off loopback, token or TLS files unusable, or the address cannot be bound.
pub async fn serve(shared: Arc<Shared>, opts: HttpOptions, shutdown: CancellationToken) -> Result<(), HttpError> {
    let factory_shared = shared.clone();
    serve_with(shared, opts, shutdown, move || KvmMcp::new(factory_shared.clone())).await
}

/// [`serve`] with another MCP handler, made by `handler` once per session, behind
/// exactly the same gate, edges and connection limits (the conformance tests mount a
/// fixture handler this way). `shared` still feeds `/metrics` and the drain.
///
/// # Errors
/// As [`serve`].
pub async fn serve_with<S, F>(
    shared: Arc<Shared>,
    opts: HttpOptions,
    shutdown: CancellationToken,
    handler: F,
) -> Result<(), HttpError>
where
    S: rmcp::ServerHandler + Send + 'static,
    F: Fn() -> S + Send + Sync + 'static,
{
    let HttpOptions { addr, no_auth, settings, state_dir } = opts;
    let tokens = if no_auth {
        if !addr.ip().is_loopback() {
            return Err(HttpError::NoAuthOffLoopback { addr });
        }
        tracing::warn!("serving without authentication (--no-auth); anyone on this host can call every tool");
        None
    } else {
        let (tokens, file) = Tokens::load(&settings.token, &state_dir)?;
        if let Some(f) = file {
            tracing::info!(path = %f.display(), "HTTP bearer token file");
        }
        Some(tokens)
    };
    let sessions_ct = CancellationToken::new();
    let mcp_config = StreamableHttpServerConfig::default()
        // Host and Origin are checked by our gate, for every route, with our config keys.
        .disable_allowed_hosts()
        .with_cancellation_token(sessions_ct.clone());
    let max_body_bytes = mcp_config.max_request_body_bytes;
    let sessions = Arc::new(LocalSessionManager::default());
    let mcp = StreamableHttpService::new(move || Ok(handler()), sessions.clone(), mcp_config);
    let edges_state = Arc::new(edges::Edges { sessions: sessions.clone(), max_body_bytes });
    let gate_state = Arc::new(Gate {
        tokens,
        guard: HostGuard::new(&settings.allowed_hosts, &settings.allowed_origins),
        session_limiter: Limiter::new(settings.rate_limit.session),
        client_limiter: Limiter::new(settings.rate_limit.client),
        sessions,
        shared: shared.clone(),
    });
    let mcp_route = any_service(mcp).layer(axum::middleware::from_fn_with_state(edges_state, edges::mcp_edges));
    let app = axum::Router::new()
        .route("/mcp", mcp_route)
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(gate_state.clone())
        .layer(axum::middleware::from_fn_with_state(gate_state, gate));
    let make = app.into_make_service_with_connect_info::<SocketAddr>();

    let handle = axum_server::Handle::new();
    let scheme = if settings.tls.is_some() { "https" } else { "http" };
    let announce = handle.clone();
    tokio::spawn(async move {
        if let Some(bound) = announce.listening().await {
            tracing::info!("listening on {scheme}://{bound}/mcp");
        }
    });
    let drain = Duration::from_secs(settings.drain_timeout_s);
    let stopper = handle.clone();
    let drain_shared = shared.clone();
    tokio::spawn(async move {
        shutdown.cancelled().await;
        stopper.graceful_shutdown(Some(drain + Duration::from_secs(5)));
        drain_shared.inflight.drain(drain).await;
        sessions_ct.cancel();
    });
    let limits = conn::ConnLimits::from_settings(&settings.connections);
    let acceptor = conn::ConnAcceptor::new(limits);
    let served = match &settings.tls {
        Some(tls) => {
            let _ = rustls::crypto::ring::default_provider().install_default();
            let config = axum_server::tls_rustls::RustlsConfig::from_pem_file(&tls.cert, &tls.key)
                .await
                .map_err(|source| HttpError::Tls { cert: tls.cert.clone(), key: tls.key.clone(), source })?;
            // The connection limits sit under TLS: the handshake counts against the
            // header timeout too.
            let tls_acceptor = axum_server::tls_rustls::RustlsAcceptor::new(config)
                .handshake_timeout(limits.header_timeout)
                .acceptor(acceptor);
            axum_server::bind(addr).acceptor(tls_acceptor).handle(handle).serve(make).await
        }
        None => axum_server::bind(addr).acceptor(acceptor).handle(handle).serve(make).await,
    };
    served.map_err(|source| HttpError::Serve { addr, source })?;
    tracing::info!("HTTP server stopped");
    Ok(())
}
