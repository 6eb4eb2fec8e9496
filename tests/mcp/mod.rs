//! The MCP server: in-process protocol checks with rmcp's own client (handshake,
//! errors, resources, the golden tool list), and the real-client suite in
//! `tests/mcp_py` (the official Python SDK over stdio and HTTP, including a full VM
//! lifecycle on a TCG guest).

mod arguments;
mod confirm;
mod console;
mod golden;
mod inprocess;
mod net;
mod python;
mod readme;
mod stdio;
mod storage;
mod tasks;

pub use crate::common::mcp::{connect, ops};
