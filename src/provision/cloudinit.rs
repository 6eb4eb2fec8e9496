//! cloud-init NoCloud seeds: `meta-data`, `user-data` (`#cloud-config`) and
//! `network-config` (version 2) built from per-call fields. Every scalar is written as
//! a JSON string, which YAML reads as a double-quoted scalar, so no value can break
//! out of its place.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::keys::{self, KeyDirs, MAX_SSH_KEYS};
use super::{ProvisionError, check_hostname, check_user};

/// The seed's file system label; cloud-init looks for it on every block device.
pub const SEED_LABEL: &str = "cidata";

/// How the guest's first NIC gets its address.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(tag = "mode", rename_all = "lowercase", deny_unknown_fields)]
pub enum SeedNetwork {
    /// DHCP (IPv4).
    Dhcp,
    /// A fixed address.
    Static {
        /// Address with prefix length, e.g. `192.168.122.10/24`.
        address: String,
        /// Default gateway.
        #[serde(default)]
        gateway: Option<String>,
        /// DNS servers.
        #[serde(default)]
        dns: Vec<String>,
    },
}

/// What goes into a NoCloud seed.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CloudInitRequest {
    /// Host name; the VM's name when unset.
    #[serde(default)]
    pub hostname: Option<String>,
    /// A user to create (with passwordless sudo); the image's default user when unset.
    #[serde(default)]
    pub user: Option<String>,
    /// SSH public keys, each the key text (`ssh-ed25519 AAAA… comment`); at most 64.
    /// A `.pub` file path is accepted only inside the server's key directories.
    #[serde(default)]
    pub ssh_keys: Vec<String>,
    /// crypt(3) hash of the user's password.
    #[serde(default)]
    pub password_hash: Option<String>,
    /// Packages to install on first boot.
    #[serde(default)]
    pub packages: Vec<String>,
    /// Shell commands to run once on first boot (`runcmd`).
    #[serde(default)]
    pub run_commands: Vec<String>,
    /// Network of the first NIC; the image's default (usually DHCP) when unset.
    #[serde(default)]
    pub network: Option<SeedNetwork>,
}

/// The seed's files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seed {
    pub meta_data: String,
    pub user_data: String,
    pub network_config: Option<String>,
}

fn q(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

fn ip(field: &str, s: &str) -> Result<IpAddr, ProvisionError> {
    s.parse().map_err(|_| ProvisionError::invalid(field, format!("{s:?} is not an IP address")))
}

fn network_config(net: &SeedNetwork, mac: Option<&str>) -> Result<String, ProvisionError> {
    let mut y = String::from("version: 2\nethernets:\n  nic0:\n");
    match mac {
        Some(m) => y.push_str(&format!("    match:\n      macaddress: {}\n", q(m))),
        None => y.push_str("    match:\n      name: \"e*\"\n"),
    }
    match net {
        SeedNetwork::Dhcp => y.push_str("    dhcp4: true\n"),
        SeedNetwork::Static { address, gateway, dns } => {
            let field = "cloud_init.network.address";
            let (addr, prefix) = address.split_once('/').ok_or_else(|| {
                ProvisionError::invalid(field, format!("{address:?} needs a prefix length, e.g. /24"))
            })?;
            let addr = ip(field, addr)?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            if !prefix.parse::<u8>().is_ok_and(|p| (1..=max).contains(&p)) {
                return Err(ProvisionError::invalid(field, format!("prefix length {prefix:?} is not 1..={max}")));
            }
            y.push_str(&format!("    dhcp4: false\n    addresses:\n      - {}\n", q(address)));
            if let Some(g) = gateway {
                ip("cloud_init.network.gateway", g)?;
                y.push_str(&format!("    routes:\n      - to: default\n        via: {}\n", q(g)));
            }
            if !dns.is_empty() {
                y.push_str("    nameservers:\n      addresses:\n");
                for d in dns {
                    ip("cloud_init.network.dns", d)?;
                    y.push_str(&format!("        - {}\n", q(d)));
                }
            }
        }
    }
    Ok(y)
}

/// Builds the seed for instance `instance_id`; `vm_name` is the default host name and
/// `mac` the first NIC's address (matched by the network config); key files are read
/// only from `key_dirs`.
///
/// # Errors
/// [`ProvisionError`] naming the field.
pub fn build(
    req: &CloudInitRequest,
    instance_id: &str,
    vm_name: &str,
    mac: Option<&str>,
    key_dirs: KeyDirs<'_>,
) -> Result<Seed, ProvisionError> {
    let hostname = req.hostname.clone().unwrap_or_else(|| vm_name.replace(['_', '.'], "-"));
    check_hostname("cloud_init.hostname", &hostname)?;
    let meta_data = format!("instance-id: {}\nlocal-hostname: {}\n", q(instance_id), q(&hostname));
    if req.ssh_keys.len() > MAX_SSH_KEYS {
        return Err(keys::too_many("cloud_init.ssh_keys"));
    }
    let mut keys = Vec::new();
    for k in &req.ssh_keys {
        keys.extend(keys::ssh_keys("cloud_init.ssh_keys", k, key_dirs)?);
        if keys.len() > MAX_SSH_KEYS {
            return Err(keys::too_many("cloud_init.ssh_keys"));
        }
    }
    let mut u = format!("#cloud-config\nhostname: {}\n", q(&hostname));
    let key_list = |indent: &str| keys.iter().map(|k| format!("{indent}- {}\n", q(k))).collect::<String>();
    if let Some(user) = &req.user {
        check_user("cloud_init.user", user)?;
        u.push_str(&format!("users:\n  - default\n  - name: {}\n", q(user)));
        u.push_str("    sudo: \"ALL=(ALL) NOPASSWD:ALL\"\n    shell: \"/bin/bash\"\n");
        if let Some(h) = &req.password_hash {
            u.push_str(&format!("    lock_passwd: false\n    passwd: {}\n", q(h)));
        }
        if !keys.is_empty() {
            u.push_str("    ssh_authorized_keys:\n");
            u.push_str(&key_list("      "));
        }
    } else {
        if req.password_hash.is_some() {
            return Err(ProvisionError::invalid("cloud_init.password_hash", "set user too: the hash is that user's"));
        }
        if !keys.is_empty() {
            u.push_str("ssh_authorized_keys:\n");
            u.push_str(&key_list("  "));
        }
    }
    if req.packages.len() > MAX_PACKAGES {
        return Err(ProvisionError::invalid(
            "cloud_init.packages",
            format!("{} packages given; at most {MAX_PACKAGES} (install more from run_commands)", req.packages.len()),
        ));
    }
    if !req.packages.is_empty() {
        u.push_str("packages:\n");
        for p in &req.packages {
            check_package(p)?;
            u.push_str(&format!("  - {}\n", q(p)));
        }
    }
    if req.run_commands.len() > MAX_RUN_COMMANDS {
        return Err(ProvisionError::invalid(
            "cloud_init.run_commands",
            format!("{} commands given; at most {MAX_RUN_COMMANDS} (put them in one script)", req.run_commands.len()),
        ));
    }
    if !req.run_commands.is_empty() {
        u.push_str("runcmd:\n");
        for c in &req.run_commands {
            check_command(c)?;
            u.push_str(&format!("  - {}\n", q(c)));
        }
    }
    let network_config = req.network.as_ref().map(|n| network_config(n, mac)).transpose()?;
    Ok(Seed { meta_data, user_data: u, network_config })
}

/// Most packages one seed installs.
pub const MAX_PACKAGES: usize = 256;
/// Longest package name (with an optional `=version`).
pub const MAX_PACKAGE_CHARS: usize = 200;
/// Most first-boot commands.
pub const MAX_RUN_COMMANDS: usize = 128;
/// Longest first-boot command.
pub const MAX_RUN_COMMAND_CHARS: usize = 8192;

/// A package name as apt, dnf and zypper spell them, optionally with `=version`.
fn check_package(p: &str) -> Result<(), ProvisionError> {
    let ok = !p.is_empty()
        && p.chars().count() <= MAX_PACKAGE_CHARS
        && p.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && p.chars().all(|c| c.is_ascii_alphanumeric() || "+-.:_~=".contains(c));
    if ok {
        Ok(())
    } else {
        Err(ProvisionError::invalid(
            "cloud_init.packages",
            format!(
                "{} is not a package name (letters, digits and + - . : _ ~ =, at most {MAX_PACKAGE_CHARS} characters)",
                crate::error::quote(p)
            ),
        ))
    }
}

/// A first-boot command: one line of shell, no NUL.
fn check_command(c: &str) -> Result<(), ProvisionError> {
    let reason = if c.trim().is_empty() {
        "is empty"
    } else if c.chars().count() > MAX_RUN_COMMAND_CHARS {
        "is longer than 8192 characters; write a script with write_files or fetch one"
    } else if c.contains('\0') {
        "contains a NUL byte"
    } else {
        return Ok(());
    };
    Err(ProvisionError::invalid("cloud_init.run_commands", format!("{} {reason}", crate::error::quote(c))))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhscHR4f a@b";

    #[test]
    fn more_than_64_keys_are_refused() {
        let req = CloudInitRequest { ssh_keys: vec![KEY.into(); MAX_SSH_KEYS + 1], ..CloudInitRequest::default() };

        let e = build(&req, "i", "vm", None, KeyDirs(None)).unwrap_err().to_string();

        assert!(e.starts_with("cloud_init.ssh_keys: more than 64 SSH keys"), "{e}");
    }

    #[test]
    fn more_than_256_packages_are_refused() {
        let req = CloudInitRequest { packages: vec!["nginx".into(); MAX_PACKAGES + 1], ..CloudInitRequest::default() };

        let e = build(&req, "i", "vm", None, KeyDirs(None)).unwrap_err().to_string();

        assert!(e.starts_with("cloud_init.packages: 257 packages given"), "{e}");
    }

    #[test]
    fn option_like_package_name_is_refused() {
        let req = CloudInitRequest { packages: vec!["--force-yes".into()], ..CloudInitRequest::default() };

        let e = build(&req, "i", "vm", None, KeyDirs(None)).unwrap_err().to_string();

        assert!(e.contains("is not a package name"), "{e}");
    }

    #[test]
    fn a_huge_command_is_refused_and_not_echoed_whole() {
        let req = CloudInitRequest { run_commands: vec!["x".repeat(1 << 20)], ..CloudInitRequest::default() };

        let e = build(&req, "i", "vm", None, KeyDirs(None)).unwrap_err().to_string();

        assert!(e.contains("longer than 8192") && e.len() < 500, "{} bytes: {}", e.len(), &e[..100]);
    }

    #[test]
    fn meta_data_names_instance_and_host() {
        let s = build(&CloudInitRequest::default(), "i-1", "web_1", None, KeyDirs(None)).unwrap();
        assert_eq!(s.meta_data, "instance-id: \"i-1\"\nlocal-hostname: \"web-1\"\n");
    }

    #[test]
    fn user_keys_packages_and_commands_land_in_user_data() {
        let req = CloudInitRequest {
            user: Some("ops".into()),
            ssh_keys: vec![KEY.into()],
            packages: vec!["nginx".into()],
            run_commands: vec!["echo \"hi\" > /x".into()],
            ..CloudInitRequest::default()
        };
        let u = build(&req, "i", "vm", None, KeyDirs(None)).unwrap().user_data;
        assert!(u.starts_with("#cloud-config\n"), "{u}");
        assert!(u.contains("  - name: \"ops\"\n") && u.contains(&format!("      - \"{KEY}\"\n")), "{u}");
        assert!(
            u.contains("packages:\n  - \"nginx\"\n") && u.contains("runcmd:\n  - \"echo \\\"hi\\\" > /x\"\n"),
            "{u}"
        );
    }

    #[test]
    fn static_network_matches_mac() {
        let net = SeedNetwork::Static {
            address: "192.0.2.10/24".into(),
            gateway: Some("192.0.2.1".into()),
            dns: vec!["192.0.2.53".into()],
        };
        let req = CloudInitRequest { network: Some(net), ..CloudInitRequest::default() };
        let n = build(&req, "i", "vm", Some("52:54:00:00:00:01"), KeyDirs(None)).unwrap().network_config.unwrap();
        assert!(n.contains("macaddress: \"52:54:00:00:00:01\"") && n.contains("via: \"192.0.2.1\""), "{n}");
    }

    #[test]
    fn static_address_without_prefix_is_refused() {
        let net = SeedNetwork::Static { address: "192.0.2.10".into(), gateway: None, dns: vec![] };
        let req = CloudInitRequest { network: Some(net), ..CloudInitRequest::default() };
        let e = build(&req, "i", "vm", None, KeyDirs(None)).unwrap_err().to_string();
        assert!(e.starts_with("cloud_init.network.address:"), "{e}");
    }
}
