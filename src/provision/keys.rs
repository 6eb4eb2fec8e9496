//! SSH public keys for a guest's seed: given as key text, each line checked (a known
//! key type, base64 whose embedded type matches, no control characters, bounded
//! length). A value that is not key text is the path of a key file, read only under
//! the host path rule ([`crate::storage::hostpath`]): inside `storage.key_dirs`, a
//! regular file opened without blocking, at most [`MAX_KEY_FILE_BYTES`]. The number
//! of keys is capped, so no request can grow a seed without bound.

use std::path::{Path, PathBuf};

use base64::Engine as _;

use super::ProvisionError;
use crate::storage::{AllowedDirs, hostpath};

/// Most keys one seed or Ignition config carries.
pub const MAX_SSH_KEYS: usize = 64;
/// Largest key file read.
pub const MAX_KEY_FILE_BYTES: u64 = 64 << 10;
/// Longest key line (an RSA 16384-bit key with a long comment fits).
pub const MAX_KEY_LINE_BYTES: usize = 16 << 10;

/// Key types OpenSSH accepts in `authorized_keys`.
const KEY_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ssh-rsa",
    "ssh-dss",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
    "ssh-ed25519-cert-v01@openssh.com",
    "ssh-rsa-cert-v01@openssh.com",
    "ssh-dss-cert-v01@openssh.com",
    "ecdsa-sha2-nistp256-cert-v01@openssh.com",
    "ecdsa-sha2-nistp384-cert-v01@openssh.com",
    "ecdsa-sha2-nistp521-cert-v01@openssh.com",
    "sk-ssh-ed25519-cert-v01@openssh.com",
    "sk-ecdsa-sha2-nistp256-cert-v01@openssh.com",
];

/// Where key files named by a value may come from.
#[derive(Debug, Clone, Copy)]
pub struct KeyDirs<'a>(pub Option<&'a AllowedDirs>);

/// True when `s` is meant as key text (it starts with a key type), as opposed to a
/// file path.
fn looks_like_key(s: &str) -> bool {
    let first = s.trim_start().split([' ', '\t']).next().unwrap_or_default();
    KEY_TYPES.contains(&first) || ["ssh-", "ecdsa-", "sk-"].iter().any(|p| first.starts_with(p))
}

/// Checks one key line; returns it with surrounding blanks trimmed. `what` says where
/// it came from for the error ("the value", "line 3 of …"); nothing of a line is
/// quoted unless `quote` (a file's lines may be something private).
fn check_line(field: &str, what: &str, line: &str, quote: bool) -> Result<String, ProvisionError> {
    let bad =
        |reason: String| ProvisionError::invalid(field, format!("{what} is not an SSH public key line: {reason}"));
    let line = line.trim_matches([' ', '\t', '\r']);
    if line.len() > MAX_KEY_LINE_BYTES {
        return Err(bad(format!("it is longer than {MAX_KEY_LINE_BYTES} bytes")));
    }
    if line.chars().any(|c| c.is_control() && c != '\t') {
        return Err(bad("it contains control characters (one key per entry; no line breaks)".into()));
    }
    let mut parts = line.split([' ', '\t']).filter(|p| !p.is_empty());
    let kind = parts.next().unwrap_or_default();
    if !KEY_TYPES.contains(&kind) {
        let shown = if quote { format!(" {:?}", kind.chars().take(40).collect::<String>()) } else { String::new() };
        return Err(bad(format!("unknown key type{shown} (expected ssh-ed25519, ssh-rsa, ecdsa-sha2-…, sk-…)")));
    }
    let blob = parts.next().ok_or_else(|| bad("the base64 key data is missing".into()))?;
    let data =
        base64::engine::general_purpose::STANDARD.decode(blob).map_err(|_| bad("the key data is not base64".into()))?;
    let embedded =
        data.get(..4).map(|n| u32::from_be_bytes([n[0], n[1], n[2], n[3]]) as usize).and_then(|n| data.get(4..4 + n));
    if embedded != Some(kind.as_bytes()) {
        return Err(bad(format!("the key data does not hold a {kind} key")));
    }
    Ok(line.to_owned())
}

/// The keys `value` stands for: itself when it is key text, else the key lines of the
/// file it names (`~/` is the home directory), which must lie in `dirs`.
///
/// # Errors
/// [`ProvisionError`] naming `field`: a bad key line, a path with no key directory
/// configured, or the host path rule's error for the file.
pub(crate) fn ssh_keys(field: &str, value: &str, dirs: KeyDirs<'_>) -> Result<Vec<String>, ProvisionError> {
    if looks_like_key(value) {
        return Ok(vec![check_line(field, "the value", value, true)?]);
    }
    let Some(allowed) = dirs.0 else {
        return Err(ProvisionError::invalid(
            field,
            format!(
                "{:?} is not SSH public key text (ssh-ed25519 AAAA…); pass the key itself (key files are read only \
                 from storage.key_dirs, and none is configured)",
                hostpath::clip(value)
            ),
        ));
    };
    read_key_file(field, &expand_home(value), allowed)
}

/// The keys of the configured default key (`vm.ignition.default_ssh_key`): key text,
/// or a file the operator named, read under the same rule with its own directory
/// (and `storage.key_dirs`) allowed.
///
/// # Errors
/// As [`ssh_keys`].
pub(crate) fn default_ssh_keys(field: &str, value: &str, dirs: KeyDirs<'_>) -> Result<Vec<String>, ProvisionError> {
    if looks_like_key(value) {
        return ssh_keys(field, value, dirs);
    }
    let path = expand_home(value);
    let mut allowed: Vec<PathBuf> = dirs.0.map(|d| d.dirs().to_vec()).unwrap_or_default();
    allowed.extend(path.parent().filter(|p| p.is_dir()).map(Path::to_path_buf));
    let allowed =
        AllowedDirs::new(&allowed).map_err(|source| ProvisionError::KeyFile { field: field.into(), source })?;
    read_key_file(field, &path, &allowed)
}

fn expand_home(value: &str) -> PathBuf {
    match value.strip_prefix("~/") {
        Some(rest) => std::env::var_os("HOME").map_or_else(|| PathBuf::from(value), |h| PathBuf::from(h).join(rest)),
        None => PathBuf::from(value),
    }
}

fn read_key_file(field: &str, path: &Path, allowed: &AllowedDirs) -> Result<Vec<String>, ProvisionError> {
    let storage = |source| ProvisionError::KeyFile { field: field.into(), source };
    let input = path.to_string_lossy();
    let file = allowed.open(&input).map_err(storage)?;
    let bytes = file.read_capped(MAX_KEY_FILE_BYTES).map_err(storage)?;
    let shown = file.path().display().to_string();
    let text =
        String::from_utf8(bytes).map_err(|_| ProvisionError::invalid(field, format!("{shown} is not text (UTF-8)")))?;
    let mut keys = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        keys.push(check_line(field, &format!("line {} of {shown}", n + 1), line, false)?);
        if keys.len() > MAX_SSH_KEYS {
            return Err(too_many(field));
        }
    }
    if keys.is_empty() {
        return Err(ProvisionError::invalid(field, format!("{shown} holds no SSH public key")));
    }
    Ok(keys)
}

/// The error for more than [`MAX_SSH_KEYS`] keys.
pub(crate) fn too_many(field: &str) -> ProvisionError {
    ProvisionError::invalid(field, format!("more than {MAX_SSH_KEYS} SSH keys; pass at most {MAX_SSH_KEYS}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED25519: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhscHR4f a@b";

    fn dirs(d: &Path) -> AllowedDirs {
        AllowedDirs::new(&[d.to_path_buf()]).unwrap()
    }

    fn err(r: Result<Vec<String>, ProvisionError>) -> String {
        crate::error::chain(&r.unwrap_err())
    }

    #[test]
    fn key_text_is_kept() {
        let keys = ssh_keys("k", ED25519, KeyDirs(None)).unwrap();

        assert_eq!(keys, vec![ED25519.to_owned()]);
    }

    #[test]
    fn key_with_newline_is_refused() {
        let e = err(ssh_keys("k", &format!("{ED25519}\nssh-rsa AAAA x"), KeyDirs(None)));

        assert!(e.starts_with("k: the value is not an SSH public key line: it contains control characters"), "{e}");
    }

    #[test]
    fn key_whose_data_is_another_type_is_refused() {
        let e = err(ssh_keys("k", "ssh-rsa AAAAC3NzaC1lZDI1NTE5eHg= x", KeyDirs(None)));

        assert!(e.contains("does not hold a ssh-rsa key"), "{e}");
    }

    #[test]
    fn unknown_key_type_is_refused() {
        let e = err(ssh_keys("k", "ssh-foo AAAA x", KeyDirs(None)));

        assert!(e.contains("unknown key type \"ssh-foo\""), "{e}");
    }

    #[test]
    fn path_without_key_dirs_is_refused_without_touching_it() {
        let e = err(ssh_keys("cloud_init.ssh_keys", "/dev/zero", KeyDirs(None)));

        assert!(e.starts_with("cloud_init.ssh_keys: \"/dev/zero\" is not SSH public key text"), "{e}");
        assert!(e.contains("storage.key_dirs"), "{e}");
    }

    #[test]
    fn dev_zero_is_outside_key_dirs() {
        let d = tempfile::tempdir().unwrap();

        let e = err(ssh_keys("k", "/dev/zero", KeyDirs(Some(&dirs(d.path())))));

        assert!(e.contains("\"/dev/zero\" is outside the allowed directories"), "{e}");
    }

    #[test]
    fn proc_self_fd_0_is_outside_key_dirs() {
        let d = tempfile::tempdir().unwrap();

        let e = err(ssh_keys("k", "/proc/self/fd/0", KeyDirs(Some(&dirs(d.path())))));

        assert!(e.contains("is outside the allowed directories"), "{e}");
    }

    #[test]
    fn fifo_in_key_dir_is_refused_without_blocking() {
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("id.pub");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();

        let e = err(ssh_keys("k", fifo.to_str().unwrap(), KeyDirs(Some(&dirs(d.path())))));

        assert!(e.contains("is a FIFO, not a regular file"), "{e}");
    }

    #[test]
    fn huge_key_file_is_refused_before_reading() {
        let d = tempfile::tempdir().unwrap();
        let big = d.path().join("big.pub");
        std::fs::File::create(&big).unwrap().set_len(1 << 30).unwrap();

        let e = err(ssh_keys("k", big.to_str().unwrap(), KeyDirs(Some(&dirs(d.path())))));

        assert!(e.contains(&format!("is larger than {MAX_KEY_FILE_BYTES} bytes")), "{e}");
    }

    #[test]
    fn key_file_lines_become_keys_and_comments_are_skipped() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("keys.pub");
        std::fs::write(&p, format!("# mine\n{ED25519}\n\n{ED25519} second\n")).unwrap();

        let keys = ssh_keys("k", p.to_str().unwrap(), KeyDirs(Some(&dirs(d.path())))).unwrap();

        assert_eq!(keys, vec![ED25519.to_owned(), format!("{ED25519} second")]);
    }

    #[test]
    fn private_key_file_is_refused_without_quoting_it() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("id");
        std::fs::write(&p, "-----BEGIN OPENSSH PRIVATE KEY-----\nc2VjcmV0\n").unwrap();

        let e = err(ssh_keys("k", p.to_str().unwrap(), KeyDirs(Some(&dirs(d.path())))));

        assert!(e.contains("line 1 of") && !e.contains("BEGIN"), "{e}");
    }

    #[test]
    fn file_with_too_many_keys_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("many.pub");
        std::fs::write(&p, format!("{ED25519}\n").repeat(MAX_SSH_KEYS + 1)).unwrap();

        let e = err(ssh_keys("k", p.to_str().unwrap(), KeyDirs(Some(&dirs(d.path())))));

        assert!(e.contains(&format!("more than {MAX_SSH_KEYS} SSH keys")), "{e}");
    }

    #[test]
    fn default_key_file_is_read_from_its_own_directory() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("id_ed25519.pub");
        std::fs::write(&p, format!("{ED25519}\n")).unwrap();

        let keys = default_ssh_keys("vm.ignition.default_ssh_key", p.to_str().unwrap(), KeyDirs(None)).unwrap();

        assert_eq!(keys.len(), 1);
    }
}
