//! Retry controllers with backoff: a flaky call retried with exponential backoff and jitter,
//! then a placement tried in one availability zone after another.
//!
//! ```text
//! cargo run --example retries
//! ```
//!
//! - `boot` sits in a subflow under `Times::new(4)` with `Backoff::exponential(100 ms, 1 s)`
//!   and 20% jitter; the fake API it calls fails twice with a retryable error, then works.
//! - `place` sits in a subflow under `ForEach` over three zones, with a backoff of 100 ms
//!   doubling; the first two zones have no capacity.
//!
//! Each attempt is printed with its time since the start. Whenever a controller decides to
//! retry, the time of the next attempt (`retry_at`) is written to the store before the
//! subflow is reverted; the example reads it back from the store (SQLite, in a temporary
//! folder) and prints it, and checks that no attempt started before it.

// An example program: printing is its job.
#![allow(clippy::print_stdout)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use baton::model::Change;
use baton::retry::{Backoff, ForEach, Times};
use baton::sql::SqliteStore;
use baton::store::Store;
use baton::{Atom, AtomState, Engine, EventKind, Flow, TaskError};
use chrono::{DateTime, Utc};
use serde_json::json;

/// When each attempt started, and each persisted `retry_at`, by atom name.
type Log = Arc<Mutex<Vec<(String, DateTime<Utc>)>>>;

fn log(log: &Log, what: String, at: DateTime<Utc>) {
    log.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push((what, at));
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let t0 = Utc::now();
    let ms = move |at: DateTime<Utc>| (at - t0).num_milliseconds();
    let starts = Log::default();

    // A fake API that times out on its first two calls.
    let calls = Arc::new(AtomicU32::new(0));
    let boot = {
        let (calls, starts) = (calls.clone(), starts.clone());
        Atom::from_fn("boot", move |ctx| {
            let (calls, starts) = (calls.clone(), starts.clone());
            async move {
                let now = Utc::now();
                log(&starts, "boot".into(), now);
                let call = calls.fetch_add(1, Ordering::SeqCst) + 1;
                let try_no: u64 = ctx.input("try")?;
                if call <= 2 {
                    println!("  +{:>4} ms boot, try {try_no}: API timed out", ms(now));
                    return Err(TaskError::msg("compute API timed out").retryable());
                }
                println!(
                    "  +{:>4} ms boot, try {try_no}: server web-1 is ACTIVE",
                    ms(now)
                );
                Ok(json!("web-1"))
            }
        })
        .requires(["try"])
    };

    // A placement that only zone az-3 has capacity for.
    let place = {
        let starts = starts.clone();
        Atom::from_fn("place", move |ctx| {
            let starts = starts.clone();
            async move {
                let now = Utc::now();
                log(&starts, "place".into(), now);
                let zone: String = ctx.input("zone")?;
                if zone != "az-3" {
                    println!("  +{:>4} ms place in {zone}: no capacity", ms(now));
                    // Another zone may have capacity: worth retrying (a fatal error would
                    // end the ForEach at once).
                    return Err(TaskError::msg(format!("no capacity in {zone}")).retryable());
                }
                println!("  +{:>4} ms place in {zone}: volume created", ms(now));
                Ok(json!(format!("vol-1@{zone}")))
            }
        })
        .requires(["zone"])
        .provides("volume")
    };

    let backoff = Backoff::exponential(Duration::from_millis(100), Duration::from_secs(1));
    let flow = Flow::linear("retries")
        .add(
            Flow::linear("boot-with-retries")
                .retry(
                    Atom::retry("boot-retry", Times::new(4).backoff(backoff.jitter(0.2)))
                        .provides("try"),
                )
                .add(boot),
        )
        .add(
            Flow::linear("zones")
                .retry(
                    Atom::retry(
                        "zone-retry",
                        ForEach::new(["az-1", "az-2", "az-3"]).backoff(Backoff::exponential(
                            Duration::from_millis(100),
                            Duration::from_secs(1),
                        )),
                    )
                    .provides("zone"),
                )
                .add(place),
        )
        .compile()?;

    let dir = tempfile::tempdir()?;
    let store = SqliteStore::open(&format!(
        "sqlite://{}",
        dir.path().join("retries.db").display()
    ))
    .await?;
    let engine = Engine::new(store.clone());

    // When a controller goes RETRYING, its retry_at is in the store: read it from there.
    let retry_ats = Log::default();
    let mut events = engine.subscribe();
    let watcher = {
        let (store, retry_ats) = (store.clone(), retry_ats.clone());
        tokio::spawn(async move {
            while let Some(event) = events.next().await {
                // A watcher that fell behind misses some retry_ats; the checks below say so.
                let Ok(event) = event else { continue };
                let EventKind::Transition(Change::Atom {
                    atom,
                    to: AtomState::Retrying,
                    ..
                }) = event.kind
                else {
                    continue;
                };
                let Ok(snapshot) = store.load_flow(event.flow).await else {
                    continue;
                };
                let record = snapshot.atoms.iter().find(|a| a.name == atom);
                if let Some(at) = record.and_then(|a| a.retry_at) {
                    println!(
                        "  +{:>4} ms {atom} is RETRYING; stored retry_at = +{} ms (due in {} ms)",
                        ms(event.at),
                        ms(at),
                        (at - event.at).num_milliseconds()
                    );
                    log(&retry_ats, atom, at);
                }
            }
        })
    };

    let outcome = engine.start(&flow, Default::default()).await?;
    drop(engine);
    watcher.await?;

    println!("flow ended {} after +{} ms", outcome.state, ms(Utc::now()));
    println!(
        "  volume = {}",
        outcome.symbol("volume").cloned().unwrap_or_default()
    );
    let snapshot = store.load_flow(outcome.flow).await?;
    println!("retry histories, as stored:");
    for controller in snapshot
        .atoms
        .iter()
        .filter(|a| !a.retry_history.is_empty())
    {
        for attempt in &controller.retry_history {
            let why: Vec<String> = attempt
                .failures
                .iter()
                .map(|f| {
                    format!(
                        "{}{}",
                        f.message,
                        if f.retryable { " (retryable)" } else { "" }
                    )
                })
                .collect();
            let value = attempt.value.to_string();
            println!(
                "  {:<10} {value:<6} failed: {}",
                controller.name,
                why.join("; ")
            );
        }
    }

    // Every retry waited for its retry_at: the n-th retry_at of a subflow comes before its
    // (n+1)-th attempt (allowing 1 ms for the store rounding timestamps).
    let starts = starts
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let retry_ats = retry_ats
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    for (task, controller, attempts) in [("boot", "boot-retry", 3), ("place", "zone-retry", 3)] {
        let starts: Vec<_> = starts
            .iter()
            .filter(|(n, _)| n == task)
            .map(|(_, t)| *t)
            .collect();
        let due: Vec<_> = retry_ats
            .iter()
            .filter(|(n, _)| n == controller)
            .map(|(_, t)| *t)
            .collect();
        anyhow::ensure!(
            starts.len() == attempts,
            "{task} should have run {attempts} times"
        );
        anyhow::ensure!(
            due.len() == attempts - 1,
            "{controller} should have retried {} times",
            attempts - 1
        );
        for (at, next) in due.iter().zip(&starts[1..]) {
            anyhow::ensure!(
                *next + chrono::Duration::milliseconds(1) >= *at,
                "{task} started at +{} ms, before its retry_at +{} ms",
                ms(*next),
                ms(*at)
            );
        }
    }
    anyhow::ensure!(outcome.is_success(), "the flow should succeed");
    anyhow::ensure!(outcome.symbol("volume") == Some(&json!("vol-1@az-3")));
    Ok(())
}
