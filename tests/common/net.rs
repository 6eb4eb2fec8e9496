//! Network helpers for tests that run inside their own network namespace: loopback up,
//! a tiny HTTP client that retries until the guest's page answers, the guest's
//! `FIXTURE-IP=` marker, and link lookups.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use kvm_mcp::ids::IfName;
use kvm_mcp::network::Netlink;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::vm::GUEST_DEADLINE;

/// What the fixture guest's httpd serves.
pub const HTTP_MARKER: &str = "FIXTURE-HTTP-OK";

/// Brings the namespace's loopback up (a new namespace starts with it down).
pub async fn lo_up() {
    let nl = Netlink::connect().expect("netlink");
    nl.set_up(&IfName::new("lo").expect("lo")).await.expect("set lo up");
}

/// One `GET /` to `addr`; the whole response, or the error.
pub async fn http_get_once(addr: SocketAddr) -> std::io::Result<String> {
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(b"GET / HTTP/1.0\r\nHost: fixture\r\n\r\n").await?;
        let mut body = Vec::new();
        s.read_to_end(&mut body).await?;
        Ok(String::from_utf8_lossy(&body).into_owned())
    };
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .unwrap_or_else(|_| Err(std::io::Error::other("HTTP request timed out")))
}

/// `GET /` from `addr`, retried until the page carries [`HTTP_MARKER`]; the page.
pub async fn http_get(addr: SocketAddr) -> String {
    let start = Instant::now();
    loop {
        let last = http_get_once(addr).await;
        if let Ok(page) = &last
            && page.contains(HTTP_MARKER)
        {
            return page.clone();
        }
        assert!(start.elapsed() < GUEST_DEADLINE, "no page from {addr} within {GUEST_DEADLINE:?}; last: {last:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The address the guest printed as `FIXTURE-IP=<addr>` on its console.
pub fn fixture_ip(console: &str) -> Ipv4Addr {
    let rest = console.split("FIXTURE-IP=").nth(1).expect("FIXTURE-IP= on the console");
    let addr: String = rest.chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect();
    addr.parse().unwrap_or_else(|_| panic!("FIXTURE-IP={addr:?} is not an IPv4 address"))
}

/// The index of link `name` in this namespace, if it exists.
pub async fn link_index(name: &str) -> Option<u32> {
    let nl = Netlink::connect().expect("netlink");
    nl.link_index(&IfName::new(name).expect("ifname")).await.expect("link lookup")
}
