//! Tests that boot real TCG guests through kvm-mcp. nextest runs at most two at once
//! (test group `guest` in `.config/nextest.toml`).

mod addresses;
mod agent;
mod bridged;
mod consistency;
mod console;
mod containment;
mod debian;
mod display;
mod fork;
mod lifecycle;
mod mcp_storage;
mod mcp_tasks;
mod pool;
mod recovery;
mod run;
mod stats;
mod storage;
mod usermode;
