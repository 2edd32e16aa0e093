//! Finding the files a glob names, and the directories worth watching for it.

use std::collections::HashSet;
use std::fs;
use std::path::{Component, Path, PathBuf};

use glob::MatchOptions;

const GLOB_OPTIONS: MatchOptions = MatchOptions {
    case_sensitive: true,
    // `*` stays within one directory; `**` crosses directories.
    require_literal_separator: true,
    require_literal_leading_dot: false,
};

/// The regular files (after following symlinks) that `pattern` names right now.
/// Unreadable directories are skipped: they may become readable later.
pub fn expand(pattern: &str) -> Vec<PathBuf> {
    let Ok(paths) = glob::glob_with(pattern, GLOB_OPTIONS) else {
        // The config validated the pattern; a failure here means nothing can match.
        return Vec::new();
    };
    paths
        .filter_map(Result::ok)
        .filter(|p| fs::metadata(p).is_ok_and(|m| m.is_file()))
        .collect()
}

/// The directory part of `pattern` before its first glob character.
pub fn base_dir(pattern: &str) -> PathBuf {
    let mut base = PathBuf::new();
    let path = Path::new(pattern);
    let components: Vec<Component<'_>> = path.components().collect();
    for (i, component) in components.iter().enumerate() {
        let text = component.as_os_str().to_string_lossy();
        let is_last = i + 1 == components.len();
        if is_last || text.contains(['*', '?', '[', '{']) {
            break;
        }
        base.push(component);
    }
    base
}

/// `dir` if it exists, otherwise its closest existing ancestor. Watching that ancestor
/// notices when the missing directories are created.
pub fn nearest_existing(dir: &Path) -> Option<PathBuf> {
    dir.ancestors().find(|d| d.is_dir()).map(Path::to_path_buf)
}

/// Directories to watch so that writes to `paths` and new files for `patterns` wake
/// the tailer: each file's parent (and its symlink target's parent) and each pattern's
/// base directory.
pub fn watch_dirs<'a>(
    patterns: impl Iterator<Item = &'a str>,
    paths: impl Iterator<Item = &'a Path>,
) -> HashSet<PathBuf> {
    let mut dirs = HashSet::new();
    for pattern in patterns {
        if let Some(dir) = nearest_existing(&base_dir(pattern)) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_dir_stops_at_the_first_glob() {
        assert_eq!(
            base_dir("/var/log/app/*.log"),
            PathBuf::from("/var/log/app")
        );
        assert_eq!(base_dir("/var/log/**/x.log"), PathBuf::from("/var/log"));
        assert_eq!(base_dir("/var/log/app.log"), PathBuf::from("/var/log"));
        assert_eq!(base_dir("/srv/*/logs/*.log"), PathBuf::from("/srv"));
    }

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
