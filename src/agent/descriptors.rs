//! File descriptors: the agent raises its soft limit to the hard one at start, and keeps
//! a reserve for the state database, delivery and the admin endpoint, so that many log
//! files cannot take the descriptors everything else needs. When the files need more, the
//! tailer follows what fits, says so once, and follows the rest as room appears.

/// Descriptors kept for everything but followed files: the state database (three
/// connections, each with its WAL and shared memory), delivery's connections, the admin
/// endpoint's connections, inotify, the runtime and standard streams.
pub const RESERVE: u64 = 64 + crate::bounded_listener::ADMIN_CONNECTIONS as u64;

/// The descriptor limit (soft, hard), if the kernel tells.
fn limit() -> Option<libc::rlimit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `getrlimit` writes a `rlimit` into the valid, exclusively borrowed struct.
    (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0).then_some(limit)
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (many distributions start services
/// at 1,024 with a hard limit far above).
pub fn raise_limit() {
    let Some(limit) = limit() else {
        return;
    };
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: `setrlimit` only reads the valid `rlimit` it is given.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            tracing::debug!(
                from = limit.rlim_cur,
                to = limit.rlim_max,
                "Raised the descriptor limit."
            );
        }
    }
}

/// How many log files the tailer may hold open under the current soft limit.
pub fn max_open_files() -> usize {
    let soft = limit().map_or(1024, |l| l.rlim_cur);
    let room = soft.saturating_sub(RESERVE).max(16);
    usize::try_from(room).unwrap_or(usize::MAX)
}
