//! The human command line: parses arguments, calls `ops`, prints aligned tables (or JSON
//! with `--json`). Exit status 0 on success; otherwise a one-line reason on stderr and
//! a non-zero code chosen by the error's kind.

pub mod entry;
mod guest;
mod net;
pub mod run;
mod storage;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde::Serialize;

pub use net::{ForwardCommand, NetCommand, parse_nic};

use crate::ids::PortForward;
use crate::ids::VmName;
use crate::ops::{CreateRequest, NicRequest, Ops, OpsError, StopOptions, VmInfo, VmSummary, no_progress};
use crate::spec::RestartPolicy;

/// Run QEMU/KVM virtual machines without libvirt.
#[derive(Debug, Parser)]
#[command(name = "kvm-mcp", version, about)]
pub struct Cli {
    /// Config file (default: $KVM_MCP_CONFIG, ./config.json, /etc/kvm-mcp/config.json).
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Manage virtual machines.
    #[command(subcommand)]
    Vm(VmCommand),
    /// Facts about this host.
    #[command(subcommand)]
    Host(HostCommand),
    /// Guest addresses, port forwards and NIC counters.
    #[command(subcommand)]
    Net(NetCommand),
    /// List the QEMU profiles (os_variant values).
    Profiles,
    /// Images, ISOs, clones, disk growth and reset, CD-ROM media.
    #[command(subcommand)]
    Storage(storage::StorageCommand),
    /// Run a command in a throw-away VM: made, booted, used and deleted (for CI jobs).
    Run(Box<run::RunArgs>),
    /// Serve MCP: on stdin/stdout for an MCP host, or Streamable HTTP with --http.
    Serve(ServeArgs),
    /// Run the per-VM supervisor (started by `vm start`; not for direct use).
    #[command(hide = true)]
    Supervise {
        name: String,
        #[arg(long)]
        adopt: bool,
        #[arg(long)]
        ready_fd: Option<i32>,
    },
    /// Keep a template's warm pool full (started on demand; not for direct use).
    #[command(hide = true)]
    PoolOwn {
        template: String,
        #[arg(long)]
        ready_fd: Option<i32>,
    },
    /// Run a managed bridge's DHCP supervisor (started on demand; not for direct use).
    #[command(hide = true)]
    DhcpSupervise {
        bridge: String,
        #[arg(long)]
        ready_fd: Option<i32>,
    },
}

/// `kvm-mcp serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Serve Streamable HTTP at /mcp (plus /healthz and /metrics) instead of stdio, on
    /// ADDR or, without one, on server.listen from the config (127.0.0.1:8745).
    #[arg(long, value_name = "ADDR", num_args = 0..=1)]
    pub http: Option<Option<std::net::SocketAddr>>,
    /// Accept HTTP requests without a token (only when listening on loopback).
    #[arg(long, requires = "http")]
    pub no_auth: bool,
}

/// `kvm-mcp host …`.
#[derive(Debug, Subcommand)]
pub enum HostCommand {
    /// Accelerator (and why), QEMU version, memory and disk space.
    Info,
    /// CPU use, memory and free space where VM disks live.
    Stats,
}

/// `kvm-mcp vm …`.
#[derive(Debug, Subcommand)]
pub enum VmCommand {
    /// List defined VMs.
    List {
        /// Ask each running QEMU for its status instead of reading status files.
        #[arg(long)]
        live: bool,
    },
    /// Show one VM.
    Info { name: String },
    /// Define a VM (defaults come from config.json).
    Create(Box<CreateArgs>),
    /// Start a VM and wait until QEMU runs.
    Start { name: String },
    /// Stop a VM: ACPI power button, then force after the timeout.
    Stop {
        name: String,
        /// Skip the power button: QMP quit, SIGTERM, SIGKILL.
        #[arg(long)]
        force: bool,
        /// Seconds to keep pressing the power button before forcing.
        #[arg(long)]
        timeout: Option<u64>,
    },
    /// Reset a running VM.
    Reboot { name: String },
    /// Make a stopped VM a template (a base linked clones overlay), or with --image a
    /// new template on an overlay of that image; --pool keeps clones of it warm.
    Template {
        name: String,
        /// A new template on this image (in an image directory; it is never written).
        #[arg(long)]
        image: Option<std::path::PathBuf>,
        /// With --image: guest RAM in MiB.
        #[arg(long)]
        memory: Option<u64>,
        /// With --image: virtual CPUs.
        #[arg(long)]
        vcpus: Option<u32>,
        /// With --image: the profile (`kvm-mcp profiles`).
        #[arg(long)]
        os_variant: Option<String>,
        /// Keep this many clones booted and paused for `run --template` (0 removes the pool).
        #[arg(long)]
        pool: Option<u32>,
    },
    /// Keep SIZE clones of a stopped VM (then a template) booted and paused, ready for
    /// `run --template`; 0 removes the pool.
    Pool { name: String, size: u32 },
    /// Fork a running VM: COUNT copies that go on from this moment (RAM, devices and
    /// disk), each with its own MAC and host name; the original keeps running.
    Fork {
        name: String,
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// A copy's name (once per copy; default NAME-1, NAME-2, …).
        #[arg(long = "name", value_name = "COPY")]
        names: Vec<String>,
        /// Delete each copy after this many seconds.
        #[arg(long, value_name = "SECONDS")]
        ttl: Option<u64>,
    },
    /// Pause a running VM's vCPUs.
    Pause { name: String },
    /// Resume a paused VM.
    Resume { name: String },
    /// Delete a VM's definition and state (disk images you supplied stay).
    Delete {
        name: String,
        /// Stop it first if it is running.
        #[arg(long)]
        force: bool,
        /// Keep the disks kvm-mcp created for it.
        #[arg(long)]
        keep_disks: bool,
    },
    /// Attach a new supervisor to a VM whose supervisor died.
    Adopt { name: String },
    #[command(flatten)]
    Guest(guest::GuestCommand),
}

/// `kvm-mcp vm create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// VM name (default: vm.default_name).
    pub name: Option<String>,
    /// Memory in MiB.
    #[arg(long)]
    pub memory: Option<u64>,
    /// Number of vCPUs.
    #[arg(long)]
    pub vcpus: Option<u32>,
    /// Profile (see `kvm-mcp profiles`).
    #[arg(long)]
    pub os_variant: Option<String>,
    /// Existing disk image (qcow2 or raw) to boot from.
    #[arg(long)]
    pub disk: Option<PathBuf>,
    /// Kernel for direct boot.
    #[arg(long)]
    pub kernel: Option<PathBuf>,
    /// Initrd for direct boot.
    #[arg(long)]
    pub initrd: Option<PathBuf>,
    /// Kernel command line for direct boot.
    #[arg(long)]
    pub cmdline: Option<String>,
    /// "user", "none" or a bridge name (one NIC).
    #[arg(long)]
    pub network: Option<String>,
    /// Port forward of the user-mode NIC, `[HOST_ADDR:]HOST_PORT:GUEST_PORT[/udp]`; repeatable.
    #[arg(long = "forward")]
    pub forwards: Vec<PortForward>,
    /// A NIC, `NETWORK[,mac=M][,model=X][,forward=F]…`; repeatable, instead of --network.
    #[arg(long = "nic", value_parser = parse_nic)]
    pub nics: Vec<NicRequest>,
    /// never, on-failure or always.
    #[arg(long)]
    pub restart: Option<RestartPolicy>,
    /// Start it right away.
    #[arg(long)]
    pub start: bool,
    /// Stop and delete the VM this many seconds after creation (its supervisor does it).
    #[arg(long)]
    pub ttl: Option<u64>,
    #[command(flatten)]
    pub storage: storage::CreateDiskArgs,
}

/// Formats rows as left-aligned columns.
#[must_use]
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s: String = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}  ")).collect();
        s.truncate(s.trim_end().len());
        s
    };
    let mut out = line(header.to_vec());
    for r in rows {
        out.push('\n');
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

fn uptime(s: Option<u64>) -> String {
    s.map_or_else(
        || "-".into(),
        |s| {
            if s >= 3600 { format!("{}h{:02}m", s / 3600, s % 3600 / 60) } else { format!("{}m{:02}s", s / 60, s % 60) }
        },
    )
}

fn summary_rows(vms: &[VmSummary]) -> String {
    let rows: Vec<Vec<String>> = vms
        .iter()
        .map(|v| {
            let state = match (v.state, v.unsupervised) {
                (None, _) => "incomplete".to_owned(),
                (Some(s), true) => format!("{s} (unsupervised)"),
                (Some(s), false) => s.to_string(),
            };
            vec![
                v.name.clone(),
                state,
                v.vcpus.to_string(),
                format!("{} MiB", v.memory_mib),
                uptime(v.uptime_s),
                v.pid.map_or_else(|| "-".into(), |p| p.to_string()),
            ]
        })
        .collect();
    table(&["NAME", "STATE", "VCPUS", "MEMORY", "UPTIME", "PID"], &rows)
}

fn info_text(i: &VmInfo) -> String {
    let mut rows = vec![
        vec!["name".into(), i.name.clone()],
        vec!["uuid".into(), i.uuid.clone()],
        vec!["state".into(), format!("{}{}", i.state, if i.unsupervised { " (unsupervised)" } else { "" })],
        vec![
            "reason".into(),
            format!("{:?}{}", i.reason, i.detail.as_ref().map_or(String::new(), |d| format!(": {d}"))),
        ],
        vec!["os_variant".into(), i.os_variant.clone()],
        vec!["vcpus".into(), i.vcpus.to_string()],
        vec!["memory".into(), format!("{} MiB", i.memory_mib)],
        vec!["uptime".into(), uptime(i.uptime_s)],
        vec!["pid".into(), i.pid.map_or_else(|| "-".into(), |p| p.to_string())],
        vec!["accel".into(), i.accel.clone().unwrap_or_else(|| "-".into())],
        vec!["restart".into(), format!("{:?} ({} restarts)", i.restart_policy, i.restarts)],
        vec!["serial log".into(), i.serial_log.display().to_string()],
    ];
    for d in &i.disks {
        rows.push(vec!["disk".into(), format!("{} ({:?})", d.path.display(), d.format)]);
    }
    for n in &i.nics {
        let model = n.model.as_deref().map_or_else(String::new, |m| format!(" ({m})"));
        rows.push(vec!["nic".into(), format!("{} {}{model}", n.mode.label(), n.mac)]);
        if let crate::spec::NetworkMode::User { port_forwards } = &n.mode {
            for f in port_forwards {
                rows.push(vec!["forward".into(), f.to_string()]);
            }
        }
    }
    for n in i.ips.iter().flat_map(|r| &r.nics) {
        for a in &n.addresses {
            let age = a.age_s.map_or_else(String::new, |s| format!(", {s} s old"));
            let guess = if a.source == crate::ops::IpSource::Slirp { ", a guess" } else { "" };
            rows.push(vec!["ip".into(), format!("{} (NIC {}, {:?}{guess}{age})", a.ip, n.index, a.source)]);
        }
        if let Some(note) = &n.note {
            rows.push(vec!["ip".into(), format!("none on NIC {}: {note}", n.index)]);
        }
    }
    for l in &i.log_tail {
        rows.push(vec!["qemu log".into(), l.clone()]);
    }
    table(&["FIELD", "VALUE"], &rows)
}

fn print<T: Serialize>(json: bool, value: &T, text: impl FnOnce(&T) -> String) {
    if json {
        println!("{}", serde_json::to_string_pretty(value).unwrap_or_default());
    } else {
        println!("{}", text(value));
    }
}

/// Runs a `vm`, `host` or `profiles` command.
///
/// # Errors
/// Whatever the operation returned.
pub async fn run(ops: &Ops, json: bool, cmd: Command) -> Result<(), OpsError> {
    match cmd {
        Command::Vm(vm) => run_vm(ops, json, vm).await,
        Command::Net(n) => net::run(ops, json, n).await,
        Command::Host(HostCommand::Info) => {
            let h = ops.host_info().await?;
            print(json, &h, |h| {
                let gib = |b: u64| format!("{:.1} GiB", b as f64 / f64::from(1u32 << 30));
                let free = |d: &crate::ops::DiskSpace| d.free_bytes.map_or_else(|| "?".into(), gib);
                table(
                    &["FIELD", "VALUE"],
                    &[
                        vec!["accel".into(), h.accel.map_or_else(|| "unusable".into(), |a| a.as_str().to_owned())],
                        vec!["why".into(), h.accel_reason.clone()],
                        vec!["qemu".into(), h.qemu_version.clone()],
                        vec!["cpus".into(), h.cpus.to_string()],
                        vec![
                            "memory".into(),
                            format!("{} available of {}", gib(h.memory_available_bytes), gib(h.memory_total_bytes)),
                        ],
                        vec![
                            "disk_path".into(),
                            format!("{} ({} free)", h.disk_path.path.display(), free(&h.disk_path)),
                        ],
                        vec![
                            "state_dir".into(),
                            format!("{} ({} free)", h.state_dir.path.display(), free(&h.state_dir)),
                        ],
                        vec!["vms".into(), format!("{} defined, {} running", h.vms_defined, h.vms_running)],
                        vec![
                            "pools".into(),
                            if h.pools.is_empty() {
                                "-".into()
                            } else {
                                h.pools
                                    .iter()
                                    .map(|p| format!("{}: {} of {}", p.template, p.members, p.size))
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            },
                        ],
                    ],
                )
            });
            Ok(())
        }
        Command::Host(HostCommand::Stats) => guest::host_stats(ops, json).await,
        Command::Profiles => {
            let p = ops.list_profiles();
            print(json, &p, |p| {
                let rows: Vec<Vec<String>> = p
                    .iter()
                    .map(|x| {
                        vec![
                            x.name.clone() + if x.is_default { " *" } else { "" },
                            x.machine.clone(),
                            format!("{:?}", x.disk_bus).to_lowercase(),
                            x.nic_model.clone(),
                            x.description.clone(),
                        ]
                    })
                    .collect();
                table(&["NAME", "MACHINE", "DISK", "NIC", "DESCRIPTION"], &rows)
            });
            Ok(())
        }
        Command::Storage(c) => storage::run(ops, json, c, |i| print(json, &i, info_text)).await,
        Command::Supervise { .. }
        | Command::DhcpSupervise { .. }
        | Command::PoolOwn { .. }
        | Command::Serve(_)
        | Command::Run(_) => Ok(()),
    }
}

async fn run_vm(ops: &Ops, json: bool, cmd: VmCommand) -> Result<(), OpsError> {
    let show = |i: VmInfo| print(json, &i, info_text);
    match cmd {
        VmCommand::List { live } => {
            let mut vms = if live { ops.list_live().await? } else { ops.list()? };
            ops.reap_ended(&mut vms).await;
            print(json, &vms, |v| summary_rows(v));
        }
        VmCommand::Info { name } => show(ops.info_live(&name).await?),
        VmCommand::Create(a) => {
            let a = *a;
            if let Some(n) = &a.name {
                VmName::new(n)?;
            }
            let mut req = CreateRequest {
                name: a.name,
                memory_mib: a.memory,
                vcpus: a.vcpus,
                os_variant: a.os_variant,
                disk: None,
                kernel: a.kernel,
                initrd: a.initrd,
                cmdline: a.cmdline,
                network: a.network,
                port_forwards: a.forwards,
                nics: a.nics,
                restart_policy: a.restart,
                start: a.start,
                ttl_s: a.ttl,
                ..CreateRequest::default()
            };
            a.storage.apply(&mut req, a.disk)?;
            show(ops.create(req).await?);
        }
        VmCommand::Start { name } => show(ops.start(&name).await?),
        VmCommand::Stop { name, force, timeout } => {
            let opts = StopOptions { force, timeout: timeout.map(Duration::from_secs) };
            show(ops.stop(&name, opts, &no_progress).await?);
        }
        VmCommand::Reboot { name } => show(ops.reboot(&name).await?),
        VmCommand::Template { name, image, memory, vcpus, os_variant, pool } => {
            let req =
                crate::ops::TemplateRequest { name, image, memory_mib: memory, vcpus, os_variant, pool_size: pool };
            show(ops.create_template(req).await?);
        }
        VmCommand::Pool { name, size } => show(ops.set_pool(&name, size).await?),
        VmCommand::Fork { name, count, names, ttl } => {
            let req = crate::ops::ForkRequest {
                name,
                count,
                names: (!names.is_empty()).then_some(names),
                ttl_s: ttl,
                owner: None,
            };
            let r = ops.fork_vm(req, &tokio_util::sync::CancellationToken::new()).await?;
            print(json, &r, |r| {
                let mut s = format!(
                    "forked {} into {} in {} ms (paused {} ms; state {} MiB, new disk {} MiB)",
                    r.source,
                    r.copies.len(),
                    r.total_ms,
                    r.paused_ms,
                    r.state_bytes >> 20,
                    r.disk_bytes >> 20
                );
                for c in &r.copies {
                    s.push_str(&format!("\n{}  {}  {}", c.name, c.macs.join(","), c.hostname));
                    if let Some(e) = &c.identity_error {
                        s.push_str(&format!("  (identity not refreshed: {e})"));
                    }
                }
                s
            });
        }
        VmCommand::Pause { name } => show(ops.pause(&name).await?),
        VmCommand::Resume { name } => show(ops.resume(&name).await?),
        VmCommand::Adopt { name } => show(ops.adopt(&name).await?),
        VmCommand::Guest(g) => guest::run(ops, json, g).await?,
        VmCommand::Delete { name, force, keep_disks } => {
            let r = ops.delete_with(&name, crate::ops::DeleteOptions { force, keep_disks }).await?;
            print(json, &r, |r| {
                let mut s = format!("deleted {name}");
                for p in &r.removed {
                    s.push_str(&format!("\nremoved {}", p.display()));
                }
                for p in &r.kept {
                    s.push_str(&format!("\nkept {}", p.display()));
                }
                s
            });
        }
    }
    Ok(())
}
