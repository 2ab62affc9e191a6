//! How the SQL boards find dead owners at once: a lock file per conductor on SQLite, a session
//! advisory lock on PostgreSQL; and the restart grace that keeps a PostgreSQL restart from
//! moving jobs.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use baton_core::board::{Claim, JobBoard, NewJob};
use baton_core::{ConductorId, JobId};
use baton_sql::{PostgresJobBoard, SqliteJobBoard, SqliteStore};
use baton_testkit::board::offer;

use crate::board::{conductor_rows, info, listed_ids, postgres_pair};
use crate::support::{sqlite_store, Raw};

/// Claims (as a new claimant each time, every 5 ms) until a job comes or `limit` passes.
async fn claim_within(board: &impl JobBoard, limit: Duration) -> Option<Claim> {
    let started = Instant::now();
    loop {
        let claim = board
            .claim(ConductorId::new(), Duration::from_secs(60), &offer())
            .await
            .unwrap();
        if claim.is_some() || started.elapsed() >= limit {
            return claim;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The next claim through `board` takes job `posted`, claimed at `claimed_at` for `lease`, only
/// once that lease ran out: its owner's death went unnoticed.
async fn taken_only_after_the_lease(
    board: &impl JobBoard,
    posted: JobId,
    claimed_at: Instant,
    lease: Duration,
) {
    let taken = claim_within(board, Duration::from_secs(10)).await.unwrap();
    assert_eq!(taken.job.id, posted);
    assert!(
        claimed_at.elapsed() >= lease,
        "taken {:?} after the claim, before its lease ended",
        claimed_at.elapsed()
    );
}

/// A job posted through `survivor` and claimed for `lease` by a new conductor registered
/// through `owners_board`: the claim, when it was made, and the owner.
async fn claimed_by_a_registered_owner<B: JobBoard>(
    survivor: &B,
    owners_board: &B,
    lease: Duration,
) -> (Claim, Instant, ConductorId) {
    let owner = ConductorId::new();
    owners_board.register(&info(owner)).await.unwrap();
    let posted = survivor.post(NewJob::new("orphan", "noop")).await.unwrap();
    let claimed_at = Instant::now();
    let claim = owners_board
        .claim(owner, lease, &offer())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(claim.job.id, posted.id);
    (claim, claimed_at, owner)
}

/// A conductor registered through `doomed_board` claims a job with a long lease; while it
/// lives, `survivor` claims nothing however often it looks (each look probes the owner's
/// lock); once its process dies (here: its board, holding its lock, is dropped), the job is
/// claimable at once, long before its lease would run out.
async fn jobs_of_a_dead_owner_are_claimable_at_once<B: JobBoard>(survivor: B, doomed_board: B) {
    let (claim, _, _) =
        claimed_by_a_registered_owner(&survivor, &doomed_board, Duration::from_secs(600)).await;

    // While the owner lives, its claim holds: several looks for dead owners (one per 100 ms).
    assert!(
        claim_within(&survivor, Duration::from_millis(350))
            .await
            .is_none(),
        "a live owner's job was taken"
    );

    drop(doomed_board);
    let died = Instant::now();
    let taken = claim_within(&survivor, Duration::from_secs(10))
        .await
        .expect("the dead owner's job was never freed");
    assert_eq!(taken.job.id, claim.job.id);
    assert!(taken.fence.token > claim.fence.token);
    eprintln!("claimable {:?} after the owner died", died.elapsed());
    assert!(died.elapsed() < Duration::from_secs(5));
}

/// A second store on the SQLite file of `url`: what another process would open (its own
/// connections, its own boards).
async fn second_store(raw: &Raw) -> SqliteStore {
    let Raw::Sqlite { url } = raw else {
        unreachable!("a SQLite store")
    };
    SqliteStore::open(url).await.unwrap()
}

/// The folder of lock files beside the SQLite database of `raw`.
fn lock_folder(raw: &Raw) -> PathBuf {
    let Raw::Sqlite { url } = raw else {
        unreachable!("a SQLite store")
    };
    let file = Path::new(url.trim_start_matches("sqlite://"));
    let file = std::fs::canonicalize(file).unwrap();
    PathBuf::from(format!("{}-conductors", file.display()))
}

fn lock_files(folder: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(folder)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_jobs_of_a_dead_owner_are_claimable_at_once() {
    let store = sqlite_store().await.unwrap();
    // The owner's board is on a store of its own, as in another process (the kernel's file
    // locks refuse each other between two open files of one process too).
    let theirs = second_store(&store.raw).await;
    jobs_of_a_dead_owner_are_claimable_at_once(
        SqliteJobBoard::new(&store.store),
        SqliteJobBoard::new(&theirs),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_jobs_of_a_dead_owner_are_claimable_at_once() {
    let Some((survivor, store)) = postgres_pair().await else {
        return;
    };
    jobs_of_a_dead_owner_are_claimable_at_once(survivor, PostgresJobBoard::new(&store.store)).await;
}

/// An owner with no lock file (a conductor of an earlier release in a rolling upgrade, which
/// never makes one; here, a claimant that never registered) is not taken for dead: its job
/// waits for its lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_an_owner_without_a_lock_file_keeps_its_job_until_its_lease_ends() {
    let store = sqlite_store().await.unwrap();
    let board = SqliteJobBoard::new(&store.store);
    let posted = board.post(NewJob::new("old", "noop")).await.unwrap();
    let lease = Duration::from_millis(1500);
    let claimed_at = Instant::now();
    board
        .claim(ConductorId::new(), lease, &offer())
        .await
        .unwrap()
        .unwrap();
    taken_only_after_the_lease(&board, posted.id, claimed_at, lease).await;
}

/// An in-memory database has no file to put locks beside: its dead owners' jobs wait for
/// their leases.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_in_memory_dead_owners_wait_for_their_leases() {
    let store = SqliteStore::open("sqlite::memory:").await.unwrap();
    let survivor = SqliteJobBoard::new(&store);
    let doomed_board = SqliteJobBoard::new(&store);
    let lease = Duration::from_millis(800);
    let (claim, claimed_at, _) =
        claimed_by_a_registered_owner(&survivor, &doomed_board, lease).await;
    drop(doomed_board);
    taken_only_after_the_lease(&survivor, claim.job.id, claimed_at, lease).await;
}

/// Lock files do not pile up: a conductor that deregisters with no claimed job deletes its
/// own; one that leaves a claimed job behind lets its lock go, its job is freed at once, and
/// the claim that frees it deletes the file; a dead conductor's file goes with the first
/// claim after its death, and its row with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_lock_files_are_cleaned_up() {
    let store = sqlite_store().await.unwrap();
    let folder = lock_folder(&store.raw);
    let board = SqliteJobBoard::new(&store.store);

    let tidy = ConductorId::new();
    board.register(&info(tidy)).await.unwrap();
    assert_eq!(lock_files(&folder), vec![format!("{tidy}.lock")]);
    board.deregister(tidy).await.unwrap();
    assert!(lock_files(&folder).is_empty(), "{:?}", lock_files(&folder));

    let leaver = ConductorId::new();
    board.register(&info(leaver)).await.unwrap();
    let posted = board.post(NewJob::new("left", "noop")).await.unwrap();
    board
        .claim(leaver, Duration::from_secs(600), &offer())
        .await
        .unwrap()
        .unwrap();
    board.deregister(leaver).await.unwrap();
    assert_eq!(lock_files(&folder), vec![format!("{leaver}.lock")]);
    let left = Instant::now();
    let taken = claim_within(&board, Duration::from_secs(5)).await.unwrap();
    assert_eq!(taken.job.id, posted.id);
    assert!(left.elapsed() < Duration::from_secs(2));
    assert!(lock_files(&folder).is_empty(), "{:?}", lock_files(&folder));

    let theirs = second_store(&store.raw).await;
    let doomed_board = SqliteJobBoard::new(&theirs);
    let doomed = ConductorId::new();
    doomed_board.register(&info(doomed)).await.unwrap();
    drop(doomed_board);
    // A claim that finds nothing still forgets the dead (wait out the last look's 100 ms).
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert!(board
        .claim(ConductorId::new(), Duration::from_secs(60), &offer())
        .await
        .unwrap()
        .is_none());
    assert!(lock_files(&folder).is_empty(), "{:?}", lock_files(&folder));
    assert_eq!(
        conductor_rows(&store.raw, doomed).await,
        0,
        "the dead conductor's row is still there"
    );
}

/// The listing drops a conductor whose lock is free at once (no 30 s of silence needed), and
/// keeps one whose lock is held by another board of the same process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_conductors_whose_locks_are_free_are_forgotten_at_once() {
    let store = sqlite_store().await.unwrap();
    let board = SqliteJobBoard::new(&store.store);
    let theirs = second_store(&store.raw).await;
    let (alive_board, doomed_board) = (SqliteJobBoard::new(&theirs), SqliteJobBoard::new(&theirs));
    let (alive, doomed) = (ConductorId::new(), ConductorId::new());
    alive_board.register(&info(alive)).await.unwrap();
    doomed_board.register(&info(doomed)).await.unwrap();
    let mut listed = listed_ids(&board).await;
    listed.sort();
    let mut both = vec![alive, doomed];
    both.sort();
    assert_eq!(listed, both);

    drop(doomed_board);
    assert_eq!(listed_ids(&board).await, vec![alive]);
}

/// Within the restart grace (the server started less than it ago: here a grace longer than
/// any server has been up), a free lock is not an owner's death: its job waits for its lease,
/// and the listing keeps the conductor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_within_the_restart_grace_a_free_lock_waits_for_the_lease() {
    let Some((survivor, store)) = postgres_pair().await else {
        return;
    };
    let survivor = survivor.with_restart_grace(Duration::from_secs(100 * 365 * 24 * 3600));
    let doomed_board = PostgresJobBoard::new(&store.store);
    let lease = Duration::from_millis(1500);
    let (claim, claimed_at, doomed) =
        claimed_by_a_registered_owner(&survivor, &doomed_board, lease).await;
    drop(doomed_board);
    // The lock goes once the server notices the closed connection: give it time.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        listed_ids(&survivor).await.contains(&doomed),
        "a conductor was forgotten within the grace"
    );
    taken_only_after_the_lease(&survivor, claim.job.id, claimed_at, lease).await;
}

/// A board whose own conductor lost its lock (its session was dropped: here terminated, as a
/// crash of another backend or a failover would, with no restart for the server's start time
/// to show) trusts no free lock until it took its own again and the grace passed since.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_board_that_lost_its_own_lock_waits_for_the_grace() {
    use sqlx::Connection;
    let Some((survivor, store)) = postgres_pair().await else {
        return;
    };
    let Raw::Postgres { url, schema } = &store.raw else {
        unreachable!("a PostgreSQL store")
    };
    let grace = Duration::from_millis(1500);
    let survivor = survivor.with_restart_grace(grace);
    let me = ConductorId::new();
    survivor.register(&info(me)).await.unwrap();
    // A job of its own records its lock's key: how the test finds its session.
    let own = survivor.post(NewJob::new("own", "noop")).await.unwrap();
    survivor
        .claim(me, Duration::from_secs(600), &offer())
        .await
        .unwrap()
        .unwrap();

    let doomed_board = PostgresJobBoard::new(&store.store);
    let doomed = ConductorId::new();
    doomed_board.register(&info(doomed)).await.unwrap();
    let posted = survivor.post(NewJob::new("orphan", "noop")).await.unwrap();
    doomed_board
        .claim(doomed, Duration::from_secs(600), &offer())
        .await
        .unwrap()
        .unwrap();

    // The survivor's own session goes, then the owner dies.
    let mut admin = sqlx::PgConnection::connect(url).await.unwrap();
    let ended: Vec<bool> = sqlx::query_scalar(&format!(
        "SELECT pg_terminate_backend(l.pid) FROM pg_locks l \
          WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 \
            AND ((l.classid::bigint << 32) | l.objid::bigint) = \
                (SELECT owner_lock FROM {schema}.jobs WHERE id = $1)"
    ))
    .bind(own.id.as_uuid())
    .fetch_all(&mut admin)
    .await
    .unwrap();
    assert_eq!(
        ended,
        vec![true],
        "the board's liveness session was not found"
    );
    admin.close().await.unwrap();
    drop(doomed_board);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Not knowing yet that its lock is gone, its claims see it gone and trust no free lock.
    let mine_claims = |board: PostgresJobBoard, limit: Duration| async move {
        let started = Instant::now();
        loop {
            if let Some(c) = board
                .claim(me, Duration::from_secs(60), &offer())
                .await
                .unwrap()
            {
                return Some(c);
            }
            if started.elapsed() >= limit {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    assert!(mine_claims(survivor.clone(), Duration::from_millis(400))
        .await
        .is_none());
    // It takes its lock again (its heartbeat), and waits the grace before trusting others'.
    // The instant before the call: the lock is taken again inside it, and the grace is
    // counted from then (after the call returns would count the call's own time twice).
    let retaken = Instant::now();
    survivor.register(&info(me)).await.unwrap();
    let taken = mine_claims(survivor.clone(), Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(taken.job.id, posted.id);
    let waited = retaken.elapsed();
    assert!(
        waited >= grace,
        "taken {waited:?} after the lock was taken again"
    );
    assert!(
        waited < grace + Duration::from_secs(2),
        "taken only after {waited:?}"
    );
}
