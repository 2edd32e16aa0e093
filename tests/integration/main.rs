//! chattail's integration tests, built as one binary so they link once. Each module is one
//! theme; `support` holds the shared helpers.

mod agent_run;
mod agent_support;
mod alerts;
mod cards;
mod check_diagnostics;
mod cli_commands;
mod container_logs;
mod fleet;
mod hostile_input;
mod journal;
mod mock_chat;
mod module_edges;
mod operating;
mod readme_docs;
mod redis_support;
mod rendered_messages;
mod sandbox;
mod sandbox_page;
mod silences;
mod support;
mod tail_model;
mod tail_support;
mod tailer;
