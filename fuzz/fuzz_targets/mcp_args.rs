#![no_main]
//! See `kvm_mcp::fuzzing::mcp_args`.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| kvm_mcp::fuzzing::mcp_args(data));
