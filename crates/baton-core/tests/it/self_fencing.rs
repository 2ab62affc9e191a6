//! Owners that stop themselves: a conductor whose heartbeats go unanswered stops its job's
//! tasks before its lease runs out on the board, and a task can confirm its claim before a
//! side effect.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton_core::board::JobBoard;
use baton_core::{
    Atom, Blueprint, ClaimError, Conductor, Engine, Flow, FnTask, JobState, MemoryJobBoard,
    MemoryStore, NewJob, Registry, TaskError,
};
use baton_testkit::{BoardOp, FaultyBoard};
use chrono::{DateTime, Utc};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::conductor::{fast_options, wait_until};

/// What the tasks saw, with the wall-clock time: `("start s0", t)`, `("cancelled s0", t)`,
/// `("done s0", t)`, `("lost s0", t)`.
#[derive(Debug, Clone, Default)]
struct Seen(Arc<Mutex<Vec<Sighting>>>);

/// What a task saw, and when.
type Sighting = (String, DateTime<Utc>);

impl Seen {
    fn push(&self, what: String) {
        self.0.lock().unwrap().push((what, Utc::now()));
    }

    fn at(&self, what: &str) -> Option<DateTime<Utc>> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .find(|(w, _)| w == what)
            .map(|(_, t)| *t)
    }

    fn count(&self, what: &str) -> usize {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(w, _)| w == what)
            .count()
    }
}

/// `steps` tasks in a line, each sleeping `step`; with `confirm`, each confirms its claim
/// before its side effect (`done`).
fn registry(seen: &Seen, step: Duration, confirm: bool) -> Registry {
    let seen = seen.clone();
    Registry::new()
        .register("watch", 1, move |params| {
            let n = params["steps"].as_u64().ok_or("`steps` must be a number")?;
            let mut flow = Flow::linear("watch");
            for i in 0..n {
                let seen = seen.clone();
                flow = flow.add(Atom::task(
                    format!("s{i}"),
                    FnTask::new(move |ctx| {
                        let seen = seen.clone();
                        async move {
                            let atom = ctx.atom().to_owned();
                            seen.push(format!("start {atom}"));
                            let token = ctx.cancellation();
                            let watcher = seen.clone();
                            let name = atom.clone();
                            tokio::spawn(async move {
                                token.cancelled().await;
                                watcher.push(format!("cancelled {name}"));
                            });
                            tokio::time::sleep(step).await;
                            if confirm {
                                if let Err(e @ ClaimError::Lost { .. }) = ctx.confirm_claim().await
                                {
                                    seen.push(format!("lost {atom}"));
                                    return Err(TaskError::from(e));
                                }
                            }
                            seen.push(format!("done {atom}"));
                            Ok(json!(null))
                        }
                    }),
                ));
            }
            Ok(Blueprint::new(flow))
        })
        .unwrap()
}

fn start(
    board: &FaultyBoard<MemoryJobBoard>,
    store: &MemoryStore,
    registry: Registry,
) -> (
    CancellationToken,
    tokio::task::JoinHandle<Result<baton_core::conductor::Summary, baton_core::conductor::Error>>,
) {
    let shutdown = CancellationToken::new();
    let conductor = Conductor::new(
        Arc::new(board.clone()),
        Engine::new(store.clone()),
        registry,
    )
    .with_options(fast_options())
    .unwrap();
    let task = tokio::spawn(conductor.run(shutdown.clone()));
    (shutdown, task)
}

/// Heartbeats that never return (a connection that stopped carrying packets) cannot keep an
/// owner running: it stops the job's task before the lease it last renewed runs out on the
/// board, then, once the link heals, takes the job again and finishes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_whose_heartbeats_hang_stops_its_tasks_before_its_lease_runs_out() {
    let store = MemoryStore::new();
    let board = FaultyBoard::new(MemoryJobBoard::new(&store));
    let seen = Seen::default();
    let job = board
        .post(NewJob::new("cut", "watch").params(json!({ "steps": 2 })))
        .await
        .unwrap();
    let (shutdown, conductor) = start(
        &board,
        &store,
        registry(&seen, Duration::from_millis(1_500), false),
    );
    wait_until("the first step started", || {
        let seen = seen.clone();
        async move { seen.at("start s0").is_some() }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let cut = Utc::now();
    board.hang(BoardOp::Heartbeat);
    wait_until("the step's token fired", || {
        let seen = seen.clone();
        async move { seen.at("cancelled s0").is_some() }
    })
    .await;
    let cancelled = seen.at("cancelled s0").unwrap();
    let expires = board.get(job.id).await.unwrap().lease_expires_at.unwrap();
    assert!(
        cancelled < expires,
        "stopped at {cancelled}, after the lease ran out at {expires}"
    );
    let lease = chrono::Duration::from_std(fast_options().lease).unwrap();
    assert!(
        cancelled - cut < lease,
        "stopped {} after the cut",
        cancelled - cut
    );
    assert_eq!(seen.count("done s0"), 0, "no side effect after stopping");

    board.heal();
    wait_until("the job is finished after the link healed", || {
        let board = board.clone();
        async move { board.get(job.id).await.unwrap().state == JobState::Complete }
    })
    .await;
    assert_eq!(seen.count("done s0"), 1);
    assert_eq!(seen.count("done s1"), 1);
    shutdown.cancel();
    let summary = conductor.await.unwrap().unwrap();
    assert!(summary.lost >= 1, "{summary:?}");
    assert_eq!(summary.consumed, 1, "{summary:?}");
}

/// A task that confirms its claim before its side effect: confirmed while the claim holds;
/// once the claim has moved on (here an operator released the job), the task learns it, does
/// nothing, and the run is halted. The conductor's own heartbeats are 10 s apart, so it is the
/// task's confirmation that finds out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_confirms_its_claim_before_a_side_effect() {
    let store = MemoryStore::new();
    let board = FaultyBoard::new(MemoryJobBoard::new(&store));
    let seen = Seen::default();
    let job = board
        .post(NewJob::new("confirm", "watch").params(json!({ "steps": 3 })))
        .await
        .unwrap();
    let shutdown = CancellationToken::new();
    let mut options = fast_options();
    options.lease = Duration::from_secs(30);
    options.heartbeat = Duration::from_secs(10);
    let conductor = Conductor::new(
        Arc::new(board.clone()),
        Engine::new(store.clone()),
        registry(&seen, Duration::from_millis(300), true),
    )
    .with_options(options)
    .unwrap();
    let conductor = tokio::spawn(conductor.run(shutdown.clone()));
    wait_until("the second step started", || {
        let seen = seen.clone();
        async move { seen.at("start s1").is_some() }
    })
    .await;
    assert_eq!(seen.count("done s0"), 1, "confirmed while the claim held");
    board.release(job.id).await.unwrap();
    wait_until("the task found the claim lost", || {
        let seen = seen.clone();
        async move { seen.at("lost s1").is_some() }
    })
    .await;
    wait_until("the run was halted", || {
        let seen = seen.clone();
        async move { seen.at("cancelled s1").is_some() }
    })
    .await;
    // The released job is claimed again (by this same conductor, which has room) and its run
    // resumed: the step's first call stopped at its confirmation, and only the second acted.
    wait_until("the job finished under its new claim", || {
        let board = board.clone();
        async move { board.get(job.id).await.unwrap().state == JobState::Complete }
    })
    .await;
    let s1: Vec<String> = seen
        .0
        .lock()
        .unwrap()
        .iter()
        .map(|(w, _)| w.clone())
        .filter(|w| w.ends_with(" s1") && !w.starts_with("cancelled"))
        .collect();
    // The new owner may start the step while the old call still sleeps: two calls, one
    // side effect, the old call's confirmation refused first.
    let mut sorted = s1.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        ["done s1", "lost s1", "start s1", "start s1"],
        "{s1:?}"
    );
    let pos = |w: &str| s1.iter().position(|x| x == w).unwrap();
    assert!(pos("lost s1") < pos("done s1"), "{s1:?}");
    shutdown.cancel();
    let summary = conductor.await.unwrap().unwrap();
    assert!(summary.lost >= 1, "{summary:?}");
}

/// Shutdown does not wait for the conductor's own calls to a board that does not answer: a
/// claim, or the conductor's registration, hanging when it is asked to stop is given up at
/// once. (The board's own call timeout bounds what follows the drain.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_gives_up_a_claim_or_registration_that_hangs() {
    for op in [BoardOp::Claim, BoardOp::Register] {
        let store = MemoryStore::new();
        let board = FaultyBoard::new(MemoryJobBoard::new(&store));
        let seen = Seen::default();
        let (shutdown, conductor) = start(&board, &store, registry(&seen, Duration::ZERO, false));
        wait_until("the conductor registered", || {
            let board = board.clone();
            async move { !board.conductors().await.unwrap().is_empty() }
        })
        .await;
        board.hang(op);
        wait_until("a call hangs", || {
            let board = board.clone();
            async move { board.failed() >= 1 }
        })
        .await;
        let asked = std::time::Instant::now();
        shutdown.cancel();
        let stopped = tokio::time::timeout(Duration::from_secs(5), conductor)
            .await
            .unwrap_or_else(|_| panic!("{op:?}: the conductor did not stop"));
        assert!(stopped.unwrap().is_ok(), "{op:?}");
        assert!(
            asked.elapsed() < Duration::from_secs(1),
            "{op:?}: stopped after {:?}",
            asked.elapsed()
        );
    }
}
