//! The `kvm-mcp` binary. Everything it does is in the library ([`kvm_mcp::cli::entry`]).

fn main() -> std::process::ExitCode {
    kvm_mcp::cli::entry::main()
}
