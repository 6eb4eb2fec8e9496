//! QEMU profiles: one JSON file per OS variant in `qemu-profiles/` (machine type,
//! firmware, CPU model, disk and NIC models, display, standard devices). The project's
//! files are built into the binary; `qemu.profiles_dir` may add or override profiles by
//! file name. Callers pick a profile by `os_variant` and never pass raw QEMU arguments.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Profiles shipped in `qemu-profiles/`.
const BUILT_IN: &[(&str, &str)] = &[
    ("generic", include_str!("../../qemu-profiles/generic.json")),
    ("linux", include_str!("../../qemu-profiles/linux.json")),
    ("fedora-coreos", include_str!("../../qemu-profiles/fedora-coreos.json")),
    ("legacy", include_str!("../../qemu-profiles/legacy.json")),
    ("microvm", include_str!("../../qemu-profiles/microvm.json")),
    ("linux-uefi", include_str!("../../qemu-profiles/linux-uefi.json")),
    ("linux-secureboot", include_str!("../../qemu-profiles/linux-secureboot.json")),
];

/// Machine types profiles may use.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Machine {
    /// i440FX.
    Pc,
    /// Q35 (PCIe, AHCI).
    Q35,
    /// Minimal virtio-mmio machine; direct kernel boot only.
    Microvm,
}

impl Machine {
    /// QEMU's `-machine` type name.
    #[must_use]
    pub fn qemu_name(self) -> &'static str {
        match self {
            Machine::Pc => "pc",
            Machine::Q35 => "q35",
            Machine::Microvm => "microvm",
        }
    }
}

/// Firmware.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Firmware {
    /// SeaBIOS (QEMU's default).
    Bios,
    /// OVMF (`OVMF_CODE_4M.fd`); each VM gets its own copy of `OVMF_VARS_4M.fd`.
    Uefi,
    /// OVMF with Secure Boot and Microsoft's keys enrolled (`OVMF_*_4M.ms.fd`; q35 only).
    #[serde(rename = "uefi-secure")]
    UefiSecure,
}

/// CPU model per accelerator.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CpuModels {
    /// Model under KVM (usually `host`).
    pub kvm: String,
    /// Model under TCG.
    pub tcg: String,
}

/// How disks attach.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DiskBus {
    Virtio,
    Scsi,
    Sata,
    Ide,
}

/// How CD-ROMs attach.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CdromBus {
    Ide,
    Sata,
    Scsi,
    /// The machine has no CD-ROM bus (microvm).
    None,
}

/// Emulated graphics.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Display {
    None,
    Std,
    Virtio,
    Cirrus,
}

/// Devices every VM of the profile gets.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StandardDevices {
    /// virtio-rng fed from /dev/urandom.
    pub rng: bool,
    /// virtio-balloon (memory figures and ballooning).
    pub balloon: bool,
    /// virtio-serial port `org.qemu.guest_agent.0`.
    pub guest_agent: bool,
}

/// One profile file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Filled from the file name.
    #[serde(default, skip_deserializing)]
    pub name: String,
    /// One sentence for people and models.
    pub description: String,
    pub machine: Machine,
    pub firmware: Firmware,
    pub cpu: CpuModels,
    pub disk_bus: DiskBus,
    pub cdrom_bus: CdromBus,
    /// A QEMU NIC device model (`virtio-net-pci`, `e1000`, ...).
    pub nic_model: String,
    pub display: Display,
    pub devices: StandardDevices,
    /// Pass an Ignition config (Fedora CoreOS) through fw_cfg.
    #[serde(default)]
    pub ignition: bool,
}

impl Profile {
    /// True when devices hang off virtio-mmio rather than PCI.
    #[must_use]
    pub fn is_mmio(&self) -> bool {
        self.machine == Machine::Microvm
    }
}

/// Profile loading and lookup failures.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("unknown os_variant {name:?}; known profiles: {}", known.join(", "))]
    Unknown { name: String, known: Vec<String> },
    #[error("profile file {path}: {reason}")]
    Parse { path: PathBuf, reason: String },
    #[error("cannot read profile directory {path}")]
    ReadDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// All known profiles, by name.
#[derive(Debug, Clone)]
pub struct Profiles(BTreeMap<String, Profile>);

impl Profiles {
    /// The built-in profiles plus those in `extra_dir` (`<name>.json`), which override.
    ///
    /// # Errors
    /// A file that cannot be read or parsed, named with the reason.
    pub fn load(extra_dir: Option<&Path>) -> Result<Self, ProfileError> {
        let mut map = BTreeMap::new();
        for (name, text) in BUILT_IN {
            let p = parse(Path::new(&format!("qemu-profiles/{name}.json")), name, text)?;
            map.insert((*name).to_owned(), p);
        }
        if let Some(dir) = extra_dir {
            let rd = std::fs::read_dir(dir).map_err(|source| ProfileError::ReadDir { path: dir.into(), source })?;
            for entry in rd.flatten() {
                let path = entry.path();
                if path.extension().and_then(|e| e.to_str()) != Some("json") {
                    continue;
                }
                let Some(name) = path.file_stem().and_then(|s| s.to_str()) else { continue };
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| ProfileError::Parse { path: path.clone(), reason: e.to_string() })?;
                let p = parse(&path, name, &text)?;
                map.insert(name.to_owned(), p);
            }
        }
        Ok(Self(map))
    }

    /// Looks a profile up by `os_variant`.
    ///
    /// # Errors
    /// [`ProfileError::Unknown`] listing the known names.
    pub fn get(&self, name: &str) -> Result<&Profile, ProfileError> {
        self.0.get(name).ok_or_else(|| ProfileError::Unknown { name: name.into(), known: self.names() })
    }

    /// Names in order.
    #[must_use]
    pub fn names(&self) -> Vec<String> {
        self.0.keys().cloned().collect()
    }

    /// Every profile in name order.
    pub fn iter(&self) -> impl Iterator<Item = &Profile> {
        self.0.values()
    }
}

fn parse(path: &Path, name: &str, text: &str) -> Result<Profile, ProfileError> {
    let de = &mut serde_json::Deserializer::from_str(text);
    let mut p: Profile = serde_path_to_error::deserialize(de)
        .map_err(|e| ProfileError::Parse { path: path.into(), reason: format!("{}: {}", e.path(), e.inner()) })?;
    p.name = name.to_owned();
    if p.firmware == Firmware::UefiSecure && p.machine != Machine::Q35 {
        return Err(ProfileError::Parse {
            path: path.into(),
            reason: "Secure Boot needs SMM, which kvm-mcp enables on q35 only; set machine to \"q35\"".into(),
        });
    }
    if p.machine == Machine::Microvm && p.firmware != Firmware::Bios {
        return Err(ProfileError::Parse {
            path: path.into(),
            reason: "microvm boots kernels directly; use firmware \"bios\"".into(),
        });
    }
    if p.machine == Machine::Microvm && p.cdrom_bus != CdromBus::None {
        return Err(ProfileError::Parse {
            path: path.into(),
            reason: "microvm has no CD-ROM bus; set cdrom_bus to \"none\"".into(),
        });
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_profiles_all_parse() {
        let p = Profiles::load(None).unwrap();
        assert_eq!(
            p.names(),
            ["fedora-coreos", "generic", "legacy", "linux", "linux-secureboot", "linux-uefi", "microvm"]
        );
    }

    #[test]
    fn unknown_variant_lists_known_ones() {
        let p = Profiles::load(None).unwrap();
        let e = p.get("win95").unwrap_err().to_string();
        assert_eq!(
            e,
            "unknown os_variant \"win95\"; known profiles: fedora-coreos, generic, legacy, linux, linux-secureboot, linux-uefi, microvm"
        );
    }

    #[test]
    fn legacy_uses_ide_and_e1000() {
        let p = Profiles::load(None).unwrap();
        let l = p.get("legacy").unwrap();
        assert_eq!((l.disk_bus, l.nic_model.as_str()), (DiskBus::Ide, "e1000"));
    }

    #[test]
    fn extra_dir_overrides_and_adds() {
        let dir = tempfile::tempdir().unwrap();
        let text = include_str!("../../qemu-profiles/legacy.json").replace("e1000", "rtl8139");
        std::fs::write(dir.path().join("dos.json"), text).unwrap();
        let p = Profiles::load(Some(dir.path())).unwrap();
        assert_eq!(p.get("dos").unwrap().nic_model, "rtl8139");
    }

    #[test]
    fn unknown_key_in_profile_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("bad.json"), r#"{"machin":"pc"}"#).unwrap();
        let e = Profiles::load(Some(dir.path())).unwrap_err().to_string();
        assert!(e.contains("bad.json") && e.contains("machin"), "{e}");
    }
}
