//! The second stage of loading: raw structs to a validated [`Config`].
//!
//! Validation keeps going after an error so that one run of `chattail check` lists every
//! mistake. Each check that fails records a located diagnostic naming the rule, webhook or
//! file entry it concerns; nothing here ever formats a webhook URL.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use regex::bytes::{Regex, RegexBuilder};
use serde_saphyr::Spanned;

use super::raw::{
    RawConfig, RawDedup, RawDelivery, RawMultiline, RawRule, RawSelfAlerts, RawWebhook,
};
use super::{
    Boundary, Config, DEFAULT_MAX_KEYS, DEFAULT_MAX_LINE_BYTES, DEFAULT_MAX_PER_SECOND,
    DEFAULT_MESSAGE, DEFAULT_MESSAGE_WITH_CONTEXT, DEFAULT_MULTILINE_MAX_LINES,
    DEFAULT_MULTILINE_TIMEOUT, DEFAULT_STATE_DIR, DEFAULT_THREAD_KEY, Dedup, Delivery, FileSpec,
    LoadOptions, Loaded, Location, MAX_CONTEXT_BEFORE, MAX_LINE_BYTES_RANGE, MULTILINE_PRESETS,
    Multiline, RULE_REGEX_SIZE_LIMIT, Report, Rule, Severity, UrlPolicy, Webhook, expand,
};
use crate::path_glob::PathGlob;
use crate::pipeline::template::{BUILTINS, Template};
use crate::webhook_url::WebhookUrl;

/// The longest dedup window accepted; longer ones are almost always a unit mistake.
const MAX_WINDOW: Duration = Duration::from_secs(7 * 24 * 3600);

pub(super) fn validate(
    path: &Path,
    source: &str,
    options: &LoadOptions<'_>,
) -> Result<Loaded, Report> {
    let mut report = Report::new(path, source);
    let raw: RawConfig = match serde_saphyr::from_str(source) {
        Ok(raw) => raw,
        Err(error) => {
            let location = error.location().and_then(Location::from_yaml);
            report.error(location, yaml_message(&error));
            return Err(report);
        }
    };
    // Relative paths in the config are relative to its directory, made absolute now (from
    // the working directory, without touching the disk) so that file paths, `{file}` and
    // watch events all use one form.
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let base_dir = std::path::absolute(parent).unwrap_or_else(|_| parent.to_path_buf());
    let base_dir = base_dir.as_path();
    let mut v = Validator {
        report,
        options,
        base_dir,
    };
    let config = v.config(path, raw);
    if v.report.has_errors() {
        Err(v.report)
    } else {
        Ok(Loaded {
            config,
            warnings: v.report,
        })
    }
}

/// serde-saphyr's message without its own location and snippet, because the report
/// prints both in one uniform style, plus a suggestion for a misspelt key.
fn yaml_message(error: &serde_saphyr::Error) -> String {
    let text = error.without_snippet().to_string();
    let mut text = text.trim();
    if let Some((head, rest)) = text.split_once(": ")
        && head.starts_with("line ")
        && head.contains(" column ")
    {
        text = rest;
    }
    if let Some(at) = text.rfind(" at line ")
        && text[at..].contains(", column ")
    {
        text = &text[..at];
    }
    if text.is_empty() {
        return "the file is not valid YAML".to_owned();
    }
    // Reword the parser's terms into what the operator sees in the file.
    if text == "expected sequence start" {
        return "expected a list here (lines starting with `- `)".to_owned();
    }
    if text == "expected mapping start" {
        return "expected a mapping here (`key: value` lines)".to_owned();
    }
    if let Some(rest) = text.strip_prefix("duplicate mapping key: ") {
        let key = rest
            .split(", set DuplicateKeyPolicy")
            .next()
            .unwrap_or(rest);
        return format!("`{key}` is defined twice in the same mapping");
    }
    match suggest_field(text) {
        Some(field) => format!("{text}; did you mean `{field}`?"),
        None => text.to_owned(),
    }
}

/// For serde's "unknown field `x`, expected one of a, b" message, the expected field closest
/// to `x`, when it is close enough to be a typo.
fn suggest_field(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("unknown field `")?;
    let (unknown, rest) = rest.split_once('`')?;
    let expected = rest.split_once("expected ")?.1;
    let expected = expected.strip_prefix("one of ").unwrap_or(expected);
    expected
        .split(", ")
        .map(|f| f.trim_matches('`'))
        .map(|f| (edit_distance(unknown, f), f))
        .filter(|(d, f)| *d <= 2 && *d < f.len())
        .min()
        .map(|(_, f)| f)
}

/// Levenshtein distance, for short key names only.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitute = previous + usize::from(ca != *cb);
            previous = row[j + 1];
            row[j + 1] = substitute.min(row[j] + 1).min(previous + 1);
        }
    }
    row[b.len()]
}

struct Validator<'a> {
    report: Report,
    options: &'a LoadOptions<'a>,
    base_dir: &'a Path,
}

fn loc<T>(spanned: &Spanned<T>) -> Option<Location> {
    Location::from_yaml(spanned.referenced)
}

impl Validator<'_> {
    fn config(&mut self, path: &Path, raw: RawConfig) -> Config {
        let state_dir = match &raw.state_dir {
            Some(dir) => self.path_value(dir, "state_dir"),
            None => PathBuf::from(DEFAULT_STATE_DIR),
        };
        let host = match &raw.host {
            Some(host) => self.expanded(host, "host").unwrap_or_default(),
            None => self.options.default_host.clone(),
        };
        let webhooks: Vec<Webhook> = raw
            .webhooks
            .iter()
            .filter_map(|(name, webhook)| self.webhook(name, webhook))
            .collect();
        if raw.webhooks.is_empty() {
            self.report.error(
                None,
                "no `webhooks` are defined: add at least one, e.g. `webhooks: {oncall: {url: ${ONCALL_WEBHOOK_URL}}}`",
            );
        }
        if raw.files.is_empty() {
            self.report.error(
                None,
                "no `files` are configured: add at least one `- path: /var/log/app/*.log`",
            );
        }
        let self_alerts = raw.self_alerts.as_ref().map(|s| self.self_alerts(s, &raw));
        let default_missing_after = raw
            .self_alerts
            .as_ref()
            .and_then(|s| s.missing_after.as_ref())
            .and_then(|m| self.duration(m, "self_alerts.missing_after"));
        let files = raw
            .files
            .iter()
            .enumerate()
            .filter_map(|(i, file)| {
                let missing_after = match &file.missing_after {
                    Some(m) => self.duration(m, &format!("files[{i}].missing_after")),
                    None => default_missing_after,
                };
                let max_line_bytes = match &file.max_line_bytes {
                    None => DEFAULT_MAX_LINE_BYTES,
                    Some(n) if MAX_LINE_BYTES_RANGE.contains(&n.value) => {
                        usize::try_from(n.value).unwrap_or(DEFAULT_MAX_LINE_BYTES)
                    }
                    Some(n) => {
                        self.report.error(
                            loc(n),
                            format!(
                                "files[{i}].max_line_bytes must be between {} and {}, not {}",
                                MAX_LINE_BYTES_RANGE.start(),
                                MAX_LINE_BYTES_RANGE.end(),
                                n.value
                            ),
                        );
                        DEFAULT_MAX_LINE_BYTES
                    }
                };
                let multiline = file
                    .multiline
                    .as_ref()
                    .and_then(|m| self.multiline(m, i))
                    .map(Arc::new);
                let glob = self.glob_path(&file.path, &format!("files[{i}].path"))?;
                Some(super::FileSpec {
                    pattern: glob.as_str().to_owned(),
                    glob,
                    start_at: file.start_at.unwrap_or_default(),
                    max_line_bytes,
                    multiline,
                    missing_after,
                })
            })
            .collect::<Vec<FileSpec>>();
        if raw.rules.is_empty() {
            self.report.error(
                None,
                "no `rules` are defined: chattail would read the files and never post",
            );
        }
        let mut seen: HashMap<String, u64> = HashMap::new();
        let mut rules = Vec::new();
        for rule in &raw.rules {
            let name = rule.name.value.clone();
            let line = rule.name.referenced.line();
            if let Some(first) = seen.insert(name.clone(), line) {
                self.report.error(
                    loc(&rule.name),
                    format!("rule name `{name}` is used twice (first at line {first}); rule names must be unique"),
                );
            }
            if let Some(rule) = self.rule(rule, &raw) {
                rules.push(Arc::new(rule));
            }
        }
        let delivery = match &raw.delivery {
            Some(d) => self.delivery(d),
            None => Delivery::default(),
        };
        let admin_listen = raw.admin.as_ref().and_then(|admin| {
            let text = self.expanded(&admin.listen, "admin.listen")?;
            match text.trim().parse::<std::net::SocketAddr>() {
                Ok(addr) => Some(addr),
                Err(_) => {
                    self.report.error(
                        loc(&admin.listen),
                        format!("admin.listen `{text}` is not an address and port; write e.g. `127.0.0.1:9898` (or `0.0.0.0:9898` in a container)"),
                    );
                    None
                }
            }
        });
        Config {
            source_path: path.to_owned(),
            // Set by `load_bytes`, which has the bytes.
            source_digest: 0,
            state_dir,
            host,
            webhooks,
            files,
            rules,
            delivery,
            admin_listen,
            self_alerts,
        }
    }

    fn self_alerts(&mut self, raw: &RawSelfAlerts, config: &RawConfig) -> super::SelfAlerts {
        let webhook = raw.webhook.value.clone();
        if !config.webhooks.contains_key(&webhook) {
            self.report.error(
                loc(&raw.webhook),
                format!(
                    "self_alerts.webhook `{webhook}` is not defined (defined: {})",
                    defined_webhooks(config)
                ),
            );
        }
        super::SelfAlerts { webhook }
    }

    /// Expands `${VAR}` in a string value, recording an error that names `what`.
    fn expanded(&mut self, value: &Spanned<String>, what: &str) -> Option<String> {
        match expand(&value.value, self.options.env) {
            Ok(text) => Some(text),
            Err(error) => {
                self.report.error(loc(value), format!("{what}: {error}"));
                None
            }
        }
    }

    fn absolute(&self, value: &str) -> PathBuf {
        let p = Path::new(value);
        if p.is_absolute() {
            p.to_owned()
        } else {
            self.base_dir.join(p)
        }
    }

    fn path_value(&mut self, value: &Spanned<String>, what: &str) -> PathBuf {
        let text = self.expanded(value, what).unwrap_or_default();
        if text.trim().is_empty() {
            self.report.error(loc(value), format!("{what} is empty"));
        }
        self.absolute(&text)
    }

    /// Expands, makes absolute and compiles a glob, with the engine discovery uses.
    fn glob_path(&mut self, value: &Spanned<String>, what: &str) -> Option<PathGlob> {
        let text = self.expanded(value, what)?;
        if text.trim().is_empty() {
            self.report.error(loc(value), format!("{what} is empty"));
            return None;
        }
        let absolute = self.absolute(&text).to_string_lossy().into_owned();
        match PathGlob::new(&absolute) {
            Ok(glob) => Some(glob),
            Err(error) => {
                self.report.error(
                    loc(value),
                    format!("{what}: `{text}` is not a valid glob: {error}"),
                );
                None
            }
        }
    }

    fn webhook(&mut self, name: &str, raw: &Spanned<RawWebhook>) -> Option<Webhook> {
        let location = loc(raw);
        if !is_name(name) {
            self.report.error(
                location,
                format!("webhook name `{name}` may only use letters, digits, `-`, `_` and `.`"),
            );
        }
        let max_per_second = match &raw.value.max_per_second {
            None => DEFAULT_MAX_PER_SECOND,
            Some(rate) => {
                let value = rate.value;
                if !(value.is_finite() && value > 0.0 && value <= 100.0) {
                    self.report.error(
                        loc(rate),
                        format!("webhook `{name}`: max_per_second must be above 0 and at most 100, not {value}"),
                    );
                } else if value > 1.0 {
                    self.report.warning(
                        loc(rate),
                        format!(
                            "webhook `{name}`: max_per_second {value} is above Chat's quota of 1 per second \
                             per space; expect 429 answers and retries"
                        ),
                    );
                }
                value
            }
        };
        let url_value = &raw.value.url;
        let url = match expand(&url_value.value, self.options.env) {
            Err(error) => Err(error.to_string()),
            Ok(text) => WebhookUrl::parse(&text).map_err(|e| format!("the url {e}")),
        };
        let url = match (url, self.options.url_policy) {
            (Ok(url), _) => Some(url),
            (Err(message), UrlPolicy::Required) => {
                self.report.secret_value(
                    Severity::Error,
                    loc(url_value),
                    format!("webhook `{name}`: {message}"),
                );
                None
            }
            (Err(message), UrlPolicy::Optional) => {
                self.report.secret_value(
                    Severity::Warning,
                    loc(url_value),
                    format!("webhook `{name}`: {message}; ignored here because nothing is posted"),
                );
                None
            }
        };
        Some(Webhook {
            name: name.to_owned(),
            url,
            max_per_second,
        })
    }

    fn rule(&mut self, raw: &RawRule, config: &RawConfig) -> Option<Rule> {
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
            .and_then(|p| self.regex(&p, &raw.pattern, &what("`match`")));
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

        // Templates can only be checked against a pattern that compiled.
        let pattern = pattern?;
        for group in pattern.capture_names().flatten() {
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
        let default_message = if context_before > 0 {
            DEFAULT_MESSAGE_WITH_CONTEXT
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
        let dedup = raw
            .dedup
            .as_ref()
            .and_then(|d| self.dedup(d, &pattern, &thread_key, &name));
        Some(Rule {
            name,
            pattern,
            exclude,
            webhook,
            thread_key: thread_key?,
            message: message?,
            dedup,
            files,
            context_before,
        })
    }

    fn regex(&mut self, source: &str, value: &Spanned<String>, what: &str) -> Option<Regex> {
        match RegexBuilder::new(source)
            .size_limit(RULE_REGEX_SIZE_LIMIT)
            .build()
        {
            Ok(re) => Some(re),
            Err(regex::Error::CompiledTooBig(limit)) => {
                self.report.error(
                    loc(value),
                    format!(
                        "{what} is too big once compiled (over {} KiB); bound large repetitions such as \
                         `\\w{{1000}}`, or use `(?-u:\\w)` when ASCII is enough",
                        limit / 1024
                    ),
                );
                None
            }
            Err(error) => {
                self.report
                    .error(loc(value), format!("{what} is not a valid regex:\n{error}"));
                None
            }
        }
    }

    fn template(
        &mut self,
        pattern: &Regex,
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
            Ok(t) => Some(t),
            Err(error) => {
                self.report.error(location, format!("{what} {error}"));
                None
            }
        }
    }

    fn dedup(
        &mut self,
        raw: &RawDedup,
        pattern: &Regex,
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

    fn multiline(&mut self, raw: &Spanned<RawMultiline>, i: usize) -> Option<Multiline> {
        let what = format!("files[{i}].multiline");
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
        Some(Multiline {
            boundary,
            timeout,
            max_lines,
        })
    }

    fn delivery(&mut self, raw: &RawDelivery) -> Delivery {
        let defaults = Delivery::default();
        let mut pick = |value: &Option<Spanned<String>>, name: &str, default: Duration| match value
        {
            Some(v) => self
                .duration(v, &format!("delivery.{name}"))
                .unwrap_or(default),
            None => default,
        };
        let mut d = Delivery {
            shutdown_grace: pick(
                &raw.shutdown_grace,
                "shutdown_grace",
                defaults.shutdown_grace,
            ),
            park_for: pick(&raw.park_for, "park_for", defaults.park_for),
            request_timeout: pick(
                &raw.request_timeout,
                "request_timeout",
                defaults.request_timeout,
            ),
            min_backoff: pick(&raw.min_backoff, "min_backoff", defaults.min_backoff),
            max_backoff: pick(&raw.max_backoff, "max_backoff", defaults.max_backoff),
            max_outbox: defaults.max_outbox,
        };
        if let Some(n) = &raw.max_outbox {
            if n.value == 0 {
                self.report
                    .error(loc(n), "delivery.max_outbox must be at least 1");
            } else {
                d.max_outbox = n.value;
            }
        }
        if d.min_backoff > d.max_backoff {
            self.report.error(
                raw.min_backoff.as_ref().and_then(loc),
                "delivery.min_backoff is longer than delivery.max_backoff",
            );
        }
        d
    }

    fn duration(&mut self, value: &Spanned<String>, what: &str) -> Option<Duration> {
        let text = self.expanded(value, what)?;
        match humantime::parse_duration(text.trim()) {
            Ok(d) if d.is_zero() => {
                self.report
                    .error(loc(value), format!("{what} must be longer than 0"));
                None
            }
            Ok(d) if d > MAX_WINDOW => {
                self.report.error(
                    loc(value),
                    format!("{what} `{text}` is longer than the maximum of 7 days"),
                );
                None
            }
            Ok(d) => Some(d),
            Err(error) => {
                self.report.error(
                    loc(value),
                    format!("{what} `{text}` is not a duration ({error}); write e.g. `90s`, `5m` or `1h`"),
                );
                None
            }
        }
    }
}

/// The names of the config's webhooks, for "not defined" errors.
fn defined_webhooks(config: &RawConfig) -> String {
    let defined: Vec<&str> = config.webhooks.keys().map(String::as_str).collect();
    if defined.is_empty() {
        "none".to_owned()
    } else {
        defined.join(", ")
    }
}

/// Names of rules and webhooks end up in logs and metric labels, so they stay plain.
fn is_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}
