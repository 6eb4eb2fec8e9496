//! `kvm-mcp net …`: guest addresses, port forwards and NIC counters; and the `--nic`
//! syntax of `vm create`.

use clap::Subcommand;

use super::{print, table};
use crate::ids::{ForwardSelector, PortForward};
use crate::ops::{IpQuery, IpSource, NicRequest, NicStats, Ops, OpsError, PortForwardInfo, Progress, VmIps};

/// `kvm-mcp net …`.
#[derive(Debug, Subcommand)]
pub enum NetCommand {
    /// A running guest's IP addresses, each with its source and age.
    Ip {
        name: String,
        /// Wait up to this many seconds for an address to appear.
        #[arg(long)]
        wait: Option<u64>,
        /// Ask every source (agent, DHCP leases, neighbour table, slirp), not just the first that answers.
        #[arg(long)]
        all: bool,
    },
    /// Port forwards of user-mode NICs.
    #[command(subcommand)]
    Forward(ForwardCommand),
    /// Per-NIC rx/tx bytes, packets, errors and drops (bridged NICs of a running VM).
    Stats { name: String },
}

/// `kvm-mcp net forward …`.
#[derive(Debug, Subcommand)]
pub enum ForwardCommand {
    /// List a VM's port forwards (and whether QEMU listens on them now).
    List { name: String },
    /// Add a forward, `[HOST_ADDR:]HOST_PORT:GUEST_PORT[/udp]` (host address 127.0.0.1
    /// unless given); applied at once when running, kept across restarts.
    Add {
        name: String,
        forward: PortForward,
        /// Index of the user-mode NIC (default: the first).
        #[arg(long)]
        nic: Option<usize>,
    },
    /// Remove a forward, `[HOST_ADDR:]HOST_PORT[/udp]`.
    Remove {
        name: String,
        forward: ForwardSelector,
        /// Index of the user-mode NIC (default: any).
        #[arg(long)]
        nic: Option<usize>,
    },
}

/// Parses `vm create --nic NETWORK[,mac=M][,model=X][,forward=F]...`.
///
/// # Errors
/// A message naming the bad item.
pub fn parse_nic(s: &str) -> Result<NicRequest, String> {
    let mut items = s.split(',');
    let network = items.next().unwrap_or_default().trim().to_owned();
    if network.is_empty() || network.contains('=') {
        return Err(format!("{s:?}: start with the network (\"user\" or a bridge name), e.g. user,forward=2222:22"));
    }
    let mut nic = NicRequest { network, ..NicRequest::default() };
    for item in items {
        match item.split_once('=') {
            Some(("mac", v)) => nic.mac = Some(v.to_owned()),
            Some(("model", v)) => nic.model = Some(v.to_owned()),
            Some(("forward", v)) => nic.port_forwards.push(v.parse().map_err(|e| format!("{e}"))?),
            _ => return Err(format!("{item:?}: expected mac=…, model=… or forward=…")),
        }
    }
    Ok(nic)
}

fn ips_text(r: &VmIps) -> String {
    let mut rows = Vec::new();
    for n in &r.nics {
        let row = |address: String, source: String, age: String| {
            vec![
                n.index.to_string(),
                n.mac.to_string(),
                n.network.clone(),
                n.guest_interface.clone().unwrap_or_else(|| "-".into()),
                address,
                source,
                age,
            ]
        };
        if n.addresses.is_empty() {
            rows.push(row("none".into(), "-".into(), "-".into()));
        }
        for a in &n.addresses {
            let source =
                serde_json::to_value(a.source).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default();
            rows.push(row(
                a.prefix_len.map_or_else(|| a.ip.to_string(), |p| format!("{}/{p}", a.ip)),
                if a.source == IpSource::Slirp { format!("{source} (guess)") } else { source },
                a.age_s.map_or_else(|| "-".into(), |s| format!("{s}s")),
            ));
        }
    }
    let mut out = table(&["NIC", "MAC", "NETWORK", "GUEST_IF", "ADDRESS", "SOURCE", "AGE"], &rows);
    for n in &r.notes {
        out.push_str("\nnote: ");
        out.push_str(n);
    }
    out
}

fn forwards_text(f: &[PortForwardInfo]) -> String {
    let rows: Vec<Vec<String>> = f
        .iter()
        .map(|p| {
            vec![
                p.nic.to_string(),
                p.forward.protocol.to_string(),
                format!("{}:{}", p.forward.host_addr, p.forward.host_port),
                p.forward
                    .guest_addr
                    .map_or_else(|| p.forward.guest_port.to_string(), |a| format!("{a}:{}", p.forward.guest_port)),
                p.active.map_or_else(|| "-".into(), |a| if a { "yes".into() } else { "no".into() }),
            ]
        })
        .collect();
    table(&["NIC", "PROTO", "HOST", "GUEST", "ACTIVE"], &rows)
}

fn stats_text(s: &[NicStats]) -> String {
    let rows: Vec<Vec<String>> = s
        .iter()
        .map(|n| {
            let mut r = vec![n.index.to_string(), n.network.clone(), n.tap.clone().unwrap_or_else(|| "-".into())];
            match &n.counters {
                Some(st) => r.extend(
                    [
                        st.rx_bytes,
                        st.rx_packets,
                        st.rx_errors,
                        st.rx_dropped,
                        st.tx_bytes,
                        st.tx_packets,
                        st.tx_errors,
                        st.tx_dropped,
                    ]
                    .map(|v| v.to_string()),
                ),
                None => r.extend(std::iter::repeat_n("-".to_owned(), 8)),
            }
            r.push(n.note.clone().unwrap_or_default());
            r
        })
        .collect();
    table(
        &[
            "NIC", "NETWORK", "TAP", "RX_BYTES", "RX_PKTS", "RX_ERRS", "RX_DROP", "TX_BYTES", "TX_PKTS", "TX_ERRS",
            "TX_DROP", "NOTE",
        ],
        &rows,
    )
}

/// Runs a `net` command.
///
/// # Errors
/// Whatever the operation returned.
pub async fn run(ops: &Ops, json: bool, cmd: NetCommand) -> Result<(), OpsError> {
    match cmd {
        NetCommand::Ip { name, wait, all } => {
            let progress = |p: Progress| eprintln!("{}", p.message);
            let r = ops.get_vm_ip(&name, IpQuery { wait_s: wait, all_sources: all }, &progress).await?;
            print(json, &r, ips_text);
        }
        NetCommand::Forward(ForwardCommand::List { name }) => {
            print(json, &ops.list_port_forwards(&name).await?, |f| forwards_text(f));
        }
        NetCommand::Forward(ForwardCommand::Add { name, forward, nic }) => {
            print(json, &ops.add_port_forward(&name, nic, forward).await?, |f| forwards_text(f));
        }
        NetCommand::Forward(ForwardCommand::Remove { name, forward, nic }) => {
            print(json, &ops.remove_port_forward(&name, nic, forward).await?, |f| forwards_text(f));
        }
        NetCommand::Stats { name } => print(json, &ops.nic_stats(&name).await?, |s| stats_text(s)),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nic_with_every_option_parses() {
        let n = parse_nic("user,mac=52:54:00:aa:bb:cc,model=e1000,forward=2222:22,forward=5353:53/udp").unwrap();
        assert_eq!(
            (n.network.as_str(), n.mac.as_deref(), n.model.as_deref(), n.port_forwards.len()),
            ("user", Some("52:54:00:aa:bb:cc"), Some("e1000"), 2)
        );
    }

    #[test]
    fn bare_bridge_name_is_a_nic() {
        assert_eq!(parse_nic("labbr0").unwrap(), NicRequest { network: "labbr0".into(), ..NicRequest::default() });
    }

    #[test]
    fn unknown_nic_option_is_refused() {
        assert!(parse_nic("user,speed=10").is_err());
    }
}
