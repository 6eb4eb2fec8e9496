//! Helpers shared by the integration tests; never exported by the library.

pub mod debian;
pub mod http;
pub mod images;
pub mod mcp;
pub mod net;
pub mod netns;
pub mod qemu;
pub mod serve;
pub mod vm;
