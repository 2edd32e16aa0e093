//! Silences: "hold back these alerts until then", set with `chattail silence add`.
//!
//! A [`Silence`] is a record (an id, matchers, an end, a comment): stored as JSON in the
//! agent's store, or in fleet mode in Redis, where every agent of the namespace reads it.
//! Its matchers are all optional and must all match: the rule, the host, the thread (the
//! rendered key or the key Chat receives) and capture values (`=` exact, `=~` an anchored
//! regex). A [`SilenceSet`] is the records compiled for matching, which the pipeline
//! consults for each hit and each alert. Every silence ends by itself, at most
//! [`MAX_SILENCE`] after it began.
//!
//! This module is pure: records in, decisions out, the time an argument. It never reads
//! a clock, the store or Redis.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;

/// The longest a silence may last.
pub const MAX_SILENCE: Duration = Duration::from_secs(7 * 24 * 3600);

/// How long an ended silence is kept (for `silence list` and for the end messages of
/// agents that were down when it ended).
pub const KEPT_AFTER_END: Duration = Duration::from_secs(24 * 3600);

/// The most silences applied at once (each is checked for every hit).
pub const MAX_SILENCES: usize = 1_000;

/// The regex size limit of a `=~` matcher (a record can come from anyone who can write
/// to Redis: it is bounded like a rule's pattern).
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// A silence as stored and exchanged.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Silence {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub captures: Vec<CaptureMatcher>,
    #[serde(default)]
    pub comment: String,
    /// Who added it (`user@host`).
    #[serde(default)]
    pub created_by: String,
    /// Unix milliseconds (in fleet mode, Redis' clock).
    pub starts_ms: i64,
    pub ends_ms: i64,
    /// Who ended it early with `silence expire`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expired_by: Option<String>,
    /// When it last changed (unix ms): of two copies, the higher revision wins.
    pub revision: i64,
}

/// One `--match`: a capture group's value, exactly or by an anchored regex.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CaptureMatcher {
    pub name: String,
    #[serde(default)]
    pub regex: bool,
    pub value: String,
}

impl std::fmt::Display for CaptureMatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let op = if self.regex { "=~" } else { "=" };
        write!(f, "{}{op}{}", self.name, self.value)
    }
}

/// Why a silence cannot be added.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SilenceError {
    #[error("`--match {0}` is not CAPTURE=VALUE or CAPTURE=~REGEX")]
    BadMatcher(String),
    #[error("`--match {matcher}`: the regex does not compile: {error}")]
    BadRegex { matcher: String, error: String },
    #[error("no rule is named `{0}` (the config's rules: {1})")]
    UnknownRule(String, String),
    #[error("`--match {matcher}`: {where_} no capture group named `{name}` (groups: {groups})")]
    UnknownCapture {
        matcher: String,
        name: String,
        where_: String,
        groups: String,
    },
    #[error("a silence lasts more than 0 seconds (`--for 2h`)")]
    ZeroLength,
    #[error("a silence lasts at most 7 days; this one asks for {0}")]
    TooLong(String),
    #[error(
        "a silence without any matcher would hold back everything; give --rule, --host, --thread or --match"
    )]
    NoMatcher,
}

/// The matchers of a silence to add, as given on the command line.
#[derive(Debug, Default, Clone)]
pub struct Matchers {
    pub rule: Option<String>,
    pub host: Option<String>,
    pub thread: Option<String>,
    /// `CAPTURE=VALUE` or `CAPTURE=~REGEX`.
    pub captures: Vec<String>,
}

impl Matchers {
    /// Checks the matchers against the config's rules (as `check` checks templates) and
    /// parses them: a rule that does not exist, or a capture no selected rule has, is an
    /// error.
    pub fn validate(&self, config: &Config) -> Result<Vec<CaptureMatcher>, SilenceError> {
        if self.rule.is_none()
            && self.host.is_none()
            && self.thread.is_none()
            && self.captures.is_empty()
        {
            return Err(SilenceError::NoMatcher);
        }
        let selected: Vec<&crate::config::Rule> = match &self.rule {
            Some(name) => {
                let Some(rule) = config.rules.iter().find(|r| &r.name == name) else {
                    let names: Vec<&str> = config.rules.iter().map(|r| r.name.as_str()).collect();
                    return Err(SilenceError::UnknownRule(name.clone(), names.join(", ")));
                };
                vec![rule.as_ref()]
            }
            None => config.rules.iter().map(AsRef::as_ref).collect(),
        };
        let mut out = Vec::new();
        for text in &self.captures {
            let matcher = parse_matcher(text)?;
            let has = |r: &&crate::config::Rule| {
                r.pattern
                    .capture_names()
                    .any(|n| n == Some(matcher.name.as_str()))
            };
            if !selected.iter().any(has) {
                let mut groups: Vec<&str> = selected
                    .iter()
                    .flat_map(|r| r.pattern.capture_names().flatten())
                    .collect();
                groups.sort_unstable();
                groups.dedup();
                let where_ = match &self.rule {
                    Some(rule) => format!("rule `{rule}` has"),
                    None => "the config's rules have".to_owned(),
                };
                return Err(SilenceError::UnknownCapture {
                    matcher: text.clone(),
                    name: matcher.name,
                    where_,
                    groups: if groups.is_empty() {
                        "none".to_owned()
                    } else {
                        groups.join(", ")
                    },
                });
            }
            out.push(matcher);
        }
        Ok(out)
    }
}

/// `CAPTURE=VALUE` or `CAPTURE=~REGEX` (the regex compiled to check it).
pub fn parse_matcher(text: &str) -> Result<CaptureMatcher, SilenceError> {
    let bad = || SilenceError::BadMatcher(text.to_owned());
    let (name, rest) = text.split_once('=').ok_or_else(bad)?;
    let valid_name = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid_name {
        return Err(bad());
    }
    let (regex, value) = match rest.strip_prefix('~') {
        Some(re) => (true, re),
        None => (false, rest),
    };
    let matcher = CaptureMatcher {
        name: name.to_owned(),
        regex,
        value: value.to_owned(),
    };
    if regex {
        compile_anchored(value).map_err(|error| SilenceError::BadRegex {
            matcher: text.to_owned(),
            error,
        })?;
    }
    Ok(matcher)
}

/// A silence's length: more than 0, at most [`MAX_SILENCE`].
pub fn check_length(length: Duration) -> Result<(), SilenceError> {
    if length.is_zero() {
        return Err(SilenceError::ZeroLength);
    }
    if length > MAX_SILENCE {
        return Err(SilenceError::TooLong(
            humantime::format_duration(length).to_string(),
        ));
    }
    Ok(())
}

fn compile_anchored(re: &str) -> Result<regex::Regex, String> {
    regex::RegexBuilder::new(&format!("^(?:{re})$"))
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| {
            e.to_string()
                .lines()
                .last()
                .unwrap_or_default()
                .trim()
                .to_owned()
        })
}

impl Silence {
    /// Whether it holds back at `now_ms` (it has not ended).
    pub fn is_active(&self, now_ms: i64) -> bool {
        now_ms < self.ends_ms
    }

    /// The matchers as one line (`rule=db-timeout host=web-1 db=~orders.*`).
    pub fn matchers_text(&self) -> String {
        let mut out = String::new();
        let mut put = |s: String| {
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(&s);
        };
        if let Some(rule) = &self.rule {
            put(format!("rule={rule}"));
        }
        if let Some(host) = &self.host {
            put(format!("host={host}"));
        }
        if let Some(thread) = &self.thread {
            put(format!("thread={thread}"));
        }
        for c in &self.captures {
            put(c.to_string());
        }
        out
    }
}

/// A capture's value by name.
pub type CaptureLookup<'a> = dyn Fn(&str) -> Option<Cow<'a, str>> + 'a;

/// What a silence is matched against.
pub struct Candidate<'a> {
    pub rule: &'a str,
    pub host: &'a str,
    /// The thread key as the rule rendered it.
    pub thread: &'a str,
    /// The key Chat receives for it (computed only when a silence names a thread).
    pub chat_thread: &'a dyn Fn() -> String,
    /// A capture's value by name; `None` when the candidate has no captures (an alert
    /// decided on time).
    pub capture: Option<&'a CaptureLookup<'a>>,
}

#[derive(Debug)]
enum ValueMatch {
    Equals(String),
    Regex(regex::Regex),
}

#[derive(Debug)]
struct Compiled {
    silence: Arc<Silence>,
    captures: Vec<(String, ValueMatch)>,
}

/// The known silences (active and recently ended), compiled for matching.
#[derive(Debug, Default)]
pub struct SilenceSet {
    compiled: Vec<Compiled>,
}

impl SilenceSet {
    /// Compiles `records`; a record whose regex does not compile (written to Redis by
    /// hand, or by a newer version) is left out and returned with the reason.
    pub fn compile(records: Vec<Silence>) -> (Self, Vec<(String, String)>) {
        let mut compiled = Vec::new();
        let mut refused = Vec::new();
        'records: for mut silence in records {
            // Records can come from anyone who can write to Redis: the limits the command
            // enforces are enforced here too.
            if compiled.len() >= MAX_SILENCES {
                refused.push((
                    silence.id.clone(),
                    format!("more than {MAX_SILENCES} silences are kept"),
                ));
                continue;
            }
            if silence.rule.is_none()
                && silence.host.is_none()
                && silence.thread.is_none()
                && silence.captures.is_empty()
            {
                refused.push((silence.id.clone(), "it has no matcher".to_owned()));
                continue;
            }
            let longest = i64::try_from(MAX_SILENCE.as_millis()).unwrap_or(i64::MAX);
            silence.ends_ms = silence
                .ends_ms
                .min(silence.starts_ms.saturating_add(longest));
            let mut captures = Vec::new();
            for c in &silence.captures {
                let value = if c.regex {
                    match compile_anchored(&c.value) {
                        Ok(re) => ValueMatch::Regex(re),
                        Err(error) => {
                            refused.push((silence.id.clone(), format!("`{c}`: {error}")));
                            continue 'records;
                        }
                    }
                } else {
                    ValueMatch::Equals(c.value.clone())
                };
                captures.push((c.name.clone(), value));
            }
            compiled.push(Compiled {
                silence: Arc::new(silence),
                captures,
            });
        }
        (Self { compiled }, refused)
    }

    pub fn is_empty(&self) -> bool {
        self.compiled.is_empty()
    }

    /// The silence of this id, active or ended.
    pub fn get(&self, id: &str) -> Option<&Arc<Silence>> {
        self.compiled
            .iter()
            .find(|c| c.silence.id == id)
            .map(|c| &c.silence)
    }

    /// Whether any silence is active at `now_ms`: while none is, hits pay nothing.
    pub fn any_active(&self, now_ms: i64) -> bool {
        self.compiled.iter().any(|c| c.silence.is_active(now_ms))
    }

    /// The first active silence all of whose matchers match `candidate`. A capture
    /// matcher of a candidate without captures matches when `holds_thread` says the
    /// silence already holds something back from that thread (a resolution or an
    /// absence of a silenced key).
    pub fn holding(
        &self,
        candidate: &Candidate<'_>,
        now_ms: i64,
        holds_thread: &dyn Fn(&str) -> bool,
    ) -> Option<&Arc<Silence>> {
        let mut chat_thread: Option<String> = None;
        self.compiled
            .iter()
            .find(|c| {
                let s = &c.silence;
                if !s.is_active(now_ms)
                    || s.rule.as_deref().is_some_and(|r| r != candidate.rule)
                    || s.host.as_deref().is_some_and(|h| h != candidate.host)
                {
                    return false;
                }
                if let Some(thread) = &s.thread
                    && thread != candidate.thread
                {
                    let chat = chat_thread.get_or_insert_with(|| (candidate.chat_thread)());
                    if thread != chat {
                        return false;
                    }
                }
                if c.captures.is_empty() {
                    return true;
                }
                let Some(capture) = candidate.capture else {
                    return holds_thread(&s.id);
                };
                c.captures.iter().all(|(name, value)| {
                    let Some(got) = capture(name) else {
                        return false;
                    };
                    match value {
                        ValueMatch::Equals(v) => got == v.as_str(),
                        ValueMatch::Regex(re) => re.is_match(&got),
                    }
                })
            })
            .map(|c| &c.silence)
    }
}

/// The state of a silence for people: `active, ends in 1h 59m` or `ended 5m ago (expired
/// by root@ops-1)`.
pub fn describe_state(s: &Silence, now_ms: i64) -> String {
    let span = |ms: i64| {
        let secs = u64::try_from(ms.max(0) / 1000).unwrap_or(0).max(1);
        humantime::format_duration(Duration::from_secs(secs)).to_string()
    };
    if s.is_active(now_ms) {
        return format!("active, ends in {}", span(s.ends_ms.saturating_sub(now_ms)));
    }
    let mut out = format!("ended {} ago", span(now_ms.saturating_sub(s.ends_ms)));
    if let Some(by) = &s.expired_by {
        let _ = write!(out, " (expired by {by})");
    }
    out
}

#[cfg(test)]
mod tests;
