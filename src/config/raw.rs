//! The config file as written: one serde struct per section, unknown keys rejected at
//! every level, every value optional (defaults are applied when resolving). A parse
//! error names the key path (`vm.default_vcpus: invalid type …`).

use std::path::PathBuf;

use serde::Deserialize;

use super::{ConfigError, ConfigSource, guest, logging, mcp, network, qemu, server, storage, vm};

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawConfig {
    pub(super) vm: vm::RawVm,
    pub(super) qemu: qemu::RawQemu,
    pub(super) paths: RawPaths,
    pub(super) logging: logging::RawLogging,
    pub(super) network: network::RawNetwork,
    pub(super) storage: storage::RawStorage,
    pub(super) server: server::RawServer,
    pub(super) console: guest::RawConsole,
    pub(super) display: guest::RawDisplay,
    pub(super) agent: guest::RawAgent,
    pub(super) mcp: mcp::RawMcp,
}

/// `paths.*`: where state and runtime files go.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawPaths {
    pub(super) state_dir: Option<PathBuf>,
    pub(super) run_dir: Option<PathBuf>,
}

/// Parses `text`, naming the key path of the first error.
pub(super) fn parse(source: &ConfigSource, text: &str) -> Result<RawConfig, ConfigError> {
    let path = source.path().map_or_else(|| PathBuf::from("(built-in)"), Into::into);
    let de = &mut serde_json::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let inner = e.into_inner();
        ConfigError::Parse { path, key: if key == "." { "(top level)".into() } else { key }, reason: inner.to_string() }
    })
}
