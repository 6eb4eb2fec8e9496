//! Fedora CoreOS Ignition configs (spec 3.4.0): user, SSH keys, password hash,
//! hostname, timezone and locale, from the `vm.ignition.*` defaults with per-call
//! overrides. The JSON goes to the guest through `-fw_cfg name=opt/com.coreos/config`.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::keys::{self, KeyDirs};
use super::{ProvisionError, check_hostname, check_user};
use crate::config::IgnitionDefaults;

/// The Ignition spec version written.
pub const IGNITION_VERSION: &str = "3.4.0";

/// Per-call overrides of `vm.ignition.*`; unset fields take the configured default.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IgnitionRequest {
    pub hostname: Option<String>,
    /// User to create.
    pub user: Option<String>,
    /// SSH public key (text, or a file in the server's key directories).
    pub ssh_key: Option<String>,
    /// Time zone, e.g. `UTC`.
    pub timezone: Option<String>,
    /// Locale, e.g. `en_US.UTF-8`.
    pub locale: Option<String>,
    /// crypt(3) password hash.
    pub password_hash: Option<String>,
}

/// `data:` URL of `text`, percent-encoding everything but unreserved characters.
fn data_url(text: &str) -> String {
    let mut out = String::from("data:,");
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn file(path: &str, contents: &str) -> Value {
    json!({ "path": path, "mode": 420, "overwrite": true, "contents": { "source": data_url(contents) } })
}

fn check_timezone(tz: &str) -> Result<(), ProvisionError> {
    let ok = !tz.is_empty()
        && !tz.starts_with('/')
        && !tz.split('/').any(|p| p.is_empty() || p == "." || p == "..")
        && tz.chars().all(|c| c.is_ascii_alphanumeric() || "/_+-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(ProvisionError::invalid("ignition.timezone", format!("{tz:?} is not a zone name like Europe/Berlin")))
    }
}

fn check_locale(l: &str) -> Result<(), ProvisionError> {
    if !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || "_.@-".contains(c)) {
        Ok(())
    } else {
        Err(ProvisionError::invalid("ignition.locale", format!("{l:?} is not a locale like en_US.UTF-8")))
    }
}

/// Builds the config. A key the caller passed must be valid key text or a key file
/// inside `key_dirs`; the configured default key is skipped (with a warning) when it
/// is not usable.
///
/// # Errors
/// [`ProvisionError`] naming the field and what is wrong with it.
pub fn build(
    defaults: &IgnitionDefaults,
    req: &IgnitionRequest,
    key_dirs: KeyDirs<'_>,
) -> Result<Value, ProvisionError> {
    let pick = |o: &Option<String>, d: &Option<String>| o.clone().or_else(|| d.clone());
    let user = pick(&req.user, &defaults.user).unwrap_or_else(|| "core".into());
    check_user("ignition.user", &user)?;
    let keys = match (&req.ssh_key, &defaults.ssh_key) {
        (Some(k), _) => keys::ssh_keys("ignition.ssh_key", k, key_dirs)?,
        (None, Some(k)) => keys::default_ssh_keys("vm.ignition.default_ssh_key", k, key_dirs).unwrap_or_else(|e| {
            let e = crate::error::chain(&e);
            tracing::warn!(error = %e, "the default SSH key is not usable; the guest gets none");
            vec![]
        }),
        (None, None) => vec![],
    };
    let mut u = json!({ "name": user });
    if !keys.is_empty() {
        u["sshAuthorizedKeys"] = json!(keys);
    }
    if let Some(h) = pick(&req.password_hash, &defaults.password_hash) {
        if !h.starts_with('$') || h.contains(char::is_whitespace) {
            return Err(ProvisionError::invalid("ignition.password_hash", "expected a crypt(3) hash starting with $"));
        }
        u["passwordHash"] = json!(h);
    }
    let mut files = Vec::new();
    let mut links = Vec::new();
    if let Some(h) = pick(&req.hostname, &defaults.hostname) {
        check_hostname("ignition.hostname", &h)?;
        files.push(file("/etc/hostname", &format!("{h}\n")));
    }
    if let Some(l) = pick(&req.locale, &defaults.locale) {
        check_locale(&l)?;
        files.push(file("/etc/locale.conf", &format!("LANG={l}\n")));
    }
    if let Some(tz) = pick(&req.timezone, &defaults.timezone) {
        check_timezone(&tz)?;
        links.push(
            json!({ "path": "/etc/localtime", "target": format!("../usr/share/zoneinfo/{tz}"), "overwrite": true }),
        );
    }
    let mut cfg = json!({ "ignition": { "version": IGNITION_VERSION }, "passwd": { "users": [u] } });
    if !files.is_empty() || !links.is_empty() {
        cfg["storage"] = json!({ "files": files, "links": links });
    }
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> IgnitionDefaults {
        IgnitionDefaults {
            hostname: Some("coreos".into()),
            user: Some("core".into()),
            ssh_key: None,
            timezone: Some("UTC".into()),
            locale: Some("en_US.UTF-8".into()),
            password_hash: None,
        }
    }

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhscHR4f x@y";

    #[test]
    fn override_beats_default_and_key_literal_is_kept() {
        let req =
            IgnitionRequest { hostname: Some("web1".into()), ssh_key: Some(KEY.into()), ..IgnitionRequest::default() };
        let cfg = build(&defaults(), &req, KeyDirs(None)).unwrap();
        assert_eq!(cfg["storage"]["files"][0]["contents"]["source"], "data:,web1%0A");
        assert_eq!(cfg["passwd"]["users"][0]["sshAuthorizedKeys"][0], KEY);
    }

    #[test]
    fn key_file_inside_key_dirs_gives_its_keys() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("id.pub");
        std::fs::write(&p, format!("# mine\n{KEY}\n\n{KEY} 2\n")).unwrap();
        let allowed = crate::storage::AllowedDirs::new(&[dir.path().to_path_buf()]).unwrap();
        let req = IgnitionRequest { ssh_key: Some(p.to_string_lossy().into()), ..IgnitionRequest::default() };
        let cfg = build(&defaults(), &req, KeyDirs(Some(&allowed))).unwrap();
        assert_eq!(cfg["passwd"]["users"][0]["sshAuthorizedKeys"], json!([KEY, format!("{KEY} 2")]));
    }

    #[test]
    fn key_file_path_without_key_dirs_is_an_error() {
        let req = IgnitionRequest { ssh_key: Some("/etc/shadow".into()), ..IgnitionRequest::default() };
        let e = build(&defaults(), &req, KeyDirs(None)).unwrap_err().to_string();
        assert!(e.starts_with("ignition.ssh_key: \"/etc/shadow\" is not SSH public key text"), "{e}");
    }

    #[test]
    fn unusable_default_key_gives_no_key() {
        let d = IgnitionDefaults { ssh_key: Some("/nonexistent/id.pub".into()), ..defaults() };
        let cfg = build(&d, &IgnitionRequest::default(), KeyDirs(None)).unwrap();
        assert!(cfg["passwd"]["users"][0].get("sshAuthorizedKeys").is_none(), "{cfg}");
    }

    #[test]
    fn timezone_with_dot_dot_is_refused() {
        let req = IgnitionRequest { timezone: Some("../../etc/shadow".into()), ..IgnitionRequest::default() };
        assert!(build(&defaults(), &req, KeyDirs(None)).is_err());
    }
}
