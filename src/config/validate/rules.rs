//! Validating rules: patterns, templates against their capture groups, burst settings,
//! and the `multiline` settings of `files` entries.

use regex::bytes::{Regex, RegexBuilder};

use crate::pipeline::pattern::{PatternError, RulePattern};
use serde_saphyr::Spanned;

use super::super::raw::{RawConfig, RawDedup, RawMultiline, RawRule};
use super::super::{
    Boundary, DEFAULT_MAX_KEYS, DEFAULT_MESSAGE, DEFAULT_MESSAGE_WITH_CONTEXT,
    DEFAULT_MULTILINE_MAX_BYTES, DEFAULT_MULTILINE_MAX_LINES, DEFAULT_MULTILINE_TIMEOUT,
    DEFAULT_THREAD_KEY, Dedup, MAX_CONTEXT_BEFORE, MULTILINE_MAX_BYTES_RANGE, MULTILINE_PRESETS,
    Multiline, RULE_REGEX_SIZE_LIMIT, Rule,
};
use super::{Validator, defined_webhooks, is_name, loc};
use crate::path_glob::PathGlob;
use crate::pipeline::template::{BUILTINS, SOURCE_BUILTINS, Template};

/// The longest `absent_after`: a monthly job's line.
const MAX_ABSENT_AFTER: std::time::Duration = std::time::Duration::from_secs(40 * 24 * 3600);

/// Where an alert built-in may be used, for the error naming it elsewhere.
fn alert_builtin_home(builtin: &str) -> &'static str {
    match builtin {
        "count" | "within" => "exists only in the messages of rules with `threshold`",
        _ => "exists only in `resolve.message`",
    }
}

impl Validator<'_> {
    pub(super) fn rule(&mut self, raw: &RawRule, config: &RawConfig) -> Option<Rule> {
        let name = raw.name.value.clone();
        if !is_name(&name) {
            self.report.error(
                loc(&raw.name),
                format!("rule name `{name}` may only use letters, digits, `-`, `_` and `.`"),
            );
        }
        let what = |field: &str| format!("rule `{name}`: {field}");
        let pattern = self
            .expanded(&raw.pattern, &what("match"))
            .and_then(|p| self.rule_pattern(&p, &raw.pattern, &what("`match`")));
        let exclude = match &raw.exclude {
            None => None,
            Some(ex) => self
                .expanded(ex, &what("exclude"))
                .and_then(|p| self.regex(&p, ex, &what("`exclude`"))),
        };
        let webhook = raw.webhook.value.clone();
        if !config.webhooks.contains_key(&webhook) {
            self.report.error(
                loc(&raw.webhook),
                format!(
                    "rule `{name}`: webhook `{webhook}` is not defined (defined: {})",
                    defined_webhooks(config)
                ),
            );
        }
        let files = raw.files.as_ref().and_then(|globs| {
            if globs.is_empty() {
                self.report.error(
                    None,
                    format!("rule `{name}`: `files` is empty; leave it out to apply the rule to every file"),
                );
                return None;
            }
            let compiled: Vec<Option<PathGlob>> = globs
                .iter()
                .enumerate()
                .map(|(i, glob)| self.glob_path(glob, &what(&format!("files[{i}]"))))
                .collect();
            compiled.into_iter().collect::<Option<Vec<PathGlob>>>()
        });
        let units = raw.units.as_ref().and_then(|globs| {
            if globs.is_empty() {
                self.report.error(
                    loc(&raw.name),
                    format!("rule `{name}`: `units` is empty; leave it out to apply the rule to every unit"),
                );
                return None;
            }
            if !self.has_journal {
                self.report.warning(
                    loc(&globs[0]),
                    format!("rule `{name}`: `units` limits the rule to journal entries, but no `journal` is configured: the rule sees nothing"),
                );
            }
            self.unit_globs(globs, &what("units"))
        });

        // Templates can only be checked against a pattern that compiled.
        let pattern = pattern?;
        for group in pattern.capture_names().flatten() {
            // A capture named like a built-in that no configured source provides (`pid`
            // without a journal) shadows nothing.
            if SOURCE_BUILTINS.contains(&group) && self.provided.contains(&group) {
                self.report.warning(
                    loc(&raw.pattern),
                    format!(
                        "rule `{name}`: the capture group `{group}` shadows the built-in `{{{group}}}` in this rule's templates (the capture is used)"
                    ),
                );
            }
            if BUILTINS.contains(&group) {
                self.report.error(
                    loc(&raw.pattern),
                    format!(
                        "rule `{name}`: the capture group `{group}` hides the built-in `{{{group}}}`; rename the group"
                    ),
                );
            }
        }
        let thread_key = self.template(
            &pattern,
            raw.thread_key.as_ref(),
            DEFAULT_THREAD_KEY,
            &what("thread_key"),
        );
        let context_before = match &raw.context {
            None => 0,
            Some(c) if (1..=MAX_CONTEXT_BEFORE).contains(&c.before.value) => {
                usize::try_from(c.before.value).unwrap_or(0)
            }
            Some(c) => {
                self.report.error(
                    loc(&c.before),
                    format!(
                        "rule `{name}`: context.before must be between 1 and {MAX_CONTEXT_BEFORE}, not {}",
                        c.before.value
                    ),
                );
                0
            }
        };
        let threshold = raw
            .threshold
            .as_ref()
            .and_then(|t| self.threshold(t, &name));
        let default_message = if context_before > 0 {
            DEFAULT_MESSAGE_WITH_CONTEXT
        } else if raw.threshold.is_some() {
            crate::config::DEFAULT_THRESHOLD_MESSAGE
        } else {
            DEFAULT_MESSAGE
        };
        let message = self.template(
            &pattern,
            raw.message.as_ref(),
            default_message,
            &what("message"),
        );
        if context_before > 0
            && let Some(m) = &message
            && !m.uses_context()
        {
            self.report.error(
                raw.message.as_ref().and_then(loc),
                format!("rule `{name}`: context.before is set but the message does not show `{{context}}`"),
            );
        }
        for (template, field, value) in [
            (&thread_key, "thread_key", raw.thread_key.as_ref()),
            (&message, "message", raw.message.as_ref()),
        ] {
            let Some(t) = template else { continue };
            for builtin in t.alert_builtins() {
                // Keys say which problem, not how much of it: a key with `{count}` would
                // differ between the match that counts and the one that posts.
                let allowed = field == "message"
                    && raw.threshold.is_some()
                    && ["count", "within"].contains(&builtin);
                if !allowed {
                    self.report.error(
                        value.and_then(loc),
                        format!(
                            "rule `{name}`: {field} names `{{{builtin}}}`, which {}",
                            alert_builtin_home(builtin)
                        ),
                    );
                }
            }
        }
        let mut dedup = raw
            .dedup
            .as_ref()
            .and_then(|d| self.dedup(d, &pattern, &thread_key, &name));
        let max_keys = dedup.as_ref().map_or(DEFAULT_MAX_KEYS, |d| d.max_keys);
        // Once a threshold fires, the rule behaves as `dedup`: with its own window, or one
        // of `within`.
        if dedup.is_none()
            && raw.dedup.is_none()
            && let (Some(t), Some(key)) = (&threshold, &thread_key)
        {
            dedup = Some(Dedup {
                window: t.within,
                key: key.clone(),
                max_keys,
            });
        }
        let resolve = raw
            .resolve
            .as_ref()
            .and_then(|r| self.resolve(r, &pattern, raw.thread_key.as_ref(), &name));
        let absence = match &raw.absent_after {
            None => {
                if let Some(expect) = &raw.expect {
                    self.report.error(
                        expect.first().and_then(loc),
                        format!("rule `{name}`: `expect` lists keys whose absence alerts, which needs `absent_after`"),
                    );
                }
                None
            }
            Some(after) => {
                if let Some(t) = &raw.threshold {
                    self.report.error(
                        loc(t),
                        format!("rule `{name}`: `threshold` and `absent_after` exclude each other (one alerts on many lines, the other on none)"),
                    );
                }
                if let Some(r) = &raw.resolve {
                    self.report.error(
                        loc(r),
                        format!("rule `{name}`: `resolve` does not apply to `absent_after` (the line's return is posted as the recovery)"),
                    );
                }
                let after = self.duration_upto(after, &what("absent_after"), MAX_ABSENT_AFTER);
                let expected = self.expected_keys(raw, &pattern, thread_key.as_ref(), &name);
                Some(crate::config::Absence {
                    after: after?,
                    expected: expected?,
                })
            }
        };
        let card = match &raw.card {
            None => None,
            Some(c) => Some(self.card(c, &pattern, &name, raw.message.is_some())?),
        };
        Some(Rule {
            card,
            name,
            pattern,
            exclude,
            webhook,
            thread_key: thread_key?,
            message: message?,
            dedup,
            files,
            units,
            context_before,
            threshold,
            resolve,
            absence,
            max_keys,
        })
    }

    fn threshold(
        &mut self,
        raw: &Spanned<crate::config::raw::RawThreshold>,
        name: &str,
    ) -> Option<crate::config::Threshold> {
        let count = raw.value.count.value;
        // Each key keeps the times of its latest `count` matches: the bound keeps that
        // (times `max_keys`) in memory and in each commit small.
        if !(2..=10_000).contains(&count) {
            self.report.error(
                loc(&raw.value.count),
                format!("rule `{name}`: threshold.count must be between 2 and 10000, not {count} (1 is every match: leave `threshold` out)"),
            );
        }
        let within = self.duration(
            &raw.value.within,
            &format!("rule `{name}`: threshold.within"),
        )?;
        Some(crate::config::Threshold {
            count: usize::try_from(count)
                .ok()
                .filter(|c| (2..=1_000_000).contains(c))?,
            within,
        })
    }

    fn resolve(
        &mut self,
        raw: &Spanned<crate::config::raw::RawResolve>,
        rule_pattern: &RulePattern,
        thread_key: Option<&Spanned<String>>,
        name: &str,
    ) -> Option<crate::config::Resolve> {
        let r = &raw.value;
        if r.pattern.is_none() && r.after.is_none() {
            self.report.error(
                loc(raw),
                format!("rule `{name}`: `resolve` needs `match` (a line that ends the incident), `after` (quiet that ends it), or both"),
            );
            return None;
        }
        let after = r
            .after
            .as_ref()
            .map(|a| self.duration(a, &format!("rule `{name}`: resolve.after")));
        let pattern = match &r.pattern {
            None => None,
            Some(p) => {
                let what = format!("rule `{name}`: resolve.match");
                let compiled = self.expanded(p, &what).and_then(|text| {
                    self.rule_pattern(&text, p, &format!("rule `{name}`: `resolve.match`"))
                })?;
                // The resolving line must render the incident's thread key: the rule's
                // thread key, parsed against the groups of `resolve.match`.
                let names: Vec<&str> = compiled.capture_names().flatten().collect();
                let index = |n: &str| compiled.capture_names().position(|c| c == Some(n));
                let source = thread_key.map_or(DEFAULT_THREAD_KEY, |t| t.value.as_str());
                let source = crate::config::expand(source, self.options.env).ok()?;
                match Template::parse(&source, index, &names) {
                    Ok(t) => Some((compiled, t)),
                    Err(error) => {
                        self.report.error(
                            loc(p),
                            format!("rule `{name}`: resolve.match must capture what the thread key names, so that a resolving line finds its incident: the thread key {error}"),
                        );
                        return None;
                    }
                }
            }
        };
        let message_pattern = pattern.as_ref().map_or(rule_pattern, |(p, _)| p);
        let message = self.template(
            message_pattern,
            r.message.as_ref(),
            crate::config::DEFAULT_RESOLVE_MESSAGE,
            &format!("rule `{name}`: resolve.message"),
        )?;
        for builtin in message.alert_builtins() {
            if !["occurrences", "duration"].contains(&builtin) {
                self.report.error(
                    r.message.as_ref().and_then(loc),
                    format!(
                        "rule `{name}`: resolve.message names `{{{builtin}}}`, which {}",
                        alert_builtin_home(builtin)
                    ),
                );
            }
        }
        let after = match after {
            Some(None) => return None,
            Some(Some(d)) => Some(d),
            None => None,
        };
        Some(crate::config::Resolve {
            pattern,
            after,
            message,
        })
    }

    /// The thread keys `expect` lists, rendered from their capture values.
    fn expected_keys(
        &mut self,
        raw: &RawRule,
        pattern: &RulePattern,
        thread_key: Option<&Template>,
        name: &str,
    ) -> Option<Vec<String>> {
        let Some(expect) = &raw.expect else {
            return Some(Vec::new());
        };
        let thread_key = thread_key?;
        if !thread_key.uses_only_captures_rule_host() {
            self.report.error(
                raw.thread_key.as_ref().and_then(loc),
                format!("rule `{name}`: with `expect`, the thread key may use only captures, {{rule}} and {{host}} (`expect` gives capture values, nothing else)"),
            );
            return None;
        }
        let names: Vec<Option<&str>> = pattern.capture_names().collect();
        let mut keys = Vec::new();
        let mut ok = true;
        for entry in expect {
            let mut stored: Vec<Option<String>> = vec![None; names.len()];
            for (capture, value) in &entry.value {
                match names.iter().position(|n| *n == Some(capture.as_str())) {
                    Some(i) => stored[i] = Some(value.clone()),
                    None => {
                        let defined: Vec<&str> = names.iter().flatten().copied().collect();
                        self.report.error(
                            loc(entry),
                            format!(
                                "rule `{name}`: expect names the capture `{capture}`, which the pattern does not define (named groups: {})",
                                if defined.is_empty() { "none".to_owned() } else { defined.join(", ") }
                            ),
                        );
                        ok = false;
                    }
                }
            }
            let ctx = crate::pipeline::template::RenderContext {
                line: b"",
                file: "",
                rule: name,
                host: &self.host,
                captures: None,
                context: b"",
                stream: None,
                journal: None,
                stored: Some(&stored),
                alert: None,
            };
            keys.push(thread_key.render(&ctx, crate::pipeline::template::Escape::None));
        }
        ok.then_some(keys)
    }

    fn regex(&mut self, source: &str, value: &Spanned<String>, what: &str) -> Option<Regex> {
        match RegexBuilder::new(source)
            .size_limit(RULE_REGEX_SIZE_LIMIT)
            .build()
        {
            Ok(re) => Some(re),
            Err(regex::Error::CompiledTooBig(limit)) => {
                self.regex_error(value, what, PatternError::TooBig(limit));
                None
            }
            Err(error) => {
                self.regex_error(value, what, PatternError::Syntax(error.to_string()));
                None
            }
        }
    }

    /// A rule's `match`, which also runs for its captures (see [`RulePattern`]).
    fn rule_pattern(
        &mut self,
        source: &str,
        value: &Spanned<String>,
        what: &str,
    ) -> Option<RulePattern> {
        RulePattern::new(source, RULE_REGEX_SIZE_LIMIT)
            .map_err(|error| self.regex_error(value, what, error))
            .ok()
    }

    fn regex_error(&mut self, value: &Spanned<String>, what: &str, error: PatternError) {
        let message = match error {
            PatternError::TooBig(limit) => format!(
                "{what} is too big once compiled (over {} KiB); bound large repetitions such as \
                 `\\w{{1000}}`, or use `(?-u:\\w)` when ASCII is enough",
                limit / 1024
            ),
            PatternError::Syntax(error) => format!("{what} is not a valid regex:\n{error}"),
        };
        self.report.error(loc(value), message);
    }

    pub(super) fn template(
        &mut self,
        pattern: &RulePattern,
        value: Option<&Spanned<String>>,
        default: &str,
        what: &str,
    ) -> Option<Template> {
        let (text, location) = match value {
            Some(v) => (self.expanded(v, what)?, loc(v)),
            None => (default.to_owned(), None),
        };
        let names: Vec<&str> = pattern.capture_names().flatten().collect();
        let index = |name: &str| pattern.capture_names().position(|n| n == Some(name));
        match Template::parse(&text, index, &names) {
            Ok(t) => {
                for name in t.source_builtins() {
                    if !self.provided.contains(&name) {
                        let message = if crate::pipeline::template::JOURNAL_BUILTINS.contains(&name)
                        {
                            format!(
                                "{what} names `{{{name}}}`, which only journal entries have, and no `journal` is configured"
                            )
                        } else {
                            format!(
                                "{what} names `{{{name}}}`, which no `files` entry provides: {}",
                                crate::pipeline::template::builtin_needs(name)
                            )
                        };
                        self.report.error(location, message);
                    }
                }
                Some(t)
            }
            Err(error) => {
                self.report.error(location, format!("{what} {error}"));
                None
            }
        }
    }

    fn dedup(
        &mut self,
        raw: &RawDedup,
        pattern: &RulePattern,
        thread_key: &Option<Template>,
        name: &str,
    ) -> Option<Dedup> {
        let window = self.duration(&raw.window, &format!("rule `{name}`: dedup.window"));
        let key = match &raw.key {
            Some(_) => self.template(
                pattern,
                raw.key.as_ref(),
                "",
                &format!("rule `{name}`: dedup.key"),
            ),
            None => thread_key.clone(),
        };
        if let (Some(k), Some(value)) = (&key, &raw.key) {
            for builtin in k.alert_builtins() {
                self.report.error(
                    loc(value),
                    format!(
                        "rule `{name}`: dedup.key names `{{{builtin}}}`, which {}",
                        alert_builtin_home(builtin)
                    ),
                );
            }
        }
        let max_keys = match &raw.max_keys {
            None => DEFAULT_MAX_KEYS,
            Some(n) if n.value == 0 => {
                self.report.error(
                    loc(n),
                    format!("rule `{name}`: dedup.max_keys must be at least 1"),
                );
                return None;
            }
            Some(n) => usize::try_from(n.value).unwrap_or(usize::MAX),
        };
        Some(Dedup {
            window: window?,
            key: key?,
            max_keys,
        })
    }

    pub(super) fn multiline(
        &mut self,
        raw: &Spanned<RawMultiline>,
        what: &str,
    ) -> Option<Multiline> {
        let r = &raw.value;
        let boundary = match (&r.start, &r.preset) {
            (Some(start), None) => {
                let text = self.expanded(start, &format!("{what}.start"))?;
                Boundary::Start(self.regex(&text, start, &format!("{what}.start"))?)
            }
            (None, Some(preset)) => {
                let name = preset.value.as_str();
                let Some((_, pattern)) = MULTILINE_PRESETS.iter().find(|(n, _)| *n == name) else {
                    let known: Vec<&str> = MULTILINE_PRESETS.iter().map(|(n, _)| *n).collect();
                    self.report.error(
                        loc(preset),
                        format!(
                            "{what}.preset `{name}` is not a preset (known: {})",
                            known.join(", ")
                        ),
                    );
                    return None;
                };
                Boundary::Continue(self.regex(pattern, preset, &format!("{what}.preset"))?)
            }
            _ => {
                self.report.error(
                    loc(raw),
                    format!("{what} needs exactly one of `start` (a regex that begins an event) or `preset` (java, python, go)"),
                );
                return None;
            }
        };
        let timeout = match &r.timeout {
            Some(t) => self.duration(t, &format!("{what}.timeout"))?,
            None => DEFAULT_MULTILINE_TIMEOUT,
        };
        let max_lines = match &r.max_lines {
            None => DEFAULT_MULTILINE_MAX_LINES,
            Some(n) if (2..=10_000).contains(&n.value) => {
                usize::try_from(n.value).unwrap_or(DEFAULT_MULTILINE_MAX_LINES)
            }
            Some(n) => {
                self.report.error(
                    loc(n),
                    format!(
                        "{what}.max_lines must be between 2 and 10000, not {}",
                        n.value
                    ),
                );
                return None;
            }
        };
        let max_bytes = match &r.max_bytes {
            None => DEFAULT_MULTILINE_MAX_BYTES,
            Some(n) if MULTILINE_MAX_BYTES_RANGE.contains(&n.value) => {
                usize::try_from(n.value).unwrap_or(DEFAULT_MULTILINE_MAX_BYTES)
            }
            Some(n) => {
                self.report.error(
                    loc(n),
                    format!(
                        "{what}.max_bytes must be between {} and {}, not {}",
                        MULTILINE_MAX_BYTES_RANGE.start(),
                        MULTILINE_MAX_BYTES_RANGE.end(),
                        n.value
                    ),
                );
                return None;
            }
        };
        Some(Multiline {
            boundary,
            timeout,
            max_lines,
            max_bytes,
        })
    }
}
