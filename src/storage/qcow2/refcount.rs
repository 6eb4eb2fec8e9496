//! Reading and updating qcow2 refcounts: the refcount table, its blocks,
//! and entries of any width from 1 to 64 bits.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::header::{Header, be64};
use crate::storage::error::StorageError;

/// The offset bits of refcount-table entries (bits 9..=55).
const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;

/// The refcount structures of an image, read once.
pub(crate) struct Refcounts {
    cluster_size: u64,
    order: u32,
    table: Vec<u64>,
    /// Refcount blocks we changed or created, by table index.
    blocks: BTreeMap<usize, Vec<u8>>,
}

impl Refcounts {
    pub(crate) fn read(path: &Path, file: &File, header: &Header) -> Result<Self, StorageError> {
        let cs = header.cluster_size();
        let table_bytes = u64::from(header.refcount_table_clusters) * cs;
        let raw = read_at(path, file, header.refcount_table_offset, table_bytes)?;
        let table = raw.chunks_exact(8).map(|c| be64(c, 0) & OFFSET_MASK).collect();
        Ok(Self { cluster_size: cs, order: header.refcount_order, table, blocks: BTreeMap::new() })
    }

    fn entries_per_block(&self) -> u64 {
        (self.cluster_size * 8) >> self.order
    }

    /// One past the highest cluster with a non-zero refcount.
    pub(crate) fn end_cluster(&self, path: &Path, file: &File) -> Result<u64, StorageError> {
        let mut end = 0;
        for (i, &offset) in self.table.iter().enumerate() {
            if offset == 0 {
                continue;
            }
            let block = read_at(path, file, offset, self.cluster_size)?;
            let last = (0..self.entries_per_block()).rev().find(|&j| get_refcount(&block, j, self.order) != 0);
            if let Some(j) = last {
                end = i as u64 * self.entries_per_block() + j + 1;
            }
        }
        Ok(end)
    }

    /// The block at table `index`, read from the file on first use.
    fn block_mut(&mut self, path: &Path, file: &File, index: usize) -> Result<&mut Vec<u8>, StorageError> {
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

    pub(crate) fn set(&mut self, path: &Path, file: &File, cluster: u64, value: u64) -> Result<(), StorageError> {
        let per = self.entries_per_block();
        let index = usize::try_from(cluster / per).unwrap_or(usize::MAX);
        if index >= self.table.len() {
            return Err(StorageError::unsupported(path, "a full refcount table (growing it is not implemented)"));
        }
        let order = self.order;
        let block = self.block_mut(path, file, index)?;
        set_refcount(block, cluster % per, order, value);
        Ok(())
    }

    /// Entries in the refcount table.
    pub(crate) fn table_len(&self) -> usize {
        self.table.len()
    }

    /// Records a new, all-zero refcount block for table `index` at `offset`
    /// (in memory; [`Self::write_blocks`] writes it).
    pub(crate) fn add_block(&mut self, index: usize, offset: u64) {
        let cluster = usize::try_from(self.cluster_size).unwrap_or(0);
        self.blocks.insert(index, vec![0u8; cluster]);
        self.table[index] = offset;
    }

    /// Drops the cached blocks, so later updates re-read them.
    pub(crate) fn forget_blocks(&mut self) {
        self.blocks.clear();
    }

    /// Writes back every block read or created.
    pub(crate) fn write_blocks(&self, file: &File) -> std::io::Result<()> {
        for (&index, block) in &self.blocks {
            file.write_all_at(block, self.table[index])?;
        }
        Ok(())
    }

    /// Table indices with no refcount block that clusters `[start, end)` need.
    pub(crate) fn missing_blocks(&self, start: u64, end: u64) -> Vec<u64> {
        let per = self.entries_per_block();
        (start / per..end.div_ceil(per)).filter(|&i| self.table.get(i as usize).is_none_or(|&o| o == 0)).collect()
    }
}

pub(crate) fn read_at(path: &Path, file: &File, offset: u64, len: u64) -> Result<Vec<u8>, StorageError> {
    let mut buf = vec![0u8; usize::try_from(len).unwrap_or(0)];
    file.read_exact_at(&mut buf, offset).map_err(|e| StorageError::read(path, e))?;
    Ok(buf)
}

/// Refcount entry `index` of a block whose entries are `1 << order` bits:
/// big-endian bytes from order 3 up; below that, packed from bit 0.
fn get_refcount(block: &[u8], index: u64, order: u32) -> u64 {
    let bits = 1u64 << order;
    if bits >= 8 {
        let width = (bits / 8) as usize;
        let at = index as usize * width;
        block[at..at + width].iter().fold(0, |acc, &b| (acc << 8) | u64::from(b))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_bit_refcounts_pack_from_bit_zero() {
        let mut block = vec![0u8; 8];

        set_refcount(&mut block, 3, 0, 1);

        assert_eq!(block[0], 0b1000);
        assert_eq!(get_refcount(&block, 3, 0), 1);
        assert_eq!(get_refcount(&block, 2, 0), 0);
    }

    #[test]
    fn four_bit_refcounts_share_a_byte() {
        let mut block = vec![0u8; 8];

        set_refcount(&mut block, 1, 2, 0xf);
        set_refcount(&mut block, 0, 2, 0x3);

        assert_eq!(block[0], 0xf3);
        assert_eq!(get_refcount(&block, 1, 2), 0xf);
    }

    #[test]
    fn sixteen_bit_refcounts_are_big_endian() {
        let mut block = vec![0u8; 8];

        set_refcount(&mut block, 1, 4, 0x0102);

        assert_eq!(block[2..4], [1, 2]);
        assert_eq!(get_refcount(&block, 1, 4), 0x0102);
    }

    #[test]
    fn sixty_four_bit_refcounts_use_whole_words() {
        let mut block = vec![0u8; 16];

        set_refcount(&mut block, 1, 6, u64::MAX - 1);

        assert_eq!(get_refcount(&block, 1, 6), u64::MAX - 1);
        assert_eq!(get_refcount(&block, 0, 6), 0);
    }
}
