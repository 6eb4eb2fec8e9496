//! Environment overrides: the original kvm-mcp's `VM_*` variables and kvm-mcp's own
//! `KVM_MCP_*`, applied to the raw file before it is resolved, so an override is
//! checked exactly like the key it replaces. Every variable the program reads is here.

use std::path::PathBuf;

use super::ConfigError;
use super::raw::RawConfig;

fn parse<T: std::str::FromStr>(var: &str, value: &str, what: &str) -> Result<T, ConfigError> {
    value.trim().parse().map_err(|_| ConfigError::Env {
        var: var.into(),
        value: super::quote(value),
        reason: format!("expected {what}"),
    })
}

/// A `:`-separated list of directories.
fn dirs(v: &str) -> Vec<PathBuf> {
    v.split(':').filter(|s| !s.is_empty()).map(PathBuf::from).collect()
}

/// Applies every set, non-empty variable `env` knows to `raw`.
pub(super) fn apply(raw: &mut RawConfig, env: &dyn Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
    let get = |k: &str| env(k).filter(|v| !v.is_empty());
    let vm = &mut raw.vm;
    if let Some(v) = get("VM_DISK_PATH") {
        vm.disk_path = Some(v.into());
    }
    if let Some(v) = get("VM_DEFAULT_ISO") {
        vm.default_iso = Some(v.into());
    }
    if let Some(v) = get("VM_DEFAULT_MASTER_IMAGE") {
        vm.default_master_image = Some(v.into());
    }
    if let Some(v) = get("VM_DEFAULT_NAME") {
        vm.default_name = Some(v);
    }
    if let Some(v) = get("VM_DEFAULT_MEMORY") {
        vm.default_memory = Some(parse("VM_DEFAULT_MEMORY", &v, "a whole number of MiB")?);
    }
    if let Some(v) = get("VM_DEFAULT_VCPUS") {
        vm.default_vcpus = Some(parse("VM_DEFAULT_VCPUS", &v, "a whole number of vCPUs")?);
    }
    if let Some(v) = get("VM_DEFAULT_DISK_SIZE") {
        vm.default_disk_size = Some(parse("VM_DEFAULT_DISK_SIZE", &v, "a whole number of GiB")?);
    }
    if let Some(v) = get("VM_DEFAULT_OS_VARIANT") {
        vm.default_os_variant = Some(v);
    }
    if let Some(v) = get("VM_DEFAULT_NETWORK") {
        vm.default_network = Some(v);
    }
    let ign = &mut vm.ignition;
    for (var, slot) in [
        ("VM_IGNITION_DEFAULT_HOSTNAME", &mut ign.default_hostname),
        ("VM_IGNITION_DEFAULT_USER", &mut ign.default_user),
        ("VM_IGNITION_DEFAULT_SSH_KEY", &mut ign.default_ssh_key),
        ("VM_IGNITION_DEFAULT_TIMEZONE", &mut ign.default_timezone),
        ("VM_IGNITION_DEFAULT_LOCALE", &mut ign.default_locale),
        ("VM_IGNITION_DEFAULT_PASSWORD_HASH", &mut ign.default_password_hash),
    ] {
        if let Some(v) = get(var) {
            *slot = Some(v);
        }
    }
    if let Some(v) = get("KVM_MCP_QEMU_BINARY") {
        raw.qemu.binary = Some(v.into());
    }
    if let Some(v) = get("KVM_MCP_ACCEL") {
        raw.qemu.accel = Some(parse("KVM_MCP_ACCEL", &v, "one of auto, kvm, tcg")?);
    }
    if let Some(v) = get("KVM_MCP_STATE_DIR") {
        raw.paths.state_dir = Some(v.into());
    }
    if let Some(v) = get("KVM_MCP_RUN_DIR") {
        raw.paths.run_dir = Some(v.into());
    }
    if let Some(v) = get("KVM_MCP_LOG_LEVEL") {
        raw.logging.level = Some(v);
    }
    if let Some(v) = get("KVM_MCP_IMAGE_DIRS") {
        raw.storage.image_dirs = Some(dirs(&v));
    }
    if let Some(v) = get("KVM_MCP_ISO_DIRS") {
        raw.storage.iso_dirs = Some(dirs(&v));
    }
    if let Some(v) = get("KVM_MCP_KERNEL_DIRS") {
        raw.storage.kernel_dirs = Some(dirs(&v));
    }
    if let Some(v) = get("KVM_MCP_KEY_DIRS") {
        raw.storage.key_dirs = Some(dirs(&v));
    }
    if let Some(v) = get("KVM_MCP_OVMF_DIR") {
        raw.storage.ovmf_dir = Some(v.into());
    }
    if let Some(v) = get("KVM_MCP_LISTEN") {
        raw.server.listen = Some(v);
    }
    if let Some(v) = get("KVM_MCP_TOKEN") {
        raw.server.token = Some(v);
        raw.server.token_file = None;
    }
    Ok(())
}
