//! Tests of the chain resolver against images `qemu-img` wrote, including hostile
//! ones: backing files outside (absolute, relative, through a symlink, a device), a
//! FIFO nobody writes (opening it would block: the test finishing proves it was not
//! opened), loops, missing backing formats and the depth cap.

use std::fs;
use std::path::{Path, PathBuf};

use super::*;
use crate::storage::qcow2::{CreateOptions, create_blank, create_overlay};
use crate::storage::testutil::{qemu_img, qemu_img_info};

const GIB: u64 = 1 << 30;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `images/` (allowed) and `outside/` holding `secret.raw`, canonical.
struct Tree {
    _root: tempfile::TempDir,
    images: PathBuf,
    outside: PathBuf,
}

impl Tree {
    fn new() -> Self {
        let root = tempfile::tempdir().unwrap();
        let images = root.path().join("images");
        let outside = root.path().join("outside");
        fs::create_dir(&images).unwrap();
        fs::create_dir(&outside).unwrap();
        qemu_img(&["create", "-f", "raw", s(&outside.join("secret.raw")), "1M"]);
        Tree { images: fs::canonicalize(images).unwrap(), outside: fs::canonicalize(outside).unwrap(), _root: root }
    }

    fn allowed(&self) -> AllowedDirs {
        AllowedDirs::new(std::slice::from_ref(&self.images)).unwrap()
    }

    fn img(&self, name: &str) -> PathBuf {
        self.images.join(name)
    }

    /// A qcow2 `name` in images/ whose backing file is `backing` as given (`-u`: not
    /// checked by qemu-img).
    fn overlay_naming(&self, name: &str, backing: &str, format: &str) -> PathBuf {
        let p = self.img(name);
        qemu_img(&["create", "-f", "qcow2", "-u", "-b", backing, "-F", format, s(&p), "1G"]);
        p
    }
}

fn is_outside_backing(err: &StorageError) -> bool {
    matches!(err, StorageError::Backing { source, .. } if matches!(**source, StorageError::OutsideAllowedDirs { .. }))
}

#[test]
fn chain_follows_relative_names() {
    let t = Tree::new();
    let (base, mid, top) = (t.img("base.raw"), t.img("mid.qcow2"), t.img("top.qcow2"));
    qemu_img(&["create", "-f", "raw", s(&base), "1G"]);
    qemu_img(&["create", "-f", "qcow2", "-b", "base.raw", "-F", "raw", s(&mid)]);
    qemu_img(&["create", "-f", "qcow2", "-b", "mid.qcow2", "-F", "qcow2", s(&top)]);

    let chain = resolve_chain(&top, ImageFormat::Qcow2, &t.allowed()).unwrap();

    let got: Vec<_> = chain.iter().map(|i| (i.path.clone(), i.format)).collect();
    assert_eq!(got, vec![(top, ImageFormat::Qcow2), (mid, ImageFormat::Qcow2), (base, ImageFormat::Raw)]);
    assert_eq!(chain[2].virtual_size_bytes, GIB);
}

#[test]
fn chain_agrees_with_qemu_img_on_our_overlay() {
    let t = Tree::new();
    let (base, top) = (t.img("base.qcow2"), t.img("top.qcow2"));
    create_blank(&base, GIB, &CreateOptions::default()).unwrap();
    create_overlay(&top, &base, ImageFormat::Qcow2, None).unwrap();

    let chain = resolve_chain(&top, ImageFormat::Qcow2, &t.allowed()).unwrap();

    let qemu = qemu_img_info(&top);
    let theirs: Vec<_> = qemu.as_array().unwrap().iter().map(|i| i["filename"].as_str().unwrap().to_owned()).collect();
    let ours: Vec<_> = chain.iter().map(|i| i.path.display().to_string()).collect();
    assert_eq!(ours, theirs);
}

#[test]
fn raw_top_is_never_parsed() {
    // A raw disk a guest wrote a qcow2 header into, naming a file outside.
    let t = Tree::new();
    let disk = t.overlay_naming("guest.raw", s(&t.outside.join("secret.raw")), "raw");

    let chain = resolve_chain(&disk, ImageFormat::Raw, &t.allowed()).unwrap();

    assert_eq!((chain.len(), chain[0].format, chain[0].backing_file.is_none()), (1, ImageFormat::Raw, true));
}

#[test]
fn absolute_backing_outside_is_refused() {
    let t = Tree::new();
    let top = t.overlay_naming("top.qcow2", s(&t.outside.join("secret.raw")), "raw");

    let err = resolve_chain(&top, ImageFormat::Qcow2, &t.allowed()).unwrap_err();

    assert!(is_outside_backing(&err), "{err}");
    let msg = crate::error::chain(&err);
    assert!(msg.starts_with(&format!("backing file of {}: ", top.display())), "{msg}");
    assert!(msg.contains("secret.raw\" is outside the allowed directories"), "{msg}");
}

#[test]
fn relative_backing_escaping_with_dot_dot_is_refused() {
    let t = Tree::new();
    let top = t.overlay_naming("top.qcow2", "../outside/secret.raw", "raw");

    let err = resolve_chain(&top, ImageFormat::Qcow2, &t.allowed()).unwrap_err();

    assert!(is_outside_backing(&err), "{err}");
}

#[test]
fn relative_backing_to_etc_shadow_is_refused() {
    let t = Tree::new();
    let top = t.overlay_naming("top.qcow2", "../../../../../../../../etc/shadow", "raw");

    let err = resolve_chain(&top, ImageFormat::Qcow2, &t.allowed()).unwrap_err();

    assert!(is_outside_backing(&err), "{err}");
}

#[test]
fn backing_symlink_pointing_outside_is_refused() {
    let t = Tree::new();
    std::os::unix::fs::symlink(t.outside.join("secret.raw"), t.img("base.raw")).unwrap();
    let top = t.overlay_naming("top.qcow2", "base.raw", "raw");

    let err = resolve_chain(&top, ImageFormat::Qcow2, &t.allowed()).unwrap_err();

    assert!(is_outside_backing(&err), "{err}");
}

#[test]
fn backing_device_is_refused() {
    let t = Tree::new();
    let top = t.overlay_naming("top.qcow2", "/dev/zero", "raw");

    let err = resolve_chain(&top, ImageFormat::Qcow2, &t.allowed()).unwrap_err();

    assert!(is_outside_backing(&err), "{err}");
}

#[test]
fn backing_fifo_inside_is_refused_without_opening_it() {
    let t = Tree::new();
    nix::unistd::mkfifo(&t.img("base.raw"), nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let top = t.overlay_naming("top.qcow2", "base.raw", "raw");

    let err = resolve_chain(&top, ImageFormat::Qcow2, &t.allowed()).unwrap_err();

    assert!(
        matches!(&err, StorageError::Backing { source, .. } if matches!(**source, StorageError::NotAFile { what: "a FIFO", .. })),
        "{err}"
    );
}

#[test]
fn backing_named_as_protocol_is_refused() {
    let t = Tree::new();
    let top = t.overlay_naming("top.qcow2", "json:{\"driver\":\"file\",\"filename\":\"/etc/shadow\"}", "raw");

    let err = resolve_chain(&top, ImageFormat::Qcow2, &t.allowed()).unwrap_err();

    assert!(matches!(err, StorageError::InvalidBacking { .. }), "{err}");
}

#[test]
fn backing_without_format_is_refused_with_the_fix() {
    let t = Tree::new();
    let base = t.img("base.qcow2");
    create_blank(&base, GIB, &CreateOptions::default()).unwrap();
    let top = t.img("top.qcow2");
    qemu_img(&["create", "-f", "qcow2", "-b", s(&base), "-F", "qcow2", s(&top)]);
    // qemu-img 7.2 always records the format; turn its extension into the end marker,
    // which leaves an image as older tools wrote them.
    let mut bytes = fs::read(&top).unwrap();
    let at = bytes.windows(4).position(|w| w == [0xe2, 0x79, 0x2a, 0xca]).unwrap();
    bytes[at..at + 4].copy_from_slice(&[0; 4]);
    fs::write(&top, bytes).unwrap();
    assert!(qemu_img_info(&top)[0].get("backing-filename-format").is_none());

    let err = resolve_chain(&top, ImageFormat::Qcow2, &t.allowed()).unwrap_err();

    assert!(matches!(err, StorageError::NoBackingFormat { .. }), "{err}");
    assert!(err.to_string().contains(&format!("qemu-img rebase -u -F qcow2 -b {} {}", s(&base), s(&top))), "{err}");
}

#[test]
fn backing_declared_raw_is_not_parsed_even_with_a_qcow2_header() {
    // mid.qcow2 is declared raw by top: its own backing file (outside) is never looked at.
    let t = Tree::new();
    t.overlay_naming("mid.qcow2", s(&t.outside.join("secret.raw")), "raw");
    let top = t.overlay_naming("top.qcow2", "mid.qcow2", "raw");

    let chain = resolve_chain(&top, ImageFormat::Qcow2, &t.allowed()).unwrap();

    assert_eq!((chain.len(), chain[1].format), (2, ImageFormat::Raw));
}

#[test]
fn chain_through_symlink_inside_resolves_relative_names_from_the_link() {
    // QEMU resolves a relative backing name against the directory of the image as
    // it was named (the link), not of the link's target.
    let t = Tree::new();
    fs::create_dir(t.img("sub")).unwrap();
    qemu_img(&["create", "-f", "raw", s(&t.img("base.raw")), "1M"]);
    qemu_img(&["create", "-f", "raw", s(&t.img("sub/base.raw")), "2M"]);
    t.overlay_naming("sub/mid.qcow2", "base.raw", "raw");
    std::os::unix::fs::symlink("sub/mid.qcow2", t.img("mid.qcow2")).unwrap();
    let top = t.overlay_naming("top.qcow2", "mid.qcow2", "qcow2");

    let chain = resolve_chain(&top, ImageFormat::Qcow2, &t.allowed()).unwrap();

    assert_eq!((chain[1].path.clone(), chain[2].path.clone()), (t.img("sub/mid.qcow2"), t.img("base.raw")));
}

#[test]
fn cycle_is_refused() {
    let t = Tree::new();
    let (a, b) = (t.img("a.qcow2"), t.img("b.qcow2"));
    create_blank(&a, GIB, &CreateOptions::default()).unwrap();
    create_overlay(&b, &a, ImageFormat::Qcow2, None).unwrap();
    // Make a's backing file b, by swapping a for an overlay of b.
    let a2 = t.img("a2.qcow2");
    create_overlay(&a2, &b, ImageFormat::Qcow2, None).unwrap();
    fs::rename(&a2, &a).unwrap();

    let err = resolve_chain(&b, ImageFormat::Qcow2, &t.allowed()).unwrap_err();

    assert!(matches!(err, StorageError::BackingChainCycle { .. }), "{err}");
}

#[test]
fn cycle_through_symlink_is_refused() {
    let t = Tree::new();
    let (a, link) = (t.img("a.qcow2"), t.img("link.qcow2"));
    std::os::unix::fs::symlink(&a, &link).unwrap();
    qemu_img(&["create", "-f", "qcow2", "-u", "-b", s(&link), "-F", "qcow2", s(&a), "1G"]);

    let err = resolve_chain(&a, ImageFormat::Qcow2, &t.allowed()).unwrap_err();

    assert!(matches!(err, StorageError::BackingChainCycle { .. }), "{err}");
}

#[test]
fn self_reference_is_refused() {
    let t = Tree::new();
    let a = t.overlay_naming("a.qcow2", "a.qcow2", "qcow2");

    let err = resolve_chain(&a, ImageFormat::Qcow2, &t.allowed()).unwrap_err();

    assert!(matches!(err, StorageError::BackingChainCycle { .. }), "{err}");
}

fn ladder(t: &Tree, len: usize) -> Vec<PathBuf> {
    let names: Vec<PathBuf> = (0..len).map(|i| t.img(&format!("l{i}.qcow2"))).collect();
    create_blank(&names[0], GIB, &CreateOptions::default()).unwrap();
    names.windows(2).for_each(|pair| create_overlay(&pair[1], &pair[0], ImageFormat::Qcow2, None).unwrap());
    names
}

#[test]
fn chain_longer_than_limit_is_refused() {
    let t = Tree::new();
    let names = ladder(&t, MAX_CHAIN_LEN + 1);

    let err = resolve_chain(&names[MAX_CHAIN_LEN], ImageFormat::Qcow2, &t.allowed()).unwrap_err();

    assert!(matches!(err, StorageError::BackingChainTooDeep { limit: MAX_CHAIN_LEN, .. }), "{err}");
}

#[test]
fn chain_at_limit_is_accepted() {
    let t = Tree::new();
    let names = ladder(&t, MAX_CHAIN_LEN);

    let chain = resolve_chain(&names[MAX_CHAIN_LEN - 1], ImageFormat::Qcow2, &t.allowed()).unwrap();

    assert_eq!(chain.len(), MAX_CHAIN_LEN);
}

#[test]
fn missing_backing_file_inside_is_invalid_input_naming_the_image() {
    let t = Tree::new();
    let top = t.overlay_naming("top.qcow2", "gone.qcow2", "qcow2");

    let err = resolve_chain(&top, ImageFormat::Qcow2, &t.allowed()).unwrap_err();

    assert_eq!(err.kind(), crate::storage::ErrorKind::InvalidInput);
    assert!(crate::error::chain(&err).contains(&format!("backing file of {}", top.display())), "{err}");
}
