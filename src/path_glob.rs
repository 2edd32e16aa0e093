//! The one glob engine: what `check` validates, what discovery expands and what rules'
//! `files:` filters match are the same compiled [`PathGlob`], so whatever `check` accepts,
//! `run` follows.
//!
//! Syntax (globset's, with `*` kept within one directory): `*`, `?`, `[abc]`, `[!abc]`,
//! `{log,txt}` alternatives, and `**` as a whole path component for any number of
//! directories. A `/` inside `{…}` or `[…]` is refused: expansion walks the directory tree
//! one component at a time, and such a group would span components.
//!
//! Expansion walks from the pattern's literal base directory, reading only the
//! directories the pattern can reach. Symbolic links are followed, and a directory already
//! visited for the same pattern component (by device and inode) is not entered again, so
//! a link loop under `**` ends; `**` also stops at [`MAX_RECURSIVE_DEPTH`].

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use globset::{GlobBuilder, GlobMatcher};
use thiserror::Error;

/// How many directories deep `**` descends below the point where it starts.
pub const MAX_RECURSIVE_DEPTH: usize = 32;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum GlobError {
    #[error("the pattern must be an absolute path")]
    NotAbsolute,
    #[error("a `/` inside `{{…}}` or `[…]` is not supported; write one entry per alternative")]
    SeparatorInGroup,
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
        if separator_in_group(pattern) {
            return Err(GlobError::SeparatorInGroup);
        }
        let matcher = compile(pattern)?;
        let mut base = PathBuf::from("/");
        let mut steps = Vec::new();
        for component in Path::new(pattern).components() {
            let Component::Normal(name) = component else {
                continue;
            };
            let name = name.to_string_lossy();
            if steps.is_empty() && !is_wild(&name) {
                base.push(&*name);
            } else if name == "**" {
                steps.push(Step::AnyDirs);
            } else if is_wild(&name) {
                steps.push(Step::Wild(compile(&name)?));
            } else {
                steps.push(Step::Literal(name.into_owned()));
            }
        }
        // The last literal component is the file name, not a directory to start from.
        if steps.is_empty()
            && let Some(name) = base.file_name().map(|n| n.to_string_lossy().into_owned())
        {
            base.pop();
            steps.push(Step::Literal(name));
        }
        Ok(Self {
            pattern: pattern.to_owned(),
            matcher,
            base,
            steps,
        })
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
    /// Unreadable directories are skipped: they may become readable later.
    pub fn expand(&self) -> Vec<PathBuf> {
        let mut walk = Walk {
            steps: &self.steps,
            visited: HashSet::new(),
            found: Vec::new(),
        };
        walk.visit(&self.base, 0, 0);
        let mut found = walk.found;
        found.retain(|p| self.matcher.is_match(p));
        found.sort();
        found.dedup();
        found
    }
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
    found: Vec<PathBuf>,
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
        let last = step + 1 == self.steps.len();
        match &self.steps[step] {
            Step::Literal(name) => self.take(dir.join(name), step, last, depth),
            Step::Wild(matcher) => {
                for path in entries(dir) {
                    if path.file_name().is_some_and(|n| matcher.is_match(n)) {
                        self.take(path, step, last, depth);
                    }
                }
            }
            Step::AnyDirs => {
                // Zero directories: the next step applies here (or, last, every file).
                if last {
                    for path in entries(dir) {
                        self.take(path.clone(), step, true, depth);
                    }
                } else {
                    self.visit(dir, step + 1, depth);
                }
                if depth < MAX_RECURSIVE_DEPTH {
                    for path in entries(dir) {
                        self.visit(&path, step, depth + 1);
                    }
                }
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

fn entries(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .map(|rd| rd.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default()
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
            .iter()
            .map(|p| p.strip_prefix(root).unwrap().display().to_string())
            .collect()
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
        for path in glob("**/*.log").expand() {
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
    fn refusals() {
        assert_eq!(
            PathGlob::new("logs/*.log").unwrap_err(),
            GlobError::NotAbsolute
        );
        assert_eq!(
            PathGlob::new("/var/{log,lib/x}/*.log").unwrap_err(),
            GlobError::SeparatorInGroup
        );
        assert!(matches!(
            PathGlob::new("/var/log/[a.log").unwrap_err(),
            GlobError::Syntax(_)
        ));
    }
}
