//! The one glob engine: what `check` validates, what discovery expands and what rules'
//! `files:` filters match are the same compiled [`PathGlob`], so whatever `check` accepts,
//! `run` follows.
//!
//! Syntax (globset's, with `*` kept within one directory): `*`, `?`, `[abc]`, `[!abc]`,
//! `{log,txt}` alternatives, and `**` as a whole path component for any number of
//! directories. The pattern is made lexically normal first (`//` and `.` dropped, `..`
//! resolved, without touching the disk), so `./logs/*.log` matches the paths the walk
//! finds.
//!
//! Expansion walks from the pattern's literal base directory, one component at a time,
//! reading only the directories the pattern can reach (a `{…}` group holding a `/` spans
//! components, so such a pattern walks everything below its base, bounded like `**`).
//! Directory entries are visited in name order, so the result does not depend on the
//! file system's listing order. Symbolic links are followed, and a directory already
//! visited for the same pattern component (by device and inode) is not entered again, so
//! a link loop under `**` ends and a directory reachable by two paths is reported by the
//! first in name order; `**` also stops at [`MAX_RECURSIVE_DEPTH`].

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use globset::{GlobBuilder, GlobMatcher};
use thiserror::Error;

/// How many directories deep `**` descends below the point where it starts.
pub const MAX_RECURSIVE_DEPTH: usize = 32;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum GlobError {
    #[error("the pattern must be an absolute path")]
    NotAbsolute,
    #[error("the pattern names a directory, not files; add a file pattern such as `/*.log`")]
    NoFileName,
    #[error("{0}")]
    Syntax(String),
}

/// A compiled path glob. Cheap to clone.
#[derive(Debug, Clone)]
pub struct PathGlob {
    pattern: String,
    matcher: GlobMatcher,
    base: PathBuf,
    /// The components after `base`, each compiled on its own for the walk.
    steps: Vec<Step>,
}

#[derive(Debug, Clone)]
enum Step {
    /// A plain name: no directory listing needed.
    Literal(String),
    /// A name pattern within one directory.
    Wild(GlobMatcher),
    /// `**`: zero or more directories.
    AnyDirs,
}

fn compile(pattern: &str) -> Result<GlobMatcher, GlobError> {
    GlobBuilder::new(pattern)
        .literal_separator(true)
        .build()
        .map(|g| g.compile_matcher())
        .map_err(|e| GlobError::Syntax(e.kind().to_string()))
}

fn is_wild(component: &str) -> bool {
    component.contains(['*', '?', '[', '{', '\\'])
}

impl PathGlob {
    /// Compiles an absolute path pattern.
    pub fn new(pattern: &str) -> Result<Self, GlobError> {
        if !pattern.starts_with('/') {
            return Err(GlobError::NotAbsolute);
        }
        let pattern = normalise(pattern);
        let matcher = compile(&pattern)?;
        let mut base = PathBuf::from("/");
        let mut steps = Vec::new();
        // A group holding a `/` spans components: walk everything below the literal base
        // and let the whole-pattern matcher decide.
        let spanning = separator_in_group(&pattern);
        for name in pattern.split('/').filter(|c| !c.is_empty()) {
            if spanning && (!steps.is_empty() || is_wild(name)) {
                steps = vec![Step::AnyDirs];
                break;
            }
            if steps.is_empty() && !is_wild(name) {
                base.push(name);
            } else if name == "**" {
                steps.push(Step::AnyDirs);
            } else if is_wild(name) {
                steps.push(Step::Wild(compile(name)?));
            } else {
                steps.push(Step::Literal(name.to_owned()));
            }
        }
        // The last literal component is the file name, not a directory to start from.
        if steps.is_empty() {
            let name = base
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .ok_or(GlobError::NoFileName)?;
            base.pop();
            steps.push(Step::Literal(name));
        }
        Ok(Self {
            pattern,
            matcher,
            base,
            steps,
        })
    }

    /// Whether the pattern ends with `**`, which names every file below a directory
    /// (binary and compressed ones included).
    pub fn ends_with_any_dirs(&self) -> bool {
        matches!(self.steps.last(), Some(Step::AnyDirs)) && self.pattern.ends_with("**")
    }

    pub fn as_str(&self) -> &str {
        &self.pattern
    }

    /// Whether `path` matches the whole pattern.
    pub fn is_match(&self, path: &Path) -> bool {
        self.matcher.is_match(path)
    }

    /// The directory part of the pattern before its first glob character: where the walk
    /// starts, and the directory to watch for new files.
    pub fn base_dir(&self) -> &Path {
        &self.base
    }

    /// The regular files (after following symlinks) the pattern names right now, sorted.
    /// Missing and unreadable directories are skipped (they may appear or become readable
    /// later); any other failure to list a directory (out of descriptors, an I/O error)
    /// is an error, because the result would then wrongly say that files are gone.
    pub fn expand(&self) -> std::io::Result<Vec<PathBuf>> {
        self.expand_with_dirs().map(|(found, _)| found)
    }

    /// [`expand`](Self::expand), and every directory the walk looked into: the places
    /// where a new matching file (or a directory leading to one) can appear.
    pub fn expand_with_dirs(&self) -> std::io::Result<(Vec<PathBuf>, Vec<PathBuf>)> {
        let mut walk = Walk {
            steps: &self.steps,
            visited: HashSet::new(),
            dirs: Vec::new(),
            found: Vec::new(),
            error: None,
        };
        walk.visit(&self.base, 0, 0);
        if let Some(error) = walk.error {
            return Err(error);
        }
        let mut found = walk.found;
        found.retain(|p| self.matcher.is_match(p));
        found.sort();
        found.dedup();
        Ok((found, walk.dirs))
    }
}

/// `pattern` with `//` and `.` components dropped and `..` resolved, lexically (a `..`
/// above the root stays at the root, as the kernel does).
fn normalise(pattern: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in pattern.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            _ => parts.push(part),
        }
    }
    format!("/{}", parts.join("/"))
}

/// Whether a `{…}` or `[…]` group of `pattern` contains a `/`.
fn separator_in_group(pattern: &str) -> bool {
    let (mut braces, mut in_class, mut escaped) = (0usize, false, false);
    for c in pattern.chars() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' => escaped = true,
            '[' if !in_class => in_class = true,
            ']' if in_class => in_class = false,
            '{' if !in_class => braces += 1,
            '}' if !in_class => braces = braces.saturating_sub(1),
            '/' if in_class || braces > 0 => return true,
            _ => {}
        }
    }
    false
}

struct Walk<'a> {
    steps: &'a [Step],
    /// (device, inode, step) of directories entered, so a link loop is entered once.
    visited: HashSet<(u64, u64, usize)>,
    /// The directories looked into, in the order entered.
    dirs: Vec<PathBuf>,
    found: Vec<PathBuf>,
    /// The first failure that makes the result incomplete.
    error: Option<std::io::Error>,
}

impl Walk<'_> {
    /// Matches `steps[step..]` below `dir`; `depth` counts directories descended by `**`.
    fn visit(&mut self, dir: &Path, step: usize, depth: usize) {
        let Ok(meta) = fs::metadata(dir) else {
            return;
        };
        if !meta.is_dir() || !self.visited.insert((meta.dev(), meta.ino(), step)) {
            return;
        }
        self.dirs.push(dir.to_path_buf());
        let last = step + 1 == self.steps.len();
        match &self.steps[step] {
            Step::Literal(name) => self.take(dir.join(name), step, last, depth),
            Step::Wild(matcher) => {
                for path in self.entries(dir) {
                    if path.file_name().is_some_and(|n| matcher.is_match(n)) {
                        self.take(path, step, last, depth);
                    }
                }
            }
            Step::AnyDirs => {
                // Zero directories: the next step applies here (or, last, every file).
                if last {
                    for path in self.entries(dir) {
                        self.take(path.clone(), step, true, depth);
                    }
                } else {
                    self.visit(dir, step + 1, depth);
                }
                if depth < MAX_RECURSIVE_DEPTH {
                    for path in self.entries(dir) {
                        self.visit(&path, step, depth + 1);
                    }
                }
            }
        }
    }

    /// The entries of `dir` in name order. A directory that is missing, not a directory
    /// or not readable has none; any other failure is kept for [`PathGlob::expand`].
    fn entries(&mut self, dir: &Path) -> Vec<PathBuf> {
        use std::io::ErrorKind;
        match fs::read_dir(dir) {
            Ok(rd) => {
                let mut entries: Vec<PathBuf> =
                    rd.filter_map(Result::ok).map(|e| e.path()).collect();
                entries.sort();
                entries
            }
            Err(error) => {
                let expected = matches!(
                    error.kind(),
                    ErrorKind::NotFound | ErrorKind::PermissionDenied | ErrorKind::NotADirectory
                );
                if !expected && self.error.is_none() {
                    self.error = Some(error);
                }
                Vec::new()
            }
        }
    }

    /// `path` matched step `step`: a file if it was the last, else a directory to enter.
    fn take(&mut self, path: PathBuf, step: usize, last: bool, depth: usize) {
        if last {
            if fs::metadata(&path).is_ok_and(|m| m.is_file()) {
                self.found.push(path);
            }
        } else {
            self.visit(&path, step + 1, depth);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(path: &Path) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, "").unwrap();
    }

    fn names(glob: &PathGlob, root: &Path) -> Vec<String> {
        glob.expand()
            .unwrap()
            .iter()
            .map(|p| p.strip_prefix(root).unwrap().display().to_string())
            .collect()
    }

    #[test]
    fn the_walk_names_every_directory_it_looked_into() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        touch(&r.join("pods/a/app/0.log"));
        touch(&r.join("pods/b/other/0.log"));
        fs::create_dir_all(r.join("pods/c")).unwrap();
        let glob = PathGlob::new(&format!("{}/pods/*/app/*.log", r.display())).unwrap();
        let (found, mut dirs) = glob.expand_with_dirs().unwrap();
        assert_eq!(found, [r.join("pods/a/app/0.log")]);
        dirs.sort();
        // The base, each candidate directory (an empty one too, where `app` may appear),
        // and the `app` directory that exists; not `b/other`, which cannot match.
        assert_eq!(
            dirs,
            [
                r.join("pods"),
                r.join("pods/a"),
                r.join("pods/a/app"),
                r.join("pods/b"),
                r.join("pods/c"),
            ]
        );
    }

    #[test]
    fn base_dir_stops_at_the_first_glob() {
        let base = |p: &str| PathGlob::new(p).unwrap().base_dir().to_path_buf();
        assert_eq!(base("/var/log/app/*.log"), PathBuf::from("/var/log/app"));
        assert_eq!(base("/var/log/**/x.log"), PathBuf::from("/var/log"));
        assert_eq!(base("/var/log/app.log"), PathBuf::from("/var/log"));
        assert_eq!(base("/srv/*/logs/*.log"), PathBuf::from("/srv"));
        assert_eq!(base("/var/log/*.{log,txt}"), PathBuf::from("/var/log"));
    }

    #[test]
    fn expansion_agrees_with_matching() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for f in [
            "a.log",
            "b.txt",
            "c.gz",
            "sub/d.log",
            "sub/deeper/e.log",
            "srv1/logs/f.log",
            "srv2/other/g.log",
        ] {
            touch(&root.join(f));
        }
        fs::create_dir(root.join("dir.log")).unwrap();
        let glob = |p: &str| PathGlob::new(&format!("{}/{p}", root.display())).unwrap();
        assert_eq!(names(&glob("*.{log,txt}"), root), ["a.log", "b.txt"]);
        assert_eq!(names(&glob("*.log"), root), ["a.log"], "no directories");
        assert_eq!(
            names(&glob("**/*.log"), root),
            [
                "a.log",
                "srv1/logs/f.log",
                "srv2/other/g.log",
                "sub/d.log",
                "sub/deeper/e.log"
            ]
        );
        assert_eq!(names(&glob("*/logs/*.log"), root), ["srv1/logs/f.log"]);
        assert_eq!(
            names(&glob("sub/**"), root),
            ["sub/d.log", "sub/deeper/e.log"]
        );
        assert_eq!(names(&glob("a.log"), root), ["a.log"]);
        assert_eq!(names(&glob("[ab].*"), root), ["a.log", "b.txt"]);
        for path in glob("**/*.log").expand().unwrap() {
            assert!(glob("**/*.log").is_match(&path));
        }
    }

    #[test]
    fn symlink_loops_end() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        touch(&root.join("logs/app.log"));
        std::os::unix::fs::symlink(".", root.join("logs/l1")).unwrap();
        std::os::unix::fs::symlink(".", root.join("logs/l2")).unwrap();
        let glob = PathGlob::new(&format!("{}/logs/**/*.log", root.display())).unwrap();
        assert_eq!(names(&glob, root), ["logs/app.log"]);
    }

    #[test]
    fn odd_spellings_are_normalised_and_groups_may_span_directories() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for f in [
            "logs/a.log",
            "nginx/n.log",
            "app/current/c.log",
            "app/old/o.log",
        ] {
            touch(&root.join(f));
        }
        let r = root.display();
        for spelling in [
            format!("{r}/./logs/*.log"),
            format!("{r}//logs//*.log"),
            format!("{r}/nginx/../logs/*.log"),
        ] {
            let glob = PathGlob::new(&spelling).unwrap();
            assert_eq!(names(&glob, root), ["logs/a.log"], "{spelling}");
            assert!(glob.is_match(&root.join("logs/a.log")), "{spelling}");
        }
        let spanning = PathGlob::new(&format!("{r}/{{nginx,app/current}}/*.log")).unwrap();
        assert_eq!(names(&spanning, root), ["app/current/c.log", "nginx/n.log"]);
        assert!(
            !PathGlob::new(&format!("{r}/logs/*.log"))
                .unwrap()
                .ends_with_any_dirs()
        );
        assert!(
            PathGlob::new(&format!("{r}/logs/**"))
                .unwrap()
                .ends_with_any_dirs()
        );
    }

    #[test]
    fn refusals() {
        assert_eq!(
            PathGlob::new("logs/*.log").unwrap_err(),
            GlobError::NotAbsolute
        );
        for root in ["/", "/.", "/..", "//"] {
            assert_eq!(
                PathGlob::new(root).unwrap_err(),
                GlobError::NoFileName,
                "{root}"
            );
        }
        assert!(matches!(
            PathGlob::new("/var/log/[a.log").unwrap_err(),
            GlobError::Syntax(_)
        ));
    }
}
