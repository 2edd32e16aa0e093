//! Random identifiers (an agent's id, a silence's id, an exposed sandbox's key and
//! token), from the kernel's entropy.

use std::io::Read;

/// `n` random bytes as `2n` hex digits. Without `/dev/urandom` (a bare chroot), the
/// standard hasher's per-process random keys, mixed with the process id and the time,
/// stand in: unique enough for an id.
pub fn random_hex(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    let read = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
    if read.is_err() {
        use std::hash::{BuildHasher, Hasher};
        for (i, chunk) in bytes.chunks_mut(8).enumerate() {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u32(std::process::id());
            h.write_usize(i);
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            h.write_u128(nanos);
            let word = h.finish().to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gives_two_digits_per_byte_and_differs_between_calls() {
        let a = random_hex(8);
        assert_eq!(a.len(), 16);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(a, random_hex(8));
        assert_eq!(random_hex(3).len(), 6);
    }
}
