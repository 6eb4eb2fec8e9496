//! `kvm-mcp serve --http` as a real process, driven over raw TCP: connection limits
//! (header and idle timeouts, connections per peer), the edges of `/mcp` (bad JSON,
//! batches, session deletion) and rate limits per session and per client. No guest.

mod conn;
mod edges;
mod ratelimit;
mod revisions;
mod tasks;
