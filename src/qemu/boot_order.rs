//! The parts of the argv that storage and provisioning decide: which device boots
//! first (the CD-ROM during an ISO install, else the first disk), UEFI flash, the
//! Ignition config in fw_cfg, and ending the run on a guest reboot while installing.
//! Pure, like the rest of the argv builder.

use crate::spec::{Media, VmSpec};

/// `bootindex` per entry of `spec.disks`: during an install the first CD-ROM with a
/// medium is 1 and the first disk 2; otherwise the first disk is 1 (a VM with only a
/// CD-ROM boots that).
#[must_use]
pub fn boot_indexes(spec: &VmSpec) -> Vec<Option<u32>> {
    let mut out = vec![None; spec.disks.len()];
    let disk = spec.disks.iter().position(|d| d.media == Media::Disk);
    let cd = spec.disks.iter().position(|d| d.media == Media::Cdrom && !d.ejected);
    match (disk, cd) {
        (Some(d), Some(c)) if spec.install_boot => {
            out[c] = Some(1);
            out[d] = Some(2);
        }
        (Some(d), _) => out[d] = Some(1),
        (None, Some(c)) => out[c] = Some(1),
        (None, None) => {}
    }
    out
}

/// `a,b` → `a,,b` for QEMU's key=value parser.
fn esc(p: &std::path::Path) -> String {
    p.to_string_lossy().replace(',', ",,")
}

/// Appends firmware, fw_cfg and install-run options.
pub fn firmware(argv: &mut Vec<String>, spec: &VmSpec) {
    let mut push = |k: &str, v: String| {
        argv.push(k.to_owned());
        argv.push(v);
    };
    if let Some(u) = &spec.uefi {
        let code = serde_json::json!({
            "driver": "file", "node-name": "fw-code", "filename": u.code.to_string_lossy(), "read-only": true,
        });
        let vars = serde_json::json!({
            "driver": "file", "node-name": "fw-vars", "filename": u.vars.to_string_lossy(), "read-only": false,
        });
        push("-blockdev", code.to_string());
        push("-blockdev", vars.to_string());
        push("-machine", "pflash0=fw-code,pflash1=fw-vars".into());
        if u.secure_boot {
            push("-machine", "smm=on".into());
            push("-global", "driver=cfi.pflash01,property=secure,value=on".into());
        }
    }
    if let Some(ign) = &spec.ignition {
        push("-fw_cfg", format!("name=opt/com.coreos/config,file={}", esc(ign)));
    }
    if spec.install_boot {
        // The installer's reboot ends this QEMU; the supervisor starts the next run
        // from the disk (bootindex is fixed for a QEMU's life).
        push("-action", "reboot=shutdown".into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::VmName;
    use crate::spec::{Boot, DiskFormat, DiskSpec, RestartPolicy, SPEC_VERSION, UefiSpec};

    fn disk(media: Media) -> DiskSpec {
        DiskSpec {
            path: "/vm/x".into(),
            format: DiskFormat::Raw,
            media,
            readonly: false,
            owned: false,
            ejected: false,
            addr: None,
        }
    }

    fn spec(disks: Vec<DiskSpec>, install_boot: bool) -> VmSpec {
        VmSpec {
            version: SPEC_VERSION,
            name: VmName::new("x").unwrap(),
            uuid: uuid::Uuid::nil(),
            created_at: 0,
            os_variant: "generic".into(),
            memory_mib: 256,
            vcpus: 1,
            boot: Boot::Disk,
            disks,
            nics: vec![],
            restart_policy: RestartPolicy::Never,
            template: false,
            made_template: false,
            ignition: None,
            uefi: None,
            addresses: crate::spec::StandardAddrs::default(),
            pool: None,
            pool_of: None,
            lease: crate::spec::Lease::default(),
            install_boot,
        }
    }

    #[test]
    fn install_boots_cdrom_before_disk() {
        let s = spec(vec![disk(Media::Disk), disk(Media::Cdrom)], true);
        assert_eq!(boot_indexes(&s), vec![Some(2), Some(1)]);
    }

    #[test]
    fn after_install_disk_boots_and_cdrom_has_no_index() {
        let s = spec(vec![disk(Media::Disk), disk(Media::Cdrom)], false);
        assert_eq!(boot_indexes(&s), vec![Some(1), None]);
    }

    #[test]
    fn install_run_turns_reboot_into_exit() {
        let mut argv = vec![];
        firmware(&mut argv, &spec(vec![disk(Media::Disk), disk(Media::Cdrom)], true));
        assert_eq!(argv, ["-action", "reboot=shutdown"]);
    }

    #[test]
    fn ignition_path_goes_to_fw_cfg_with_commas_doubled() {
        let mut s = spec(vec![disk(Media::Disk)], false);
        s.ignition = Some("/s/a,b/ignition.json".into());
        let mut argv = vec![];
        firmware(&mut argv, &s);
        assert_eq!(argv, ["-fw_cfg", "name=opt/com.coreos/config,file=/s/a,,b/ignition.json"]);
    }

    #[test]
    fn secure_boot_adds_smm_and_secure_flash() {
        let mut s = spec(vec![disk(Media::Disk)], false);
        s.uefi = Some(UefiSpec { code: "/c.fd".into(), vars: "/v.fd".into(), secure_boot: true });
        let mut argv = vec![];
        firmware(&mut argv, &s);
        assert!(argv.windows(2).any(|w| w == ["-machine", "smm=on"]), "{argv:?}");
        assert!(argv.contains(&"driver=cfi.pflash01,property=secure,value=on".to_owned()), "{argv:?}");
    }
}
