//! The second stage of loading: raw structs to a validated [`Config`].
//!
//! Validation keeps going after an error so that one run of `chattail check` lists every
//! mistake. Each check that fails records a located diagnostic naming the rule, webhook or
//! file entry it concerns; nothing here ever formats a webhook URL.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_saphyr::Spanned;

mod cards;
mod rules;
mod yaml_errors;

use yaml_errors::yaml_message;

use super::raw::{RawConfig, RawDelivery, RawFile, RawFleet, RawSelfAlerts, RawWebhook};
use super::{
    Config, DEFAULT_MAX_LINE_BYTES, DEFAULT_MAX_PER_SECOND, DEFAULT_STATE_DIR, Delivery, FileSpec,
    LoadOptions, Loaded, Location, MAX_LINE_BYTES_RANGE, Report, Rule, Severity, UrlPolicy,
    Webhook, expand,
};
use crate::path_glob::PathGlob;
use crate::webhook_url::WebhookUrl;

/// The longest dedup window accepted; longer ones are almost always a unit mistake.
/// The range `max_per_second` may take: below it a post would wait hours, above it no
/// Chat space would take the posts.
const MAX_PER_SECOND_RANGE: std::ops::RangeInclusive<f64> = 0.01..=100.0;
const MAX_WINDOW: Duration = Duration::from_secs(7 * 24 * 3600);

pub(super) fn validate(
    path: &Path,
    source: &str,
    options: &LoadOptions<'_>,
) -> Result<Loaded, Report> {
    let mut report = Report::new(path, source);
    let Some(raw) = parse_collecting_unknown_keys(source, &mut report) else {
        return Err(report);
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
        provided: Vec::new(),
        has_journal: false,
        host: String::new(),
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

/// How many unknown keys one run reports before it stops reading on.
const MAX_UNKNOWN_KEYS: usize = 50;

/// Parses the file into its raw form. An unknown key is one mistake among possibly many:
/// it is reported, its entry blanked out (lines keep their numbers) and the file read
/// again, so that one run lists every unknown key and then every other problem (a typo
/// no longer hides a bad regex below it). Any other YAML error stops here. Returns `None`
/// when nothing could be parsed; the errors are in `report`.
fn parse_collecting_unknown_keys(source: &str, report: &mut Report) -> Option<RawConfig> {
    let mut text = std::borrow::Cow::Borrowed(source);
    let mut unknown = 0;
    loop {
        let error = match serde_saphyr::from_str::<RawConfig>(&text) {
            Ok(raw) => return Some(raw),
            Err(error) => error,
        };
        let message = yaml_message(&error);
        let location = error.location();
        report.error(location.and_then(Location::from_yaml), message.clone());
        if !message.starts_with("unknown field") || unknown >= MAX_UNKNOWN_KEYS {
            return None;
        }
        let blanked = location.and_then(|l| without_entry(&text, l.line(), l.column()))?;
        unknown += 1;
        text = std::borrow::Cow::Owned(blanked);
    }
}

/// `text` with the mapping entry whose key starts at `line`:`column` (1-based) blanked:
/// the key, its value and the lines below indented deeper than the key. Lines are kept
/// (empty), so every other location stays where it was. `None` for a key inside a flow
/// mapping (`{a: 1, b: 2}`), which cannot be cut out line by line.
fn without_entry(text: &str, line: u64, column: u64) -> Option<String> {
    let line = usize::try_from(line).ok()?.checked_sub(1)?;
    let column = usize::try_from(column).ok()?.checked_sub(1)?;
    let mut lines: Vec<String> = text.split('\n').map(str::to_owned).collect();
    let key_line = lines.get(line)?;
    let start = key_line.char_indices().nth(column).map(|(i, _)| i)?;
    let before = &key_line[..start];
    if before.contains(['{', '[']) || !before.chars().all(|c| c == ' ' || c == '-') {
        return None;
    }
    let indent = before.chars().count();
    lines[line].truncate(start);
    for next in lines.iter_mut().skip(line + 1) {
        let content = next.trim_start_matches(' ');
        let deeper = next.len() - content.len() > indent;
        if content.is_empty() || deeper {
            next.clear();
        } else {
            break;
        }
    }
    Some(lines.join("\n"))
}

struct Validator<'a> {
    report: Report,
    options: &'a LoadOptions<'a>,
    base_dir: &'a Path,
    /// The source built-ins some `files` entry provides (`stream`, `namespace`, ...).
    provided: Vec<&'static str>,
    /// `journal:` is configured (a rule's `units` has something to limit).
    has_journal: bool,
    /// The value of `{host}`, for keys rendered at load (`expect`).
    host: String,
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
        self.host = host.clone();
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
        if raw.files.is_empty() && raw.journal.is_none() {
            self.report.error(
                None,
                "no `files` and no `journal` are configured: add at least one `- path: /var/log/app/*.log` under `files`, or `journal: {}` to read the systemd journal",
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
            .filter_map(|(i, file)| self.file(i, file, default_missing_after))
            .collect::<Vec<FileSpec>>();
        let journal = raw.journal.as_ref().and_then(|j| self.journal(j));
        self.provided = crate::pipeline::template::provided_builtins(
            files.iter().map(|f| (f.format, f.pattern.as_str())),
            raw.journal.is_some(),
        );
        self.has_journal = raw.journal.is_some();
        if raw.rules.is_empty() {
            self.report.error(
                None,
                "no `rules` are defined: chattail would read the files and never post",
            );
        }
        let rules = self.rules(&raw);
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
        let fleet = raw.fleet.as_ref().and_then(|f| self.fleet(f));
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
            fleet,
            journal,
        }
    }

    /// The `journal:` block.
    fn journal(&mut self, raw: &Spanned<super::raw::RawJournal>) -> Option<super::Journal> {
        let r = &raw.value;
        let directory = r
            .directory
            .as_ref()
            .map(|d| self.path_value(d, "journal.directory"));
        let units = match &r.units {
            None => None,
            Some(globs) if globs.is_empty() => {
                self.report.error(
                    loc(raw),
                    "journal.units is empty; leave it out to read every unit",
                );
                None
            }
            Some(globs) => self.unit_globs(globs, "journal.units"),
        };
        let max_line_bytes =
            self.max_line_bytes(r.max_line_bytes.as_ref(), "journal.max_line_bytes");
        let multiline = r
            .multiline
            .as_ref()
            .and_then(|m| self.multiline(m, "journal.multiline"))
            .map(Arc::new);
        Some(super::Journal {
            directory,
            units,
            start_at: r.start_at.unwrap_or_default(),
            max_line_bytes,
            multiline,
        })
    }

    /// Globs on unit names (`journal.units`, `rules[].units`), expanded and compiled.
    pub(super) fn unit_globs(
        &mut self,
        globs: &[Spanned<String>],
        what: &str,
    ) -> Option<Vec<super::UnitGlob>> {
        let mut compiled = Vec::new();
        let mut ok = true;
        for (i, glob) in globs.iter().enumerate() {
            let what = format!("{what}[{i}]");
            let Some(text) = self.expanded(glob, &what) else {
                ok = false;
                continue;
            };
            match super::UnitGlob::new(text.trim()) {
                Ok(g) if !text.trim().is_empty() => compiled.push(g),
                Ok(_) => {
                    self.report.error(loc(glob), format!("{what} is empty"));
                    ok = false;
                }
                Err(error) => {
                    self.report.error(
                        loc(glob),
                        format!("{what}: `{text}` is not a valid glob: {}", error.kind()),
                    );
                    ok = false;
                }
            }
        }
        ok.then_some(compiled)
    }

    fn fleet(&mut self, raw: &RawFleet) -> Option<super::FleetConfig> {
        let text = self.expanded(&raw.redis, "fleet.redis")?;
        let redis = match crate::redis_url::RedisUrl::parse(&text) {
            Ok(url) => Some(url),
            Err(error) => {
                // The line holds the URL: located, but not shown.
                self.report.secret_value(
                    Severity::Error,
                    loc(&raw.redis),
                    format!("fleet.redis {error}"),
                );
                None
            }
        };
        let namespace = self.expanded(&raw.namespace, "fleet.namespace")?;
        let namespace_ok = !namespace.is_empty()
            && namespace.len() <= 64
            && namespace
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !namespace_ok {
            self.report.error(
                loc(&raw.namespace),
                format!("fleet.namespace `{namespace}` must be 1 to 64 letters, digits, `-`, `_` or `.` (e.g. `prod`)"),
            );
        }
        let timeout = match &raw.timeout {
            Some(t) => self.duration(t, "fleet.timeout")?,
            None => Duration::from_millis(200),
        };
        if timeout.is_zero() || timeout > Duration::from_secs(10) {
            if let Some(t) = &raw.timeout {
                self.report.error(
                    loc(t),
                    "fleet.timeout must be above 0 and at most 10s (200ms is a good start)",
                );
            }
            return None;
        }
        Some(super::FleetConfig {
            redis: redis?,
            namespace: namespace_ok.then_some(namespace)?,
            timeout,
        })
    }

    /// One `files` entry.
    fn file(
        &mut self,
        i: usize,
        file: &RawFile,
        default_missing_after: Option<Duration>,
    ) -> Option<FileSpec> {
        let missing_after = match &file.missing_after {
            Some(m) => self.duration(m, &format!("files[{i}].missing_after")),
            None => default_missing_after,
        };
        let max_line_bytes = self.max_line_bytes(
            file.max_line_bytes.as_ref(),
            &format!("files[{i}].max_line_bytes"),
        );
        let multiline = file
            .multiline
            .as_ref()
            .and_then(|m| self.multiline(m, &format!("files[{i}].multiline")))
            .map(Arc::new);
        let glob = self.glob_path(&file.path, &format!("files[{i}].path"))?;
        if glob.ends_with_any_dirs() {
            self.report.warning(
                loc(&file.path),
                format!(
                    "files[{i}].path ends with `**`: every file below is followed, binary and compressed ones included; end it with a file pattern such as `**/*.log`"
                ),
            );
        }
        let format = file.format.unwrap_or_default();
        let expected = crate::pipeline::container_path::container_log_glob(glob.as_str());
        if format == super::LogFormat::Plain
            && let Some(expected) = expected
        {
            self.report.warning(
                loc(&file.path),
                format!(
                    "files[{i}].path reads container logs, whose lines are {} records; add `format: {}` so rules see what the application wrote (without it they see the runtime's time and stream before each line, and long lines in pieces)",
                    expected.name(),
                    expected.name()
                ),
            );
        }
        Some(super::FileSpec {
            pattern: glob.as_str().to_owned(),
            glob,
            start_at: file.start_at.unwrap_or_default(),
            format,
            max_line_bytes,
            multiline,
            missing_after,
        })
    }

    /// Every rule, with duplicate names reported.
    fn rules(&mut self, raw: &RawConfig) -> Vec<Arc<Rule>> {
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
            if let Some(rule) = self.rule(rule, raw) {
                rules.push(Arc::new(rule));
            }
        }
        rules
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
                if !(value.is_finite() && MAX_PER_SECOND_RANGE.contains(&value)) {
                    self.report.error(
                        loc(rate),
                        format!(
                            "webhook `{name}`: max_per_second must be between {} (one post every {} s) and {}, not {value}",
                            MAX_PER_SECOND_RANGE.start(),
                            1.0 / MAX_PER_SECOND_RANGE.start(),
                            MAX_PER_SECOND_RANGE.end()
                        ),
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
        self.duration_upto(value, what, MAX_WINDOW)
    }

    /// A duration longer than 0 and at most `max` (a whole number of days).
    pub(super) fn duration_upto(
        &mut self,
        value: &Spanned<String>,
        what: &str,
        max: Duration,
    ) -> Option<Duration> {
        let text = self.expanded(value, what)?;
        match humantime::parse_duration(text.trim()) {
            Ok(d) if d.is_zero() => {
                self.report
                    .error(loc(value), format!("{what} must be longer than 0"));
                None
            }
            Ok(d) if d > max => {
                self.report.error(
                    loc(value),
                    format!(
                        "{what} `{text}` is longer than the maximum of {} days",
                        max.as_secs() / 86_400
                    ),
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

    /// `max_line_bytes` of a `files` entry or the journal (`what` names it).
    fn max_line_bytes(&mut self, value: Option<&Spanned<u64>>, what: &str) -> usize {
        match value {
            None => DEFAULT_MAX_LINE_BYTES,
            Some(n) if MAX_LINE_BYTES_RANGE.contains(&n.value) => {
                usize::try_from(n.value).unwrap_or(DEFAULT_MAX_LINE_BYTES)
            }
            Some(n) => {
                self.report.error(
                    loc(n),
                    format!(
                        "{what} must be between {} and {}, not {}",
                        MAX_LINE_BYTES_RANGE.start(),
                        MAX_LINE_BYTES_RANGE.end(),
                        n.value
                    ),
                );
                DEFAULT_MAX_LINE_BYTES
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
