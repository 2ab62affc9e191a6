//! Conductors meeting errors retrying cannot cure: a board that fails for good, a database
//! found corrupt. The conductor stops with the error, after its graceful shutdown, and consumes
//! no job whose run did not end.

use std::sync::Arc;
use std::time::Duration;

use baton_core::board::{self, JobBoard};
use baton_core::conductor::{self, Summary};
use baton_core::store::{self, Store};
use baton_core::{Conductor, Engine, FlowState, JobState, MemoryJobBoard, MemoryStore, NewJob};
use baton_testkit::{Action, BoardOp, CrashMode, CrashStore, FaultyBoard, Log, Phase};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::conductor::{fast_options, registry, wait_until};

/// Longer than any of these conductors needs to stop by itself.
const STOPS_WITHIN: Duration = Duration::from_secs(20);

fn malformed() -> Box<dyn std::error::Error + Send + Sync> {
    Box::new(std::io::Error::other("database disk image is malformed"))
}

fn conductor_on(
    board: &FaultyBoard<MemoryJobBoard>,
    store: Arc<dyn Store>,
    log: &Log,
) -> Conductor {
    Conductor::new(
        Arc::new(board.clone()),
        Engine::from_arc(store),
        registry(log, Duration::from_millis(20)),
    )
    .with_options(fast_options())
    .unwrap()
}

/// Runs `conductor` until it stops by itself (it must, within [`STOPS_WITHIN`]); `shutdown` is
/// never cancelled.
async fn run_until_it_stops(conductor: Conductor) -> Result<Summary, conductor::Error> {
    let shutdown = CancellationToken::new();
    tokio::time::timeout(STOPS_WITHIN, conductor.run(shutdown))
        .await
        .expect("the conductor stopped by itself")
}

async fn post_steps(board: &impl JobBoard, steps: u32) -> board::Job {
    board
        .post(NewJob::new("job", "steps").params(json!({ "steps": steps })))
        .await
        .unwrap()
}

/// A conductor that runs a job of 1000 slow steps, one of which has run: the store, the board,
/// the job, and the conductor's task (see [`run_until_it_stops`]).
async fn running_a_long_job() -> (
    MemoryStore,
    FaultyBoard<MemoryJobBoard>,
    board::Job,
    tokio::task::JoinHandle<Result<Summary, conductor::Error>>,
) {
    let (store, log) = (MemoryStore::new(), Log::new());
    let board = FaultyBoard::new(MemoryJobBoard::new(&store));
    let job = post_steps(&board, 1000).await;
    let c = tokio::spawn(run_until_it_stops(conductor_on(
        &board,
        Arc::new(store.clone()),
        &log,
    )));
    wait_until("a step ran", || {
        let log = log.clone();
        async move { !log.sequence(Action::Execute, Phase::Ok).is_empty() }
    })
    .await;
    (store, board, job, c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_that_fails_for_good_stops_the_conductor() {
    let (store, log) = (MemoryStore::new(), Log::new());
    let board = FaultyBoard::new(MemoryJobBoard::new(&store));
    post_steps(&board, 1).await;
    board.fail(BoardOp::Claim, || {
        board::Error::Backend(Box::new(std::io::Error::other(
            "relation \"jobs\" does not exist",
        )))
    });
    let err = run_until_it_stops(conductor_on(&board, Arc::new(store), &log))
        .await
        .unwrap_err();
    assert!(
        matches!(err, conductor::Error::Board(board::Error::Backend(_))),
        "{err:?}"
    );
    assert!(
        board.conductors().await.unwrap().is_empty(),
        "it deregistered on the way out"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_that_fails_for_a_while_is_tried_again() {
    let (store, log) = (MemoryStore::new(), Log::new());
    let board = FaultyBoard::new(MemoryJobBoard::new(&store));
    board.fail(BoardOp::Claim, || board::Error::Unavailable(malformed()));
    let job = post_steps(&board, 2).await;
    let shutdown = CancellationToken::new();
    let c = tokio::spawn(conductor_on(&board, Arc::new(store), &log).run(shutdown.clone()));
    wait_until("claims failed three times", || {
        let board = board.clone();
        async move { board.failed() >= 3 }
    })
    .await;
    board.heal();
    wait_until("the job is complete", || {
        let board = board.clone();
        async move { board.get(job.id).await.unwrap().state == JobState::Complete }
    })
    .await;
    shutdown.cancel();
    let summary = c.await.unwrap().unwrap();
    assert_eq!(summary.consumed, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conductor_heartbeat_that_fails_for_good_stops_the_conductor() {
    let (store, board, job, c) = running_a_long_job().await;
    board.fail(BoardOp::Register, || {
        board::Error::Backend(Box::new(std::io::Error::other("permission denied")))
    });
    let err = c.await.unwrap().unwrap_err();
    assert!(
        matches!(err, conductor::Error::Board(board::Error::Backend(_))),
        "{err:?}"
    );
    // Shut down as asked to: the run suspended and its job handed back.
    assert_eq!(board.get(job.id).await.unwrap().state, JobState::Unclaimed);
    assert_eq!(
        store.load_flow(job.flow()).await.unwrap().flow.state,
        FlowState::Suspended
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_database_met_by_a_run_stops_the_conductor_and_consumes_nothing() {
    let (store, log) = (MemoryStore::new(), Log::new());
    let board = FaultyBoard::new(MemoryJobBoard::new(&store));
    let first = post_steps(&board, 10).await;
    let second = post_steps(&board, 10).await;
    // The fourth write finds the database damaged, and so does every write after it.
    let damaged = CrashStore::new(store.clone(), 4, CrashMode::BeforeWrite)
        .failing_with(|| store::Error::CorruptDatabase(malformed()));
    let mut options = fast_options();
    options.concurrency = 1;
    let err = run_until_it_stops(
        Conductor::new(
            Arc::new(board.clone()),
            Engine::new(damaged),
            registry(&log, Duration::ZERO),
        )
        .with_options(options)
        .unwrap(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            err,
            conductor::Error::Store(store::Error::CorruptDatabase(_))
        ),
        "{err:?}"
    );
    let first = board.get(first.id).await.unwrap();
    assert_eq!(
        (first.state, &first.outcome),
        (JobState::Claimed, &None),
        "the job whose run met the damage is left claimed, not consumed"
    );
    assert_eq!(
        board.get(second.id).await.unwrap().state,
        JobState::Unclaimed,
        "no other job was claimed after it"
    );
    assert_eq!(
        store.load_flow(first.flow()).await.unwrap().flow.state,
        FlowState::Running
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_database_met_by_a_lease_heartbeat_halts_the_run_and_stops_the_conductor() {
    let (store, board, job, c) = running_a_long_job().await;
    board.fail(BoardOp::Heartbeat, || {
        board::Error::CorruptDatabase(malformed())
    });
    let err = c.await.unwrap().unwrap_err();
    assert!(
        matches!(
            err,
            conductor::Error::Board(board::Error::CorruptDatabase(_))
        ),
        "{err:?}"
    );
    // Halted where it was: neither consumed nor handed back (the board cannot be trusted);
    // its lease runs out.
    assert_eq!(board.get(job.id).await.unwrap().state, JobState::Claimed);
    assert_eq!(
        store.load_flow(job.flow()).await.unwrap().flow.state,
        FlowState::Running
    );
}
