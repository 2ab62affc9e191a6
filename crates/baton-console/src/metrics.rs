//! `/metrics`: the Prometheus text exposition, for the console and for a conductor alone.
//!
//! Two kinds of figures, from two places:
//!
//! - **What this process did**, counted as it happens by baton-core through the `metrics`
//!   facade (steps committed and their commit latency, claims and their latency, how jobs
//!   ended, takeovers, the lease margin: the table in `baton_core::metrics`). They exist once
//!   [`install`] has put the Prometheus recorder in place, which a process does once, before
//!   it builds its engines and conductors (handles taken earlier stay no-ops: the facade's
//!   rule). [`Exporter::render`] writes them out; [`metrics_router`] serves them at
//!   `GET /metrics`, alone, for `baton conductor --metrics-listen`.
//! - **What the database holds**, computed by the console when it is scraped and kept for
//!   [`DATABASE_GAUGES_FOR`] (so a fleet of scrapers costs one round of queries per five
//!   seconds): `baton_runs{state}` (unfinished runs by state, exact), `baton_runs_stored`
//!   (runs of every state, an estimate), `baton_backlog_jobs{factory}` (jobs waiting to be
//!   claimed), `baton_conductors_alive`, and `baton_database_up` (whether those queries
//!   answered). Their cost follows the number of unfinished runs and waiting jobs, never the
//!   number of ended ones ([`Store::count_runs`], [`JobBoard::backlog`]). Only the console
//!   serves them: every conductor of a fleet would count the same rows.
//!
//! The console's `/metrics` is both: this process's figures (if [`install`] was called) and
//! the database's.
//!
//! [`Store::count_runs`]: baton_core::store::Store::count_runs
//! [`JobBoard::backlog`]: baton_core::board::JobBoard::backlog

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use baton_core::metrics::{CLAIM_SECONDS, SECONDS_BUCKETS, STEP_COMMIT_SECONDS};
use baton_core::store::{RunCounts, Store};
use baton_core::JobBoard;
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;

use crate::Console;

/// The content type of the Prometheus text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How long the console keeps the database gauges before it queries again.
pub const DATABASE_GAUGES_FOR: Duration = Duration::from_secs(5);

/// How often the installed recorder folds the histograms' samples into their buckets. Without
/// it, samples would pile up between scrapes (a scrape folds them too).
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Why the metrics could not be installed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Another `metrics` recorder is installed in this process: there can be only one.
    #[error("another metrics recorder is installed in this process")]
    OtherRecorder,
    /// The Prometheus exporter refused its settings.
    #[error("the Prometheus exporter refused its settings")]
    Exporter(#[source] BuildError),
}

/// The installed Prometheus recorder: renders what this process counted.
///
/// Cheap to clone.
#[derive(Clone)]
pub struct Exporter {
    handle: PrometheusHandle,
}

impl std::fmt::Debug for Exporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exporter").finish_non_exhaustive()
    }
}

impl Exporter {
    /// What this process counted, in the Prometheus text format.
    #[must_use]
    pub fn render(&self) -> String {
        self.handle.render()
    }
}

/// The recorder this crate installed, if any.
static INSTALLED: Mutex<Option<PrometheusHandle>> = Mutex::new(None);

/// Installs the Prometheus recorder for this process (once: later calls return the same
/// [`Exporter`]), with baton's metrics described and its histograms bucketed
/// ([`baton_core::metrics::SECONDS_BUCKETS`]). It starts one thread of its own, which folds
/// the histograms' samples every five seconds for as long as the process lives.
///
/// Call it before building engines and conductors: their counts go to the recorder
/// installed when they are built.
///
/// # Errors
/// [`Error::OtherRecorder`] if a recorder not installed by this function is in place.
pub fn install() -> Result<Exporter, Error> {
    let mut installed = INSTALLED.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(handle) = &*installed {
        return Ok(Exporter {
            handle: handle.clone(),
        });
    }
    let builder = [STEP_COMMIT_SECONDS, CLAIM_SECONDS]
        .into_iter()
        .try_fold(PrometheusBuilder::new(), |builder, name| {
            builder.set_buckets_for_metric(Matcher::Full(name.to_owned()), SECONDS_BUCKETS)
        })
        .map_err(Error::Exporter)?;
    let recorder = builder.build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(|_| Error::OtherRecorder)?;
    baton_core::metrics::describe();
    let upkeep = handle.clone();
    let spawned = std::thread::Builder::new()
        .name("baton-metrics-upkeep".into())
        .spawn(move || loop {
            std::thread::sleep(UPKEEP_EVERY);
            upkeep.run_upkeep();
        });
    if let Err(e) = spawned {
        // Each scrape still folds the samples; only a process never scraped keeps them.
        tracing::warn!(error = %e, "could not start the metrics upkeep thread");
    }
    *installed = Some(handle.clone());
    Ok(Exporter { handle })
}

/// The recorder [`install`] installed, if it was called.
#[must_use]
pub fn installed() -> Option<Exporter> {
    INSTALLED
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
        .map(|handle| Exporter { handle })
}

/// A router serving `GET /metrics` with what `exporter` renders, and nothing else: for a
/// process that is not the console (`baton conductor --metrics-listen`).
pub fn metrics_router(exporter: Exporter) -> axum::Router {
    axum::Router::new().route(
        "/metrics",
        get(move || {
            let text = exporter.render();
            async move { text_response(text) }
        }),
    )
}

/// Serves [`metrics_router`] on `listener` until `shutdown` is cancelled.
///
/// # Errors
/// The listener's I/O errors.
///
/// # Cancel safety
/// Not cancel safe: cancel through `shutdown`, which lets answers in progress finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    exporter: Exporter,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, metrics_router(exporter))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

/// The console's `/metrics`: this process's figures, if [`install`] was called, then the
/// database's.
pub(crate) fn router() -> axum::Router<Console> {
    let gauges = DatabaseGauges::default();
    axum::Router::new().route(
        "/metrics",
        get(move |State(console): State<Console>| {
            let gauges = gauges.clone();
            async move {
                let mut text = installed().map(|e| e.render()).unwrap_or_default();
                text.push_str(&gauges.text(console.store(), console.board()).await);
                text_response(text)
            }
        }),
    )
}

fn text_response(text: String) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], text)
}

/// The database gauges as text, kept for [`DATABASE_GAUGES_FOR`]. Concurrent scrapes of a
/// stale text wait for one round of queries rather than each running its own.
#[derive(Debug, Clone, Default)]
struct DatabaseGauges {
    last: Arc<tokio::sync::Mutex<Option<Rendered>>>,
}

/// The database gauges' text, and when it was made.
type Rendered = (tokio::time::Instant, Arc<str>);

impl DatabaseGauges {
    async fn text(&self, store: &Arc<dyn Store>, board: &Arc<dyn JobBoard>) -> Arc<str> {
        let mut last = self.last.lock().await;
        if let Some((at, text)) = &*last {
            if at.elapsed() < DATABASE_GAUGES_FOR {
                return text.clone();
            }
        }
        let text: Arc<str> = database_gauges(&**store, &**board).await.into();
        *last = Some((tokio::time::Instant::now(), text.clone()));
        text
    }
}

/// Queries the database and writes its gauges. A query that fails leaves its gauge out and
/// sets `baton_database_up` to 0 (the error is logged; it never names the database's URL).
async fn database_gauges(store: &dyn Store, board: &dyn JobBoard) -> String {
    let (runs, backlog, fleet) =
        tokio::join!(store.count_runs(), board.backlog(), board.conductors());
    let parts = [
        (
            "counting runs",
            runs.map(|r| runs_text(&r)).map_err(|e| e.to_string()),
        ),
        (
            "counting the backlog",
            backlog.map(|b| backlog_text(&b)).map_err(|e| e.to_string()),
        ),
        (
            "listing conductors",
            fleet
                .map(|f| {
                    let mut text = String::new();
                    family(
                        &mut text,
                        "baton_conductors_alive",
                        "Conductors the job board finds alive.",
                    );
                    sample(&mut text, "baton_conductors_alive", None, f.len() as u64);
                    text
                })
                .map_err(|e| e.to_string()),
        ),
    ];
    let mut up = true;
    let mut text = String::new();
    for (what, part) in parts {
        match part {
            Ok(part) => text.push_str(&part),
            Err(error) => {
                up = false;
                tracing::warn!(%error, "{what} for /metrics failed");
            }
        }
    }
    family(
        &mut text,
        "baton_database_up",
        "Whether the console's last queries for these gauges answered (1) or not (0).",
    );
    sample(&mut text, "baton_database_up", None, u64::from(up));
    text
}

fn runs_text(runs: &RunCounts) -> String {
    let mut text = String::new();
    family(
        &mut text,
        "baton_runs",
        "Runs that have not ended, by state (exact).",
    );
    for (state, n) in &runs.unfinished {
        sample(&mut text, "baton_runs", Some(("state", state.as_str())), *n);
    }
    if let Some(stored) = runs.stored_estimate {
        family(
            &mut text,
            "baton_runs_stored",
            "Runs the store holds in every state, ended ones included (an estimate).",
        );
        sample(&mut text, "baton_runs_stored", None, stored);
    }
    text
}

fn backlog_text(backlog: &BTreeMap<String, u64>) -> String {
    let mut text = String::new();
    family(
        &mut text,
        "baton_backlog_jobs",
        "Jobs waiting to be claimed (UNCLAIMED), by factory.",
    );
    for (factory, n) in backlog {
        sample(
            &mut text,
            "baton_backlog_jobs",
            Some(("factory", factory)),
            *n,
        );
    }
    text
}

/// The `# HELP` and `# TYPE` lines of a gauge.
fn family(text: &mut String, name: &str, help: &str) {
    // Writing to a String cannot fail.
    let _ = writeln!(text, "# HELP {name} {help}\n# TYPE {name} gauge");
}

/// One sample, with at most one label; the label's value escaped as the format requires.
fn sample(text: &mut String, name: &str, label: Option<(&str, &str)>, value: u64) {
    text.push_str(name);
    if let Some((key, value)) = label {
        text.push('{');
        text.push_str(key);
        text.push_str("=\"");
        for c in value.chars() {
            match c {
                '\\' => text.push_str("\\\\"),
                '"' => text.push_str("\\\""),
                '\n' => text.push_str("\\n"),
                c => text.push(c),
            }
        }
        text.push_str("\"}");
    }
    let _ = writeln!(text, " {value}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_label_value_is_escaped() {
        let mut text = String::new();
        sample(
            &mut text,
            "baton_backlog_jobs",
            Some(("factory", "a\"b\\c\nd")),
            3,
        );
        assert_eq!(text, "baton_backlog_jobs{factory=\"a\\\"b\\\\c\\nd\"} 3\n");
    }
}
