#![allow(clippy::disallowed_methods)] // tests spawn QEMU, qemu-img and ip themselves
//! The crate's one integration test binary; each module tests one area.
//!
//! The network tests need root (or `CAP_NET_ADMIN` + `CAP_SYS_ADMIN`): each
//! runs in a network namespace of its own, never on the host's interfaces.

mod cli;
mod common;
mod conformance;
mod fuzz_replay;
mod guest;
mod host;
mod http;
mod mcp;
mod network;
mod storage;
