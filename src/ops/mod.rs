//! Operating the agent: what it reports about itself. Metrics (Prometheus families),
//! health facts (set by their owners, interpreted by readers) and the admin endpoint that
//! serves both. Nothing here changes what the agent does.

pub mod admin;
pub mod health;
pub mod metrics;
