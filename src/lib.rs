//! chattail follows log files, runs the operator's regex rules on every line and posts what
//! matters to Google Chat threads.
//!
//! The crate is a library with a thin binary on top (`src/main.rs`). Its modules follow the
//! pipeline (ARCHITECTURE.md has the map and the invariants, which `tests/integration/
//! module_edges.rs` enforces):
//!
//! - [`config`]: the YAML file to a validated [`config::Config`].
//! - [`tail`]: files to lines, through every kind of rotation.
//! - [`journal`]: the systemd journal to entries, through a `journalctl` child.
//! - [`pipeline`]: the pure core, lines to notifications (rules, multiline, context, bursts,
//!   templates, Chat text, thread keys, self-alert decisions). No I/O, no clock.
//! - [`store`]: every SQL statement: offsets, the outbox, burst windows, pending events,
//!   fleet decisions.
//! - [`deliver`]: the outbox to Chat, paced per space.
//! - [`fleet`]: fleet mode: pacing and burst windows shared by every host through Redis.
//! - [`ops`]: metrics, health and the admin endpoint.
//! - [`bounded_listener`]: the listener of the HTTP servers, with bounded connections.
//! - [`agent`]: `chattail run`, the one composition root of all of the above.
//! - [`sandbox`]: the local Chat stand-in (`chattail sandbox`, and the tests' Chat).
//! - [`send`]: one message through the agent's Chat client (`chattail send`).
//! - [`silences`]: silence records and their matching (pure); [`silence_admin`]: where the
//!   `silence` commands write and read them (the store, or Redis in fleet mode).
//! - [`random_hex`]: random ids.
//! - [`rule_test`] and [`cli`]: the commands' outer shells.

pub mod agent;
pub mod bounded_listener;
pub mod cli;
pub mod clock;
pub mod config;
pub mod deliver;
pub mod fleet;
pub mod journal;
pub mod ops;
pub mod path_glob;
pub mod pipeline;
pub mod random_hex;
pub mod redis_url;
pub mod rule_test;
pub mod sandbox;
pub mod send;
pub mod silence_admin;
pub mod silences;
pub mod store;
pub mod tail;
pub mod terminal_text;
pub mod webhook_url;
