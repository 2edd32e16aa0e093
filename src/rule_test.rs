//! `chattail test`: runs the rules over sample logs and shows what each match would post.
//!
//! This is the rule author's tool, in the spirit of fail2ban-regex but for the whole rule:
//! for every matching line (or multiline event) it shows the rule, the captures, the
//! rendered thread key and the rendered Chat text, and at the end how often each rule hit
//! and how many lines no rule matched. It drives the agent's own
//! [`Pipeline`](crate::pipeline::Pipeline), so multiline events, context lines and burst
//! windows behave exactly as in `run`: for rules with `dedup` it shows whether each match
//! is posted or counted, and the summaries the windows post. Lines arrive at once unless
//! `--timestamps rfc3339` takes their time from the line itself. It reads only the given
//! inputs: no network, no state directory.
//!
//! Differences from `run`, on purpose: every rule applies to every input whatever its
//! `files:` filter, and an input takes the format (`cri`, `docker`: decoded the same way)
//! and multiline settings of the `files` entry whose glob matches its path, or else the
//! multiline settings of the first entry that has `multiline` (said in the
//! output).

use std::collections::BTreeMap;
use std::io::{self, BufRead, Write};
use std::path::Path;
use std::sync::Arc;

use crate::config::Config;
use crate::pipeline::{Cause, FileId, HitReport, Notification, Origin, Output, Pipeline, Routed};

/// Where the time of a line comes from, for burst windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Clock {
    /// Every line arrives at the same instant: windows close only at the end.
    #[default]
    AtOnce,
    /// The first RFC 3339 timestamp among a line's first words; a line without one keeps
    /// the time of the line before.
    Rfc3339,
}

/// Counts gathered over all inputs.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    pub lines: u64,
    /// Lines that were (part of) a line or event some rule matched.
    pub matched_lines: u64,
    /// Hits per rule name, for every rule in the config (zero included).
    pub hits: BTreeMap<String, u64>,
}

/// One `chattail test` run over any number of inputs.
pub struct RuleTest {
    config: Arc<Config>,
    pipeline: Pipeline,
    clock: Clock,
    now_ms: i64,
    inputs: u64,
    summary: Summary,
}

impl RuleTest {
    pub fn new(config: Arc<Config>, clock: Clock) -> Self {
        let summary = Summary {
            hits: config.rules.iter().map(|r| (r.name.clone(), 0)).collect(),
            ..Summary::default()
        };
        Self {
            pipeline: Pipeline::new(Arc::clone(&config), Vec::new(), Vec::new())
                .ignoring_file_filters()
                .rendering_counted_hits()
                .alone()
                .deciding_absences(),
            config,
            clock,
            now_ms: 0,
            inputs: 0,
            summary,
        }
    }

    /// Runs the rules over every line of `input`, writing each match to `out`.
    ///
    /// `name` is what `{file}` renders to and what the output calls the input. Lines are
    /// split on `\n`, a trailing `\r` is dropped, and a last line without a newline still
    /// counts. The input's pending multiline event completes at its end.
    pub fn input(
        &mut self,
        name: &str,
        input: &mut dyn BufRead,
        out: &mut dyn Write,
    ) -> io::Result<()> {
        self.inputs += 1;
        let id = FileId {
            dev: 0,
            ino: self.inputs,
        };
        let spec = self.files_entry(name);
        if let Some(i) = spec {
            let entry = &self.config.files[i];
            let mut how = Vec::new();
            if entry.format != crate::config::LogFormat::Plain {
                how.push(format!("records are decoded as {}", entry.format.name()));
            }
            if entry.multiline.is_some() {
                how.push("lines join into events".to_owned());
            }
            writeln!(
                out,
                "({name}: {} as files[{i}] ({}) says)\n",
                how.join(", "),
                entry.pattern
            )?;
        }
        let path = Path::new(name);
        let mut report = Report::new(name, out, &mut self.summary);
        let mut buf = Vec::with_capacity(4096);
        let mut number: u64 = 0;
        loop {
            buf.clear();
            if input.read_until(b'\n', &mut buf)? == 0 {
                break;
            }
            number += 1;
            let line = strip_newline(&buf);
            if self.clock == Clock::Rfc3339
                && let Some(ms) = line_time_ms(line)
            {
                self.now_ms = self.now_ms.max(ms);
            }
            report.summaries_are("window closed");
            self.pipeline.tick(self.now_ms, false, &mut report);
            report.end_block()?;
            let origin = Origin {
                id,
                path,
                spec: spec.unwrap_or(usize::MAX),
                number,
                stream: None,
                journal: None,
            };
            report.summaries_are("window closed or evicted");
            self.pipeline.line(&origin, line, self.now_ms, &mut report);
            report.end_block()?;
            report.summary.lines += 1;
        }
        report.summaries_are("window closed");
        self.pipeline.tick(self.now_ms, true, &mut report);
        report.end_block()?;
        if report.malformed > 0 {
            let format = spec.map_or("plain", |i| self.config.files[i].format.name());
            writeln!(
                report.out,
                "({name}: {} record(s) were not {format} records; they were matched as plain text)\n",
                report.malformed
            )?;
        }
        Ok(())
    }

    /// Runs the rules over one journal entry of `unit`, as `run` would (its `{file}` is
    /// `journal:UNIT`, multiline events and context group per unit, as `journal:` says).
    /// `number` counts the entries, for the output; `at_ms` is the entry's time, which
    /// `--timestamps` uses.
    pub fn journal_entry(
        &mut self,
        unit: &str,
        message: &[u8],
        fields: &crate::pipeline::journal_fields::JournalFields,
        (number, at_ms): (u64, Option<i64>),
        out: &mut dyn Write,
    ) -> io::Result<()> {
        if self.clock == Clock::Rfc3339
            && let Some(ms) = at_ms
        {
            self.now_ms = self.now_ms.max(ms);
        }
        let name = format!("{}{unit}", crate::config::JOURNAL_PREFIX);
        let spec = if self.config.journal.is_some() {
            crate::config::JOURNAL_SPEC
        } else {
            usize::MAX
        };
        let origin = Origin {
            id: FileId {
                dev: 1,
                ino: crate::pipeline::journal_fields::unit_file_number(unit),
            },
            path: Path::new(&name),
            spec,
            number,
            stream: None,
            journal: Some(fields),
        };
        let mut report = Report::new(&name, out, &mut self.summary);
        report.summaries_are("window closed");
        self.pipeline.tick(self.now_ms, false, &mut report);
        report.end_block()?;
        report.summaries_are("window closed or evicted");
        self.pipeline
            .line(&origin, message, self.now_ms, &mut report);
        report.end_block()?;
        report.summary.lines += 1;
        Ok(())
    }

    /// The journal's entries ended: pending multiline events complete.
    pub fn journal_end(&mut self, out: &mut dyn Write) -> io::Result<()> {
        let mut report = Report::new("journal", out, &mut self.summary);
        report.summaries_are("window closed");
        self.pipeline.tick(self.now_ms, true, &mut report);
        report.end_block()
    }

    /// Writes the summaries of the windows still open when the inputs end, the per-rule
    /// table and the line counts, and returns the counts.
    pub fn finish(mut self, out: &mut dyn Write) -> io::Result<Summary> {
        let mut pending = Vec::new();
        self.pipeline.flush_windows(&mut pending);
        if !pending.is_empty() {
            writeln!(
                out,
                "At the end of the input, open burst windows post their summaries:"
            )?;
            write_summaries(out, &pending, "end of input")?;
            writeln!(out)?;
        }
        let summary = self.summary;
        let width = self
            .config
            .rules
            .iter()
            .map(|r| r.name.len())
            .chain(["(no rule)".len()])
            .max()
            .unwrap_or(4);
        writeln!(out, "{:<width$}  {:>8}", "rule", "hits")?;
        for rule in &self.config.rules {
            let hits = summary.hits.get(&rule.name).copied().unwrap_or(0);
            writeln!(out, "{:<width$}  {hits:>8}", rule.name)?;
        }
        let unmatched = summary.lines - summary.matched_lines;
        writeln!(out, "{:<width$}  {unmatched:>8}", "(no rule)")?;
        writeln!(
            out,
            "\n{} lines read, {} matched by a rule, {} matched by no rule",
            summary.lines, summary.matched_lines, unmatched
        )?;
        Ok(summary)
    }

    /// The `files` entry whose format and multiline settings an input takes (see the
    /// module documentation); `None` when no entry applies.
    fn files_entry(&self, name: &str) -> Option<usize> {
        let files = &self.config.files;
        let absolute = std::path::absolute(name).unwrap_or_else(|_| name.into());
        let matching = files.iter().position(|f| f.glob.is_match(&absolute));
        match matching {
            Some(i)
                if files[i].multiline.is_some()
                    || files[i].format != crate::config::LogFormat::Plain =>
            {
                Some(i)
            }
            Some(_) => None,
            // Only the multiline settings are taken from an entry the input's path does
            // not match: its format is not the input's.
            None => files
                .iter()
                .position(|f| f.multiline.is_some() && f.format == crate::config::LogFormat::Plain),
        }
    }
}

/// Writes what the pipeline reports while one input is read. Output errors are kept and
/// returned at the end of the block (the pipeline's callbacks cannot fail).
struct Report<'a> {
    name: &'a str,
    out: &'a mut dyn Write,
    summary: &'a mut Summary,
    /// How summaries queued now are labelled.
    why: &'static str,
    /// Summaries queued by the hit being reported (printed with it).
    queued: Vec<Notification>,
    /// The lines whose header was printed last, while their block is open.
    shown: Option<(u64, u64)>,
    /// Records of this input that were not of its format (passed on as text).
    malformed: u64,
    error: Option<io::Error>,
}

impl<'a> Report<'a> {
    fn new(name: &'a str, out: &'a mut dyn Write, summary: &'a mut Summary) -> Self {
        Self {
            name,
            out,
            summary,
            why: "window closed",
            queued: Vec::new(),
            shown: None,
            malformed: 0,
            error: None,
        }
    }

    fn summaries_are(&mut self, why: &'static str) {
        self.why = why;
    }

    /// Ends the block of the last line or event (a blank line) and returns the first
    /// output error since the last call.
    fn end_block(&mut self) -> io::Result<()> {
        if self.error.is_none() && !self.queued.is_empty() {
            let queued = std::mem::take(&mut self.queued);
            let written = write_summaries(self.out, &queued, self.why);
            self.keep(written);
        }
        if self.shown.take().is_some() {
            let written = writeln!(self.out);
            self.keep(written);
        }
        self.error.take().map_or(Ok(()), Err)
    }

    fn keep(&mut self, result: io::Result<()>) {
        if let Err(e) = result
            && self.error.is_none()
        {
            self.error = Some(e);
        }
    }

    fn write_hit(&mut self, report: &HitReport<'_, '_, '_>) -> io::Result<()> {
        let out = &mut *self.out;
        let (first, last) = report.lines;
        if self.shown != Some(report.lines) {
            self.shown = Some(report.lines);
            self.summary.matched_lines += last - first + 1;
            let text = String::from_utf8_lossy(report.text);
            if first == last {
                writeln!(out, "{}:{first}: {text}", self.name)?;
            } else {
                let head = text.lines().next().unwrap_or("");
                writeln!(out, "{}:{first}-{last}: {head}", self.name)?;
                let lines = text.lines().count();
                writeln!(out, "  event:      {lines} lines joined by multiline")?;
            }
        }
        let n = report.notification;
        writeln!(out, "  rule:       {} → webhook {}", n.rule, n.webhook)?;
        let captures = report.hit.named_captures();
        if !captures.is_empty() {
            let shown: Vec<String> = captures
                .iter()
                .map(|(k, v)| match v {
                    Some(v) => format!("{k}={v:?}"),
                    None => format!("{k}=(none)"),
                })
                .collect();
            writeln!(out, "  captures:   {}", shown.join(" "))?;
        }
        // The key Chat receives (a key it would refuse is mapped, as the agent maps it).
        let sent = crate::pipeline::thread_key::chat_thread_key(&n.thread_key);
        if sent == n.thread_key {
            writeln!(out, "  thread key: {sent}")?;
        } else {
            writeln!(out, "  thread key: {sent} (rendered: {})", n.thread_key)?;
        }
        if let Some(key) = &n.dedup_key {
            writeln!(out, "  dedup key:  {key}")?;
        }
        if matches!(
            report.routed,
            Routed::BelowThreshold | Routed::Heartbeat | Routed::Silenced
        ) {
            writeln!(out, "  message:    (none: not posted)")?;
        } else {
            writeln!(out, "  message:")?;
            for text_line in n.text.lines() {
                writeln!(out, "    │ {text_line}")?;
            }
        }
        if let Some(card) = &n.card {
            write_card(out, card)?;
        }
        let queued = std::mem::take(&mut self.queued);
        write_summaries(out, &queued, "window closed or evicted")?;
        let key = n.dedup_key.as_deref().unwrap_or_default();
        match (report.routed, &report.hit.rule.dedup) {
            (Routed::Posted, Some(dedup)) => writeln!(
                out,
                "  burst:      posted; opens a {} window for key {key:?}",
                humantime::format_duration(dedup.window)
            ),
            (Routed::Counted, _) => writeln!(
                out,
                "  burst:      counted in the window of key {key:?}, not posted"
            ),
            (Routed::BelowThreshold, _) => match &report.hit.rule.threshold {
                Some(t) => writeln!(
                    out,
                    "  threshold:  counted towards {} within {} for key {key:?}, not posted",
                    t.count,
                    humantime::format_duration(t.within)
                ),
                None => Ok(()),
            },
            (Routed::Heartbeat, _) => writeln!(
                out,
                "  absence:    the line came for thread {:?}; nothing is posted",
                n.thread_key
            ),
            _ => Ok(()),
        }
    }
}

/// A card as `test` shows it: the header, each field, the paragraph's size, each button's
/// URL (as posted: captures percent-encoded).
fn write_card(out: &mut dyn Write, card: &str) -> io::Result<()> {
    let Ok(entry) = serde_json::from_str::<serde_json::Value>(card) else {
        return writeln!(out, "  card:       (unreadable)");
    };
    let at = |p: &str| {
        entry
            .pointer(p)
            .and_then(serde_json::Value::as_str)
            .unwrap_or("")
    };
    writeln!(out, "  card:       {}", at("/card/header/title"))?;
    let subtitle = at("/card/header/subtitle");
    if !subtitle.is_empty() {
        writeln!(out, "              {subtitle}")?;
    }
    let sections = entry
        .pointer("/card/sections")
        .and_then(serde_json::Value::as_array);
    for widget in sections
        .into_iter()
        .flatten()
        .filter_map(|s| s.get("widgets")?.as_array())
        .flatten()
    {
        let text = |p: &str| {
            widget
                .pointer(p)
                .and_then(serde_json::Value::as_str)
                .unwrap_or("")
        };
        if widget.get("decoratedText").is_some() {
            writeln!(
                out,
                "    field:    {}: {}",
                text("/decoratedText/topLabel"),
                text("/decoratedText/text")
            )?;
        } else if widget.get("textParagraph").is_some() {
            writeln!(
                out,
                "    line:     {} bytes (escaped)",
                text("/textParagraph/text").len()
            )?;
        } else if let Some(buttons) = widget
            .pointer("/buttonList/buttons")
            .and_then(serde_json::Value::as_array)
        {
            for b in buttons {
                let s = |p: &str| {
                    b.pointer(p)
                        .and_then(serde_json::Value::as_str)
                        .unwrap_or("")
                };
                writeln!(
                    out,
                    "    button:   {} → {}",
                    s("/text"),
                    s("/onClick/openLink/url")
                )?;
            }
        }
    }
    Ok(())
}

impl Output for Report<'_> {
    fn decode_error(&mut self, _format: crate::pipeline::decode::Format) {
        self.malformed += 1;
    }

    fn rules_unavailable(&mut self, _path: &Path, error: &crate::pipeline::gate::GateError) {
        if self.error.is_none() {
            self.error = Some(io::Error::other(format!(
                "the rules cannot be put behind one gate: {error}"
            )));
        }
    }

    fn notification(&mut self, n: Notification, cause: Cause) {
        let label = match cause {
            Cause::Hit => return,
            Cause::Summary => {
                self.queued.push(n);
                return;
            }
            Cause::Resolution => "resolution",
            Cause::Absence => "absence",
            Cause::Recovery => "recovery",
            Cause::SilenceEnded => "silence ended",
        };
        if self.error.is_none() {
            // Summaries queued before it (a window closed by a resolution) come first.
            let queued = std::mem::take(&mut self.queued);
            let written = write_summaries(self.out, &queued, self.why)
                .and_then(|()| write_alert(self.out, &n, label));
            self.keep(written);
        }
    }

    fn hit(&mut self, report: &HitReport<'_, '_, '_>) {
        *self
            .summary
            .hits
            .entry(report.hit.rule.name.clone())
            .or_default() += 1;
        if self.error.is_none() {
            let written = self.write_hit(report);
            self.keep(written);
        }
    }
}

/// The first RFC 3339 timestamp among the first words of `line`, in unix milliseconds.
fn line_time_ms(line: &[u8]) -> Option<i64> {
    let text = String::from_utf8_lossy(&line[..line.len().min(200)]);
    text.split(|c: char| c.is_whitespace() || matches!(c, '[' | ']' | '(' | ')' | ','))
        .filter(|w| !w.is_empty())
        .take(4)
        .find_map(|w| humantime::parse_rfc3339_weak(w).ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .and_then(|d| i64::try_from(d.as_millis()).ok())
}

/// A resolution, absence or recovery, as it would be posted.
fn write_alert(out: &mut dyn Write, n: &Notification, label: &str) -> io::Result<()> {
    writeln!(out, "{label} of rule {} → thread {}:", n.rule, n.thread_key)?;
    for line in n.text.lines() {
        writeln!(out, "    │ {line}")?;
    }
    writeln!(out)
}

fn write_summaries(out: &mut dyn Write, summaries: &[Notification], why: &str) -> io::Result<()> {
    for n in summaries {
        writeln!(out, "  summary ({why}) → thread {}:", n.thread_key)?;
        for line in n.text.lines() {
            writeln!(out, "    │ {line}")?;
        }
    }
    Ok(())
}

/// Drops a trailing `\n` and then a trailing `\r`.
pub fn strip_newline(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}
