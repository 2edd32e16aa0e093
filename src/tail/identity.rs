//! What makes two opens the same file, and how a replaced, rotated or copied file is
//! recognised.
//!
//! A file is the same file when its device and inode ([`FileKey`]) are the same *and* it
//! still starts with the bytes it started with when it was first read (its
//! [`Fingerprint`], up to [`PREFIX_LEN`]). The key alone is not enough: an inode is reused
//! once a file is deleted, and copytruncate rewrites a file in place under the same inode.
//! The first bytes alone are not enough either: many logs start alike. The same idea as
//! Vector's file-source fingerprinter, with the key kept so that a rename is never taken
//! for a new file.
//!
//! - Reading a file from its start fills its fingerprint as the bytes go by
//!   ([`Fingerprint::grow`]); a file taken up at its end, or resumed, reads it at once.
//! - A known fingerprint that no longer matches means the file was cut or replaced in
//!   place: it is read again from its start (after recovering what a copytruncate copy
//!   holds).
//! - A sibling that starts like a followed file is its copy (copytruncate), not a missed
//!   rotation.

use std::fs::{self, File};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

/// How many of a file's first bytes identify it (with its device and inode).
pub const PREFIX_LEN: usize = 512;

/// A file's device and inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileKey {
    pub dev: u64,
    pub ino: u64,
}

impl FileKey {
    pub fn of(metadata: &fs::Metadata) -> Self {
        Self {
            dev: metadata.dev(),
            ino: metadata.ino(),
        }
    }
}

/// A file's first bytes, up to [`PREFIX_LEN`] (fewer while the file is shorter). Empty
/// means not known yet: nothing has been read from the file's start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Fingerprint {
    bytes: Vec<u8>,
}

impl Fingerprint {
    /// Nothing known yet: reading from the start will fill it.
    pub(super) fn unknown() -> Self {
        Self::default()
    }

    /// The first bytes as the state saved them.
    pub(super) fn from_saved(bytes: Vec<u8>) -> Self {
        Self { bytes }
    }

    /// The first bytes of `file`, `size` bytes long, as they are now (unknown if they
    /// cannot be read).
    pub(super) fn of_file(file: &File, size: u64) -> Self {
        let mut bytes = vec![0; PREFIX_LEN.min(usize::try_from(size).unwrap_or(PREFIX_LEN))];
        if file.read_exact_at(&mut bytes, 0).is_err() {
            bytes.clear();
        }
        Self { bytes }
    }

    pub(super) fn is_known(&self) -> bool {
        !self.bytes.is_empty()
    }

    /// The bytes, for the state.
    pub(super) fn to_vec(&self) -> Vec<u8> {
        self.bytes.clone()
    }

    /// Whether `file` still starts with these bytes. An unknown fingerprint matches any
    /// file.
    pub(super) fn matches(&self, file: &File) -> bool {
        if self.bytes.is_empty() {
            return true;
        }
        // Checked after every read: a buffer on the stack, not an allocation each time.
        // (A longer fingerprint, from a state written by some other version, takes the
        // heap.)
        let mut stack = [0u8; PREFIX_LEN];
        let mut heap = Vec::new();
        let head = match stack.get_mut(..self.bytes.len()) {
            Some(head) => head,
            None => {
                heap.resize(self.bytes.len(), 0);
                &mut heap[..]
            }
        };
        file.read_exact_at(head, 0).is_ok() && head == self.bytes.as_slice()
    }

    /// Whether a file read up to `offset` was cut or replaced in place since: its
    /// fingerprint is known and no longer matches. (At offset 0 there is nothing to lose.)
    pub(super) fn replaced(&self, file: &File, offset: u64) -> bool {
        offset > 0 && !self.matches(file)
    }

    /// The chunk read at `offset`: while the file is read from its start, its first
    /// bytes become its fingerprint.
    pub(super) fn grow(&mut self, offset: u64, chunk: &[u8]) {
        if self.bytes.len() < PREFIX_LEN && self.bytes.len() as u64 == offset {
            let take = (PREFIX_LEN - self.bytes.len()).min(chunk.len());
            self.bytes.extend_from_slice(&chunk[..take]);
        }
    }

    /// Forgets the bytes (the file was cut: it is read again from its start).
    pub(super) fn forget(&mut self) {
        self.bytes.clear();
    }

    /// Whether the file at `path` starts with the same bytes as this fingerprint (one a
    /// prefix of the other), as a copy of the file does. An unknown fingerprint is like
    /// nothing.
    pub(super) fn starts_alike(&self, path: &Path) -> bool {
        Self::saved_starts_alike(&self.bytes, path)
    }

    /// [`starts_alike`](Self::starts_alike) for first bytes as the state saved them.
    pub(super) fn saved_starts_alike(bytes: &[u8], path: &Path) -> bool {
        if bytes.is_empty() {
            return false;
        }
        let Ok(file) = super::reading::open_regular(path) else {
            return false;
        };
        let mut head = vec![0; bytes.len()];
        let mut filled = 0;
        while filled < head.len() {
            match file.read_at(&mut head[filled..], filled as u64) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(_) => return false,
            }
        }
        filled > 0 && head[..filled] == bytes[..filled]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file_with(dir: &Path, name: &str, content: &[u8]) -> (std::path::PathBuf, File) {
        let path = dir.join(name);
        fs::write(&path, content).unwrap();
        let file = File::open(&path).unwrap();
        (path, file)
    }

    #[test]
    fn a_file_read_from_its_start_is_recognised_until_its_first_bytes_change() {
        let dir = tempfile::tempdir().unwrap();
        let (path, file) = file_with(dir.path(), "app.log", b"first line\nsecond\n");
        let mut fp = Fingerprint::unknown();
        assert!(fp.matches(&file), "unknown matches anything");
        assert!(!fp.replaced(&file, 100));
        fp.grow(0, b"first line\n");
        fp.grow(11, b"second\n");
        // A chunk not at the fingerprint's end (a resumed read) adds nothing.
        fp.grow(100, b"elsewhere");
        assert_eq!(fp.to_vec(), b"first line\nsecond\n");
        assert!(fp.matches(&file) && !fp.replaced(&file, 18));
        // Appending keeps it the same file.
        fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"third\n")
            .unwrap();
        assert!(fp.matches(&file));
        // Rewritten in place under the same inode (copytruncate, then new lines).
        fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&path)
            .unwrap()
            .write_all(b"new content\n")
            .unwrap();
        assert!(fp.replaced(&file, 24));
        // Nothing read yet: nothing can be lost.
        assert!(!fp.replaced(&file, 0));
        fp.forget();
        assert!(!fp.is_known() && fp.matches(&file));
    }

    #[test]
    fn the_fingerprint_stops_at_its_length_and_is_read_whole_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let content = vec![b'x'; PREFIX_LEN * 2];
        let (_, file) = file_with(dir.path(), "big.log", &content);
        let mut grown = Fingerprint::unknown();
        grown.grow(0, &content);
        let read = Fingerprint::of_file(&file, content.len() as u64);
        assert_eq!(grown, read);
        assert_eq!(read.to_vec().len(), PREFIX_LEN);
        let (_, short) = file_with(dir.path(), "short.log", b"ab");
        assert_eq!(Fingerprint::of_file(&short, 2).to_vec(), b"ab");
    }

    #[test]
    fn a_copy_starts_alike_and_an_unrelated_file_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let fp = Fingerprint::from_saved(b"2026-12-01 first line\n".to_vec());
        let (copy, _) = file_with(dir.path(), "app.log.1", b"2026-12-01 first line\nmore\n");
        let (short, _) = file_with(dir.path(), "app.log.2", b"2026-12-01 fi");
        let (other, _) = file_with(dir.path(), "app.log.3", b"something else\n");
        assert!(fp.starts_alike(&copy));
        assert!(fp.starts_alike(&short), "a copy cut short is still a copy");
        assert!(!fp.starts_alike(&other));
        assert!(!fp.starts_alike(&dir.path().join("missing")));
        assert!(!Fingerprint::unknown().starts_alike(&copy));
    }
}
