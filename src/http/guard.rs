//! DNS-rebinding protection: the `Host` a request names must be one of
//! `server.allowed_hosts`, and an `Origin`, when a browser sends one, must be an
//! http(s) origin on such a host or listed in `server.allowed_origins`.

use axum::http::{HeaderMap, Uri, header};

/// The allow-lists, from `server.allowed_hosts` and `server.allowed_origins`.
#[derive(Debug, Clone)]
pub struct HostGuard {
    hosts: Vec<String>,
    origins: Vec<String>,
}

/// Splits `authority` into host (without IPv6 brackets) and optional port.
fn split_authority(authority: &str) -> (&str, Option<&str>) {
    if let Some(rest) = authority.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((host, tail)) => (host, tail.strip_prefix(':')),
            None => (rest, None),
        };
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => (host, Some(port)),
        _ => (authority, None),
    }
}

impl HostGuard {
    /// A guard for these lists (entries compared case-insensitively).
    #[must_use]
    pub fn new(hosts: &[String], origins: &[String]) -> Self {
        let lower = |v: &[String]| v.iter().map(|s| s.trim_end_matches('/').to_ascii_lowercase()).collect();
        Self { hosts: lower(hosts), origins: lower(origins) }
    }

    fn host_allowed(&self, authority: &str) -> bool {
        let authority = authority.to_ascii_lowercase();
        let (host, _) = split_authority(&authority);
        self.hosts.iter().any(|h| {
            let (h_host, h_port) = split_authority(h);
            h_port.map_or(h_host == host, |_| *h == authority)
        })
    }

    /// Why the request must be refused (403), or `None` when it may pass.
    #[must_use]
    pub fn refusal(&self, headers: &HeaderMap, uri: &Uri) -> Option<String> {
        let host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .or_else(|| uri.authority().map(axum::http::uri::Authority::as_str));
        match host {
            None => return Some("the request names no Host".into()),
            Some(h) if !self.host_allowed(h) => {
                return Some(format!("Host {h:?} is not allowed; add it to server.allowed_hosts"));
            }
            Some(_) => {}
        }
        let origin = headers.get(header::ORIGIN)?;
        let Ok(origin) = origin.to_str() else { return Some("the Origin header is not text".into()) };
        let lower = origin.to_ascii_lowercase();
        if self.origins.contains(&lower) {
            return None;
        }
        let authority = lower.strip_prefix("http://").or_else(|| lower.strip_prefix("https://"));
        match authority {
            Some(a) if !a.contains('/') && self.host_allowed(a) => None,
            _ => Some(format!("Origin {origin:?} is not allowed; add it to server.allowed_origins")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard() -> HostGuard {
        HostGuard::new(&["localhost".into(), "127.0.0.1".into(), "::1".into()], &["https://app.example".into()])
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    fn refused(pairs: &[(&'static str, &str)]) -> bool {
        guard().refusal(&headers(pairs), &Uri::from_static("/mcp")).is_some()
    }

    #[test]
    fn loopback_host_with_port_passes() {
        assert!(!refused(&[("host", "127.0.0.1:8745")]));
    }

    #[test]
    fn bracketed_ipv6_host_passes() {
        assert!(!refused(&[("host", "[::1]:8745")]));
    }

    #[test]
    fn foreign_host_is_refused() {
        assert!(refused(&[("host", "evil.example:8745")]));
    }

    #[test]
    fn origin_on_allowed_host_passes() {
        assert!(!refused(&[("host", "localhost:8745"), ("origin", "http://localhost:3000")]));
    }

    #[test]
    fn listed_origin_passes() {
        assert!(!refused(&[("host", "localhost:8745"), ("origin", "https://app.example")]));
    }

    #[test]
    fn foreign_origin_is_refused() {
        assert!(refused(&[("host", "localhost:8745"), ("origin", "http://evil.example")]));
    }

    #[test]
    fn null_origin_is_refused() {
        assert!(refused(&[("host", "localhost:8745"), ("origin", "null")]));
    }
}
