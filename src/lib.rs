//! chattail follows log files, runs the operator's regex rules on every line and posts what
//! matters to Google Chat threads.
//!
//! The crate is a library with a thin binary on top (`src/main.rs`). The pure core (config
//! validation, templates, the rule engine, Chat text rendering) does no I/O beyond reading
//! the config file; see ARCHITECTURE.md for the map and its invariants.

pub mod admin;
pub mod bursts;
pub mod chat_text;
pub mod cli;
pub mod config;
pub mod deliver;
pub mod health;
pub mod metrics;
pub mod multiline;
pub mod outbox;
pub mod rule_test;
pub mod rules;
pub mod run;
pub mod self_alerts;
pub mod state;
pub mod tail;
pub mod template;
pub mod webhook_url;
