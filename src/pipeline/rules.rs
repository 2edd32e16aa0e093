//! The rule engine: which rules match a line, and what each match would post.
//!
//! Every rule that applies to a file is compiled into one [`Gate`]. Most log lines match
//! no rule, and for those the gate's single search is all the work done: no allocation
//! and no per-rule search. Only when the gate opens does each hit rule run its own regex
//! for captures and its `exclude` pattern. The engine does no I/O; it borrows the line
//! and renders into new strings only for matches.

use std::sync::Arc;

use super::gate::{Gate, GateError};
use super::pattern::Groups;

use crate::config::{Config, RULE_REGEX_SIZE_LIMIT, Rule};
use crate::pipeline::chat_text;
use crate::pipeline::template::{Escape, RenderContext};

/// Lazy-DFA cache granted to the gate per rule. With many rules using Unicode classes
/// (`\w`, `[^ ]`), the default 2 MiB cache is cleared over and over and the search falls
/// back to a much slower engine; measured in `benches/rule_engine.rs`.
/// It is a ceiling the cache grows to only as states are needed; past 256 rules it stays
/// at 64 MiB.
const GATE_DFA_CACHE_PER_RULE: usize = 256 * 1024;
const GATE_DFA_CACHE_MIN: usize = 2 * 1024 * 1024;
const GATE_DFA_CACHE_MAX: usize = 64 * 1024 * 1024;

/// The rules that apply to one file, behind one [`Gate`].
#[derive(Debug)]
pub struct RuleSet {
    gate: Gate,
    rules: Vec<Arc<Rule>>,
    /// The rules whose `resolve.match` follows theirs in the gate, in gate order.
    resolvers: Vec<usize>,
}

/// What the gate found in a line: a rule's match, or a line that resolves a rule's
/// incident (`resolve.match`).
#[derive(Debug)]
pub enum Found<'r, 'l> {
    Hit(Hit<'r, 'l>),
    Resolves {
        rule: &'r Rule,
        captures: Groups<'l>,
    },
}

/// One rule matching one line.
#[derive(Debug)]
pub struct Hit<'r, 'l> {
    pub rule: &'r Rule,
    pub captures: Groups<'l>,
}

/// What a hit asks to post: the rendered thread key, dedup key and Chat text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    pub rule: String,
    pub webhook: String,
    pub thread_key: String,
    pub dedup_key: Option<String>,
    pub text: String,
    /// Set on the occurrence that opened a burst window and on its summary, so that
    /// fleet mode can make one of each for the whole fleet.
    pub burst: Option<BurstMark>,
    /// A rule with `card`: the `cardsV2` entry (JSON) posted with `text`, never merged
    /// with other notifications.
    pub card: Option<String>,
}

/// Which burst window a notification opens or sums up.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BurstMark {
    /// The occurrence that opened the window of `key` at `first_ms`, `window_ms` long.
    First {
        key: String,
        first_ms: i64,
        window_ms: i64,
        /// The line, as text (the fleet's summary may show it as the most recent).
        line: String,
    },
    /// The summary of that window: `count` repeats, the last at `last_ms`.
    Summary {
        key: String,
        first_ms: i64,
        count: u64,
        last_ms: i64,
        last_line: String,
    },
}

/// Where a line came from, for the built-in placeholders.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    pub file: &'a str,
    pub host: &'a str,
    /// `stdout` or `stderr` for container logs.
    pub stream: Option<&'a str>,
    /// The writer of a journal entry.
    pub journal: Option<&'a crate::pipeline::journal_fields::JournalFields>,
}

impl RuleSet {
    /// Builds the gate over `rules`, in the given order.
    pub fn new(rules: Vec<Arc<Rule>>) -> Result<Self, GateError> {
        let resolvers: Vec<usize> = rules
            .iter()
            .enumerate()
            .filter(|(_, r)| r.resolve.as_ref().is_some_and(|x| x.pattern.is_some()))
            .map(|(i, _)| i)
            .collect();
        let entries = rules.len() + resolvers.len();
        let patterns: Vec<&str> = gate_patterns(&rules, &resolvers).collect();
        let gate = Gate::new(
            &patterns,
            RULE_REGEX_SIZE_LIMIT.saturating_mul(entries.max(1)),
            GATE_DFA_CACHE_PER_RULE
                .saturating_mul(entries.max(1))
                .clamp(GATE_DFA_CACHE_MIN, GATE_DFA_CACHE_MAX),
        )?;
        Ok(Self {
            gate,
            rules,
            resolvers,
        })
    }

    /// Whether runs of lines can be searched whole
    /// ([`next_line_to_check`](Self::next_line_to_check)).
    pub fn scans(&self) -> bool {
        self.gate.scans()
    }

    /// In `run` (whole lines, each ending in `\n`, none holding a `\r`), where the next
    /// line that may match begins, searching from `from` (a line start); `None` when no
    /// line from `from` on matches. Only for a set that [`scans`](Self::scans).
    pub fn next_line_to_check(&self, run: &[u8], from: usize) -> Option<usize> {
        self.gate.next_line_to_check(run, from)
    }

    /// A set with no rules: nothing matches.
    pub fn empty() -> Self {
        Self {
            gate: Gate::empty(),
            rules: Vec::new(),
            resolvers: Vec::new(),
        }
    }

    /// Every rule of `config`, whatever files it is limited to.
    pub fn all(config: &Config) -> Result<Self, GateError> {
        Self::new(config.rules.clone())
    }

    /// Calls `on_hit` for each rule that matches `line` and whose `exclude` does not, in
    /// rule order. Returns the number of hits.
    pub fn evaluate<'r, 'l>(
        &'r self,
        line: &'l [u8],
        mut on_hit: impl FnMut(Hit<'r, 'l>),
    ) -> usize {
        self.find(line, |found| {
            if let Found::Hit(hit) = found {
                on_hit(hit);
            }
        })
    }

    /// As [`evaluate`](Self::evaluate), and also reports lines that resolve a rule's
    /// incident (after the rules' hits). Returns the number of hits.
    pub fn find<'r, 'l>(
        &'r self,
        line: &'l [u8],
        mut on_found: impl FnMut(Found<'r, 'l>),
    ) -> usize {
        if !self.gate.is_match(line) {
            return 0;
        }
        let mut hits = 0;
        self.gate.for_each_match(line, |index| {
            if let Some(&resolver) = index
                .checked_sub(self.rules.len())
                .and_then(|i| self.resolvers.get(i))
            {
                let rule = &*self.rules[resolver];
                if let Some((pattern, _)) = rule.resolve.as_ref().and_then(|r| r.pattern.as_ref())
                    && let Some(captures) = pattern.captures(line)
                {
                    on_found(Found::Resolves { rule, captures });
                }
                return;
            }
            let rule = &*self.rules[index];
            let Some(captures) = rule.pattern.captures(line) else {
                return;
            };
            if rule.exclude.as_ref().is_some_and(|ex| ex.is_match(line)) {
                return;
            }
            hits += 1;
            on_found(Found::Hit(Hit { rule, captures }));
        });
        hits
    }
}

/// The gate's patterns, in gate order: the rules' `match`, then the `resolve.match` of
/// the rules listed in `resolvers`.
fn gate_patterns<'r>(
    rules: &'r [Arc<Rule>],
    resolvers: &'r [usize],
) -> impl Iterator<Item = &'r str> {
    rules
        .iter()
        .map(|r| r.pattern.as_str())
        .chain(resolvers.iter().filter_map(|&i| {
            let (p, _) = rules.get(i)?.resolve.as_ref()?.pattern.as_ref()?;
            Some(p.as_str())
        }))
}

impl Hit<'_, '_> {
    fn render_context<'a>(
        &'a self,
        line: &'a [u8],
        source: &Source<'a>,
        context: &'a [u8],
    ) -> RenderContext<'a> {
        RenderContext {
            line,
            file: source.file,
            rule: &self.rule.name,
            host: source.host,
            captures: Some(&self.captures),
            context,
            stream: source.stream,
            journal: source.journal,
            stored: None,
            alert: None,
        }
    }

    /// Renders what this hit would post. The text is cut to Chat's limit.
    pub fn notification(&self, line: &[u8], source: &Source<'_>) -> Notification {
        self.notification_with_context(line, source, b"")
    }

    /// Renders what this hit would post, with the lines before it for `{context}`.
    pub fn notification_with_context(
        &self,
        line: &[u8],
        source: &Source<'_>,
        context: &[u8],
    ) -> Notification {
        self.notification_with_alert(line, source, context, None)
    }

    /// As [`notification_with_context`](Self::notification_with_context), with the alert
    /// built-ins' values (a threshold reached).
    pub fn notification_with_alert(
        &self,
        line: &[u8],
        source: &Source<'_>,
        context: &[u8],
        alert: Option<&crate::pipeline::template::AlertValues>,
    ) -> Notification {
        let mut ctx = self.render_context(line, source, context);
        ctx.alert = alert;
        let rule = self.rule;
        let (text, card) = match &rule.card {
            None => (
                chat_text::fit(rule.message.render(&ctx, Escape::ChatText)),
                None,
            ),
            Some(card) => {
                let (entry, title) = super::card::render(card, &ctx);
                let text = if card.text_is_message {
                    rule.message.render(&ctx, Escape::ChatText)
                } else {
                    let mut text = String::new();
                    chat_text::neutralise_into(&title, &mut text);
                    text
                };
                (super::card::text_beside(text), Some(entry))
            }
        };
        Notification {
            text,
            card,
            ..self.keys_of(&ctx)
        }
    }

    /// Only the keys of what this hit would post (thread and dedup key), without the text
    /// or card: for an occurrence that an open burst window will only count, whose text
    /// nobody reads.
    pub fn notification_keys(&self, line: &[u8], source: &Source<'_>) -> Notification {
        self.keys_of(&self.render_context(line, source, b""))
    }

    /// The notification with its keys rendered and no text or card yet.
    fn keys_of(&self, ctx: &RenderContext<'_>) -> Notification {
        let rule = self.rule;
        Notification {
            rule: rule.name.clone(),
            webhook: rule.webhook.clone(),
            thread_key: rule.thread_key.render(ctx, Escape::None),
            dedup_key: rule.dedup.as_ref().map(|d| d.key.render(ctx, Escape::None)),
            text: String::new(),
            burst: None,
            card: None,
        }
    }

    /// The named captures of this hit as (name, lossy text) pairs, for display; `None`
    /// for a group that took no part in the match.
    pub fn named_captures(&self) -> Vec<(&str, Option<String>)> {
        self.rule
            .pattern
            .capture_names()
            .enumerate()
            .filter_map(|(i, name)| {
                let name = name?;
                let text = self
                    .captures
                    .get(i)
                    .map(|m| String::from_utf8_lossy(m).into_owned());
                Some((name, text))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::{LoadOptions, UrlPolicy, load_bytes};

    fn config(rules: &str) -> Config {
        let yaml = format!(
            "webhooks:\n  oncall:\n    url: http://127.0.0.1:1/v1/spaces/S/messages\nfiles:\n  - path: /var/log/app/*.log\nrules:\n{rules}"
        );
        let env = |_: &str| None;
        let options = LoadOptions {
            url_policy: UrlPolicy::Required,
            env: &env,
            default_host: "web-1".to_owned(),
        };
        match load_bytes(
            Path::new("/etc/chattail/rules.yaml"),
            yaml.as_bytes(),
            &options,
        ) {
            Ok(loaded) => loaded.config,
            Err(report) => panic!("{report}"),
        }
    }

    fn hits(set: &RuleSet, line: &[u8]) -> Vec<Notification> {
        let source = Source {
            file: "/var/log/app/web.log",
            host: "web-1",
            stream: None,
            journal: None,
        };
        let mut out = Vec::new();
        set.evaluate(line, |hit| out.push(hit.notification(line, &source)));
        out
    }

    #[test]
    fn gate_exclude_and_rule_order() {
        let c = config(
            "  - name: errors\n    match: 'ERROR (?P<what>\\w+)'\n    exclude: 'healthz'\n    webhook: oncall\n    thread_key: 'e-{what}'\n\
             \x20 - name: timeouts\n    match: 'timeout'\n    webhook: oncall\n",
        );
        let set = RuleSet::all(&c).unwrap();
        assert!(hits(&set, b"INFO all good").is_empty());
        assert!(hits(&set, b"ERROR probe /healthz failed").is_empty());
        let both = hits(&set, b"ERROR pool timeout");
        let keys: Vec<&str> = both.iter().map(|n| n.thread_key.as_str()).collect();
        assert_eq!(keys, ["e-pool", "timeouts"]);
    }

    #[test]
    fn a_line_the_gate_lets_through_for_its_non_ascii_text_hits_only_if_the_rule_matches() {
        let c = config(
            "  - name: ports\n    match: 'port (?P<n>\\d+) open'\n    webhook: oncall\n    thread_key: 'p-{n}'\n",
        );
        let set = RuleSet::all(&c).unwrap();
        // The gate stands for any non-ASCII character where `\d` is; `é` is no digit.
        assert!(hits(&set, "port é open".as_bytes()).is_empty());
        let arabic = hits(&set, "port ٣ open".as_bytes());
        assert_eq!(arabic.len(), 1);
        assert_eq!(arabic[0].thread_key, "p-٣");
    }

    #[test]
    fn ascii_mode_captures_raw_bytes_and_renders_them_lossily() {
        let c = config(
            "  - name: oom\n    match: '(?-u)Killed process \\d+ \\((?P<comm>[^)]+)\\)'\n    webhook: oncall\n    thread_key: 'oom-{comm}'\n",
        );
        let set = RuleSet::all(&c).unwrap();
        let n = hits(&set, b"Out of memory: Killed process 7 (r\xe9dis) total");
        assert_eq!(n.len(), 1);
        assert_eq!(n[0].thread_key, "oom-r\u{fffd}dis");
    }

    #[test]
    fn rules_limited_to_files_apply_only_there() {
        let c = config(
            "  - name: db\n    match: 'timeout'\n    webhook: oncall\n    files: ['/var/log/app/db-*.log']\n\
             \x20 - name: any\n    match: 'timeout'\n    webhook: oncall\n",
        );
        let names = |path: &str| -> Vec<String> {
            let path = Path::new(path);
            let rules = c.rules.iter().filter(|r| r.applies_to(path));
            rules.map(|r| r.name.clone()).collect()
        };
        assert_eq!(names("/var/log/app/db-main.log"), ["db", "any"]);
        assert_eq!(names("/var/log/app/web.log"), ["any"]);
        assert_eq!(
            names("/var/log/app/sub/db-x.log"),
            ["any"],
            "`*` stays within a directory"
        );
    }
}
