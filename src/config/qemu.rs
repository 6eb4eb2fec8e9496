//! `qemu.*`: the emulator binary, the accelerator choice, extra profile files and how
//! long a graceful stop may take.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{ConfigError, in_range};

/// Default `qemu.stop_timeout_s`.
pub const DEFAULT_STOP_TIMEOUT_S: u64 = 60;

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

/// The file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawQemu {
    pub(super) binary: Option<PathBuf>,
    pub(super) accel: Option<AccelChoice>,
    pub(super) profiles_dir: Option<PathBuf>,
    pub(super) stop_timeout_s: Option<u64>,
    pub(super) user: Option<String>,
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
    /// Unprivileged user QEMU switches to once it has opened its files (`-runas`,
    /// or `-run-with user=` on QEMU 9.1 and later); `None`: QEMU keeps running as
    /// the supervisor's user.
    pub user: Option<String>,
}

pub(super) fn resolve(raw: RawQemu) -> Result<QemuSettings, ConfigError> {
    let stop_timeout_s = raw.stop_timeout_s.unwrap_or(DEFAULT_STOP_TIMEOUT_S);
    in_range("qemu.stop_timeout_s", stop_timeout_s, 1, 3600, " s")?;
    Ok(QemuSettings {
        binary: raw.binary.unwrap_or_else(|| "qemu-system-x86_64".into()),
        accel: raw.accel.unwrap_or_default(),
        profiles_dir: raw.profiles_dir,
        stop_timeout_s,
        user: raw.user.map(|u| super::storage::check_user_name("qemu.user", u)).transpose()?,
    })
}
