//! The engine's edge cases that depend on what a SQL store keeps: times at the end of the
//! clock, and the failure path under the store's size limit. Each test runs on SQLite and
//! PostgreSQL (when a server is given), with steps written short and long.

use std::sync::Arc;
use std::time::Duration;

use baton_core::retry::{Backoff, Times};
use baton_core::store::Store;
use baton_core::{Atom, AtomState, Engine, Flow, FlowState, Inputs, TaskError};
use baton_sql::{PostgresOptions, SqliteOptions, StepFormat};
use chrono::{DateTime, Utc};

use crate::support::{postgres_store_with, sqlite_store_with};

/// Every SQL store to try, by name, with `max_value_bytes` as the size limit (the default
/// when `None`).
async fn stores(max_value_bytes: Option<usize>) -> Vec<(String, Arc<dyn Store>)> {
    let mut out: Vec<(String, Arc<dyn Store>)> = Vec::new();
    for format in [StepFormat::Short, StepFormat::Long] {
        let mut sqlite = SqliteOptions::new().step_format(format);
        let mut postgres = PostgresOptions::new().step_format(format);
        if let Some(limit) = max_value_bytes {
            sqlite = sqlite.max_value_bytes(limit);
            postgres = postgres.max_value_bytes(limit);
        }
        if let Some(store) = sqlite_store_with(sqlite).await {
            out.push((format!("sqlite, {format:?} steps"), Arc::new(store)));
        }
        if let Some(store) = postgres_store_with(postgres).await {
            out.push((format!("postgres, {format:?} steps"), Arc::new(store)));
        }
    }
    out
}

/// A retry delay too large for the clock is stored as the latest time the clock holds, and
/// read back as such (an engine taking the run over waits for it rather than failing).
#[tokio::test]
async fn a_retry_at_the_end_of_time_is_stored_and_read_back() {
    let forever = Backoff::exponential(Duration::MAX, Duration::MAX);
    let flow = Flow::linear("forever")
        .retry(Atom::retry("r", Times::new(2).backoff(forever)))
        .add(Atom::from_fn("flaky", |_| async {
            Err(TaskError::msg("try later").retryable())
        }))
        .compile()
        .unwrap();
    for (name, store) in stores(None).await {
        let engine = Engine::from_arc(store.clone());
        let id = engine.create(&flow, Inputs::new()).await.unwrap();
        let outcome = baton_testkit::run_until_retrying(&engine, &flow, id).await;
        assert_eq!(outcome.state, FlowState::Suspended, "{name}");
        let snap = store.load_flow(id).await.unwrap();
        assert_eq!(
            snap.atoms[0].retry_at,
            Some(DateTime::<Utc>::MAX_UTC),
            "{name}"
        );
    }
}

/// `TaskError::retry_after` survives into the stored failure (in either step format) and
/// into the stored time of the next attempt, which an engine resuming the run honours.
#[tokio::test]
async fn retry_after_is_stored_and_honoured_across_a_resume() {
    let after = Duration::from_millis(200);
    for (name, store) in stores(None).await {
        let starts = Arc::new(std::sync::Mutex::new(Vec::<DateTime<Utc>>::new()));
        let flow = {
            let starts = starts.clone();
            Flow::linear("throttled")
                .retry(Atom::retry("r", Times::new(2)).provides("try"))
                .add(
                    Atom::from_fn("api", move |ctx| {
                        starts.lock().unwrap().push(Utc::now());
                        async move {
                            if ctx.input::<u32>("try")? < 2 {
                                return Err(TaskError::msg("throttled").retry_after(after));
                            }
                            Ok(serde_json::json!("done"))
                        }
                    })
                    .requires(["try"]),
                )
                .compile()
                .unwrap()
        };
        let engine = Engine::from_arc(store.clone());
        let id = engine.create(&flow, Inputs::new()).await.unwrap();
        let outcome = baton_testkit::run_until_retrying(&engine, &flow, id).await;
        assert_eq!(outcome.state, FlowState::Suspended, "{name}");
        let snap = store.load_flow(id).await.unwrap();
        let r = &snap.atoms[0];
        assert_eq!(
            r.retry_history[0].failures[0].retry_after,
            Some(after),
            "{name}"
        );
        let retry_at = r.retry_at.unwrap();
        let failed_at = starts.lock().unwrap()[0];
        assert!(
            retry_at - failed_at >= chrono::Duration::milliseconds(200),
            "{name}"
        );

        let outcome = Engine::from_arc(store.clone())
            .run(&flow, id)
            .await
            .unwrap();
        assert_eq!(outcome.state, FlowState::Success, "{name}");
        assert!(starts.lock().unwrap()[1] >= retry_at, "{name}");
    }
}

/// The failure path does not fail: a failure and a revert failure of 10 MB each are recorded
/// (clipped) under the store's limit, with the engine's default options.
#[tokio::test]
async fn a_huge_failure_is_recorded_under_the_stores_limit() {
    let flow = baton_testkit::scenarios::huge_failures();
    for (name, store) in stores(None).await {
        let outcome = Engine::from_arc(store.clone())
            .start(&flow, Inputs::new())
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(outcome.state, FlowState::Failure, "{name}");
        let snap = store.load_flow(outcome.flow).await.unwrap();
        let x = &snap.atoms[0];
        assert_eq!(x.state, AtomState::RevertFailure, "{name}");
        let f = x.failure.as_ref().unwrap();
        assert!(f.message.starts_with("message starts") && f.message.ends_with("message ends"));
        assert!(f.message.contains(" bytes cut ...] "), "{name}");
        assert!(x
            .revert_failure
            .as_ref()
            .unwrap()
            .message
            .ends_with("revert ends"));
    }
}

/// A retry that goes on for long, each attempt failing with a long message, keeps a history
/// the store accepts, and `Times` counts every attempt; also with a store limit lowered and
/// the engine's limits lowered to match.
#[tokio::test]
async fn a_long_running_retry_is_recorded_under_the_stores_limit() {
    let attempts = 12;
    let flow = Flow::linear("long")
        .retry(Atom::retry("r", Times::new(attempts)).provides("try"))
        .add(
            Atom::from_fn("x", move |ctx| async move {
                let n: usize = ctx.input("try")?;
                if n < attempts {
                    let err = TaskError::msg(format!("try {n}: {}", "m".repeat(150_000)));
                    return Err(err.retryable());
                }
                Ok(serde_json::json!(n))
            })
            .requires(["try"]),
        )
        .compile()
        .unwrap();
    let mut lowered = baton_core::engine::Options::default();
    lowered.max_failure_bytes = 16 << 10;
    lowered.max_history_bytes = 48 << 10;
    for (limit, options) in [
        (None, baton_core::engine::Options::default()),
        (Some(64 << 10), lowered),
    ] {
        for (name, store) in stores(limit).await {
            let outcome = Engine::from_arc(store.clone())
                .with_options(options.clone())
                .start(&flow, Inputs::new())
                .await
                .unwrap_or_else(|e| panic!("{name}, limit {limit:?}: {e}"));
            assert_eq!(outcome.state, FlowState::Success, "{name}");
            assert_eq!(outcome.results["r"], serde_json::json!(attempts), "{name}");
            let snap = store.load_flow(outcome.flow).await.unwrap();
            let history = &snap.atoms[0].retry_history;
            let counted: u32 = history.iter().map(|a| 1 + a.dropped_before).sum();
            assert_eq!(counted as usize, attempts - 1, "{name}");
        }
    }
}
