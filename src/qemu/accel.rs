//! Accelerator choice. `auto` takes KVM only when /dev/kvm is usable for ordinary guests:
//! the device opens read-write and the hypervisor module is `kvm_intel` or `kvm_amd`.
//! Other providers (such as `kvm_pvm`, which cannot boot stock guest kernels) make
//! `auto` fall back to TCG, and the reason says so.

use std::path::Path;

use serde::Serialize;

use crate::config::AccelChoice;

/// The accelerator a VM runs under.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    /// QEMU's `-accel` value.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// The choice and why it was made.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct AccelDecision {
    pub accel: Accel,
    pub reason: String,
}

/// Why `accel: kvm` cannot be honoured.
#[derive(Debug, thiserror::Error)]
#[error("accel is \"kvm\" but KVM is not usable: {reason}; set qemu.accel to \"auto\" or \"tcg\"")]
pub struct KvmUnusable {
    pub reason: String,
}

/// What the host offers, read from `/dev/kvm` and `/sys/module`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvmProbe {
    /// /dev/kvm opened read-write.
    pub dev_usable: bool,
    /// Loaded modules named `kvm_*` other than `kvm` itself.
    pub providers: Vec<String>,
}

impl KvmProbe {
    /// Reads the host.
    #[must_use]
    pub fn read(dev: &Path, sys_module: &Path) -> Self {
        let dev_usable = std::fs::OpenOptions::new().read(true).write(true).open(dev).is_ok();
        let mut providers: Vec<String> = std::fs::read_dir(sys_module)
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| e.file_name().into_string().ok())
                    .filter(|n| n.starts_with("kvm_"))
                    .collect()
            })
            .unwrap_or_default();
        providers.sort();
        Self { dev_usable, providers }
    }

    /// Whether KVM runs ordinary guests here, and why not when it does not.
    ///
    /// # Errors
    /// The reason KVM is unusable.
    pub fn usable(&self) -> Result<String, String> {
        if !self.dev_usable {
            return Err("/dev/kvm is missing or cannot be opened read-write".into());
        }
        if let Some(p) = self.providers.iter().find(|p| *p == "kvm_intel" || *p == "kvm_amd") {
            return Ok(format!("/dev/kvm is usable and served by {p}"));
        }
        if self.providers.is_empty() {
            Err("/dev/kvm is served by no kvm_intel or kvm_amd module".into())
        } else {
            Err(format!(
                "/dev/kvm is served by {}, not kvm_intel or kvm_amd, and cannot boot stock guest kernels",
                self.providers.join(", ")
            ))
        }
    }
}

/// Applies the configured choice to a probe.
///
/// # Errors
/// [`KvmUnusable`] when `kvm` was demanded and is not usable.
pub fn decide(choice: AccelChoice, probe: &KvmProbe) -> Result<AccelDecision, KvmUnusable> {
    match (choice, probe.usable()) {
        (AccelChoice::Tcg, _) => Ok(AccelDecision { accel: Accel::Tcg, reason: "qemu.accel is \"tcg\"".into() }),
        (AccelChoice::Kvm | AccelChoice::Auto, Ok(why)) => Ok(AccelDecision { accel: Accel::Kvm, reason: why }),
        (AccelChoice::Kvm, Err(reason)) => Err(KvmUnusable { reason }),
        (AccelChoice::Auto, Err(why)) => {
            Ok(AccelDecision { accel: Accel::Tcg, reason: format!("{why}; using TCG (software emulation)") })
        }
    }
}

/// Probes this host and decides.
///
/// # Errors
/// See [`decide`].
pub fn detect(choice: AccelChoice) -> Result<AccelDecision, KvmUnusable> {
    decide(choice, &KvmProbe::read(Path::new("/dev/kvm"), Path::new("/sys/module")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(dev: bool, p: &[&str]) -> KvmProbe {
        KvmProbe { dev_usable: dev, providers: p.iter().map(|s| (*s).to_owned()).collect() }
    }

    #[test]
    fn auto_with_kvm_intel_picks_kvm() {
        assert_eq!(decide(AccelChoice::Auto, &probe(true, &["kvm_intel"])).unwrap().accel, Accel::Kvm);
    }

    #[test]
    fn auto_with_pvm_picks_tcg_and_says_why() {
        let d = decide(AccelChoice::Auto, &probe(true, &["kvm_pvm"])).unwrap();
        assert!(d.accel == Accel::Tcg && d.reason.contains("kvm_pvm"), "{d:?}");
    }

    #[test]
    fn auto_without_device_picks_tcg() {
        assert_eq!(decide(AccelChoice::Auto, &probe(false, &["kvm_amd"])).unwrap().accel, Accel::Tcg);
    }

    #[test]
    fn demanded_kvm_on_pvm_is_an_error() {
        let e = decide(AccelChoice::Kvm, &probe(true, &["kvm_pvm"])).unwrap_err().to_string();
        assert!(e.starts_with("accel is \"kvm\" but KVM is not usable"), "{e}");
    }

    #[test]
    fn this_host_probe_does_not_panic() {
        let p = KvmProbe::read(Path::new("/dev/kvm"), Path::new("/sys/module"));
        assert_eq!(p.usable().is_ok(), p.providers.iter().any(|x| x == "kvm_intel" || x == "kvm_amd") && p.dev_usable);
    }
}
