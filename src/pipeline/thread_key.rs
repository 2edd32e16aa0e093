//! Thread keys as Chat gets them.
//!
//! Chat documents keys of up to 4,000 characters but no character set, so chattail sends
//! only `[A-Za-z0-9._-]`, the set other Chat integrations use. A rendered key that is
//! already of that form and at most [`MAX_PLAIN_LEN`] long is sent as it is, so it stays
//! readable; any other is mapped to a readable, cleaned prefix plus a hash of the whole key.
//! The mapping is a pure function with a fixed hash, so the same rendered key gives the
//! same thread on every host, every restart and every version.

/// Keys up to this length that need no cleaning are sent unchanged.
pub const MAX_PLAIN_LEN: usize = 128;
/// How much of the cleaned key a mapped key keeps for readability.
const PREFIX_LEN: usize = 64;

/// The thread key Chat is sent for the rendered key `key`.
pub fn chat_thread_key(key: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if !key.is_empty() && key.len() <= MAX_PLAIN_LEN && key.chars().all(safe) {
        return key.to_owned();
    }
    let mut cleaned = String::with_capacity(PREFIX_LEN);
    for c in key.chars() {
        if cleaned.len() >= PREFIX_LEN {
            break;
        }
        let c = if safe(c) { c } else { '-' };
        // Runs of unsafe characters collapse into one dash.
        if !(c == '-' && cleaned.ends_with('-')) {
            cleaned.push(c);
        }
    }
    let cleaned = cleaned.trim_matches('-');
    let hash = format!(
        "{:016x}{:016x}",
        fnv1a64(key.as_bytes(), 0xcbf2_9ce4_8422_2325),
        fnv1a64(key.as_bytes(), 0x6c62_272e_07bb_0142)
    );
    if cleaned.is_empty() {
        format!("k-{hash}")
    } else {
        format!("{cleaned}-{hash}")
    }
}

/// FNV-1a, 64 bits, from a given offset basis. Fixed forever: thread keys depend on it.
fn fnv1a64(bytes: &[u8], basis: u64) -> u64 {
    bytes.iter().fold(basis, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn plain_keys_pass_unchanged_others_are_mapped_stably() {
        assert_eq!(
            chat_thread_key("db-timeout-orders-db.internal"),
            "db-timeout-orders-db.internal"
        );
        let mapped = chat_thread_key("http-502-POST-/checkout");
        assert!(mapped.starts_with("http-502-POST-checkout-"));
        assert_eq!(
            chat_thread_key("http-502-POST-/checkout"),
            mapped,
            "the same key maps the same way"
        );
        assert_ne!(chat_thread_key("http-502-POST-/checkout/"), mapped);
        assert!(chat_thread_key("").starts_with("k-"));
    }

    proptest! {
        #[test]
        fn mapped_keys_are_safe_bounded_and_deterministic(key in "\\PC{0,300}") {
            let mapped = chat_thread_key(&key);
            prop_assert!(!mapped.is_empty() && mapped.len() <= MAX_PLAIN_LEN);
            prop_assert!(mapped.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')));
            prop_assert_eq!(chat_thread_key(&key), mapped);
        }
    }
}
