//! Port forwards of user-mode (slirp) NICs: `host 127.0.0.1:2222 → guest :22`, TCP or
//! UDP. One type serves the spec file, the create call, the CLI's
//! `[HOST_ADDR:]HOST_PORT:GUEST_PORT[/udp]` form and QEMU's `hostfwd` rules, so the
//! four can never disagree.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::IdError;
use crate::error::quote;

/// Transport protocol of a forward.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP, the default.
    #[default]
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    /// `tcp` or `udp`, as QEMU and the CLI spell it.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Protocol {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Ok(Protocol::Tcp),
            "udp" => Ok(Protocol::Udp),
            _ => Err(IdError::InvalidPortForward { input: quote(s), reason: "protocol must be tcp or udp" }),
        }
    }
}

fn loopback() -> Ipv4Addr {
    Ipv4Addr::LOCALHOST
}

/// One forward from a host address and port to a port in the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PortForward {
    #[serde(default)]
    pub protocol: Protocol,
    /// 0.0.0.0 for all.
    #[serde(default = "loopback")]
    pub host_addr: Ipv4Addr,
    pub host_port: u16,
    /// Default: QEMU's first DHCP address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_addr: Option<Ipv4Addr>,
    pub guest_port: u16,
}

impl PortForward {
    /// A TCP forward from `127.0.0.1:host_port` to the guest's `guest_port`.
    #[must_use]
    pub fn tcp(host_port: u16, guest_port: u16) -> Self {
        Self { protocol: Protocol::Tcp, host_addr: loopback(), host_port, guest_addr: None, guest_port }
    }

    /// Checks the ports and addresses.
    ///
    /// # Errors
    /// [`IdError::InvalidPortForward`] for port 0 or an unusable guest address.
    pub fn validate(&self) -> Result<(), IdError> {
        let invalid = |reason| IdError::InvalidPortForward { input: quote(&self.to_string()), reason };
        if self.host_port == 0 {
            return Err(invalid("host port must be 1-65535"));
        }
        if self.guest_port == 0 {
            return Err(invalid("guest port must be 1-65535"));
        }
        if self.host_addr.is_multicast() || self.host_addr.is_broadcast() {
            return Err(invalid("host address must be a unicast address or 0.0.0.0"));
        }
        if self.guest_addr.is_some_and(|a| a.is_unspecified() || a.is_multicast() || a.is_broadcast()) {
            return Err(invalid("guest address must be a unicast address"));
        }
        Ok(())
    }

    /// The rule as QEMU's `hostfwd=` option and HMP `hostfwd_add` take it:
    /// `tcp:127.0.0.1:2222-:22`.
    #[must_use]
    pub fn rule(&self) -> String {
        let guest = self.guest_addr.map(|a| a.to_string()).unwrap_or_default();
        format!("{}:{}:{}-{guest}:{}", self.protocol, self.host_addr, self.host_port, self.guest_port)
    }

    /// The host side as HMP `hostfwd_remove` takes it: `tcp:127.0.0.1:2222`.
    #[must_use]
    pub fn host_rule(&self) -> String {
        format!("{}:{}:{}", self.protocol, self.host_addr, self.host_port)
    }

    /// Whether both forwards would listen on the same host socket: same protocol and
    /// port, and the same address or either one on every address.
    #[must_use]
    pub fn clashes_with(&self, other: &PortForward) -> bool {
        self.protocol == other.protocol
            && self.host_port == other.host_port
            && (self.host_addr == other.host_addr
                || self.host_addr.is_unspecified()
                || other.host_addr.is_unspecified())
    }

    /// Whether this forward is the one `sel` names.
    #[must_use]
    pub fn matches(&self, sel: &ForwardSelector) -> bool {
        self.protocol == sel.protocol
            && self.host_port == sel.host_port
            && sel.host_addr.is_none_or(|a| a == self.host_addr)
    }
}

/// `127.0.0.1:2222:22/tcp`: the form the CLI accepts, always with address and protocol.
impl fmt::Display for PortForward {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:", self.host_addr, self.host_port)?;
        if let Some(g) = self.guest_addr {
            write!(f, "{g}:")?;
        }
        write!(f, "{}/{}", self.guest_port, self.protocol)
    }
}

fn port(s: &str, input: &str, which: &'static str) -> Result<u16, IdError> {
    s.parse().map_err(|_| IdError::InvalidPortForward { input: quote(input), reason: which })
}

fn addr(s: &str, input: &str) -> Result<Ipv4Addr, IdError> {
    s.parse().map_err(|_| IdError::InvalidPortForward { input: quote(input), reason: "not an IPv4 address" })
}

/// Parses `[HOST_ADDR:]HOST_PORT:[GUEST_ADDR:]GUEST_PORT[/tcp|/udp]` (Docker's `-p`
/// order), e.g. `2222:22`, `0.0.0.0:8080:80`, `5353:53/udp`.
impl FromStr for PortForward {
    type Err = IdError;
    fn from_str(input: &str) -> Result<Self, IdError> {
        let (body, protocol) = match input.rsplit_once('/') {
            Some((b, p)) => (b, p.parse()?),
            None => (input, Protocol::Tcp),
        };
        let parts: Vec<&str> = body.split(':').collect();
        let (host_addr, hp, guest_addr, gp) = match parts.as_slice() {
            [hp, gp] => (loopback(), *hp, None, *gp),
            [ha, hp, gp] => (addr(ha, input)?, *hp, None, *gp),
            [ha, hp, ga, gp] => (addr(ha, input)?, *hp, Some(addr(ga, input)?), *gp),
            _ => {
                return Err(IdError::InvalidPortForward {
                    input: quote(input),
                    reason: "expected [HOST_ADDR:]HOST_PORT:GUEST_PORT[/tcp|/udp], e.g. 2222:22",
                });
            }
        };
        let fwd = PortForward {
            protocol,
            host_addr,
            host_port: port(hp, input, "host port must be a number 1-65535")?,
            guest_addr,
            guest_port: port(gp, input, "guest port must be a number 1-65535")?,
        };
        fwd.validate()?;
        Ok(fwd)
    }
}

/// Names a forward to remove: protocol and host port, plus the host address when two
/// forwards share a port on different addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardSelector {
    #[serde(default)]
    pub protocol: Protocol,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_addr: Option<Ipv4Addr>,
    pub host_port: u16,
}

/// Parses `[HOST_ADDR:]HOST_PORT[/tcp|/udp]`.
impl FromStr for ForwardSelector {
    type Err = IdError;
    fn from_str(input: &str) -> Result<Self, IdError> {
        let (body, protocol) = match input.rsplit_once('/') {
            Some((b, p)) => (b, p.parse()?),
            None => (input, Protocol::Tcp),
        };
        let (host_addr, hp) = match body.rsplit_once(':') {
            Some((a, p)) => (Some(addr(a, input)?), p),
            None => (None, body),
        };
        Ok(Self { protocol, host_addr, host_port: port(hp, input, "host port must be a number 1-65535")? })
    }
}

impl fmt::Display for ForwardSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(a) = self.host_addr {
            write!(f, "{a}:")?;
        }
        write!(f, "{}/{}", self.host_port, self.protocol)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_ports_default_to_loopback_tcp() {
        assert_eq!("2222:22".parse::<PortForward>().unwrap(), PortForward::tcp(2222, 22));
    }

    #[test]
    fn full_form_parses_every_part() {
        let f: PortForward = "0.0.0.0:5353:10.0.2.20:53/udp".parse().unwrap();
        assert_eq!(
            f,
            PortForward {
                protocol: Protocol::Udp,
                host_addr: Ipv4Addr::UNSPECIFIED,
                host_port: 5353,
                guest_addr: Some(Ipv4Addr::new(10, 0, 2, 20)),
                guest_port: 53
            }
        );
    }

    #[test]
    fn display_round_trips() {
        let f: PortForward = "127.0.0.1:8080:80/udp".parse().unwrap();
        assert_eq!(f.to_string().parse::<PortForward>().unwrap(), f);
    }

    #[test]
    fn rule_leaves_guest_address_to_qemu() {
        assert_eq!(PortForward::tcp(2222, 22).rule(), "tcp:127.0.0.1:2222-:22");
    }

    #[test]
    fn host_rule_names_the_listening_side() {
        assert_eq!(PortForward::tcp(2222, 22).host_rule(), "tcp:127.0.0.1:2222");
    }

    #[test]
    fn port_zero_is_refused() {
        assert!("0:22".parse::<PortForward>().is_err());
    }

    #[test]
    fn unknown_protocol_is_refused() {
        assert!("2222:22/sctp".parse::<PortForward>().is_err());
    }

    #[test]
    fn single_number_is_refused() {
        assert!("2222".parse::<PortForward>().is_err());
    }

    #[test]
    fn wildcard_host_clashes_with_loopback_on_same_port() {
        let any: PortForward = "0.0.0.0:2222:22".parse().unwrap();
        assert!(any.clashes_with(&PortForward::tcp(2222, 80)));
    }

    #[test]
    fn udp_does_not_clash_with_tcp() {
        let udp: PortForward = "2222:22/udp".parse().unwrap();
        assert!(!udp.clashes_with(&PortForward::tcp(2222, 22)));
    }

    #[test]
    fn serde_defaults_protocol_and_address() {
        let f: PortForward = serde_json::from_str(r#"{"host_port":2222,"guest_port":22}"#).unwrap();
        assert_eq!(f, PortForward::tcp(2222, 22));
    }

    #[test]
    fn selector_without_address_matches_any_address() {
        let sel: ForwardSelector = "2222".parse().unwrap();
        assert!(PortForward::tcp(2222, 22).matches(&sel));
    }

    #[test]
    fn selector_with_other_address_does_not_match() {
        let sel: ForwardSelector = "0.0.0.0:2222/tcp".parse().unwrap();
        assert!(!PortForward::tcp(2222, 22).matches(&sel));
    }
}
