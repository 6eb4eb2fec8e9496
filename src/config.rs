//! `config.json`: the raw file (serde structs that reject unknown keys, in the original
//! kvm-mcp layout plus sections of our own), `VM_*`/`KVM_MCP_*` environment overrides,
//! and the resolved [`Config`] with defaults applied and every value checked. A bad value
//! is an error that names the key and the reason.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::network::IfName;
mod storage;
pub use storage::{DEFAULT_OVMF_DIR, StorageSettings};
pub mod server;

pub use server::{RateLimit, ServerSettings, TlsSettings, TokenSource};

/// Smallest memory a VM may be given, in MiB.
pub const MIN_MEMORY_MIB: u64 = 16;
/// Largest memory a VM may be given, in MiB (1 TiB).
pub const MAX_MEMORY_MIB: u64 = 1024 * 1024;
/// Largest vCPU count QEMU's `pc`/`q35` machines accept without extra options.
pub const MAX_VCPUS: u32 = 255;
/// Largest disk size accepted, in GiB (64 TiB).
pub const MAX_DISK_SIZE_GIB: u64 = 64 * 1024;

/// Where the config came from; shown by `host info`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(tag = "source", content = "path", rename_all = "snake_case")]
pub enum ConfigSource {
    /// `--config PATH`.
    Flag(PathBuf),
    /// `KVM_MCP_CONFIG`.
    Env(PathBuf),
    /// `./config.json`.
    WorkingDir(PathBuf),
    /// `/etc/kvm-mcp/config.json`.
    System(PathBuf),
    /// No file: built-in defaults.
    Defaults,
}

/// A config that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}: {key}: {reason}")]
    Parse { path: PathBuf, key: String, reason: String },
    #[error("{key}: {reason}")]
    Invalid { key: String, reason: String },
    #[error("environment variable {var}={value:?}: {reason}")]
    Env { var: String, value: String, reason: String },
}

/// How to pick the accelerator.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AccelChoice {
    /// KVM when /dev/kvm works for ordinary guests, TCG otherwise.
    #[default]
    Auto,
    /// KVM or fail.
    Kvm,
    /// Software emulation.
    Tcg,
}

impl std::str::FromStr for AccelChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "kvm" => Ok(Self::Kvm),
            "tcg" => Ok(Self::Tcg),
            _ => Err("expected one of auto, kvm, tcg".into()),
        }
    }
}

// ---------- raw file ----------

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawConfig {
    vm: RawVm,
    qemu: RawQemu,
    paths: RawPaths,
    logging: RawLogging,
    network: RawNetwork,
    storage: storage::RawStorage,
    server: server::RawServer,
    console: crate::guest_config::RawConsole,
    display: crate::guest_config::RawDisplay,
    agent: crate::guest_config::RawAgent,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawNetwork {
    create_bridge: Option<bool>,
    dnsmasq: Option<PathBuf>,
    dhcp: Option<RawDhcp>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDhcp {
    #[serde(default)]
    bridge: Option<String>,
    subnet: String,
    #[serde(default)]
    host_address: Option<Ipv4Addr>,
    #[serde(default)]
    range: Option<String>,
    #[serde(default)]
    lease_time_s: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawVm {
    disk_path: Option<PathBuf>,
    default_iso: Option<PathBuf>,
    default_master_image: Option<PathBuf>,
    default_name: Option<String>,
    default_memory: Option<u64>,
    default_vcpus: Option<u32>,
    default_disk_size: Option<u64>,
    default_os_variant: Option<String>,
    default_network: Option<String>,
    ignition: RawIgnition,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawIgnition {
    default_hostname: Option<String>,
    default_user: Option<String>,
    default_ssh_key: Option<String>,
    default_timezone: Option<String>,
    default_locale: Option<String>,
    default_password_hash: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawQemu {
    binary: Option<PathBuf>,
    accel: Option<AccelChoice>,
    profiles_dir: Option<PathBuf>,
    stop_timeout_s: Option<u64>,
    user: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawPaths {
    state_dir: Option<PathBuf>,
    run_dir: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawLogging {
    level: Option<String>,
    file: Option<PathBuf>,
    json: Option<bool>,
    max_file_bytes: Option<u64>,
    keep_files: Option<u32>,
}

// ---------- resolved ----------

/// VM defaults (`vm.*`), as in the original kvm-mcp.
#[derive(Debug, Clone, Serialize)]
pub struct VmDefaults {
    /// Where disk images live (`vm.disk_path`).
    pub disk_path: PathBuf,
    /// ISO used by installs when none is given.
    pub default_iso: Option<PathBuf>,
    /// Base image new VMs get an overlay on.
    pub default_master_image: Option<PathBuf>,
    /// Name used when a create call gives none.
    pub default_name: String,
    /// MiB.
    pub default_memory_mib: u64,
    /// vCPUs.
    pub default_vcpus: u32,
    /// GiB.
    pub default_disk_size_gib: u64,
    /// Profile name.
    pub default_os_variant: String,
    /// `"user"`, `"none"` or a bridge name.
    pub default_network: String,
    /// Ignition defaults for Fedora CoreOS.
    pub ignition: IgnitionDefaults,
}

/// `vm.ignition.*`: the fields of a per-call Ignition request, used where the call
/// leaves one unset.
pub type IgnitionDefaults = crate::provision::ignition::IgnitionRequest;

/// `qemu.*`.
#[derive(Debug, Clone, Serialize)]
pub struct QemuSettings {
    /// The emulator binary (a name looked up in PATH, or a path).
    pub binary: PathBuf,
    /// Accelerator choice.
    pub accel: AccelChoice,
    /// Extra profile directory; its files override the built-in ones by name.
    pub profiles_dir: Option<PathBuf>,
    /// How long `stop` presses the power button before forcing, in seconds.
    pub stop_timeout_s: u64,
    /// Unprivileged user QEMU switches to once it has opened its files (`-runas`,
    /// or `-run-with user=` on QEMU 9.1 and later); `None`: QEMU keeps running as
    /// the supervisor's user.
    pub user: Option<String>,
}

/// `logging.*`.
#[derive(Debug, Clone, Serialize)]
pub struct LogSettings {
    /// A `tracing` filter such as `info` or `kvm_mcp=debug`.
    pub level: String,
    /// Log file; none means stderr only.
    pub file: Option<PathBuf>,
    /// JSON lines instead of text in the file.
    pub json: bool,
    /// The file is rotated when it would grow past this many bytes.
    pub max_file_bytes: u64,
    /// Rotated files kept (`<file>.1` … `<file>.N`).
    pub keep_files: u32,
}

/// `network.*`: host networking.
#[derive(Debug, Clone, Serialize)]
pub struct NetworkSettings {
    /// Create a missing bridge (no uplink, no address) instead of refusing to start.
    pub create_bridge: bool,
    /// The dnsmasq binary run for a managed bridge.
    pub dnsmasq: PathBuf,
    /// The managed bridge, when configured.
    pub dhcp: Option<DhcpSettings>,
}

/// `network.dhcp`: a bridge kvm-mcp manages for isolated labs. It is created when
/// missing, given `host_address`, and served by a dnsmasq bound to it alone.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DhcpSettings {
    /// The bridge (`network.dhcp.bridge`, default `vm.default_network`).
    pub bridge: IfName,
    /// Network address of the subnet.
    pub network: Ipv4Addr,
    /// Prefix length of the subnet (8..=30).
    pub prefix_len: u8,
    /// The host's address on the bridge (default: the subnet's first address).
    pub host_address: Ipv4Addr,
    /// First address handed out.
    pub range_start: Ipv4Addr,
    /// Last address handed out.
    pub range_end: Ipv4Addr,
    /// Lease length in seconds.
    pub lease_time_s: u64,
}

impl DhcpSettings {
    /// The subnet mask, e.g. `255.255.255.0`.
    #[must_use]
    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(mask_bits(self.prefix_len))
    }
}

/// Default `network.dhcp.lease_time_s`.
pub const DEFAULT_LEASE_TIME_S: u64 = 3600;
/// dnsmasq refuses leases shorter than two minutes.
const MIN_LEASE_TIME_S: u64 = 120;

fn mask_bits(prefix_len: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix_len)).unwrap_or(0)
}
/// Default `logging.max_file_bytes`: 10 MB, as in the original kvm-mcp.
pub const DEFAULT_LOG_MAX_BYTES: u64 = 10 * 1000 * 1000;
/// Default `logging.keep_files`.
pub const DEFAULT_LOG_KEEP_FILES: u32 = 5;

/// The resolved configuration.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    /// Where this came from.
    pub source: ConfigSource,
    pub vm: VmDefaults,
    pub qemu: QemuSettings,
    /// VM definitions, status and logs (`<state_dir>/vms/<name>/`).
    pub state_dir: PathBuf,
    /// Sockets and pid files of running VMs (`<run_dir>/<name>/`).
    pub run_dir: PathBuf,
    pub logging: LogSettings,
    pub network: NetworkSettings,
    /// Image and ISO directories, firmware (`storage.*`).
    pub storage: StorageSettings,
    /// `server.*`: the HTTP front end.
    pub server: server::ServerSettings,
    /// Serial console log rotation (`console.*`).
    pub console: crate::guest_config::ConsoleSettings,
    /// VNC (`display.*`).
    pub display: crate::guest_config::DisplaySettings,
    /// Guest agent limits (`agent.*`).
    pub agent: crate::guest_config::AgentSettings,
}

/// Default `qemu.stop_timeout_s`.
pub const DEFAULT_STOP_TIMEOUT_S: u64 = 60;

impl Config {
    /// The file this config was read from, if any (passed on to child processes).
    #[must_use]
    pub fn file(&self) -> Option<&Path> {
        match &self.source {
            ConfigSource::Flag(p) | ConfigSource::Env(p) | ConfigSource::WorkingDir(p) | ConfigSource::System(p) => {
                Some(p)
            }
            ConfigSource::Defaults => None,
        }
    }

    /// Finds and loads the config: `flag`, then `KVM_MCP_CONFIG`, `./config.json`,
    /// `/etc/kvm-mcp/config.json`, else built-in defaults; then applies the environment.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the file, key or variable and what is wrong.
    pub fn discover(flag: Option<&Path>) -> Result<Self, ConfigError> {
        let env = |k: &str| std::env::var(k).ok();
        let (source, text) = if let Some(p) = flag {
            (ConfigSource::Flag(p.to_owned()), Some(read(p)?))
        } else if let Some(p) = env("KVM_MCP_CONFIG").filter(|s| !s.is_empty()) {
            let p = PathBuf::from(p);
            let t = read(&p)?;
            (ConfigSource::Env(p), Some(t))
        } else if Path::new("config.json").is_file() {
            let p =
                std::env::current_dir().map(|d| d.join("config.json")).unwrap_or_else(|_| PathBuf::from("config.json"));
            let t = read(&p)?;
            (ConfigSource::WorkingDir(p), Some(t))
        } else if Path::new("/etc/kvm-mcp/config.json").is_file() {
            let p = PathBuf::from("/etc/kvm-mcp/config.json");
            let t = read(&p)?;
            (ConfigSource::System(p), Some(t))
        } else {
            (ConfigSource::Defaults, None)
        };
        Self::from_parts(source, text.as_deref(), &env)
    }

    /// Builds a config from file text (or none) and an environment lookup.
    ///
    /// # Errors
    /// See [`Config::discover`].
    pub fn from_parts(
        source: ConfigSource,
        text: Option<&str>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let mut raw = match text {
            Some(t) => parse(&source, t)?,
            None => RawConfig::default(),
        };
        apply_env(&mut raw, env)?;
        resolve(source, raw)
    }
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })
}

fn parse(source: &ConfigSource, text: &str) -> Result<RawConfig, ConfigError> {
    let path = match source {
        ConfigSource::Flag(p) | ConfigSource::Env(p) | ConfigSource::WorkingDir(p) | ConfigSource::System(p) => {
            p.clone()
        }
        ConfigSource::Defaults => PathBuf::from("(built-in)"),
    };
    let de = &mut serde_json::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let inner = e.into_inner();
        ConfigError::Parse { path, key: if key == "." { "(top level)".into() } else { key }, reason: inner.to_string() }
    })
}

fn env_parse<T: std::str::FromStr>(var: &str, value: &str, what: &str) -> Result<T, ConfigError> {
    value.trim().parse().map_err(|_| ConfigError::Env {
        var: var.into(),
        value: value.into(),
        reason: format!("expected {what}"),
    })
}

fn apply_env(raw: &mut RawConfig, env: &dyn Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
    let vm = &mut raw.vm;
    let get = |k: &str| env(k).filter(|v| !v.is_empty());
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
        vm.default_memory = Some(env_parse("VM_DEFAULT_MEMORY", &v, "a whole number of MiB")?);
    }
    if let Some(v) = get("VM_DEFAULT_VCPUS") {
        vm.default_vcpus = Some(env_parse("VM_DEFAULT_VCPUS", &v, "a whole number of vCPUs")?);
    }
    if let Some(v) = get("VM_DEFAULT_DISK_SIZE") {
        vm.default_disk_size = Some(env_parse("VM_DEFAULT_DISK_SIZE", &v, "a whole number of GiB")?);
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
        raw.qemu.accel = Some(env_parse("KVM_MCP_ACCEL", &v, "one of auto, kvm, tcg")?);
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
    storage::apply_env(&mut raw.storage, &get);
    server::apply_env(&mut raw.server, &get);
    Ok(())
}

pub(crate) fn invalid(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key: key.into(), reason: reason.into() }
}

fn absolute(key: &str, p: PathBuf) -> Result<PathBuf, ConfigError> {
    if p.is_absolute() {
        Ok(p)
    } else {
        Err(invalid(key, format!("{} is not an absolute path; give the full path starting with /", p.display())))
    }
}

pub(crate) fn in_range(key: &str, v: u64, min: u64, max: u64, unit: &str) -> Result<u64, ConfigError> {
    if v < min {
        Err(invalid(key, format!("{v} is below the minimum of {min}{unit}")))
    } else if v > max {
        Err(invalid(key, format!("{v} is above the maximum of {max}{unit}")))
    } else {
        Ok(v)
    }
}

fn default_dirs() -> (PathBuf, PathBuf) {
    if nix::unistd::geteuid().is_root() {
        (PathBuf::from("/var/lib/kvm-mcp"), PathBuf::from("/run/kvm-mcp"))
    } else {
        let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/tmp"), PathBuf::from);
        let run = std::env::var_os("XDG_RUNTIME_DIR").map_or_else(
            || PathBuf::from(format!("/tmp/kvm-mcp-{}", nix::unistd::geteuid())),
            |d| PathBuf::from(d).join("kvm-mcp"),
        );
        (home.join(".local/state/kvm-mcp"), run)
    }
}

fn resolve(source: ConfigSource, raw: RawConfig) -> Result<Config, ConfigError> {
    let v = raw.vm;
    let default_name = v.default_name.unwrap_or_else(|| "newvm".into());
    crate::ids::VmName::new(&default_name).map_err(|e| invalid("vm.default_name", e.to_string()))?;
    let memory =
        in_range("vm.default_memory", v.default_memory.unwrap_or(2048), MIN_MEMORY_MIB, MAX_MEMORY_MIB, " MiB")?;
    let vcpus = in_range("vm.default_vcpus", u64::from(v.default_vcpus.unwrap_or(2)), 1, u64::from(MAX_VCPUS), "")?;
    let disk = in_range("vm.default_disk_size", v.default_disk_size.unwrap_or(20), 1, MAX_DISK_SIZE_GIB, " GiB")?;
    let network = v.default_network.unwrap_or_else(|| "brforvms".into());
    if !matches!(network.as_str(), "user" | "none") {
        IfName::new(&network)
            .map_err(|e| invalid("vm.default_network", format!("not \"user\", \"none\" or a bridge name: {e}")))?;
    }
    let network_settings = resolve_network(raw.network, &network)?;
    let (def_state, def_run) = default_dirs();
    let stop_timeout_s = raw.qemu.stop_timeout_s.unwrap_or(DEFAULT_STOP_TIMEOUT_S);
    in_range("qemu.stop_timeout_s", stop_timeout_s, 1, 3600, " s")?;
    let level = raw.logging.level.unwrap_or_else(|| "info".into());
    tracing_subscriber::EnvFilter::try_new(&level).map_err(|e| {
        invalid("logging.level", format!("{level:?} is not a valid filter ({e}); try \"info\" or \"debug\""))
    })?;
    Ok(Config {
        source,
        vm: VmDefaults {
            disk_path: absolute("vm.disk_path", v.disk_path.unwrap_or_else(|| "/vm".into()))?,
            default_iso: v.default_iso,
            default_master_image: v.default_master_image,
            default_name,
            default_memory_mib: memory,
            #[allow(clippy::cast_possible_truncation)] // checked against MAX_VCPUS above
            default_vcpus: vcpus as u32,
            default_disk_size_gib: disk,
            default_os_variant: v.default_os_variant.unwrap_or_else(|| "generic".into()),
            default_network: network,
            ignition: IgnitionDefaults {
                hostname: v.ignition.default_hostname,
                user: v.ignition.default_user,
                ssh_key: v.ignition.default_ssh_key,
                timezone: v.ignition.default_timezone,
                locale: v.ignition.default_locale,
                password_hash: v.ignition.default_password_hash,
            },
        },
        qemu: QemuSettings {
            binary: raw.qemu.binary.unwrap_or_else(|| "qemu-system-x86_64".into()),
            accel: raw.qemu.accel.unwrap_or_default(),
            profiles_dir: raw.qemu.profiles_dir,
            stop_timeout_s,
            user: raw.qemu.user.map(|u| storage::check_user_name("qemu.user", u)).transpose()?,
        },
        state_dir: absolute("paths.state_dir", raw.paths.state_dir.unwrap_or(def_state))?,
        run_dir: absolute("paths.run_dir", raw.paths.run_dir.unwrap_or(def_run))?,
        logging: LogSettings {
            level,
            file: raw.logging.file,
            json: raw.logging.json.unwrap_or(false),
            max_file_bytes: in_range(
                "logging.max_file_bytes",
                raw.logging.max_file_bytes.unwrap_or(DEFAULT_LOG_MAX_BYTES),
                4096,
                u64::MAX,
                " bytes",
            )?,
            #[allow(clippy::cast_possible_truncation)] // checked against 100 just here
            keep_files: in_range("logging.keep_files", u64::from(raw.logging.keep_files.unwrap_or(DEFAULT_LOG_KEEP_FILES)), 0, 100, "")? as u32,
        },
        network: network_settings,
        storage: storage::resolve(raw.storage)?,
        server: server::resolve(raw.server)?,
        console: raw.console.resolve()?,
        display: raw.display.resolve(),
        agent: raw.agent.resolve()?,
    })
}

fn resolve_network(raw: RawNetwork, default_network: &str) -> Result<NetworkSettings, ConfigError> {
    let dhcp = raw.dhcp.map(|d| resolve_dhcp(d, default_network)).transpose()?;
    Ok(NetworkSettings {
        create_bridge: raw.create_bridge.unwrap_or(false),
        dnsmasq: raw.dnsmasq.unwrap_or_else(|| "/usr/sbin/dnsmasq".into()),
        dhcp,
    })
}

fn resolve_dhcp(d: RawDhcp, default_network: &str) -> Result<DhcpSettings, ConfigError> {
    let bridge_name = match d.bridge {
        Some(b) => b,
        None if !matches!(default_network, "user" | "none") => default_network.to_owned(),
        None => {
            return Err(invalid(
                "network.dhcp.bridge",
                format!("required, since vm.default_network is {default_network:?} and not a bridge"),
            ));
        }
    };
    let bridge = IfName::new(&bridge_name).map_err(|e| invalid("network.dhcp.bridge", e.to_string()))?;
    let subnet_err =
        || invalid("network.dhcp.subnet", format!("{:?} is not an IPv4 subnet such as \"192.168.150.0/24\"", d.subnet));
    let (addr, len) = d.subnet.split_once('/').ok_or_else(subnet_err)?;
    let network: Ipv4Addr = addr.parse().map_err(|_| subnet_err())?;
    let prefix_len: u8 = len.parse().map_err(|_| subnet_err())?;
    if !(8..=30).contains(&prefix_len) {
        return Err(invalid("network.dhcp.subnet", format!("prefix length /{prefix_len} is outside /8../30")));
    }
    let mask = mask_bits(prefix_len);
    let net = u32::from(network);
    if net & !mask != 0 {
        return Err(invalid(
            "network.dhcp.subnet",
            format!("{} has host bits set; the network address is {}", d.subnet, Ipv4Addr::from(net & mask)),
        ));
    }
    let broadcast = net | !mask;
    let inside = |a: Ipv4Addr| (net + 1..broadcast).contains(&u32::from(a));
    let host_address = d.host_address.unwrap_or(Ipv4Addr::from(net + 1));
    if !inside(host_address) {
        return Err(invalid(
            "network.dhcp.host_address",
            format!("{host_address} is not a host address of {}", d.subnet),
        ));
    }
    let (range_start, range_end) = match &d.range {
        None => {
            let (lo, hi) = if u32::from(host_address) == net + 1 {
                (net + 2, broadcast - 1)
            } else {
                (net + 1, u32::from(host_address) - 1)
            };
            (Ipv4Addr::from(lo), Ipv4Addr::from(hi))
        }
        Some(r) => {
            let bad = || {
                invalid(
                    "network.dhcp.range",
                    format!("{r:?} is not FIRST-LAST, e.g. \"192.168.150.100-192.168.150.199\""),
                )
            };
            let (a, b) = r.split_once('-').ok_or_else(bad)?;
            let a: Ipv4Addr = a.trim().parse().map_err(|_| bad())?;
            let b: Ipv4Addr = b.trim().parse().map_err(|_| bad())?;
            (a, b)
        }
    };
    if !inside(range_start) || !inside(range_end) || range_start > range_end {
        return Err(invalid(
            "network.dhcp.range",
            format!("{range_start}-{range_end} must be ascending host addresses of {}", d.subnet),
        ));
    }
    if (range_start..=range_end).contains(&host_address) {
        return Err(invalid(
            "network.dhcp.range",
            format!("{range_start}-{range_end} contains the host address {host_address}"),
        ));
    }
    let lease_time_s = d.lease_time_s.unwrap_or(DEFAULT_LEASE_TIME_S);
    in_range("network.dhcp.lease_time_s", lease_time_s, MIN_LEASE_TIME_S, 365 * 24 * 3600, " s")?;
    Ok(DhcpSettings { bridge, network, prefix_len, host_address, range_start, range_end, lease_time_s })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        Config::from_parts(ConfigSource::Flag("/t/config.json".into()), Some(text), &move |k| {
            env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
        })
    }

    #[test]
    fn empty_object_gives_original_defaults() {
        let c = load("{}", &[]).unwrap();
        assert_eq!(
            (c.vm.default_memory_mib, c.vm.default_vcpus, c.vm.default_disk_size_gib, c.vm.default_network.as_str()),
            (2048, 2, 20, "brforvms")
        );
    }

    #[test]
    fn shipped_config_json_loads() {
        let text = include_str!("../config.json");
        assert!(load(text, &[]).is_ok());
    }

    #[test]
    fn zero_memory_names_key_and_minimum() {
        let e = load(r#"{"vm":{"default_memory":0}}"#, &[]).unwrap_err().to_string();
        assert_eq!(e, "vm.default_memory: 0 is below the minimum of 16 MiB");
    }

    #[test]
    fn unknown_key_names_its_path() {
        let e = load(r#"{"vm":{"defualt_memory":512}}"#, &[]).unwrap_err().to_string();
        assert!(e.contains("vm.defualt_memory") && e.contains("unknown field"), "{e}");
    }

    #[test]
    fn wrong_type_names_key() {
        let e = load(r#"{"vm":{"default_vcpus":"two"}}"#, &[]).unwrap_err().to_string();
        assert!(e.contains("vm.default_vcpus") && e.contains("invalid type"), "{e}");
    }

    #[test]
    fn env_overrides_file() {
        let c = load(r#"{"vm":{"default_memory":512}}"#, &[("VM_DEFAULT_MEMORY", "1024")]).unwrap();
        assert_eq!(c.vm.default_memory_mib, 1024);
    }

    #[test]
    fn bad_env_value_names_variable() {
        let e = load("{}", &[("VM_DEFAULT_VCPUS", "lots")]).unwrap_err().to_string();
        assert!(e.starts_with("environment variable VM_DEFAULT_VCPUS=\"lots\""), "{e}");
    }

    #[test]
    fn ignition_password_hash_env_override() {
        let c = load("{}", &[("VM_IGNITION_DEFAULT_PASSWORD_HASH", "$6$x")]).unwrap();
        assert_eq!(c.vm.ignition.password_hash.as_deref(), Some("$6$x"));
    }

    #[test]
    fn relative_state_dir_is_refused() {
        let e = load(r#"{"paths":{"state_dir":"state"}}"#, &[]).unwrap_err().to_string();
        assert!(e.starts_with("paths.state_dir: state is not an absolute path"), "{e}");
    }

    #[test]
    fn bad_accel_is_refused() {
        let e = load(r#"{"qemu":{"accel":"hvf"}}"#, &[]).unwrap_err().to_string();
        assert!(e.contains("qemu.accel"), "{e}");
    }

    #[test]
    fn network_defaults_refuse_missing_bridges() {
        let c = load("{}", &[]).unwrap();
        assert_eq!((c.network.create_bridge, c.network.dhcp), (false, None));
    }

    #[test]
    fn dhcp_defaults_to_first_address_and_the_rest_of_the_subnet() {
        let c = load(r#"{"network":{"dhcp":{"subnet":"192.0.2.0/24"}}}"#, &[]).unwrap();
        let d = c.network.dhcp.unwrap();
        assert_eq!(
            (d.bridge.as_str(), d.host_address, d.range_start, d.range_end, d.netmask()),
            (
                "brforvms",
                Ipv4Addr::new(192, 0, 2, 1),
                Ipv4Addr::new(192, 0, 2, 2),
                Ipv4Addr::new(192, 0, 2, 254),
                Ipv4Addr::new(255, 255, 255, 0)
            )
        );
    }

    #[test]
    fn relative_image_dir_names_its_index() {
        let e = load(r#"{"storage":{"image_dirs":["/srv/img","img"]}}"#, &[]).unwrap_err().to_string();
        assert!(e.starts_with("storage.image_dirs[1]: img is not an absolute path"), "{e}");
    }

    #[test]
    fn root_as_iso_dir_is_refused() {
        let e = load(r#"{"storage":{"iso_dirs":["/"]}}"#, &[]).unwrap_err().to_string();
        assert!(e.starts_with("storage.iso_dirs[0]: / would allow every file"), "{e}");
    }

    #[test]
    fn disk_path_is_first_image_dir_and_last_iso_dir() {
        let c =
            load(r#"{"vm":{"disk_path":"/vm"},"storage":{"image_dirs":["/srv/img"],"iso_dirs":["/srv/iso"]}}"#, &[])
                .unwrap();
        let dp = &c.vm.disk_path;
        assert_eq!(
            (c.storage.image_dirs(dp), c.storage.iso_dirs(dp)),
            (vec![PathBuf::from("/vm"), "/srv/img".into()], vec![PathBuf::from("/srv/iso"), "/vm".into()])
        );
    }

    #[test]
    fn dhcp_range_outside_subnet_names_key() {
        let e = load(r#"{"network":{"dhcp":{"subnet":"192.0.2.0/24","range":"192.0.3.10-192.0.3.20"}}}"#, &[])
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("network.dhcp.range:"), "{e}");
    }

    #[test]
    fn dhcp_subnet_with_host_bits_names_network_address() {
        let e = load(r#"{"network":{"dhcp":{"subnet":"192.0.2.7/24"}}}"#, &[]).unwrap_err().to_string();
        assert!(e.contains("the network address is 192.0.2.0"), "{e}");
    }

    #[test]
    fn dhcp_without_bridge_needs_a_bridged_default_network() {
        let e = load(r#"{"vm":{"default_network":"user"},"network":{"dhcp":{"subnet":"192.0.2.0/24"}}}"#, &[])
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("network.dhcp.bridge: required"), "{e}");
    }

    #[test]
    fn image_dirs_env_is_colon_separated() {
        let c = load("{}", &[("KVM_MCP_IMAGE_DIRS", "/a:/b")]).unwrap();
        assert_eq!(c.storage.image_dirs, vec![PathBuf::from("/a"), PathBuf::from("/b")]);
    }

    #[test]
    fn bad_default_name_is_refused() {
        let e = load(r#"{"vm":{"default_name":"../x"}}"#, &[]).unwrap_err().to_string();
        assert!(e.starts_with("vm.default_name:"), "{e}");
    }
}
