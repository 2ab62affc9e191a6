//! The job-board scenarios: end-to-end job throughput, and takeover after SIGKILL.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use baton_core::board::{JobBoard, JobQuery, NewJob};
use baton_core::conductor::Options;
use baton_core::store::Store;
use baton_core::{
    Atom, Blueprint, Conductor, Engine, Flow, JobState, MemoryJobBoard, MemoryStore, Registry,
};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::{Backend, Target};

/// A store and a way to make job boards over it, and what to clean up. Each member of the
/// fleet (a conductor, the poster, the watcher) opens the database on its own, with its own
/// connections, as a separate process would: see [`Fleet::member`].
pub(crate) struct Fleet {
    pub(crate) store: Arc<dyn Store>,
    make_board: Box<dyn Fn() -> Arc<dyn JobBoard>>,
    backend: Backend,
    url: String,
    schema: Option<String>,
    target: Target,
    _dir: Option<tempfile::TempDir>,
}

impl Fleet {
    pub(crate) fn board(&self) -> Arc<dyn JobBoard> {
        (self.make_board)()
    }

    pub(crate) fn backend(&self) -> Backend {
        self.backend
    }

    /// The database's URL (`memory` on memory).
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// The PostgreSQL schema the fleet's tables are in.
    pub(crate) fn schema(&self) -> Option<&str> {
        self.schema.as_deref()
    }

    /// A store and a board of the fleet's database on connections of their own (on memory,
    /// the shared ones: there is nothing to connect to).
    pub(crate) async fn member(&self) -> Result<(Arc<dyn Store>, Arc<dyn JobBoard>)> {
        Ok(match self.backend {
            Backend::Memory => (self.store.clone(), self.board()),
            Backend::Sqlite if self.target.one_store => (self.store.clone(), self.board()),
            Backend::Sqlite => {
                let store =
                    baton_sql::SqliteStore::open_with(&self.url, self.target.sqlite_options())
                        .await?;
                let board = baton_sql::SqliteJobBoard::new(&store);
                (Arc::new(store), Arc::new(board))
            }
            Backend::Postgres => {
                let mut options =
                    baton_sql::PostgresOptions::new().step_format(self.target.step_format());
                if let Some(schema) = &self.schema {
                    options = options.schema(schema);
                }
                let store = baton_sql::PostgresStore::connect_with(&self.url, options).await?;
                let board = self.target.postgres_board(&store);
                (Arc::new(store), Arc::new(board))
            }
        })
    }

    pub(crate) async fn open(target: &Target) -> Result<Self> {
        match target.backend {
            Backend::Memory => {
                let store = MemoryStore::new();
                let board = MemoryJobBoard::new(&store);
                Ok(Self {
                    store: Arc::new(store),
                    make_board: Box::new(move || Arc::new(board.clone())),
                    backend: Backend::Memory,
                    url: "memory".into(),
                    schema: None,
                    target: target.clone(),
                    _dir: None,
                })
            }
            Backend::Sqlite => {
                let (url, dir) = crate::sqlite_url(target)?;
                let store =
                    baton_sql::SqliteStore::open_with(&url, target.sqlite_options()).await?;
                let for_boards = store.clone();
                Ok(Self {
                    store: Arc::new(store),
                    make_board: Box::new(move || {
                        Arc::new(baton_sql::SqliteJobBoard::new(&for_boards))
                    }),
                    backend: Backend::Sqlite,
                    url,
                    schema: None,
                    target: target.clone(),
                    _dir: dir,
                })
            }
            Backend::Postgres => {
                let url = crate::postgres_url(target);
                let schema = format!("bench_{}", uuid::Uuid::now_v7().simple());
                let store =
                    baton_sql::PostgresStore::connect_with(&url, target.postgres_options(&schema))
                        .await
                        .with_context(|| format!("connecting to {url}"))?;
                let for_boards = store.clone();
                let for_windows = target.clone();
                Ok(Self {
                    store: Arc::new(store),
                    make_board: Box::new(move || Arc::new(for_windows.postgres_board(&for_boards))),
                    backend: Backend::Postgres,
                    url,
                    schema: Some(schema),
                    target: target.clone(),
                    _dir: None,
                })
            }
        }
    }

    pub(crate) async fn clean_up(&self) -> Result<()> {
        if let Some(schema) = &self.schema {
            let pool = sqlx::PgPool::connect(&self.url).await?;
            sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
                .execute(&pool)
                .await?;
        }
        Ok(())
    }
}

/// Flows for the job scenarios: `one` is a single no-op task; `slow-first` sleeps a long time
/// on its first attempt only (so its owner can be killed mid-step) and is quick when re-run.
pub(crate) fn registry() -> Registry {
    Registry::new()
        .register("one", 1, |_| {
            Ok(Blueprint::new(
                Flow::linear("one").add(Atom::from_fn("task", |_| async { Ok(Value::Null) })),
            ))
        })
        .and_then(|r| {
            r.register("slow-first", 1, |_| {
                Ok(Blueprint::new(Flow::linear("slow-first").add(
                    Atom::from_fn("step", |ctx| async move {
                        if ctx.attempt() == 1 {
                            tokio::time::sleep(Duration::from_secs(600)).await;
                        }
                        Ok(json!("done"))
                    }),
                )))
            })
        })
        .unwrap_or_else(|e| panic!("the bench's registry: {e}"))
}

async fn conductor(
    fleet: &Fleet,
    name: String,
    poll: Duration,
    concurrency: usize,
) -> Result<Conductor> {
    let (store, board) = fleet.member().await?;
    let mut options = Options::default();
    options.name = name;
    options.concurrency = concurrency;
    options.poll = poll;
    Conductor::new(board, Engine::from_arc(store), registry())
        .with_options(options)
        .context("invalid conductor options")
}

/// The shape of a `jobs` or `backlog` run.
#[derive(Clone, Copy)]
pub(crate) struct Load {
    pub(crate) jobs: usize,
    pub(crate) conductors: usize,
    pub(crate) concurrency: usize,
    pub(crate) posters: usize,
    pub(crate) warmup: usize,
}

/// Posts jobs `0..count` named `{prefix}-{i}`, spread over the `posters`, each posting its
/// share one after the other. Returns the ids of the jobs posted.
async fn post_all(
    posters: &[Arc<dyn JobBoard>],
    prefix: &str,
    count: usize,
) -> Result<Vec<baton_core::JobId>> {
    let mut posting = tokio::task::JoinSet::new();
    for (p, poster) in posters.iter().enumerate() {
        let (poster, prefix, every) = (poster.clone(), prefix.to_owned(), posters.len());
        posting.spawn(async move {
            let mut ids = Vec::new();
            for i in (p..count).step_by(every) {
                let job = poster
                    .post(NewJob::new(format!("{prefix}-{i}"), "one"))
                    .await?;
                ids.push(job.id);
            }
            poster.flush_wake_ups().await;
            anyhow::Ok(ids)
        });
    }
    let mut ids = Vec::with_capacity(count);
    while let Some(posted) = posting.join_next().await {
        ids.extend(posted??);
    }
    Ok(ids)
}

/// Runs `count` one-task jobs with `conductors` conductors (started first, stopped after),
/// posted by one client; returns the jobs a second and the jobs' ids in posting order, each
/// checked complete with its flow's success.
pub(crate) async fn timed_jobs(
    fleet: &Fleet,
    count: usize,
    conductors: usize,
) -> Result<(f64, Vec<baton_core::JobId>)> {
    let shutdown = CancellationToken::new();
    let mut running = tokio::task::JoinSet::new();
    for i in 0..conductors.max(1) {
        running.spawn(
            conductor(
                fleet,
                format!("history-{i}"),
                Duration::from_millis(50),
                Options::default().concurrency,
            )
            .await?
            .run(shutdown.clone()),
        );
    }
    let poster = vec![fleet.member().await?.1];
    let (_, watcher) = fleet.member().await?;
    // A warm-up, untimed: connections, statements, caches.
    let warming = Instant::now();
    post_all(&poster, "history-warmup", 20).await?;
    wait_until_done(watcher.as_ref(), warming, Duration::from_secs(600)).await?;
    let start = Instant::now();
    let ids = post_all(&poster, "history", count).await?;
    wait_until_done(watcher.as_ref(), start, Duration::from_secs(600)).await?;
    let secs = start.elapsed().as_secs_f64();
    shutdown.cancel();
    while let Some(r) = running.join_next().await {
        r??;
    }
    for id in &ids {
        let job = watcher.get(*id).await?;
        anyhow::ensure!(
            job.state == JobState::Complete
                && job.outcome.as_ref().and_then(|o| o.get("state")) == Some(&json!("SUCCESS")),
            "job {id} ended {} with {:?}",
            job.state,
            job.outcome
        );
    }
    Ok((count as f64 / secs, ids))
}

/// Waits until no job is left unclaimed or claimed (two cheap look-ups along the claim
/// indexes), looking every 2 ms; fails after `limit`.
async fn wait_until_done(watcher: &dyn JobBoard, start: Instant, limit: Duration) -> Result<()> {
    loop {
        let unclaimed = watcher
            .list(&JobQuery::all().state(JobState::Unclaimed).limit(1))
            .await?;
        let claimed = watcher
            .list(&JobQuery::all().state(JobState::Claimed).limit(1))
            .await?;
        if unclaimed.is_empty() && claimed.is_empty() {
            return Ok(());
        }
        anyhow::ensure!(
            start.elapsed() < limit,
            "the jobs did not complete in {limit:?}"
        );
        // It starts after the last post, when little is left to do: a short sleep keeps the
        // end from being seen late (by up to the sleep, which a 20 ms sleep made 2 to 3 % of a
        // 1000-job run), and costs the server a few cheap reads.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// `jobs`: P posters post N one-task jobs between them while K conductors run them; time
/// until all are complete. A warm-up of W jobs, run to the end first, is not timed.
pub(crate) async fn jobs(target: &Target, load: Load) -> Result<()> {
    let Load {
        jobs,
        conductors,
        concurrency,
        posters,
        warmup,
    } = load;
    let posters = posters.max(1);
    let fleet = Fleet::open(target).await?;
    let shutdown = CancellationToken::new();
    let mut running = tokio::task::JoinSet::new();
    for i in 0..conductors.max(1) {
        running.spawn(
            conductor(
                &fleet,
                format!("bench-{i}"),
                Duration::from_millis(50),
                concurrency,
            )
            .await?
            .run(shutdown.clone()),
        );
    }
    // Each poster is a client of its own (its own connections), as the services posting
    // jobs to a fleet would be; between them they post jobs 0..N.
    let mut clients = Vec::with_capacity(posters);
    for _ in 0..posters {
        clients.push(fleet.member().await?.1);
    }
    let (_, watcher) = fleet.member().await?;
    if warmup > 0 {
        let warming = Instant::now();
        post_all(&clients, "warmup", warmup).await?;
        wait_until_done(watcher.as_ref(), warming, Duration::from_secs(600)).await?;
    }
    let start = Instant::now();
    post_all(&clients, "job", jobs).await?;
    let posted_after = start.elapsed();
    wait_until_done(watcher.as_ref(), start, Duration::from_secs(600)).await?;
    let secs = start.elapsed().as_secs_f64();
    let complete = watcher
        .list(&JobQuery::all().state(JobState::Complete))
        .await?;
    let done = complete.len();
    anyhow::ensure!(
        done == jobs + warmup,
        "{done} of {} jobs completed ({warmup} of them warm-up)",
        jobs + warmup
    );
    // Completed means the flow succeeded: a job consumed with an error outcome is no result.
    let failed = complete
        .iter()
        .filter(|j| j.outcome.as_ref().and_then(|o| o.get("state")) != Some(&json!("SUCCESS")))
        .count();
    anyhow::ensure!(
        failed == 0,
        "{failed} of {} jobs ended without their flow succeeding",
        jobs + warmup
    );
    shutdown.cancel();
    let mut consumed = 0;
    while let Some(r) = running.join_next().await {
        consumed += r??.consumed;
    }
    fleet.clean_up().await?;
    println!(
        "{}",
        json!({
            "scenario": "jobs",
            "backend": target.backend.name(),
            "jobs": jobs,
            "conductors": conductors,
            "concurrency": concurrency,
            "posters": posters,
            "warmup_jobs": warmup,
            // The window the PostgreSQL boards used (none on the other backends).
            "pg_wake_window_ms": matches!(target.backend, Backend::Postgres).then(|| {
                target.pg_wake_window_ms.unwrap_or_else(|| {
                    u64::try_from(baton_sql::DEFAULT_WAKE_WINDOW.as_millis()).unwrap_or(u64::MAX)
                })
            }),
            "seconds": secs,
            "jobs_per_sec": jobs as f64 / secs,
            "posted_after_secs": posted_after.as_secs_f64(),
            "consumed": consumed,
        })
    );
    Ok(())
}

/// What the clock of `backlog` watches: whether any job is still waiting or claimed. Asked of
/// the database directly, along the claim indexes, where there is one (the board's listing by
/// state may read past every job that ended), else of the board; every 2 ms.
enum Probe {
    Board(Arc<dyn JobBoard>),
    Postgres(sqlx::PgConnection),
    Sqlite(sqlx::SqliteConnection),
}

impl Probe {
    async fn open(fleet: &Fleet) -> Result<Self> {
        use sqlx::Connection;
        Ok(match fleet.backend {
            Backend::Memory => Probe::Board(fleet.board()),
            Backend::Sqlite => Probe::Sqlite(sqlx::SqliteConnection::connect(&fleet.url).await?),
            Backend::Postgres => {
                let mut conn = sqlx::PgConnection::connect(&fleet.url).await?;
                if let Some(schema) = &fleet.schema {
                    sqlx::query(&format!("SET search_path TO {schema}"))
                        .execute(&mut conn)
                        .await?;
                }
                Probe::Postgres(conn)
            }
        })
    }

    async fn busy(&mut self) -> Result<bool> {
        Ok(match self {
            Probe::Board(board) => {
                let open = JobQuery::all().limit(1);
                !board
                    .list(&open.clone().state(JobState::Unclaimed))
                    .await?
                    .is_empty()
                    || !board.list(&open.state(JobState::Claimed)).await?.is_empty()
            }
            Probe::Postgres(conn) => {
                sqlx::query_scalar(
                    "SELECT EXISTS (SELECT 1 FROM jobs WHERE state = 'UNCLAIMED') \
                         OR EXISTS (SELECT 1 FROM jobs WHERE state = 'CLAIMED')",
                )
                .fetch_one(conn)
                .await?
            }
            Probe::Sqlite(conn) => {
                sqlx::query_scalar(
                    "SELECT EXISTS (SELECT 1 FROM jobs INDEXED BY jobs_open \
                                     WHERE state IN ('UNCLAIMED', 'CLAIMED'))",
                )
                .fetch_one(conn)
                .await?
            }
        })
    }

    /// How many jobs the board holds, how many of them are in `state`, and how many of those
    /// ended with their flow succeeded (a board's listing of every job is one call, which on
    /// SQLite may outlast the call timeout for hundreds of thousands of jobs: counted in the
    /// database where there is one).
    async fn tally(&mut self, state: JobState) -> Result<(i64, i64, i64)> {
        let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        Ok(match self {
            Probe::Board(board) => {
                let all = board.list(&JobQuery::all()).await?;
                let in_state: Vec<_> = all.iter().filter(|j| j.state == state).collect();
                let succeeded = in_state
                    .iter()
                    .filter(|j| {
                        j.outcome.as_ref().and_then(|o| o.get("state")) == Some(&json!("SUCCESS"))
                    })
                    .count();
                (count(all.len()), count(in_state.len()), count(succeeded))
            }
            Probe::Postgres(conn) => {
                sqlx::query_as(
                    "SELECT count(*), count(*) FILTER (WHERE state = $1), \
                            count(*) FILTER (WHERE state = $1 AND outcome ->> 'state' = 'SUCCESS') \
                       FROM jobs",
                )
                .bind(state.as_str())
                .fetch_one(conn)
                .await?
            }
            Probe::Sqlite(conn) => {
                sqlx::query_as(
                    "SELECT count(*), coalesce(sum(state = ?1), 0), \
                            coalesce(sum(state = ?1 AND outcome ->> '$.state' = 'SUCCESS'), 0) \
                       FROM jobs",
                )
                .bind(state.as_str())
                .fetch_one(conn)
                .await?
            }
        })
    }

    /// Waits until no job is left waiting or claimed; fails after `limit`.
    async fn wait_until_done(&mut self, start: Instant, limit: Duration) -> Result<()> {
        while self.busy().await? {
            anyhow::ensure!(
                start.elapsed() < limit,
                "the jobs did not complete in {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Ok(())
    }
}

/// One drain of `backlog`: in a new database, P posters post `jobs` one-task jobs with no
/// conductor running; then K conductors (connected beforehand) start, and the clock runs until
/// no job is left unclaimed or claimed. Checks that every posted job, and nothing else, ended
/// COMPLETE with its flow succeeded. Answers the seconds the posts and the drain took, and
/// what the conductors say they consumed.
async fn drain(target: &Target, load: &Load) -> Result<(f64, f64, u64)> {
    let fleet = Fleet::open(target).await?;
    let mut clients = Vec::with_capacity(load.posters.max(1));
    for _ in 0..load.posters.max(1) {
        clients.push(fleet.member().await?.1);
    }
    let posting = Instant::now();
    post_all(&clients, "job", load.jobs).await?;
    let post_secs = posting.elapsed().as_secs_f64();
    drop(clients);
    let mut probe = Probe::open(&fleet).await?;
    let posted = i64::try_from(load.jobs).unwrap_or(i64::MAX);
    let (all, waiting, _) = probe.tally(JobState::Unclaimed).await?;
    anyhow::ensure!(
        (all, waiting) == (posted, posted),
        "{waiting} of {all} jobs on the board wait before the drain, {posted} were posted"
    );
    let mut fleet_members = Vec::with_capacity(load.conductors.max(1));
    for i in 0..load.conductors.max(1) {
        fleet_members.push(
            conductor(
                &fleet,
                format!("bench-{i}"),
                Duration::from_millis(50),
                load.concurrency,
            )
            .await?,
        );
    }
    let shutdown = CancellationToken::new();
    let mut running = tokio::task::JoinSet::new();
    let start = Instant::now();
    for c in fleet_members {
        running.spawn(c.run(shutdown.clone()));
    }
    // At least 10 jobs a second, and never less than 10 minutes.
    let limit = Duration::from_secs(600.max(u64::try_from(load.jobs / 10).unwrap_or(u64::MAX)));
    let drained = probe.wait_until_done(start, limit).await;
    if let Err(e) = drained {
        shutdown.cancel();
        fleet.clean_up().await?;
        return Err(e);
    }
    let secs = start.elapsed().as_secs_f64();
    shutdown.cancel();
    let mut consumed = 0;
    while let Some(r) = running.join_next().await {
        consumed += r??.consumed;
    }
    let (all, complete, succeeded) = probe.tally(JobState::Complete).await?;
    anyhow::ensure!(
        (all, complete) == (posted, posted),
        "{complete} of {all} jobs on the board are complete, {posted} were posted"
    );
    anyhow::ensure!(
        succeeded == posted,
        "{} of {posted} jobs ended without their flow succeeding",
        posted - succeeded
    );
    fleet.clean_up().await?;
    Ok((post_secs, secs, consumed))
}

/// `backlog`: drains a shallow backlog, a deep one and the shallow one again (`sizes`:
/// shallow, deep), each in a new database, and reports the rates and the ratio of the deep
/// one's to the mean of the two shallow ones' (the machine's speed drifts over minutes; a
/// shallow drain on each side of the deep one puts both under the same drift).
pub(crate) async fn backlog(target: &Target, sizes: [usize; 2], load: Load) -> Result<()> {
    let mut figures = Vec::with_capacity(3);
    for jobs in [sizes[0], sizes[1], sizes[0]] {
        anyhow::ensure!(jobs > 0, "a backlog needs at least one job");
        let (posted, secs, consumed) = drain(target, &Load { jobs, ..load }).await?;
        anyhow::ensure!(
            usize::try_from(consumed).ok() == Some(jobs),
            "the conductors consumed {consumed} jobs of {jobs}"
        );
        figures.push((jobs, posted, secs));
    }
    let rate = |(jobs, _, secs): (usize, f64, f64)| jobs as f64 / secs;
    let (before, deep, after) = (figures[0], figures[1], figures[2]);
    let small_rate = (rate(before) + rate(after)) / 2.0;
    println!(
        "{}",
        json!({
            "scenario": "backlog",
            "backend": target.backend.name(),
            "conductors": load.conductors,
            "concurrency": load.concurrency,
            "posters": load.posters,
            "small_jobs": before.0,
            "small_drain_secs": [before.2, after.2],
            "small_jobs_per_sec": [rate(before), rate(after)],
            "jobs": deep.0,
            "post_secs": deep.1,
            "drain_secs": deep.2,
            "jobs_per_sec": rate(deep),
            "ratio": rate(deep) / small_rate,
        })
    );
    Ok(())
}

/// `takeover`: a child process runs a conductor that claims a job and is SIGKILLed in the
/// middle of its step; a conductor here takes the job over. Measures how long after the kill
/// the job was claimed again and completed.
pub(crate) async fn takeover(target: &Target) -> Result<()> {
    let fleet = Fleet::open(target).await?;
    let board = fleet.board();
    let job = board.post(NewJob::new("takeover", "slow-first")).await?;

    let exe = std::env::current_exe()?;
    let mut child = std::process::Command::new(exe);
    child.args(["takeover-child", "--db", &fleet.url]);
    if let Some(schema) = &fleet.schema {
        child.args(["--schema", schema]);
    }
    if fleet.target.step_format() == baton_sql::StepFormat::Long {
        child.arg("--long-steps");
    }
    let mut child = child.spawn().context("starting the child conductor")?;

    // Wait until the child owns the job and its step is running.
    let started = Instant::now();
    let first = loop {
        let j = board.get(job.id).await?;
        if j.state == JobState::Claimed {
            if let Ok(snap) = fleet.store.load_flow(j.flow()).await {
                if snap
                    .atoms
                    .iter()
                    .any(|a| a.state == baton_core::AtomState::Running)
                {
                    break j;
                }
            }
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(60),
            "the child never started the job"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };

    // A second conductor, idle, ready to take over.
    let shutdown = CancellationToken::new();
    let mut running = tokio::task::JoinSet::new();
    running.spawn(
        conductor(
            &fleet,
            "survivor".into(),
            Options::default().poll,
            Options::default().concurrency,
        )
        .await?
        .run(shutdown.clone()),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;

    child.kill()?; // SIGKILL
    let killed = Instant::now();
    child.wait()?;
    let mut claimed_after = None;
    let completed_after = loop {
        let j = board.get(job.id).await?;
        if claimed_after.is_none() && j.token > first.token {
            claimed_after = Some(killed.elapsed());
        }
        if j.state == JobState::Complete {
            break killed.elapsed();
        }
        anyhow::ensure!(
            killed.elapsed() < Duration::from_secs(120),
            "the job was never taken over"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    shutdown.cancel();
    while let Some(r) = running.join_next().await {
        r??;
    }
    fleet.clean_up().await?;
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{}",
        json!({
            "scenario": "takeover",
            "backend": target.backend.name(),
            "lease_ms": Options::default().lease.as_millis(),
            "poll_ms": Options::default().poll.as_millis(),
            "claimed_after_ms": claimed_after.map(ms),
            "completed_after_ms": ms(completed_after),
        })
    );
    Ok(())
}

/// The child of `takeover`: a conductor with default settings (but the step format), until
/// killed.
pub(crate) async fn takeover_child(
    db: &str,
    schema: Option<&str>,
    format: baton_sql::StepFormat,
) -> Result<()> {
    let (store, board): (Arc<dyn Store>, Arc<dyn JobBoard>) =
        match (baton_sql::Backend::of_url(db)?, schema) {
            (baton_sql::Backend::Postgres, Some(schema)) => {
                let options = baton_sql::PostgresOptions::new()
                    .schema(schema)
                    .step_format(format);
                let store = baton_sql::PostgresStore::connect_with(db, options).await?;
                let board = baton_sql::PostgresJobBoard::new(&store);
                (Arc::new(store), Arc::new(board))
            }
            (baton_sql::Backend::Sqlite, _) => {
                let options = baton_sql::SqliteOptions::new().step_format(format);
                let store = baton_sql::SqliteStore::open_with(db, options).await?;
                let board = baton_sql::SqliteJobBoard::new(&store);
                (Arc::new(store), Arc::new(board))
            }
            _ => {
                let b = baton_sql::open(db).await?;
                (b.store, b.board)
            }
        };
    let conductor = Conductor::new(board, Engine::from_arc(store), registry());
    conductor.run(CancellationToken::new()).await?;
    Ok(())
}
