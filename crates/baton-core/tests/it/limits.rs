//! Values at the edges (durations too long for the clock, counters at their maximum): the
//! engine saturates them, it never panics on them.

use baton_testkit::board::offer;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton_core::board::JobBoard;
use baton_core::model::{AtomRecord, Batch, Write};
use baton_core::retry::{Backoff, Times};
use baton_core::store::Store;
use baton_core::{
    Atom, AtomState, ConductorId, Control, Engine, Flow, FlowState, Inputs, MemoryJobBoard,
    MemoryStore, RunOptions, TaskError,
};
use baton_testkit::{Action, FlakyStore, Log, Phase, Probe};
use chrono::{DateTime, Utc};
use serde_json::json;

/// A retry delay too large for the clock (`Utc::now() + delay` overflows) is saturated: the
/// failure and the retry are stored, with the latest time the clock holds, and an engine
/// that takes the run over waits for it too.
#[tokio::test(start_paused = true)]
async fn a_retry_delay_too_large_for_the_clock_is_saturated() {
    let log = Log::new();
    let forever = Backoff::exponential(Duration::MAX, Duration::MAX);
    let flow = Flow::linear("forever")
        .retry(Atom::retry("r", Times::new(2).backoff(forever)))
        .add(Atom::task("flaky", Probe::new(&log).fails()))
        .compile()
        .unwrap();
    let store = MemoryStore::new();
    let engine = Engine::new(store.clone());
    let id = engine.create(&flow, Inputs::new()).await.unwrap();
    for _ in 0..2 {
        let control = Control::new();
        let run = {
            let (engine, flow, control) = (engine.clone(), flow.clone(), control.clone());
            tokio::spawn(async move {
                engine
                    .run_with(&flow, id, RunOptions::new().control(control))
                    .await
            })
        };
        // Paused time runs on to the first timer: an hour, long before the retry is due.
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert!(!run.is_finished(), "the run did not wait for the retry");
        control.suspend();
        let outcome = run.await.unwrap().unwrap();
        assert_eq!(outcome.state, FlowState::Suspended);
        let snap = store.load_flow(id).await.unwrap();
        let r = &snap.atoms[0];
        assert_eq!(r.state, AtomState::Retrying);
        assert_eq!(r.retry_at, Some(DateTime::<Utc>::MAX_UTC));
    }
    assert_eq!(
        log.sequence(Action::Execute, Phase::Start),
        vec!["flaky".to_owned()],
        "flaky ran once, and waits for its retry"
    );
}

/// The engine's wait before retrying an unavailable store doubles without overflowing.
#[tokio::test(start_paused = true)]
async fn a_store_retry_wait_too_long_to_double_is_saturated() {
    let log = Log::new();
    let flow = Flow::linear("three")
        .add(Atom::task("a", Probe::new(&log)))
        .add(Atom::task("b", Probe::new(&log)))
        .add(Atom::task("c", Probe::new(&log)))
        .compile()
        .unwrap();
    let store = FlakyStore::new(MemoryStore::new(), 2);
    let mut options = baton_core::engine::Options::default();
    options.store_retry_base = Duration::MAX;
    options.store_retry_max = Duration::MAX;
    let engine = Engine::new(store.clone()).with_options(options);
    let outcome = engine.start(&flow, Inputs::new()).await.unwrap();
    assert_eq!(outcome.state, FlowState::Success);
    assert!(store.failures() > 0, "the store never failed");
}

/// A lease too long for the clock is saturated by the memory job board.
#[tokio::test]
async fn a_lease_too_long_for_the_clock_is_saturated() {
    let store = MemoryStore::new();
    let board = MemoryJobBoard::new(&store);
    board
        .post(baton_core::NewJob::new("job", "noop"))
        .await
        .unwrap();
    let owner = ConductorId::new();
    let claim = board
        .claim(owner, Duration::MAX, &offer())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(claim.lease_expires_at, DateTime::<Utc>::MAX_UTC);
    let renewed = board
        .heartbeat(claim.fence, Duration::MAX, false)
        .await
        .unwrap();
    assert_eq!(renewed, DateTime::<Utc>::MAX_UTC);
}

/// An atom stored at the largest attempt and round (records a store hands back) runs again
/// without overflowing them.
#[tokio::test]
async fn attempts_and_rounds_at_their_maximum_are_saturated() {
    let log = Log::new();
    let flow = Flow::linear("max")
        .retry(Atom::retry("r", Times::new(2)).provides("try"))
        .add(
            Atom::task(
                "x",
                Probe::new(&log).fails_when(|ctx| ctx.input::<u32>("try").unwrap() < 2),
            )
            .requires(["try"]),
        )
        .compile()
        .unwrap();
    let store = MemoryStore::new();
    let engine = Engine::new(store.clone());
    let id = engine.create(&flow, Inputs::new()).await.unwrap();
    // As a crashed run may have left it: the controller's first attempt done, `x` running
    // at the largest attempt and round.
    let mut r = AtomRecord::pending("r", baton_core::model::AtomKind::Retry);
    r.state = AtomState::Running;
    r.attempt = 1;
    let mut r_done = r.clone();
    r_done.state = AtomState::Success;
    r_done.result = Some(json!(1));
    let mut x = AtomRecord::pending("x", baton_core::model::AtomKind::Task);
    x.state = AtomState::Running;
    x.attempt = u32::MAX;
    x.round = u32::MAX;
    let mut batch = Batch::new(id, None);
    for (expected_state, expected_attempt, record) in [
        (AtomState::Pending, 0, r),
        (AtomState::Running, 1, r_done),
        (AtomState::Pending, 0, x),
    ] {
        batch.writes.push(Write::Atom {
            expected_state,
            expected_attempt,
            record,
        });
    }
    store.commit(&batch).await.unwrap();
    let outcome = engine.run(&flow, id).await.unwrap();
    assert_eq!(outcome.state, FlowState::Success);
    assert_eq!(log.successes(Action::Execute)["x"], 1);
    let snap = store.load_flow(id).await.unwrap();
    assert_eq!(snap.atoms[1].round, u32::MAX);
}

/// A failure (and a revert failure) far over the store's limit is stored clipped to
/// `Options::max_failure_bytes`: its head and tail kept, the cut marked.
#[tokio::test]
async fn a_huge_failure_is_stored_clipped_to_the_engines_limit() {
    let store = MemoryStore::new();
    let engine = Engine::new(store.clone());
    let limit = engine.options().max_failure_bytes;
    let outcome = engine
        .start(&baton_testkit::scenarios::huge_failures(), Inputs::new())
        .await
        .unwrap();
    assert_eq!(outcome.state, FlowState::Failure);
    let snap = store.load_flow(outcome.flow).await.unwrap();
    let x = &snap.atoms[0];
    for (what, f) in [
        ("failure", x.failure.as_ref().unwrap()),
        ("revert failure", x.revert_failure.as_ref().unwrap()),
    ] {
        let size = serde_json::to_vec(f).unwrap().len();
        assert!(size <= limit, "{what} is {size} bytes");
        assert!(
            f.message.contains(" bytes cut ...] "),
            "{what}: {}",
            &f.message[..100]
        );
    }
    let f = x.failure.as_ref().unwrap();
    assert!(f.message.starts_with("message starts xxx") && f.message.ends_with("xxx message ends"));
    assert_eq!(f.causes.len(), 10);
    assert!(f.causes[9].starts_with("cause 9 "));
    assert_eq!(outcome.failures.len(), 2);
}

/// A retry that goes on for long keeps a bounded history (the first attempt and the latest),
/// and `Times` still counts every attempt.
#[tokio::test]
async fn a_long_running_retry_keeps_a_bounded_history_and_counts_every_attempt() {
    let tries = Arc::new(Mutex::new(Vec::new()));
    let flow = {
        let tries = tries.clone();
        Flow::linear("long")
            .retry(Atom::retry("r", Times::new(100)).provides("try"))
            .add(
                Atom::from_fn("x", move |ctx| {
                    let tries = tries.clone();
                    async move {
                        let n: usize = ctx.input("try")?;
                        tries.lock().unwrap().push(n);
                        if n < 100 {
                            let err = TaskError::msg(format!("try {n}: {}", "m".repeat(20_000)));
                            return Err(err.retryable());
                        }
                        Ok(json!(n))
                    }
                })
                .requires(["try"]),
            )
            .compile()
            .unwrap()
    };
    let store = MemoryStore::new();
    let engine = Engine::new(store.clone());
    let budget = engine.options().max_history_bytes;
    let outcome = engine.start(&flow, Inputs::new()).await.unwrap();
    assert_eq!(outcome.state, FlowState::Success);
    assert_eq!(*tries.lock().unwrap(), (1..=100).collect::<Vec<_>>());
    let snap = store.load_flow(outcome.flow).await.unwrap();
    let r = &snap.atoms[0];
    let size = serde_json::to_vec(&r.retry_history).unwrap().len();
    assert!(size <= budget, "the history is {size} bytes");
    assert_eq!(r.retry_history.len(), 9, "the first attempt and the last 8");
    let counted: u32 = r.retry_history.iter().map(|a| 1 + a.dropped_before).sum();
    assert_eq!(counted, 99);
    assert!(r.retry_history[0].failures[0]
        .message
        .starts_with("try 1: "));
    assert!(r.retry_history[8].failures[0]
        .message
        .starts_with("try 99: "));
}
