//! Device addresses: where each device of a VM is plugged (PCI slot, virtio-mmio
//! transport, IDE/AHCI port, SCSI target). Guests name NICs and disks by these
//! (`enp0s7`), so every device carries an address recorded in the spec when it is
//! added, and adding or removing one device never moves another.
//!
//! A device without a recorded address (every device of a spec written before
//! addresses were recorded, or one just added) gets the address QEMU itself would
//! have picked in argv order around the recorded ones: the lowest free PCI slot
//! (QEMU's `pci_bus_devfn` auto-assignment), the highest free virtio-mmio transport
//! (a microvm's `-device` lands on the newest bus first), the lowest free ATA port or
//! SCSI target. So an old spec keeps exactly the layout its guest has always seen, and
//! a new VM gets the same layout QEMU would give it. Pure: no I/O.

use super::profile::{CdromBus, DiskBus, Display, Machine, Profile};
use crate::spec::{DevAddr, Media, VmSpec};

/// Virtio-mmio transports of QEMU's microvm machine (`virtio-mmio-bus.0` to `.23`).
pub const MICROVM_TRANSPORTS: u8 = 24;
/// Highest target of a virtio-scsi bus (QEMU's `VIRTIO_SCSI_MAX_TARGET`).
pub const MAX_SCSI_TARGET: u8 = 255;

/// The address space a device lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Space {
    Pci,
    Mmio,
    Ata,
    Scsi,
}

impl Space {
    fn of(a: DevAddr) -> Self {
        match a {
            DevAddr::Pci { .. } => Space::Pci,
            DevAddr::Mmio(_) => Space::Mmio,
            DevAddr::Ata(_) => Space::Ata,
            DevAddr::Scsi(_) => Space::Scsi,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Space::Pci => "a PCI slot (pci:SS.F)",
            Space::Mmio => "a virtio-mmio transport (mmio:N)",
            Space::Ata => "an IDE/AHCI port (ata:N)",
            Space::Scsi => "a SCSI target (scsi:N)",
        }
    }
}

/// A spec whose addresses do not fit its profile (a hand-edited spec, or a profile
/// that changed machine type under an existing VM).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AddrError {
    #[error("{device} is recorded at {addr}, but on machine {machine} it needs {want}")]
    WrongKind { device: String, addr: DevAddr, machine: &'static str, want: &'static str },
    #[error("{device} is recorded at {addr}, which machine {machine} does not have or uses itself")]
    Unusable { device: String, addr: DevAddr, machine: &'static str },
    #[error("{device} and {other} are both recorded at {addr}")]
    Clash { device: String, other: String, addr: DevAddr },
    #[error("no free {what} left on machine {machine} for {device}")]
    Full { device: String, what: &'static str, machine: &'static str },
    #[error("profile {profile:?} has no CD-ROM bus; use another os_variant for ISO media")]
    NoCdromBus { profile: String },
}

/// Every device's address, as the argv builder uses it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Layout {
    pub video: Option<DevAddr>,
    pub rng: Option<DevAddr>,
    pub balloon: Option<DevAddr>,
    pub serial: Option<DevAddr>,
    /// The virtio-scsi controller, when some disk or CD-ROM is on SCSI.
    pub scsi: Option<DevAddr>,
    /// Per entry of `spec.disks`.
    pub disks: Vec<DevAddr>,
    /// Per entry of `spec.nics`.
    pub nics: Vec<DevAddr>,
}

/// Which device a slot of the plan is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dev {
    Video,
    Rng,
    Balloon,
    Serial,
    Scsi,
    Disk(usize),
    Nic(usize),
}

impl Dev {
    fn label(self) -> String {
        match self {
            Dev::Video => "the display device".into(),
            Dev::Rng => "the RNG device".into(),
            Dev::Balloon => "the balloon device".into(),
            Dev::Serial => "the guest agent's virtio-serial controller".into(),
            Dev::Scsi => "the virtio-scsi controller".into(),
            Dev::Disk(i) => format!("disk {i}"),
            Dev::Nic(i) => format!("NIC {i}"),
        }
    }
}

/// The machine's address ranges.
struct Ranges {
    name: &'static str,
    /// Has a PCI root bus (else virtio-mmio transports).
    pci: bool,
    /// PCI slots the machine itself occupies (host bridge, chipset functions).
    pci_reserved: &'static [u8],
    ata_ports: u8,
}

fn machine(profile: &Profile) -> Ranges {
    match profile.machine {
        // 00.0 host bridge; 1f.0 ICH9 LPC, 1f.2 AHCI (ide.0 to ide.5), 1f.3 SMBus.
        Machine::Q35 => Ranges { name: "q35", pci: true, pci_reserved: &[0, 0x1f], ata_ports: 6 },
        // 00.0 host bridge; 01.0 PIIX3 ISA, 01.1 IDE (ide.0 and ide.1, two units each),
        // 01.3 PM.
        Machine::Pc => Ranges { name: "pc", pci: true, pci_reserved: &[0, 1], ata_ports: 4 },
        Machine::Microvm => Ranges { name: "microvm", pci: false, pci_reserved: &[], ata_ports: 0 },
    }
}

/// The devices of `spec` in argv order, each with its address space and recorded
/// address.
fn devices(spec: &VmSpec, profile: &Profile) -> Result<Vec<(Dev, Space, Option<DevAddr>)>, AddrError> {
    let bus = if profile.is_mmio() { Space::Mmio } else { Space::Pci };
    let rec = &spec.addresses;
    let mut out = Vec::new();
    if profile.display != Display::None {
        out.push((Dev::Video, bus, rec.video));
    }
    if profile.devices.rng {
        out.push((Dev::Rng, bus, rec.rng));
    }
    if profile.devices.balloon {
        out.push((Dev::Balloon, bus, rec.balloon));
    }
    if profile.devices.guest_agent {
        out.push((Dev::Serial, bus, rec.serial));
    }
    let mut scsi_added = false;
    for (i, d) in spec.disks.iter().enumerate() {
        let space = match d.media {
            Media::Disk => match profile.disk_bus {
                DiskBus::Virtio => bus,
                DiskBus::Scsi => Space::Scsi,
                DiskBus::Sata | DiskBus::Ide => Space::Ata,
            },
            Media::Cdrom => match profile.cdrom_bus {
                CdromBus::None => return Err(AddrError::NoCdromBus { profile: profile.name.clone() }),
                CdromBus::Scsi => Space::Scsi,
                CdromBus::Ide | CdromBus::Sata => Space::Ata,
            },
        };
        if space == Space::Scsi && !scsi_added {
            out.push((Dev::Scsi, bus, rec.scsi));
            scsi_added = true;
        }
        out.push((Dev::Disk(i), space, d.addr));
    }
    for (i, n) in spec.nics.iter().enumerate() {
        out.push((Dev::Nic(i), bus, n.addr));
    }
    Ok(out)
}

/// Whether `a` exists on the machine and is not the machine's own.
fn usable(m: &Ranges, a: DevAddr) -> bool {
    match a {
        DevAddr::Pci { slot, .. } => m.pci && !m.pci_reserved.contains(&slot),
        DevAddr::Mmio(n) => !m.pci && n < MICROVM_TRANSPORTS,
        DevAddr::Ata(n) => n < m.ata_ports,
        // Every u8 is a target of virtio-scsi (at most MAX_SCSI_TARGET).
        DevAddr::Scsi(_) => true,
    }
}

/// The address QEMU would pick next in `space`, given those `taken`.
fn next_free(m: &Ranges, space: Space, taken: &[DevAddr]) -> Option<DevAddr> {
    let free = |a: &DevAddr| usable(m, *a) && !taken.contains(a);
    match space {
        Space::Pci => (0..=crate::spec::MAX_PCI_SLOT).map(DevAddr::pci).find(free),
        Space::Mmio => (0..MICROVM_TRANSPORTS).rev().map(DevAddr::Mmio).find(free),
        Space::Ata => (0..m.ata_ports).map(DevAddr::Ata).find(free),
        Space::Scsi => (0..=MAX_SCSI_TARGET).map(DevAddr::Scsi).find(free),
    }
}

/// Every device's address: the recorded ones, checked, and for the others what QEMU
/// would pick in argv order around them.
///
/// # Errors
/// [`AddrError`] for a recorded address that does not fit the machine or is taken
/// twice, or a machine with no room left.
pub fn resolve(spec: &VmSpec, profile: &Profile) -> Result<Layout, AddrError> {
    let m = machine(profile);
    let devs = devices(spec, profile)?;
    let mut taken: Vec<(DevAddr, Dev)> = Vec::with_capacity(devs.len());
    for (dev, space, addr) in &devs {
        let Some(a) = *addr else { continue };
        if Space::of(a) != *space {
            return Err(AddrError::WrongKind { device: dev.label(), addr: a, machine: m.name, want: space.name() });
        }
        if !usable(&m, a) {
            return Err(AddrError::Unusable { device: dev.label(), addr: a, machine: m.name });
        }
        if let Some((_, other)) = taken.iter().find(|(t, _)| *t == a) {
            return Err(AddrError::Clash { device: other.label(), other: dev.label(), addr: a });
        }
        taken.push((a, *dev));
    }
    let mut layout = Layout {
        disks: vec![DevAddr::pci(0); spec.disks.len()],
        nics: vec![DevAddr::pci(0); spec.nics.len()],
        ..Layout::default()
    };
    for (dev, space, addr) in devs {
        let a = match addr {
            Some(a) => a,
            None => {
                let used: Vec<DevAddr> = taken.iter().map(|(a, _)| *a).collect();
                let a = next_free(&m, space, &used).ok_or(AddrError::Full {
                    device: dev.label(),
                    what: space.name(),
                    machine: m.name,
                })?;
                taken.push((a, dev));
                a
            }
        };
        match dev {
            Dev::Video => layout.video = Some(a),
            Dev::Rng => layout.rng = Some(a),
            Dev::Balloon => layout.balloon = Some(a),
            Dev::Serial => layout.serial = Some(a),
            Dev::Scsi => layout.scsi = Some(a),
            Dev::Disk(i) => layout.disks[i] = a,
            Dev::Nic(i) => layout.nics[i] = a,
        }
    }
    Ok(layout)
}

/// Records every device's address in the spec (see [`resolve`]); recorded ones stay.
/// Called when a VM is defined and before any device is added or removed, so what is
/// there keeps its place.
///
/// # Errors
/// As [`resolve`].
pub fn record(spec: &mut VmSpec, profile: &Profile) -> Result<(), AddrError> {
    let l = resolve(spec, profile)?;
    let rec = &mut spec.addresses;
    rec.video = l.video;
    rec.rng = l.rng;
    rec.balloon = l.balloon;
    rec.serial = l.serial;
    rec.scsi = l.scsi;
    for (d, a) in spec.disks.iter_mut().zip(l.disks) {
        d.addr = Some(a);
    }
    for (n, a) in spec.nics.iter_mut().zip(l.nics) {
        n.addr = Some(a);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qemu::profile::Profiles;
    use crate::spec::{Boot, DiskFormat, DiskSpec, NetworkMode, NicSpec, RestartPolicy, SPEC_VERSION};

    fn disk(media: Media) -> DiskSpec {
        DiskSpec {
            path: "/vm/a.qcow2".into(),
            format: DiskFormat::Qcow2,
            media,
            readonly: false,
            owned: true,
            ejected: false,
            addr: None,
        }
    }

    fn nic() -> NicSpec {
        NicSpec { mode: NetworkMode::user(), mac: "52:54:00:12:34:56".parse().unwrap(), model: None, addr: None }
    }

    /// A cloud-init VM as created before addresses were recorded: disk, seed, NIC.
    fn old_spec(os_variant: &str) -> VmSpec {
        VmSpec {
            version: SPEC_VERSION,
            name: crate::ids::VmName::new("web1").unwrap(),
            uuid: uuid::Uuid::nil(),
            created_at: 0,
            os_variant: os_variant.into(),
            memory_mib: 256,
            vcpus: 1,
            boot: Boot::Disk,
            disks: vec![disk(Media::Disk), disk(Media::Disk)],
            nics: vec![nic()],
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

    fn profile(name: &str) -> Profile {
        Profiles::load(None).unwrap().get(name).unwrap().clone()
    }

    fn pci(slot: u8) -> DevAddr {
        DevAddr::pci(slot)
    }

    #[test]
    fn old_q35_spec_keeps_the_slots_qemu_gave_it() {
        // Measured with QEMU 7.2 `info pci` on the argv without addr=: VGA 01, rng 02,
        // balloon 03, virtio-serial 04, then disk, seed, NIC.
        let l = resolve(&old_spec("linux"), &profile("linux")).unwrap();
        assert_eq!(
            (l.video, l.rng, l.balloon, l.serial, l.disks, l.nics),
            (Some(pci(1)), Some(pci(2)), Some(pci(3)), Some(pci(4)), vec![pci(5), pci(6)], vec![pci(7)])
        );
    }

    #[test]
    fn old_pc_spec_starts_after_piix() {
        // i440FX: cirrus at 02.0, virtio-serial 03, IDE disks on ports, e1000 at 04.
        let l = resolve(&old_spec("legacy"), &profile("legacy")).unwrap();
        assert_eq!(
            (l.video, l.serial, l.disks, l.nics),
            (Some(pci(2)), Some(pci(3)), vec![DevAddr::Ata(0), DevAddr::Ata(1)], vec![pci(4)])
        );
    }

    #[test]
    fn old_microvm_spec_fills_transports_from_the_top() {
        // QEMU 7.2 `info qtree`: the first -device lands on virtio-mmio-bus.23.
        let mut spec = old_spec("microvm");
        spec.boot = Boot::Kernel { kernel: "/k".into(), initrd: None, cmdline: None };
        let l = resolve(&spec, &profile("microvm")).unwrap();
        assert_eq!(
            (l.rng, l.serial, l.disks, l.nics),
            (
                Some(DevAddr::Mmio(23)),
                Some(DevAddr::Mmio(22)),
                vec![DevAddr::Mmio(21), DevAddr::Mmio(20)],
                vec![DevAddr::Mmio(19)]
            )
        );
    }

    #[test]
    fn removing_the_seed_leaves_the_nic_in_its_slot() {
        let mut spec = old_spec("linux");
        record(&mut spec, &profile("linux")).unwrap();
        spec.disks.pop();

        let l = resolve(&spec, &profile("linux")).unwrap();

        assert_eq!(l.nics, vec![pci(7)]);
    }

    #[test]
    fn an_added_disk_takes_a_free_slot_and_moves_nothing() {
        let mut spec = old_spec("linux");
        record(&mut spec, &profile("linux")).unwrap();
        spec.disks.remove(1);
        spec.disks.push(disk(Media::Disk));
        spec.disks.push(disk(Media::Disk));

        let l = resolve(&spec, &profile("linux")).unwrap();

        assert_eq!((l.disks, l.nics), (vec![pci(5), pci(6), pci(8)], vec![pci(7)]));
    }

    #[test]
    fn a_cdrom_added_to_q35_takes_the_first_free_ahci_port() {
        let mut spec = old_spec("linux");
        spec.disks.push(disk(Media::Cdrom));

        let l = resolve(&spec, &profile("linux")).unwrap();

        assert_eq!(l.disks[2], DevAddr::Ata(0));
    }

    #[test]
    fn recorded_addresses_survive_a_round_trip_through_json() {
        let mut spec = old_spec("linux");
        record(&mut spec, &profile("linux")).unwrap();

        let back: VmSpec = serde_json::from_str(&serde_json::to_string(&spec).unwrap()).unwrap();

        assert_eq!(back, spec);
    }

    #[test]
    fn a_slot_the_machine_uses_is_refused() {
        let mut spec = old_spec("linux");
        spec.nics[0].addr = Some(pci(0x1f));

        let e = resolve(&spec, &profile("linux")).unwrap_err();

        assert_eq!(e.to_string(), "NIC 0 is recorded at pci:1f.0, which machine q35 does not have or uses itself");
    }

    #[test]
    fn two_devices_at_one_slot_are_refused() {
        let mut spec = old_spec("linux");
        spec.disks[0].addr = Some(pci(9));
        spec.nics[0].addr = Some(pci(9));

        let e = resolve(&spec, &profile("linux")).unwrap_err();

        assert_eq!(e, AddrError::Clash { device: "disk 0".into(), other: "NIC 0".into(), addr: pci(9) });
    }

    #[test]
    fn a_pci_address_on_microvm_is_refused() {
        let mut spec = old_spec("microvm");
        spec.nics[0].addr = Some(pci(3));

        let e = resolve(&spec, &profile("microvm")).unwrap_err();

        assert!(matches!(e, AddrError::WrongKind { .. }), "{e}");
    }

    #[test]
    fn a_full_bus_is_an_error_not_a_clash() {
        let mut spec = old_spec("legacy");
        spec.disks = vec![disk(Media::Disk); 5];

        let e = resolve(&spec, &profile("legacy")).unwrap_err();

        assert!(matches!(e, AddrError::Full { .. }), "{e}");
    }

    #[test]
    fn address_text_round_trips() {
        let all =
            [pci(5), DevAddr::Pci { slot: 0x1e, function: 3 }, DevAddr::Mmio(23), DevAddr::Ata(1), DevAddr::Scsi(7)];
        let back: Vec<DevAddr> = all.iter().map(|a| a.to_string().parse().unwrap()).collect();
        assert_eq!(back, all);
    }

    #[test]
    fn bad_address_text_is_refused() {
        let bad = ["pci:20.0", "pci:05.8", "pci:", "pci:005.0", "usb:1", "mmio:x", "ata:-1", "5"];
        let parsed: Vec<bool> = bad.iter().map(|s| s.parse::<DevAddr>().is_ok()).collect();
        assert_eq!(parsed, vec![false; bad.len()]);
    }
}
