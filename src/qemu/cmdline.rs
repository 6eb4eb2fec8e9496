//! Turns (profile, spec, accelerator, paths, fd numbers, checked host inputs) into
//! QEMU's argv. Pure and golden-tested: nothing here touches the system; what the
//! host had to say (each disk's checked backing chain, the user to drop to) comes in
//! as [`HostInputs`] (see `qemu::prepare`). Every disk is given to QEMU as its
//! whole chain, each node's format named and the bottom qcow2 ending in
//! `"backing": null`, so QEMU never probes a format nor opens a backing file by a
//! name from an image header. Paths go into `-blockdev` as JSON and into key=value
//! options with commas doubled, so no file name can inject an option.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::addresses::Layout;
use crate::layout::VmPaths;
use crate::qemu::accel::Accel;
use crate::qemu::profile::{Display, Machine, Profile};
use crate::spec::{Boot, DevAddr, Media, NetworkMode, VmSpec};
use crate::storage::ImageFormat;

/// QEMU's seccomp filter: every option QEMU 7.2 offers, at its strictest. `obsolete`
/// (old syscalls), `elevateprivileges` (set*id), `spawn` (fork/exec: nothing of ours
/// makes QEMU run helpers; taps come as descriptors), `resourcecontrol` (affinity,
/// scheduler).
pub const SANDBOX: &str = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny";
/// The filter when QEMU drops to `qemu.user`: QEMU changes user *after* installing the
/// filter, so `elevateprivileges=deny` (or `=children`) kills it with SIGSYS at
/// start-up (measured with QEMU 7.2); everything else stays denied.
pub const SANDBOX_RUN_AS: &str = "on,obsolete=deny,spawn=deny,resourcecontrol=deny";

/// One file of a disk's chain, as checked on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainNode {
    /// Real path of the file.
    pub path: PathBuf,
    /// Its format: the disk's recorded one for the top, the naming image's declared
    /// backing format below.
    pub format: ImageFormat,
    /// A block device (`storage.allow_block_devices`): QEMU's `host_device` protocol
    /// driver, since its `file` driver takes regular files only.
    pub block_device: bool,
}

/// How the installed QEMU is told to switch user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunAsSyntax {
    /// `-runas USER` (QEMU before 9.1).
    Runas,
    /// `-run-with user=USER` (QEMU 9.1 and later, which deprecates `-runas`).
    RunWith,
}

/// The unprivileged user QEMU drops to once it has opened its files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    /// User name (checked by the config: no `,` or `=`).
    pub user: String,
    pub syntax: RunAsSyntax,
}

/// What the host said, checked just before the argv is built.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostInputs {
    /// Per entry of `spec.disks`: its whole chain, top first (empty for an ejected
    /// drive).
    pub chains: Vec<Vec<ChainNode>>,
    /// The user QEMU drops to, if any.
    pub run_as: Option<RunAs>,
    /// Where the VNC server listens, when the run has one.
    pub vnc: Option<VncListen>,
}

impl HostInputs {
    /// Each disk as a chain of itself alone, read as its recorded format (tests, and
    /// specs whose disks have no backing files).
    #[must_use]
    pub fn single_nodes(spec: &VmSpec) -> Self {
        let chains = spec
            .disks
            .iter()
            .map(|d| {
                let format = match d.format {
                    crate::spec::DiskFormat::Qcow2 => ImageFormat::Qcow2,
                    crate::spec::DiskFormat::Raw => ImageFormat::Raw,
                };
                if d.ejected { vec![] } else { vec![ChainNode { path: d.path.clone(), format, block_device: false }] }
            })
            .collect();
        Self { chains, run_as: None, vnc: None }
    }
}

/// Pre-opened descriptors handed to QEMU at these numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FdPlan {
    /// Listening socket of the command monitor.
    pub qmp: i32,
    /// Listening socket of the event monitor.
    pub events: i32,
    /// One tap fd per bridged NIC, in NIC order.
    pub taps: Vec<i32>,
    /// A saved state to resume from (`-incoming fd:N`) instead of booting.
    pub incoming: Option<i32>,
}

impl FdPlan {
    /// The standard layout: monitors at 3 and 4, taps from 5.
    #[must_use]
    pub fn standard(taps: usize) -> Self {
        let taps = (0..taps).map(|i| 5 + i32::try_from(i).unwrap_or(0)).collect();
        Self { qmp: 3, events: 4, taps, incoming: None }
    }

    /// This plan, with a saved state to resume from at the next free number.
    #[must_use]
    pub fn with_incoming(mut self) -> Self {
        let next = self.taps.last().map_or(self.events, |t| *t) + 1;
        self.incoming = Some(next);
        self
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
    #[error("NIC {index} is bridged but no tap descriptor was planned for it")]
    MissingTap { index: usize },
    #[error("disk {index} has no checked backing chain")]
    MissingChain { index: usize },
    #[error("device addresses of profile {profile:?}")]
    Addresses {
        profile: String,
        #[source]
        source: super::addresses::AddrError,
    },
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
/// [`CmdlineError`] when the spec and the profile do not fit together, or a disk has
/// no chain in `host`.
pub fn build(
    spec: &VmSpec,
    profile: &Profile,
    accel: Accel,
    paths: &VmPaths,
    fds: &FdPlan,
    host: &HostInputs,
) -> Result<Vec<String>, CmdlineError> {
    let mmio = profile.is_mmio();
    let dev = |pci: &str, mmio_name: &str| if mmio { mmio_name.to_owned() } else { pci.to_owned() };
    let layout = match super::addresses::resolve(spec, profile) {
        Ok(l) => l,
        Err(super::addresses::AddrError::NoCdromBus { profile }) => return Err(CmdlineError::NoCdromBus { profile }),
        Err(source) => return Err(CmdlineError::Addresses { profile: profile.name.clone(), source }),
    };
    let at = |a: Option<DevAddr>| a.map(|a| place(a, profile.machine)).unwrap_or_default();
    let mut a = Args(Vec::with_capacity(64));
    a.push("-name", format!("{},debug-threads=on", spec.name));
    a.push("-uuid", spec.uuid.to_string());
    a.0.extend(["-nodefaults", "-no-user-config"].map(String::from));
    match &host.run_as {
        None => a.push("-sandbox", SANDBOX),
        Some(r) => {
            a.push("-sandbox", SANDBOX_RUN_AS);
            match r.syntax {
                RunAsSyntax::Runas => a.push("-runas", r.user.clone()),
                RunAsSyntax::RunWith => a.push("-run-with", format!("user={}", r.user)),
            }
        }
    }
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
    if let Some(v) = &host.vnc {
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

    let video = at(layout.video);
    match profile.display {
        Display::None => {}
        Display::Std => a.push("-device", format!("VGA,id=video0{video}")),
        Display::Virtio => a.push("-device", format!("virtio-vga,id=video0{video}")),
        Display::Cirrus => a.push("-device", format!("cirrus-vga,id=video0{video}")),
    }
    if profile.machine != Machine::Microvm {
        // Lets a panicking guest report it (GUEST_PANICKED), so crashes get a reason.
        a.push("-device", "pvpanic");
        // A generation ID from the VM's UUID: a fork's copy (new UUID) resumes with a new
        // one, which tells its kernel to reseed its random number generator.
        a.push("-device", format!("vmgenid,id=vmgenid0,guid={}", spec.uuid));
    }
    if profile.devices.rng {
        a.push("-object", "rng-random,id=rng0,filename=/dev/urandom");
        a.push(
            "-device",
            format!("{},rng=rng0,id=rng0-dev{}", dev("virtio-rng-pci", "virtio-rng-device"), at(layout.rng)),
        );
    }
    if profile.devices.balloon {
        a.push(
            "-device",
            format!("{},id=balloon0{}", dev("virtio-balloon-pci", "virtio-balloon-device"), at(layout.balloon)),
        );
    }
    if profile.devices.guest_agent {
        a.push(
            "-device",
            format!("{},id=vser0{}", dev("virtio-serial-pci", "virtio-serial-device"), at(layout.serial)),
        );
        a.push("-chardev", format!("socket,id=qga0,path={},server=on,wait=off", esc(&paths.qga_sock())));
        a.push("-device", "virtserialport,bus=vser0.0,chardev=qga0,name=org.qemu.guest_agent.0");
    }

    super::boot_order::firmware(&mut a.0, spec);
    disks(&mut a, spec, profile, &host.chains, &layout)?;
    nics(&mut a, spec, profile, fds, &layout)?;

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
    if let Some(fd) = fds.incoming {
        a.push("-incoming", format!("fd:{fd}"));
    }
    Ok(a.0)
}

/// `-blockdev` JSON of a whole chain: node `node` on top, backing nodes
/// `<node>-b<k>` below, each format node over a named `file` node; a qcow2 at the
/// bottom gets `"backing": null` (raw nodes have no backing option at all).
fn blockdev(node: &str, chain: &[ChainNode], read_only_top: bool) -> Value {
    let mut below = Value::Null;
    for (k, n) in chain.iter().enumerate().rev() {
        let name = if k == 0 { node.to_owned() } else { format!("{node}-b{k}") };
        let ro = read_only_top || k > 0;
        let protocol = if n.block_device { "host_device" } else { "file" };
        let mut v = json!({
            "driver": n.format.as_str(),
            "node-name": name,
            "read-only": ro,
            "file": { "driver": protocol, "node-name": format!("{name}-file"), "filename": n.path.to_string_lossy(), "read-only": ro },
        });
        if n.format == ImageFormat::Qcow2 {
            v["backing"] = std::mem::take(&mut below);
        }
        below = v;
    }
    below
}

/// `,addr=…` / `,bus=…` for a device at `a` (a leading comma, so it appends).
fn place(a: DevAddr, machine: Machine) -> String {
    match a {
        DevAddr::Pci { slot, function } => format!(",addr={slot:02x}.{function}"),
        DevAddr::Mmio(n) => format!(",bus=virtio-mmio-bus.{n}"),
        DevAddr::Ata(n) if machine == Machine::Q35 => format!(",bus=ide.{n}"),
        DevAddr::Ata(n) => format!(",bus=ide.{},unit={}", n / 2, n % 2),
        DevAddr::Scsi(n) => format!(",bus=scsi0.0,scsi-id={n},lun=0"),
    }
}

fn disks(
    a: &mut Args,
    spec: &VmSpec,
    profile: &Profile,
    chains: &[Vec<ChainNode>],
    layout: &Layout,
) -> Result<(), CmdlineError> {
    let mmio = profile.is_mmio();
    let boot_from_disk = matches!(spec.boot, Boot::Disk);
    let mut scsi_added = false;
    let boot_index = super::boot_order::boot_indexes(spec);
    for (i, d) in spec.disks.iter().enumerate() {
        let node = format!("disk{i}");
        let ro = d.readonly || d.media == Media::Cdrom;
        if !d.ejected {
            let chain = chains.get(i).filter(|c| !c.is_empty()).ok_or(CmdlineError::MissingChain { index: i })?;
            a.push("-blockdev", blockdev(&node, chain, ro).to_string());
        }
        let addr = layout.disks[i];
        let place = place(addr, profile.machine);
        let drive = if d.ejected { String::new() } else { format!(",drive={node}") };
        let mut device = match (addr, d.media) {
            (DevAddr::Pci { .. } | DevAddr::Mmio(_), _) => {
                let model = if mmio { "virtio-blk-device" } else { "virtio-blk-pci" };
                format!("{model}{drive},id={node}-dev{place}")
            }
            (DevAddr::Scsi(_), media) => {
                if !scsi_added {
                    let ctl = layout.scsi.map(|c| self::place(c, profile.machine)).unwrap_or_default();
                    a.push("-device", format!("virtio-scsi-pci,id=scsi0{ctl}"));
                    scsi_added = true;
                }
                let kind = if media == Media::Cdrom { "scsi-cd" } else { "scsi-hd" };
                format!("{kind}{drive},id={node}-dev{place}")
            }
            (DevAddr::Ata(_), media) => {
                let kind = if media == Media::Cdrom { "ide-cd" } else { "ide-hd" };
                format!("{kind}{drive},id={node}-dev{place}")
            }
        };
        if let Some(n) = boot_index[i].filter(|_| boot_from_disk && !mmio) {
            let _ = write!(device, ",bootindex={n}");
        }
        a.push("-device", device);
    }
    Ok(())
}

fn nics(a: &mut Args, spec: &VmSpec, profile: &Profile, fds: &FdPlan, layout: &Layout) -> Result<(), CmdlineError> {
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
        a.push(
            "-device",
            format!("{model},netdev={id},mac={},id={id}-dev{}", n.mac, place(layout.nics[i], profile.machine)),
        );
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
                addr: None,
            }],
            nics: vec![
                NicSpec {
                    mode: NetworkMode::user(),
                    mac: "52:54:00:12:34:56".parse().unwrap(),
                    model: None,
                    addr: None,
                },
                NicSpec {
                    mode: NetworkMode::Bridge { bridge: "brforvms".into() },
                    mac: "52:54:00:12:34:57".parse().unwrap(),
                    model: None,
                    addr: None,
                },
            ],
            restart_policy: RestartPolicy::Never,
            template: false,
            made_template: false,
            ignition: None,
            uefi: None,
            addresses: crate::spec::StandardAddrs::default(),
            pool: None,
            pool_of: None,
            lease: crate::spec::Lease::default(),
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
        let host = HostInputs { vnc: (p.display != Display::None).then_some(VNC), ..HostInputs::single_nodes(spec) };
        build(spec, p, Accel::Tcg, &paths(), &FdPlan::standard(1), &host).unwrap()
    }

    #[test]
    fn a_saved_state_is_read_from_the_descriptor_after_the_taps() {
        let profiles = Profiles::load(None).unwrap();
        let s = spec(Boot::Disk);
        let host = HostInputs::single_nodes(&s);
        let fds = FdPlan::standard(1).with_incoming();

        let argv = build(&s, profiles.get("linux").unwrap(), Accel::Tcg, &paths(), &fds, &host).unwrap();

        assert_eq!(fds.incoming, Some(6), "monitors at 3 and 4, the tap at 5");
        assert_eq!(argv[argv.len() - 2..], ["-incoming", "fd:6"]);
        let plain =
            build(&s, profiles.get("linux").unwrap(), Accel::Tcg, &paths(), &FdPlan::standard(1), &host).unwrap();
        assert!(!plain.contains(&"-incoming".to_owned()));
        assert_eq!(FdPlan::standard(0).with_incoming().incoming, Some(5));
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

    fn build_with(spec: &VmSpec, profile: &str, host: &HostInputs) -> Result<Vec<String>, CmdlineError> {
        let profiles = Profiles::load(None).unwrap();
        build(spec, profiles.get(profile).unwrap(), Accel::Tcg, &paths(), &FdPlan::standard(1), host)
    }

    fn node(path: &str, format: ImageFormat) -> ChainNode {
        ChainNode { path: path.into(), format, block_device: false }
    }

    fn blockdev_of(argv: &[String], node: &str) -> Value {
        let needle = format!("\"node-name\":\"{node}\"");
        let i = argv.iter().position(|a| a.starts_with('{') && a.contains(&needle)).unwrap();
        serde_json::from_str(&argv[i]).unwrap()
    }

    #[test]
    fn whole_chain_is_given_with_every_format_named() {
        let spec = spec(Boot::Disk);
        let host = HostInputs {
            chains: vec![vec![
                node("/vm/web1,x.qcow2", ImageFormat::Qcow2),
                node("/vm/mid.qcow2", ImageFormat::Qcow2),
                node("/vm/base.raw", ImageFormat::Raw),
            ]],
            run_as: None,
            vnc: None,
        };

        let argv = build_with(&spec, "generic", &host).unwrap();

        let want = json!({
            "driver": "qcow2", "node-name": "disk0", "read-only": false,
            "file": { "driver": "file", "node-name": "disk0-file", "filename": "/vm/web1,x.qcow2", "read-only": false },
            "backing": {
                "driver": "qcow2", "node-name": "disk0-b1", "read-only": true,
                "file": { "driver": "file", "node-name": "disk0-b1-file", "filename": "/vm/mid.qcow2", "read-only": true },
                "backing": {
                    "driver": "raw", "node-name": "disk0-b2", "read-only": true,
                    "file": { "driver": "file", "node-name": "disk0-b2-file", "filename": "/vm/base.raw", "read-only": true },
                },
            },
        });
        assert_eq!(blockdev_of(&argv, "disk0"), want);
    }

    #[test]
    fn block_device_is_opened_with_the_host_device_driver() {
        let spec = spec(Boot::Disk);
        let host = HostInputs {
            chains: vec![vec![ChainNode {
                path: "/dev/vg0/web1".into(),
                format: ImageFormat::Raw,
                block_device: true,
            }]],
            run_as: None,
            vnc: None,
        };

        let argv = build_with(&spec, "generic", &host).unwrap();

        assert_eq!(blockdev_of(&argv, "disk0")["file"]["driver"], "host_device");
    }

    #[test]
    fn qcow2_at_the_bottom_has_null_backing() {
        let argv = argv_for("generic", Boot::Disk);

        assert_eq!(blockdev_of(&argv, "disk0")["backing"], Value::Null);
        assert!(blockdev_of(&argv, "disk0").as_object().unwrap().contains_key("backing"));
    }

    #[test]
    fn disk_without_a_chain_is_refused() {
        let e = build_with(&spec(Boot::Disk), "generic", &HostInputs::default());

        assert_eq!(e, Err(CmdlineError::MissingChain { index: 0 }));
    }

    #[test]
    fn run_as_on_qemu_7_uses_runas_and_keeps_set_id_calls() {
        let spec = spec(Boot::Disk);
        let host = HostInputs {
            run_as: Some(RunAs { user: "kvm-mcp".into(), syntax: RunAsSyntax::Runas }),
            ..HostInputs::single_nodes(&spec)
        };

        let argv = build_with(&spec, "generic", &host).unwrap();

        let i = argv.iter().position(|a| a == "-sandbox").unwrap();
        assert_eq!(argv[i..i + 4], ["-sandbox", SANDBOX_RUN_AS, "-runas", "kvm-mcp"]);
    }

    #[test]
    fn run_as_on_qemu_9_1_uses_run_with() {
        let spec = spec(Boot::Disk);
        let host = HostInputs {
            run_as: Some(RunAs { user: "kvm-mcp".into(), syntax: RunAsSyntax::RunWith }),
            ..HostInputs::single_nodes(&spec)
        };

        let argv = build_with(&spec, "generic", &host).unwrap();

        assert!(argv.windows(2).any(|w| w == ["-run-with", "user=kvm-mcp"]), "{argv:?}");
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
        let spec = spec(Boot::Disk);
        let e = build_with(&spec, "microvm", &HostInputs::single_nodes(&spec));
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
        let spec = spec(Boot::Disk);
        let host = HostInputs::single_nodes(&spec);
        let e = build(&spec, profiles.get("generic").unwrap(), Accel::Tcg, &paths(), &FdPlan::standard(0), &host);
        assert_eq!(e, Err(CmdlineError::MissingTap { index: 1 }));
    }

    #[test]
    fn user_port_forwards_become_hostfwd_rules() {
        let mut spec = spec(Boot::Disk);
        spec.nics[0].mode = NetworkMode::User {
            port_forwards: vec![crate::ids::PortForward::tcp(2222, 22), "0.0.0.0:5353:53/udp".parse().unwrap()],
        };
        let argv = build_with(&spec, "generic", &HostInputs::single_nodes(&spec)).unwrap();
        assert!(
            argv.contains(&"user,id=net0,hostfwd=tcp:127.0.0.1:2222-:22,hostfwd=udp:0.0.0.0:5353-:53".to_owned()),
            "{argv:?}"
        );
    }

    #[test]
    fn kvm_uses_host_cpu() {
        let profiles = Profiles::load(None).unwrap();
        let spec = spec(Boot::Disk);
        let host = HostInputs::single_nodes(&spec);
        let argv =
            build(&spec, profiles.get("linux").unwrap(), Accel::Kvm, &paths(), &FdPlan::standard(1), &host).unwrap();
        let i = argv.iter().position(|a| a == "-cpu").unwrap();
        assert_eq!((argv[i + 1].as_str(), argv.contains(&"kvm".to_owned())), ("host", true));
    }
}
