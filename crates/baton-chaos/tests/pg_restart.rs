//! PostgreSQL is restarted under running work:
//!
//! - under a running flow: the engine waits, retries and finishes, and nothing is lost or done
//!   twice;
//! - under three `baton conductor` processes running 30 jobs: no job changes hands (every
//!   conductor's liveness lock is gone for a moment, and the boards' restart grace keeps that
//!   from passing for their deaths).
//!
//! This restarts a PostgreSQL cluster of this machine: `BATON_TEST_PG_CLUSTER` names it
//! (`<version>/<name>`, or `<name>` alone; default `main`), and `BATON_TEST_POSTGRES_URL` is its
//! URL. So it lives in its own test binary (cargo runs test binaries one after another), its
//! tests take turns (one restart at a time), and each ends once the server has been up for
//! longer than the restart grace, so that tests run after it find dead owners at once, as
//! usual. It needs the right to run `pg_ctlcluster` (CI runs as root). Outside CI it is skipped
//! when the server or the cluster is not available.

// Test helpers panic on purpose: that is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs::OpenOptions;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use baton_cli::demo::{registry, SideEffects};
use baton_core::board::{JobBoard, JobQuery, NewJob};
use baton_core::{AtomState, Engine, FlowState, JobState};
use baton_sql::{PostgresJobBoard, PostgresOptions, PostgresStore};
use serde_json::json;

/// One restart at a time: the tests of this binary run on threads of their own.
static RESTARTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The PostgreSQL cluster the tests restart.
struct Cluster {
    version: String,
    name: String,
    url: String,
}

/// The cluster named by `BATON_TEST_PG_CLUSTER` (default `main`) at `BATON_TEST_POSTGRES_URL`,
/// or `None` (the test is skipped) if there is none; under `CI=true` a missing one fails the
/// test.
fn cluster() -> Option<Cluster> {
    let ci = std::env::var("CI").as_deref() == Ok("true");
    let spec = std::env::var("BATON_TEST_PG_CLUSTER").unwrap_or_else(|_| "main".into());
    let (version, name) = match spec.split_once('/') {
        Some((version, name)) => (Some(version.to_owned()), name.to_owned()),
        None => (None, spec),
    };
    // Without a version: the one whose configuration has a cluster of that name.
    let version = version.or_else(|| {
        std::fs::read_dir("/etc/postgresql")
            .ok()?
            .filter_map(Result::ok)
            .find(|v| v.path().join(&name).is_dir())
            .map(|v| v.file_name().to_string_lossy().into_owned())
    });
    match (std::env::var("BATON_TEST_POSTGRES_URL"), version) {
        (Ok(url), Some(version)) => Some(Cluster { version, name, url }),
        _ => {
            assert!(
                !ci,
                "CI=true needs BATON_TEST_POSTGRES_URL and a local PostgreSQL cluster {name:?}"
            );
            eprintln!(
                "skipped: no BATON_TEST_POSTGRES_URL or no local cluster {name:?} to restart"
            );
            None
        }
    }
}

impl Cluster {
    /// Restarts the server (a fast shutdown, then a start); how long that took.
    fn restart(&self) -> Duration {
        let started = Instant::now();
        let status = Command::new("pg_ctlcluster")
            .args([
                "--skip-systemctl-redirect",
                &self.version,
                &self.name,
                "restart",
            ])
            .status()
            .expect("pg_ctlcluster runs");
        assert!(status.success(), "restarting PostgreSQL failed");
        let took = started.elapsed();
        eprintln!(
            "PostgreSQL {}/{} restarted in {took:?}",
            self.version, self.name
        );
        took
    }

    /// Waits until the server has been up for longer than the boards' restart grace, so that
    /// whatever runs next finds dead owners at once.
    async fn settle(&self) {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&self.url).await.unwrap();
        let left: f64 = sqlx::query_scalar(
            "SELECT extract(epoch FROM pg_postmaster_start_time() - clock_timestamp())::float8",
        )
        .fetch_one(&mut conn)
        .await
        .unwrap();
        conn.close().await.unwrap();
        let left = left + baton_sql::DEFAULT_RESTART_GRACE.as_secs_f64() + 0.1;
        if left > 0.0 {
            tokio::time::sleep(Duration::from_secs_f64(left)).await;
        }
    }

    /// Drops `schema` (a passed test's; a failed test leaves its data to look at).
    async fn drop_schema(&self, schema: &str) {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&self.url).await.unwrap();
        sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flow_rides_out_a_postgres_restart() {
    let _turn = RESTARTS.lock().await;
    let ci = std::env::var("CI").as_deref() == Ok("true");
    let Some(cluster) = cluster() else {
        return;
    };
    let schema = format!("restart_{}", uuid::Uuid::now_v7().simple());
    let store = match baton_chaos::open(&cluster.url, Some(&schema)).await {
        Ok(s) => s,
        Err(e) if !ci => {
            eprintln!("skipped: PostgreSQL unreachable: {e}");
            return;
        }
        Err(e) => panic!("PostgreSQL unreachable (CI=true): {e}"),
    };

    let effects = SideEffects::memory();
    let (flow, inputs) = registry(effects.clone())
        .expect("the demo registry")
        .build_newest("steps", &json!({ "steps": 300, "step_ms": 10 }))
        .unwrap();
    let engine = Engine::from_arc(store.clone());
    let id = engine.create(&flow, inputs).await.unwrap();
    let run = tokio::spawn({
        let engine = engine.clone();
        let flow = flow.clone();
        async move { engine.run(&flow, id).await }
    });

    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(!run.is_finished(), "the flow ended before the restart");
    cluster.restart();

    let outcome = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the flow finished after the restart")
        .unwrap()
        .expect("the engine rode out the restart");
    assert_eq!(outcome.state, FlowState::Success);

    let snap = store.load_flow(id).await.unwrap();
    assert!(snap.atoms.iter().all(|a| a.state == AtomState::Success));
    let mut creates: BTreeMap<String, usize> = BTreeMap::new();
    for e in effects.recorded().into_iter().filter(|e| e.is_call()) {
        assert_eq!(e.action, "create", "nothing is deleted: {e:?}");
        *creates.entry(e.atom).or_default() += 1;
    }
    assert_eq!(creates.len(), 300);
    // The engine never died: no step had to run twice.
    assert!(creates.values().all(|&n| n == 1), "{creates:?}");

    cluster.drop_schema(&schema).await;
    cluster.settle().await;
}

/// A `baton conductor` process, killed if it is still running when dropped (a failed test
/// leaves none behind).
struct Conductor(Child);

impl Drop for Conductor {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

impl Conductor {
    /// `baton conductor --demo` named `name` on `schema` at `url`, with a 30 s lease and a
    /// heartbeat every 9 s (the default poll), up to twelve jobs at once, its side effects
    /// appended to `effects`, and its output and log to `<name>.out` and `<name>.log` beside
    /// them.
    ///
    /// The long heartbeat (within the default restart grace, 15 s) widens the window after a
    /// restart in which live conductors have not taken their locks again, so that without the
    /// grace their jobs would change hands in every run: a conductor looking for work finds
    /// the server again within a few seconds (its pool's reconnection backoff), while a
    /// conductor with a 2 s heartbeat has often taken its lock again by then.
    fn start(url: &str, schema: &str, name: &str, effects: &Path) -> Self {
        let file = |ext: &str| {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(effects.with_file_name(format!("{name}.{ext}")))
                .unwrap()
        };
        let child = Command::new(env!("CARGO_BIN_EXE_baton-chaos-cli"))
            .args(["--db", url, "--schema", schema, "conductor", "--demo"])
            .args(["--name", name, "--concurrency", "12"])
            .args(["--lease-ms", "30000", "--heartbeat-ms", "9000", "--effects"])
            .arg(effects)
            .env_remove("BATON_DATABASE_URL")
            .env_remove("BATON_SCHEMA")
            .env_remove("RUST_LOG")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(file("out"))
            .stderr(file("log"))
            .spawn()
            .expect("the conductor starts");
        Self(child)
    }

    /// Stops it as an operator would (SIGTERM), killing it if it is still there after 30 s.
    fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while matches!(self.0.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Every conductor log beside `effects`, for the message of a failed test.
fn logs(effects: &Path) -> String {
    let Some(dir) = effects.parent() else {
        return String::new();
    };
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.retain(|p| p.extension().is_some_and(|e| e == "log"));
    files.sort();
    files
        .iter()
        .map(|p| {
            let text = std::fs::read_to_string(p).unwrap_or_default();
            format!("--- {}\n{text}", p.display())
        })
        .collect()
}

/// How many of the board's jobs are in `state`; `None` while the server does not answer.
async fn count(board: &PostgresJobBoard, state: JobState) -> Option<usize> {
    board
        .list(&JobQuery::all().state(state))
        .await
        .ok()
        .map(|jobs| jobs.len())
}

/// Three conductors, started 3 s apart, run 30 jobs of 40 steps of 250 ms, all at once; the
/// server is restarted a second after the last was claimed, with most of them running. Each conductor has room for more, so it looks for work
/// (and for dead owners) every poll, right after the restart too. No job changes hands: each
/// is claimed once (one attempt, token 1), every side effect of its run comes from one
/// process, each step ran once, and every job ends `COMPLETE` with its run `SUCCESS`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_moves_no_job_between_conductors() {
    const JOBS: usize = 30;
    const STEPS: usize = 40;
    let _turn = RESTARTS.lock().await;
    let ci = std::env::var("CI").as_deref() == Ok("true");
    let Some(cluster) = cluster() else {
        return;
    };
    let schema = format!("restart_{}", uuid::Uuid::now_v7().simple());
    let store = match PostgresStore::connect_with(
        &cluster.url,
        PostgresOptions::new().schema(schema.clone()),
    )
    .await
    {
        Ok(s) => s,
        Err(e) if !ci => {
            eprintln!("skipped: PostgreSQL unreachable: {e}");
            return;
        }
        Err(e) => panic!("PostgreSQL unreachable (CI=true): {e}"),
    };
    let board = PostgresJobBoard::new(&store);
    for i in 0..JOBS {
        board
            .post(
                NewJob::new(format!("steps-{i}"), "steps")
                    .params(json!({ "steps": STEPS, "step_ms": 250 })),
            )
            .await
            .unwrap();
    }
    board.flush_wake_ups().await;

    let dir = tempfile::tempdir().unwrap();
    let effects = dir.path().join("effects.jsonl");
    // Started 3 s apart, as a fleet's conductors are, each heartbeats (and so takes its lock
    // again after the restart) at its own moment.
    let mut fleet = Vec::new();
    for i in 0..3 {
        if i > 0 {
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        fleet.push(Conductor::start(
            &cluster.url,
            &schema,
            &format!("c{i}"),
            &effects,
        ));
    }

    // Every job claimed, and a second into its run.
    let started = Instant::now();
    while count(&board, JobState::Unclaimed).await != Some(0) {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the conductors never claimed all the jobs\n{}",
            logs(&effects)
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let running = count(&board, JobState::Claimed).await.unwrap_or(0);
    // Jobs take 10 s or more: those of the last two conductors at least are running.
    assert!(
        running >= 12,
        "only {running} jobs were running at the restart"
    );
    cluster.restart();

    let restarted = Instant::now();
    while count(&board, JobState::Complete).await != Some(JOBS) {
        assert!(
            restarted.elapsed() < Duration::from_secs(180),
            "the jobs did not all complete after the restart\n{}",
            logs(&effects)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "{running} jobs running at the restart; all {JOBS} complete {:?} after it",
        restarted.elapsed()
    );
    for c in fleet {
        c.stop();
    }

    let recorded = SideEffects::read_file(&effects).unwrap();
    let mut pids: BTreeMap<String, BTreeSet<u32>> = BTreeMap::new();
    let mut creates: BTreeMap<(String, String), usize> = BTreeMap::new();
    for e in &recorded {
        pids.entry(e.flow.clone()).or_default().insert(e.pid);
        if e.action == "create" {
            *creates.entry((e.flow.clone(), e.atom.clone())).or_default() += 1;
        }
    }
    let jobs = board.list(&JobQuery::all()).await.unwrap();
    assert_eq!(jobs.len(), JOBS);
    for job in &jobs {
        let what = format!("{} ({})", job.name, job.id);
        assert_eq!(job.state, JobState::Complete, "{what}");
        assert_eq!(job.attempts, 1, "{what} was claimed more than once");
        assert_eq!(job.token.0, 1, "{what} was claimed more than once");
        assert_eq!(
            job.outcome.as_ref().unwrap()["state"],
            json!("SUCCESS"),
            "{what}"
        );
        let flow = job.flow().to_string();
        let by = pids.get(&flow).cloned().unwrap_or_default();
        assert_eq!(by.len(), 1, "{what} ran in processes {by:?}");
        let snap = baton_core::store::Store::load_flow(&store, job.flow())
            .await
            .unwrap();
        assert_eq!(snap.flow.state, FlowState::Success, "{what}");
        assert_eq!(snap.atoms.len(), STEPS, "{what}");
        for a in &snap.atoms {
            assert_eq!(a.state, AtomState::Success, "{} of {what}", a.name);
            assert_eq!(a.attempt, 1, "{} of {what} ran again", a.name);
            assert_eq!(
                creates.get(&(flow.clone(), a.name.clone())),
                Some(&1),
                "{} of {what}",
                a.name
            );
        }
    }
    let owners: BTreeSet<u32> = pids.values().flatten().copied().collect();
    eprintln!(
        "{JOBS} jobs, each claimed once, ran in {} conductor processes",
        owners.len()
    );

    store.close().await;
    cluster.drop_schema(&schema).await;
    cluster.settle().await;
}
