//! Turns (profile, spec, accelerator, paths, fd numbers) into QEMU's argv. Pure and
//! golden-tested: nothing here touches the system. Paths go into `-blockdev` as JSON and
//! into key=value options with commas doubled, so no file name can inject an option.

use std::fmt::Write as _;
use std::path::Path;

use crate::layout::VmPaths;
use crate::qemu::accel::Accel;
use crate::qemu::profile::{CdromBus, DiskBus, Display, Machine, Profile};
use crate::spec::{Boot, Media, NetworkMode, VmSpec};

/// Pre-opened descriptors handed to QEMU at these numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FdPlan {
    /// Listening socket of the command monitor.
    pub qmp: i32,
    /// Listening socket of the event monitor.
    pub events: i32,
    /// One tap fd per bridged NIC, in NIC order.
    pub taps: Vec<i32>,
}

impl FdPlan {
    /// The standard layout: monitors at 3 and 4, taps from 5.
    #[must_use]
    pub fn standard(taps: usize) -> Self {
        let taps = (0..taps).map(|i| 5 + i32::try_from(i).unwrap_or(0)).collect();
        Self { qmp: 3, events: 4, taps }
    }
}

/// Where QEMU's VNC server listens. It starts with `password=on` and no password, which
/// refuses every client until the supervisor sets the run's password over QMP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VncListen {
    pub host: std::net::IpAddr,
    /// Display number (port − 5900).
    pub display: u16,
    /// WebSocket (noVNC) port, when enabled.
    pub websocket_port: Option<u16>,
}

impl VncListen {
    /// The `-vnc` option's value.
    fn arg(&self) -> String {
        let host = match self.host {
            std::net::IpAddr::V4(a) => a.to_string(),
            std::net::IpAddr::V6(a) => format!("[{a}]"),
        };
        let mut v = format!("{host}:{},password=on", self.display);
        if let Some(ws) = self.websocket_port {
            let _ = write!(v, ",websocket={host}:{ws}");
        }
        v
    }
}

/// Why a spec cannot run with its profile.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CmdlineError {
    #[error(
        "profile {profile:?} uses the microvm machine, which has no firmware boot; create the VM with a kernel (and initrd) instead of booting from disk"
    )]
    MicrovmNeedsKernel { profile: String },
    #[error("profile {profile:?} has no CD-ROM bus; use another os_variant for ISO media")]
    NoCdromBus { profile: String },
    #[error("{disks} disks do not fit on the {bus} bus of profile {profile:?} (at most {max})")]
    TooManyDisks { profile: String, bus: &'static str, disks: usize, max: usize },
    #[error("NIC {index} is bridged but no tap descriptor was planned for it")]
    MissingTap { index: usize },
}

/// `a,b` → `a,,b` for QEMU's key=value parser.
fn esc(p: &Path) -> String {
    p.to_string_lossy().replace(',', ",,")
}

struct Args(Vec<String>);

impl Args {
    fn push(&mut self, flag: &str, value: impl Into<String>) {
        self.0.push(flag.to_owned());
        self.0.push(value.into());
    }
}

/// Builds the whole argv (without the binary itself).
///
/// # Errors
/// [`CmdlineError`] when the spec and the profile do not fit together.
pub fn build(
    spec: &VmSpec,
    profile: &Profile,
    accel: Accel,
    paths: &VmPaths,
    fds: &FdPlan,
    vnc: Option<&VncListen>,
) -> Result<Vec<String>, CmdlineError> {
    let mmio = profile.is_mmio();
    let dev = |pci: &str, mmio_name: &str| if mmio { mmio_name.to_owned() } else { pci.to_owned() };
    let mut a = Args(Vec::with_capacity(64));
    a.push("-name", format!("{},debug-threads=on", spec.name));
    a.push("-uuid", spec.uuid.to_string());
    a.0.extend(["-nodefaults", "-no-user-config"].map(String::from));
    a.push("-sandbox", "on");
    a.push(
        "-machine",
        match profile.machine {
            Machine::Microvm => "microvm,isa-serial=on,rtc=on".to_owned(),
            m => m.qemu_name().to_owned(),
        },
    );
    a.push("-accel", accel.as_str());
    a.push(
        "-cpu",
        match accel {
            Accel::Kvm => profile.cpu.kvm.clone(),
            Accel::Tcg => profile.cpu.tcg.clone(),
        },
    );
    a.push("-m", format!("{}M", spec.memory_mib));
    a.push("-smp", spec.vcpus.to_string());
    a.push("-rtc", "base=utc");
    a.push("-msg", "timestamp=on");
    a.push("-display", "none");
    if let Some(v) = vnc {
        a.push("-vnc", v.arg());
    }

    // Monitors: pre-bound listening sockets, so the supervisor can connect at once.
    a.push("-chardev", format!("socket,id=qmp,fd={},server=on,wait=off", fds.qmp));
    a.push("-mon", "chardev=qmp,mode=control");
    a.push("-chardev", format!("socket,id=qmp-events,fd={},server=on,wait=off", fds.events));
    a.push("-mon", "chardev=qmp-events,mode=control");

    // Serial console: a socket to attach to, logged whether or not anyone is attached.
    a.push(
        "-chardev",
        format!(
            "socket,id=serial0,path={},server=on,wait=off,logfile={},logappend=on",
            esc(&paths.serial_sock()),
            esc(&paths.serial_log())
        ),
    );
    a.push("-serial", "chardev:serial0");

    match profile.display {
        Display::None => {}
        Display::Std => a.push("-device", "VGA,id=video0"),
        Display::Virtio => a.push("-device", "virtio-vga,id=video0"),
        Display::Cirrus => a.push("-device", "cirrus-vga,id=video0"),
    }
    if profile.machine != Machine::Microvm {
        // Lets a panicking guest report it (GUEST_PANICKED), so crashes get a reason.
        a.push("-device", "pvpanic");
    }
    if profile.devices.rng {
        a.push("-object", "rng-random,id=rng0,filename=/dev/urandom");
        a.push("-device", format!("{},rng=rng0,id=rng0-dev", dev("virtio-rng-pci", "virtio-rng-device")));
    }
    if profile.devices.balloon {
        a.push("-device", format!("{},id=balloon0", dev("virtio-balloon-pci", "virtio-balloon-device")));
    }
    if profile.devices.guest_agent {
        a.push("-device", format!("{},id=vser0", dev("virtio-serial-pci", "virtio-serial-device")));
        a.push("-chardev", format!("socket,id=qga0,path={},server=on,wait=off", esc(&paths.qga_sock())));
        a.push("-device", "virtserialport,bus=vser0.0,chardev=qga0,name=org.qemu.guest_agent.0");
    }

    super::boot_order::firmware(&mut a.0, spec);
    disks(&mut a, spec, profile)?;
    nics(&mut a, spec, profile, fds)?;

    match &spec.boot {
        Boot::Disk => {
            if profile.machine == Machine::Microvm {
                return Err(CmdlineError::MicrovmNeedsKernel { profile: profile.name.clone() });
            }
        }
        Boot::Kernel { kernel, initrd, cmdline } => {
            a.push("-kernel", kernel.to_string_lossy());
            if let Some(i) = initrd {
                a.push("-initrd", i.to_string_lossy());
            }
            if let Some(c) = cmdline {
                a.push("-append", c.clone());
            }
        }
    }
    Ok(a.0)
}

fn disks(a: &mut Args, spec: &VmSpec, profile: &Profile) -> Result<(), CmdlineError> {
    let mmio = profile.is_mmio();
    let boot_from_disk = matches!(spec.boot, Boot::Disk);
    let mut scsi_added = false;
    // Slots on the machine's built-in IDE/AHCI controllers, shared by disks and CD-ROMs.
    let mut ata_slot = 0usize;
    let ata_max = if profile.machine == Machine::Q35 { 6 } else { 4 };
    let boot_index = super::boot_order::boot_indexes(spec);
    for (i, d) in spec.disks.iter().enumerate() {
        let node = format!("disk{i}");
        let ro = d.readonly || d.media == Media::Cdrom;
        let json = serde_json::json!({
            "driver": d.format.driver(),
            "node-name": node,
            "read-only": ro,
            "file": { "driver": "file", "filename": d.path.to_string_lossy(), "read-only": ro },
        });
        if !d.ejected {
            a.push("-blockdev", json.to_string());
        }
        let bus = match d.media {
            Media::Disk => match profile.disk_bus {
                DiskBus::Virtio => "virtio",
                DiskBus::Scsi => "scsi",
                DiskBus::Sata | DiskBus::Ide => "ata",
            },
            Media::Cdrom => match profile.cdrom_bus {
                CdromBus::None => return Err(CmdlineError::NoCdromBus { profile: profile.name.clone() }),
                CdromBus::Scsi => "scsi",
                CdromBus::Ide | CdromBus::Sata => "ata",
            },
        };
        let mut device = match (bus, d.media) {
            ("virtio", _) => {
                format!("{},drive={node},id={node}-dev", if mmio { "virtio-blk-device" } else { "virtio-blk-pci" })
            }
            ("scsi", media) => {
                if !scsi_added {
                    a.push("-device", "virtio-scsi-pci,id=scsi0");
                    scsi_added = true;
                }
                let kind = if media == Media::Cdrom { "scsi-cd" } else { "scsi-hd" };
                format!("{kind},drive={node},bus=scsi0.0,id={node}-dev")
            }
            (_, media) => {
                if ata_slot >= ata_max {
                    return Err(CmdlineError::TooManyDisks {
                        profile: profile.name.clone(),
                        bus: "IDE/SATA",
                        disks: spec.disks.len(),
                        max: ata_max,
                    });
                }
                let kind = if media == Media::Cdrom { "ide-cd" } else { "ide-hd" };
                let place = if profile.machine == Machine::Q35 {
                    format!("bus=ide.{ata_slot}")
                } else {
                    format!("bus=ide.{},unit={}", ata_slot / 2, ata_slot % 2)
                };
                ata_slot += 1;
                format!("{kind},drive={node},{place},id={node}-dev")
            }
        };
        if d.ejected {
            device = device.replace(&format!("drive={node},"), "");
        }
        if let Some(n) = boot_index[i].filter(|_| boot_from_disk && !mmio) {
            let _ = write!(device, ",bootindex={n}");
        }
        a.push("-device", device);
    }
    Ok(())
}

fn nics(a: &mut Args, spec: &VmSpec, profile: &Profile, fds: &FdPlan) -> Result<(), CmdlineError> {
    let mut taps = fds.taps.iter();
    for (i, n) in spec.nics.iter().enumerate() {
        let id = format!("net{i}");
        match &n.mode {
            NetworkMode::User { port_forwards } => {
                let mut netdev = format!("user,id={id}");
                for f in port_forwards {
                    let _ = write!(netdev, ",hostfwd={}", f.rule());
                }
                a.push("-netdev", netdev);
            }
            NetworkMode::Bridge { .. } => {
                let fd = taps.next().ok_or(CmdlineError::MissingTap { index: i })?;
                a.push("-netdev", format!("tap,id={id},fd={fd}"));
            }
        }
        let model = n.model.clone().unwrap_or_else(|| profile.nic_model.clone());
        let model = if profile.is_mmio() { "virtio-net-device".to_owned() } else { model };
        a.push("-device", format!("{model},netdev={id},mac={},id={id}-dev", n.mac));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::VmName;
    use crate::qemu::profile::Profiles;
    use crate::spec::{DiskFormat, DiskSpec, NicSpec, RestartPolicy, SPEC_VERSION};

    fn spec(boot: Boot) -> VmSpec {
        VmSpec {
            version: SPEC_VERSION,
            name: VmName::new("web1").unwrap(),
            uuid: uuid::Uuid::parse_str("6f1c7a53-6d2e-4c39-9d3b-2f5d2d0b8a11").unwrap(),
            created_at: 0,
            os_variant: String::new(),
            memory_mib: 256,
            vcpus: 2,
            boot,
            disks: vec![DiskSpec {
                path: "/vm/web1,x.qcow2".into(),
                format: DiskFormat::Qcow2,
                media: Media::Disk,
                readonly: false,
                owned: false,
                ejected: false,
            }],
            nics: vec![
                NicSpec { mode: NetworkMode::user(), mac: "52:54:00:12:34:56".parse().unwrap(), model: None },
                NicSpec {
                    mode: NetworkMode::Bridge { bridge: "brforvms".into() },
                    mac: "52:54:00:12:34:57".parse().unwrap(),
                    model: None,
                },
            ],
            restart_policy: RestartPolicy::Never,
            template: false,
            ignition: None,
            uefi: None,
            install_boot: false,
        }
    }

    fn paths() -> VmPaths {
        VmPaths::new(Path::new("/var/lib/kvm-mcp"), Path::new("/run/kvm-mcp"), &VmName::new("web1").unwrap())
    }

    /// Compares with `tests/golden/argv/<name>.txt`; `UPDATE_GOLDEN=1` rewrites it.
    fn golden(name: &str, argv: &[String]) {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/argv").join(format!("{name}.txt"));
        let text = argv.join("\n") + "\n";
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &text).unwrap();
        }
        let want = std::fs::read_to_string(&path).unwrap_or_default();
        assert_eq!(text, want, "argv for {name} differs from {} (UPDATE_GOLDEN=1 refreshes it)", path.display());
    }

    /// VNC as the supervisor plans it for a profile with a graphics device.
    const VNC: VncListen =
        VncListen { host: std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), display: 0, websocket_port: None };

    fn argv_with(profile: &str, spec: &VmSpec) -> Vec<String> {
        let profiles = Profiles::load(None).unwrap();
        let p = profiles.get(profile).unwrap();
        let vnc = (p.display != Display::None).then_some(&VNC);
        build(spec, p, Accel::Tcg, &paths(), &FdPlan::standard(1), vnc).unwrap()
    }

    fn argv_for(profile: &str, boot: Boot) -> Vec<String> {
        argv_with(profile, &spec(boot))
    }

    fn uefi_spec(secure_boot: bool) -> VmSpec {
        let mut s = spec(Boot::Disk);
        s.uefi = Some(crate::spec::UefiSpec {
            code: "/usr/share/OVMF/OVMF_CODE_4M.fd".into(),
            vars: "/var/lib/kvm-mcp/vms/web1/OVMF_VARS.fd".into(),
            secure_boot,
        });
        s
    }

    #[test]
    fn generic_argv_matches_golden() {
        golden("generic", &argv_for("generic", Boot::Disk));
    }

    #[test]
    fn linux_argv_matches_golden() {
        golden("linux", &argv_for("linux", Boot::Disk));
    }

    #[test]
    fn fedora_coreos_argv_matches_golden() {
        golden("fedora-coreos", &argv_for("fedora-coreos", Boot::Disk));
    }

    #[test]
    fn linux_uefi_argv_matches_golden() {
        golden("linux-uefi", &argv_with("linux-uefi", &uefi_spec(false)));
    }

    #[test]
    fn linux_secureboot_argv_matches_golden() {
        golden("linux-secureboot", &argv_with("linux-secureboot", &uefi_spec(true)));
    }

    #[test]
    fn every_built_in_profile_has_a_golden() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/argv");
        let missing: Vec<String> = Profiles::load(None)
            .unwrap()
            .names()
            .into_iter()
            .filter(|n| !dir.join(format!("{n}.txt")).is_file())
            .collect();
        assert_eq!(missing, Vec::<String>::new());
    }

    #[test]
    fn vnc_asks_for_a_password_on_loopback() {
        assert_eq!(VNC.arg(), "127.0.0.1:0,password=on");
    }

    #[test]
    fn vnc_websocket_listens_on_the_same_host() {
        let v = VncListen { host: "::1".parse().unwrap(), display: 3, websocket_port: Some(5703) };
        assert_eq!(v.arg(), "[::1]:3,password=on,websocket=[::1]:5703");
    }

    #[test]
    fn legacy_argv_matches_golden() {
        golden("legacy", &argv_for("legacy", Boot::Disk));
    }

    #[test]
    fn microvm_argv_matches_golden() {
        let boot = Boot::Kernel {
            kernel: "/k/vmlinuz".into(),
            initrd: Some("/k/initrd.gz".into()),
            cmdline: Some("console=ttyS0".into()),
        };
        golden("microvm", &argv_for("microvm", boot));
    }

    #[test]
    fn microvm_disk_boot_is_refused() {
        let profiles = Profiles::load(None).unwrap();
        let e = build(
            &spec(Boot::Disk),
            profiles.get("microvm").unwrap(),
            Accel::Tcg,
            &paths(),
            &FdPlan::standard(1),
            None,
        );
        assert_eq!(e, Err(CmdlineError::MicrovmNeedsKernel { profile: "microvm".into() }));
    }

    #[test]
    fn comma_in_disk_path_stays_inside_json() {
        let argv = argv_for("generic", Boot::Disk);
        assert!(argv.iter().any(|a| a.contains(r#""filename":"/vm/web1,x.qcow2""#)));
    }

    #[test]
    fn bridged_nic_without_tap_fd_is_refused() {
        let profiles = Profiles::load(None).unwrap();
        let e = build(
            &spec(Boot::Disk),
            profiles.get("generic").unwrap(),
            Accel::Tcg,
            &paths(),
            &FdPlan::standard(0),
            None,
        );
        assert_eq!(e, Err(CmdlineError::MissingTap { index: 1 }));
    }

    #[test]
    fn user_port_forwards_become_hostfwd_rules() {
        let mut spec = spec(Boot::Disk);
        spec.nics[0].mode = NetworkMode::User {
            port_forwards: vec![crate::ids::PortForward::tcp(2222, 22), "0.0.0.0:5353:53/udp".parse().unwrap()],
        };
        let profiles = Profiles::load(None).unwrap();
        let argv =
            build(&spec, profiles.get("generic").unwrap(), Accel::Tcg, &paths(), &FdPlan::standard(1), None).unwrap();
        assert!(
            argv.contains(&"user,id=net0,hostfwd=tcp:127.0.0.1:2222-:22,hostfwd=udp:0.0.0.0:5353-:53".to_owned()),
            "{argv:?}"
        );
    }

    #[test]
    fn kvm_uses_host_cpu() {
        let profiles = Profiles::load(None).unwrap();
        let argv =
            build(&spec(Boot::Disk), profiles.get("linux").unwrap(), Accel::Kvm, &paths(), &FdPlan::standard(1), None)
                .unwrap();
        let i = argv.iter().position(|a| a == "-cpu").unwrap();
        assert_eq!((argv[i + 1].as_str(), argv.contains(&"kvm".to_owned())), ("host", true));
    }
}
