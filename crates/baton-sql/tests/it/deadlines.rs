//! Deadlines on every call: a store or board call the database does not answer (a link cut
//! by [`Proxy`], a statement blocked on a lock) fails within the call timeout with a
//! transient error, the connection it was using is closed rather than pooled again, and calls
//! work again once the link heals. Halting an engine stops a call in progress.

use std::time::{Duration, Instant};

use baton_core::board::{Cancel, JobBoard, NewJob};
use baton_core::store::Store;
use baton_core::{Atom, ConductorId, Control, CreateOptions, Engine, Flow, RunOptions};
use baton_sql::{
    DeadlineExceeded, OpenOptions, PostgresJobBoard, PostgresOptions, PostgresStore, SqliteOptions,
    SqliteStore,
};
use baton_testkit::board::offer;
use baton_testkit::Proxy;
use sqlx::Connection;

use crate::support::{
    self, pg_connect, postgres_store_via, postgres_store_with, postgres_url, sqlite_url,
};

/// The call timeout of these tests.
const LIMIT: Duration = Duration::from_secs(1);

/// The most a call may take past its call timeout here: the timer's and the machine's
/// slack, generous for a loaded CI machine.
const SLACK: Duration = Duration::from_secs(2);

/// A store and a board on the test server, reached through a proxy, with a call timeout of
/// [`LIMIT`].
async fn through_proxy() -> Option<(Proxy, support::Held<PostgresStore>, PostgresJobBoard)> {
    let url = postgres_url()?;
    let proxy = Proxy::to_url(&url).await.unwrap();
    let store = postgres_store_via(
        &url,
        &proxy.url(&url),
        PostgresOptions::new().call_timeout(LIMIT),
    )
    .await?;
    let board = PostgresJobBoard::new(&store.store);
    Some((proxy, store, board))
}

/// Checks that a call cut off from its database answered as the deadline says: transient,
/// because the database did not answer in time (its own deadline, or the pool's wait for a
/// connection, which the call timeout bounds too), no sooner than the deadline and not
/// long after. Prints how long it took.
fn cut_off<E: std::error::Error + 'static>(call: &str, err: &E, transient: bool, took: Duration) {
    eprintln!("{call} on a cut link failed after {took:?} (call timeout {LIMIT:?}): {err}");
    assert!(transient, "{call}: {err:?}");
    let source = err.source().unwrap();
    assert!(
        source.downcast_ref::<DeadlineExceeded>().is_some()
            || matches!(
                source.downcast_ref::<sqlx::Error>(),
                Some(sqlx::Error::PoolTimedOut)
            ),
        "{call}: {err:?}"
    );
    assert!(
        took >= LIMIT.mul_f32(0.9) && took <= LIMIT + SLACK,
        "{call} took {took:?}"
    );
}

/// Times `call`.
async fn timed<T>(call: impl std::future::Future<Output = T>) -> (T, Duration) {
    let started = Instant::now();
    let answer = call.await;
    (answer, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_calls_on_a_cut_link_fail_within_the_deadline_and_work_once_healed() {
    let Some((proxy, store, board)) = through_proxy().await else {
        return;
    };
    let flow = crate::cases::new_flow(&store).await;
    let job = board.post(NewJob::new("cut", "steps")).await.unwrap();
    let owner = ConductorId::new();
    let lease = Duration::from_secs(60);
    let claim = board.claim(owner, lease, &offer()).await.unwrap().unwrap();
    assert_eq!(claim.job.id, job.id);

    proxy.cut();
    let (answer, took) = timed(store.load_flow(flow.id)).await;
    let err = answer.unwrap_err();
    cut_off("a store read", &err, err.is_transient(), took);
    let (answer, took) = timed(board.heartbeat(claim.fence, lease, false)).await;
    let err = answer.unwrap_err();
    cut_off("a heartbeat", &err, err.is_transient(), took);
    let (answer, took) = timed(board.request_cancel(job.id, Cancel::Revert)).await;
    let err = answer.unwrap_err();
    cut_off(
        "a cancel request (a transaction)",
        &err,
        err.is_transient(),
        took,
    );
    // Waits are not calls: a wait for work lasts its own timeout, no longer.
    let ((), took) = timed(board.wait_for_work(Duration::from_millis(300))).await;
    assert!(
        took >= Duration::from_millis(250) && took <= Duration::from_millis(300) + SLACK,
        "{took:?}"
    );
    // A wait for a job's end is a wait between two looks at the job: its own timeout, and a
    // call timeout for each look.
    let (answer, took) = timed(board.wait_for_end(job.id, Duration::from_millis(300))).await;
    let err = answer.unwrap_err();
    eprintln!("a wait for a job's end on a cut link failed after {took:?}: {err}");
    assert!(err.is_transient(), "{err:?}");
    assert!(
        took <= Duration::from_millis(300) + 2 * LIMIT + SLACK,
        "{took:?}"
    );

    let closed_before = proxy.closed_by_client();
    proxy.heal();
    // Each call abandoned on the cut link closed the connection it had (the proxy sees each
    // close once healed): none goes back to the pool to be lent again.
    let closed = crate::support::eventually(Duration::from_secs(10), || {
        proxy.closed_by_client() >= closed_before + 3
    })
    .await;
    assert!(
        closed,
        "the connections of the abandoned calls were not closed: {} closed",
        proxy.closed_by_client()
    );
    // And the calls work again, every one in time: no dead connection is lent.
    for _ in 0..10 {
        let (answer, took) = timed(async {
            store.load_flow(flow.id).await.unwrap();
            board.heartbeat(claim.fence, lease, false).await.unwrap();
            board.get(job.id).await.unwrap()
        })
        .await;
        assert_eq!(answer.id, job.id);
        assert!(took < LIMIT, "{took:?}");
    }
    let job = board.request_cancel(job.id, Cancel::Revert).await.unwrap();
    assert_eq!(job.cancel, Some(Cancel::Revert));
}

/// The server gives up on a statement its client abandoned: past the call timeout, no backend
/// of the store still waits for a lock (without `statement_timeout` it would wait for as long
/// as the lock is held, whatever the client did).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_the_server_gives_up_statements_past_the_call_timeout() {
    let Some(store) = postgres_store_with(PostgresOptions::new().call_timeout(LIMIT)).await else {
        return;
    };
    let support::Raw::Postgres { url, schema } = &store.raw else {
        unreachable!()
    };
    let board = PostgresJobBoard::new(&store.store);
    let job = board.post(NewJob::new("locked", "steps")).await.unwrap();
    let mut locker = pg_connect(url, Some(schema)).await;
    sqlx::raw_sql("BEGIN; LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE")
        .execute(&mut locker)
        .await
        .unwrap();

    let (answer, took) = timed(board.get(job.id)).await;
    let err = answer.unwrap_err();
    eprintln!("a read of a locked table failed after {took:?}: {err}");
    assert!(err.is_transient(), "{err:?}");
    assert!(took <= LIMIT + SLACK, "{took:?}");
    let waiting = format!(
        "SELECT count(*) FROM pg_locks WHERE relation = '{schema}.jobs'::regclass AND NOT granted"
    );
    let mut watcher = pg_connect(url, None).await;
    let mut gone = false;
    for _ in 0..100 {
        let n: i64 = sqlx::query_scalar(&waiting)
            .fetch_one(&mut watcher)
            .await
            .unwrap();
        if n == 0 {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert!(
        gone,
        "a backend still waits for the lock after the call was given up"
    );

    sqlx::raw_sql("ROLLBACK")
        .execute(&mut locker)
        .await
        .unwrap();
    assert_eq!(board.get(job.id).await.unwrap().id, job.id);
    locker.close().await.unwrap();
    watcher.close().await.unwrap();
}

/// Halting an engine stops a store call in progress: with a call timeout far longer than the
/// test, a commit on a cut link would otherwise hold the run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_halting_an_engine_stops_its_call_in_progress() {
    let Some(url) = postgres_url() else {
        return;
    };
    let proxy = Proxy::to_url(&url).await.unwrap();
    let Some(store) = postgres_store_via(
        &url,
        &proxy.url(&url),
        PostgresOptions::new().call_timeout(Duration::from_secs(600)),
    )
    .await
    else {
        return;
    };
    let flow = Flow::linear("halted mid-call")
        .add(Atom::from_fn("slow", |_| async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            Ok(serde_json::json!(1))
        }))
        .add(Atom::from_fn("next", |_| async {
            Ok(serde_json::json!(2))
        }))
        .compile()
        .unwrap();
    let engine = Engine::new(store.store.clone());
    let control = Control::new();
    let run = {
        let (engine, control) = (engine.clone(), control.clone());
        tokio::spawn(async move {
            engine
                .create_and_run(
                    &flow,
                    Default::default(),
                    CreateOptions::new(),
                    RunOptions::new().control(control),
                )
                .await
        })
    };
    // Cut while `slow` runs: its result's commit then waits for the link.
    tokio::time::sleep(Duration::from_millis(200)).await;
    proxy.cut();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(!run.is_finished(), "the run waits on the cut link");
    let (outcome, took) = timed(async {
        control.halt();
        run.await.unwrap()
    })
    .await;
    eprintln!("a run halted in a call on a cut link stopped after {took:?}");
    assert!(
        matches!(outcome, Err(baton_core::engine::Error::Halted(_))),
        "{outcome:?}"
    );
    assert!(took < Duration::from_secs(1), "{took:?}");
    proxy.heal();
}

/// A zero call timeout is refused before anything is opened or created.
#[tokio::test]
async fn a_zero_call_timeout_is_refused_naming_it() {
    let refused = |e: &baton_sql::Error| {
        matches!(
            e,
            baton_sql::Error::InvalidTimeout { option: "call_timeout", value, .. } if value.is_zero()
        )
    };
    let (dir, url) = sqlite_url();
    let err = SqliteStore::open_with(&url, SqliteOptions::new().call_timeout(Duration::ZERO))
        .await
        .unwrap_err();
    assert!(refused(&err), "{err:?}");
    let err = baton_sql::open_with(&url, OpenOptions::new().call_timeout(Duration::ZERO))
        .await
        .unwrap_err();
    assert!(refused(&err), "{err:?}");
    assert_eq!(
        err.to_string(),
        "call_timeout 0ns is not a usable timeout: give more than zero and at most 86400s"
    );
    assert!(
        std::fs::read_dir(dir.path()).unwrap().next().is_none(),
        "nothing is created"
    );
    let too_long = baton_sql::MAX_CALL_TIMEOUT + Duration::from_secs(1);
    let err = SqliteStore::open_with(&url, SqliteOptions::new().call_timeout(too_long))
        .await
        .unwrap_err();
    assert!(
        matches!(err, baton_sql::Error::InvalidTimeout { .. }),
        "{err:?}"
    );
    // PostgreSQL refuses it before connecting: no server is needed to tell.
    let err = PostgresStore::connect_with(
        "postgres://nobody@127.0.0.1:1/none",
        PostgresOptions::new().call_timeout(Duration::ZERO),
    )
    .await
    .unwrap_err();
    assert!(refused(&err), "{err:?}");
}

/// Opening a store takes the call timeout from the options, and its board the store's.
#[tokio::test]
async fn stores_and_boards_keep_their_call_timeout() {
    let (_dir, url) = sqlite_url();
    let limit = Duration::from_millis(1_500);
    let store = SqliteStore::open_with(&url, SqliteOptions::new().call_timeout(limit))
        .await
        .unwrap();
    assert_eq!(store.call_timeout(), limit);
    assert_eq!(baton_sql::SqliteJobBoard::new(&store).call_timeout(), limit);
    let default = SqliteStore::open(&url).await.unwrap();
    assert_eq!(default.call_timeout(), baton_sql::DEFAULT_CALL_TIMEOUT);
    let Some(url) = postgres_url() else {
        return;
    };
    let Some(pg) = postgres_store_via(&url, &url, PostgresOptions::new().call_timeout(limit)).await
    else {
        return;
    };
    assert_eq!(pg.call_timeout(), limit);
    assert_eq!(PostgresJobBoard::new(&pg.store).call_timeout(), limit);
    // Migrating again (on a connection without the server-side timeout) works.
    pg.migrate().await.unwrap();
}
