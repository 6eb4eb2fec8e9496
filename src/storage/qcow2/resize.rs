//! Growing an image that no VM has open.
//!
//! This cannot be a copy-and-rename without copying the whole disk, so the
//! qcow2 path updates in place in QEMU's crash-safe order: new clusters (a
//! larger L1 table and any refcount blocks it needs) are written after the
//! end of the image and synced; their refcounts are then recorded and
//! synced; only then does one write inside the first sector switch the
//! header to the new size and table; the old L1 clusters are freed last.
//! A crash at any point leaves either the old or the new image, at worst
//! with leaked clusters that `qemu-img check -r leaks` reclaims.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::header::{
    Header, INCOMPAT_CORRUPT, INCOMPAT_DIRTY, MAX_L1_BYTES, OFFSET_SIZE, be64, put32, put64,
};
use super::inspect::{header_error, read_header};
use crate::storage::atomic::ensure_free_space;
use crate::storage::error::StorageError;

/// The offset bits of refcount-table and L1 entries (bits 9..=55).
const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;

/// Grows the image at `path` to `new_size_bytes`; the format is detected
/// as in [`super::inspect`]. Raw files are extended (sparsely). For qcow2
/// the header size is updated and, when the L1 table is too small, a
/// larger one is allocated. Shrinking is refused; the same size is a no-op.
///
/// The image must not be in use by a running VM.
///
/// # Errors
/// `InvalidSize` for shrinking, a qcow2 size not a multiple of 512, or one
/// past QEMU's 32 MiB L1 limit; `UnsupportedFeature` for a dirty or corrupt
/// image, persistent bitmaps, or a full refcount table; `InsufficientSpace`;
/// I/O errors naming `path`.
pub fn resize_offline(path: &Path, new_size_bytes: u64) -> Result<(), StorageError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| StorageError::open(path, e))?;
    match read_header(path, &file)? {
        Some(header) => resize_qcow2(path, &file, &header, new_size_bytes),
        None => resize_raw(path, &file, new_size_bytes),
    }
}

fn resize_raw(path: &Path, file: &File, new_size: u64) -> Result<(), StorageError> {
    let len = file
        .metadata()
        .map_err(|e| StorageError::read(path, e))?
        .len();
    check_growth(path, len, new_size)?;
    file.set_len(new_size)
        .and_then(|()| file.sync_all())
        .map_err(|e| StorageError::write(path, e))
}

fn check_growth(path: &Path, current: u64, new_size: u64) -> Result<(), StorageError> {
    if new_size < current {
        return Err(StorageError::invalid_size(
            path,
            new_size,
            format!("shrinking from {current} bytes is not supported"),
        ));
    }
    Ok(())
}

fn resize_qcow2(
    path: &Path,
    file: &File,
    header: &Header,
    new_size: u64,
) -> Result<(), StorageError> {
    check_writable(path, header)?;
    check_growth(path, header.size, new_size)?;
    if !new_size.is_multiple_of(512) {
        return Err(StorageError::invalid_size(
            path,
            new_size,
            "not a multiple of 512",
        ));
    }
    if new_size == header.size {
        return Ok(());
    }
    let l1_entries = new_size.div_ceil(header.bytes_per_l1_entry());
    if l1_entries * 8 > MAX_L1_BYTES {
        return Err(StorageError::invalid_size(
            path,
            new_size,
            format!("needs an L1 table above QEMU's limit of {MAX_L1_BYTES} bytes"),
        ));
    }
    let w = |e| StorageError::write(path, e);
    if l1_entries <= u64::from(header.l1_size) {
        let mut size = [0u8; 8];
        put64(&mut size, 0, new_size);
        return file
            .write_all_at(&size, OFFSET_SIZE)
            .and_then(|()| file.sync_data())
            .map_err(w);
    }
    grow_l1(path, file, header, new_size, l1_entries)
}

fn check_writable(path: &Path, header: &Header) -> Result<(), StorageError> {
    let feature = if header.incompatible_features & INCOMPAT_DIRTY != 0 {
        "the dirty flag (run `qemu-img check -r all` first)".to_string()
    } else if header.incompatible_features & INCOMPAT_CORRUPT != 0 {
        "the corrupt flag (run `qemu-img check -r all` first)".to_string()
    } else if header.has_bitmaps || header.autoclear_features != 0 {
        "persistent bitmaps or autoclear features".to_string()
    } else {
        return Ok(());
    };
    Err(StorageError::unsupported(path, feature))
}

/// The refcount structures of an image, read once.
struct Refcounts {
    cluster_size: u64,
    order: u32,
    table: Vec<u64>,
    /// Refcount blocks we changed or created, by table index.
    blocks: BTreeMap<usize, Vec<u8>>,
}

impl Refcounts {
    fn read(path: &Path, file: &File, header: &Header) -> Result<Self, StorageError> {
        let cs = header.cluster_size();
        let table_bytes = u64::from(header.refcount_table_clusters) * cs;
        let raw = read_at(path, file, header.refcount_table_offset, table_bytes)?;
        let table = raw
            .chunks_exact(8)
            .map(|c| be64(c, 0) & OFFSET_MASK)
            .collect();
        Ok(Self {
            cluster_size: cs,
            order: header.refcount_order,
            table,
            blocks: BTreeMap::new(),
        })
    }

    fn entries_per_block(&self) -> u64 {
        (self.cluster_size * 8) >> self.order
    }

    /// One past the highest cluster with a non-zero refcount.
    fn end_cluster(&self, path: &Path, file: &File) -> Result<u64, StorageError> {
        let mut end = 0;
        for (i, &offset) in self.table.iter().enumerate() {
            if offset == 0 {
                continue;
            }
            let block = read_at(path, file, offset, self.cluster_size)?;
            let last = (0..self.entries_per_block())
                .rev()
                .find(|&j| get_refcount(&block, j, self.order) != 0);
            if let Some(j) = last {
                end = i as u64 * self.entries_per_block() + j + 1;
            }
        }
        Ok(end)
    }

    /// The block at table `index`, read from the file on first use.
    fn block_mut(
        &mut self,
        path: &Path,
        file: &File,
        index: usize,
    ) -> Result<&mut Vec<u8>, StorageError> {
        let offset = self.table[index];
        if offset == 0 {
            return Err(StorageError::InvalidImage {
                path: path.to_path_buf(),
                format: "qcow2",
                reason: format!("refcount block {index} is missing"),
            });
        }
        match self.blocks.entry(index) {
            Entry::Occupied(e) => Ok(e.into_mut()),
            Entry::Vacant(e) => Ok(e.insert(read_at(path, file, offset, self.cluster_size)?)),
        }
    }

    fn set(
        &mut self,
        path: &Path,
        file: &File,
        cluster: u64,
        value: u64,
    ) -> Result<(), StorageError> {
        let per = self.entries_per_block();
        let index = usize::try_from(cluster / per).unwrap_or(usize::MAX);
        if index >= self.table.len() {
            return Err(StorageError::unsupported(
                path,
                "a full refcount table (growing it is not implemented)",
            ));
        }
        let order = self.order;
        let block = self.block_mut(path, file, index)?;
        set_refcount(block, cluster % per, order, value);
        Ok(())
    }

    /// Writes back every block read or created.
    fn write_blocks(&self, file: &File) -> std::io::Result<()> {
        for (&index, block) in &self.blocks {
            file.write_all_at(block, self.table[index])?;
        }
        Ok(())
    }

    /// Table indices with no refcount block that clusters `[start, end)` need.
    fn missing_blocks(&self, start: u64, end: u64) -> Vec<u64> {
        let per = self.entries_per_block();
        (start / per..end.div_ceil(per))
            .filter(|&i| self.table.get(i as usize).is_none_or(|&o| o == 0))
            .collect()
    }
}

fn grow_l1(
    path: &Path,
    file: &File,
    header: &Header,
    new_size: u64,
    l1_entries: u64,
) -> Result<(), StorageError> {
    let cs = header.cluster_size();
    let file_len = file
        .metadata()
        .map_err(|e| StorageError::read(path, e))?
        .len();
    header
        .check_tables(file_len)
        .map_err(|e| header_error(path, e))?;
    let mut refs = Refcounts::read(path, file, header)?;

    // New clusters go after both the file end and the last used cluster.
    let start = file_len.div_ceil(cs).max(refs.end_cluster(path, file)?);
    let l1_clusters = (l1_entries * 8).div_ceil(cs);
    // The new refcount blocks sit after the L1 table and may themselves
    // need covering: iterate until the count settles.
    let mut new_blocks = Vec::new();
    loop {
        let needed = refs.missing_blocks(start, start + l1_clusters + new_blocks.len() as u64);
        if needed.len() == new_blocks.len() {
            break;
        }
        new_blocks = needed;
    }
    if new_blocks
        .iter()
        .any(|&i| usize::try_from(i).map_or(true, |i| i >= refs.table.len()))
    {
        return Err(StorageError::unsupported(
            path,
            "a full refcount table (growing it is not implemented)",
        ));
    }
    let total = l1_clusters + new_blocks.len() as u64;
    let dir = path.parent().unwrap_or(Path::new("."));
    ensure_free_space(path, dir, total * cs)?;

    let w = |e| StorageError::write(path, e);
    // 1. The new L1 table: the old entries, then zeros.
    let old_l1 = read_at(
        path,
        file,
        header.l1_table_offset,
        u64::from(header.l1_size) * 8,
    )?;
    let mut l1 = vec![0u8; usize::try_from(l1_entries * 8).unwrap_or(0)];
    l1[..old_l1.len()].copy_from_slice(&old_l1);
    file.write_all_at(&l1, start * cs).map_err(w)?;
    // 2. Refcount blocks: new ones (after the L1 table), and existing ones
    //    covering the new clusters.
    let mut placed = Vec::new();
    for (k, &i) in new_blocks.iter().enumerate() {
        let index = usize::try_from(i).unwrap_or(usize::MAX);
        let offset = (start + l1_clusters + k as u64) * cs;
        refs.blocks
            .insert(index, vec![0u8; usize::try_from(cs).unwrap_or(0)]);
        refs.table[index] = offset;
        placed.push((index, offset));
    }
    for c in start..start + total {
        refs.set(path, file, c, 1)?;
    }
    refs.write_blocks(file).map_err(w)?;
    file.sync_data().map_err(w)?;
    // 3. Hook the new refcount blocks into the table.
    for &(index, offset) in &placed {
        let mut entry = [0u8; 8];
        put64(&mut entry, 0, offset);
        file.write_all_at(&entry, header.refcount_table_offset + index as u64 * 8)
            .map_err(w)?;
    }
    file.sync_data().map_err(w)?;
    // 4. Commit: size, crypt_method (0), l1_size, l1_table_offset in one
    //    write inside the first sector.
    let mut commit = [0u8; 24];
    put64(&mut commit, 0, new_size);
    put32(
        &mut commit,
        12,
        u32::try_from(l1_entries).unwrap_or(u32::MAX),
    );
    put64(&mut commit, 16, start * cs);
    file.write_all_at(&commit, OFFSET_SIZE).map_err(w)?;
    file.sync_data().map_err(w)?;
    // 5. Free the old L1 clusters; a crash before this only leaks them.
    if header.l1_size > 0 {
        refs.blocks.clear();
        let first = header.l1_table_offset / cs;
        let count = (u64::from(header.l1_size) * 8).div_ceil(cs);
        for c in first..first + count {
            refs.set(path, file, c, 0)?;
        }
        refs.write_blocks(file).map_err(w)?;
        file.sync_data().map_err(w)?;
    }
    Ok(())
}

fn read_at(path: &Path, file: &File, offset: u64, len: u64) -> Result<Vec<u8>, StorageError> {
    let mut buf = vec![0u8; usize::try_from(len).unwrap_or(0)];
    file.read_exact_at(&mut buf, offset)
        .map_err(|e| StorageError::read(path, e))?;
    Ok(buf)
}

/// Refcount entry `index` of a block whose entries are `1 << order` bits:
/// big-endian bytes from order 3 up; below that, packed from bit 0.
fn get_refcount(block: &[u8], index: u64, order: u32) -> u64 {
    let bits = 1u64 << order;
    if bits >= 8 {
        let width = (bits / 8) as usize;
        let at = index as usize * width;
        block[at..at + width]
            .iter()
            .fold(0, |acc, &b| (acc << 8) | u64::from(b))
    } else {
        let per_byte = 8 / bits;
        let shift = (index % per_byte) * bits;
        (u64::from(block[(index / per_byte) as usize]) >> shift) & ((1 << bits) - 1)
    }
}

fn set_refcount(block: &mut [u8], index: u64, order: u32, value: u64) {
    let bits = 1u64 << order;
    if bits >= 8 {
        let width = (bits / 8) as usize;
        let at = index as usize * width;
        let bytes = value.to_be_bytes();
        block[at..at + width].copy_from_slice(&bytes[8 - width..]);
    } else {
        let per_byte = 8 / bits;
        let shift = (index % per_byte) * bits;
        let mask = ((1u64 << bits) - 1) << shift;
        let byte = &mut block[(index / per_byte) as usize];
        *byte = ((u64::from(*byte) & !mask) | ((value << shift) & mask)) as u8;
    }
}
