//! `kvm-mcp storage …` and the disk options of `vm create`: images and ISOs, clones,
//! disk growth and reset, CD-ROM media.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::{print, table};
use crate::ops::{CloneRequest, DiskSource, ImageEntry, IsoEntry, Ops, OpsError, VmInfo};

/// `kvm-mcp storage …`.
#[derive(Debug, Subcommand)]
pub enum StorageCommand {
    /// Images in vm.disk_path and storage.image_dirs, with the VMs using each.
    Images,
    /// ISOs in storage.iso_dirs and vm.disk_path.
    Isos,
    /// Define a new VM from a stopped one: an overlay on its disk (linked) or a copy.
    Clone {
        source: String,
        name: String,
        /// Copy the disks instead of linking (the source stays startable).
        #[arg(long)]
        full: bool,
        /// Start the clone right away.
        #[arg(long)]
        start: bool,
        /// Host name of the clone's guest (default: the clone's name).
        #[arg(long)]
        hostname: Option<String>,
        /// Port forward of the clone's first user-mode NIC instead of the source's,
        /// `[HOST_ADDR:]HOST_PORT:GUEST_PORT[/udp]`; repeatable. Default: the source's
        /// forwards on free host ports.
        #[arg(long = "forward")]
        forwards: Vec<crate::ids::PortForward>,
        /// Stop and delete the clone this many seconds after creation.
        #[arg(long)]
        ttl: Option<u64>,
    },
    /// Grow a VM's disk (live when it runs).
    Resize {
        name: String,
        /// New size in GiB (never smaller than now).
        size_gib: u64,
        /// Disk number (default: the first disk).
        #[arg(long)]
        disk: Option<usize>,
    },
    /// Throw away what a stopped VM wrote: a fresh overlay on the same base.
    ResetDisk { name: String },
    /// Put an ISO in the VM's CD-ROM drive (default: vm.default_iso).
    AttachIso { name: String, iso: Option<PathBuf> },
    /// Empty the VM's CD-ROM drive.
    EjectIso { name: String },
    /// Save a snapshot of the VM's qcow2 disks (with RAM when it runs).
    SnapshotCreate { name: String, snapshot: String },
    /// List the VM's snapshots.
    Snapshots { name: String },
    /// Return the VM to a snapshot.
    SnapshotRevert { name: String, snapshot: String },
    /// Delete a snapshot.
    SnapshotDelete { name: String, snapshot: String },
}

/// Disk options of `vm create` (one of them, or `--disk`).
#[derive(Debug, Args, Default)]
pub struct CreateDiskArgs {
    /// New overlay on a master image (name or path in the image directories);
    /// without a value: vm.default_master_image.
    #[arg(long, num_args = 0..=1, default_missing_value = "", conflicts_with_all = ["iso", "blank", "disk"])]
    pub master: Option<String>,
    /// Blank disk plus this ISO as a CD-ROM that boots first until the installer
    /// reboots or powers off; without a value: vm.default_iso.
    #[arg(long, num_args = 0..=1, default_missing_value = "", conflicts_with_all = ["blank", "disk"])]
    pub iso: Option<String>,
    /// A blank disk.
    #[arg(long, conflicts_with = "disk")]
    pub blank: bool,
    /// Size of a new disk in GiB (default: vm.default_disk_size).
    #[arg(long)]
    pub disk_size: Option<u64>,
    /// cloud-init seed settings as JSON (or @FILE): {"hostname","user","groups":[..],
    /// "ssh_keys":[..],"password_hash","packages":[..],"run_commands":[..],
    /// "write_files":[{"path","content",..}],"timezone","manage_etc_hosts",
    /// "instance_id","user_data","network":{"mode":"dhcp"|"static",..}}.
    #[arg(long, value_name = "JSON")]
    pub cloud_init: Option<String>,
    /// Raw cloud-config (YAML or a JSON object; @FILE reads a file) merged into the
    /// seed beside the --cloud-init fields: cloud_init.user_data.
    #[arg(long, value_name = "YAML")]
    pub user_data: Option<String>,
    /// Ignition overrides as JSON (or @FILE): {"hostname","user","ssh_key","timezone","locale","password_hash"}.
    #[arg(long, value_name = "JSON")]
    pub ignition: Option<String>,
}

fn json_arg<T: serde::de::DeserializeOwned>(field: &str, v: Option<&String>) -> Result<Option<T>, OpsError> {
    let Some(v) = v else { return Ok(None) };
    let text = match v.strip_prefix('@') {
        Some(f) => std::fs::read_to_string(f).map_err(|e| OpsError::invalid(field, format!("cannot read {f}: {e}")))?,
        None => v.clone(),
    };
    serde_json::from_str(&text).map(Some).map_err(|e| OpsError::invalid(field, e.to_string()))
}

/// A file's text, refused past `max` bytes.
fn read_capped(field: &str, path: &str, max: usize) -> Result<String, OpsError> {
    use std::io::Read as _;
    let f = std::fs::File::open(path).map_err(|e| OpsError::invalid(field, format!("cannot read {path}: {e}")))?;
    let mut text = String::new();
    f.take(max as u64 + 1)
        .read_to_string(&mut text)
        .map_err(|e| OpsError::invalid(field, format!("cannot read {path}: {e}")))?;
    if text.len() > max {
        return Err(OpsError::invalid(field, format!("{path} is larger than {max} bytes")));
    }
    Ok(text)
}

impl CreateDiskArgs {
    /// Fills the disk and provisioning fields of `req`.
    ///
    /// # Errors
    /// Unreadable or malformed `--cloud-init` / `--ignition` JSON.
    pub fn apply(&self, req: &mut crate::ops::CreateRequest, existing: Option<PathBuf>) -> Result<(), OpsError> {
        req.disk = self.source(existing);
        req.disk_size_gib = self.disk_size;
        req.cloud_init = json_arg("cloud_init", self.cloud_init.as_ref())?;
        if let Some(u) = &self.user_data {
            let text = match u.strip_prefix('@') {
                Some(f) => read_capped("user_data", f, crate::provision::cloudconfig::MAX_USER_DATA_BYTES)?,
                None => u.clone(),
            };
            let ci = req.cloud_init.get_or_insert_default();
            if ci.user_data.is_some() {
                return Err(OpsError::invalid(
                    "user_data",
                    "given twice: as --user-data and in --cloud-init; keep one",
                ));
            }
            ci.user_data = Some(text);
        }
        req.ignition = json_arg("ignition", self.ignition.as_ref())?;
        Ok(())
    }

    /// The disk source these options (and `--disk`) ask for.
    #[must_use]
    pub fn source(&self, existing: Option<PathBuf>) -> Option<DiskSource> {
        let some = |s: &String| (!s.is_empty()).then(|| PathBuf::from(s));
        if let Some(m) = &self.master {
            Some(DiskSource::Master(some(m)))
        } else if let Some(i) = &self.iso {
            Some(DiskSource::Install(some(i)))
        } else if self.blank {
            Some(DiskSource::Blank)
        } else {
            existing.map(DiskSource::Existing)
        }
    }
}

fn gib(b: u64) -> String {
    format!("{:.1} GiB", b as f64 / f64::from(1u32 << 30))
}

fn users(u: &[String]) -> String {
    if u.is_empty() { "-".into() } else { u.join(",") }
}

fn images_text(v: &[ImageEntry]) -> String {
    let rows: Vec<Vec<String>> = v
        .iter()
        .map(|i| {
            vec![
                i.path.display().to_string(),
                i.format.to_string(),
                gib(i.virtual_size_bytes),
                gib(i.actual_size_bytes),
                i.backing_file.as_ref().map_or_else(|| "-".into(), |b| b.display().to_string()),
                users(&i.used_by),
            ]
        })
        .collect();
    table(&["PATH", "FORMAT", "SIZE", "ON DISK", "BACKING", "USED BY"], &rows)
}

fn isos_text(v: &[IsoEntry]) -> String {
    let rows: Vec<Vec<String>> =
        v.iter().map(|i| vec![i.path.display().to_string(), gib(i.size_bytes), users(&i.used_by)]).collect();
    table(&["PATH", "SIZE", "USED BY"], &rows)
}

/// Runs a `storage` command.
///
/// # Errors
/// Whatever the operation returned.
pub async fn run(ops: &Ops, json: bool, cmd: StorageCommand, show: impl Fn(VmInfo)) -> Result<(), OpsError> {
    match cmd {
        StorageCommand::Images => print(json, &ops.list_images().await?, |v| images_text(v)),
        StorageCommand::Isos => print(json, &ops.list_isos()?, |v| isos_text(v)),
        StorageCommand::Clone { source, name, full, start, hostname, forwards, ttl } => {
            let port_forwards = (!forwards.is_empty()).then_some(forwards);
            let req = CloneRequest { source, name, full, start, hostname, port_forwards, ttl_s: ttl, owner: None };
            let r = ops.clone_vm(req).await?;
            if json {
                print(true, &r, |_| String::new());
            } else {
                for line in r.identity.reset.iter().map(|l| format!("new: {l}")) {
                    println!("{line}");
                }
                for line in r.identity.unchanged.iter().map(|l| format!("unchanged: {l}")) {
                    println!("{line}");
                }
                show(r.vm);
            }
        }
        StorageCommand::Resize { name, size_gib, disk } => show(ops.resize_disk(&name, size_gib, disk).await?),
        StorageCommand::ResetDisk { name } => show(ops.reset_vm_disk(&name).await?),
        StorageCommand::AttachIso { name, iso } => show(ops.attach_iso(&name, iso.as_deref()).await?),
        StorageCommand::EjectIso { name } => show(ops.eject_iso(&name).await?),
        StorageCommand::SnapshotCreate { name, snapshot } => {
            let s = ops.create_snapshot(&name, &snapshot, &crate::ops::no_progress).await?;
            print(json, &s, |s| {
                format!("saved snapshot {} of {name} ({} bytes of VM state)", s.name, s.vm_state_bytes)
            });
        }
        StorageCommand::Snapshots { name } => {
            let list = ops.list_snapshots(&name)?;
            print(json, &list, |l| {
                let rows: Vec<Vec<String>> = l
                    .iter()
                    .map(|s| {
                        let kind = if s.live { "live" } else { "power-on" };
                        vec![s.name.clone(), s.created_s.to_string(), kind.into(), s.vm_state_bytes.to_string()]
                    })
                    .collect();
                table(&["NAME", "CREATED", "STATE", "VM STATE BYTES"], &rows)
            });
        }
        StorageCommand::SnapshotRevert { name, snapshot } => {
            show(ops.revert_snapshot(&name, &snapshot, &crate::ops::no_progress).await?);
        }
        StorageCommand::SnapshotDelete { name, snapshot } => {
            ops.delete_snapshot(&name, &snapshot, &crate::ops::no_progress).await?;
            print(json, &serde_json::json!({ "deleted": snapshot }), |_| {
                format!("deleted snapshot {snapshot} of {name}")
            });
        }
    }
    Ok(())
}
