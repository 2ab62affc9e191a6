//! Retries, two ways: a flaky call retried in place by its atom's retry policy, and a group of
//! steps tried in one availability zone after another by a retry controller.
//!
//! ```text
//! cargo run --example retries
//! ```
//!
//! - `boot` has a retry policy (`RetryPolicy::attempts(4)`, `Backoff::exponential(100 ms,
//!   1 s)` with 20% jitter, transient errors only): the fake API it calls times out twice, a
//!   transient error, then works. No subflow: the atom goes `RETRYING` and is called again,
//!   and nothing is undone in between.
//! - `reserve` (capacity in a zone) and `place` (the volume, in that zone, for the server)
//!   form a group: a subflow under a `ForEach` controller over three zones, with a backoff of
//!   100 ms doubling. The first two zones have no room for the volume: the controller reverts
//!   the group (the reservation is released) and runs it again in the next zone. What a
//!   controller is for: retrying steps that must be undone and done again together.
//!
//! Each call is printed with its time since the start. Whenever an atom's policy or a
//! controller decides to retry, the time of the next attempt (`retry_at`) is written to the
//! store first; the example reads it back from the store (SQLite, in a temporary folder),
//! prints it, and checks that no attempt started before it.

// An example program: printing is its job.
#![allow(clippy::print_stdout)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use baton::model::Change;
use baton::retry::{Backoff, ForEach, RetryPolicy};
use baton::sql::SqliteStore;
use baton::store::Store;
use baton::typed::{atom, Transient, TypedFlow, TypedTask};
use baton::{Atom, AtomState, Engine, EventKind, Inputs, RevertContext, TaskContext};
use chrono::{DateTime, Utc};

/// The symbol the zone controller provides: the zone of the current attempt.
const ZONE: &str = "zone";

/// What the fake APIs answer.
#[derive(Debug, thiserror::Error)]
enum ApiError {
    #[error("compute API timed out")]
    TimedOut,
    #[error("no capacity in {0}")]
    NoCapacity(String),
}

/// Both are worth another try: a timeout may not happen again, and another zone may have room
/// (a fatal error would end the `ForEach` at once).
impl Transient for ApiError {
    fn is_transient(&self) -> bool {
        matches!(self, ApiError::TimedOut | ApiError::NoCapacity(_))
    }
}

/// When each call started (by atom name), and each `retry_at` read from the store (by the
/// name of the atom that was retrying).
#[derive(Debug, Default)]
struct Log(Mutex<Vec<(String, DateTime<Utc>)>>);

impl Log {
    fn add(&self, what: &str, at: DateTime<Utc>) {
        let mut log = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        log.push((what.to_owned(), at));
    }

    /// The times logged for `what`, in order.
    fn of(&self, what: &str) -> Vec<DateTime<Utc>> {
        let log = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        log.iter()
            .filter(|(w, _)| w == what)
            .map(|(_, t)| *t)
            .collect()
    }
}

/// What every task shares: the start of the run, and the log of calls.
#[derive(Debug)]
struct Shared {
    t0: DateTime<Utc>,
    starts: Log,
}

impl Shared {
    /// Logs a call of `atom`; the milliseconds since the start.
    fn started(&self, atom: &str) -> i64 {
        let now = Utc::now();
        self.starts.add(atom, now);
        (now - self.t0).num_milliseconds()
    }
}

/// Boots a server through an API that times out on its first two calls.
struct Boot {
    shared: Arc<Shared>,
    calls: AtomicU32,
}

#[async_trait::async_trait]
impl TypedTask for Boot {
    type Input = ();
    type Output = String;
    type Error = ApiError;

    async fn execute(&self, (): (), ctx: &TaskContext) -> Result<String, ApiError> {
        let ms = self.shared.started(ctx.atom());
        let attempt = ctx.attempt();
        if self.calls.fetch_add(1, Ordering::SeqCst) < 2 {
            println!("  +{ms:>4} ms boot, attempt {attempt}: API timed out");
            return Err(ApiError::TimedOut);
        }
        println!("  +{ms:>4} ms boot, attempt {attempt}: server web-1 is ACTIVE");
        Ok("web-1".into())
    }
}

/// Reserves capacity in the zone it is given; its revert releases it.
struct Reserve(Arc<Shared>);

#[async_trait::async_trait]
impl TypedTask for Reserve {
    type Input = String;
    type Output = String;
    type Error = ApiError;

    async fn execute(&self, zone: String, ctx: &TaskContext) -> Result<String, ApiError> {
        let ms = self.0.started(ctx.atom());
        println!("  +{ms:>4} ms reserve capacity in {zone}");
        Ok(format!("rsv-{zone}"))
    }

    async fn revert(
        &self,
        zone: String,
        _: Option<String>,
        _: &RevertContext,
    ) -> Result<(), ApiError> {
        println!("           release the reservation in {zone}");
        Ok(())
    }
}

/// Creates the server's volume in the zone it is given, under the zone's reservation: only
/// az-3 has room for it.
struct Place(Arc<Shared>);

#[async_trait::async_trait]
impl TypedTask for Place {
    type Input = (String, String, String);
    type Output = String;
    type Error = ApiError;

    async fn execute(
        &self,
        (zone, reservation, server): (String, String, String),
        ctx: &TaskContext,
    ) -> Result<String, ApiError> {
        let ms = self.0.started(ctx.atom());
        if zone != "az-3" {
            println!("  +{ms:>4} ms place a volume for {server} in {zone}: no capacity");
            return Err(ApiError::NoCapacity(zone));
        }
        println!("  +{ms:>4} ms place a volume for {server} in {zone} ({reservation}): created");
        Ok(format!("vol-1@{zone}"))
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let t0 = Utc::now();
    let ms = move |at: DateTime<Utc>| (at - t0).num_milliseconds();
    let shared = Arc::new(Shared {
        t0,
        starts: Log::default(),
    });
    let backoff = Backoff::exponential(Duration::from_millis(100), Duration::from_secs(1));

    let mut flow = TypedFlow::linear("retries");
    // One flaky call: a policy on its atom.
    let boot = Boot {
        shared: shared.clone(),
        calls: AtomicU32::new(0),
    };
    let policy = RetryPolicy::attempts(4).backoff(backoff.jitter(0.2));
    let server = flow.add(atom("boot", boot).retries(policy), ());
    // A group to try zone after zone: a subflow under a controller, which provides the zone.
    let zones = ForEach::new(["az-1", "az-2", "az-3"]).backoff(backoff);
    let mut group =
        TypedFlow::linear("zones").retry(Atom::retry("zone-retry", zones).provides(ZONE));
    let zone = group.output::<String>(ZONE)?;
    let reservation = group.add(atom("reserve", Reserve(shared.clone())), &zone);
    let volume = group.add(
        atom("place", Place(shared.clone())),
        (&zone, &reservation, &server),
    );
    flow.add_flow(group);
    let flow = flow.compile()?;

    let dir = tempfile::tempdir()?;
    let store = SqliteStore::open(&format!(
        "sqlite://{}",
        dir.path().join("retries.db").display()
    ))
    .await?;
    let engine = Engine::new(store.clone());

    // When an atom goes RETRYING, its retry_at is in the store: read it from there.
    let retry_ats = Arc::new(Log::default());
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
                    retry_ats.add(&atom, at);
                }
            }
        })
    };

    let outcome = engine.start(&flow, Inputs::new()).await?;
    drop(engine);
    watcher.await?;

    println!("flow ended {} after +{} ms", outcome.state, ms(Utc::now()));
    let volume = volume.get(&outcome)?;
    println!("  volume = {}", volume.as_deref().unwrap_or("(none)"));
    let snapshot = store.load_flow(outcome.flow).await?;
    println!("retry histories, as stored (an atom's retried calls, a controller's attempts):");
    for retried in snapshot
        .atoms
        .iter()
        .filter(|a| !a.retry_history.is_empty())
    {
        for attempt in &retried.retry_history {
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
                "  {:<10} {value:<32} failed: {}",
                retried.name,
                why.join("; ")
            );
        }
    }

    // Every retry waited for its retry_at: the n-th retry_at of an atom or a controller comes
    // before the (n+1)-th call (allowing 1 ms for the store rounding timestamps).
    for (task, retrying, attempts) in [("boot", "boot", 3), ("place", "zone-retry", 3)] {
        let starts = shared.starts.of(task);
        let due = retry_ats.of(retrying);
        anyhow::ensure!(
            starts.len() == attempts,
            "{task} should have run {attempts} times"
        );
        anyhow::ensure!(
            due.len() == attempts - 1,
            "{retrying} should have retried {} times",
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
    anyhow::ensure!(volume.as_deref() == Some("vol-1@az-3"));
    Ok(())
}
