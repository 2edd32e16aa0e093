//! `chattail test`: the rules run over sample logs or the journal, printing what would be
//! posted.

use std::fs::File;
use std::io::{self, BufReader, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;

use super::{EXIT_CONFIG, load};
use crate::config::{self, UrlPolicy};
use crate::rule_test;
use crate::terminal_text::TerminalSafe;

/// `chattail test --journal`: the rules over the journal's entries, oldest first.
pub(super) fn test_journal(
    config_path: &std::path::Path,
    directory: Option<PathBuf>,
    units: &[String],
    timestamps: bool,
) -> anyhow::Result<ExitCode> {
    use crate::journal::{JournalReader, ReaderEvent, ReaderOptions, Start};
    let Some(config) = load(config_path, UrlPolicy::Optional) else {
        return Ok(ExitCode::from(EXIT_CONFIG));
    };
    let mut globs = Vec::new();
    for unit in units {
        match config::UnitGlob::new(unit) {
            Ok(g) => globs.push(g),
            Err(e) => {
                eprintln!("error: --unit `{unit}` is not a valid glob: {}", e.kind());
                return Ok(ExitCode::from(EXIT_CONFIG));
            }
        }
    }
    let config = Arc::new(config);
    let configured = config.journal.as_ref();
    let reads = |unit: &str| {
        if globs.is_empty() {
            configured.is_none_or(|j| j.reads_unit(unit))
        } else {
            globs.iter().any(|g| g.is_match(unit))
        }
    };
    let options = ReaderOptions {
        directory: directory.or_else(|| configured.and_then(|j| j.directory.clone())),
        start: Start::Beginning,
        follow: false,
        max_message: configured.map_or(config::DEFAULT_MAX_LINE_BYTES, |j| j.max_line_bytes),
        program: PathBuf::from(
            std::env::var_os("CHATTAIL_JOURNALCTL").unwrap_or_else(|| "journalctl".into()),
        ),
    };
    let clock = if timestamps {
        rule_test::Clock::Rfc3339
    } else {
        rule_test::Clock::AtOnce
    };
    // Sample lines and the journal are shown, never obeyed by the terminal.
    let mut out = TerminalSafe(io::stdout().lock());
    let mut test = rule_test::RuleTest::new(Arc::clone(&config), clock);
    let mut reader = JournalReader::new(options, None);
    let mut number = 0;
    let mut written: io::Result<()> = Ok(());
    while !reader.is_finished() {
        let more = reader.poll(1 << 20, &mut |entry| {
            let Some(message) = &entry.message else {
                return;
            };
            if written.is_err() || !reads(&entry.unit) {
                return;
            }
            number += 1;
            written = test.journal_entry(
                &entry.unit,
                message,
                &entry.fields,
                (number, entry.realtime_ms),
                &mut out,
            );
        });
        written
            .as_ref()
            .map_err(|e| anyhow::anyhow!("writing the report: {e}"))?;
        for event in reader.take_events() {
            match event {
                ReaderEvent::CannotStart { error } => {
                    anyhow::bail!("cannot read the journal: {error}")
                }
                ReaderEvent::Exited { why, said, .. } => {
                    anyhow::bail!("journalctl failed ({why:?}): {}", said.trim())
                }
                _ => {}
            }
        }
        if !more && !reader.is_finished() {
            // journalctl has not written the next entries yet.
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
    test.journal_end(&mut out)?;
    test.finish(&mut out)?;
    Ok(ExitCode::SUCCESS)
}

pub(super) fn test(
    config_path: &std::path::Path,
    logs: &[PathBuf],
    timestamps: bool,
) -> anyhow::Result<ExitCode> {
    let Some(config) = load(config_path, UrlPolicy::Optional) else {
        return Ok(ExitCode::from(EXIT_CONFIG));
    };
    // Sample lines and the journal are shown, never obeyed by the terminal.
    let mut out = TerminalSafe(io::stdout().lock());
    let clock = if timestamps {
        rule_test::Clock::Rfc3339
    } else {
        rule_test::Clock::AtOnce
    };
    let mut test = rule_test::RuleTest::new(Arc::new(config), clock);
    if logs.is_empty() {
        let mut stdin = io::stdin().lock();
        test.input("(stdin)", &mut stdin, &mut out)
            .context("reading standard input")?;
    }
    for log in logs {
        let file = File::open(log).with_context(|| format!("opening {}", log.display()))?;
        let name = log.display().to_string();
        let mut reader = BufReader::with_capacity(64 * 1024, file);
        test.input(&name, &mut reader, &mut out)
            .with_context(|| format!("reading {}", log.display()))?;
    }
    test.finish(&mut out)?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}
