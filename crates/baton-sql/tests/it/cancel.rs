//! PostgreSQL's cancel requests and superseding posts beyond the job-board contract: a request
//! reaches the owner's board through the server at once, whichever of the board's waiters holds
//! its one listening connection, and a superseding post sees the posts of its key in flight.

use std::time::{Duration, Instant};

use baton_core::board::{Cancel, JobBoard, NewJob};
use baton_core::ConductorId;
use baton_sql::PostgresJobBoard;
use baton_testkit::board::offer;

use crate::board::{postgres_pair, until_listening, until_positive};
use crate::support::{self, Raw};

const LEASE: Duration = Duration::from_secs(60);
const LONG: Duration = Duration::from_secs(30);

/// Waits, on a task of its own, for a cancel request for `owner` on `board`; answers how long
/// it waited.
fn wait_for_cancel(
    board: &PostgresJobBoard,
    owner: ConductorId,
) -> tokio::task::JoinHandle<Duration> {
    let board = board.clone();
    tokio::spawn(async move {
        let start = Instant::now();
        board.wait_for_cancel(owner, LONG).await;
        start.elapsed()
    })
}

/// Waits, on a task of its own, for work on `board`; answers how long it waited.
fn wait_for_work(board: &PostgresJobBoard) -> tokio::task::JoinHandle<Duration> {
    let board = board.clone();
    tokio::spawn(async move {
        let start = Instant::now();
        board.wait_for_work(LONG).await;
        start.elapsed()
    })
}

/// A request made through another board instance reaches the owner's waiting board through a
/// `NOTIFY`, well under a second after it was made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_cancel_request_reaches_the_owners_board_at_once() {
    let Some((owners, store)) = postgres_pair().await else {
        return;
    };
    let operators = PostgresJobBoard::new(&store.store);
    let posted = operators.post(NewJob::new("long", "noop")).await.unwrap();
    let owner = ConductorId::new();
    owners.claim(owner, LEASE, &offer()).await.unwrap().unwrap();
    let waiter = wait_for_cancel(&owners, owner);
    until_listening(&store).await;
    let asked = Instant::now();
    operators
        .request_cancel(posted.id, Cancel::Suspend)
        .await
        .unwrap();
    waiter.await.unwrap();
    let latency = asked.elapsed();
    eprintln!("the owner's board heard the request {latency:?} after it was made");
    assert!(
        latency < Duration::from_secs(1),
        "the request took {latency:?} to reach the owner"
    );
    assert_eq!(
        owners.cancel_requests(owner).await.unwrap(),
        [(posted.id, Cancel::Suspend)]
    );
}

/// One connection serves a board's waiters for work and for cancel requests: whichever holds
/// it passes on what the other waits for, and nobody wakes for news that is not theirs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_one_listener_serves_waiters_for_work_and_for_cancels() {
    let Some((owners, store)) = postgres_pair().await else {
        return;
    };
    // Every post sends its own wake-up at once: none comes late to wake a waiter falsely.
    let operators = PostgresJobBoard::new(&store.store).with_wake_window(Duration::ZERO);
    let first = operators.post(NewJob::new("first", "noop")).await.unwrap();
    let second = operators.post(NewJob::new("second", "noop")).await.unwrap();
    let owner = ConductorId::new();
    let claims = owners.claim_up_to(owner, LEASE, 2, &offer()).await.unwrap();
    assert_eq!(claims.len(), 2);

    // The waiter for work listens; the waiter for cancels hears through it.
    let work = wait_for_work(&owners);
    until_listening(&store).await;
    let cancel = wait_for_cancel(&owners, owner);
    tokio::time::sleep(Duration::from_millis(100)).await;
    operators
        .request_cancel(first.id, Cancel::Revert)
        .await
        .unwrap();
    assert!(cancel.await.unwrap() < Duration::from_secs(5));
    assert!(
        !work.is_finished(),
        "a cancel request woke the wait for work"
    );
    operators.post(NewJob::new("more", "noop")).await.unwrap();
    assert!(work.await.unwrap() < Duration::from_secs(5));

    // The other way round: the waiter for cancels listens (nobody else was), the waiter for
    // work hears through it.
    let cancel = wait_for_cancel(&owners, owner);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let work = wait_for_work(&owners);
    tokio::time::sleep(Duration::from_millis(100)).await;
    operators
        .post(NewJob::new("yet more", "noop"))
        .await
        .unwrap();
    assert!(work.await.unwrap() < Duration::from_secs(5));
    assert!(!cancel.is_finished(), "a post woke the wait for cancels");
    operators
        .request_cancel(second.id, Cancel::Revert)
        .await
        .unwrap();
    assert!(cancel.await.unwrap() < Duration::from_secs(5));
}

/// A claim drops the wake-ups for work that reached the board while nobody waited, but not a
/// cancel request that came with them: the owner's next wait for cancels returns at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_claim_keeps_the_cancel_requests_it_finds() {
    let Some((owners, store)) = postgres_pair().await else {
        return;
    };
    let operators = PostgresJobBoard::new(&store.store);
    let posted = operators
        .post(NewJob::new("running", "noop"))
        .await
        .unwrap();
    let owner = ConductorId::new();
    owners.claim(owner, LEASE, &offer()).await.unwrap().unwrap();
    // The board listens, then nobody waits.
    let work = wait_for_work(&owners);
    until_listening(&store).await;
    operators.post(NewJob::new("wake", "noop")).await.unwrap();
    work.await.unwrap();
    operators
        .request_cancel(posted.id, Cancel::Revert)
        .await
        .unwrap();
    operators.post(NewJob::new("more", "noop")).await.unwrap();
    operators.flush_wake_ups().await;
    // Both wake-ups have reached the connection by the time the claim reads what arrived.
    tokio::time::sleep(Duration::from_millis(300)).await;
    owners.claim_up_to(owner, LEASE, 2, &offer()).await.unwrap();
    let started = Instant::now();
    owners.wait_for_cancel(owner, LONG).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the claim dropped the cancel request's wake-up"
    );
}

/// A superseding post waits for a post of its key still in flight (here a transaction that
/// took the key's lock, as a post does, and inserted a job of the key), and then supersedes
/// that job too: no job posted before it escapes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_superseding_post_sees_the_posts_of_its_key_in_flight() {
    let Some((board, store)) = postgres_pair().await else {
        return;
    };
    let Raw::Postgres { url, schema } = &store.raw else {
        unreachable!("a PostgreSQL store");
    };
    let mut in_flight = support::pg_connect(url, Some(schema)).await;
    sqlx::query("BEGIN").execute(&mut in_flight).await.unwrap();
    // The lock a post of the key takes (`KEY_LOCK` in the board: "keys"), then its row.
    sqlx::query("SELECT pg_advisory_xact_lock(1801812339, hashtext('stack'))")
        .execute(&mut in_flight)
        .await
        .unwrap();
    let racing = baton_core::JobId::new();
    sqlx::query(
        "INSERT INTO jobs (id, name, factory, params, job_key, priority, state, token, attempts, \
                           created_at, updated_at) \
         VALUES ($1, 'racing', 'noop', '{}', 'stack', 0, 'UNCLAIMED', 0, 0, now(), now())",
    )
    .bind(racing.as_uuid())
    .execute(&mut in_flight)
    .await
    .unwrap();
    let superseding = tokio::spawn({
        let board = board.clone();
        async move {
            board
                .post(NewJob::new("update", "noop").key("stack").supersede())
                .await
        }
    });
    let mut watcher = support::pg_connect(url, Some(schema)).await;
    until_positive(
        &mut watcher,
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted",
        "the superseding post never waited for the post in flight",
    )
    .await;
    sqlx::query("COMMIT").execute(&mut in_flight).await.unwrap();
    let new = superseding.await.unwrap().unwrap();
    assert_eq!(new.supersedes, [racing]);
    assert_eq!(
        board.get(racing).await.unwrap().cancel,
        Some(Cancel::Revert)
    );
}
