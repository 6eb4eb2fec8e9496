//! The seed of a copy: a VM copied from another (a clone, and anything later that
//! copies a VM) must act as a new machine, so it gets a fresh NoCloud seed made from
//! the source's:
//!
//! - `meta-data`: a new instance-id and the copy's host name. A new instance-id is what
//!   makes cloud-init treat the guest as a new machine: it deletes and regenerates the
//!   SSH host keys (`ssh_deletekeys`), renders the network for the NICs it finds now,
//!   sets the host name and runs the per-instance modules again.
//! - `user-data`: the source's, with any top-level `hostname` or `fqdn` dropped (the
//!   name comes from `meta-data`), `manage_etc_hosts: true` unless it says otherwise,
//!   and a `bootcmd` that resets the machine-id once per instance
//!   ([`MACHINE_ID_BOOTCMD`]), unless the user-data has a `bootcmd` of its own.
//! - `network-config`: the source's, with each NIC's MAC replaced by the copy's.
//!
//! Edits are made on whole top-level entries of the text (so the caller's YAML keeps
//! its exact meaning for cloud-init), and the result is parsed back to prove it is one
//! mapping with the keys expected.

use super::ProvisionError;
use super::cloudconfig::{self, Y, q};
use super::cloudinit::{Seed, meta_data};

/// Name of the `cloud-init-per` semaphore of the machine-id reset.
pub const MACHINE_ID_MARK: &str = "kvm-mcp-machine-id";

/// The `bootcmd` entry that gives a copy its own machine-id: on the first boot of each
/// new instance only (`cloud-init-per instance`), remove `/etc/machine-id` (and a D-Bus
/// copy, which `systemd-machine-id-setup` would otherwise reuse) and let systemd make a
/// new one (from the VM's UUID under KVM, random otherwise). Guests without systemd are
/// left alone.
pub const MACHINE_ID_BOOTCMD: &str = "cloud-init-per instance kvm-mcp-machine-id sh -c 'if command -v systemd-machine-id-setup >/dev/null; then rm -f /etc/machine-id /var/lib/dbus/machine-id && systemd-machine-id-setup && if [ -d /var/lib/dbus ]; then ln -sf /etc/machine-id /var/lib/dbus/machine-id; fi; fi'";

/// The copy's seed and what it could not change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Renewed {
    pub seed: Seed,
    /// The user-data resets the machine-id (ours, or one carried over from the source).
    pub machine_id_reset: bool,
    /// What the copy keeps from its source although it is identity.
    pub kept: Vec<String>,
}

/// A top-level entry of a YAML text: its key (None for comments, blank lines and the
/// header) and its lines.
struct Entry<'a> {
    key: Option<String>,
    lines: Vec<&'a str>,
}

/// The key of a top-level line: `key:` or `"key":` at column 0.
fn top_key(line: &str) -> Option<String> {
    if line.starts_with([' ', '\t', '#', '-']) || line.trim().is_empty() {
        return None;
    }
    if let Some(rest) = line.strip_prefix('"') {
        let end = rest.find('"')?;
        let k: String = serde_json::from_str(&line[..end + 2]).ok()?;
        return rest[end + 1..].starts_with(':').then_some(k);
    }
    let (k, _) = line.split_once(':')?;
    Some(k.trim().to_owned())
}

fn entries(text: &str) -> Vec<Entry<'_>> {
    let mut out: Vec<Entry<'_>> = Vec::new();
    for line in text.lines() {
        match top_key(line) {
            Some(k) => out.push(Entry { key: Some(k), lines: vec![line] }),
            // Indented lines and column-0 sequence items continue the entry above;
            // comments and blank lines at column 0 stand alone.
            None if line.starts_with([' ', '\t', '-']) && out.last().is_some_and(|e| e.key.is_some()) => {
                if let Some(e) = out.last_mut() {
                    e.lines.push(line);
                }
            }
            None => out.push(Entry { key: None, lines: vec![line] }),
        }
    }
    out
}

/// The copy's seed from the source's `user-data` and `network-config`, for instance
/// `instance_id` named `hostname`; `macs` pairs each source NIC's MAC with the copy's.
///
/// # Errors
/// The source's user-data is not cloud-config kvm-mcp can renew (it was not written by
/// kvm-mcp, or was edited by hand).
pub fn renew(
    user_data: &str,
    network_config: Option<&str>,
    instance_id: &str,
    hostname: &str,
    macs: &[(String, String)],
) -> Result<Renewed, ProvisionError> {
    let field = "source seed";
    let Some(body) = user_data.strip_prefix("#cloud-config\n") else {
        return Err(ProvisionError::invalid(field, "its user-data is not #cloud-config; kvm-mcp cannot renew it"));
    };
    let before = cloudconfig::yaml_mapping(field, body)?;
    let mut kept = Vec::new();
    let mut added: Vec<(String, Y)> = Vec::new();
    let all = entries(body);
    let has = |k: &str| all.iter().any(|e| e.key.as_deref() == Some(k));
    if !has("manage_etc_hosts") {
        added.push(("manage_etc_hosts".into(), Y::Bool(true)));
    }
    let machine_id_reset = match all.iter().find(|e| e.key.as_deref() == Some("bootcmd")) {
        None => {
            added.push(("bootcmd".into(), Y::Seq(vec![Y::str(MACHINE_ID_BOOTCMD)])));
            true
        }
        Some(e) if e.lines.iter().any(|l| l.contains(MACHINE_ID_MARK)) => true,
        Some(_) => {
            kept.push(
                "machine-id: the source's user-data has a bootcmd of its own, so none was added; run `rm /etc/machine-id && systemd-machine-id-setup` in the clone"
                    .to_owned(),
            );
            false
        }
    };
    let dropped = ["hostname", "fqdn"];
    let mut out = String::from("#cloud-config\n");
    cloudconfig::write_map(&added, 0, false, &mut out);
    for e in all.iter().filter(|e| !e.key.as_deref().is_some_and(|k| dropped.contains(&k))) {
        for l in &e.lines {
            out.push_str(l);
            out.push('\n');
        }
    }
    let after = cloudconfig::yaml_mapping(field, &out)?;
    let want = before.keys().filter(|k| !k.as_str().is_some_and(|k| dropped.contains(&k))).count() + added.len();
    if after.len() != want || dropped.iter().any(|k| after.contains_key(*k)) {
        return Err(ProvisionError::invalid(
            field,
            "its user-data does not split into top-level entries; kvm-mcp cannot renew it",
        ));
    }
    let network_config =
        network_config.map(|n| macs.iter().fold(n.to_owned(), |text, (old, new)| text.replace(&q(old), &q(new))));
    Ok(Renewed {
        seed: Seed { meta_data: meta_data(instance_id, hostname), user_data: out, network_config },
        machine_id_reset,
        kept,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const OLD: &str =
        "#cloud-config\nhostname: \"src\"\nusers:\n  - default\n  - name: \"ops\"\nruncmd:\n  - \"echo hi\"\n";

    fn renew_old(user_data: &str) -> Renewed {
        renew(user_data, None, "i-new", "copy", &[]).unwrap()
    }

    #[test]
    fn meta_data_names_the_new_instance_and_host() {
        assert_eq!(renew_old(OLD).seed.meta_data, "instance-id: \"i-new\"\nlocal-hostname: \"copy\"\n");
    }

    #[test]
    fn hostname_goes_and_etc_hosts_and_machine_id_come() {
        let r = renew_old(OLD);
        let m: serde_json::Value = serde_yaml_ng::from_str(&r.seed.user_data).unwrap();
        assert_eq!(
            (m.get("hostname"), &m["manage_etc_hosts"], &m["bootcmd"][0], &m["runcmd"][0], r.machine_id_reset),
            (
                None,
                &serde_json::json!(true),
                &serde_json::json!(MACHINE_ID_BOOTCMD),
                &serde_json::json!("echo hi"),
                true
            )
        );
    }

    #[test]
    fn a_copy_of_a_copy_keeps_one_machine_id_reset() {
        let once = renew_old(OLD).seed.user_data;
        let twice = renew_old(&once);
        assert_eq!((twice.seed.user_data.matches(MACHINE_ID_MARK).count(), twice.machine_id_reset), (1, true));
    }

    #[test]
    fn a_bootcmd_of_the_users_own_is_kept_and_said() {
        let r = renew_old("#cloud-config\nbootcmd:\n- echo early\n");
        assert!(!r.machine_id_reset && r.kept[0].starts_with("machine-id:"), "{r:?}");
    }

    #[test]
    fn a_multi_line_fqdn_entry_goes_whole() {
        let r = renew_old("#cloud-config\nfqdn:\n  \"a.example\"\nlocale: C\n");
        let m: serde_json::Value = serde_yaml_ng::from_str(&r.seed.user_data).unwrap();
        assert_eq!((m.get("fqdn"), &m["locale"]), (None, &serde_json::json!("C")));
    }

    #[test]
    fn network_config_follows_the_new_mac() {
        let net = "version: 2\nethernets:\n  nic0:\n    match:\n      macaddress: \"52:54:00:00:00:01\"\n";
        let macs = [("52:54:00:00:00:01".to_owned(), "52:54:00:aa:bb:cc".to_owned())];
        let r = renew(OLD, Some(net), "i", "h", &macs).unwrap();
        assert_eq!(r.seed.network_config.unwrap(), net.replace("00:00:01", "aa:bb:cc"));
    }

    #[test]
    fn a_seed_that_is_not_cloud_config_is_refused() {
        assert!(renew("#!/bin/sh\n", None, "i", "h", &[]).is_err());
    }
}
