//! Disks of new and deleted VMs: where a new VM's disk comes from (master image
//! overlay, blank disk plus install ISO, blank, or an adopted image), confinement of
//! every caller path to the configured directories, writing the files with nothing
//! left behind on failure, and removing a VM's own disks on delete while never
//! removing an image another VM is built on.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Ops, OpsError};
use crate::config::MAX_DISK_SIZE_GIB;
use crate::ids::VmName;
use crate::layout::VmPaths;
use crate::qemu::profile::{CdromBus, Profile};
use crate::spec::{DiskFormat, DiskSpec, Media};
use crate::storage::{self, AllowedDirs, CreateOptions, HostFile, ImageFormat, ImageInfo};

/// Bytes in a GiB.
pub(crate) const GIB: u64 = 1 << 30;

/// Where a new VM's disk comes from. On the wire (MCP, `--json`) either the path of an
/// existing image, or an object whose `type` picks the kind ([`DiskSourceWire`]).
#[derive(Debug, Clone, Serialize)]
#[serde(into = "DiskSourceWire")]
pub enum DiskSource {
    /// Use this existing image as it is (qcow2 or raw); it must lie in an image directory.
    Existing(PathBuf),
    /// A new qcow2 overlay on this master image (name or path inside the image
    /// directories; `null`: `vm.default_master_image`), grown to `disk_size_gib`.
    Master(Option<PathBuf>),
    /// A blank disk of `disk_size_gib` plus this ISO (inside the ISO directories; `null`:
    /// `vm.default_iso`) on a CD-ROM that boots first until the installer reboots or
    /// powers off.
    Install(Option<PathBuf>),
    /// A blank disk of `disk_size_gib`.
    Blank,
}

/// The disk of a new VM as callers write it: an image path, or a kind of new disk.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum DiskSourceWire {
    Path(PathBuf),
    Kind(DiskKind),
}

/// A disk of a new VM by kind (`type` picks it).
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum DiskKind {
    /// An existing image.
    #[schemars(skip)]
    Existing {
        /// Absolute path of the image in an image directory.
        path: PathBuf,
    },
    /// An overlay on a master image.
    Master {
        /// Default: the configured one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        image: Option<PathBuf>,
    },
    /// A blank disk and an installer ISO.
    Install {
        /// Default: the configured one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        iso: Option<PathBuf>,
    },
    /// A blank disk.
    Blank,
}

impl From<DiskKind> for DiskSource {
    fn from(k: DiskKind) -> Self {
        match k {
            DiskKind::Existing { path } => Self::Existing(path),
            DiskKind::Master { image } => Self::Master(image),
            DiskKind::Install { iso } => Self::Install(iso),
            DiskKind::Blank => Self::Blank,
        }
    }
}

impl From<DiskSource> for DiskSourceWire {
    fn from(s: DiskSource) -> Self {
        match s {
            DiskSource::Existing(path) => Self::Path(path),
            DiskSource::Master(image) => Self::Kind(DiskKind::Master { image }),
            DiskSource::Install(iso) => Self::Kind(DiskKind::Install { iso }),
            DiskSource::Blank => Self::Kind(DiskKind::Blank),
        }
    }
}

impl<'de> Deserialize<'de> for DiskSource {
    /// A string is an existing image's path; an object is a [`DiskKind`], whose own
    /// errors (an unknown `type`, a misspelt field) reach the caller unchanged.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = DiskSource;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(r#"an image path, or an object with "type": "master", "install", "blank" or "existing""#)
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<DiskSource, E> {
                Ok(DiskSource::Existing(PathBuf::from(v)))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, m: A) -> Result<DiskSource, A::Error> {
                DiskKind::deserialize(serde::de::value::MapAccessDeserializer::new(m)).map(DiskSource::from)
            }
        }
        d.deserialize_any(Visit)
    }
}

/// Options of `delete_with`.
#[derive(Debug, Clone, Copy, Default, Serialize, serde::Deserialize)]
pub struct DeleteOptions {
    /// Stop a running VM first (forcefully).
    #[serde(default)]
    pub force: bool,
    /// Leave the disks kvm-mcp created for the VM in place.
    #[serde(default)]
    pub keep_disks: bool,
}

/// What `delete_with` did with the VM's files.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, schemars::JsonSchema)]
pub struct DeleteReport {
    pub name: String,
    /// Disk images removed.
    pub removed: Vec<PathBuf>,
    /// The VM's own disk images left in place (`keep_disks`).
    pub kept: Vec<PathBuf>,
}

/// A disk file `create` writes.
#[derive(Debug, Clone)]
pub(crate) enum NewFile {
    Overlay { path: PathBuf, base: PathBuf, base_format: ImageFormat, size_bytes: u64 },
    Blank { path: PathBuf, size_bytes: u64 },
}

impl NewFile {
    fn path(&self) -> &Path {
        match self {
            NewFile::Overlay { path, .. } | NewFile::Blank { path, .. } => path,
        }
    }
}

/// The disks of a VM being created.
#[derive(Debug, Default)]
pub(crate) struct DiskPlan {
    pub disks: Vec<DiskSpec>,
    pub files: Vec<NewFile>,
    /// Blank disk + ISO: boot the CD-ROM until the installer reboots or powers off.
    pub install: bool,
}

impl DiskPlan {
    /// Removes the first `n` files (those written so far).
    fn discard_first(&self, n: usize) {
        for f in self.files.iter().take(n) {
            if let Err(e) = std::fs::remove_file(f.path()) {
                tracing::warn!(error = %e, path = %f.path().display(), "cannot remove disk of a failed create");
            }
        }
    }

    /// The files the plan writes.
    pub(crate) fn file_paths(&self) -> Vec<PathBuf> {
        self.files.iter().map(|f| f.path().to_owned()).collect()
    }

    /// Removes every file of the plan (after a later step failed).
    pub(crate) fn discard(&self) {
        self.discard_first(self.files.len());
    }
}

pub(crate) fn image_format(f: DiskFormat) -> ImageFormat {
    match f {
        DiskFormat::Qcow2 => ImageFormat::Qcow2,
        DiskFormat::Raw => ImageFormat::Raw,
    }
}

fn disk_format(f: ImageFormat) -> DiskFormat {
    match f {
        ImageFormat::Qcow2 => DiskFormat::Qcow2,
        ImageFormat::Raw => DiskFormat::Raw,
    }
}

fn owned_disk(path: PathBuf) -> DiskSpec {
    DiskSpec {
        path,
        format: DiskFormat::Qcow2,
        media: Media::Disk,
        readonly: false,
        owned: true,
        ejected: false,
        addr: None,
    }
}

/// `size_gib` checked against the limits.
pub(crate) fn check_size_gib(field: &str, size_gib: u64) -> Result<u64, OpsError> {
    if (1..=MAX_DISK_SIZE_GIB).contains(&size_gib) {
        Ok(size_gib * GIB)
    } else {
        Err(OpsError::invalid(field, format!("{size_gib} is outside 1..={MAX_DISK_SIZE_GIB} GiB")))
    }
}

impl Ops {
    /// The format of an image a caller names (adopted disk or master), decided once:
    /// the format another VM recorded for the same file wins (a raw disk's guest may
    /// have written any header into it); otherwise the magic decides, and a qcow2
    /// found that way must pass the chain rule. Returns the chain, top first (its
    /// format is the decision).
    fn decide_format(&self, field: &str, file: &HostFile, allowed: &AllowedDirs) -> Result<Vec<ImageInfo>, OpsError> {
        let recorded = self
            .other_vms("")
            .into_iter()
            .flat_map(|vm| vm.spec.disks)
            .find(|d| std::fs::canonicalize(&d.path).is_ok_and(|p| p == file.path()))
            .map(|d| image_format(d.format));
        let format = match recorded {
            Some(f) => f,
            None => storage::inspect_host_file(file, None).map_err(OpsError::storage(field))?.format,
        };
        storage::resolve_chain(file.path(), format, allowed).map_err(OpsError::storage(field))
    }

    /// The disks and checks of a new VM, planned off the async runtime under a
    /// deadline (a caller's file that never answers costs this call only).
    pub(crate) async fn plan_disks_bounded(
        &self,
        disk: Option<&DiskSource>,
        disk_size_gib: Option<u64>,
        name: &VmName,
        profile: &Profile,
        boots_from_disk: bool,
    ) -> Result<DiskPlan, OpsError> {
        let (disk, name, profile) = (disk.cloned(), name.clone(), profile.clone());
        self.file_work("disk", "checking the disk images", move |ops| {
            ops.plan_disks(disk.as_ref(), disk_size_gib, &name, &profile, boots_from_disk)
        })
        .await
    }

    /// `<disk_path>/<name>.qcow2` (`<name>-disk<i>.qcow2` for further disks); refused
    /// when the file exists, so nobody's image is ever replaced.
    pub(crate) fn new_disk_path(&self, name: &VmName, index: usize) -> Result<PathBuf, OpsError> {
        let dir = &self.cfg.vm.disk_path;
        std::fs::create_dir_all(dir).map_err(OpsError::io("cannot create disk directory", dir))?;
        let file = if index == 0 { format!("{name}.qcow2") } else { format!("{name}-disk{index}.qcow2") };
        let path = dir.join(file);
        if std::fs::symlink_metadata(&path).is_ok() {
            return Err(OpsError::Storage {
                field: "disk".into(),
                source: storage::StorageError::AlreadyExists { path },
            });
        }
        Ok(path)
    }

    /// Works out a new VM's disks from the request without writing anything.
    pub(crate) fn plan_disks(
        &self,
        disk: Option<&DiskSource>,
        disk_size_gib: Option<u64>,
        name: &VmName,
        profile: &Profile,
        boots_from_disk: bool,
    ) -> Result<DiskPlan, OpsError> {
        let d = &self.cfg.vm;
        let explicit = disk_size_gib.map(|g| check_size_gib("disk_size_gib", g)).transpose()?;
        let want = explicit.unwrap_or(d.default_disk_size_gib * GIB);
        let source = match (disk, boots_from_disk, &d.default_master_image, &d.default_iso) {
            (Some(s), ..) => s.clone(),
            (None, false, ..) => return Ok(DiskPlan::default()),
            (None, true, Some(_), _) => DiskSource::Master(None),
            (None, true, None, Some(_)) => DiskSource::Install(None),
            (None, true, None, None) => {
                return Err(OpsError::invalid(
                    "disk",
                    "nothing to boot: pass disk (existing, master, install or blank), kernel (with initrd) for \
                     direct boot, or set vm.default_master_image or vm.default_iso",
                ));
            }
        };
        let mut plan = DiskPlan::default();
        match source {
            DiskSource::Existing(p) => {
                let dirs = self.image_dirs();
                let file = self.confine_open("disk.existing", &p, &dirs)?;
                let chain = self.decide_format("disk.existing", &file, &self.allowed("disk.existing", &dirs)?)?;
                let format = disk_format(chain[0].format);
                plan.disks.push(DiskSpec { owned: false, format, ..owned_disk(file.path().to_path_buf()) });
            }
            DiskSource::Master(m) => {
                let m = m.or_else(|| d.default_master_image.clone()).ok_or_else(|| {
                    OpsError::invalid("disk.master", "no master image given and vm.default_master_image is not set")
                })?;
                let dirs = self.image_dirs();
                let file = self.confine_open("disk.master", &m, &dirs)?;
                // The whole chain must be confined and sane before anything is written.
                let chain = self.decide_format("disk.master", &file, &self.allowed("disk.master", &dirs)?)?;
                let base = file.path().to_path_buf();
                let base_size = chain[0].virtual_size_bytes.next_multiple_of(512);
                let size_bytes = if explicit.is_some() { want } else { want.max(base_size) };
                let path = self.new_disk_path(name, 0)?;
                plan.files.push(NewFile::Overlay {
                    path: path.clone(),
                    base,
                    base_format: chain[0].format,
                    size_bytes,
                });
                plan.disks.push(owned_disk(path));
            }
            DiskSource::Install(iso) => {
                if profile.cdrom_bus == CdromBus::None {
                    return Err(OpsError::invalid(
                        "disk.install",
                        format!("profile {:?} has no CD-ROM bus; pick another os_variant", profile.name),
                    ));
                }
                let iso = iso
                    .or_else(|| d.default_iso.clone())
                    .ok_or_else(|| OpsError::invalid("disk.install", "no ISO given and vm.default_iso is not set"))?;
                let iso = self.confine("disk.install", &iso, &self.iso_dirs())?;
                let path = self.new_disk_path(name, 0)?;
                plan.files.push(NewFile::Blank { path: path.clone(), size_bytes: want });
                plan.disks.push(owned_disk(path));
                plan.disks.push(DiskSpec {
                    path: iso,
                    format: DiskFormat::Raw,
                    media: Media::Cdrom,
                    readonly: true,
                    owned: false,
                    ejected: false,
                    addr: None,
                });
                plan.install = true;
            }
            DiskSource::Blank => {
                let path = self.new_disk_path(name, 0)?;
                plan.files.push(NewFile::Blank { path: path.clone(), size_bytes: want });
                plan.disks.push(owned_disk(path));
            }
        }
        Ok(plan)
    }

    /// Writes the planned disks (the caller has recorded them with
    /// [`crate::store::begin_create`] first, so `delete` of an interrupted create finds
    /// them). On failure, removes what it wrote.
    pub(crate) fn write_disks(plan: &DiskPlan, paths: &VmPaths) -> Result<(), OpsError> {
        for (i, f) in plan.files.iter().enumerate() {
            let res = match f {
                NewFile::Overlay { path, base, base_format, size_bytes } => {
                    storage::create_overlay(path, base, *base_format, Some(*size_bytes))
                }
                NewFile::Blank { path, size_bytes } => {
                    storage::create_blank(path, *size_bytes, &CreateOptions::default())
                }
            };
            if let Err(e) = res {
                plan.discard_first(i);
                return Err(OpsError::storage("disk")(e));
            }
        }
        if plan.install {
            let marker = paths.install_pending();
            if let Err(e) = std::fs::write(&marker, b"") {
                plan.discard();
                return Err(OpsError::io("cannot write", marker)(e));
            }
        }
        Ok(())
    }

    /// The VM's own disk files delete should remove (or keep), refusing when another
    /// VM is built on one of them. For an incomplete VM, the files its interrupted
    /// create listed.
    /// Runs off the async runtime under a deadline.
    pub(crate) async fn owned_disks_for_delete(
        &self,
        name: &str,
        paths: &VmPaths,
        keep: bool,
    ) -> Result<Vec<PathBuf>, OpsError> {
        let (name, paths) = (name.to_owned(), paths.clone());
        self.file_work("name", "checking which VMs use the disks", move |ops| {
            ops.owned_disks_for_delete_blocking(&name, &paths, keep)
        })
        .await
    }

    fn owned_disks_for_delete_blocking(
        &self,
        name: &str,
        paths: &VmPaths,
        keep: bool,
    ) -> Result<Vec<PathBuf>, OpsError> {
        let files: Vec<PathBuf> = match self.load(name) {
            Ok(vm) => vm
                .spec
                .disks
                .iter()
                .filter(|d| d.owned && d.media == Media::Disk && !d.path.starts_with(&paths.state))
                .map(|d| d.path.clone())
                .collect(),
            // Incomplete or damaged: the files recorded when they were planned or last
            // owned (and an older kvm-mcp's list in the create marker).
            Err(_) => {
                let mut files = crate::store::recorded_owned(paths);
                files.extend(std::fs::read_to_string(paths.creating()).unwrap_or_default().lines().map(PathBuf::from));
                files.sort();
                files.dedup();
                files.into_iter().filter(|p| p.starts_with(&self.cfg.vm.disk_path)).collect()
            }
        };
        for f in files.iter().filter(|_| !keep) {
            let users = self.users_of(f, name);
            if !users.is_empty() {
                return Err(OpsError::InUse {
                    what: format!("disk {} of VM {name:?}", f.display()),
                    users,
                    hint: "delete those VMs first, or delete this one with keep_disks".into(),
                });
            }
        }
        Ok(files)
    }
}

/// A fork's frozen layer of `disk`: `<dir>/<stem>.fork-<id>.qcow2` beside it.
pub(super) fn frozen_path(disk: &Path, id: &str) -> PathBuf {
    let stem = disk.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    disk.with_file_name(format!("{stem}.fork-{id}.qcow2"))
}

/// Whether `path` is a fork's frozen layer (by its name).
pub(crate) fn is_frozen_layer(path: &Path) -> bool {
    path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.contains(".fork-") && n.ends_with(".qcow2"))
}

/// Removes `files` and the temporary files an interrupted write of each left beside it
/// (`.<name>.tmp-*`), returning the files removed.
pub(crate) fn remove_files(files: Vec<PathBuf>) -> Vec<PathBuf> {
    for f in &files {
        storage::remove_temp_siblings(f);
    }
    files
        .into_iter()
        .filter(|f| match std::fs::remove_file(f) {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => {
                tracing::warn!(error = %e, path = %f.display(), "cannot remove disk");
                false
            }
        })
        .collect()
}
