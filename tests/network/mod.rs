//! Tests of `kvm_mcp::network` against the real kernel (and QEMU), each in
//! its own network namespace.

mod bridge;
mod managed;
mod neigh;
mod nics;
mod qemu;
mod tap;

use kvm_mcp::ids::IfName;

/// Shorthand for a known-good interface name.
fn ifname(name: &str) -> IfName {
    IfName::new(name).expect("valid interface name")
}
