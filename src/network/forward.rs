//! The one side effect of a port forward: checking that its host socket can be bound
//! before QEMU is asked to listen on it. The forward itself is a value in
//! [`crate::ids::PortForward`].

use std::net::{SocketAddrV4, TcpListener, UdpSocket};

use super::error::NetworkError;
use crate::ids::{PortForward, Protocol};

/// Tries to bind `f`'s host socket (and lets it go at once), so a port some other
/// program holds is reported before QEMU is asked to listen on it.
///
/// # Errors
/// [`NetworkError::HostPortInUse`] (kind `Conflict` for `EADDRINUSE`).
pub fn probe_host_port(f: &PortForward) -> Result<(), NetworkError> {
    let addr = SocketAddrV4::new(f.host_addr, f.host_port);
    let bound = match f.protocol {
        Protocol::Tcp => TcpListener::bind(addr).map(drop),
        Protocol::Udp => UdpSocket::bind(addr).map(drop),
    };
    bound.map_err(|source| NetworkError::HostPortInUse { forward: f.host_rule(), source })
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;

    #[test]
    fn probe_of_a_bound_port_is_conflict() {
        let held = TcpListener::bind("127.0.0.1:0").unwrap();
        let fwd = PortForward::tcp(held.local_addr().unwrap().port(), 22);
        assert_eq!(probe_host_port(&fwd).unwrap_err().kind(), crate::error::ErrorKind::Conflict);
    }
}
