//! The directories worth watching for a glob, and the rotated siblings of a file.
//! (Expanding a glob is [`PathGlob::expand`](crate::path_glob::PathGlob::expand).)

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

/// `dir` if it exists, otherwise its closest existing ancestor. Watching that ancestor
/// notices when the missing directories are created.
pub fn nearest_existing(dir: &Path) -> Option<PathBuf> {
    dir.ancestors().find(|d| d.is_dir()).map(Path::to_path_buf)
}

/// Directories to watch so that writes to `paths` and new files for the globs wake the
/// tailer: each file's parent (and its symlink target's parent) and each glob's base
/// directory (`bases`).
pub fn watch_dirs<'a>(
    bases: impl Iterator<Item = &'a Path>,
    paths: impl Iterator<Item = &'a Path>,
) -> HashSet<PathBuf> {
    let mut dirs = HashSet::new();
    for base in bases {
        if let Some(dir) = nearest_existing(base) {
            dirs.insert(dir);
        }
    }
    for path in paths {
        if let Some(parent) = path.parent() {
            dirs.insert(parent.to_path_buf());
        }
        if let Ok(real) = fs::canonicalize(path)
            && let Some(parent) = real.parent()
        {
            dirs.insert(parent.to_path_buf());
        }
    }
    dirs
}

/// Whether `name` is a rotated sibling of `base` (`app.log.1`, `app.log-20261129`), not
/// a compressed one.
pub fn is_rotated_sibling(name: &str, base: &str) -> bool {
    let Some(rest) = name.strip_prefix(base) else {
        return false;
    };
    let compressed = [".gz", ".bz2", ".xz", ".zst", ".lz4", ".zip"]
        .iter()
        .any(|ext| rest.ends_with(ext));
    (rest.starts_with('.') || rest.starts_with('-') || rest.starts_with('_')) && !compressed
}

/// See [`rotation_order`].
pub type RotationOrder = (u8, std::cmp::Reverse<u64>, String);

/// A sort key that orders rotated siblings of `base` from oldest to newest when their
/// timestamps tie: numbered ones (`app.log.3` before `app.log.1`) by falling number, then
/// others (`app.log-20261128` before `app.log-20261129`) by name.
pub fn rotation_order(path: &Path, base: &str) -> RotationOrder {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let number = name
        .strip_prefix(base)
        .and_then(|rest| rest.strip_prefix('.'))
        .and_then(|n| n.parse::<u64>().ok());
    match number {
        Some(n) => (0, std::cmp::Reverse(n), String::new()),
        None => (1, std::cmp::Reverse(0), name),
    }
}

/// Whether `dir` is on a local filesystem, whose changes all come with inotify events.
/// Network and FUSE filesystems (changes made on another machine or by a daemon send no
/// event) are not; neither is a directory that cannot be examined.
pub fn local_filesystem(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    const REMOTE: [i64; 6] = [
        0x6969,      // NFS
        0xff53_4d42, // CIFS
        0xfe53_4d42, // SMB2
        0x517b,      // SMB
        0x6573_5546, // FUSE
        0x0102_1997, // 9P
    ];
    let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    let mut stats = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: a NUL-terminated path and room for one `statfs`, filled on success.
    if unsafe { libc::statfs(path.as_ptr(), stats.as_mut_ptr()) } != 0 {
        return false;
    }
    // SAFETY: statfs succeeded, so the structure is initialised.
    let stats = unsafe { stats.assume_init() };
    // The field's width differs between platforms.
    #[allow(clippy::unnecessary_cast)]
    let kind = stats.f_type as i64;
    !REMOTE.contains(&kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_order_is_oldest_first() {
        let mut names = [
            "app.log.1",
            "app.log.10",
            "app.log.2",
            "app.log-20261129",
            "app.log-20261128",
        ];
        names.sort_by_key(|n| rotation_order(Path::new(n), "app.log"));
        assert_eq!(
            names,
            [
                "app.log.10",
                "app.log.2",
                "app.log.1",
                "app.log-20261128",
                "app.log-20261129"
            ]
        );
    }

    #[test]
    fn rotated_siblings() {
        assert!(is_rotated_sibling("app.log.1", "app.log"));
        assert!(is_rotated_sibling("app.log-20261129", "app.log"));
        assert!(!is_rotated_sibling("app.log.2.gz", "app.log"));
        assert!(!is_rotated_sibling("app.log", "app.log"));
        assert!(!is_rotated_sibling("app.logger", "app.log"));
    }
}
