//! The admin endpoint (`admin.listen`): `/metrics` for Prometheus, `/healthz` for
//! monitoring, readiness probes and people (every problem), and `/livez` for liveness
//! probes (only problems a restart can fix: a stalled run loop, a stopped sender).
//!
//! It only reads: the metrics, the health facts and (for the outbox gauges) the state
//! database through its own read connection. It never changes what the agent does.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;

use crate::ops::health::Health;
use crate::ops::metrics::Metrics;
use crate::store::outbox::Outbox;

#[derive(Clone)]
struct Admin {
    metrics: Metrics,
    registry: Arc<prometheus_client::registry::Registry>,
    health: Arc<Health>,
    /// The state database, for the outbox gauges; `None` in dry-run.
    db: Option<PathBuf>,
    /// Opened at the first scrape and kept.
    outbox: Arc<Mutex<Option<Outbox>>>,
    /// The configured webhooks, updated on reload.
    webhooks: Arc<Mutex<Vec<String>>>,
}

/// A running admin endpoint; the handle updates what it reports after a reload.
#[derive(Clone)]
pub struct AdminHandle {
    webhooks: Arc<Mutex<Vec<String>>>,
}

impl AdminHandle {
    pub fn set_webhooks(&self, names: Vec<String>) {
        *self
            .webhooks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = names;
    }
}

/// Binds `addr` now (so a taken port fails the start, not a later request) and serves
/// until `stop` completes.
pub async fn start(
    addr: SocketAddr,
    metrics: Metrics,
    health: Arc<Health>,
    db: Option<PathBuf>,
    webhooks: Vec<String>,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<(AdminHandle, SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let webhooks = Arc::new(Mutex::new(webhooks));
    let state = Admin {
        registry: Arc::new(metrics.registry()),
        metrics,
        health,
        db,
        outbox: Arc::new(Mutex::new(None)),
        webhooks: Arc::clone(&webhooks),
    };
    let app = Router::new()
        .route("/metrics", get(metrics_page))
        .route("/healthz", get(healthz))
        .route("/livez", get(livez))
        .route("/silences", get(silences))
        .with_state(state);
    let task = tokio::spawn(async move {
        let listener = crate::bounded_listener::LimitedListener::new(
            listener,
            crate::bounded_listener::ADMIN_CONNECTIONS,
            crate::bounded_listener::ADMIN_IDLE,
        );
        if let Err(error) = axum::serve(listener, app)
            .with_graceful_shutdown(stop)
            .await
        {
            tracing::error!(%error, "The admin endpoint stopped.");
        }
    });
    Ok((AdminHandle { webhooks }, bound, task))
}

async fn metrics_page(State(admin): State<Admin>) -> impl IntoResponse {
    let refresh = admin.clone();
    // The outbox query is a blocking SQLite read; keep it off the async threads.
    let _ = tokio::task::spawn_blocking(move || refresh.refresh_outbox_gauges()).await;
    let text = Metrics::encode(&admin.registry);
    (
        [(header::CONTENT_TYPE, crate::ops::metrics::CONTENT_TYPE)],
        text,
    )
}

/// The silences this agent knows (its store's copy: in fleet mode, Redis' as of the last
/// second), with what each held back here, as JSON. Read-only: no endpoint writes
/// silences, as the admin listener may be reachable from a pod network.
async fn silences(State(admin): State<Admin>) -> impl IntoResponse {
    let Some(db) = admin.db.clone() else {
        return (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            "[]\n".to_owned(),
        );
    };
    let read = tokio::task::spawn_blocking(move || -> Result<String, crate::store::StoreError> {
        let store = crate::store::silences::SilenceStore::open_file(&db)?;
        let counts = store.held_counts()?;
        let now = crate::clock::unix_now_ms();
        let listed: Vec<serde_json::Value> = store
            .silences()?
            .into_iter()
            .map(|row| {
                let held: u64 = counts
                    .iter()
                    .filter(|c| c.silence == row.id)
                    .map(|c| c.held)
                    .sum();
                let record = serde_json::from_str::<serde_json::Value>(&row.record)
                    .unwrap_or(serde_json::Value::Null);
                serde_json::json!({
                    "id": row.id,
                    "active": now < row.ends_ms,
                    "held_here": held,
                    "record": record,
                })
            })
            .collect();
        Ok(serde_json::Value::Array(listed).to_string() + "\n")
    })
    .await;
    match read {
        Ok(Ok(body)) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            body,
        ),
        Ok(Err(error)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::CONTENT_TYPE, "text/plain")],
            format!("cannot read the silences: {error}\n"),
        ),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain")],
            "the silence reader stopped\n".to_owned(),
        ),
    }
}

async fn healthz(State(admin): State<Admin>) -> impl IntoResponse {
    let problems = admin.health.problems();
    let degraded = admin.health.degradations();
    if problems.is_empty() && degraded.is_empty() {
        (StatusCode::OK, "ok\n".to_owned())
    } else if problems.is_empty() {
        (
            StatusCode::OK,
            format!("ok, degraded:\n{}\n", degraded.join("\n")),
        )
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{}\n", problems.join("\n")),
        )
    }
}

async fn livez(State(admin): State<Admin>) -> impl IntoResponse {
    match admin.health.liveness_problem() {
        None => (StatusCode::OK, "ok\n".to_owned()),
        Some(problem) => (StatusCode::SERVICE_UNAVAILABLE, format!("{problem}\n")),
    }
}

impl Admin {
    fn refresh_outbox_gauges(&self) {
        let Some(db) = &self.db else { return };
        let mut slot = self
            .outbox
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if slot.is_none() {
            match Outbox::open(db) {
                Ok(outbox) => *slot = Some(outbox),
                Err(error) => {
                    tracing::warn!(%error, "Cannot open the outbox for metrics.");
                    return;
                }
            }
        }
        let Some(outbox) = slot.as_ref() else { return };
        let webhooks = self
            .webhooks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let now_ms = crate::clock::unix_now_ms();
        for name in webhooks {
            match outbox.depth(&name) {
                Ok((queued, oldest)) => {
                    let label = self.metrics.webhook(&name);
                    self.metrics
                        .outbox_notifications
                        .get_or_create(&label)
                        .set(i64::try_from(queued).unwrap_or(i64::MAX));
                    let age = oldest.map_or(0.0, |ms| now_ms.saturating_sub(ms) as f64 / 1000.0);
                    self.metrics
                        .outbox_oldest_age_seconds
                        .get_or_create(&label)
                        .set(age);
                }
                Err(error) => tracing::warn!(%error, "Cannot read the outbox for metrics."),
            }
        }
    }
}
