//! The config file as written: serde structs that mirror the YAML one to one.
//!
//! Every struct denies unknown keys, so a typo such as `mesage` is an error with its line
//! and column instead of a silently ignored setting. Values that later checks may reject
//! are wrapped in [`Spanned`] so those errors can point at the value too. Nothing here is
//! validated beyond its type; `validate.rs` turns these into a [`super::Config`].

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_saphyr::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub state_dir: Option<Spanned<String>>,
    pub host: Option<Spanned<String>>,
    #[serde(default)]
    pub webhooks: BTreeMap<String, Spanned<RawWebhook>>,
    #[serde(default)]
    pub files: Vec<RawFile>,
    #[serde(default)]
    pub rules: Vec<RawRule>,
    pub delivery: Option<RawDelivery>,
    pub admin: Option<RawAdmin>,
    pub self_alerts: Option<RawSelfAlerts>,
    pub fleet: Option<RawFleet>,
    pub journal: Option<Spanned<RawJournal>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJournal {
    pub directory: Option<Spanned<String>>,
    pub units: Option<Vec<Spanned<String>>>,
    pub start_at: Option<StartAt>,
    pub max_line_bytes: Option<Spanned<u64>>,
    pub multiline: Option<Spanned<RawMultiline>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFleet {
    pub redis: Spanned<String>,
    pub namespace: Spanned<String>,
    pub timeout: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub listen: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSelfAlerts {
    pub webhook: Spanned<String>,
    pub missing_after: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDelivery {
    pub shutdown_grace: Option<Spanned<String>>,
    pub park_for: Option<Spanned<String>>,
    pub request_timeout: Option<Spanned<String>>,
    pub min_backoff: Option<Spanned<String>>,
    pub max_backoff: Option<Spanned<String>>,
    pub max_outbox: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWebhook {
    pub url: Spanned<String>,
    pub max_per_second: Option<Spanned<f64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFile {
    pub path: Spanned<String>,
    pub start_at: Option<StartAt>,
    pub max_line_bytes: Option<Spanned<u64>>,
    pub multiline: Option<Spanned<RawMultiline>>,
    pub missing_after: Option<Spanned<String>>,
    pub format: Option<LogFormat>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMultiline {
    pub start: Option<Spanned<String>>,
    pub preset: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
    pub max_lines: Option<Spanned<u64>>,
    pub max_bytes: Option<Spanned<u64>>,
}

/// How a file's records are written (`files[].format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Lines as they are (the default).
    #[default]
    Plain,
    /// The container runtime interface's records (containerd, CRI-O: the kubelet's
    /// `/var/log/pods`).
    Cri,
    /// Docker's `json-file` records.
    Docker,
}

impl LogFormat {
    pub fn name(self) -> &'static str {
        match self {
            LogFormat::Plain => "plain",
            LogFormat::Cri => "cri",
            LogFormat::Docker => "docker",
        }
    }
}

/// Where to start reading a file that has no saved offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StartAt {
    /// Only lines written from now on (the default, like `tail -F`).
    #[default]
    End,
    /// The whole file.
    Beginning,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    pub name: Spanned<String>,
    #[serde(rename = "match")]
    pub pattern: Spanned<String>,
    pub exclude: Option<Spanned<String>>,
    pub webhook: Spanned<String>,
    pub thread_key: Option<Spanned<String>>,
    pub message: Option<Spanned<String>>,
    pub dedup: Option<RawDedup>,
    pub files: Option<Vec<Spanned<String>>>,
    pub units: Option<Vec<Spanned<String>>>,
    pub context: Option<RawContext>,
    pub threshold: Option<Spanned<RawThreshold>>,
    pub resolve: Option<Spanned<RawResolve>>,
    pub absent_after: Option<Spanned<String>>,
    pub expect: Option<Vec<Spanned<BTreeMap<String, String>>>>,
    pub card: Option<Spanned<RawCard>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCard {
    pub title: Spanned<String>,
    pub subtitle: Option<Spanned<String>>,
    #[serde(default)]
    pub fields: Vec<Spanned<RawCardField>>,
    pub line: Option<bool>,
    #[serde(default)]
    pub buttons: Vec<Spanned<RawCardButton>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCardField {
    pub label: Spanned<String>,
    pub value: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCardButton {
    pub text: Spanned<String>,
    pub url: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawThreshold {
    pub count: Spanned<u64>,
    pub within: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawResolve {
    #[serde(rename = "match")]
    pub pattern: Option<Spanned<String>>,
    pub after: Option<Spanned<String>>,
    pub message: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawContext {
    pub before: Spanned<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDedup {
    pub window: Spanned<String>,
    pub key: Option<Spanned<String>>,
    pub max_keys: Option<Spanned<u64>>,
}
