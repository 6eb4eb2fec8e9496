//! Guest IP discovery (`get_vm_ip`, and `info_live`). Sources in order of preference:
//! the guest agent (`guest-network-get-interfaces`, matched by MAC), the managed
//! bridge's DHCP leases, the bridge's neighbour table filtered by the NIC's MAC (over
//! rtnetlink), and for user-mode NICs the address QEMU's slirp DHCP hands out. Each
//! answer carries its source and age; by default a NIC's answer comes from the first
//! source that knows it, `all_sources` asks every one.
//!
//! The guest agent is the guest speaking: when it answers for a NIC, that is the
//! answer, and "no address" is an answer too (with a note saying so). The slirp
//! address is a guess, never confirmed by the guest: it is offered, labelled, only for
//! a NIC nothing else could answer for.

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
/// What the slirp answer is.
const SLIRP_DETAIL: &str = "the address QEMU's user-mode DHCP hands out to the first guest that asks; nothing \
     confirmed the guest has it (no guest agent answered for this NIC)";

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

/// One guest interface as the agent reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct AgentIface {
    /// The guest's name for it (`enp0s7`, `eth0`).
    name: String,
    /// Its usable addresses (no loopback, link-local or unspecified ones).
    addrs: Vec<(IpAddr, u8)>,
}

/// The agent's view: MAC → the guest interfaces with that MAC.
async fn agent_addresses(vm: &Vm, sync: Duration) -> Result<HashMap<MacAddr, Vec<AgentIface>>, String> {
    let ifaces: Vec<qapi::qga::GuestNetworkInterface> = async {
        let mut agent = AgentClient::connect(&vm.paths.qga_sock(), sync).await?;
        agent.set_timeout(AGENT_COMMAND_TIMEOUT);
        agent.call_as("guest-network-get-interfaces", serde_json::Value::Null).await
    }
    .await
    .map_err(|e| crate::error::chain(&e))?;
    let mut out: HashMap<MacAddr, Vec<AgentIface>> = HashMap::new();
    for i in ifaces {
        let Some(mac) = i.hardware_address.as_deref().and_then(|m| m.parse::<MacAddr>().ok()) else { continue };
        let addrs = i
            .ip_addresses
            .unwrap_or_default()
            .into_iter()
            .filter_map(|a| Some((a.ip_address.parse::<IpAddr>().ok()?, u8::try_from(a.prefix).unwrap_or(0))))
            .filter(|(ip, _)| usable(*ip))
            .collect();
        out.entry(mac).or_default().push(AgentIface { name: i.name, addrs });
    }
    Ok(out)
}

/// What the agent said about one NIC: its addresses, the guest's name for it, and a
/// note when it has no address. `None` when the agent did not answer at all.
fn agent_answer(
    by_mac: Option<&HashMap<MacAddr, Vec<AgentIface>>>,
    mac: MacAddr,
) -> Option<(Vec<IpAnswer>, Option<String>, Option<String>)> {
    let Some(ifaces) = by_mac?.get(&mac) else {
        let note = format!(
            "the guest agent reports no interface with MAC {mac}; the guest may have no driver for the NIC's model"
        );
        return Some((Vec::new(), None, Some(note)));
    };
    let names: Vec<&str> = ifaces.iter().map(|i| i.name.as_str()).filter(|n| !n.is_empty()).collect();
    let name = (!names.is_empty()).then(|| names.join(", "));
    let addresses: Vec<IpAnswer> = ifaces
        .iter()
        .flat_map(|i| &i.addrs)
        .map(|&(ip, prefix)| IpAnswer {
            ip,
            prefix_len: Some(prefix),
            source: IpSource::Agent,
            age_s: Some(0),
            detail: None,
        })
        .collect();
    let note = addresses.is_empty().then(|| {
        format!(
            "the guest agent reports no IPv4 or global IPv6 address on {}; the NIC may be down or not configured yet",
            name.as_deref().unwrap_or("the interface with this MAC")
        )
    });
    Some((addresses, name, note))
}

/// The best address: per NIC, what the agent said when it answered for that NIC (its
/// "no address" included), else any observed source before the slirp guess; IPv4
/// before IPv6; earlier NICs first.
fn best(nics: &[NicIps], agent_answered: &[bool]) -> Option<IpAnswer> {
    let all = || {
        nics.iter()
            .zip(agent_answered)
            .flat_map(|(n, &answered)| n.addresses.iter().filter(move |a| !answered || a.source == IpSource::Agent))
    };
    all()
        .find(|a| a.source != IpSource::Slirp && a.ip.is_ipv4())
        .or_else(|| all().find(|a| a.source != IpSource::Slirp))
        .or_else(|| all().find(|a| a.ip.is_ipv4()))
        .cloned()
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

    /// Whether the VM's profile gives the guest a guest-agent channel.
    pub(super) fn has_agent_channel(&self, vm: &Vm) -> bool {
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
            .map(|(index, n)| NicIps {
                index,
                mac: n.mac,
                network: n.mode.label().to_owned(),
                guest_interface: None,
                addresses: Vec::new(),
                note: None,
            })
            .collect();
        if nics.is_empty() {
            notes.push("the VM has no NICs".into());
        }

        // 1. The guest agent, when the profile gives the guest a channel. A NIC it
        // answered for needs no other source (it said what the guest has).
        let mut agent_answered = vec![false; nics.len()];
        let by_mac = if !self.has_agent_channel(vm) {
            notes.push(format!("agent: profile {:?} has no guest agent channel", vm.spec.os_variant));
            None
        } else if nics.is_empty() {
            None
        } else {
            agent_addresses(vm, agent_sync).await.map_err(|e| notes.push(format!("agent: {e}"))).ok()
        };
        for (nic, answered) in nics.iter_mut().zip(&mut agent_answered) {
            if let Some((addresses, name, note)) = agent_answer(by_mac.as_ref(), nic.mac) {
                *answered = true;
                nic.addresses = addresses;
                nic.guest_interface = name;
                nic.note = note;
            }
        }
        let wanted = |nics: &[NicIps], i: usize| all_sources || (nics[i].addresses.is_empty() && !agent_answered[i]);

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

        // 4. The slirp guess, for user-mode NICs the guest agent did not answer for.
        for i in 0..nics.len() {
            if matches!(vm.spec.nics[i].mode, NetworkMode::User { .. }) && !agent_answered[i] && wanted(&nics, i) {
                nics[i].addresses.push(IpAnswer {
                    ip: IpAddr::V4(SLIRP_GUEST_ADDR),
                    prefix_len: Some(24),
                    source: IpSource::Slirp,
                    age_s: None,
                    detail: Some(SLIRP_DETAIL.into()),
                });
            }
        }

        let best = best(&nics, &agent_answered);
        for n in &nics {
            if let Some(note) = &n.note {
                notes.push(format!("NIC {}: {note}", n.index));
            }
        }
        if let Some(a) = best.as_ref().filter(|a| a.source == IpSource::Slirp) {
            notes.push(format!("{} is a guess, not an answer from the guest: {SLIRP_DETAIL}", a.ip));
        }
        VmIps {
            name: vm.spec.name.to_string(),
            ip: best.as_ref().map(|a| a.ip),
            source: best.map(|a| a.source),
            nics,
            notes,
            waited_s: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: &str = "52:54:00:12:34:56";

    fn mac() -> MacAddr {
        MAC.parse().unwrap()
    }

    fn agent(addrs: &[(&str, u8)]) -> HashMap<MacAddr, Vec<AgentIface>> {
        let addrs = addrs.iter().map(|(ip, p)| (ip.parse().unwrap(), *p)).collect();
        HashMap::from([(mac(), vec![AgentIface { name: "enp0s7".into(), addrs }])])
    }

    fn answer(ip: &str, source: IpSource) -> IpAnswer {
        IpAnswer { ip: ip.parse().unwrap(), prefix_len: None, source, age_s: None, detail: None }
    }

    fn nic(addresses: Vec<IpAnswer>) -> NicIps {
        NicIps { index: 0, mac: mac(), network: "user".into(), guest_interface: None, addresses, note: None }
    }

    #[test]
    fn an_agent_that_did_not_answer_says_nothing() {
        assert_eq!(agent_answer(None, mac()), None);
    }

    #[test]
    fn an_agent_reporting_no_address_on_the_nic_is_an_answer_with_a_note() {
        let (addresses, name, note) = agent_answer(Some(&agent(&[])), mac()).unwrap();
        assert_eq!((addresses, name.as_deref()), (vec![], Some("enp0s7")));
        assert_eq!(
            note.as_deref(),
            Some(
                "the guest agent reports no IPv4 or global IPv6 address on enp0s7; the NIC may be down or not configured yet"
            )
        );
    }

    #[test]
    fn an_agent_without_the_nics_mac_says_the_guest_does_not_see_it() {
        let (addresses, _, note) = agent_answer(Some(&HashMap::new()), mac()).unwrap();
        assert!(addresses.is_empty() && note.is_some_and(|n| n.contains(&format!("no interface with MAC {MAC}"))));
    }

    #[test]
    fn agent_addresses_come_with_the_guests_interface_name() {
        let (addresses, name, note) = agent_answer(Some(&agent(&[("10.0.2.15", 24)])), mac()).unwrap();
        assert_eq!(
            (addresses.iter().map(|a| (a.ip.to_string(), a.source)).collect::<Vec<_>>(), name, note),
            (vec![("10.0.2.15".into(), IpSource::Agent)], Some("enp0s7".into()), None)
        );
    }

    #[test]
    fn when_the_agent_answered_no_other_source_is_the_best_address() {
        let nics = [nic(vec![answer("192.168.1.9", IpSource::DhcpLease), answer("10.0.2.15", IpSource::Slirp)])];
        assert_eq!(best(&nics, &[true]), None);
    }

    #[test]
    fn without_an_agent_observed_sources_beat_the_slirp_guess() {
        let nics = [
            nic(vec![answer("10.0.2.15", IpSource::Slirp)]),
            nic(vec![answer("fd00::5", IpSource::Neighbour), answer("192.168.1.9", IpSource::DhcpLease)]),
        ];
        assert_eq!(best(&nics, &[false, false]).map(|a| a.source), Some(IpSource::DhcpLease));
    }

    #[test]
    fn the_slirp_guess_is_the_best_only_when_nothing_else_answered() {
        let nics = [nic(vec![answer("10.0.2.15", IpSource::Slirp)])];
        assert_eq!(best(&nics, &[false]).map(|a| a.source), Some(IpSource::Slirp));
    }
}
