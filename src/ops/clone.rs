//! Operations on a stopped VM's disks: `clone_vm` (linked: an overlay on the source's
//! disk, the source then a template that refuses to start while clones exist; or a
//! full copy), `resize_disk` (grow only, live through QMP or offline) and
//! `reset_vm_disk` (a fresh overlay on the same base: the fastest clean slate).
//!
//! A clone is a new machine: new UUID and MACs, every device at the source's address
//! (guests name NICs by slot), a fresh cloud-init seed with a new instance-id and host
//! name (see `provision::reseed`), free host ports for its forwards, and a result that
//! says what was reset and what the clone still shares with its source.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::context::Vm;
use super::disks::{check_size_gib, image_format};
use super::views::VmInfo;
use super::{Ops, OpsError};
use crate::ids::{MacAddr, PortForward, VmName};
use crate::layout::VmPaths;
use crate::provision::{cloudinit, reseed};
use crate::spec::{DiskFormat, DiskSpec, Media, NetworkMode, VmSpec};
use crate::state::now_ms;
use crate::storage::{self, CreateOptions};

/// What `clone_vm` accepts (the MCP tool's arguments too).
#[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CloneRequest {
    /// The stopped VM to clone.
    pub source: String,
    /// 1-13 letters, digits, '-', '_' or '.'; no leading '.' or '-'.
    pub name: String,
    /// Copy the disks (slower); a linked clone keeps the source from starting while it exists.
    #[serde(default)]
    pub full: bool,
    /// Start it right away.
    #[serde(default)]
    pub start: bool,
    /// Default: the clone's name; needs a cloud-init source.
    #[serde(default)]
    pub hostname: Option<String>,
    /// Forwards of the first "user" NIC; default: the source's, on free host ports.
    #[serde(default)]
    pub port_forwards: Option<Vec<PortForward>>,
    /// Delete the clone after this many seconds.
    #[serde(default)]
    #[schemars(range(min = 1, max = 2_592_000))]
    pub ttl_s: Option<u64>,
    /// Not a request field: the process the clone lives for (see `CreateRequest::owner`).
    #[serde(skip)]
    #[schemars(skip)]
    pub owner: Option<crate::procid::ProcIdentity>,
}

/// How a clone was made a new machine.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct CloneIdentity {
    /// The cloud-init instance-id of the clone's new seed; none when the source has no
    /// seed.
    pub instance_id: Option<String>,
    /// The host name the seed gives the guest.
    pub hostname: Option<String>,
    /// What was made new, and how.
    pub reset: Vec<String>,
    /// What the clone still shares with its source (kvm-mcp could not reset it).
    pub unchanged: Vec<String>,
}

/// What `clone_vm` returns.
#[derive(Debug, Clone, Serialize)]
pub struct CloneReport {
    pub vm: VmInfo,
    pub identity: CloneIdentity,
}

/// Largest seed image read from a source (kvm-mcp writes them at about 1 MiB).
const MAX_SEED_IMAGE_BYTES: u64 = 16 << 20;
/// Largest file read from a source's seed.
const MAX_SEED_FILE_BYTES: u64 = 1 << 20;

impl Ops {
    /// Refuses to start a template whose linked clones still exist; a template
    /// without clones becomes an ordinary VM again, unless `create_template` made it
    /// (it may then start, to update its disk, and stays a template). Runs off the async runtime under
    /// a deadline.
    pub(crate) async fn check_startable(&self, vm: &Vm) -> Result<(), OpsError> {
        if let Some(pool) = vm.spec.pool {
            let name = vm.spec.name.as_str();
            return Err(OpsError::InUse {
                what: format!("the disk of template {name:?}"),
                users: vec![format!("its warm pool of {}", pool.size)],
                hint: format!(
                    "starting it would change the pool's base image; remove the pool first (kvm-mcp vm pool {name} 0)"
                ),
            });
        }
        if !vm.spec.template {
            return Ok(());
        }
        let vm = vm.clone();
        self.file_work("name", "checking the template's clones", move |ops| ops.check_startable_blocking(&vm)).await
    }

    fn check_startable_blocking(&self, vm: &Vm) -> Result<(), OpsError> {
        let name = vm.spec.name.to_string();
        let mut clones: Vec<String> = vm
            .spec
            .disks
            .iter()
            .filter(|d| d.media == Media::Disk)
            .flat_map(|d| self.users_of(&d.path, &name))
            .collect();
        clones.sort();
        clones.dedup();
        if clones.is_empty() {
            if vm.spec.made_template {
                return Ok(());
            }
            let mut vm = vm.clone();
            vm.spec.template = false;
            return Self::save_spec(&vm);
        }
        Err(OpsError::InUse {
            what: format!("VM {name:?} is the template of linked clones: its disk"),
            users: clones,
            hint: "starting it would change their base image; delete the clones first, or run a full clone of it"
                .into(),
        })
    }

    /// Defines a new VM with the disks of a stopped one: overlays on them (linked, the
    /// default) or copies (`full`). CD-ROM media are shared; the cloud-init seed is
    /// renewed (new instance-id and host name) and the Ignition config is not carried
    /// over (the guest already ran it); UEFI variables are copied. MAC addresses and the
    /// UUID are new; devices keep the source's addresses; forwards get free host ports
    /// unless given.
    ///
    /// # Errors
    /// Source running ([`OpsError::MustBeStopped`]), name taken, bad host name or
    /// forwards, storage failures (nothing is left behind).
    pub async fn clone_vm(&self, req: CloneRequest) -> Result<CloneReport, OpsError> {
        self.clone_vm_with(req, |_| ()).await
    }

    /// [`Ops::clone_vm`], with `adjust` applied to the clone's definition before it is
    /// written (a pool member's mark).
    pub(crate) async fn clone_vm_with(
        &self,
        req: CloneRequest,
        adjust: impl FnOnce(&mut VmSpec),
    ) -> Result<CloneReport, OpsError> {
        let mut src = self.load(&req.source)?;
        let name = VmName::new(&req.name)?;
        let src_lock = self.lock(&req.source, &src.paths).await?;
        Self::stopped(&src, "cloning")?;
        let identity = self.define_clone(&src, &req, adjust).await?;
        if !req.full && !src.spec.template {
            src.spec.template = true;
            Self::save_spec(&src)?;
        }
        tracing::info!(vm = %name, source = %req.source, full = req.full, "cloned");
        drop(src_lock);
        let vm = if req.start { self.start(name.as_str()).await? } else { self.info(name.as_str())? };
        Ok(CloneReport { vm, identity })
    }

    /// Writes the definition and files of `req`'s clone of `src` (whose lock the caller
    /// holds), leaving nothing behind when it fails.
    pub(super) async fn define_clone(
        &self,
        src: &Vm,
        req: &CloneRequest,
        adjust: impl FnOnce(&mut VmSpec),
    ) -> Result<CloneIdentity, OpsError> {
        let name = VmName::new(&req.name)?;
        let hostname = req.hostname.clone().unwrap_or_else(|| cloudinit::default_hostname(name.as_str()));
        crate::provision::check_hostname("hostname", &hostname)?;
        if let Some(f) = &req.port_forwards {
            self.check_new_forwards("port_forwards", f)?;
        }
        let lease = super::create::lease(req.ttl_s, req.owner.clone())?;
        let paths = self.paths(&name);
        let lock = self.lock(name.as_str(), &paths).await?;
        self.make_vm_dir(&name, &paths)?;
        let mut written: Vec<PathBuf> = Vec::new();
        let res =
            self.clone_files(src, &name, &paths, req, &hostname, &mut written).and_then(|(mut spec, identity)| {
                spec.lease = lease;
                adjust(&mut spec);
                Self::commit_definition(&paths, &spec)?;
                Ok(identity)
            });
        match res {
            // `start` takes the clone's lock itself.
            Ok(identity) => {
                drop(lock);
                Ok(identity)
            }
            Err(e) => {
                super::disks::remove_files(written);
                let _ = std::fs::remove_dir_all(&paths.state);
                Err(e)
            }
        }
    }

    fn clone_files(
        &self,
        src: &Vm,
        name: &VmName,
        paths: &VmPaths,
        req: &CloneRequest,
        hostname: &str,
        written: &mut Vec<PathBuf>,
    ) -> Result<(VmSpec, CloneIdentity), OpsError> {
        let full = req.full;
        // Every device of the source at the address its guest knows, recorded, so the
        // clone's guest finds its NICs and disks where they were.
        let profile = self.profiles.get(&src.spec.os_variant)?;
        let mut base = src.spec.clone();
        crate::qemu::addresses::record(&mut base, profile).map_err(OpsError::addresses(&req.source))?;
        let uuid = uuid::Uuid::new_v4();
        let mut nics = base.nics.clone();
        let mut taken: std::collections::HashSet<MacAddr> =
            self.defined_specs().iter().flat_map(|s| s.nics.iter().map(|n| n.mac)).collect();
        let mut macs = Vec::with_capacity(nics.len());
        for (i, nic) in nics.iter_mut().enumerate() {
            let old = nic.mac;
            nic.mac = MacAddr::pick_unique(&uuid, u8::try_from(i).unwrap_or(u8::MAX), &taken)
                .map_err(|e| OpsError::Taken { what: "every candidate MAC".into(), by: e.to_string() })?;
            taken.insert(nic.mac);
            macs.push((old.to_string(), nic.mac.to_string()));
        }
        self.clone_forwards(&mut nics, req.port_forwards.as_deref())?;
        let mut identity = CloneIdentity {
            reset: vec![
                format!("VM UUID (SMBIOS system UUID): {uuid}"),
                format!("MAC addresses: {}", nics.iter().map(|n| n.mac.to_string()).collect::<Vec<_>>().join(", ")),
            ],
            ..CloneIdentity::default()
        };
        let mut disks = Vec::new();
        let mut n = 0;
        let mut planned = Vec::new();
        for d in &base.disks {
            if d.media == Media::Cdrom {
                disks.push(DiskSpec { owned: false, ..d.clone() });
                continue;
            }
            if d.path.starts_with(&src.paths.state) {
                // The source's seed: the clone gets a new one at the same address.
                let seed = Self::renew_seed(src, d, &uuid.to_string(), hostname, &macs, &mut identity)?;
                let p = paths.cidata();
                crate::fsutil::write_atomic(&p, &seed).map_err(OpsError::io("cannot write", &p))?;
                disks.push(DiskSpec { path: p, owned: true, ..d.clone() });
                continue;
            }
            // The source's chain must pass the host path rule before anything is
            // copied from it or built on it.
            let chain = self.chain_of(d)?;
            let path = self.new_disk_path(name, n)?;
            n += 1;
            planned.push(path.clone());
            crate::store::begin_create(paths, &planned).map_err(OpsError::io("cannot write", paths.creating()))?;
            let res = if full {
                storage::copy_image(&d.path, &path)
            } else {
                storage::create_overlay(&path, &chain[0].path, chain[0].format, None)
            };
            res.map_err(OpsError::storage("disk"))?;
            written.push(path.clone());
            let format = if full { d.format } else { DiskFormat::Qcow2 };
            disks.push(DiskSpec { path, format, owned: true, ..d.clone() });
        }
        if identity.instance_id.is_none() {
            if req.hostname.is_some() {
                return Err(OpsError::invalid(
                    "hostname",
                    format!(
                        "VM {:?} has no cloud-init seed, so kvm-mcp cannot set the clone's host name; clone without hostname and set it in the guest",
                        req.source
                    ),
                ));
            }
            identity.unchanged.extend(
                [
                    "host name, /etc/machine-id and SSH host keys: the source has no cloud-init seed, so nothing tells the guest it is a new machine",
                    "cloud-init instance-id, if the image runs cloud-init",
                    "network configuration written for the source's MAC addresses (a guest that matches its NIC by MAC leaves it unconfigured)",
                ]
                .map(String::from),
            );
        }
        identity.unchanged.push(
            "disk contents: users, passwords, authorized SSH keys, installed software and data are the source's".into(),
        );
        let uefi = match &src.spec.uefi {
            Some(u) => {
                let vars = paths.uefi_vars();
                std::fs::copy(&u.vars, &vars).map_err(OpsError::io("cannot copy UEFI variables to", &vars))?;
                identity.unchanged.push("UEFI variables (boot entries) are a copy of the source's".into());
                Some(crate::spec::UefiSpec { vars, ..u.clone() })
            }
            None => None,
        };
        let spec = VmSpec {
            name: name.clone(),
            uuid,
            created_at: now_ms() / 1000,
            disks,
            nics,
            template: false,
            made_template: false,
            ignition: None,
            uefi,
            pool: None,
            pool_of: None,
            lease: crate::spec::Lease::default(),
            ..base
        };
        Ok((spec, identity))
    }

    /// The forwards of the clone's user-mode NICs: `given` on the first, free host
    /// ports for the source's everywhere else.
    fn clone_forwards(&self, nics: &mut [crate::spec::NicSpec], given: Option<&[PortForward]>) -> Result<(), OpsError> {
        let mut planned: Vec<PortForward> = given.unwrap_or_default().to_vec();
        let mut first = true;
        for nic in nics.iter_mut() {
            let NetworkMode::User { port_forwards } = &mut nic.mode else { continue };
            *port_forwards = match (first, given) {
                (true, Some(g)) => g.to_vec(),
                _ => self.free_forwards(port_forwards, &mut planned)?,
            };
            first = false;
        }
        if first && given.is_some_and(|g| !g.is_empty()) {
            return Err(OpsError::invalid("port_forwards", "the source has no user-mode NIC to forward ports to"));
        }
        Ok(())
    }

    /// The clone's seed image from the source's seed `d`, and what it changes.
    fn renew_seed(
        src: &Vm,
        d: &DiskSpec,
        instance_id: &str,
        hostname: &str,
        macs: &[(String, String)],
        identity: &mut CloneIdentity,
    ) -> Result<Vec<u8>, OpsError> {
        let files = storage::read_fat_files(
            &d.path,
            &["user-data", "network-config"],
            MAX_SEED_IMAGE_BYTES,
            MAX_SEED_FILE_BYTES,
        )
        .map_err(OpsError::io("cannot read the seed of the source", &d.path))?;
        let text = |b: &Option<Vec<u8>>| b.as_ref().map(|b| String::from_utf8_lossy(b).into_owned());
        let user_data = text(&files[0]).unwrap_or_else(|| "#cloud-config\n".into());
        let renewed = reseed::renew(&user_data, text(&files[1]).as_deref(), instance_id, hostname, macs)
            .map_err(|e| OpsError::invalid("source", format!("VM {:?}: {e}", src.spec.name.as_str())))?;
        let image = storage::fat_image(cloudinit::SEED_LABEL, &renewed.seed.files())
            .map_err(OpsError::io("cannot build the seed of", &d.path))?;
        identity.instance_id = Some(instance_id.to_owned());
        identity.hostname = Some(hostname.to_owned());
        identity.reset.extend([
            format!("cloud-init instance-id: {instance_id} (a new seed: cloud-init runs as on a first boot)"),
            format!("host name: {hostname} (seed meta-data, with manage_etc_hosts)"),
            "SSH host keys: cloud-init deletes and regenerates them on the clone's first boot".into(),
            "network: cloud-init renders it again for the clone's NICs".into(),
        ]);
        if renewed.machine_id_reset {
            identity.reset.push(
                "machine-id: a seed bootcmd, once per instance (cloud-init-per), removes /etc/machine-id and runs systemd-machine-id-setup".into(),
            );
            identity.unchanged.push(
                "until that bootcmd runs on the first boot, services started before it (journald, a DHCP client id derived from the machine-id) use the source's machine-id".into(),
            );
        }
        identity.unchanged.extend(renewed.kept);
        Ok(image)
    }

    fn disk_index(vm: &Vm, disk: Option<usize>) -> Result<usize, OpsError> {
        let i = match disk {
            Some(i) => i,
            None => vm.spec.disks.iter().position(|d| d.media == Media::Disk).unwrap_or(usize::MAX),
        };
        match vm.spec.disks.get(i) {
            Some(d) if d.media == Media::Disk => Ok(i),
            _ => Err(OpsError::invalid("disk", format!("VM {:?} has no disk number {i}", vm.spec.name.as_str()))),
        }
    }

    /// Grows disk `disk` (the first disk when `None`) to `size_gib`: through QMP
    /// `block_resize` while the VM runs (the guest sees the new size at once), in the
    /// file otherwise. Shrinking is refused.
    ///
    /// # Errors
    /// Smaller size, storage or QMP failures.
    pub async fn resize_disk(&self, name: &str, size_gib: u64, disk: Option<usize>) -> Result<VmInfo, OpsError> {
        let (vm, _lock) = self.load_locked(name).await?;
        let i = Self::disk_index(&vm, disk)?;
        let d = &vm.spec.disks[i];
        let bytes = check_size_gib("size_gib", size_gib)?;
        let now = storage::inspect_as(&d.path, image_format(d.format)).map_err(OpsError::storage("disk"))?;
        if bytes < now.virtual_size_bytes {
            return Err(OpsError::invalid(
                "size_gib",
                format!("{size_gib} GiB is smaller than the disk's {} bytes; disks only grow", now.virtual_size_bytes),
            ));
        }
        if Self::observe(&vm).status.state.is_active() {
            let q = self.qmp(&vm).await?;
            super::block::resize(&q, &format!("disk{i}"), bytes).await.map_err(|source| OpsError::Qmp {
                name: name.into(),
                what: "growing the disk failed",
                source,
            })?;
        } else {
            storage::resize_offline_as(&d.path, image_format(d.format), bytes).map_err(OpsError::storage("disk"))?;
        }
        tracing::info!(vm = %name, disk = i, size_gib, "disk grown");
        self.info(name)
    }

    /// Throws away what the VM wrote to its own disks: each overlay is replaced by a
    /// fresh one on the same base (same size); a blank disk of an ISO install becomes
    /// blank again and the install starts over. Internal snapshots go with it.
    ///
    /// # Errors
    /// VM running, a disk that is not kvm-mcp's own, a disk other VMs are built on.
    pub async fn reset_vm_disk(&self, name: &str) -> Result<VmInfo, OpsError> {
        let (vm, _lock) = self.load_locked(name).await?;
        Self::stopped(&vm, "resetting its disk")?;
        let disks: Vec<&DiskSpec> =
            vm.spec.disks.iter().filter(|d| d.media == Media::Disk && !d.path.starts_with(&vm.paths.state)).collect();
        if disks.is_empty() || disks.iter().any(|d| !d.owned || d.format != DiskFormat::Qcow2) {
            return Err(OpsError::invalid(
                "name",
                format!(
                    "VM {name:?} uses a disk kvm-mcp did not create; only its own overlays and blank disks can be reset"
                ),
            ));
        }
        let (owner, own): (String, Vec<DiskSpec>) = (name.to_owned(), disks.into_iter().cloned().collect());
        let chains = self
            .file_work("name", "checking the disks and who uses them", move |ops| {
                for d in &own {
                    let users = ops.users_of(&d.path, &owner);
                    if !users.is_empty() {
                        return Err(OpsError::InUse {
                            what: format!("disk {}", d.path.display()),
                            users,
                            hint: "resetting it would change their base image; delete them first".into(),
                        });
                    }
                }
                own.iter().map(|d| ops.chain_of(d)).collect::<Result<Vec<_>, _>>()
            })
            .await?;
        for chain in &chains {
            Self::recreate(chain)?;
        }
        let has_backing = chains.iter().any(|c| c.len() > 1);
        if vm.spec.disks.iter().any(|d| d.media == Media::Cdrom && !d.ejected) && !has_backing {
            std::fs::write(vm.paths.install_pending(), b"")
                .map_err(OpsError::io("cannot write", vm.paths.install_pending()))?;
        }
        tracing::info!(vm = %name, "disk reset");
        self.info(name)
    }

    /// The disk's whole chain under the host path rule, read as its recorded format.
    pub(crate) fn chain_of(&self, d: &DiskSpec) -> Result<Vec<storage::ImageInfo>, OpsError> {
        let allowed = self.allowed("disk", &self.image_dirs())?;
        storage::resolve_chain(&d.path, image_format(d.format), &allowed).map_err(OpsError::storage("disk"))
    }

    /// Writes a fresh image next to the chain's top and renames it over it: an
    /// overlay on the same (checked) base, or a blank image.
    fn recreate(chain: &[storage::ImageInfo]) -> Result<(), OpsError> {
        let info = &chain[0];
        let path = &info.path;
        let dir = path.parent().unwrap_or(Path::new("/"));
        let tmp = dir.join(format!(".{}.reset", path.file_name().unwrap_or_default().to_string_lossy()));
        let _ = std::fs::remove_file(&tmp);
        let res = match chain.get(1) {
            Some(base) => storage::create_overlay(&tmp, &base.path, base.format, Some(info.virtual_size_bytes)),
            None => storage::create_blank(&tmp, info.virtual_size_bytes, &CreateOptions::default()),
        };
        res.map_err(OpsError::storage("disk"))?;
        if let Err(e) = std::fs::rename(&tmp, path).and_then(|()| std::fs::File::open(dir)?.sync_all()) {
            let _ = std::fs::remove_file(&tmp);
            return Err(OpsError::io("cannot replace", path)(e));
        }
        Ok(())
    }
}
