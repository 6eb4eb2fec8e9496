//! `kvm-mcp vm …` commands for the console, display, guest agent and figures, and
//! `kvm-mcp host stats`.

use std::io::{Read as _, Write as _};
use std::path::PathBuf;
use std::time::Duration;

use clap::Subcommand;
use tokio_util::sync::CancellationToken;

use super::{print, table};
use crate::console::attach::{self, Detach};
use crate::ops::{GuestExecRequest, Ops, OpsError, Progress, no_progress};

/// Exit status of `vm exec` when the command outlived its timeout (as timeout(1)).
const EXIT_TIMED_OUT: i32 = 124;

/// Console, display, guest agent and figures (flattened into `kvm-mcp vm`).
#[derive(Debug, Subcommand)]
pub enum GuestCommand {
    /// Attach this terminal to the serial console (detach with Ctrl-]).
    Console {
        name: String,
        /// Detach key as a control character, e.g. "^]" (default) or "^x".
        #[arg(long, default_value = "^]")]
        escape: String,
    },
    /// Print the serial console log (last lines, or from a byte offset).
    ConsoleLog {
        name: String,
        /// How many lines from the end.
        #[arg(long)]
        lines: Option<usize>,
        /// Absolute byte offset to start at (a previous next_offset).
        #[arg(long)]
        since: Option<u64>,
    },
    /// Wait until a console line matches a regular expression; print that line.
    WaitConsole {
        name: String,
        pattern: String,
        /// Seconds to wait.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
        /// Absolute byte offset to look from (default: start of the current run).
        #[arg(long)]
        since: Option<u64>,
    },
    /// VNC address of every running VM, or of one VM with its password.
    Vnc { name: Option<String> },
    /// Save a PNG screenshot of the VM's screen.
    Screenshot {
        name: String,
        /// Output file (default: <name>.png).
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Press key combinations, e.g. ctrl-alt-delete.
    SendKeys {
        name: String,
        #[arg(required = true)]
        keys: Vec<String>,
    },
    /// Type text on the VM's keyboard (US layout); "\n" in the text presses Enter.
    Type { name: String, text: String },
    /// Check that the guest agent answers.
    Ping { name: String },
    /// Run a command in the guest through the agent; exits with its exit code.
    Exec {
        name: String,
        /// Seconds before the command is killed.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
        /// Pass this process's stdin to the command.
        #[arg(long)]
        stdin: bool,
        /// Program and arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Copy a guest file to a local file (or stdout).
    FileRead {
        name: String,
        path: String,
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Write a local file (or stdin) to a guest file.
    FileWrite {
        name: String,
        path: String,
        /// Local file to send (default: stdin).
        #[arg(long)]
        from: Option<PathBuf>,
        #[arg(long)]
        append: bool,
    },
    /// OS, hostname and interfaces as the guest agent reports them.
    GuestInfo { name: String },
    /// CPU, memory, disk and NIC figures of a running VM.
    Stats {
        name: String,
        /// CPU sampling interval in milliseconds.
        #[arg(long, default_value_t = 500)]
        interval_ms: u64,
    },
}

fn escape_byte(s: &str) -> Result<u8, OpsError> {
    let bad = || OpsError::invalid("escape", format!("{s:?} is not a control character like \"^]\""));
    match s.as_bytes() {
        [b'^', c] if (b'@'..=b'_').contains(&c.to_ascii_uppercase()) => Ok(c.to_ascii_uppercase() - b'@'),
        [c] if *c < 0x20 => Ok(*c),
        _ => Err(bad()),
    }
}

fn stderr_progress(p: Progress) {
    eprintln!("kvm-mcp: {}", p.message);
}

fn write_file(path: &PathBuf, data: &[u8]) -> Result<(), OpsError> {
    std::fs::write(path, data).map_err(OpsError::io("cannot write", path))
}

/// Runs one of these commands.
///
/// # Errors
/// Whatever the operation returned.
pub async fn run(ops: &Ops, json: bool, cmd: GuestCommand) -> Result<(), OpsError> {
    let never = CancellationToken::new();
    match cmd {
        GuestCommand::Console { name, escape } => {
            let esc = escape_byte(&escape)?;
            let sock = ops.console_socket(&name)?;
            eprint!("Connected to {name}'s serial console; escape character is {escape}\r\n");
            let how = attach::attach(&sock, esc).await.map_err(OpsError::io("cannot attach to", &sock))?;
            if how == Detach::ConsoleClosed {
                eprint!("\r\nkvm-mcp: the console closed (the VM stopped)\r\n");
            } else {
                eprint!("\r\n");
            }
        }
        GuestCommand::ConsoleLog { name, lines, since } => {
            let q = crate::ops::ConsoleQuery { lines, since_offset: since, max_bytes: None };
            let log = ops.get_console_log(&name, q)?;
            print(json, &log, |l| l.text.trim_end().to_owned());
        }
        GuestCommand::WaitConsole { name, pattern, timeout, since } => {
            let m = ops
                .wait_for_console(&name, &pattern, Duration::from_secs(timeout), since, &no_progress, &never)
                .await?;
            print(json, &m, |m| m.line.clone());
        }
        GuestCommand::Vnc { name: None } => {
            let ports = ops.get_vnc_ports()?;
            print(json, &ports, |p| {
                let rows: Vec<Vec<String>> = p
                    .iter()
                    .map(|v| {
                        vec![
                            v.name.clone(),
                            format!("{}:{}", v.host, v.port),
                            v.websocket_port.map_or_else(|| "-".into(), |w| w.to_string()),
                        ]
                    })
                    .collect();
                table(&["NAME", "VNC", "WEBSOCKET"], &rows)
            });
        }
        GuestCommand::Vnc { name: Some(name) } => {
            let v = ops.get_vnc_info(&name).await?;
            print(json, &v, |v| {
                table(
                    &["FIELD", "VALUE"],
                    &[
                        vec!["vnc".into(), v.uri.clone()],
                        vec!["password".into(), v.password.clone()],
                        vec!["websocket".into(), v.websocket_port.map_or_else(|| "-".into(), |w| w.to_string())],
                        vec!["clients".into(), v.clients.to_string()],
                    ],
                )
            });
        }
        GuestCommand::Screenshot { name, output } => {
            let shot = ops.screenshot(&name).await?;
            let path = output.unwrap_or_else(|| PathBuf::from(format!("{name}.png")));
            write_file(&path, &shot.png)?;
            let v =
                serde_json::json!({ "file": path, "width": shot.width, "height": shot.height, "bytes": shot.bytes });
            print(json, &v, |_| format!("{} ({}x{}, {} bytes)", path.display(), shot.width, shot.height, shot.bytes));
        }
        GuestCommand::SendKeys { name, keys } => {
            let n = ops.send_keys(&name, &keys, None).await?;
            print(json, &serde_json::json!({ "sent": n }), |_| format!("sent {n} key combination(s)"));
        }
        GuestCommand::Type { name, text } => {
            let text = text.replace("\\n", "\n").replace("\\t", "\t");
            let n = ops.type_text(&name, &text, None).await?;
            print(json, &serde_json::json!({ "typed": n }), |_| format!("typed {n} character(s)"));
        }
        GuestCommand::Ping { name } => {
            let d = ops.guest_ping(&name).await?;
            let ms = d.as_millis();
            print(json, &serde_json::json!({ "ok": true, "latency_ms": ms }), |_| {
                format!("guest agent answered in {ms} ms")
            });
        }
        GuestCommand::Exec { name, timeout, stdin, command } => {
            return exec(ops, json, name, timeout, stdin, command).await;
        }
        GuestCommand::FileRead { name, path, output } => {
            let f = ops.guest_file_read(&name, &path, None).await?;
            match output {
                Some(out) => {
                    write_file(&out, &f.data)?;
                    print(json, &serde_json::json!({ "file": out, "bytes": f.size }), |_| {
                        format!("{} bytes → {}", f.size, out.display())
                    });
                }
                None => std::io::stdout().write_all(&f.data).map_err(OpsError::io("cannot write", "stdout"))?,
            }
        }
        GuestCommand::FileWrite { name, path, from, append } => {
            let data = match &from {
                Some(p) => std::fs::read(p).map_err(OpsError::io("cannot read", p))?,
                None => {
                    let mut b = Vec::new();
                    std::io::stdin().read_to_end(&mut b).map_err(OpsError::io("cannot read", "stdin"))?;
                    b
                }
            };
            let n = ops.guest_file_write(&name, &path, &data, append).await?;
            print(json, &serde_json::json!({ "written": n }), |_| format!("wrote {n} bytes to {path}"));
        }
        GuestCommand::GuestInfo { name } => {
            let i = ops.guest_info(&name).await?;
            print(json, &i, |i| serde_json::to_string_pretty(i).unwrap_or_default());
        }
        GuestCommand::Stats { name, interval_ms } => {
            let s = ops.vm_stats(&name, Some(Duration::from_millis(interval_ms))).await?;
            print(json, &s, |s| {
                let mut rows = vec![
                    vec![
                        "cpu".into(),
                        format!("{:.1}% of host ({:.2} cores)", s.cpu.percent_of_host, s.cpu.cores_used),
                    ],
                    vec![
                        "memory".into(),
                        format!(
                            "{} MiB configured, QEMU RSS {} MiB",
                            s.memory.configured_bytes >> 20,
                            s.memory.qemu_rss_bytes.unwrap_or(0) >> 20
                        ),
                    ],
                ];
                for v in &s.cpu.vcpus {
                    rows.push(vec![v.thread.clone(), format!("{:.1}% of a core", v.percent_of_core)]);
                }
                for d in &s.disks {
                    rows.push(vec![
                        format!("disk {}", d.node),
                        format!(
                            "read {} B / {} ops, written {} B / {} ops",
                            d.read_bytes, d.read_ops, d.write_bytes, d.write_ops
                        ),
                    ]);
                }
                for n in &s.nics {
                    let c = n.counters.map_or_else(
                        || n.note.clone().unwrap_or_default(),
                        |c| {
                            format!(
                                "guest received {} B / {} pkts ({} errors, {} dropped), sent {} B / {} pkts ({} errors, {} dropped)",
                                c.rx_bytes,
                                c.rx_packets,
                                c.rx_errors,
                                c.rx_dropped,
                                c.tx_bytes,
                                c.tx_packets,
                                c.tx_errors,
                                c.tx_dropped
                            )
                        },
                    );
                    rows.push(vec![format!("nic {}", n.index), c]);
                }
                table(&["FIGURE", "VALUE"], &rows)
            });
        }
    }
    Ok(())
}

async fn exec(
    ops: &Ops,
    json: bool,
    name: String,
    timeout: u64,
    stdin: bool,
    command: Vec<String>,
) -> Result<(), OpsError> {
    let mut it = command.into_iter();
    let program = it.next().unwrap_or_default();
    let input = if stdin {
        let mut b = Vec::new();
        std::io::stdin().read_to_end(&mut b).map_err(OpsError::io("cannot read", "stdin"))?;
        Some(b)
    } else {
        None
    };
    let req = GuestExecRequest {
        command: program,
        args: it.collect(),
        stdin: input,
        timeout: Some(Duration::from_secs(timeout)),
        output_max_bytes: None,
    };
    let r = ops.guest_exec(&name, req, &stderr_progress, &CancellationToken::new()).await?;
    if json {
        print(true, &r, |_| String::new());
    } else {
        let _ = std::io::stdout().write_all(r.stdout.as_bytes());
        let _ = std::io::stderr().write_all(r.stderr.as_bytes());
        if r.timed_out {
            eprintln!(
                "kvm-mcp: the command outlived its {timeout} s timeout and was {}",
                if r.killed { "killed" } else { "left running (kill failed)" }
            );
        }
    }
    let _ = std::io::stdout().flush();
    let code = if r.timed_out { EXIT_TIMED_OUT } else { r.exit_code.map_or(1, |c| i32::try_from(c).unwrap_or(1)) };
    if code != 0 {
        std::process::exit(code);
    }
    Ok(())
}

/// `kvm-mcp host stats`.
///
/// # Errors
/// The host figures cannot be read.
pub async fn host_stats(ops: &Ops, json: bool) -> Result<(), OpsError> {
    let h = ops.host_stats().await?;
    print(json, &h, |h| {
        let gib = |b: u64| format!("{:.1} GiB", b as f64 / f64::from(1u32 << 30));
        table(
            &["FIELD", "VALUE"],
            &[
                vec!["cpu".into(), format!("{:.1}% of {} CPUs", h.cpu_percent, h.cpus)],
                vec![
                    "load".into(),
                    format!("{:.2} {:.2} {:.2}", h.load_average[0], h.load_average[1], h.load_average[2]),
                ],
                vec![
                    "memory".into(),
                    format!("{} available of {}", gib(h.memory_available_bytes), gib(h.memory_total_bytes)),
                ],
                vec![
                    "disk_path".into(),
                    format!(
                        "{} ({} free of {})",
                        h.disk_path.display(),
                        h.disk_available_bytes.map_or_else(|| "?".into(), gib),
                        h.disk_total_bytes.map_or_else(|| "?".into(), gib)
                    ),
                ],
            ],
        )
    });
    Ok(())
}
