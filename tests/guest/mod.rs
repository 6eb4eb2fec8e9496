//! Tests that boot real TCG guests through kvm-mcp. nextest runs at most two at once
//! (test group `guest` in `.config/nextest.toml`).

mod bridged;
mod lifecycle;
mod recovery;
mod storage;
mod usermode;
