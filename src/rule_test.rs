//! `chattail test`: runs the rules over sample logs and shows what each match would post.
//!
//! This is the rule author's tool, in the spirit of fail2ban-regex but for the whole rule:
//! for every matching line it shows the rule, the captures, the rendered thread key and the
//! rendered Chat text, and at the end how often each rule hit and how many lines no rule
//! matched. For rules with `dedup` it shows the burst timeline: whether each match would be
//! posted or counted into a window, and the summaries the windows would post. Lines arrive
//! at once unless `--timestamps rfc3339` takes their time from the line itself. It reads
//! only the given inputs: no network, no state directory.

use std::collections::BTreeMap;
use std::io::{self, BufRead, Write};

use crate::bursts::Bursts;
use crate::config::Config;
use crate::rules::{Notification, RuleSet, Source};

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

/// Burst windows across all inputs of one `chattail test` run.
#[derive(Debug, Default)]
pub struct Timeline {
    pub clock: Clock,
    bursts: Bursts,
    now_ms: i64,
}

impl Timeline {
    pub fn new(clock: Clock) -> Self {
        Self {
            clock,
            ..Self::default()
        }
    }

    fn advance(&mut self, line: &[u8]) {
        if self.clock == Clock::Rfc3339
            && let Some(ms) = line_time_ms(line)
        {
            self.now_ms = self.now_ms.max(ms);
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

fn write_summaries(out: &mut dyn Write, summaries: &[Notification], why: &str) -> io::Result<()> {
    for n in summaries {
        writeln!(out, "  summary ({why}) → thread {}:", n.thread_key)?;
        for line in n.text.lines() {
            writeln!(out, "    │ {line}")?;
        }
    }
    Ok(())
}

/// Counts gathered over all inputs.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    pub lines: u64,
    pub matched_lines: u64,
    /// Hits per rule name, for every rule in the config (zero included).
    pub hits: BTreeMap<String, u64>,
}

/// Runs `rules` over every line of `input`, writing each match to `out`.
///
/// `name` is what `{file}` renders to and what the output calls the input. Lines are split
/// on `\n`, a trailing `\r` is dropped, and a last line without a newline still counts.
pub fn test_input(
    config: &Config,
    rules: &RuleSet,
    name: &str,
    input: &mut dyn BufRead,
    out: &mut dyn Write,
    summary: &mut Summary,
    timeline: &mut Timeline,
) -> io::Result<()> {
    for rule in &config.rules {
        summary.hits.entry(rule.name.clone()).or_default();
    }
    let source = Source {
        file: name,
        host: &config.host,
    };
    let mut buf = Vec::with_capacity(4096);
    let mut number: u64 = 0;
    let max_context = config.max_context_before();
    // `dedup.window` by rule name, for closing windows as the lines' time moves on.
    let windows: BTreeMap<&str, std::time::Duration> = config
        .rules
        .iter()
        .filter_map(|r| r.dedup.as_ref().map(|d| (r.name.as_str(), d.window)))
        .collect();
    let mut ring = crate::rules::ContextRing::new(max_context);
    loop {
        buf.clear();
        if input.read_until(b'\n', &mut buf)? == 0 {
            break;
        }
        number += 1;
        let line = strip_newline(&buf);
        timeline.advance(line);
        let mut closed = Vec::new();
        timeline.bursts.expire(
            timeline.now_ms,
            |rule| windows.get(rule).copied(),
            &mut closed,
        );
        write_summaries(out, &closed, "window closed")?;
        let mut shown = false;
        let mut error = None;
        rules.evaluate(line, |hit| {
            if error.is_some() {
                return;
            }
            *summary.hits.entry(hit.rule.name.clone()).or_default() += 1;
            let context = ring.last(hit.rule.context_before);
            let n = hit.notification_with_context(line, &source, &context);
            let result = (|| -> io::Result<()> {
                if !shown {
                    writeln!(out, "{name}:{number}: {}", String::from_utf8_lossy(line))?;
                    shown = true;
                }
                writeln!(out, "  rule:       {} → webhook {}", n.rule, n.webhook)?;
                let captures = hit.named_captures();
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
                writeln!(out, "  thread key: {}", n.thread_key)?;
                if let Some(key) = &n.dedup_key {
                    writeln!(out, "  dedup key:  {key}")?;
                }
                writeln!(out, "  message:")?;
                for text_line in n.text.lines() {
                    writeln!(out, "    │ {text_line}")?;
                }
                if let Some(dedup) = &hit.rule.dedup {
                    let mut queued = Vec::new();
                    let key = n.dedup_key.clone().unwrap_or_default();
                    timeline
                        .bursts
                        .observe(dedup, n.clone(), line, timeline.now_ms, &mut queued);
                    let posted = queued.last().is_some_and(|q| q.text == n.text);
                    let earlier = if posted {
                        &queued[..queued.len() - 1]
                    } else {
                        &queued[..]
                    };
                    write_summaries(out, earlier, "window closed or evicted")?;
                    if posted {
                        writeln!(
                            out,
                            "  burst:      posted; opens a {} window for key {key:?}",
                            humantime::format_duration(dedup.window)
                        )?;
                    } else {
                        writeln!(
                            out,
                            "  burst:      counted in the window of key {key:?}, not posted"
                        )?;
                    }
                }
                Ok(())
            })();
            if let Err(e) = result {
                error = Some(e);
            }
        });
        if let Some(e) = error {
            return Err(e);
        }
        ring.push(line);
        summary.lines += 1;
        if shown {
            summary.matched_lines += 1;
            writeln!(out)?;
        }
    }
    Ok(())
}

/// Writes the summaries of the windows still open when the input ends, the per-rule table
/// and the line counts.
pub fn write_summary(
    config: &Config,
    summary: &Summary,
    timeline: &mut Timeline,
    out: &mut dyn Write,
) -> io::Result<()> {
    let mut pending = Vec::new();
    timeline.bursts.flush(&mut pending);
    if !pending.is_empty() {
        writeln!(
            out,
            "At the end of the input, open burst windows post their summaries:"
        )?;
        write_summaries(out, &pending, "end of input")?;
        writeln!(out)?;
    }
    let width = config
        .rules
        .iter()
        .map(|r| r.name.len())
        .chain(["(no rule)".len()])
        .max()
        .unwrap_or(4);
    writeln!(out, "{:<width$}  {:>8}", "rule", "hits")?;
    for rule in &config.rules {
        let hits = summary.hits.get(&rule.name).copied().unwrap_or(0);
        writeln!(out, "{:<width$}  {hits:>8}", rule.name)?;
    }
    let unmatched = summary.lines - summary.matched_lines;
    writeln!(out, "{:<width$}  {unmatched:>8}", "(no rule)")?;
    writeln!(
        out,
        "\n{} lines read, {} matched by a rule, {} matched by no rule",
        summary.lines, summary.matched_lines, unmatched
    )
}

/// Drops a trailing `\n` and then a trailing `\r`.
pub fn strip_newline(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}
