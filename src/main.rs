//! The `kvm-mcp` binary: parses the command line, loads the config, and hands over to
//! the CLI, the supervisor or the MCP server. Errors print as one line on stderr.

use clap::Parser;
use kvm_mcp::cli::{Cli, Command};
use kvm_mcp::config::Config;
use kvm_mcp::error::{ErrorKind, chain};
use kvm_mcp::ids::VmName;
use kvm_mcp::ops::Ops;
use kvm_mcp::supervise::vm::Finished;

fn fail(kind: ErrorKind, err: &(dyn std::error::Error + 'static)) -> std::process::ExitCode {
    eprintln!("kvm-mcp: {}", chain(err));
    std::process::ExitCode::from(u8::try_from(kind.exit_code()).unwrap_or(1))
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let cfg = match Config::discover(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => return fail(ErrorKind::InvalidInput, &e),
    };
    // A CLI command reports through its output and exit status; its stderr carries
    // warnings only. Long-running commands log at the configured level.
    let quiet = matches!(
        cli.command,
        Command::Vm(_) | Command::Host(_) | Command::Net(_) | Command::Profiles | Command::Storage(_) | Command::Run(_)
    );
    let mut log = cfg.logging.clone();
    if matches!(cli.command, Command::Serve(_)) && log.file.is_none() {
        log.file = Some(cfg.state_dir.join(kvm_mcp::serve::LOG_FILE));
    }
    if let Err(e) = kvm_mcp::logging::init(&log, quiet) {
        eprintln!("kvm-mcp: cannot open log file: {e}");
    }
    if let Command::Serve(args) = cli.command {
        return match kvm_mcp::serve::run(cfg, &args) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => fail(e.kind(), &e),
        };
    }
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return fail(ErrorKind::Internal, &e),
    };
    rt.block_on(async move {
        match cli.command {
            Command::Supervise { name, adopt, ready_fd } => {
                let name = match VmName::new(&name) {
                    Ok(n) => n,
                    Err(e) => return fail(ErrorKind::InvalidInput, &e),
                };
                match kvm_mcp::supervise::vm::run(&cfg, &name, adopt, ready_fd).await {
                    Ok(Finished::Off) => std::process::ExitCode::SUCCESS,
                    // The supervisor has let go of the VM: delete it as any front end would.
                    Ok(Finished::LeaseEnded(end)) => match Ops::new(cfg) {
                        Ok(ops) => match ops.delete(name.as_str(), false).await {
                            Ok(()) => {
                                tracing::info!(vm = %name, %end, "deleted: its lease ended");
                                std::process::ExitCode::SUCCESS
                            }
                            // Deleted meanwhile by a front end.
                            Err(e) if e.kind() == ErrorKind::NotFound => std::process::ExitCode::SUCCESS,
                            Err(e) => fail(e.kind(), &e),
                        },
                        Err(e) => fail(e.kind(), &e),
                    },
                    Err(e) => fail(ErrorKind::Internal, &e),
                }
            }
            Command::DhcpSupervise { bridge, ready_fd } => {
                let bridge = match kvm_mcp::ids::IfName::new(&bridge) {
                    Ok(b) => b,
                    Err(e) => return fail(ErrorKind::InvalidInput, &e),
                };
                match kvm_mcp::supervise::dhcp::run(&cfg, &bridge, ready_fd).await {
                    Ok(()) => std::process::ExitCode::SUCCESS,
                    Err(e) => fail(ErrorKind::Internal, &e),
                }
            }
            Command::Run(args) => match Ops::new(cfg) {
                Ok(ops) => std::process::ExitCode::from(kvm_mcp::cli::run::run(&ops, cli.json, &args).await),
                Err(e) => {
                    eprintln!("kvm-mcp run: {}", chain(&e));
                    std::process::ExitCode::from(kvm_mcp::cli::run::EXIT_FAILED)
                }
            },
            cmd => {
                let ops = match Ops::new(cfg) {
                    Ok(o) => o,
                    Err(e) => return fail(e.kind(), &e),
                };
                match kvm_mcp::cli::run(&ops, cli.json, cmd).await {
                    Ok(()) => std::process::ExitCode::SUCCESS,
                    Err(e) => fail(e.kind(), &e),
                }
            }
        }
    })
}
