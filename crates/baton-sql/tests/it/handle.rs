//! Waiting for jobs to end on PostgreSQL, beyond the handle cases every board runs
//! (`baton_testkit::handle`): which ends are announced (those of watched jobs only, whichever
//! statement ends them), and an end made through another board reaching a waiter through the
//! server, whichever of the waiting board's callers holds its listening connection.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use baton_core::board::{JobBoard, NewJob};
use baton_core::handle::Ended;
use baton_core::{
    Atom, ConductorId, CreateOptions, Engine, Flow, FlowState, JobHandle, JobId, RunOptions,
};
use baton_sql::PostgresJobBoard;
use baton_testkit::board::offer;
use serde_json::{json, Value};
use sqlx::postgres::PgListener;

use crate::board::{postgres_pair, until_listening};
use crate::support::Raw;

const LEASE: Duration = Duration::from_secs(60);
const LONG: Duration = Duration::from_secs(30);

/// The ends announced on the board's channel, in the statements that end jobs by every path:
/// a board's consume, park and trash, and a store's last step of a run (created with its first
/// step, or appended); only the watched jobs' ends are, each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_only_the_ends_of_watched_jobs_are_announced() {
    let Some((board, store)) = postgres_pair().await else {
        return;
    };
    let Raw::Postgres { url, schema } = &store.raw else {
        unreachable!("a PostgreSQL store");
    };
    let mut heard = PgListener::connect(url).await.unwrap();
    heard.listen(&format!("baton_jobs_{schema}")).await.unwrap();

    let mut announced = BTreeSet::new();
    let post = |name: &'static str, watched: bool| {
        let board = board.clone();
        let job = NewJob::new(name, "noop");
        let job = if watched { job.watched() } else { job };
        async move { board.post(job).await.unwrap().id }
    };
    let consumed = post("consumed", true).await;
    let quiet = post("quiet", false).await;
    let parked = post("parked", true).await;
    let created = post("ended with its first step", true).await;
    let appended = post("ended with its last step", true).await;
    let appended_quietly = post("ended quietly with its last step", false).await;
    let trashed = post("trashed", true).await;
    let trashed_quietly = post("trashed quietly", false).await;
    announced.extend([consumed, parked, created, appended, trashed]);

    let owner = ConductorId::new();
    let claims = board.claim_up_to(owner, LEASE, 6, &offer()).await.unwrap();
    let fence = |job: JobId| claims.iter().find(|c| c.job.id == job).unwrap().fence;
    board.consume(fence(consumed), json!({})).await.unwrap();
    board.consume(fence(quiet), json!({})).await.unwrap();
    board.park(fence(parked), json!({})).await.unwrap();
    let engine = Engine::new(store.store.clone());
    let empty = Flow::linear("empty").compile().unwrap();
    let one = Flow::linear("one")
        .add(Atom::from_fn("a", |_| async { Ok(Value::Null) }))
        .compile()
        .unwrap();
    for (job, flow) in [
        (created, &empty),
        (appended, &one),
        (appended_quietly, &one),
    ] {
        let fence = fence(job);
        let outcome = engine
            .create_and_run(
                flow,
                Default::default(),
                CreateOptions::new()
                    .id(baton_core::FlowId::for_job(job))
                    .fence(fence),
                RunOptions::new().fence(fence).consume_job(),
            )
            .await
            .unwrap();
        assert_eq!(outcome.state, FlowState::Success);
        assert!(outcome.job_consumed);
    }
    board.trash(trashed, None, json!("gone")).await.unwrap();
    board
        .trash(trashed_quietly, None, json!("gone"))
        .await
        .unwrap();

    let mut ended = Vec::new();
    while let Ok(Ok(notice)) = tokio::time::timeout(Duration::from_secs(1), heard.recv()).await {
        if let Some(job) = notice.payload().strip_prefix("ended ") {
            ended.push(job.parse::<JobId>().unwrap());
        }
    }
    assert_eq!(ended.len(), announced.len(), "{ended:?}");
    assert_eq!(ended.into_iter().collect::<BTreeSet<_>>(), announced);
}

/// A job posted through one board (not watched) and ended through another reaches a handle
/// waiting on a third at once; the wait marks the job. The waiting board's caller waiting for
/// work holds its listening connection, and passes the end on; the end wakes nobody waiting
/// for work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_an_end_made_elsewhere_reaches_the_waiter_through_the_server() {
    let Some((waiting, store)) = postgres_pair().await else {
        return;
    };
    let poster = PostgresJobBoard::new(&store.store);
    let owner = PostgresJobBoard::new(&store.store);
    let job = poster.post(NewJob::new("elsewhere", "noop")).await.unwrap();
    let claim = owner
        .claim(ConductorId::new(), LEASE, &offer())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(claim.job.id, job.id);

    let work = {
        let waiting = waiting.clone();
        tokio::spawn(async move { waiting.wait_for_work(LONG).await })
    };
    until_listening(&store).await;
    let handle: JobHandle<Value> =
        JobHandle::new(Arc::new(waiting.clone()), job.id).poll_every(LONG);
    let waiter = tokio::spawn(async move {
        let started = Instant::now();
        (handle.wait().await.unwrap(), started.elapsed())
    });
    // The wait has marked the job (its first look) before the end.
    let Raw::Postgres { url, schema } = &store.raw else {
        unreachable!("a PostgreSQL store");
    };
    let mut conn = crate::support::pg_connect(url, Some(schema)).await;
    let sql = format!(
        "SELECT count(*) FROM jobs WHERE id = '{}' AND watched",
        job.id
    );
    crate::board::until_positive(&mut conn, &sql, "the wait never marked the job").await;
    let ended_at = Instant::now();
    owner
        .consume(
            claim.fence,
            json!({"flow": job.flow(), "state": "SUCCESS", "failures": [], "result": 7}),
        )
        .await
        .unwrap();
    let (ended, waited) = waiter.await.unwrap();
    let latency = ended_at.elapsed();
    eprintln!("the waiter heard of the end {latency:?} after the consume was sent");
    assert_eq!(ended, Ended::Succeeded(json!(7)));
    assert!(
        latency < Duration::from_secs(5),
        "the end took {latency:?} to reach the waiter (waited {waited:?})"
    );
    assert!(!work.is_finished(), "a job's end woke the wait for work");
    work.abort();
}
