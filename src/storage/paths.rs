//! Confinement of caller-given image and ISO paths to the configured
//! directories. Paths are canonicalized (symlinks followed, `..` resolved
//! against the real tree) before the containment check, so neither `..`
//! nor a symlink inside an allowed directory can reach outside it.

use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};

use super::error::StorageError;

/// Resolves an existing file named by a caller to its canonical path, which
/// must lie inside one of `allowed_dirs`.
///
/// Relative names resolve against the first allowed directory.
///
/// # Errors
/// `OutsideAllowedDirs` (naming the allowed directories) if the target lies
/// elsewhere; `ResolvePath` if it does not exist inside them; `AllowedDir` or
/// `NoAllowedDirs` for a bad configuration.
pub fn resolve_confined(input: &str, allowed_dirs: &[PathBuf]) -> Result<PathBuf, StorageError> {
    let allowed = canonical_dirs(allowed_dirs)?;
    resolve_in(input, &allowed)
}

/// Resolves a path for a file that does not exist yet: its parent directory
/// must resolve inside one of `allowed_dirs`, and its last component must be
/// a plain file name (not empty, not `.` or `..`, no NUL). A bare name goes
/// into the first allowed directory.
///
/// # Errors
/// `InvalidFileName` for a bad last component; otherwise as
/// [`resolve_confined`] for the parent.
pub fn resolve_confined_new(input: &str, allowed_dirs: &[PathBuf]) -> Result<PathBuf, StorageError> {
    let (parent, name) = match input.rfind('/') {
        Some(0) => ("/", &input[1..]),
        Some(i) => (&input[..i], &input[i + 1..]),
        None => ("", input),
    };
    check_file_name(input, name)?;
    let allowed = canonical_dirs(allowed_dirs)?;
    let dir = if parent.is_empty() { allowed[0].clone() } else { resolve_in(parent, &allowed)? };
    if !dir.is_dir() {
        return Err(StorageError::ResolvePath {
            input: input.to_string(),
            source: io::Error::from(io::ErrorKind::NotADirectory),
        });
    }
    Ok(dir.join(name))
}

fn check_file_name(input: &str, name: &str) -> Result<(), StorageError> {
    let reason = match name {
        "" => "the file name is empty",
        "." | ".." => "the file name may not be . or ..",
        n if n.contains('\0') => "the file name contains a NUL byte",
        _ => return Ok(()),
    };
    Err(StorageError::InvalidFileName { input: input.to_string(), reason })
}

fn canonical_dirs(allowed_dirs: &[PathBuf]) -> Result<Vec<PathBuf>, StorageError> {
    if allowed_dirs.is_empty() {
        return Err(StorageError::NoAllowedDirs);
    }
    allowed_dirs
        .iter()
        .map(|dir| fs::canonicalize(dir).map_err(|source| StorageError::AllowedDir { path: dir.clone(), source }))
        .collect()
}

fn resolve_in(input: &str, allowed: &[PathBuf]) -> Result<PathBuf, StorageError> {
    let outside = || StorageError::OutsideAllowedDirs { input: input.to_string(), allowed: allowed.to_vec() };
    if input.is_empty() {
        return Err(StorageError::InvalidFileName { input: String::new(), reason: "the path is empty" });
    }
    let joined = allowed[0].join(input);
    match fs::canonicalize(&joined) {
        Ok(real) if allowed.iter().any(|dir| real.starts_with(dir)) => Ok(real),
        Ok(_) => Err(outside()),
        // Do not reveal whether a file outside the allowed directories
        // exists: a name that is outside even lexically is "outside".
        Err(_) if !allowed.iter().any(|dir| lexical(&joined).starts_with(dir)) => Err(outside()),
        Err(source) => Err(StorageError::ResolvePath { input: input.to_string(), source }),
    }
}

/// `path` with `.` dropped and `..` applied to the preceding component,
/// without touching the filesystem.
fn lexical(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
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
}
