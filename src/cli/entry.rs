//! What the `kvm-mcp` binary runs: parses the command line, loads the config, and hands
//! over to the CLI, the supervisor, the pool owner or the MCP server. Errors print as
//! one line on stderr. It lives in the library so that a release build compiles it once,
//! in the library's parallel code-generation units, rather than again in the binary.
use super::{Cli, Command};
use crate::config::Config;
use crate::error::{ErrorKind, chain};
use crate::ids::VmName;
use crate::ops::Ops;
use crate::supervise::vm::Finished;
use clap::Parser;

fn fail(kind: ErrorKind, err: &(dyn std::error::Error + 'static)) -> std::process::ExitCode {
    eprintln!("kvm-mcp: {}", chain(err));
    std::process::ExitCode::from(u8::try_from(kind.exit_code()).unwrap_or(1))
}

/// `kvm-mcp pool-own TEMPLATE`: one owner per pool (a lock in the run directory), which
/// reports on the ready pipe and then keeps the pool full until it is removed or a
/// SIGTERM or SIGINT comes.
async fn own_pool(cfg: Config, template: &str, ready_fd: Option<i32>) -> std::process::ExitCode {
    // SAFETY: the front end passes the write end of a pipe at this number and nothing
    // else in this process owns it.
    let mut ready = unsafe { crate::supervise::ready::Reporter::from_raw_fd(ready_fd) };
    let name = match VmName::new(template) {
        Ok(n) => n,
        Err(e) => {
            ready.fail(ErrorKind::InvalidInput, &e.to_string(), &[]);
            return fail(ErrorKind::InvalidInput, &e);
        }
    };
    let ops = match Ops::new(cfg) {
        Ok(o) => o,
        Err(e) => {
            ready.fail(e.kind(), &chain(&e), &[]);
            return fail(e.kind(), &e);
        }
    };
    let lock_path = ops.pool_lock(&name);
    let dir = lock_path.parent().unwrap_or(&lock_path).to_owned();
    let _lock = match crate::supervise::take_singleton(&dir, &lock_path) {
        Ok(Some(l)) => l,
        Ok(None) => {
            ready.ok("another owner keeps this pool");
            return std::process::ExitCode::SUCCESS;
        }
        Err(e) => {
            ready.fail(ErrorKind::Internal, &chain(&e), &[]);
            return fail(ErrorKind::Internal, &e);
        }
    };
    // Refill boots yield to the VMs in use. Only where a claim can set the claimed VM
    // back (root): an unprivileged owner would leave every claimed VM niced for good.
    if nix::unistd::geteuid().is_root()
        && let Err(e) = crate::supervise::renice(std::process::id().cast_signed(), crate::supervise::POOL_NICE)
    {
        tracing::warn!(error = %e, "cannot lower the pool owner's priority");
    }
    ready.ok("owning the pool");
    let cancel = tokio_util::sync::CancellationToken::new();
    let stop = cancel.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        if let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            stop.cancel();
        }
    });
    ops.own_pool(name.as_str(), &cancel).await;
    std::process::ExitCode::SUCCESS
}

/// The binary's `main`: parse, load the config, hand over.
#[must_use]
pub fn main() -> std::process::ExitCode {
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
        log.file = Some(cfg.state_dir.join(crate::serve::LOG_FILE));
    }
    if let Err(e) = crate::logging::init(&log, quiet) {
        eprintln!("kvm-mcp: cannot open log file: {e}");
    }
    if let Command::Serve(args) = cli.command {
        return match crate::serve::run(cfg, &args) {
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
                match crate::supervise::vm::run(&cfg, &name, adopt, ready_fd).await {
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
            Command::PoolOwn { template, ready_fd } => own_pool(cfg, &template, ready_fd).await,
            Command::DhcpSupervise { bridge, ready_fd } => {
                let bridge = match crate::ids::IfName::new(&bridge) {
                    Ok(b) => b,
                    Err(e) => return fail(ErrorKind::InvalidInput, &e),
                };
                match crate::supervise::dhcp::run(&cfg, &bridge, ready_fd).await {
                    Ok(()) => std::process::ExitCode::SUCCESS,
                    Err(e) => fail(ErrorKind::Internal, &e),
                }
            }
            Command::Run(args) => match Ops::new(cfg) {
                Ok(ops) => std::process::ExitCode::from(crate::cli::run::run(&ops, cli.json, &args).await),
                Err(e) => {
                    eprintln!("kvm-mcp run: {}", chain(&e));
                    std::process::ExitCode::from(crate::cli::run::EXIT_FAILED)
                }
            },
            cmd => {
                let ops = match Ops::new(cfg) {
                    Ok(o) => o,
                    Err(e) => return fail(e.kind(), &e),
                };
                match crate::cli::run(&ops, cli.json, cmd).await {
                    Ok(()) => std::process::ExitCode::SUCCESS,
                    Err(e) => fail(e.kind(), &e),
                }
            }
        }
    })
}
