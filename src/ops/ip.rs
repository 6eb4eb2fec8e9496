//! Guest IP discovery (`get_vm_ip`, and `info_live`). Sources in order of preference:
//! the guest agent (`guest-network-get-interfaces`, matched by MAC), the managed
//! bridge's DHCP leases, the bridge's neighbour table filtered by the NIC's MAC (over
//! rtnetlink), and for user-mode NICs the address QEMU's slirp DHCP hands out. Each
//! answer carries its source and age; by default a NIC's answer comes from the first
//! source that knows it, `all_sources` asks every one.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::context::Vm;
use super::views::{IpAnswer, IpSource, NicIps, VmIps};
use super::{Ops, OpsError, Progress, ProgressFn};
use crate::agent::AgentClient;
use crate::ids::{IfName, MacAddr};
use crate::layout::BridgePaths;
use crate::network::{Netlink, leases_for};
use crate::spec::NetworkMode;
use crate::state::now_ms;

/// How long the guest agent may take to synchronise in `get_vm_ip`.
const AGENT_SYNC_TIMEOUT: Duration = Duration::from_secs(3);
/// The same for `info_live`, which should stay quick when there is no agent.
pub(crate) const AGENT_SYNC_TIMEOUT_QUICK: Duration = Duration::from_secs(1);
/// How long `guest-network-get-interfaces` may take.
const AGENT_COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between attempts while waiting for an address.
const WAIT_STEP: Duration = Duration::from_secs(1);
/// The address QEMU's user-mode DHCP gives its first (and usually only) client.
pub const SLIRP_GUEST_ADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);

/// Options of `get_vm_ip`.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct IpQuery {
    /// Wait up to this many seconds for an address to appear.
    pub wait_s: Option<u64>,
    /// Ask every source instead of stopping at the first one that answers per NIC.
    #[serde(default)]
    pub all_sources: bool,
}

fn usable(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => !v4.is_loopback() && !v4.is_link_local() && !v4.is_unspecified(),
        IpAddr::V6(v6) => !v6.is_loopback() && !v6.is_unicast_link_local() && !v6.is_unspecified(),
    }
}

/// The agent's view: MAC → (address, prefix).
async fn agent_addresses(vm: &Vm, sync: Duration) -> Result<HashMap<MacAddr, Vec<(IpAddr, u8)>>, String> {
    let ifaces: Vec<qapi::qga::GuestNetworkInterface> = async {
        let mut agent = AgentClient::connect(&vm.paths.qga_sock(), sync).await?;
        agent.set_timeout(AGENT_COMMAND_TIMEOUT);
        agent.call_as("guest-network-get-interfaces", serde_json::Value::Null).await
    }
    .await
    .map_err(|e| crate::error::chain(&e))?;
    let mut out: HashMap<MacAddr, Vec<(IpAddr, u8)>> = HashMap::new();
    for i in ifaces {
        let Some(mac) = i.hardware_address.as_deref().and_then(|m| m.parse::<MacAddr>().ok()) else { continue };
        for a in i.ip_addresses.unwrap_or_default() {
            if let Ok(ip) = a.ip_address.parse::<IpAddr>()
                && usable(ip)
            {
                out.entry(mac).or_default().push((ip, u8::try_from(a.prefix).unwrap_or(0)));
            }
        }
    }
    Ok(out)
}

impl Ops {
    /// The guest's IP addresses per NIC, each labelled with its source and age. With
    /// `wait_s`, polls (reporting progress) until some address appears or time runs out.
    ///
    /// # Errors
    /// [`OpsError::NotFound`], [`OpsError::NotRunning`].
    pub async fn get_vm_ip(&self, name: &str, query: IpQuery, progress: ProgressFn<'_>) -> Result<VmIps, OpsError> {
        let vm = self.load(name)?;
        let started = Instant::now();
        let deadline = started + Duration::from_secs(query.wait_s.unwrap_or(0));
        let mut step = 0;
        loop {
            let state = Self::observe(&vm).status.state;
            if !state.is_active() {
                return Err(OpsError::NotRunning { name: name.into(), state: state.to_string() });
            }
            let mut found = self.discover(&vm, query.all_sources, AGENT_SYNC_TIMEOUT).await;
            let left = deadline.saturating_duration_since(Instant::now());
            // The slirp address is known before the guest boots; it ends the wait only
            // when no guest agent could ever confirm an address.
            let settled = match found.source {
                Some(IpSource::Slirp) => !self.has_agent_channel(&vm),
                Some(_) => true,
                None => false,
            };
            if settled || left.is_zero() || found.nics.is_empty() {
                found.waited_s = started.elapsed().as_secs();
                return Ok(found);
            }
            step += 1;
            let why =
                if found.notes.is_empty() { "no source knows an address yet".into() } else { found.notes.join("; ") };
            progress(Progress {
                step,
                total: None,
                message: format!("waiting for an address of VM {name:?} ({} s left): {why}", left.as_secs()),
            });
            tokio::time::sleep(WAIT_STEP.min(left)).await;
        }
    }

    fn has_agent_channel(&self, vm: &Vm) -> bool {
        self.profiles.get(&vm.spec.os_variant).is_ok_and(|p| p.devices.guest_agent)
    }

    /// One pass over the sources; the agent gets `agent_sync` to synchronise.
    pub(crate) async fn discover(&self, vm: &Vm, all_sources: bool, agent_sync: Duration) -> VmIps {
        let mut notes = Vec::new();
        let mut nics: Vec<NicIps> = vm
            .spec
            .nics
            .iter()
            .enumerate()
            .map(|(index, n)| NicIps { index, mac: n.mac, network: n.mode.label().to_owned(), addresses: Vec::new() })
            .collect();
        let wanted = |nics: &[NicIps], i: usize| all_sources || nics[i].addresses.is_empty();
        if nics.is_empty() {
            notes.push("the VM has no NICs".into());
        }

        // 1. The guest agent, when the profile gives the guest a channel.
        if !self.has_agent_channel(vm) {
            notes.push(format!("agent: profile {:?} has no guest agent channel", vm.spec.os_variant));
        } else if !nics.is_empty() {
            match agent_addresses(vm, agent_sync).await {
                Ok(by_mac) => {
                    for nic in &mut nics {
                        for &(ip, prefix) in by_mac.get(&nic.mac).into_iter().flatten() {
                            nic.addresses.push(IpAnswer {
                                ip,
                                prefix_len: Some(prefix),
                                source: IpSource::Agent,
                                age_s: Some(0),
                                detail: None,
                            });
                        }
                    }
                }
                Err(e) => notes.push(format!("agent: {e}")),
            }
        }

        // 2. and 3. Leases and neighbours, for bridged NICs.
        let now_s = now_ms() / 1000;
        let mut netlink: Option<Netlink> = None;
        for i in 0..nics.len() {
            let NetworkMode::Bridge { bridge } = &vm.spec.nics[i].mode else { continue };
            if let Some(d) = self.cfg.network.managed(bridge)
                && wanted(&nics, i)
            {
                let path = BridgePaths::new(&self.cfg.run_dir, &d.bridge).leases();
                match leases_for(&path, nics[i].mac, now_s) {
                    Ok(leases) => {
                        for l in leases {
                            let granted = l.expires_at.map(|e| e.saturating_sub(d.lease_time_s));
                            nics[i].addresses.push(IpAnswer {
                                ip: l.ip,
                                prefix_len: Some(d.prefix_len),
                                source: IpSource::DhcpLease,
                                age_s: granted.map(|g| now_s.saturating_sub(g)),
                                detail: Some(match (l.expires_at, &l.hostname) {
                                    (Some(e), Some(h)) => format!("lease expires at {e} (Unix s), hostname {h}"),
                                    (Some(e), None) => format!("lease expires at {e} (Unix s)"),
                                    (None, _) => "infinite lease".into(),
                                }),
                            });
                        }
                    }
                    Err(e) => notes.push(format!("dhcp_lease: cannot read {}: {e}", path.display())),
                }
            }
            if !wanted(&nics, i) {
                continue;
            }
            let Ok(br) = IfName::new(bridge) else { continue };
            if netlink.is_none() {
                match Netlink::connect() {
                    Ok(nl) => netlink = Some(nl),
                    Err(e) => {
                        notes.push(format!("neighbour: {}", crate::error::chain(&e)));
                        continue;
                    }
                }
            }
            let Some(nl) = &netlink else { continue };
            match nl.neighbours_by_mac(&br, nics[i].mac).await {
                Ok(entries) => {
                    for e in entries.into_iter().filter(|e| usable(e.ip) && e.state != "failed") {
                        nics[i].addresses.push(IpAnswer {
                            ip: e.ip,
                            prefix_len: None,
                            source: IpSource::Neighbour,
                            age_s: e.age_s,
                            detail: Some(format!("neighbour state {}", e.state)),
                        });
                    }
                }
                Err(e) => notes.push(format!("neighbour: {}", crate::error::chain(&e))),
            }
        }

        // 4. The slirp address, for user-mode NICs.
        for i in 0..nics.len() {
            if matches!(vm.spec.nics[i].mode, NetworkMode::User { .. }) && wanted(&nics, i) {
                nics[i].addresses.push(IpAnswer {
                    ip: IpAddr::V4(SLIRP_GUEST_ADDR),
                    prefix_len: Some(24),
                    source: IpSource::Slirp,
                    age_s: None,
                    detail: Some("the address QEMU's user-mode DHCP hands out; the guest was not asked".into()),
                });
            }
        }

        // Observed answers beat the slirp guess, IPv4 beats IPv6, earlier NICs win.
        let all = || nics.iter().flat_map(|n| &n.addresses);
        let best = all()
            .find(|a| a.source != IpSource::Slirp && a.ip.is_ipv4())
            .or_else(|| all().find(|a| a.source != IpSource::Slirp))
            .or_else(|| all().find(|a| a.ip.is_ipv4()));
        VmIps {
            name: vm.spec.name.to_string(),
            ip: best.map(|a| a.ip),
            source: best.map(|a| a.source),
            nics,
            notes,
            waited_s: 0,
        }
    }
}
