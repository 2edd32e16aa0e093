//! What a journal entry says about its writer, beyond its message: the values of the
//! `{identifier}`, `{pid}` and `{priority}` built-ins. (`{unit}` is read from the entry's
//! `{file}`, `journal:UNIT`, so an event resumed after a restart still has it.)

/// The writer of one journal entry. Values are as the journal holds them, cut to
/// [`MAX_FIELD_BYTES`]; a field the entry lacks is empty.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JournalFields {
    /// `SYSLOG_IDENTIFIER` (for the kernel, `kernel`).
    pub identifier: String,
    /// `_PID`, or `SYSLOG_PID` for entries relayed by syslog.
    pub pid: String,
    /// `PRIORITY`, 0 (emerg) to 7 (debug).
    pub priority: String,
}

/// The most bytes kept of a field other than `MESSAGE`: names, numbers and ids are short,
/// and a hostile writer must not make every entry large.
pub const MAX_FIELD_BYTES: usize = 256;

/// The unit of a journal entry's `{file}` (`journal:UNIT`), or `None` for a file's path.
pub fn unit_of(file: &str) -> Option<&str> {
    file.strip_prefix(crate::config::JOURNAL_PREFIX)
}

/// The file id's inode of a unit's entries: FNV-1a of its name, the same on every run
/// (pending multiline events are stored by it).
pub fn unit_file_number(unit: &str) -> u64 {
    unit.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}
