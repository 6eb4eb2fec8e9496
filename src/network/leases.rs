//! dnsmasq's lease file, read without dnsmasq's help: one line per lease,
//! `<expiry unix s> <mac> <ip> <hostname|*> <client-id|*>`, expiry 0 meaning never.
//! DHCPv6 lines (the `duid` line and entries keyed by IAID) are skipped.

use std::net::IpAddr;
use std::path::Path;

use serde::Serialize;

use crate::ids::MacAddr;

/// One DHCP lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Lease {
    /// When the lease ends (Unix seconds); `None` for an infinite lease.
    pub expires_at: Option<u64>,
    pub mac: MacAddr,
    pub ip: IpAddr,
    /// The name the client sent, if any.
    pub hostname: Option<String>,
}

impl Lease {
    /// Whether the lease is still valid at `now` (Unix seconds).
    #[must_use]
    pub fn is_current(&self, now: u64) -> bool {
        self.expires_at.is_none_or(|e| e > now)
    }
}

/// Parses lease-file text; lines that are not IPv4/IPv6 leases with a MAC are skipped.
#[must_use]
pub fn parse_leases(text: &str) -> Vec<Lease> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let expiry: u64 = f.next()?.parse().ok()?;
            let mac: MacAddr = f.next()?.parse().ok()?;
            let ip: IpAddr = f.next()?.parse().ok()?;
            let hostname = f.next().filter(|h| *h != "*").map(str::to_owned);
            Some(Lease { expires_at: (expiry != 0).then_some(expiry), mac, ip, hostname })
        })
        .collect()
}

/// The current leases of `mac` in the lease file at `path`, newest expiry first. A
/// missing file means no leases.
///
/// # Errors
/// The file exists but cannot be read.
pub fn leases_for(path: &Path, mac: MacAddr, now: u64) -> std::io::Result<Vec<Lease>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(e),
    };
    let mut out: Vec<Lease> = parse_leases(&text).into_iter().filter(|l| l.mac == mac && l.is_current(now)).collect();
    out.sort_by_key(|l| std::cmp::Reverse(l.expires_at.unwrap_or(u64::MAX)));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "\
1700003600 52:54:00:aa:bb:cc 192.0.2.150 fixture 01:52:54:00:aa:bb:cc
0 52:54:00:11:22:33 192.0.2.151 * *
duid 00:01:00:01:2c:aa:bb:cc:52:54:00:aa:bb:cc
1700003600 1234 2001:db8::10 * 00:01:00:01
";

    #[test]
    fn ipv4_lease_is_parsed_with_hostname() {
        let l = &parse_leases(FILE)[0];
        assert_eq!(
            (l.expires_at, l.mac.to_string(), l.ip.to_string(), l.hostname.as_deref()),
            (Some(1_700_003_600), "52:54:00:aa:bb:cc".into(), "192.0.2.150".into(), Some("fixture"))
        );
    }

    #[test]
    fn zero_expiry_is_infinite() {
        assert_eq!(parse_leases(FILE)[1].expires_at, None);
    }

    #[test]
    fn duid_and_ipv6_iaid_lines_are_skipped() {
        assert_eq!(parse_leases(FILE).len(), 2);
    }

    #[test]
    fn expired_lease_is_not_current() {
        assert!(!parse_leases(FILE)[0].is_current(1_700_003_600));
    }

    #[test]
    fn missing_file_has_no_leases() {
        let mac: MacAddr = "52:54:00:aa:bb:cc".parse().unwrap();
        assert_eq!(leases_for(Path::new("/nonexistent/leases"), mac, 0).unwrap(), vec![]);
    }
}
