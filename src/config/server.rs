//! `server.*` in `config.json`: where `kvm-mcp serve --http` listens, how callers
//! authenticate, TLS, the Host/Origin allow-lists, the rate limits (per session and per
//! client), and the connection limits (header and idle timeouts, connections per peer
//! address). Raw form
//! first (unknown keys rejected), then the resolved [`ServerSettings`] with defaults
//! applied and every value checked; a bad value names its key.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{ConfigError, absolute, in_range, invalid};

/// Default `server.listen`: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8745";
/// Default `server.rate_limit.per_second`.
pub const DEFAULT_RATE_PER_SECOND: u64 = 20;
/// Default `server.rate_limit.burst`.
pub const DEFAULT_RATE_BURST: u64 = 40;
/// Default `server.rate_limit.client_per_second`: ten sessions at full rate.
pub const DEFAULT_CLIENT_RATE_PER_SECOND: u64 = 200;
/// Default `server.rate_limit.client_burst`.
pub const DEFAULT_CLIENT_RATE_BURST: u64 = 400;
/// Default `server.header_timeout_s`.
pub const DEFAULT_HEADER_TIMEOUT_S: u64 = 10;
/// Default `server.idle_timeout_s`.
pub const DEFAULT_IDLE_TIMEOUT_S: u64 = 60;
/// Default `server.max_connections_per_peer`.
pub const DEFAULT_MAX_CONNECTIONS_PER_PEER: u64 = 32;
/// Default `server.drain_timeout_s`.
pub const DEFAULT_DRAIN_TIMEOUT_S: u64 = 30;
/// Name of the generated token file inside the state directory.
pub const GENERATED_TOKEN_FILE: &str = "http-token";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawServer {
    pub(super) listen: Option<String>,
    pub(super) token: Option<String>,
    pub(super) token_file: Option<PathBuf>,
    tls: RawTls,
    allowed_hosts: Option<Vec<String>>,
    allowed_origins: Option<Vec<String>>,
    rate_limit: RawRateLimit,
    drain_timeout_s: Option<u64>,
    header_timeout_s: Option<u64>,
    idle_timeout_s: Option<u64>,
    max_connections_per_peer: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawTls {
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawRateLimit {
    per_second: Option<u64>,
    burst: Option<u64>,
    client_per_second: Option<u64>,
    client_burst: Option<u64>,
}

/// Where the bearer token(s) come from.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TokenSource {
    /// `server.token` (or `KVM_MCP_TOKEN`). Never serialised in full.
    #[serde(serialize_with = "redacted")]
    Inline(String),
    /// `server.token_file`: one token per non-empty line.
    File(PathBuf),
    /// Neither set: `<state_dir>/http-token`, generated (mode 0600) on first start.
    Generated,
}

fn redacted<S: serde::Serializer>(_: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str("(redacted)")
}

/// `server.tls.*`: both set or neither.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TlsSettings {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// One token bucket's shape: refill rate and size.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct RateLimit {
    /// Requests per second refilled into the bucket.
    pub per_second: u64,
    /// Bucket size: how many requests may arrive at once.
    pub burst: u64,
}

/// `server.rate_limit.*`: every request is counted against its MCP session (when it
/// names a live one) and against its client (the token it authenticated with, else the
/// peer's address).
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct RateLimits {
    /// `per_second`/`burst`: one bucket per MCP session (and per address for failed
    /// authentications).
    pub session: RateLimit,
    /// `client_per_second`/`client_burst`: one bucket per token (or peer address under
    /// `--no-auth`) shared by all its sessions and its requests outside a session.
    pub client: RateLimit,
}

/// `server.header_timeout_s`, `server.idle_timeout_s`, `server.max_connections_per_peer`.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// A connection must deliver a request's complete headers this long after it opened
    /// or after the first byte of the request (seconds).
    pub header_timeout_s: u64,
    /// A kept-alive connection with no request in progress is closed after this long
    /// (seconds). An open response stream (SSE) is a request in progress.
    pub idle_timeout_s: u64,
    /// Open connections allowed from one IP address, counted before authentication.
    pub max_connections_per_peer: u64,
}

/// The resolved `server` section.
#[derive(Debug, Clone, Serialize)]
pub struct ServerSettings {
    /// Address `serve --http` binds when given no address.
    pub listen: SocketAddr,
    pub token: TokenSource,
    pub tls: Option<TlsSettings>,
    /// Accepted `Host` header values (names or `name:port`).
    pub allowed_hosts: Vec<String>,
    /// Accepted `Origin` values besides `http(s)://<allowed host>[:port]`.
    pub allowed_origins: Vec<String>,
    pub rate_limit: RateLimits,
    /// How long a SIGTERM/SIGINT waits for in-flight tool calls before exiting.
    pub drain_timeout_s: u64,
    pub connections: ConnectionLimits,
}

pub(super) fn resolve(raw: RawServer) -> Result<ServerSettings, ConfigError> {
    let listen_text = raw.listen.unwrap_or_else(|| DEFAULT_LISTEN.into());
    let listen: SocketAddr = listen_text.parse().map_err(|_| {
        invalid("server.listen", format!("{listen_text:?} is not an IP address and port such as \"127.0.0.1:8745\""))
    })?;
    let token = match (raw.token, raw.token_file) {
        (Some(_), Some(_)) => {
            return Err(invalid("server.token", "set either server.token or server.token_file, not both"));
        }
        (Some(t), None) => {
            if t.trim().len() < 16 {
                return Err(invalid("server.token", "is shorter than 16 characters; use a long random string"));
            }
            TokenSource::Inline(t.trim().to_owned())
        }
        (None, Some(p)) => TokenSource::File(absolute("server.token_file", p)?),
        (None, None) => TokenSource::Generated,
    };
    let tls = match (raw.tls.cert, raw.tls.key) {
        (Some(cert), Some(key)) => {
            Some(TlsSettings { cert: absolute("server.tls.cert", cert)?, key: absolute("server.tls.key", key)? })
        }
        (None, None) => None,
        (Some(_), None) => return Err(invalid("server.tls.key", "missing; TLS needs both tls.cert and tls.key")),
        (None, Some(_)) => return Err(invalid("server.tls.cert", "missing; TLS needs both tls.cert and tls.key")),
    };
    let allowed_hosts = raw.allowed_hosts.unwrap_or_else(|| vec!["localhost".into(), "127.0.0.1".into(), "::1".into()]);
    if let Some(h) = allowed_hosts.iter().find(|h| h.is_empty() || h.contains(['/', ' '])) {
        return Err(invalid("server.allowed_hosts", format!("{h:?} is not a host name or host:port")));
    }
    let allowed_origins = raw.allowed_origins.unwrap_or_default();
    if let Some(o) = allowed_origins.iter().find(|o| !(o.starts_with("http://") || o.starts_with("https://"))) {
        return Err(invalid("server.allowed_origins", format!("{o:?} must start with http:// or https://")));
    }
    let r = &raw.rate_limit;
    let rate = |key: &str, v: Option<u64>, default: u64| in_range(key, v.unwrap_or(default), 1, 1_000_000, "");
    let rate_limit = RateLimits {
        session: RateLimit {
            per_second: rate("server.rate_limit.per_second", r.per_second, DEFAULT_RATE_PER_SECOND)?,
            burst: rate("server.rate_limit.burst", r.burst, DEFAULT_RATE_BURST)?,
        },
        client: RateLimit {
            per_second: rate(
                "server.rate_limit.client_per_second",
                r.client_per_second,
                DEFAULT_CLIENT_RATE_PER_SECOND,
            )?,
            burst: rate("server.rate_limit.client_burst", r.client_burst, DEFAULT_CLIENT_RATE_BURST)?,
        },
    };
    let drain_timeout_s =
        in_range("server.drain_timeout_s", raw.drain_timeout_s.unwrap_or(DEFAULT_DRAIN_TIMEOUT_S), 0, 3600, " s")?;
    let connections = ConnectionLimits {
        header_timeout_s: in_range(
            "server.header_timeout_s",
            raw.header_timeout_s.unwrap_or(DEFAULT_HEADER_TIMEOUT_S),
            1,
            600,
            " s",
        )?,
        idle_timeout_s: in_range(
            "server.idle_timeout_s",
            raw.idle_timeout_s.unwrap_or(DEFAULT_IDLE_TIMEOUT_S),
            1,
            86_400,
            " s",
        )?,
        max_connections_per_peer: in_range(
            "server.max_connections_per_peer",
            raw.max_connections_per_peer.unwrap_or(DEFAULT_MAX_CONNECTIONS_PER_PEER),
            1,
            65_536,
            "",
        )?,
    };
    Ok(ServerSettings { listen, token, tls, allowed_hosts, allowed_origins, rate_limit, drain_timeout_s, connections })
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, ConfigError, ConfigSource};

    fn load(text: &str) -> Result<Config, ConfigError> {
        Config::from_parts(ConfigSource::Flag("/t/config.json".into()), Some(text), &|_| None)
    }

    #[test]
    fn defaults_listen_on_loopback_with_generated_token() {
        let s = load("{}").unwrap().server;
        assert_eq!((s.listen.to_string(), s.token), ("127.0.0.1:8745".to_owned(), super::TokenSource::Generated));
    }

    #[test]
    fn bad_listen_names_key() {
        let e = load(r#"{"server":{"listen":"localhost"}}"#).unwrap_err().to_string();
        assert!(e.starts_with("server.listen:"), "{e}");
    }

    #[test]
    fn cert_without_key_names_key() {
        let e = load(r#"{"server":{"tls":{"cert":"/c.pem"}}}"#).unwrap_err().to_string();
        assert!(e.starts_with("server.tls.key: missing"), "{e}");
    }

    #[test]
    fn zero_rate_names_key() {
        let e = load(r#"{"server":{"rate_limit":{"per_second":0}}}"#).unwrap_err().to_string();
        assert!(e.starts_with("server.rate_limit.per_second:"), "{e}");
    }

    #[test]
    fn zero_client_rate_names_key() {
        let e = load(r#"{"server":{"rate_limit":{"client_burst":0}}}"#).unwrap_err().to_string();
        assert!(e.starts_with("server.rate_limit.client_burst:"), "{e}");
    }

    #[test]
    fn connection_limits_default() {
        let c = load("{}").unwrap().server.connections;
        assert_eq!((c.header_timeout_s, c.idle_timeout_s, c.max_connections_per_peer), (10, 60, 32));
    }

    #[test]
    fn zero_header_timeout_names_key() {
        let e = load(r#"{"server":{"header_timeout_s":0}}"#).unwrap_err().to_string();
        assert!(e.starts_with("server.header_timeout_s: 0 is below the minimum of 1 s"), "{e}");
    }

    #[test]
    fn huge_idle_timeout_names_key() {
        let e = load(r#"{"server":{"idle_timeout_s":100000}}"#).unwrap_err().to_string();
        assert!(e.starts_with("server.idle_timeout_s: 100000 is above the maximum"), "{e}");
    }

    #[test]
    fn zero_connections_per_peer_names_key() {
        let e = load(r#"{"server":{"max_connections_per_peer":0}}"#).unwrap_err().to_string();
        assert!(e.starts_with("server.max_connections_per_peer:"), "{e}");
    }

    #[test]
    fn short_token_is_refused() {
        let e = load(r#"{"server":{"token":"abc"}}"#).unwrap_err().to_string();
        assert!(e.starts_with("server.token:"), "{e}");
    }

    #[test]
    fn unknown_server_key_names_its_path() {
        let e = load(r#"{"server":{"tsl":{}}}"#).unwrap_err().to_string();
        assert!(e.contains("server.tsl"), "{e}");
    }
}
