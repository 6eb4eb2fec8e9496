//! `config.json`: the raw file (serde structs that reject unknown keys, in the original
//! kvm-mcp layout plus sections of our own), `VM_*`/`KVM_MCP_*` environment overrides,
//! and the resolved [`Config`] with defaults applied and every value checked. A bad value
//! is an error that names the key and the reason.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Smallest memory a VM may be given, in MiB.
pub const MIN_MEMORY_MIB: u64 = 16;
/// Largest memory a VM may be given, in MiB (1 TiB).
pub const MAX_MEMORY_MIB: u64 = 1024 * 1024;
/// Largest vCPU count QEMU's `pc`/`q35` machines accept without extra options.
pub const MAX_VCPUS: u32 = 255;
/// Largest disk size accepted, in GiB (64 TiB).
pub const MAX_DISK_SIZE_GIB: u64 = 64 * 1024;

/// Where the config came from; shown by `host info`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
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
    console: crate::guest_config::RawConsole,
    display: crate::guest_config::RawDisplay,
    agent: crate::guest_config::RawAgent,
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

/// `vm.ignition.*`.
#[derive(Debug, Clone, Serialize, Default)]
pub struct IgnitionDefaults {
    pub hostname: Option<String>,
    pub user: Option<String>,
    pub ssh_key: Option<String>,
    pub timezone: Option<String>,
    pub locale: Option<String>,
    pub password_hash: Option<String>,
}

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
}

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
    Ok(())
}

fn invalid(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key: key.into(), reason: reason.into() }
}

fn absolute(key: &str, p: PathBuf) -> Result<PathBuf, ConfigError> {
    if p.is_absolute() {
        Ok(p)
    } else {
        Err(invalid(key, format!("{} is not an absolute path; give the full path starting with /", p.display())))
    }
}

fn in_range(key: &str, v: u64, min: u64, max: u64, unit: &str) -> Result<u64, ConfigError> {
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
    if network.is_empty() || network.len() > 15 || network.contains(['/', ' ', ':']) {
        return Err(invalid(
            "vm.default_network",
            format!("{network:?} is not \"user\", \"none\" or a bridge name of at most 15 bytes"),
        ));
    }
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
        },
        state_dir: absolute("paths.state_dir", raw.paths.state_dir.unwrap_or(def_state))?,
        run_dir: absolute("paths.run_dir", raw.paths.run_dir.unwrap_or(def_run))?,
        logging: LogSettings { level, file: raw.logging.file, json: raw.logging.json.unwrap_or(false) },
        console: raw.console.resolve()?,
        display: raw.display.resolve(),
        agent: raw.agent.resolve()?,
    })
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
    fn bad_default_name_is_refused() {
        let e = load(r#"{"vm":{"default_name":"../x"}}"#, &[]).unwrap_err().to_string();
        assert!(e.starts_with("vm.default_name:"), "{e}");
    }
}
