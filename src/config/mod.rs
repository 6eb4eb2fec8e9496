//! `config.json`, one file per section: the raw file ([`raw`]: serde structs that
//! reject unknown keys, in the original kvm-mcp layout plus sections of our own), the
//! `VM_*`/`KVM_MCP_*` environment overrides ([`env`]), and the resolved [`Config`] with
//! defaults applied and every value checked (`vm`, `qemu`, `logging`, `network` with its
//! DHCP bridge, `storage`, `server`, the guest-facing `console`, `display`, `agent`, and `mcp`).
//! A bad value is an error that names the key and the reason.

mod env;
mod guest;
mod logging;
mod mcp;
mod network;
mod qemu;
mod raw;
pub mod server;
mod storage;
mod vm;

use std::path::{Path, PathBuf};

use serde::Serialize;

pub use guest::{
    AgentSettings, ConsoleSettings, DEFAULT_AGENT_TIMEOUT_S, DEFAULT_CONSOLE_LOG_KEEP, DEFAULT_CONSOLE_LOG_MAX_BYTES,
    DEFAULT_EXEC_OUTPUT_MAX_BYTES, DEFAULT_FILE_MAX_BYTES, DisplaySettings, MAX_TRANSFER_BYTES,
};
pub use logging::{DEFAULT_LOG_KEEP_FILES, DEFAULT_LOG_MAX_BYTES, LogSettings};
pub use mcp::{ConfirmDestructive, McpSettings};
pub use network::{DEFAULT_LEASE_TIME_S, DhcpSettings, NetworkSettings};
pub use qemu::{AccelChoice, DEFAULT_STOP_TIMEOUT_S, QemuSettings};
pub use server::{ConnectionLimits, RateLimit, RateLimits, ServerSettings, TlsSettings, TokenSource};
pub use storage::{DEFAULT_OVMF_DIR, StorageSettings};
pub use vm::{IgnitionDefaults, MAX_DISK_SIZE_GIB, MAX_MEMORY_MIB, MAX_VCPUS, MIN_MEMORY_MIB, VmDefaults};

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

impl ConfigSource {
    /// The file, unless built-in defaults are in use.
    #[must_use]
    pub fn path(&self) -> Option<&Path> {
        match self {
            ConfigSource::Flag(p) | ConfigSource::Env(p) | ConfigSource::WorkingDir(p) | ConfigSource::System(p) => {
                Some(p)
            }
            ConfigSource::Defaults => None,
        }
    }
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
    #[error("environment variable {var}={value}: {reason}")]
    Env { var: String, value: String, reason: String },
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
    pub network: NetworkSettings,
    /// Image and ISO directories, firmware (`storage.*`).
    pub storage: StorageSettings,
    /// `server.*`: the HTTP front end.
    pub server: ServerSettings,
    /// Serial console log rotation (`console.*`).
    pub console: ConsoleSettings,
    /// VNC (`display.*`).
    pub display: DisplaySettings,
    /// Guest agent limits (`agent.*`).
    pub agent: AgentSettings,
    /// The MCP front end (`mcp.*`).
    pub mcp: McpSettings,
}

impl Config {
    /// The file this config was read from, if any (passed on to child processes).
    #[must_use]
    pub fn file(&self) -> Option<&Path> {
        self.source.path()
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
            let p = std::env::current_dir().map_or_else(|_| PathBuf::from("config.json"), |d| d.join("config.json"));
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
            Some(t) => raw::parse(&source, t)?,
            None => raw::RawConfig::default(),
        };
        env::apply(&mut raw, env)?;
        resolve(source, raw)
    }
}

/// Config files are small; a bigger one is a mistake (or `/dev/zero`).
const MAX_CONFIG_BYTES: u64 = 1 << 20;

fn read(path: &Path) -> Result<String, ConfigError> {
    use std::io::Read as _;
    let err = |source| ConfigError::Read { path: path.to_owned(), source };
    let file = std::fs::File::open(path).map_err(err)?;
    let mut text = String::new();
    file.take(MAX_CONFIG_BYTES + 1).read_to_string(&mut text).map_err(err)?;
    if text.len() as u64 > MAX_CONFIG_BYTES {
        return Err(err(std::io::Error::other(format!("larger than {MAX_CONFIG_BYTES} bytes"))));
    }
    Ok(text)
}

/// `value` quoted for an error, at most ~200 characters of it.
fn quote(value: &str) -> String {
    crate::error::quote(value)
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

fn resolve(source: ConfigSource, raw: raw::RawConfig) -> Result<Config, ConfigError> {
    let vm = vm::resolve(raw.vm)?;
    let network = network::resolve(raw.network, &vm.default_network)?;
    let (def_state, def_run) = default_dirs();
    Ok(Config {
        source,
        vm,
        qemu: qemu::resolve(raw.qemu)?,
        state_dir: absolute("paths.state_dir", raw.paths.state_dir.unwrap_or(def_state))?,
        run_dir: absolute("paths.run_dir", raw.paths.run_dir.unwrap_or(def_run))?,
        logging: logging::resolve(raw.logging)?,
        network,
        storage: storage::resolve(raw.storage)?,
        server: server::resolve(raw.server)?,
        console: raw.console.resolve()?,
        display: raw.display.resolve(),
        agent: raw.agent.resolve()?,
        mcp: raw.mcp.resolve(),
    })
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

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
        let text = include_str!("../../config.json");
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
