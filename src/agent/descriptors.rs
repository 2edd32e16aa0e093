//! File descriptors: the agent raises its soft limit to the hard one at start, and keeps
//! a reserve for the state database, delivery and the admin endpoint, so that many log
//! files cannot take the descriptors everything else needs. When the files need more, the
//! tailer follows what fits, says so once, and follows the rest as room appears.

/// Descriptors kept for everything but followed files: the state database (three
/// connections, each with its WAL and shared memory), delivery's connections, the admin
/// endpoint's connections, inotify, the runtime and standard streams.
pub const RESERVE: u64 = 64 + crate::ops::admin_conn::MAX_CONNECTIONS as u64;

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (many distributions start services
/// at 1,024 with a hard limit far above). Returns the soft limit in force afterwards.
pub fn raise_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `getrlimit` writes a `rlimit` into the valid, exclusively borrowed struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return 1024;
    }
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
            limit.rlim_cur = limit.rlim_max;
        }
    }
    limit.rlim_cur
}

/// How many log files the tailer may hold open under the current soft limit.
pub fn max_open_files() -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: as in `raise_limit`.
    let soft = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        limit.rlim_cur
    } else {
        1024
    };
    let room = soft.saturating_sub(RESERVE).max(16);
    usize::try_from(room).unwrap_or(usize::MAX)
}
