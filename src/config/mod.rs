//! Loading the YAML config into a validated [`Config`].
//!
//! Loading happens in two stages. `raw.rs` deserialises the file into structs that mirror
//! it (unknown keys and wrong types are located errors). `validate.rs` then expands
//! `${VAR}`, compiles every regex and template, resolves webhook names and collects every
//! problem it finds into one [`Report`]. Nothing downstream ever sees an unvalidated value:
//! a `Config` owns compiled regexes and parsed templates, so a mistake is found by
//! `chattail check`, not at 3 a.m.

mod diagnostics;
mod env_expand;
mod raw;
mod validate;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use regex::bytes::Regex;

use crate::pipeline::pattern::RulePattern;

pub use diagnostics::{Diagnostic, Location, Report, Severity};
pub use env_expand::{ExpandError, expand};
pub use raw::{LogFormat, StartAt};

use crate::path_glob::PathGlob;
use crate::pipeline::template::Template;
use crate::webhook_url::WebhookUrl;

/// Where `state_dir` points when the config does not say.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/chattail";
/// A multiline event with no new line for this long is complete.
pub const DEFAULT_MULTILINE_TIMEOUT: Duration = Duration::from_secs(1);
/// The most lines a multiline event keeps unless a file entry says otherwise.
pub const DEFAULT_MULTILINE_MAX_LINES: usize = 500;
/// The most bytes a multiline event keeps unless a file entry says otherwise.
pub const DEFAULT_MULTILINE_MAX_BYTES: usize = 256 * 1024;
/// The range `multiline.max_bytes` may take.
pub const MULTILINE_MAX_BYTES_RANGE: std::ops::RangeInclusive<u64> = 1024..=16 * 1024 * 1024;
/// Lines longer than this many bytes are cut unless a file entry says otherwise.
pub const DEFAULT_MAX_LINE_BYTES: usize = 64 * 1024;
/// The range `max_line_bytes` may take.
pub const MAX_LINE_BYTES_RANGE: std::ops::RangeInclusive<u64> = 256..=16 * 1024 * 1024;
/// Chat's quota is one message per second per space.
pub const DEFAULT_MAX_PER_SECOND: f64 = 1.0;
/// How many dedup keys a rule may track before the least recently seen is evicted.
pub const DEFAULT_MAX_KEYS: usize = 10_000;
/// The message a rule posts when it gives no `message` template.
pub const DEFAULT_MESSAGE: &str = "*{rule}* on {host} in {file}\n```{line}```";
/// The message of a rule with `context.before` that gives no `message` template.
pub const DEFAULT_MESSAGE_WITH_CONTEXT: &str =
    "*{rule}* on {host} in {file}\n```{context}\n{line}```";
/// The most lines `context.before` may ask for.
pub const MAX_CONTEXT_BEFORE: u64 = 50;
/// The thread key a rule uses when it gives no `thread_key` template.
pub const DEFAULT_THREAD_KEY: &str = "{rule}";
/// The message of a rule with `threshold` that sets none.
pub const DEFAULT_THRESHOLD_MESSAGE: &str =
    "*{rule}* on {host}: {count} matches within {within} in {file}\n```{line}```";
/// The resolution message of a rule with `resolve` that sets none.
pub const DEFAULT_RESOLVE_MESSAGE: &str = "*Resolved*: {rule} on {host}";
/// The most memory one compiled rule pattern may use. Rust's regex engine is linear-time,
/// but a pattern such as `\w{1000}` can still take megabytes to compile.
pub const RULE_REGEX_SIZE_LIMIT: usize = 2 * 1024 * 1024;

/// A validated config. Every regex is compiled and every template parsed.
#[derive(Debug)]
pub struct Config {
    /// The file this config was loaded from.
    pub source_path: PathBuf,
    /// [`digest`] of the bytes it was loaded from.
    pub source_digest: u64,
    pub state_dir: PathBuf,
    /// The value of `{host}` in templates.
    pub host: String,
    /// Sorted by name.
    pub webhooks: Vec<Webhook>,
    pub files: Vec<FileSpec>,
    pub rules: Vec<Arc<Rule>>,
    pub delivery: Delivery,
    /// Where `/metrics` and `/healthz` are served (`admin.listen`); off when `None`.
    pub admin_listen: Option<std::net::SocketAddr>,
    /// The webhook chattail posts its own trouble to (`self_alerts.webhook`).
    pub self_alerts: Option<SelfAlerts>,
    /// Fleet mode (`fleet:`): shared pacing in Redis; off when `None`.
    pub fleet: Option<FleetConfig>,
    /// The systemd journal as a source (`journal:`); off when `None`.
    pub journal: Option<Journal>,
}

/// What `{file}` of a journal entry starts with; the unit follows. File paths are absolute,
/// so no file's path starts with it.
pub const JOURNAL_PREFIX: &str = "journal:";

/// The `spec` of journal entries in a pipeline `Origin` (where a file's line has its
/// `files` entry's index). It fits SQLite's integers, as pending events store it.
pub const JOURNAL_SPEC: usize = i64::MAX as usize;

/// `journal:`: entries of the systemd journal, read through `journalctl`.
#[derive(Debug)]
pub struct Journal {
    /// A directory of journal files (`journalctl --directory`); `None`: the system journal.
    pub directory: Option<PathBuf>,
    /// Only entries of these units are read; `None`: every unit.
    pub units: Option<Vec<UnitGlob>>,
    /// Where to start when no position is saved.
    pub start_at: StartAt,
    /// Longer messages are cut to this many bytes.
    pub max_line_bytes: usize,
    /// How entries of one unit join into events (stack traces), if they do.
    pub multiline: Option<Arc<Multiline>>,
}

impl Journal {
    /// Whether entries of `unit` are read.
    pub fn reads_unit(&self, unit: &str) -> bool {
        self.units
            .as_ref()
            .is_none_or(|globs| globs.iter().any(|g| g.is_match(unit)))
    }

    /// The key its saved position is stored under: a position in one directory means
    /// nothing in another.
    pub fn position_key(&self) -> String {
        match &self.directory {
            Some(dir) => dir.to_string_lossy().into_owned(),
            None => "system".to_owned(),
        }
    }
}

/// A glob on a unit's name (`app@*.service`), as `systemctl` takes them.
#[derive(Debug, Clone)]
pub struct UnitGlob {
    pub pattern: String,
    matcher: globset::GlobMatcher,
}

impl UnitGlob {
    pub fn new(pattern: &str) -> Result<Self, globset::Error> {
        Ok(Self {
            pattern: pattern.to_owned(),
            matcher: globset::Glob::new(pattern)?.compile_matcher(),
        })
    }

    pub fn is_match(&self, unit: &str) -> bool {
        self.matcher.is_match(unit)
    }
}

/// How one source's lines are read: what a `files` entry or the journal says.
#[derive(Debug, Clone, Copy)]
pub struct Reading<'a> {
    pub format: LogFormat,
    pub max_line_bytes: usize,
    pub multiline: Option<&'a Arc<Multiline>>,
}

/// `fleet:`: agents on many hosts share state in Redis.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetConfig {
    /// Its user and password are secret; shown as host, port and database only.
    pub redis: crate::redis_url::RedisUrl,
    /// Prefixes every key, so several fleets can share one Redis.
    pub namespace: String,
    /// The longest a Redis call may take before the agent goes on alone.
    pub timeout: Duration,
}

/// `self_alerts:`: where and when chattail tells Chat about its own trouble.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelfAlerts {
    /// The name of a configured webhook.
    pub webhook: String,
}

/// How notifications are delivered to Chat (`delivery:` in the file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// On SIGTERM/SIGINT, how long the sender may go on posting what is queued.
    pub shutdown_grace: Duration,
    /// How long a webhook that Chat refused (400/401/403/404) waits before a new try.
    pub park_for: Duration,
    /// The deadline of one request to Chat.
    pub request_timeout: Duration,
    /// The first and the largest wait between retries of a post.
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// When this many notifications are queued, reading pauses (nothing is dropped).
    pub max_outbox: u64,
}

impl Default for Delivery {
    fn default() -> Self {
        Self {
            shutdown_grace: Duration::from_secs(5),
            park_for: Duration::from_secs(300),
            request_timeout: Duration::from_secs(10),
            min_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            max_outbox: 100_000,
        }
    }
}

impl Config {
    /// The most `context.before` lines any rule wants (0: no rule shows context).
    pub fn max_context_before(&self) -> usize {
        self.rules
            .iter()
            .map(|r| r.context_before)
            .max()
            .unwrap_or(0)
    }

    /// How lines of `spec` (a `files` index, or [`JOURNAL_SPEC`]) are read; `None` for an
    /// index past the end (a `files` entry gone after a reload).
    pub fn reading(&self, spec: usize) -> Option<Reading<'_>> {
        if spec == JOURNAL_SPEC {
            return self.journal.as_ref().map(|j| Reading {
                format: LogFormat::Plain,
                max_line_bytes: j.max_line_bytes,
                multiline: j.multiline.as_ref(),
            });
        }
        self.files.get(spec).map(|f| Reading {
            format: f.format,
            max_line_bytes: f.max_line_bytes,
            multiline: f.multiline.as_ref(),
        })
    }

    pub fn webhook(&self, name: &str) -> Option<&Webhook> {
        self.webhooks.iter().find(|w| w.name == name)
    }
}

/// A named webhook. `url` is `None` only when the config was loaded with
/// [`UrlPolicy::Optional`] and the URL could not be resolved (for `chattail test`).
#[derive(Debug)]
pub struct Webhook {
    pub name: String,
    pub url: Option<WebhookUrl>,
    pub max_per_second: f64,
}

/// One `files` entry: a glob of paths to follow.
#[derive(Debug)]
pub struct FileSpec {
    /// The glob, made absolute against the config file's directory.
    pub pattern: String,
    /// `pattern`, compiled: discovery expands it, and paths are matched against it.
    pub glob: PathGlob,
    pub start_at: StartAt,
    /// How its records are written; decoded before multiline and rules see them.
    pub format: LogFormat,
    /// Longer lines are cut to this many bytes.
    pub max_line_bytes: usize,
    /// How lines join into events (stack traces), if they do.
    pub multiline: Option<Arc<Multiline>>,
    /// When the glob has matched no file for this long, that is an episode worth a
    /// self-alert (`files[].missing_after`, or `self_alerts.missing_after` for all).
    pub missing_after: Option<Duration>,
}

/// How the lines of a file join into multiline events.
#[derive(Debug)]
pub struct Multiline {
    pub boundary: Boundary,
    /// An event with no new line for this long is complete.
    pub timeout: Duration,
    /// Lines beyond this many are cut from the event (and counted).
    pub max_lines: usize,
    /// Lines that would take the event past this many bytes are cut (and counted).
    pub max_bytes: usize,
}

/// What tells one event from the next.
#[derive(Debug)]
pub enum Boundary {
    /// A line matching this starts a new event; others continue the current one.
    Start(Regex),
    /// A line matching this continues the current event; others start a new one
    /// (the built-in presets, which describe continuation lines).
    Continue(Regex),
}

impl Multiline {
    /// Whether `line` begins a new event.
    pub fn starts_event(&self, line: &[u8]) -> bool {
        match &self.boundary {
            Boundary::Start(re) => re.is_match(line),
            Boundary::Continue(re) => !re.is_match(line),
        }
    }
}

/// Continuation lines of the built-in multiline presets.
pub const MULTILINE_PRESETS: [(&str, &str); 3] = [
    // The exception line that follows a log line, indented frames, "Caused by:",
    // "Suppressed:" and "... 12 more".
    (
        "java",
        r"^(?:[ \t]+\S|[\w$]+(?:\.[\w$]+)+(?:Exception|Error|Throwable)\b|Caused by:|Suppressed:|\.\.\. \d+ (?:more|common frames omitted))",
    ),
    // The traceback header, indented frames and source, chained-exception notes, and the
    // final `SomeError: message` line.
    (
        "python",
        r"^(?:[ \t]+\S|Traceback \(most recent call last\):|During handling of the above exception|The above exception was the direct cause|[A-Za-z_][\w.]*(?:Error|Exception|Warning|Exit|Interrupt)\b)",
    ),
    // Blank lines, goroutine headers, function lines and indented file:line frames.
    (
        "go",
        r"^(?:$|[ \t]+\S|goroutine \d+ \[|created by |\[signal |[\w./*()-]+\(.*\)$|exit status \d+)",
    ),
];

/// One validated rule.
#[derive(Debug)]
pub struct Rule {
    pub name: String,
    pub pattern: RulePattern,
    pub exclude: Option<Regex>,
    /// The name of a webhook that exists in [`Config::webhooks`].
    pub webhook: String,
    pub thread_key: Template,
    pub message: Template,
    pub dedup: Option<Dedup>,
    /// Restricts the rule to files matching one of these globs; `None` means every file
    /// (unless `units` is set).
    pub files: Option<Vec<PathGlob>>,
    /// Restricts the rule to journal entries of these units; `None` means every unit
    /// (unless `files` is set).
    pub units: Option<Vec<UnitGlob>>,
    /// How many lines before a match its message shows (`{context}`).
    pub context_before: usize,
    /// `threshold`: post only when this many matches of one key fall within a time.
    /// Such a rule always has `dedup` (its own, or one of `within`), which takes over once
    /// it fires.
    pub threshold: Option<Threshold>,
    /// `resolve`: how an incident of a thread key ends.
    pub resolve: Option<Resolve>,
    /// `absent_after`: the rule alerts when its line does not come.
    pub absence: Option<Absence>,
    /// Open incidents, absence keys and threshold counters kept per rule (`dedup.max_keys`).
    pub max_keys: usize,
    /// `card`: the rule's hits are posted as a Chat card with a short text.
    pub card: Option<Card>,
}

/// The most widgets a card may have (Chat ignores those beyond).
pub const MAX_CARD_WIDGETS: usize = 100;

/// A rule's `card`: a `cardsV2` card (header, labelled fields, the line, link buttons).
#[derive(Debug)]
pub struct Card {
    pub title: Template,
    pub subtitle: Option<Template>,
    pub fields: Vec<CardField>,
    /// Whether the line (or event) is shown in the card.
    pub line: bool,
    pub buttons: Vec<CardButton>,
    /// The rule sets `message`: it is the text beside the card; otherwise the card's title
    /// is.
    pub text_is_message: bool,
}

/// One labelled field of a card (`decoratedText`).
#[derive(Debug)]
pub struct CardField {
    pub label: String,
    pub value: Template,
}

/// One link button of a card; the URL's scheme and host are in its fixed part.
#[derive(Debug)]
pub struct CardButton {
    pub text: String,
    pub url: Template,
}

/// A rule's `threshold`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Threshold {
    pub count: usize,
    pub within: Duration,
}

/// A rule's `resolve`.
#[derive(Debug)]
pub struct Resolve {
    /// `resolve.match`, and the rule's thread key parsed against its groups.
    pub pattern: Option<(RulePattern, Template)>,
    /// No occurrence for this long resolves the incident.
    pub after: Option<Duration>,
    /// Rendered with the resolving line's captures (`match`), or with the incident's last
    /// occurrence's values of the same names (`after`).
    pub message: Template,
}

impl Resolve {
    /// The groups `message` is rendered against: `match`'s, or the rule's own.
    pub fn message_pattern<'a>(&'a self, rule: &'a RulePattern) -> &'a RulePattern {
        self.pattern.as_ref().map_or(rule, |(p, _)| p)
    }
}

/// A rule's `absent_after`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Absence {
    pub after: Duration,
    /// The thread keys of `expect`, rendered at load.
    pub expected: Vec<String>,
}

impl Rule {
    /// Whether this rule applies to the file at `path`, or to journal entries of a unit
    /// when `path` is `journal:UNIT`. A rule limited to files sees no journal entry and
    /// one limited to units no file; a rule with neither sees both.
    pub fn applies_to(&self, path: &Path) -> bool {
        let text = path.as_os_str().as_encoded_bytes();
        if let Some(unit) = text.strip_prefix(JOURNAL_PREFIX.as_bytes()) {
            let unit = String::from_utf8_lossy(unit);
            return match (&self.units, &self.files) {
                (Some(globs), _) => globs.iter().any(|g| g.is_match(&unit)),
                (None, files) => files.is_none(),
            };
        }
        match (&self.files, &self.units) {
            (Some(globs), _) => globs.iter().any(|g| g.is_match(path)),
            (None, units) => units.is_none(),
        }
    }
}

/// A rule's burst settings.
#[derive(Debug)]
pub struct Dedup {
    pub window: Duration,
    pub key: Template,
    pub max_keys: usize,
}

/// What to do with a webhook URL that cannot be resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UrlPolicy {
    /// It is an error (`check`, `run`).
    Required,
    /// It is a warning and the webhook has no URL (`test`, which never posts).
    Optional,
}

/// Everything `load_bytes` needs besides the text, so tests can control the environment.
pub struct LoadOptions<'a> {
    pub url_policy: UrlPolicy,
    pub env: &'a dyn Fn(&str) -> Option<String>,
    /// The host name used when the config does not set `host`.
    pub default_host: String,
}

/// A loaded config and the warnings found on the way.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Report,
}

/// Reads and validates the config file at `path`, with the process environment and this
/// machine's host name.
pub fn load(path: &Path, url_policy: UrlPolicy) -> Result<Loaded, Report> {
    let bytes = read_source(path)?;
    load_source(path, &bytes, url_policy)
}

/// The config file's bytes, or a report saying why they cannot be read.
pub fn read_source(path: &Path) -> Result<Vec<u8>, Report> {
    std::fs::read(path).map_err(|error| {
        let mut report = Report::new(path, "");
        report.error(None, format!("cannot read the config file: {error}"));
        report
    })
}

/// Validates config bytes read from `path`, with the process's environment and host name.
pub fn load_source(path: &Path, bytes: &[u8], url_policy: UrlPolicy) -> Result<Loaded, Report> {
    let env = |name: &str| std::env::var(name).ok();
    let options = LoadOptions {
        url_policy,
        env: &env,
        default_host: system_hostname(),
    };
    load_bytes(path, bytes, &options)
}

/// Validates config bytes as if they had been read from `path`. Relative paths in the
/// config are resolved against `path`'s directory.
pub fn load_bytes(path: &Path, bytes: &[u8], options: &LoadOptions<'_>) -> Result<Loaded, Report> {
    match std::str::from_utf8(bytes) {
        Ok(source) => validate::validate(path, source, options).map(|mut loaded| {
            loaded.config.source_digest = digest(bytes);
            loaded
        }),
        Err(error) => {
            // Point at the first bad byte; the text before it is valid and can be shown.
            let valid = String::from_utf8_lossy(&bytes[..error.valid_up_to()]).into_owned();
            let line = valid.matches('\n').count() as u64 + 1;
            let column = valid.rsplit('\n').next().map_or(0, |l| l.chars().count()) as u64 + 1;
            let mut report = Report::new(path, &String::from_utf8_lossy(bytes));
            report.error(
                Some(Location { line, column }),
                "the config file is not valid UTF-8 (save it as UTF-8)",
            );
            Err(report)
        }
    }
}

/// A digest of a config file's bytes, to tell whether the file changed since it was
/// loaded (`--watch-config`). Not for security: it only needs to differ when bytes do.
pub fn digest(bytes: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::hash::DefaultHasher::new();
    bytes.hash(&mut hasher);
    hasher.finish()
}

/// This machine's host name, from the kernel, for `{host}`.
pub fn system_hostname() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim().to_owned())
        .find(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const EXAMPLE: &str = include_str!("../../rules.example.yaml");

    fn try_load(bytes: &[u8]) -> Result<Loaded, Report> {
        let env = |name: &str| {
            (name == "CHATTAIL_WEBHOOK_URL").then(|| "http://127.0.0.1:9/x".to_owned())
        };
        let options = LoadOptions {
            url_policy: UrlPolicy::Required,
            env: &env,
            default_host: "h".to_owned(),
        };
        load_bytes(Path::new("/etc/chattail/rules.yaml"), bytes, &options)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        // Any damage to a real config is either accepted or reported with at least one
        // error, and rendering the report never panics. This is the config loader's fuzz
        // test; it runs with every `cargo test`.
        #[test]
        fn damaged_configs_never_panic(
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..6)
        ) {
            let mut bytes = EXAMPLE.as_bytes().to_vec();
            for (at, byte, kind) in edits {
                if bytes.is_empty() { break; }
                let i = at.index(bytes.len());
                match kind {
                    0 => bytes[i] = byte,
                    1 => { bytes.remove(i); }
                    _ => bytes.insert(i, byte),
                }
            }
            match try_load(&bytes) {
                Ok(loaded) => { let _ = loaded.warnings.to_string(); }
                Err(report) => {
                    prop_assert!(report.has_errors());
                    let _ = report.to_string();
                }
            }
        }

        #[test]
        fn arbitrary_yaml_like_text_never_panics(text in "[a-z_:{}\\[\\] \\-\\n'\"$&*!|>#0-9]{0,200}") {
            if let Err(report) = try_load(text.as_bytes()) {
                prop_assert!(report.has_errors());
                let _ = report.to_string();
            }
        }
    }

    #[test]
    fn the_example_loads_with_relative_paths_made_absolute() {
        let loaded = try_load(EXAMPLE.as_bytes()).unwrap();
        assert_eq!(
            loaded.config.files[0].pattern,
            "/etc/chattail/fixtures/*.log"
        );
        assert!(
            loaded.config.files[0]
                .glob
                .is_match(Path::new("/etc/chattail/fixtures/webapp.log"))
        );
    }
}
