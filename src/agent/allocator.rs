//! The C allocator's settings for a long-running agent.
//!
//! glibc's `malloc` gives each thread that allocates its own arena (up to eight per core),
//! and an arena keeps what it once held: an agent with a dozen threads (the runtime's two
//! workers, the ingest loop, the blocking pool's DNS lookups and database reads) carried a
//! dozen arenas of about 200 KiB each. The agent's threads allocate little and rarely at
//! the same moment, so one arena serves them all.

/// Limits glibc to one arena. Call it before any thread is started; elsewhere (musl, other
/// systems) it does nothing.
pub fn use_one_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `mallopt` only sets a tunable of the allocator; it is called before the
    // runtime's threads exist, and `M_ARENA_MAX` takes any positive value.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}
