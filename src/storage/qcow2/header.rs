//! The qcow2 header: parsing (v2 and v3, with the checks that decide whether
//! we may touch an image) and encoding the metadata of a new v3 image.
//! Layout follows QEMU's docs/interop/qcow2.txt; all numbers are big-endian.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use crate::storage::ImageFormat;

/// "QFI\xfb".
pub(crate) const MAGIC: [u8; 4] = *b"QFI\xfb";
/// Cluster size of the images we create: 64 KiB, QEMU's default.
pub(crate) const CLUSTER_BITS: u32 = 16;
/// 16-bit refcounts, QEMU's default.
pub(crate) const REFCOUNT_ORDER: u32 = 4;
/// Bytes of the v3 header we write: the 104 mandatory bytes plus the
/// compression_type byte, padded to a multiple of 8 (as QEMU 7.2 writes it).
const HEADER_V3_LEN: u32 = 112;
/// Bytes a v2 header has.
const HEADER_V2_LEN: u32 = 72;
/// Smallest v3 header_length the spec allows.
const HEADER_V3_MIN_LEN: u32 = 104;
/// QEMU refuses longer backing file names.
pub(crate) const MAX_BACKING_NAME_BYTES: usize = 1023;
/// QEMU's limit on the active L1 table (`QCOW_MAX_L1_SIZE`).
pub(crate) const MAX_L1_BYTES: u64 = 32 << 20;
/// QEMU's limit on the refcount table (`QCOW_MAX_REFTABLE_SIZE`).
pub(crate) const MAX_REFTABLE_BYTES: u64 = 8 << 20;
/// QEMU cannot open images with clusters above 2 MiB.
const MAX_CLUSTER_BITS: u32 = 21;
const MIN_CLUSTER_BITS: u32 = 9;

const EXT_END: u32 = 0;
const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
const EXT_BITMAPS: u32 = 0x2385_2875;

/// Incompatible feature bits (header bytes 72..80).
pub(crate) const INCOMPAT_DIRTY: u64 = 1 << 0;
pub(crate) const INCOMPAT_CORRUPT: u64 = 1 << 1;
const INCOMPAT_DATA_FILE: u64 = 1 << 2;
const INCOMPAT_COMPRESSION: u64 = 1 << 3;
pub(crate) const INCOMPAT_EXTENDED_L2: u64 = 1 << 4;
const INCOMPAT_KNOWN: u64 =
    INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_DATA_FILE | INCOMPAT_COMPRESSION | INCOMPAT_EXTENDED_L2;
/// Compatible feature bit 0.
const COMPAT_LAZY_REFCOUNTS: u64 = 1 << 0;

/// Byte offsets of the fields the resize path rewrites.
pub(crate) const OFFSET_SIZE: u64 = 24;

/// Why a header cannot be used.
#[derive(Debug)]
pub(crate) enum HeaderError {
    Io(io::Error),
    /// Malformed: not (or no longer) a qcow2 image we can read.
    Invalid(String),
    /// Well-formed, but uses something this module does not handle.
    Unsupported(String),
}

impl From<io::Error> for HeaderError {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

/// The fields of a qcow2 header, plus the backing file name and the
/// extensions we understand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Header {
    pub version: u32,
    pub cluster_bits: u32,
    pub size: u64,
    pub l1_size: u32,
    pub l1_table_offset: u64,
    pub refcount_table_offset: u64,
    pub refcount_table_clusters: u32,
    pub incompatible_features: u64,
    pub autoclear_features: u64,
    pub refcount_order: u32,
    pub backing_file: Option<Vec<u8>>,
    pub backing_format: Option<ImageFormat>,
    pub has_bitmaps: bool,
}

impl Header {
    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// Guest bytes one L1 entry maps.
    pub fn bytes_per_l1_entry(&self) -> u64 {
        let l2_entry_bytes = if self.incompatible_features & INCOMPAT_EXTENDED_L2 == 0 { 8 } else { 16 };
        self.cluster_size() * (self.cluster_size() / l2_entry_bytes)
    }

    /// Reads and validates the header of `file`. `Ok(None)` means the file
    /// does not start with the qcow2 magic.
    pub fn read(file: &File) -> Result<Option<Self>, HeaderError> {
        let len = file.metadata()?.len();
        let mut fixed = [0u8; HEADER_V3_MIN_LEN as usize];
        let fixed_len = usize::try_from(len.min(fixed.len() as u64)).unwrap_or(fixed.len());
        file.read_exact_at(&mut fixed[..fixed_len], 0)?;
        if fixed_len < MAGIC.len() || fixed[..4] != MAGIC {
            return Ok(None);
        }
        if fixed_len < HEADER_V2_LEN as usize {
            return Err(HeaderError::Invalid("file is shorter than a header".into()));
        }
        let cluster_bits = be32(&fixed, 20);
        if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&cluster_bits) {
            return Err(HeaderError::Invalid(format!(
                "cluster_bits {cluster_bits} is outside {MIN_CLUSTER_BITS}..={MAX_CLUSTER_BITS}"
            )));
        }
        let cluster = usize::try_from((1u64 << cluster_bits).min(len)).unwrap_or(0);
        let mut first = vec![0u8; cluster];
        file.read_exact_at(&mut first, 0)?;
        Self::parse(&first).map(Some)
    }

    /// Parses the first cluster of an image (or the whole file if shorter).
    pub fn parse(buf: &[u8]) -> Result<Self, HeaderError> {
        let version = be32(buf, 4);
        if version != 2 && version != 3 {
            return Err(HeaderError::Unsupported(format!("qcow2 version {version}")));
        }
        if version == 3 && buf.len() < HEADER_V3_MIN_LEN as usize {
            return Err(HeaderError::Invalid("file is shorter than a v3 header".into()));
        }
        let cluster_bits = be32(buf, 20);
        let (incompatible, autoclear, refcount_order, header_length) = if version == 3 {
            (be64(buf, 72), be64(buf, 88), be32(buf, 96), be32(buf, 100))
        } else {
            (0, 0, REFCOUNT_ORDER, HEADER_V2_LEN)
        };
        if be32(buf, 32) != 0 {
            return Err(HeaderError::Unsupported("encryption".into()));
        }
        if incompatible & INCOMPAT_DATA_FILE != 0 {
            return Err(HeaderError::Unsupported("external data file".into()));
        }
        let unknown = incompatible & !INCOMPAT_KNOWN;
        if unknown != 0 {
            return Err(HeaderError::Unsupported(format!("unknown incompatible feature bits {unknown:#x}")));
        }
        if refcount_order > 6 {
            return Err(HeaderError::Invalid(format!("refcount_order {refcount_order} is above 6")));
        }
        if header_length < HEADER_V2_LEN
            || (version == 3 && (header_length < HEADER_V3_MIN_LEN || header_length % 8 != 0))
            || header_length as usize > buf.len()
        {
            return Err(HeaderError::Invalid(format!("header_length {header_length} is invalid")));
        }

        let backing_offset = be64(buf, 8);
        let backing_file = if backing_offset == 0 {
            None
        } else {
            let name_len = be32(buf, 16) as usize;
            let start = usize::try_from(backing_offset).unwrap_or(usize::MAX);
            if name_len > MAX_BACKING_NAME_BYTES || start.saturating_add(name_len) > buf.len() {
                return Err(HeaderError::Invalid(
                    "backing file name lies outside the first cluster or is too long".into(),
                ));
            }
            Some(buf[start..start + name_len].to_vec())
        };

        let mut header = Self {
            version,
            cluster_bits,
            size: be64(buf, 24),
            l1_size: be32(buf, 36),
            l1_table_offset: be64(buf, 40),
            refcount_table_offset: be64(buf, 48),
            refcount_table_clusters: be32(buf, 56),
            incompatible_features: incompatible,
            autoclear_features: autoclear,
            refcount_order,
            backing_file,
            backing_format: None,
            has_bitmaps: false,
        };
        // Extensions run from the end of the header to the backing file name
        // (or the end of the cluster).
        let ext_end = match usize::try_from(backing_offset) {
            Ok(off) if off != 0 => off.min(buf.len()),
            _ => buf.len(),
        };
        header.parse_extensions(&buf[..ext_end], header_length as usize)?;
        Ok(header)
    }

    fn parse_extensions(&mut self, buf: &[u8], mut at: usize) -> Result<(), HeaderError> {
        while at + 8 <= buf.len() {
            let kind = be32(buf, at);
            let len = be32(buf, at + 4) as usize;
            let data_start = at + 8;
            let data_end = data_start.saturating_add(len);
            if kind == EXT_END {
                return Ok(());
            }
            if data_end > buf.len() {
                return Err(HeaderError::Invalid(format!("header extension {kind:#010x} runs past its area")));
            }
            let data = &buf[data_start..data_end];
            match kind {
                EXT_BACKING_FORMAT => {
                    let name = String::from_utf8_lossy(data);
                    self.backing_format =
                        Some(name.parse().map_err(|_| HeaderError::Unsupported(format!("backing format {name:?}")))?);
                }
                EXT_BITMAPS => self.has_bitmaps = true,
                _ => {}
            }
            at = data_start + len.next_multiple_of(8);
        }
        Ok(())
    }

    /// Validates the offsets the resize path follows.
    pub fn check_tables(&self, file_len: u64) -> Result<(), HeaderError> {
        let cs = self.cluster_size();
        let aligned = |off: u64| off.is_multiple_of(cs);
        if !aligned(self.l1_table_offset) || !aligned(self.refcount_table_offset) {
            return Err(HeaderError::Invalid("table offset is not cluster-aligned".into()));
        }
        let l1_bytes = u64::from(self.l1_size) * 8;
        let rt_bytes = u64::from(self.refcount_table_clusters) * cs;
        // QEMU refuses larger tables, and they are read into memory whole.
        if l1_bytes > MAX_L1_BYTES || rt_bytes > MAX_REFTABLE_BYTES {
            return Err(HeaderError::Invalid("a table is larger than QEMU allows".into()));
        }
        // Checked: offsets near 2^64 must not wrap around to inside the file.
        let within = |offset: u64, bytes: u64| offset.checked_add(bytes).is_some_and(|end| end <= file_len);
        if !within(self.l1_table_offset, l1_bytes)
            || !within(self.refcount_table_offset, rt_bytes)
            || self.refcount_table_clusters == 0
        {
            return Err(HeaderError::Invalid("a table lies past the end of the file".into()));
        }
        Ok(())
    }
}

/// The metadata of a new, empty v3 image with 64 KiB clusters and 16-bit
/// refcounts, laid out as QEMU 7.2 lays it out: cluster 0 the header (and
/// extensions and backing name), cluster 1 the refcount table, cluster 2
/// its only refcount block, L1 from cluster 3. The file ends at the end of
/// the L1 table; everything not written reads as zeros.
pub(crate) struct NewImage<'a> {
    pub size: u64,
    pub backing: Option<(&'a [u8], ImageFormat)>,
    pub lazy_refcounts: bool,
}

/// Where a new image's pieces go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Layout {
    pub l1_entries: u64,
    pub file_len: u64,
}

const NEW_CLUSTER_SIZE: u64 = 1 << CLUSTER_BITS;
const NEW_REFTABLE_OFFSET: u64 = NEW_CLUSTER_SIZE;
const NEW_REFBLOCK_OFFSET: u64 = 2 * NEW_CLUSTER_SIZE;
const NEW_L1_OFFSET: u64 = 3 * NEW_CLUSTER_SIZE;

/// Largest virtual size whose L1 table QEMU accepts, for our cluster size.
pub(crate) const MAX_NEW_SIZE: u64 = (MAX_L1_BYTES / 8) * NEW_CLUSTER_SIZE * (NEW_CLUSTER_SIZE / 8);

impl NewImage<'_> {
    pub fn layout(&self) -> Layout {
        let l1_entries = self.size.div_ceil(NEW_CLUSTER_SIZE * (NEW_CLUSTER_SIZE / 8));
        Layout { l1_entries, file_len: NEW_L1_OFFSET + l1_entries * 8 }
    }

    /// The first cluster's used bytes: header, extensions, backing name.
    fn header_bytes(&self, layout: Layout) -> Vec<u8> {
        let mut buf = vec![0u8; HEADER_V3_LEN as usize];
        buf[..4].copy_from_slice(&MAGIC);
        put32(&mut buf, 4, 3);
        put32(&mut buf, 20, CLUSTER_BITS);
        put64(&mut buf, 24, self.size);
        // l1_size fits: layout() callers cap the size at MAX_NEW_SIZE.
        put32(&mut buf, 36, u32::try_from(layout.l1_entries).unwrap_or(u32::MAX));
        put64(&mut buf, 40, if layout.l1_entries == 0 { 0 } else { NEW_L1_OFFSET });
        put64(&mut buf, 48, NEW_REFTABLE_OFFSET);
        put32(&mut buf, 56, 1);
        let compat = if self.lazy_refcounts { COMPAT_LAZY_REFCOUNTS } else { 0 };
        put64(&mut buf, 80, compat);
        put32(&mut buf, 96, REFCOUNT_ORDER);
        put32(&mut buf, 100, HEADER_V3_LEN);
        if let Some((name, format)) = self.backing {
            let fmt = format.as_str().as_bytes();
            let mut ext = vec![0u8; 8 + fmt.len().next_multiple_of(8)];
            put32(&mut ext, 0, EXT_BACKING_FORMAT);
            put32(&mut ext, 4, u32::try_from(fmt.len()).unwrap_or(0));
            ext[8..8 + fmt.len()].copy_from_slice(fmt);
            buf.extend_from_slice(&ext);
            buf.extend_from_slice(&[0u8; 8]); // end of extensions
            let name_offset = buf.len() as u64;
            put64(&mut buf, 8, name_offset);
            put32(&mut buf, 16, u32::try_from(name.len()).unwrap_or(0));
            buf.extend_from_slice(name);
        } else {
            buf.extend_from_slice(&[0u8; 8]);
        }
        buf
    }

    /// Writes the metadata into an empty file.
    pub fn write(&self, file: &File) -> io::Result<()> {
        let layout = self.layout();
        file.write_all_at(&self.header_bytes(layout), 0)?;
        let mut reftable_entry = [0u8; 8];
        put64(&mut reftable_entry, 0, NEW_REFBLOCK_OFFSET);
        file.write_all_at(&reftable_entry, NEW_REFTABLE_OFFSET)?;
        let metadata_clusters = 3 + (layout.l1_entries * 8).div_ceil(NEW_CLUSTER_SIZE);
        let refcounts: Vec<u8> = (0..metadata_clusters).flat_map(|_| [0u8, 1u8]).collect();
        file.write_all_at(&refcounts, NEW_REFBLOCK_OFFSET)?;
        file.set_len(layout.file_len)
    }
}

pub(crate) fn be32(buf: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&buf[at..at + 4]);
    u32::from_be_bytes(b)
}

pub(crate) fn be64(buf: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&buf[at..at + 8]);
    u64::from_be_bytes(b)
}

pub(crate) fn put32(buf: &mut [u8], at: usize, v: u32) {
    buf[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

pub(crate) fn put64(buf: &mut [u8], at: usize, v: u64) {
    buf[at..at + 8].copy_from_slice(&v.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blank(size: u64) -> Vec<u8> {
        let img = NewImage { size, backing: None, lazy_refcounts: false };
        img.header_bytes(img.layout())
    }

    #[test]
    fn new_header_round_trips() {
        let img = NewImage {
            size: 1 << 30,
            backing: Some((b"/images/base.qcow2", ImageFormat::Qcow2)),
            lazy_refcounts: false,
        };

        let parsed = Header::parse(&img.header_bytes(img.layout())).unwrap();

        assert_eq!(parsed.size, 1 << 30);
        assert_eq!(parsed.l1_size, 2);
        assert_eq!(parsed.l1_table_offset, 3 << 16);
        assert_eq!(parsed.backing_file.as_deref(), Some(&b"/images/base.qcow2"[..]));
        assert_eq!(parsed.backing_format, Some(ImageFormat::Qcow2));
    }

    #[test]
    fn one_gib_layout_matches_qemu() {
        let img = NewImage { size: 1 << 30, backing: None, lazy_refcounts: false };

        assert_eq!(img.layout(), Layout { l1_entries: 2, file_len: 196_624 });
    }

    #[test]
    fn max_new_size_is_two_pib() {
        assert_eq!(MAX_NEW_SIZE, 2 << 50);
    }

    #[test]
    fn unknown_incompatible_bit_is_unsupported() {
        let mut buf = blank(1 << 20);
        put64(&mut buf, 72, 1 << 40);

        let err = Header::parse(&buf).unwrap_err();

        assert!(matches!(err, HeaderError::Unsupported(ref f) if f.contains("0x10000000000")));
    }

    #[test]
    fn encryption_is_unsupported() {
        let mut buf = blank(1 << 20);
        put32(&mut buf, 32, 2);

        let err = Header::parse(&buf).unwrap_err();

        assert!(matches!(err, HeaderError::Unsupported(ref f) if f == "encryption"));
    }

    #[test]
    fn external_data_file_is_unsupported() {
        let mut buf = blank(1 << 20);
        put64(&mut buf, 72, INCOMPAT_DATA_FILE);

        let err = Header::parse(&buf).unwrap_err();

        assert!(matches!(err, HeaderError::Unsupported(ref f) if f == "external data file"));
    }

    /// A table whose end lies past 2^64 used to wrap around to inside the file (a
    /// panic on the overflow in debug builds), and the resize path went on to
    /// allocate the whole table: up to 8 PiB.
    #[test]
    fn table_end_past_two_to_the_64_is_invalid() {
        let mut buf = blank(1 << 20);
        put64(&mut buf, 48, 0u64.wrapping_sub(1 << 23).wrapping_add(1 << 16));
        put32(&mut buf, 56, 1 << 7);
        let header = Header::parse(&buf).unwrap();

        let err = header.check_tables(1 << 20).unwrap_err();

        assert!(matches!(err, HeaderError::Invalid(ref r) if r.contains("past the end")), "{err:?}");
    }

    /// Tables QEMU would refuse are refused before anything is read into memory,
    /// however large the (sparse) file.
    #[test]
    fn tables_larger_than_qemu_allows_are_invalid() {
        let mut buf = blank(1 << 20);
        put32(&mut buf, 56, 1 << 20);
        let header = Header::parse(&buf).unwrap();

        let err = header.check_tables(1 << 40).unwrap_err();

        assert!(matches!(err, HeaderError::Invalid(ref r) if r.contains("larger than QEMU allows")), "{err:?}");
    }

    #[test]
    fn version_four_is_unsupported() {
        let mut buf = blank(1 << 20);
        put32(&mut buf, 4, 4);

        let err = Header::parse(&buf).unwrap_err();

        assert!(matches!(err, HeaderError::Unsupported(ref f) if f == "qcow2 version 4"));
    }
}
