//! cloud-init NoCloud seeds: `meta-data`, `user-data` (`#cloud-config`) and
//! `network-config` (version 2) built from per-call fields, plus a caller's raw
//! cloud-config merged beside them (see [`super::cloudconfig`]). Every generated scalar
//! is written as a JSON string, which YAML reads as a double-quoted scalar, so no value
//! can break out of its place.
//!
//! The host name goes into `meta-data` (`local-hostname`), which cloud-init uses when
//! the user-data names none; `manage_etc_hosts: true` (the default) makes it resolvable
//! in the guest. A copy of the VM gets a new seed from the `reseed` module.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::cloudconfig::{self, UserData, Y, q};
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
        /// e.g. `192.168.122.10/24`.
        address: String,
        #[serde(default)]
        gateway: Option<String>,
        #[serde(default)]
        dns: Vec<String>,
    },
}

/// One file cloud-init writes on first boot (`write_files`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WriteFile {
    /// Absolute path in the guest.
    pub path: String,
    /// Text, or base64 when `base64`.
    #[serde(default)]
    pub content: String,
    #[serde(default)]
    pub base64: bool,
    /// Octal mode, e.g. "0600".
    #[serde(default)]
    pub permissions: Option<String>,
    /// "user:group".
    #[serde(default)]
    pub owner: Option<String>,
    /// Append, not replace.
    #[serde(default)]
    pub append: bool,
}

/// What goes into a NoCloud seed.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CloudInitRequest {
    /// Default: the VM's name.
    #[serde(default)]
    pub hostname: Option<String>,
    /// User to create, with passwordless sudo; default: the image's.
    #[serde(default)]
    pub user: Option<String>,
    /// Extra groups of `user` (created when missing); at most 32.
    #[serde(default)]
    pub groups: Vec<String>,
    /// SSH public keys (text, or files in the server's key directories); at most 64.
    #[serde(default)]
    pub ssh_keys: Vec<String>,
    /// crypt(3) hash of the user's password.
    #[serde(default)]
    pub password_hash: Option<String>,
    /// Installed on first boot.
    #[serde(default)]
    pub packages: Vec<String>,
    /// Shell commands run once on first boot.
    #[serde(default)]
    pub run_commands: Vec<String>,
    /// Files written on first boot; at most 64, 256 KiB in all.
    #[serde(default)]
    pub write_files: Vec<WriteFile>,
    /// IANA time zone, e.g. "UTC".
    #[serde(default)]
    pub timezone: Option<String>,
    /// Default true.
    #[serde(default)]
    pub manage_etc_hosts: Option<bool>,
    /// Letters, digits, '.', '_', '-'; default: the VM's UUID. A new one makes the guest a
    /// new machine.
    #[serde(default)]
    pub instance_id: Option<String>,
    /// More cloud-config (YAML or a JSON object, ≤64 KiB) merged with these fields; a key
    /// set in both is refused. No scripts or multipart.
    #[serde(default)]
    pub user_data: Option<String>,
    /// First NIC's network; default: the image's (usually DHCP).
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

impl Seed {
    /// The files as the seed image holds them.
    #[must_use]
    pub fn files(&self) -> Vec<(&'static str, &[u8])> {
        let mut files: Vec<(&'static str, &[u8])> =
            vec![("meta-data", self.meta_data.as_bytes()), ("user-data", self.user_data.as_bytes())];
        if let Some(n) = &self.network_config {
            files.push(("network-config", n.as_bytes()));
        }
        files
    }
}

/// `meta-data` naming the instance and the host.
#[must_use]
pub fn meta_data(instance_id: &str, hostname: &str) -> String {
    format!("instance-id: {}\nlocal-hostname: {}\n", q(instance_id), q(hostname))
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

/// The host name a VM called `vm_name` gets when none is given.
#[must_use]
pub fn default_hostname(vm_name: &str) -> String {
    vm_name.replace(['_', '.'], "-")
}

/// Builds the seed; `instance_id` is the default instance-id (the VM's UUID),
/// `vm_name` gives the default host name and `mac` is the first NIC's address
/// (matched by the network config); key files are read only from `key_dirs`.
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
    let hostname = req.hostname.clone().unwrap_or_else(|| default_hostname(vm_name));
    check_hostname("cloud_init.hostname", &hostname)?;
    let instance_id = match &req.instance_id {
        Some(i) => {
            check_instance_id(i)?;
            i.as_str()
        }
        None => instance_id,
    };
    let meta_data = meta_data(instance_id, &hostname);
    let theirs =
        req.user_data.as_deref().map(|t| cloudconfig::parse_user_data("cloud_init.user_data", t)).transpose()?;
    let their_keys = theirs.as_ref().map(UserData::keys).unwrap_or_default();
    let mut ours: Vec<(String, Y, &str)> = Vec::new();
    match req.manage_etc_hosts {
        Some(m) => ours.push(("manage_etc_hosts".into(), Y::Bool(m), "cloud_init.manage_etc_hosts")),
        None if !their_keys.iter().any(|k| k == "manage_etc_hosts") => {
            ours.push(("manage_etc_hosts".into(), Y::Bool(true), "cloud_init.manage_etc_hosts"));
        }
        None => {}
    }
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
    if let Some(user) = &req.user {
        check_user("cloud_init.user", user)?;
        let mut u = vec![
            ("name".to_owned(), Y::str(user)),
            ("sudo".into(), Y::str("ALL=(ALL) NOPASSWD:ALL")),
            ("shell".into(), Y::str("/bin/bash")),
        ];
        if let Some(h) = &req.password_hash {
            u.push(("lock_passwd".into(), Y::Bool(false)));
            u.push(("passwd".into(), Y::str(h)));
        }
        if !req.groups.is_empty() {
            check_groups(&req.groups)?;
            u.push(("groups".into(), Y::strs(&req.groups)));
        }
        if !keys.is_empty() {
            u.push(("ssh_authorized_keys".into(), Y::strs(&keys)));
        }
        ours.push(("users".into(), Y::Seq(vec![Y::str("default"), Y::Map(u)]), "cloud_init.user"));
    } else {
        if req.password_hash.is_some() {
            return Err(ProvisionError::invalid("cloud_init.password_hash", "set user too: the hash is that user's"));
        }
        if !req.groups.is_empty() {
            return Err(ProvisionError::invalid("cloud_init.groups", "set user too: the groups are that user's"));
        }
        if !keys.is_empty() {
            ours.push(("ssh_authorized_keys".into(), Y::strs(&keys), "cloud_init.ssh_keys"));
        }
    }
    if let Some(tz) = &req.timezone {
        check_timezone(tz)?;
        ours.push(("timezone".into(), Y::str(tz), "cloud_init.timezone"));
    }
    if req.packages.len() > MAX_PACKAGES {
        return Err(ProvisionError::invalid(
            "cloud_init.packages",
            format!("{} packages given; at most {MAX_PACKAGES} (install more from run_commands)", req.packages.len()),
        ));
    }
    if !req.packages.is_empty() {
        for p in &req.packages {
            check_package(p)?;
        }
        ours.push(("packages".into(), Y::strs(&req.packages), "cloud_init.packages"));
    }
    if !req.write_files.is_empty() {
        ours.push(("write_files".into(), write_files(&req.write_files)?, "cloud_init.write_files"));
    }
    if req.run_commands.len() > MAX_RUN_COMMANDS {
        return Err(ProvisionError::invalid(
            "cloud_init.run_commands",
            format!("{} commands given; at most {MAX_RUN_COMMANDS} (put them in one script)", req.run_commands.len()),
        ));
    }
    if !req.run_commands.is_empty() {
        for c in &req.run_commands {
            check_command(c)?;
        }
        ours.push(("runcmd".into(), Y::strs(&req.run_commands), "cloud_init.run_commands"));
    }
    if let Some((k, _, by)) = ours.iter().find(|(k, ..)| their_keys.contains(k)) {
        return Err(ProvisionError::invalid(
            "cloud_init.user_data",
            format!("sets {}, which {by} sets too; set it in one place", q(k)),
        ));
    }
    let ours: Vec<(String, Y)> = ours.into_iter().map(|(k, v, _)| (k, v)).collect();
    let user_data = cloudconfig::document("cloud_init.user_data", &ours, theirs.as_ref())?;
    let network_config = req.network.as_ref().map(|n| network_config(n, mac)).transpose()?;
    Ok(Seed { meta_data, user_data, network_config })
}

/// Most files one seed writes.
pub const MAX_WRITE_FILES: usize = 64;
/// Most content bytes of all `write_files` together.
pub const MAX_WRITE_FILES_BYTES: usize = 256 << 10;
/// Most supplementary groups.
pub const MAX_GROUPS: usize = 32;
/// Longest instance-id.
pub const MAX_INSTANCE_ID_CHARS: usize = 128;

fn write_files(files: &[WriteFile]) -> Result<Y, ProvisionError> {
    let field = "cloud_init.write_files";
    if files.len() > MAX_WRITE_FILES {
        return Err(ProvisionError::invalid(field, format!("{} files given; at most {MAX_WRITE_FILES}", files.len())));
    }
    let total: usize = files.iter().map(|f| f.content.len()).sum();
    if total > MAX_WRITE_FILES_BYTES {
        return Err(ProvisionError::invalid(
            field,
            format!("{total} bytes of content; at most {MAX_WRITE_FILES_BYTES} in all (copy bigger files in later)"),
        ));
    }
    let mut out = Vec::with_capacity(files.len());
    for (i, f) in files.iter().enumerate() {
        let at = |what: &str| format!("{field}[{i}].{what}");
        let path_ok = f.path.starts_with('/')
            && f.path.len() <= 4096
            && !f.path.chars().any(char::is_control)
            && !f.path.ends_with('/');
        if !path_ok {
            return Err(ProvisionError::invalid(
                &at("path"),
                format!("{} is not an absolute file path (one line, at most 4096 bytes)", crate::error::quote(&f.path)),
            ));
        }
        let mut e = vec![("path".to_owned(), Y::str(&f.path)), ("content".into(), Y::str(&f.content))];
        if f.base64 {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD
                .decode(f.content.trim())
                .map_err(|err| ProvisionError::invalid(&at("content"), format!("is not base64: {err}")))?;
            e.push(("encoding".into(), Y::str("b64")));
        }
        if let Some(p) = &f.permissions {
            let ok = (3..=4).contains(&p.len()) && p.chars().all(|c| ('0'..='7').contains(&c));
            if !ok {
                return Err(ProvisionError::invalid(
                    &at("permissions"),
                    format!("{} is not an octal mode such as \"0644\"", crate::error::quote(p)),
                ));
            }
            let mode = if p.len() == 3 { format!("0{p}") } else { p.clone() };
            e.push(("permissions".into(), Y::str(mode)));
        }
        if let Some(o) = &f.owner {
            let (u, g) = o.split_once(':').unwrap_or((o, o));
            check_user(&at("owner"), u).and_then(|()| check_user(&at("owner"), g))?;
            e.push(("owner".into(), Y::str(o)));
        }
        if f.append {
            e.push(("append".into(), Y::Bool(true)));
        }
        out.push(Y::Map(e));
    }
    Ok(Y::Seq(out))
}

fn check_groups(groups: &[String]) -> Result<(), ProvisionError> {
    if groups.len() > MAX_GROUPS {
        return Err(ProvisionError::invalid(
            "cloud_init.groups",
            format!("{} groups given; at most {MAX_GROUPS}", groups.len()),
        ));
    }
    groups.iter().try_for_each(|g| check_user("cloud_init.groups", g))
}

/// An IANA time zone name: `UTC`, `Area/City`, `Area/Sub/City`.
fn check_timezone(tz: &str) -> Result<(), ProvisionError> {
    let ok = !tz.is_empty()
        && tz.len() <= 64
        && tz.split('/').all(|p| {
            !p.is_empty() && p != "." && p != ".." && p.chars().all(|c| c.is_ascii_alphanumeric() || "_+-".contains(c))
        });
    if ok {
        Ok(())
    } else {
        Err(ProvisionError::invalid(
            "cloud_init.timezone",
            format!("{} is not a time zone name such as \"Europe/Berlin\" or \"UTC\"", crate::error::quote(tz)),
        ))
    }
}

/// An instance-id: cloud-init makes it a directory name.
pub(crate) fn check_instance_id(id: &str) -> Result<(), ProvisionError> {
    let ok = !id.is_empty()
        && id.chars().count() <= MAX_INSTANCE_ID_CHARS
        && !id.starts_with('.')
        && id.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(ProvisionError::invalid(
            "cloud_init.instance_id",
            format!(
                "{} is not an instance-id (letters, digits, '.', '_' and '-', at most {MAX_INSTANCE_ID_CHARS}, not starting with '.')",
                crate::error::quote(id)
            ),
        ))
    }
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
