//! Network operations: the NICs of a new VM (bridge or user mode, stable unique MACs,
//! model overrides), port forwards of user-mode NICs changed on a running VM through
//! HMP `hostfwd_add`/`hostfwd_remove` and kept in the spec. (NIC counters are in `stats`.)

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use super::context::Vm;
use super::{Ops, OpsError};
use crate::ids::{ForwardSelector, IfName, MacAddr, PortForward};
use crate::qmp::{DEFAULT_TIMEOUT, qmp};
use crate::spec::{NetworkMode, NicSpec, VmSpec};

/// Most NICs one VM may have (tap names end in one digit).
pub const MAX_NICS: usize = 8;

/// NIC device models a caller may ask for; anything else could smuggle QEMU options.
pub const NIC_MODELS: &[&str] =
    &["virtio-net-pci", "virtio-net-device", "e1000", "e1000e", "rtl8139", "vmxnet3", "ne2k_pci", "pcnet"];

/// One NIC of a create call.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NicRequest {
    /// "user" (QEMU's NAT) or a bridge name.
    pub network: String,
    /// Default: derived from the VM and NIC index.
    #[serde(default)]
    pub mac: Option<String>,
    /// Device model, e.g. e1000; default: the profile's.
    #[serde(default)]
    pub model: Option<String>,
    /// For "user" NICs.
    #[serde(default)]
    pub port_forwards: Vec<PortForward>,
}

/// A port forward of a VM, as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct PortForwardInfo {
    /// Index of the user-mode NIC it belongs to.
    pub nic: usize,
    /// The forward itself.
    #[serde(flatten)]
    pub forward: PortForward,
    /// Whether QEMU is listening on it now; `None` while the VM is not running.
    pub active: Option<bool>,
}

/// What `info usernet` shows for one listening forward: netdev id, protocol, address, port.
type ActiveForward = (String, String, std::net::Ipv4Addr, u16);

/// Parses HMP `info usernet` (QEMU 7.2): a `Hub -1 (net0):` header per netdev, then
/// `TCP[HOST_FORWARD]  fd  127.0.0.1 2222  10.0.2.15 22  0 0` lines (`*` = any address).
fn parse_usernet(text: &str) -> HashSet<ActiveForward> {
    let mut out = HashSet::new();
    let mut netdev = String::new();
    for line in text.lines() {
        let line = line.trim();
        if let Some(id) = line.strip_suffix("):").and_then(|l| l.rsplit_once('(')).map(|(_, id)| id) {
            netdev = id.to_owned();
            continue;
        }
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() >= 4
            && let Some(proto) = f[0].strip_suffix("[HOST_FORWARD]")
            && let Ok(port) = f[3].parse::<u16>()
        {
            let addr = if f[2] == "*" {
                std::net::Ipv4Addr::UNSPECIFIED
            } else {
                f[2].parse().unwrap_or(std::net::Ipv4Addr::UNSPECIFIED)
            };
            out.insert((netdev.clone(), proto.to_ascii_lowercase(), addr, port));
        }
    }
    out
}

impl Ops {
    /// Refuses `fwd` if any VM in `specs` already forwards the same host socket.
    fn check_forward_free(fwd: &PortForward, specs: &[VmSpec]) -> Result<(), OpsError> {
        for s in specs {
            for (i, n) in s.nics.iter().enumerate() {
                if let NetworkMode::User { port_forwards } = &n.mode
                    && port_forwards.iter().any(|f| f.clashes_with(fwd))
                {
                    return Err(OpsError::Taken {
                        what: format!("host port {}", fwd.host_rule()),
                        by: format!("VM {:?} (NIC {i}); pick another host port", s.name.as_str()),
                    });
                }
            }
        }
        Ok(())
    }

    /// Forwards like `wanted` (same protocol, host address and guest side) on host
    /// ports that no defined VM forwards, that `planned` does not hold, and that can be
    /// bound now: from the wanted port up.
    pub(crate) fn free_forwards(
        &self,
        wanted: &[PortForward],
        planned: &mut Vec<PortForward>,
    ) -> Result<Vec<PortForward>, OpsError> {
        /// Candidates tried per forward before giving up.
        const TRIES: u32 = 2000;
        let specs = self.defined_specs();
        let mut out = Vec::with_capacity(wanted.len());
        for w in wanted {
            let mut found = None;
            for k in 1..=TRIES {
                // Unprivileged ports only, wrapping round below 65536.
                let port = (u32::from(w.host_port).max(1024) - 1024 + k) % (65536 - 1024) + 1024;
                let f = PortForward { host_port: u16::try_from(port).unwrap_or(u16::MAX), ..*w };
                let free = Self::check_forward_free(&f, &specs).is_ok()
                    && !planned.iter().any(|p| p.clashes_with(&f))
                    && crate::network::probe_host_port(&f).is_ok();
                if free {
                    found = Some(f);
                    break;
                }
            }
            let f = found.ok_or_else(|| OpsError::Taken {
                what: format!("every host port tried for {}", w.host_rule()),
                by: "other VMs or programs; give port_forwards".into(),
            })?;
            planned.push(f);
            out.push(f);
        }
        Ok(out)
    }

    /// Checks forwards a caller gave for a new NIC: valid, not forwarded by any defined
    /// VM, not twice among themselves.
    pub(crate) fn check_new_forwards(&self, field: &str, forwards: &[PortForward]) -> Result<(), OpsError> {
        let specs = self.defined_specs();
        for (i, f) in forwards.iter().enumerate() {
            f.validate().map_err(|e| OpsError::invalid(field, e.to_string()))?;
            Self::check_forward_free(f, &specs)?;
            if forwards[..i].iter().any(|p| p.clashes_with(f)) {
                return Err(OpsError::invalid(field, format!("host port {} is forwarded twice", f.host_rule())));
            }
        }
        Ok(())
    }

    /// The NICs of a new VM with UUID `uuid`: from `nics`, or one NIC from `network`
    /// (default `vm.default_network`) with `port_forwards`.
    pub(crate) fn plan_nics(
        &self,
        network: Option<&str>,
        port_forwards: &[PortForward],
        nics: &[NicRequest],
        uuid: &uuid::Uuid,
    ) -> Result<Vec<NicSpec>, OpsError> {
        let requests = if nics.is_empty() {
            let network = network.unwrap_or(&self.cfg.vm.default_network);
            if network == "none" {
                if !port_forwards.is_empty() {
                    return Err(OpsError::invalid("port_forwards", "need a user-mode NIC; pass network \"user\""));
                }
                return Ok(Vec::new());
            }
            vec![NicRequest {
                network: network.to_owned(),
                port_forwards: port_forwards.to_vec(),
                ..NicRequest::default()
            }]
        } else {
            if network.is_some() {
                return Err(OpsError::invalid("nics", "give either network (one NIC) or nics, not both"));
            }
            if !port_forwards.is_empty() {
                return Err(OpsError::invalid(
                    "port_forwards",
                    "with nics, give each user-mode NIC its own port_forwards",
                ));
            }
            nics.to_vec()
        };
        if requests.len() > MAX_NICS {
            return Err(OpsError::invalid("nics", format!("{} NICs requested; at most {MAX_NICS}", requests.len())));
        }
        let specs = self.defined_specs();
        let owners: HashMap<MacAddr, String> =
            specs.iter().flat_map(|s| s.nics.iter().map(|n| (n.mac, s.name.to_string()))).collect();
        let mut taken: HashSet<MacAddr> = owners.keys().copied().collect();
        let mut planned: Vec<PortForward> = Vec::new();
        let mut out = Vec::with_capacity(requests.len());
        for (i, r) in requests.iter().enumerate() {
            let field = |f: &str| if nics.is_empty() { f.to_owned() } else { format!("nics[{i}].{f}") };
            let mode = match r.network.as_str() {
                "user" => {
                    for f in &r.port_forwards {
                        f.validate().map_err(|e| OpsError::invalid(&field("port_forwards"), e.to_string()))?;
                        Self::check_forward_free(f, &specs)?;
                        if planned.iter().any(|p| p.clashes_with(f)) {
                            return Err(OpsError::invalid(
                                &field("port_forwards"),
                                format!("host port {} is forwarded twice", f.host_rule()),
                            ));
                        }
                        planned.push(*f);
                    }
                    NetworkMode::User { port_forwards: r.port_forwards.clone() }
                }
                "none" => return Err(OpsError::invalid(&field("network"), "\"none\" is not a NIC; leave the NIC out")),
                bridge => {
                    IfName::new(bridge).map_err(|e| {
                        OpsError::invalid(&field("network"), format!("not \"user\", \"none\" or a bridge name: {e}"))
                    })?;
                    if !r.port_forwards.is_empty() {
                        return Err(OpsError::invalid(
                            &field("port_forwards"),
                            "port forwards need network \"user\"; a bridged guest is reached at its own address",
                        ));
                    }
                    NetworkMode::Bridge { bridge: bridge.to_owned() }
                }
            };
            let mac = match &r.mac {
                Some(m) => {
                    let mac: MacAddr =
                        m.parse().map_err(|e: crate::ids::IdError| OpsError::invalid(&field("mac"), e.to_string()))?;
                    if let Some(owner) = owners.get(&mac) {
                        return Err(OpsError::Taken { what: format!("MAC {mac}"), by: format!("VM {owner:?}") });
                    }
                    if !taken.insert(mac) {
                        return Err(OpsError::invalid(&field("mac"), format!("{mac} is given to two NICs")));
                    }
                    mac
                }
                None => {
                    let index = u8::try_from(i).unwrap_or(u8::MAX);
                    let mac = MacAddr::pick_unique(uuid, index, &taken)
                        .map_err(|e| OpsError::Taken { what: "every candidate MAC".into(), by: e.to_string() })?;
                    taken.insert(mac);
                    mac
                }
            };
            if let Some(m) = &r.model
                && !NIC_MODELS.contains(&m.as_str())
            {
                return Err(OpsError::invalid(
                    &field("model"),
                    format!("{m:?} is not one of {}", NIC_MODELS.join(", ")),
                ));
            }
            out.push(NicSpec { mode, mac, model: r.model.clone(), addr: None });
        }
        Ok(out)
    }

    /// The user-mode NIC `nic` names, or the first one.
    fn user_nic(vm: &Vm, nic: Option<usize>) -> Result<usize, OpsError> {
        let is_user = |i: usize| vm.spec.nics.get(i).is_some_and(|n| matches!(n.mode, NetworkMode::User { .. }));
        match nic {
            Some(i) if is_user(i) => Ok(i),
            Some(i) => Err(OpsError::invalid(
                "nic",
                format!("NIC {i} of VM {:?} is not a user-mode NIC", vm.spec.name.as_str()),
            )),
            None => (0..vm.spec.nics.len()).find(|&i| is_user(i)).ok_or_else(|| {
                OpsError::invalid(
                    "nic",
                    format!("VM {:?} has no user-mode NIC; port forwards need network \"user\"", vm.spec.name.as_str()),
                )
            }),
        }
    }

    fn forwards_mut(spec: &mut VmSpec, nic: usize) -> &mut Vec<PortForward> {
        match &mut spec.nics[nic].mode {
            NetworkMode::User { port_forwards } => port_forwards,
            NetworkMode::Bridge { .. } => unreachable!("user_nic checked the mode"),
        }
    }

    async fn hmp(&self, vm: &Vm, command_line: String) -> Result<String, OpsError> {
        let q = self.qmp(vm).await?;
        q.execute(qmp::human_monitor_command { command_line, cpu_index: None }, DEFAULT_TIMEOUT)
            .await
            .map_err(|source| OpsError::Qmp { name: vm.spec.name.to_string(), what: "HMP command failed", source })
    }

    /// Adds a port forward to a user-mode NIC (`nic`, or the first): at once on a
    /// running VM, and in its definition so it survives restarts.
    ///
    /// # Errors
    /// Invalid forward or NIC; [`OpsError::Taken`] when another VM forwards the port or
    /// another program holds it.
    pub async fn add_port_forward(
        &self,
        name: &str,
        nic: Option<usize>,
        fwd: PortForward,
    ) -> Result<Vec<PortForwardInfo>, OpsError> {
        fwd.validate().map_err(|e| OpsError::invalid("port_forward", e.to_string()))?;
        let paths = self.load(name)?.paths;
        let _lock = self.lock(name, &paths).await?;
        let mut vm = self.load(name)?;
        let i = Self::user_nic(&vm, nic)?;
        Self::check_forward_free(&fwd, &self.defined_specs())?;
        let obs = Self::observe(&vm);
        let active = obs.status.state.is_active();
        if active {
            self.ensure_supervised(&vm, &obs).await?;
            crate::network::probe_host_port(&fwd).map_err(|source| OpsError::Network { name: name.into(), source })?;
            let out = self.hmp(&vm, format!("hostfwd_add net{i} {}", fwd.rule())).await?;
            if !out.trim().is_empty() {
                return Err(OpsError::Taken {
                    what: format!("host port {}", fwd.host_rule()),
                    by: format!("another program (QEMU said: {})", out.trim()),
                });
            }
        }
        Self::forwards_mut(&mut vm.spec, i).push(fwd);
        if let Err(e) = Self::save_spec(&vm) {
            if active {
                let _ = self.hmp(&vm, format!("hostfwd_remove net{i} {}", fwd.host_rule())).await;
            }
            return Err(e);
        }
        tracing::info!(vm = %name, nic = i, forward = %fwd, "port forward added");
        self.forwards_of(&vm).await
    }

    /// Removes the port forward `sel` names (on NIC `nic`, or any user-mode NIC): at
    /// once on a running VM, and from its definition.
    ///
    /// # Errors
    /// [`OpsError::NoSuchForward`], or an ambiguous selector (give the host address).
    pub async fn remove_port_forward(
        &self,
        name: &str,
        nic: Option<usize>,
        sel: ForwardSelector,
    ) -> Result<Vec<PortForwardInfo>, OpsError> {
        let paths = self.load(name)?.paths;
        let _lock = self.lock(name, &paths).await?;
        let mut vm = self.load(name)?;
        if let Some(i) = nic {
            Self::user_nic(&vm, Some(i))?;
        }
        let found: Vec<(usize, PortForward)> = vm
            .spec
            .nics
            .iter()
            .enumerate()
            .filter(|(i, _)| nic.is_none_or(|n| n == *i))
            .filter_map(|(i, n)| match &n.mode {
                NetworkMode::User { port_forwards } => Some(port_forwards.iter().map(move |f| (i, *f))),
                NetworkMode::Bridge { .. } => None,
            })
            .flatten()
            .filter(|(_, f)| f.matches(&sel))
            .collect();
        let (i, fwd) = match found.as_slice() {
            [] => return Err(OpsError::NoSuchForward { name: name.into(), selector: sel.to_string() }),
            [one] => *one,
            _ => {
                return Err(OpsError::invalid(
                    "port_forward",
                    format!("{sel} matches {} forwards; give the host address too", found.len()),
                ));
            }
        };
        let obs = Self::observe(&vm);
        if obs.status.state.is_active() {
            self.ensure_supervised(&vm, &obs).await?;
            let out = self.hmp(&vm, format!("hostfwd_remove net{i} {}", fwd.host_rule())).await?;
            if !out.contains("removed") {
                tracing::warn!(vm = %name, output = %out.trim(), "QEMU had no such forward; removing it from the spec only");
            }
        }
        Self::forwards_mut(&mut vm.spec, i).retain(|f| *f != fwd);
        Self::save_spec(&vm)?;
        tracing::info!(vm = %name, nic = i, forward = %fwd, "port forward removed");
        self.forwards_of(&vm).await
    }

    /// The port forwards of a VM, each marked active when QEMU listens on it now.
    ///
    /// # Errors
    /// [`OpsError::NotFound`].
    pub async fn list_port_forwards(&self, name: &str) -> Result<Vec<PortForwardInfo>, OpsError> {
        let vm = self.load(name)?;
        self.forwards_of(&vm).await
    }

    async fn forwards_of(&self, vm: &Vm) -> Result<Vec<PortForwardInfo>, OpsError> {
        let running = Self::observe(vm).status.state.is_active();
        let has_forwards = vm
            .spec
            .nics
            .iter()
            .any(|n| matches!(&n.mode, NetworkMode::User { port_forwards } if !port_forwards.is_empty()));
        let live = if running && has_forwards {
            Some(parse_usernet(&self.hmp(vm, "info usernet".into()).await?))
        } else {
            None
        };
        Ok(vm
            .spec
            .nics
            .iter()
            .enumerate()
            .filter_map(|(i, n)| match &n.mode {
                NetworkMode::User { port_forwards } => Some(port_forwards.iter().map(move |f| (i, *f))),
                NetworkMode::Bridge { .. } => None,
            })
            .flatten()
            .map(|(nic, forward)| PortForwardInfo {
                nic,
                forward,
                active: live.as_ref().map(|l| {
                    l.contains(&(
                        format!("net{nic}"),
                        forward.protocol.to_string(),
                        forward.host_addr,
                        forward.host_port,
                    ))
                }),
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const USERNET: &str = "Hub -1 (net0):\r\n  Protocol[State]    FD  Source Address  Port   Dest. Address  Port RecvQ SendQ\r\n  TCP[HOST_FORWARD]   8       127.0.0.1 23458       10.0.2.15    80     0     0\r\n  UDP[HOST_FORWARD]  11               * 23459       10.0.2.15    53     0     0\r\n  TCP[ESTABLISHED]   30       10.0.2.15 40000   10.0.2.2    80     0     0\r\n";

    #[test]
    fn usernet_forwards_are_keyed_by_netdev() {
        let live = parse_usernet(USERNET);
        assert!(live.contains(&("net0".into(), "tcp".into(), std::net::Ipv4Addr::LOCALHOST, 23458)));
    }

    #[test]
    fn usernet_star_is_any_address() {
        let live = parse_usernet(USERNET);
        assert!(live.contains(&("net0".into(), "udp".into(), std::net::Ipv4Addr::UNSPECIFIED, 23459)));
    }

    #[test]
    fn usernet_connections_are_not_forwards() {
        assert_eq!(parse_usernet(USERNET).len(), 2);
    }
}
