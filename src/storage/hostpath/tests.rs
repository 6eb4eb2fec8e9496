//! Tests of the host path rule: resolution, the non-blocking open, size caps.

use super::*;
use crate::storage::ErrorKind;
use std::os::unix::fs::symlink;

/// An allowed directory with `disk.qcow2` in it, and a sibling outside
/// directory holding `secret`.
struct Tree {
    _root: tempfile::TempDir,
    allowed: PathBuf,
    outside: PathBuf,
}

fn tree() -> Tree {
    let root = tempfile::tempdir().unwrap();
    let allowed = root.path().join("images");
    let outside = root.path().join("private");
    fs::create_dir(&allowed).unwrap();
    fs::create_dir(&outside).unwrap();
    fs::write(allowed.join("disk.qcow2"), b"x").unwrap();
    fs::write(outside.join("secret"), b"x").unwrap();
    Tree { allowed: fs::canonicalize(&allowed).unwrap(), outside: fs::canonicalize(&outside).unwrap(), _root: root }
}

#[test]
fn relative_name_resolves_in_first_allowed_dir() {
    let t = tree();

    let got = resolve_confined("disk.qcow2", std::slice::from_ref(&t.allowed)).unwrap();

    assert_eq!(got, t.allowed.join("disk.qcow2"));
}

#[test]
fn absolute_path_inside_second_allowed_dir_is_accepted() {
    let t = tree();
    let secret = t.outside.join("secret");

    let got = resolve_confined(secret.to_str().unwrap(), &[t.allowed.clone(), t.outside.clone()]).unwrap();

    assert_eq!(got, secret);
}

#[test]
fn dot_dot_escape_is_refused() {
    let t = tree();

    let err = resolve_confined("../private/secret", std::slice::from_ref(&t.allowed)).unwrap_err();

    assert!(matches!(err, StorageError::OutsideAllowedDirs { .. }), "{err}");
    assert!(err.to_string().contains(t.allowed.to_str().unwrap()));
}

#[test]
fn dot_dot_escape_to_missing_file_is_refused_as_outside() {
    let t = tree();

    let err = resolve_confined("../private/nope", std::slice::from_ref(&t.allowed)).unwrap_err();

    assert!(matches!(err, StorageError::OutsideAllowedDirs { .. }), "{err}");
}

#[test]
fn absolute_path_outside_is_refused() {
    let t = tree();
    let secret = t.outside.join("secret");

    let err = resolve_confined(secret.to_str().unwrap(), std::slice::from_ref(&t.allowed)).unwrap_err();

    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(matches!(err, StorageError::OutsideAllowedDirs { .. }), "{err}");
}

#[test]
fn symlink_pointing_outside_is_refused() {
    let t = tree();
    symlink(t.outside.join("secret"), t.allowed.join("link.qcow2")).unwrap();

    let err = resolve_confined("link.qcow2", std::slice::from_ref(&t.allowed)).unwrap_err();

    assert!(matches!(err, StorageError::OutsideAllowedDirs { .. }), "{err}");
}

#[test]
fn symlinked_directory_pointing_outside_is_refused_for_new_file() {
    let t = tree();
    symlink(&t.outside, t.allowed.join("sub")).unwrap();

    let err = resolve_confined_new("sub/new.qcow2", std::slice::from_ref(&t.allowed)).unwrap_err();

    assert!(matches!(err, StorageError::OutsideAllowedDirs { .. }), "{err}");
}

#[test]
fn missing_file_inside_is_not_found() {
    let t = tree();

    let err = resolve_confined("nope.qcow2", std::slice::from_ref(&t.allowed)).unwrap_err();

    assert_eq!(err.kind(), ErrorKind::NotFound);
}

#[test]
fn new_file_name_resolves_in_first_allowed_dir() {
    let t = tree();

    let got = resolve_confined_new("new.qcow2", std::slice::from_ref(&t.allowed)).unwrap();

    assert_eq!(got, t.allowed.join("new.qcow2"));
}

#[test]
fn new_file_with_absolute_parent_inside_is_accepted() {
    let t = tree();
    let input = format!("{}/new.qcow2", t.allowed.display());

    let got = resolve_confined_new(&input, std::slice::from_ref(&t.allowed)).unwrap();

    assert_eq!(got, t.allowed.join("new.qcow2"));
}

#[test]
fn new_file_named_dot_dot_is_refused() {
    let t = tree();

    let err = resolve_confined_new("..", std::slice::from_ref(&t.allowed)).unwrap_err();

    assert!(matches!(err, StorageError::InvalidFileName { .. }), "{err}");
}

#[test]
fn new_file_ending_in_slash_dot_is_refused() {
    let t = tree();

    let err = resolve_confined_new("sub/.", std::slice::from_ref(&t.allowed)).unwrap_err();

    assert!(matches!(err, StorageError::InvalidFileName { .. }), "{err}");
}

#[test]
fn new_file_with_empty_name_is_refused() {
    let t = tree();

    let err = resolve_confined_new("", std::slice::from_ref(&t.allowed)).unwrap_err();

    assert!(matches!(err, StorageError::InvalidFileName { .. }), "{err}");
}

#[test]
fn new_file_in_parent_outside_is_refused() {
    let t = tree();

    let err = resolve_confined_new("../private/x.qcow2", std::slice::from_ref(&t.allowed)).unwrap_err();

    assert!(matches!(err, StorageError::OutsideAllowedDirs { .. }), "{err}");
}

#[test]
fn no_allowed_dirs_is_an_error() {
    let err = resolve_confined("disk.qcow2", &[]).unwrap_err();

    assert!(matches!(err, StorageError::NoAllowedDirs));
}

fn allowed(t: &Tree) -> AllowedDirs {
    AllowedDirs::new(std::slice::from_ref(&t.allowed)).unwrap()
}

fn mkfifo(p: &Path) {
    nix::unistd::mkfifo(p, Mode::from_bits_truncate(0o600)).unwrap();
}

#[test]
fn open_gives_real_path_and_size_of_regular_file() {
    let t = tree();

    let f = allowed(&t).open("disk.qcow2").unwrap();

    assert_eq!((f.path(), f.kind(), f.len()), (t.allowed.join("disk.qcow2").as_path(), FileKind::Regular, 1));
}

#[test]
fn bare_name_is_found_in_second_allowed_dir() {
    let t = tree();
    let dirs = AllowedDirs::new(&[t.allowed.clone(), t.outside.clone()]).unwrap();

    let got = dirs.resolve("secret").unwrap();

    assert_eq!(got, t.outside.join("secret"));
}

#[test]
fn fifo_inside_is_refused_without_blocking() {
    // Opening a FIFO nobody writes would block for ever: the test finishing proves
    // it was never opened for reading.
    let t = tree();
    mkfifo(&t.allowed.join("pipe.qcow2"));

    let err = allowed(&t).open("pipe.qcow2").unwrap_err();

    assert!(matches!(err, StorageError::NotAFile { what: "a FIFO", .. }), "{err}");
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert_eq!(err.to_string(), "\"pipe.qcow2\" is a FIFO, not a regular file");
}

#[test]
fn symlink_to_fifo_inside_is_refused() {
    let t = tree();
    mkfifo(&t.allowed.join("pipe"));
    symlink(t.allowed.join("pipe"), t.allowed.join("link.iso")).unwrap();

    let err = allowed(&t).open("link.iso").unwrap_err();

    assert!(matches!(err, StorageError::NotAFile { what: "a FIFO", .. }), "{err}");
}

#[test]
fn dev_zero_is_outside() {
    let t = tree();

    let err = allowed(&t).open("/dev/zero").unwrap_err();

    assert!(matches!(err, StorageError::OutsideAllowedDirs { .. }), "{err}");
}

#[test]
fn proc_self_fd_0_is_outside() {
    let t = tree();

    let err = allowed(&t).open("/proc/self/fd/0").unwrap_err();

    assert!(matches!(err, StorageError::OutsideAllowedDirs { .. }), "{err}");
}

#[test]
fn symlink_to_dev_zero_is_outside() {
    let t = tree();
    symlink("/dev/zero", t.allowed.join("zero.img")).unwrap();

    let err = allowed(&t).open("zero.img").unwrap_err();

    assert!(matches!(err, StorageError::OutsideAllowedDirs { .. }), "{err}");
}

#[test]
fn character_device_inside_an_allowed_dir_is_refused() {
    // An allowed directory that happens to hold a device node (here: /dev itself).
    let dirs = AllowedDirs::new(&[PathBuf::from("/dev")]).unwrap();

    let err = dirs.open("zero").unwrap_err();

    assert!(matches!(err, StorageError::NotAFile { what: "a character device", .. }), "{err}");
}

#[test]
fn block_device_is_refused_unless_allowed() {
    let Some(dev) = fs::read_dir("/dev")
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| fs::metadata(p).is_ok_and(|m| m.file_type().is_block_device()))
    else {
        panic!("no block device in /dev to test with");
    };
    let dirs = AllowedDirs::new(&[PathBuf::from("/dev")]).unwrap();
    let name = dev.to_str().unwrap();

    let refused = dirs.open(name).unwrap_err();
    let opened = dirs.clone().with_block_devices(true).open(name).map(|f| f.kind());

    assert!(matches!(refused, StorageError::NotAFile { .. }), "{refused}");
    assert!(refused.to_string().contains("storage.allow_block_devices"), "{refused}");
    assert_eq!(opened.ok(), Some(FileKind::BlockDevice));
}

#[test]
fn directory_is_refused() {
    let t = tree();
    fs::create_dir(t.allowed.join("sub")).unwrap();

    let err = allowed(&t).open("sub").unwrap_err();

    assert!(matches!(err, StorageError::NotAFile { what: "a directory", .. }), "{err}");
}

#[test]
fn read_capped_refuses_file_over_the_cap_before_reading() {
    let t = tree();
    fs::write(t.allowed.join("big"), vec![b'a'; 4097]).unwrap();

    let err = allowed(&t).open("big").unwrap().read_capped(4096).unwrap_err();

    assert!(matches!(err, StorageError::TooLarge { limit_bytes: 4096, .. }), "{err}");
}

#[test]
fn read_capped_reads_file_at_the_cap() {
    let t = tree();
    fs::write(t.allowed.join("ok"), vec![b'a'; 4096]).unwrap();

    let data = allowed(&t).open("ok").unwrap().read_capped(4096).unwrap();

    assert_eq!(data.len(), 4096);
}

#[test]
fn open_named_follows_relative_names_inside() {
    let t = tree();

    let f = allowed(&t).open_named("../images/disk.qcow2", &t.allowed.join("../images/disk.qcow2")).unwrap();

    assert_eq!(f.path(), t.allowed.join("disk.qcow2"));
}

#[test]
fn open_named_refuses_relative_escape() {
    let t = tree();

    let err = allowed(&t).open_named("../private/secret", &t.allowed.join("../private/secret")).unwrap_err();

    assert!(matches!(err, StorageError::OutsideAllowedDirs { .. }), "{err}");
}

#[test]
fn open_recorded_refuses_fifo_swapped_in_for_a_disk() {
    let t = tree();
    let disk = t.allowed.join("disk.qcow2");
    fs::remove_file(&disk).unwrap();
    mkfifo(&disk);

    let err = open_recorded(&disk, false).unwrap_err();

    assert!(matches!(err, StorageError::NotAFile { what: "a FIFO", .. }), "{err}");
}

#[test]
fn long_input_is_quoted_at_most_200_characters() {
    let t = tree();
    let long = format!("/etc/{}", "x".repeat(100_000));

    let msg = allowed(&t).open(&long).unwrap_err().to_string();

    assert!(msg.len() < 400, "{} bytes", msg.len());
    assert!(msg.contains("(99805 more bytes)"), "{msg}");
}

#[test]
fn path_with_nul_is_refused() {
    let t = tree();

    let err = allowed(&t).open("disk\0.qcow2").unwrap_err();

    assert!(matches!(err, StorageError::InvalidFileName { .. }), "{err}");
}
