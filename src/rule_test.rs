//! `chattail test`: runs the rules over sample logs and shows what each match would post.
//!
//! This is the rule author's tool, in the spirit of fail2ban-regex but for the whole rule:
//! for every matching line it shows the rule, the captures, the rendered thread key and the
//! rendered Chat text, and at the end how often each rule hit and how many lines no rule
//! matched. It reads only the given inputs: no network, no state directory.

use std::collections::BTreeMap;
use std::io::{self, BufRead, Write};

use crate::config::Config;
use crate::rules::{RuleSet, Source};

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
    let max_context = config
        .rules
        .iter()
        .map(|r| r.context_before)
        .max()
        .unwrap_or(0);
    let mut ring = crate::rules::ContextRing::new(max_context);
    loop {
        buf.clear();
        if input.read_until(b'\n', &mut buf)? == 0 {
            break;
        }
        number += 1;
        let line = strip_newline(&buf);
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

/// Writes the per-rule table and the line counts.
pub fn write_summary(config: &Config, summary: &Summary, out: &mut dyn Write) -> io::Result<()> {
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
