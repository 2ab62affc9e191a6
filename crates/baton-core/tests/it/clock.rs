//! The engine's clock: with [`Clock::tokio`], backoff, time limits and deadlines pass at once
//! under tokio's paused time, and the run stores what it would store in real time.

use std::time::{Duration, Instant};

use baton_core::model::{Change, Deadline, Transition};
use baton_core::retry::{Backoff, RetryPolicy, Times};
use baton_core::store::Store;
use baton_core::{
    Atom, AtomState, Clock, CreateOptions, Engine, FailureKind, Flow, FlowState, Inputs,
    MemoryStore, TaskError,
};
use chrono::{DateTime, Utc};
use serde_json::json;

/// A flow whose waits are counted in `minute`s: `flaky` fails once, transiently, and its retry
/// policy waits an hour (60 minutes) before calling it again; `boot`'s first call would take
/// two hours, its time limit is 30 minutes, and its second call returns at once; `attach`, in
/// a subflow whose retry controller waits an hour between rounds, fails in the first round.
fn slow_cloud(minute: Duration) -> baton_core::CompiledFlow {
    let hour = minute * 60;
    let flaky = Atom::from_fn("flaky", |ctx| async move {
        if ctx.attempt() == 1 {
            return Err(TaskError::msg("the cloud is busy").retryable());
        }
        Ok(json!("flaky done"))
    })
    .retries(RetryPolicy::attempts(2).backoff(Backoff::exponential(hour, hour)));
    let boot = Atom::from_fn("boot", move |ctx| async move {
        if ctx.attempt() == 1 {
            tokio::time::sleep(hour * 2).await;
        }
        Ok(json!("booted"))
    })
    .timeout(minute * 30)
    .retries(RetryPolicy::attempts(2).backoff(Backoff::none()));
    let attach = Atom::from_fn("attach", |ctx| async move {
        if ctx.input::<u64>("round")? < 2 {
            return Err(TaskError::msg("the volume is busy").retryable());
        }
        Ok(json!("attached"))
    })
    .requires(["round"]);
    let controller = Times::new(2).backoff(Backoff::exponential(hour, hour));
    Flow::linear("slow-cloud")
        .add(flaky)
        .add(boot)
        .add(
            Flow::linear("volume")
                .retry(Atom::retry("r", controller).provides("round"))
                .add(attach),
        )
        .compile()
        .unwrap()
}

/// The changes of a history, without their times.
fn changes(history: &[Transition]) -> Vec<Change> {
    history.iter().map(|t| t.change.clone()).collect()
}

/// When atom `atom` first went from `from` to `to`.
fn when(history: &[Transition], atom: &str, from: AtomState, to: AtomState) -> DateTime<Utc> {
    history
        .iter()
        .find(|t| {
            matches!(&t.change, Change::Atom { atom: a, from: f, to: t, .. }
                if a == atom && *f == from && *t == to)
        })
        .unwrap_or_else(|| panic!("{atom} never went {from:?} -> {to:?}: {history:#?}"))
        .at
}

/// When atom `atom` next went to `to`, after `at`.
fn history_after(
    history: &[Transition],
    at: DateTime<Utc>,
    atom: &str,
    to: AtomState,
) -> DateTime<Utc> {
    history
        .iter()
        .find(|t| {
            t.at > at
                && matches!(&t.change, Change::Atom { atom: a, to: t, .. } if a == atom && *t == to)
        })
        .unwrap_or_else(|| panic!("{atom} never went {to:?} after {at}: {history:#?}"))
        .at
}

/// An hour of backoff (a retry policy's, and a retry controller's) and a 30-minute time limit
/// take milliseconds of real time under paused time, and the stored history is the one a
/// real-time run stores (here: the same flow with 5 ms for a minute), with the waits'
/// true lengths in its times.
#[tokio::test(start_paused = true)]
async fn an_hour_of_backoff_and_a_time_limit_pass_at_once_under_paused_time() {
    let start: DateTime<Utc> = "2030-01-01T00:00:00Z".parse().unwrap();
    let store = MemoryStore::new();
    let engine = Engine::new(store.clone()).with_clock(Clock::tokio_from(start));
    let real = Instant::now();
    let outcome = engine
        .start(&slow_cloud(Duration::from_secs(60)), Inputs::new())
        .await
        .unwrap();
    let took = real.elapsed();
    assert_eq!(outcome.state, FlowState::Success, "{outcome:?}");
    assert!(took < Duration::from_secs(5), "took {took:?} of real time");
    let paused = store.history(outcome.flow).await.unwrap();

    // The waits are in the stored times: an hour between the failure and the next call, 30
    // minutes from boot's start to its time-out.
    let failed = when(&paused, "flaky", AtomState::Running, AtomState::Failure);
    assert_eq!(failed, start, "the first call failed at the start");
    let retried = when(&paused, "flaky", AtomState::Retrying, AtomState::Running);
    assert_eq!(retried - failed, chrono::Duration::hours(1));
    let booted = when(&paused, "boot", AtomState::Pending, AtomState::Running);
    let timed_out = when(&paused, "boot", AtomState::Running, AtomState::Failure);
    assert_eq!(timed_out - booted, chrono::Duration::minutes(30));
    let refused = when(&paused, "attach", AtomState::Running, AtomState::Failure);
    let again = history_after(&paused, refused, "attach", AtomState::Running);
    assert_eq!(
        again - refused,
        chrono::Duration::hours(1),
        "the controller's backoff"
    );
    let timeouts: Vec<_> = outcome
        .failures
        .iter()
        .filter(|f| f.kind == FailureKind::Timeout)
        .map(|f| f.atom.as_str())
        .collect();
    assert_eq!(timeouts, ["boot"]);

    // The same flow in real time, with 5 ms for a minute (time limits long enough for a
    // loaded machine to keep), stores the same changes.
    let real_store = MemoryStore::new();
    let real_run = tokio::spawn(async move {
        let outcome = Engine::new(real_store.clone())
            .start(&slow_cloud(Duration::from_millis(5)), Inputs::new())
            .await
            .unwrap();
        real_store.history(outcome.flow).await.unwrap()
    });
    // Real time: let the runtime's clock follow the system's while the run waits.
    tokio::time::resume();
    let real_history = real_run.await.unwrap();
    assert_eq!(changes(&paused), changes(&real_history));
}

/// A run's two-hour deadline passes at once under paused time: the task still running at it
/// is cancelled and the run reverted, stamped two hours after its start.
#[tokio::test(start_paused = true)]
async fn a_run_deadline_passes_at_once_under_paused_time() {
    let clock = Clock::tokio();
    let start = clock.now();
    let flow = Flow::linear("deadline")
        .add(Atom::from_fn("network", |_| async { Ok(json!("net-1")) }))
        .add(Atom::from_fn("migrate", |_| async {
            tokio::time::sleep(Duration::from_secs(3 * 3600)).await;
            Ok(json!("migrated"))
        }))
        .compile()
        .unwrap();
    let store = MemoryStore::new();
    let engine = Engine::new(store.clone()).with_clock(clock);
    let deadline = Deadline::revert_at(start + chrono::Duration::hours(2));
    let id = engine
        .create_with(
            &flow,
            Inputs::new(),
            CreateOptions::new().deadline(deadline),
        )
        .await
        .unwrap();
    let real = Instant::now();
    let outcome = engine.run(&flow, id).await.unwrap();
    assert!(real.elapsed() < Duration::from_secs(5));
    assert_eq!(outcome.state, FlowState::Reverted, "{outcome:?}");
    assert_eq!(outcome.failures.len(), 1, "{outcome:?}");
    assert_eq!(outcome.failures[0].atom, "migrate");
    assert_eq!(outcome.failures[0].kind, FailureKind::Timeout);
    let history = store.history(id).await.unwrap();
    let cut = when(&history, "migrate", AtomState::Running, AtomState::Failure);
    assert_eq!(cut - start, chrono::Duration::hours(2));
}

/// Without a clock of its own, an engine reads the system's: what it stores is stamped with
/// the time of day.
#[tokio::test]
async fn the_default_clock_is_the_system_clock() {
    let engine = Engine::new(MemoryStore::new());
    assert_eq!(engine.clock(), Clock::system());
    let before = Utc::now();
    let flow = Flow::linear("now")
        .add(Atom::from_fn("a", |_| async { Ok(json!(1)) }))
        .compile()
        .unwrap();
    let outcome = engine.start(&flow, Inputs::new()).await.unwrap();
    let history = engine.store().history(outcome.flow).await.unwrap();
    let after = Utc::now();
    assert!(history.iter().all(|t| before <= t.at && t.at <= after));
}
