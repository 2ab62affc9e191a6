//! Job handles on every board: a conductor runs typed jobs that succeed, revert or are parked,
//! and a [`JobHandle`] waits for each and reads how it ended. Every case runs on every backend
//! pair; a backend's tests expand [`handle_conformance!`](crate::handle_conformance).
//!
//! The handles look at their jobs only every [`POLL`] (30 s) when no news of an end comes, and
//! the cases want their answers in well under [`PROMPT`]: a wait that returns in time was
//! woken by the board's news of the end, not by its fallback look. (Every end here is made in
//! the test's process: the SQLite board hears of those at once too.)

use std::sync::Arc;
use std::time::{Duration, Instant};

use baton_core::board::{Job, JobBoard};
use baton_core::conductor::Options;
use baton_core::handle::{self, Ended};
use baton_core::store::Store;
use baton_core::typed::{atom, from_fn, Const, TypedFlow};
use baton_core::{Atom, Blueprint, Flow, JobHandle, JobId, JobState, NewJob, Registry, TaskError};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::lifecycle::{start, Running};

/// How often the cases' handles look at their jobs without news: far longer than any case.
pub const POLL: Duration = Duration::from_secs(30);

/// How soon, at most, a wait woken by news of the end returns in these cases: generous for a
/// loaded machine, and far below [`POLL`].
pub const PROMPT: Duration = Duration::from_secs(10);

/// How long the cases' tasks take: long enough for the waits to begin before the jobs end.
const STEP: Duration = Duration::from_millis(300);

/// The parameters of the `sum` factory.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Numbers {
    /// What to add up.
    pub numbers: Vec<i64>,
}

/// The result of the `sum` factory's flow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Total {
    /// The sum.
    pub total: i64,
    /// How many numbers were added.
    pub count: usize,
}

/// `sum` (typed: adds its numbers up, returns a [`Total`]); `refuse` (typed: reverts, its
/// second atom failing); `plain` (untyped, returning no result).
fn registry() -> Registry {
    Registry::new()
        .register_typed("sum", 1, |p: Numbers| {
            let mut flow = TypedFlow::linear("sum");
            let total = flow.add(
                atom(
                    "add",
                    from_fn(|numbers: Vec<i64>, _ctx| async move {
                        tokio::time::sleep(STEP).await;
                        Ok::<_, TaskError>(Total {
                            total: numbers.iter().sum(),
                            count: numbers.len(),
                        })
                    }),
                ),
                Const(p.numbers),
            );
            flow.returns(&total);
            flow
        })
        .unwrap()
        .register_typed("refuse", 1, |(): ()| {
            let mut flow = TypedFlow::linear("refuse");
            let reserved = flow.add(
                atom(
                    "reserve",
                    from_fn(|(): (), _ctx| async move { Ok::<_, TaskError>("slot-1".to_owned()) }),
                ),
                (),
            );
            let placed = flow.add(
                atom(
                    "place",
                    from_fn(|slot: String, _ctx| async move {
                        tokio::time::sleep(STEP).await;
                        Err::<String, _>(TaskError::msg(format!("no room for {slot}")))
                    }),
                ),
                &reserved,
            );
            flow.returns(&placed);
            flow
        })
        .unwrap()
        .register("plain", 1, |_params| {
            Ok(Blueprint::new(Flow::linear("plain").add(Atom::from_fn(
                "greet",
                |_| async {
                    tokio::time::sleep(STEP).await;
                    Ok(json!("hello"))
                },
            ))))
        })
        .unwrap()
}

fn options() -> Options {
    let mut o = Options::default();
    o.lease = Duration::from_secs(5);
    o.heartbeat = Duration::from_millis(200);
    o.poll = Duration::from_millis(50);
    o.drain_timeout = Duration::from_secs(5);
    o
}

fn conductor<B, S>(board: &B, store: &S) -> Running
where
    B: JobBoard + Clone + 'static,
    S: Store + Clone + 'static,
{
    start(board, store, registry(), options())
}

fn shared<B: JobBoard + Clone + 'static>(board: &B) -> Arc<dyn JobBoard> {
    Arc::new(board.clone())
}

/// Posts `job` on `board` with a handle that looks at it only every [`POLL`].
async fn post<T, B: JobBoard + Clone + 'static>(board: &B, job: NewJob) -> JobHandle<T> {
    JobHandle::post(shared(board), job)
        .await
        .unwrap()
        .poll_every(POLL)
}

/// Waits on `handle` (which looks only every [`POLL`]), and asserts the answer came within
/// [`PROMPT`]: woken by the news of the job's end.
async fn wait_promptly<T: serde::de::DeserializeOwned>(handle: &JobHandle<T>) -> Ended<T> {
    let started = Instant::now();
    let ended = handle.wait().await.unwrap();
    let took = started.elapsed();
    assert!(
        took < PROMPT,
        "the wait took {took:?}: the end's news did not wake it"
    );
    ended
}

/// Posts `job` with a handle (see [`post`]) while a conductor runs on `board` and `store`,
/// waits for its end (see [`wait_promptly`]), and answers how it ended, the handle, and the
/// job as the board then holds it (at rest).
async fn run_to_end<T, B, S>(board: &B, store: &S, job: NewJob) -> (Ended<T>, JobHandle<T>, Job)
where
    T: serde::de::DeserializeOwned,
    B: JobBoard + Clone + 'static,
    S: Store + Clone + 'static,
{
    let running = conductor(board, store);
    let handle: JobHandle<T> = post(board, job).await;
    let ended = wait_promptly(&handle).await;
    let job = board.get(handle.id()).await.unwrap();
    assert!(job.state.is_at_rest(), "{job:?}");
    running.stop().await;
    (ended, handle, job)
}

/// A typed job that succeeds: its handle gives the flow's result, as the handle's type, and
/// the job's outcome records it beside the flow's state.
pub async fn a_typed_job_that_succeeds_gives_its_result<B, S>(board: B, store: S)
where
    B: JobBoard + Clone + 'static,
    S: Store + Clone + 'static,
{
    let job = NewJob::new("add", "sum")
        .typed_params(&Numbers {
            numbers: vec![2, 3, 37],
        })
        .unwrap();
    let (ended, handle, done) = run_to_end::<Total, _, _>(&board, &store, job).await;
    let expected = Total {
        total: 42,
        count: 3,
    };
    assert_eq!(ended, Ended::Succeeded(expected));
    assert_eq!(done.state, JobState::Complete);
    let outcome = done.outcome.unwrap();
    assert_eq!(outcome["state"], json!("SUCCESS"));
    assert_eq!(outcome["result"], json!({ "total": 42, "count": 3 }));
    // The same job, read as JSON, and as a type its result does not fit.
    let any: JobHandle<Value> = JobHandle::new(shared(&board), handle.id());
    assert_eq!(
        any.wait().await.unwrap(),
        Ended::Succeeded(json!({ "total": 42, "count": 3 }))
    );
    let wrong: JobHandle<Vec<String>> = JobHandle::new(shared(&board), handle.id());
    assert!(matches!(
        wrong.wait().await,
        Err(handle::Error::BadResult { path, .. }) if path == "."
    ));
}

/// A job whose run fails and is reverted: its handle lists the run's failures.
pub async fn a_job_whose_run_reverts_lists_its_failures<B, S>(board: B, store: S)
where
    B: JobBoard + Clone + 'static,
    S: Store + Clone + 'static,
{
    let job = NewJob::new("full", "refuse");
    let (ended, _, done) = run_to_end::<String, _, _>(&board, &store, job).await;
    match ended {
        Ended::Reverted { failures } => {
            assert_eq!(failures.len(), 1, "{failures:?}");
            assert!(failures[0].contains("no room for slot-1"), "{failures:?}");
        }
        other => panic!("the job did not revert: {other:?}"),
    }
    assert_eq!(done.state, JobState::Complete);
}

/// A job whose flow cannot be built (its parameters do not fit the factory's type) is parked:
/// its handle says so, and why.
pub async fn a_parked_job_says_why<B, S>(board: B, store: S)
where
    B: JobBoard + Clone + 'static,
    S: Store + Clone + 'static,
{
    let job = NewJob::new("bad", "sum").params(json!({ "numbers": [1, "two"] }));
    let (ended, _, done) = run_to_end::<Total, _, _>(&board, &store, job).await;
    match ended {
        Ended::Parked {
            kind,
            reason,
            outcome,
        } => {
            assert_eq!(kind, "build");
            assert!(reason.contains("numbers[1]"), "{reason}");
            assert_eq!(outcome["parked"], json!("build"));
        }
        other => panic!("the job was not parked: {other:?}"),
    }
    assert_eq!(done.state, JobState::Parked);
}

/// A wait on a job that ended already returns at once, whoever posted it; a wait on a job
/// nobody runs returns empty-handed at its limit.
pub async fn waits_on_ended_and_waiting_jobs<B, S>(board: B, store: S)
where
    B: JobBoard + Clone + 'static,
    S: Store + Clone + 'static,
{
    let running = conductor(&board, &store);
    // Posted without a mark, and without a result: read as JSON, it is `null`.
    let posted = board.post(NewJob::new("hello", "plain")).await.unwrap();
    let plain: JobHandle<Value> = JobHandle::new(shared(&board), posted.id).poll_every(POLL);
    assert_eq!(wait_promptly(&plain).await, Ended::Succeeded(Value::Null));
    running.stop().await;
    // Ended: at once, also with no time to wait at all.
    let again: JobHandle<()> = JobHandle::new(shared(&board), posted.id).poll_every(POLL);
    let started = Instant::now();
    assert_eq!(again.wait().await.unwrap(), Ended::Succeeded(()));
    assert_eq!(
        again.wait_timeout(Duration::ZERO).await.unwrap(),
        Some(Ended::Succeeded(()))
    );
    assert!(started.elapsed() < PROMPT);
    // A type that needs a result it does not have.
    let typed: JobHandle<Total> = JobHandle::new(shared(&board), posted.id);
    assert!(matches!(
        typed.ended().await,
        Err(handle::Error::NoResult { job }) if job == posted.id
    ));
    // Nobody runs this one (the conductor stopped): the wait gives up at its limit.
    let waiting: JobHandle<Total> = JobHandle::post(
        shared(&board),
        NewJob::new("nobody", "sum")
            .typed_params(&Numbers { numbers: vec![1] })
            .unwrap(),
    )
    .await
    .unwrap()
    .poll_every(Duration::from_millis(50));
    let started = Instant::now();
    let limit = Duration::from_millis(200);
    assert_eq!(waiting.wait_timeout(limit).await.unwrap(), None);
    let took = started.elapsed();
    assert!(took >= limit && took < PROMPT, "{took:?}");
    assert_eq!(waiting.ended().await.unwrap(), None);
    assert!(matches!(
        JobHandle::<Value>::new(shared(&board), JobId::new())
            .wait()
            .await,
        Err(handle::Error::Board(baton_core::board::Error::JobNotFound(
            _
        )))
    ));
}

/// A job trashed by an operator while its handles wait, one posted watched and one not: both
/// waits return at once with the reason.
pub async fn a_job_trashed_while_waited_for_wakes_its_waiters<B, S>(board: B, _store: S)
where
    B: JobBoard + Clone + 'static,
    S: Store,
{
    let watched: JobHandle<Total> = post(&board, NewJob::new("w", "nobody")).await;
    let unmarked = board.post(NewJob::new("u", "nobody")).await.unwrap();
    let unmarked: JobHandle<Total> = JobHandle::new(shared(&board), unmarked.id).poll_every(POLL);
    let mut waits = tokio::task::JoinSet::new();
    for handle in [watched.clone(), unmarked.clone()] {
        waits.spawn(async move {
            let started = Instant::now();
            (handle.wait().await.unwrap(), started.elapsed())
        });
    }
    // Let both waits begin (and mark the job not posted watched) before the jobs end.
    tokio::time::sleep(STEP).await;
    for handle in [&watched, &unmarked] {
        board
            .trash(handle.id(), None, json!("no longer needed"))
            .await
            .unwrap();
    }
    while let Some(waited) = waits.join_next().await {
        let (ended, took) = waited.unwrap();
        assert_eq!(
            ended,
            Ended::Trashed {
                reason: json!("no longer needed")
            }
        );
        assert!(
            took < PROMPT,
            "the wait took {took:?}: the end's news did not wake it"
        );
    }
}

/// Expands into one `#[tokio::test]` per handle case, each calling `$make` (an expression
/// making a `(board, store)` pair; with `optional:`, an `Option` of one, `None` skipping the
/// case).
#[macro_export]
macro_rules! handle_conformance {
    (optional: $make:expr) => {
        $crate::handle_conformance!(@all [optional] $make);
    };
    ($make:expr) => {
        $crate::handle_conformance!(@all [required] $make);
    };
    (@all [$mode:ident] $make:expr) => {
        $crate::handle_conformance!(@cases [$mode] $make;
            a_typed_job_that_succeeds_gives_its_result,
            a_job_whose_run_reverts_lists_its_failures,
            a_parked_job_says_why,
            waits_on_ended_and_waiting_jobs,
            a_job_trashed_while_waited_for_wakes_its_waiters,
        );
    };
    (@cases [required] $make:expr; $($case:ident,)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let (board, store) = $make;
                $crate::handle::$case(board, store).await;
            }
        )*
    };
    (@cases [optional] $make:expr; $($case:ident,)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                if let Some((board, store)) = $make {
                    $crate::handle::$case(board, store).await;
                }
            }
        )*
    };
}
