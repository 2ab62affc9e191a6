//! The SQL job boards against the job-board contract, and their conductor listings (how they
//! find dead owners' jobs: see `liveness`).

use std::time::{Duration, Instant};

use baton_core::board::{ConductorInfo, JobBoard, NewJob};
use baton_core::{ConductorId, JobState};
use baton_sql::{PostgresJobBoard, PostgresStore, SqliteJobBoard, SqliteStore};
use baton_testkit::board::offer;
use chrono::Utc;

use crate::support::{self, postgres_store, sqlite_store, Held, Raw};

async fn sqlite_pair() -> Option<(SqliteJobBoard, Held<SqliteStore>)> {
    let store = sqlite_store().await?;
    Some((SqliteJobBoard::new(&store.store), store))
}

pub(crate) async fn postgres_pair() -> Option<(PostgresJobBoard, Held<PostgresStore>)> {
    let store = postgres_store().await?;
    Some((PostgresJobBoard::new(&store.store), store))
}

mod sqlite {
    use super::sqlite_pair;

    baton_testkit::board_conformance!(optional: sqlite_pair().await);

    mod lifecycle {
        use super::sqlite_pair;

        baton_testkit::lifecycle_conformance!(optional: sqlite_pair().await);
    }

    mod cancel {
        use super::sqlite_pair;

        baton_testkit::cancel_conformance!(optional: sqlite_pair().await);
    }
}

mod postgres {
    use super::postgres_pair;

    baton_testkit::board_conformance!(optional: postgres_pair().await);

    mod lifecycle {
        use super::postgres_pair;

        baton_testkit::lifecycle_conformance!(optional: postgres_pair().await);
    }

    mod cancel {
        use super::postgres_pair;

        baton_testkit::cancel_conformance!(optional: postgres_pair().await);
    }
}

pub(crate) fn info(id: ConductorId) -> ConductorInfo {
    let now = Utc::now();
    ConductorInfo {
        id,
        name: "doomed".into(),
        host: "test".into(),
        pid: std::process::id(),
        started_at: now,
        last_seen: now,
        offer: offer(),
    }
}

/// The ids of the conductors `board` lists.
pub(crate) async fn listed_ids(board: &impl JobBoard) -> Vec<ConductorId> {
    board
        .conductors()
        .await
        .unwrap()
        .iter()
        .map(|c| c.id)
        .collect()
}

/// A conductor whose process died (its board, with the connection holding its liveness lock,
/// is dropped without deregistering) leaves the listing, and its row is deleted; a live one
/// stays, however long ago it last reported in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_dead_conductors_are_forgotten() {
    let Some((survivor, store)) = postgres_pair().await else {
        return;
    };
    let doomed_board = PostgresJobBoard::new(&store.store);
    let doomed = ConductorId::new();
    doomed_board.register(&info(doomed)).await.unwrap();
    let alive = ConductorId::new();
    let mut quiet = info(alive);
    quiet.last_seen = Utc::now() - chrono::Duration::hours(5);
    survivor.register(&quiet).await.unwrap();
    let listed = listed_ids(&survivor).await;
    assert!(listed.contains(&doomed) && listed.contains(&alive));

    drop(doomed_board);
    let died = Instant::now();
    loop {
        let listed = listed_ids(&survivor).await;
        assert!(listed.contains(&alive), "a live conductor was forgotten");
        if !listed.contains(&doomed) {
            break;
        }
        assert!(
            died.elapsed() < Duration::from_secs(10),
            "the dead conductor is still listed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        conductor_rows(&store.raw, doomed).await,
        0,
        "the dead conductor's row is still there"
    );
}

/// How many rows of `conductors` conductor `id` has (one while registered, none once forgotten).
pub(crate) async fn conductor_rows(raw: &Raw, id: ConductorId) -> i64 {
    raw.count(&format!(
        "SELECT count(*) FROM conductors WHERE id = '{id}'"
    ))
    .await
}

/// On SQLite (one host): a conductor registered under this host's name whose process is gone
/// and that has been quiet for 30 s is forgotten, and so is one unseen for longer than
/// `CONDUCTOR_UNSEEN_LIMIT`; a live one stays, and so does a recent one whose process this
/// process cannot see.
#[tokio::test]
async fn sqlite_dead_conductors_are_forgotten() {
    let Some((board, store)) = sqlite_pair().await else {
        return;
    };
    let here = baton_core::board::this_host();
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let gone_pid = child.id();
    child.wait().unwrap();

    let mut live = info(ConductorId::new());
    live.host = here.clone();
    let mut dead = info(ConductorId::new());
    dead.host = here.clone();
    dead.pid = gone_pid;
    dead.last_seen = Utc::now() - chrono::Duration::minutes(1);
    // Gone from this host but reported in a moment ago: maybe a process this one cannot see.
    let mut recent = info(ConductorId::new());
    recent.host = here.clone();
    recent.pid = gone_pid;
    let mut unseen = info(ConductorId::new());
    unseen.host = "a-container".into();
    unseen.last_seen = Utc::now()
        - chrono::Duration::from_std(baton_core::board::CONDUCTOR_UNSEEN_LIMIT).unwrap()
        - chrono::Duration::minutes(1);
    let mut elsewhere = info(ConductorId::new());
    elsewhere.host = "a-container".into();
    elsewhere.pid = gone_pid;
    for c in [&live, &dead, &recent, &unseen, &elsewhere] {
        board.register(c).await.unwrap();
    }

    let mut listed = listed_ids(&board).await;
    listed.sort();
    // Another host's process ids mean nothing here: only its silence counts. Without a process
    // table to read (not Linux), only silence counts at all.
    let mut expected = vec![live.id, recent.id, elsewhere.id];
    if !std::path::Path::new("/proc/self").exists() {
        expected.push(dead.id);
    }
    expected.sort();
    assert_eq!(listed, expected);
    let rows = store.raw.count("SELECT count(*) FROM conductors").await;
    assert_eq!(
        rows,
        i64::try_from(expected.len()).unwrap(),
        "the dead conductors' rows are still there"
    );
}

/// Claims jobs as wake-ups announce them, with a poll too long to matter, until `want` jobs
/// are claimed or `within` has passed; answers how many it claimed.
async fn claim_on_wake_ups(board: PostgresJobBoard, want: usize, within: Duration) -> usize {
    let owner = ConductorId::new();
    let started = Instant::now();
    let mut claimed = board
        .claim_up_to(owner, Duration::from_secs(60), want, &offer())
        .await
        .unwrap()
        .len();
    while claimed < want {
        let left = within.saturating_sub(started.elapsed());
        let woken = tokio::time::timeout(left, board.wait_for_work(Duration::from_secs(600)));
        if woken.await.is_err() {
            break;
        }
        claimed += board
            .claim_up_to(owner, Duration::from_secs(60), want - claimed, &offer())
            .await
            .unwrap()
            .len();
    }
    claimed
}

/// Polls `sql`, a query answering a count, until the count is above zero; fails naming
/// `what` after ten seconds.
pub(crate) async fn until_positive(conn: &mut sqlx::PgConnection, sql: &str, what: &str) {
    let started = Instant::now();
    loop {
        let n: i64 = sqlx::query_scalar(sql).fetch_one(&mut *conn).await.unwrap();
        if n > 0 {
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until a session of the test server listens for `store`'s job wake-ups.
pub(crate) async fn until_listening(store: &Held<PostgresStore>) {
    let Raw::Postgres { url, schema } = &store.raw else {
        unreachable!("a PostgreSQL store");
    };
    let mut conn = support::pg_connect(url, None).await;
    // The schema is a plain identifier (the tests make it), so it can be spliced in.
    let sql = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'LISTEN %' \
          AND query LIKE '%baton_jobs_{schema}%' AND state = 'idle'"
    );
    until_positive(&mut conn, &sql, "the waiter never listened").await;
}

/// Starts `waiter` claiming two jobs as wake-ups announce them, then posts a first job through
/// a board with `window` and waits until the waiter has claimed it (so it listens again).
/// Answers the waiter (how many it claimed), the posting board, and when the first job was
/// posted.
async fn first_job_claimed(
    waiter: PostgresJobBoard,
    store: &Held<PostgresStore>,
    window: Duration,
) -> (tokio::task::JoinHandle<usize>, PostgresJobBoard, Instant) {
    let idle = tokio::spawn(claim_on_wake_ups(waiter, 2, Duration::from_secs(10)));
    until_listening(store).await;
    let poster = PostgresJobBoard::new(&store.store).with_wake_window(window);
    let posted = Instant::now();
    let first = poster.post(NewJob::new("first", "noop")).await.unwrap();
    while poster.get(first.id).await.unwrap().state != JobState::Claimed {
        assert!(
            posted.elapsed() < Duration::from_secs(5),
            "the first post's own wake-up was not sent"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (idle, poster, posted)
}

/// Posts that come close together share a wake-up, sent when the window after the first one
/// ends: an idle conductor that only listens (its poll is ten minutes) gets the first job at
/// once (its post sent its own wake-up) and a job posted inside the window when the window
/// ends, not before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_posts_in_a_window_share_a_wake_up() {
    let Some((waiter, store)) = postgres_pair().await else {
        return;
    };
    let window = Duration::from_millis(600);
    let (idle, poster, posted) = first_job_claimed(waiter, &store, window).await;
    poster.post(NewJob::new("second", "noop")).await.unwrap();
    // Checked only while the window is open, so a slow machine cannot fail it falsely.
    tokio::time::sleep(window / 2).await;
    let finished = idle.is_finished();
    if posted.elapsed() < window {
        assert!(
            !finished,
            "the second job was announced before the window ended"
        );
    }
    assert_eq!(
        idle.await.unwrap(),
        2,
        "the job posted in the window was never announced"
    );
    assert!(posted.elapsed() >= window);
}

/// A board holding a wake-up back sends it on `flush_wake_ups`, at once: here the window
/// never ends, so without the flush the second job would never be announced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_flushing_sends_owed_wake_ups_at_once() {
    let Some((waiter, store)) = postgres_pair().await else {
        return;
    };
    let (idle, poster, _) = first_job_claimed(waiter, &store, Duration::MAX).await;
    poster.post(NewJob::new("second", "noop")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!idle.is_finished(), "a wake-up went out without a flush");
    poster.flush_wake_ups().await;
    assert_eq!(idle.await.unwrap(), 2, "the owed wake-up was not sent");
}

/// Closing the store while an operation still holds one of its connections waits for that
/// operation, and no longer: the connection it gives back afterwards goes to the (closing)
/// pool rather than being kept for a next operation that will never come.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_close_is_not_held_up_by_an_operation_racing_it() {
    let Some((board, store)) = postgres_pair().await else {
        return;
    };
    let Raw::Postgres { url, schema } = &store.raw else {
        unreachable!("a PostgreSQL store");
    };
    let mut locker = support::pg_connect(url, Some(schema)).await;
    sqlx::query("BEGIN").execute(&mut locker).await.unwrap();
    sqlx::query("LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE")
        .execute(&mut locker)
        .await
        .unwrap();
    let posting = tokio::spawn({
        let board = board.clone();
        async move { board.post(NewJob::new("late", "noop")).await }
    });
    let mut watcher = support::pg_connect(url, Some(schema)).await;
    until_positive(
        &mut watcher,
        "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = 'jobs'::regclass",
        "the post never waited for the lock",
    )
    .await;
    let closing = tokio::spawn({
        let store = store.store.clone();
        async move { store.close().await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!closing.is_finished(), "close did not wait for the post");
    sqlx::query("COMMIT").execute(&mut locker).await.unwrap();
    // The post had its connection before the close began, so it completes.
    posting.await.unwrap().unwrap();
    tokio::time::timeout(Duration::from_secs(10), closing)
        .await
        .expect("close hung on a connection given back after it began")
        .unwrap();
}

/// A board that has listened for wake-ups keeps its listening connection outside the store's
/// pool, so closing the store does not wait for the board to go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_close_is_not_held_up_by_a_listening_board() {
    let Some((board, store)) = postgres_pair().await else {
        return;
    };
    board.wait_for_work(Duration::from_millis(50)).await;
    until_listening(&store).await;
    tokio::time::timeout(Duration::from_secs(10), store.store.close())
        .await
        .expect("close waited for the board's listening connection");
    drop(board);
}

/// A claim made without a liveness lock (an owner that never registered) is held by its lease
/// alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_unregistered_owners_keep_their_lease() {
    let Some((board, _store)) = postgres_pair().await else {
        return;
    };
    board.post(NewJob::new("leased", "noop")).await.unwrap();
    let first = board
        .claim(ConductorId::new(), Duration::from_secs(60), &offer())
        .await
        .unwrap();
    assert!(first.is_some());
    assert!(board
        .claim(ConductorId::new(), Duration::from_secs(60), &offer())
        .await
        .unwrap()
        .is_none());
}

/// Three conductors with very frequent heartbeats (so heartbeats and flow commits interleave
/// constantly) run 12 jobs over a SQL board and store: each job completes, each step runs once.
async fn conductors_finish_every_job<S, B>(store: S, boards: Vec<B>)
where
    S: baton_core::store::Store + Clone + 'static,
    B: JobBoard + Clone + 'static,
{
    use baton_core::conductor::Options;
    use baton_core::{Atom, Blueprint, Conductor, Engine, Flow, JobState, Registry};
    use baton_testkit::{Action, Log, Probe};

    let log = Log::new();
    let registry = {
        let log = log.clone();
        Registry::new()
            .register("steps", 1, move |params: &serde_json::Value| {
                let job = params["job"].as_u64().ok_or("`job` is required")?;
                let mut flow = Flow::linear("steps");
                for i in 0..4 {
                    flow = flow.add(Atom::task(
                        format!("j{job}-s{i}"),
                        Probe::new(&log).delay(Duration::from_millis(3)),
                    ));
                }
                Ok(Blueprint::new(flow))
            })
            .unwrap()
    };
    let board = boards[0].clone();
    for job in 0..12 {
        board
            .post(
                NewJob::new(format!("job-{job}"), "steps")
                    .params(serde_json::json!({ "job": job })),
            )
            .await
            .unwrap();
    }
    let shutdown = tokio_util::sync::CancellationToken::new();
    let mut fleet = tokio::task::JoinSet::new();
    for b in &boards {
        let mut options = Options::default();
        options.heartbeat = Duration::from_millis(2);
        options.poll = Duration::from_millis(20);
        options.concurrency = 2;
        let conductor = Conductor::new(
            std::sync::Arc::new(b.clone()),
            Engine::new(store.clone()),
            registry.clone(),
        )
        .with_options(options)
        .unwrap();
        fleet.spawn(conductor.run(shutdown.clone()));
    }
    let started = Instant::now();
    loop {
        let done = board
            .list(&baton_core::board::JobQuery::all().state(JobState::Complete))
            .await
            .unwrap();
        if done.len() == 12 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "only {} jobs completed",
            done.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.cancel();
    let mut consumed = 0;
    while let Some(r) = fleet.join_next().await {
        let summary = r.unwrap().unwrap();
        // Heartbeats racing the last step (which consumes the job) must not count as lost.
        assert_eq!(summary.lost, 0, "{summary:?}");
        consumed += summary.consumed;
    }
    assert_eq!(consumed, 12);
    for job in board
        .list(&baton_core::board::JobQuery::all())
        .await
        .unwrap()
    {
        assert_eq!(job.outcome.unwrap()["state"], serde_json::json!("SUCCESS"));
    }
    let runs = log.successes(Action::Execute);
    assert_eq!(runs.len(), 48);
    assert!(runs.values().all(|&n| n == 1), "{runs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_conductors_finish_every_job() {
    let Some(store) = sqlite_store().await else {
        return;
    };
    let boards = (0..3).map(|_| SqliteJobBoard::new(&store.store)).collect();
    conductors_finish_every_job(store, boards).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_conductors_finish_every_job() {
    let Some(store) = postgres_store().await else {
        return;
    };
    let boards = (0..3)
        .map(|_| PostgresJobBoard::new(&store.store))
        .collect();
    conductors_finish_every_job(store, boards).await;
}

/// A conductor that meets a run written by a newer version of baton neither fails its job nor
/// hands it straight back: it leaves it claimed, without heartbeats, and the job goes to
/// whoever claims it once the lease has run out. The run is left as it was.
async fn runs_of_newer_versions_are_left_to_newer_conductors<S, B>(held: Held<S>, board: B)
where
    S: baton_core::store::Store + Clone + 'static,
    B: JobBoard + Clone + 'static,
{
    use baton_core::conductor::Options;
    use baton_core::{Atom, Blueprint, Conductor, CreateOptions, Engine, Flow, Registry};

    let registry = Registry::new()
        .register("one", 1, |_| {
            Ok(Blueprint::new(
                Flow::linear("one").add(Atom::from_fn("only", |_| async {
                    Ok(serde_json::json!(1))
                })),
            ))
        })
        .unwrap();
    let job = board
        .post(NewJob::new("from the future", "one"))
        .await
        .unwrap();
    let flow = Flow::linear("one")
        .add(Atom::from_fn("only", |_| async {
            Ok(serde_json::json!(1))
        }))
        .compile()
        .unwrap();
    Engine::new(held.store.clone())
        .create_with(
            &flow,
            Default::default(),
            CreateOptions::new().id(job.flow()),
        )
        .await
        .unwrap();
    held.raw
        .exec(&format!(
            "UPDATE flows SET model_version = 99 WHERE id = '{}'",
            job.flow()
        ))
        .await;

    let lease = Duration::from_millis(800);
    let mut options = Options::default();
    options.lease = lease;
    options.heartbeat = Duration::from_millis(100);
    options.poll = Duration::from_millis(20);
    let shutdown = tokio_util::sync::CancellationToken::new();
    let conductor = Conductor::new(
        std::sync::Arc::new(board.clone()),
        Engine::new(held.store.clone()),
        registry,
    )
    .with_options(options)
    .unwrap();
    let running = tokio::spawn(conductor.run(shutdown.clone()));
    let started = Instant::now();
    while board.get(job.id).await.unwrap().state == JobState::Unclaimed {
        assert!(started.elapsed() < Duration::from_secs(10), "never claimed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Well inside the lease: the conductor has given up on the job by now, and must not
    // claim it again while its lease runs.
    tokio::time::sleep(lease / 2).await;
    shutdown.cancel();
    let summary = running.await.unwrap().unwrap();
    assert_eq!(summary.left_for_newer, 1, "{summary:?}");
    assert_eq!(summary.consumed, 0, "{summary:?}");
    let left = board.get(job.id).await.unwrap();
    assert_eq!(left.state, JobState::Claimed);
    assert_eq!(left.outcome, None);
    assert_eq!(left.attempts, 1);
    let untouched = held
        .raw
        .count(&format!(
            "SELECT count(*) FROM flows WHERE id = '{}' AND model_version = 99 AND state = 'PENDING'",
            job.flow()
        ))
        .await;
    assert_eq!(untouched, 1, "the run was changed");
    // Once the lease has run out, another conductor claims it.
    tokio::time::sleep(lease).await;
    let next = board
        .claim(
            ConductorId::new(),
            Duration::from_secs(60),
            &baton_core::board::Offer::new().with("one", 1),
        )
        .await
        .unwrap();
    assert_eq!(next.map(|c| c.job.id), Some(job.id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_runs_of_newer_versions_are_left_to_newer_conductors() {
    let Some((board, held)) = sqlite_pair().await else {
        return;
    };
    runs_of_newer_versions_are_left_to_newer_conductors(held, board).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_runs_of_newer_versions_are_left_to_newer_conductors() {
    let Some((board, held)) = postgres_pair().await else {
        return;
    };
    runs_of_newer_versions_are_left_to_newer_conductors(held, board).await;
}

/// A schema may be as long as PostgreSQL's identifiers (63 bytes), which the channel of its
/// job wake-ups must fit too: there, posts wake idle conductors, and a keyed job's end, by the
/// board or by its flow's last step, lets the next job of its key run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_wake_ups_and_keyed_jobs_work_in_a_schema_of_63_characters() {
    use baton_core::{Atom, CreateOptions, Engine, Flow, FlowState, RunOptions};

    let Some(url) = support::postgres_url() else {
        return;
    };
    let schema = format!("{:x<63}", format!("{}_", support::fresh_schema()));
    assert_eq!(schema.len(), 63);
    let store =
        match PostgresStore::connect_with(&url, baton_sql::PostgresOptions::new().schema(&schema))
            .await
        {
            Ok(store) => store,
            Err(e) if e.is_transient() => {
                support::skip::<()>(&format!("PostgreSQL is unreachable: {e:?}"));
                return;
            }
            Err(e) => panic!("{e:?}"),
        };
    let poster = PostgresJobBoard::new(&store).with_wake_window(Duration::ZERO);

    // An idle conductor is woken by a post.
    let waiter = tokio::spawn(claim_on_wake_ups(
        PostgresJobBoard::new(&store),
        1,
        Duration::from_secs(20),
    ));
    let mut conn = support::pg_connect(&url, None).await;
    let sql = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'LISTEN %' \
          AND query LIKE '%{}%' AND state = 'idle'",
        &schema[..32]
    );
    until_positive(&mut conn, &sql, "the waiter never listened").await;
    poster.post(NewJob::new("woken", "noop")).await.unwrap();
    assert_eq!(waiter.await.unwrap(), 1, "the post woke nobody");

    // Keyed jobs: the second runs once the first ended, whichever way it ends.
    let owner = ConductorId::new();
    let lease = Duration::from_secs(60);
    let key = "stack-63";
    let jobs = [
        poster
            .post(NewJob::new("a", "noop").key(key))
            .await
            .unwrap(),
        poster
            .post(NewJob::new("b", "noop").key(key))
            .await
            .unwrap(),
        poster
            .post(NewJob::new("c", "noop").key(key))
            .await
            .unwrap(),
    ];
    let first = poster.claim(owner, lease, &offer()).await.unwrap().unwrap();
    assert_eq!(first.job.id, jobs[0].id);
    assert!(poster
        .claim(owner, lease, &offer())
        .await
        .unwrap()
        .is_none());
    poster
        .consume(first.fence, serde_json::json!("done"))
        .await
        .unwrap();
    let second = poster.claim(owner, lease, &offer()).await.unwrap().unwrap();
    assert_eq!(second.job.id, jobs[1].id);
    let flow = Flow::linear("keyed")
        .add(Atom::from_fn("a", |_| async { Ok(serde_json::json!(1)) }))
        .compile()
        .unwrap();
    let outcome = Engine::new(store.clone())
        .create_and_run(
            &flow,
            Default::default(),
            CreateOptions::new().id(jobs[1].flow()).fence(second.fence),
            RunOptions::new().fence(second.fence).consume_job(),
        )
        .await
        .unwrap();
    assert_eq!(outcome.state, FlowState::Success);
    assert!(outcome.job_consumed);
    let third = poster.claim(owner, lease, &offer()).await.unwrap().unwrap();
    assert_eq!(third.job.id, jobs[2].id);

    store.close().await;
    sqlx::Connection::close(conn).await.unwrap();
    crate::postgres::drop_schema(&url, &schema).await;
}

/// Registration waits for a conductor's liveness lock outside the board's other work: while
/// a board waits for a lock that another session holds (here: the same conductor registered
/// through another board), its claims go on, and the registration completes once the lock is
/// free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_claims_go_on_while_registration_waits_for_a_lock() {
    let Some((holder, store)) = postgres_pair().await else {
        return;
    };
    let board = PostgresJobBoard::new(&store.store);
    let conductor = info(ConductorId::new());
    holder.register(&conductor).await.unwrap();
    let posted = board.post(NewJob::new("meanwhile", "noop")).await.unwrap();

    let registering = tokio::spawn({
        let (board, conductor) = (board.clone(), conductor.clone());
        async move { board.register(&conductor).await }
    });
    // Let it reach the lock the holder has.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!registering.is_finished(), "the lock was not held");
    let claimed = tokio::time::timeout(
        Duration::from_secs(5),
        board.claim(ConductorId::new(), Duration::from_secs(60), &offer()),
    )
    .await
    .expect("a claim waited for a registration")
    .unwrap()
    .unwrap();
    assert_eq!(claimed.job.id, posted.id);

    // The holder lets go: the registration takes the lock and completes.
    holder.deregister(conductor.id).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), registering)
        .await
        .expect("the registration never took the freed lock")
        .unwrap()
        .unwrap();
    // (Refreshed once more: the holder's deregistration deletes the row after it lets go.)
    board.register(&conductor).await.unwrap();
    assert!(listed_ids(&board).await.contains(&conductor.id));
}

/// A batch that ends its run and its job, committed again (its answer was lost): the store
/// answers as if it had just stored it, and stores nothing twice; another batch under the same
/// claim is still refused.
async fn a_retried_last_step_is_answered_as_stored<B: JobBoard, S: baton_core::store::Store>(
    board: B,
    store: S,
) {
    use baton_core::model::{Batch, Write};
    use baton_core::{FlowState, Intention};
    use serde_json::json;

    let posted = board.post(NewJob::new("retried", "noop")).await.unwrap();
    let claim = board
        .claim(ConductorId::new(), Duration::from_secs(60), &offer())
        .await
        .unwrap()
        .unwrap();
    let run = baton_testkit::board::job_run(posted.id, "retried");
    store
        .create_flow(&run, &[], Some(claim.fence))
        .await
        .unwrap();
    let moved = |from, to| {
        let mut batch = Batch::new(run.id, Some(claim.fence));
        batch.writes.push(Write::Flow {
            from,
            to,
            intention: Intention::Execute,
        });
        batch
    };
    store
        .commit(&moved(FlowState::Pending, FlowState::Running))
        .await
        .unwrap();
    let mut last = moved(FlowState::Running, FlowState::Success);
    last.consume = Some(json!({"state": "SUCCESS"}));
    store.commit(&last).await.unwrap();
    store.commit(&last).await.unwrap();
    assert_eq!(store.history(run.id).await.unwrap().len(), 2);
    let done = board.get(posted.id).await.unwrap();
    assert_eq!(done.state, JobState::Complete);
    assert_eq!(done.outcome, last.consume);

    let mut other = last.clone();
    other.consume = Some(json!({"state": "OTHER"}));
    let err = store.commit(&other).await.unwrap_err();
    assert!(
        matches!(
            err,
            baton_core::store::Error::Fenced { .. } | baton_core::store::Error::Conflict { .. }
        ),
        "{err}"
    );
    assert_eq!(board.get(posted.id).await.unwrap().outcome, last.consume);
}

#[tokio::test]
async fn sqlite_a_retried_last_step_is_answered_as_stored() {
    if let Some((board, store)) = sqlite_pair().await {
        a_retried_last_step_is_answered_as_stored(board, store).await;
    }
}

#[tokio::test]
async fn postgres_a_retried_last_step_is_answered_as_stored() {
    if let Some((board, store)) = postgres_pair().await {
        a_retried_last_step_is_answered_as_stored(board, store).await;
    }
}
