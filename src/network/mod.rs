//! Host networking for VMs without libvirt (names, MACs and forward rules are
//! values in [`crate::ids`]): non-persistent tap devices whose fd is handed to QEMU,
//! bridges and link statistics over rtnetlink, and neighbour-table lookups
//! that map a guest's MAC to the IP addresses seen on its bridge; port
//! forwards of user-mode NICs and dnsmasq lease files. Everything acts on the
//! network namespace of the calling thread.

mod bridge;
mod error;
mod forward;
mod leases;
mod neigh;
mod tap;

pub use bridge::{LinkStats, Netlink};
pub use error::{ErrorKind, NetworkError, Result};
pub use forward::probe_host_port;
pub use leases::{Lease, leases_for, parse_leases};
pub use neigh::NeighbourEntry;
pub use tap::Tap;
