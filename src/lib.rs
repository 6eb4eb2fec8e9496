//! kvm-mcp: run QEMU/KVM virtual machines without libvirt, as MCP tools and a command
//! line. See the README's Architecture section for how the modules fit together.

pub mod agent;
pub mod cli;
pub mod config;
pub mod console;
pub mod display;
pub mod error;
pub mod fsutil;
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod ids;
pub mod layout;
pub mod lock;
pub mod logging;
pub mod mcp;
pub mod metrics;
pub mod network;
pub mod ops;
pub mod procid;
pub mod progress;
pub mod provision;
pub mod qemu;
pub mod qmp;
pub mod serve;
pub mod spec;
pub mod state;
pub mod stats;
pub mod storage;
pub mod store;
pub mod supervise;
