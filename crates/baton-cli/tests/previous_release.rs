//! Databases written by the previous release, 0.3.0, opened by this build, on SQLite and on
//! PostgreSQL. The fixtures in `tests/fixtures/0.3.0/` were written by the 0.3.0 binary
//! (`tests/fixtures/make-0.3.0.sh`; the README there says what they hold and how to make them
//! again), with what 0.3.0 itself read back from them and the side effects its providers made.
//!
//! This build's migrations move them forward; every job, run and history reads back as 0.3.0
//! read it; purging takes what ended and nothing else; and a conductor of this build
//! takes over the jobs 0.3.0's killed conductor held (its lease long expired) and finishes
//! every run it left unfinished, on the definition the run was started with, running no step
//! again that had succeeded.
//!
//! The tests read the databases through the CLI and the library only, never through baton's
//! tables, so they keep holding whatever the schema becomes; the one table they look at is
//! sqlx's record of applied migrations.

// Test helpers panic on purpose: that is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use baton_cli::demo::SideEffects;
use baton_core::model::FactoryRef;
use baton_core::{FlowId, FlowState};
use serde_json::Value;
use sqlx::Connection;
use support::fleet::{check_steps, creates};
use support::{command, run, stderr, stdout, PgDb};

/// The release that wrote the fixtures.
const RELEASE: &str = "0.3.0";

/// The fixture `file` of [`RELEASE`].
fn fixture(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(RELEASE)
        .join(file)
}

/// The database backends, as the fixtures name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// A copy, for one test, of the database [`RELEASE`] wrote, with what that release read from
/// it.
struct Previous {
    backend: Backend,
    url: String,
    /// `jobs`, `flows` (each as `flows show --json` printed it) and `conductors`, as the
    /// previous release listed them.
    read: Value,
    /// The side-effect log: the previous release's, which conductors of this build extend.
    effects: PathBuf,
    /// Holds the SQLite copy and the side-effect log.
    _dir: tempfile::TempDir,
    /// The PostgreSQL database, dropped with this.
    _pg: Option<PgDb>,
}

impl Previous {
    fn new(backend: Backend, url: String, dir: tempfile::TempDir, pg: Option<PgDb>) -> Self {
        let name = backend.name();
        let read = std::fs::read(fixture(&format!("{name}.json"))).unwrap();
        let read: Value = serde_json::from_slice(&read).unwrap();
        assert_eq!(read["release"], RELEASE);
        let effects = dir.path().join("effects.jsonl");
        std::fs::copy(fixture(&format!("{name}-effects.jsonl")), &effects).unwrap();
        Previous {
            backend,
            url,
            read,
            effects,
            _dir: dir,
            _pg: pg,
        }
    }

    /// A copy of the SQLite database file.
    fn sqlite() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("baton.db");
        std::fs::copy(fixture("baton.db"), &path).unwrap();
        let url = format!("sqlite://{}", path.display());
        Previous::new(Backend::Sqlite, url, dir, None)
    }

    /// The PostgreSQL dump, loaded into a database of its own: its schema is the one the
    /// previous release used by default (`baton`), which is still this build's default.
    /// `None` if there is no server (see [`support::pg_db`]).
    async fn postgres() -> Option<Self> {
        let db = support::pg_db().await?;
        let dump = std::fs::read_to_string(fixture("baton.pg.sql")).unwrap();
        let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
        sqlx::raw_sql(&dump).execute(&mut conn).await.unwrap();
        conn.close().await.unwrap();
        let url = db.url.clone();
        Some(Previous::new(
            Backend::Postgres,
            url,
            tempfile::tempdir().unwrap(),
            Some(db),
        ))
    }

    /// Runs `baton <args> --json` on this database, and returns what it printed.
    fn json(&self, args: &[&str]) -> Value {
        let mut args = args.to_vec();
        args.push("--json");
        let out = support::baton(&self.url, &args);
        assert!(
            out.status.success(),
            "baton {args:?} on {:?}: {}",
            self.backend,
            stderr(&out)
        );
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("baton {args:?}: {e}: {}", stdout(&out)))
    }

    /// The jobs the previous release listed, by id.
    fn old_jobs(&self) -> BTreeMap<String, &Value> {
        by_id(self.read["jobs"].as_array().unwrap(), |j| &j["id"])
    }

    /// The runs the previous release showed, by id.
    fn old_flows(&self) -> BTreeMap<String, &Value> {
        by_id(self.read["flows"].as_array().unwrap(), |f| &f["flow"]["id"])
    }

    /// The runs the previous release left unfinished (`RUNNING`), by id.
    fn unfinished(&self) -> BTreeMap<String, &Value> {
        let mut flows = self.old_flows();
        flows.retain(|_, f| f["flow"]["state"] == "RUNNING");
        flows
    }

    /// The migrations recorded as applied, by version (sqlx's own table, in baton's schema on
    /// PostgreSQL), each with whether it succeeded.
    async fn applied_migrations(&self) -> BTreeMap<i64, bool> {
        let query = match self.backend {
            Backend::Sqlite => "SELECT version, success FROM _sqlx_migrations",
            Backend::Postgres => "SELECT version, success FROM baton._sqlx_migrations",
        };
        let rows: Vec<(i64, bool)> = match self.backend {
            Backend::Sqlite => {
                let mut conn = sqlx::SqliteConnection::connect(&self.url).await.unwrap();
                sqlx::query_as(query).fetch_all(&mut conn).await.unwrap()
            }
            Backend::Postgres => {
                let mut conn = sqlx::PgConnection::connect(&self.url).await.unwrap();
                sqlx::query_as(query).fetch_all(&mut conn).await.unwrap()
            }
        };
        rows.into_iter().collect()
    }

    /// The versions of this build's migrations for the backend (from their file names).
    fn migrations(&self) -> BTreeSet<i64> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../baton-sql/migrations")
            .join(self.backend.name());
        std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".sql"))
            .map(|n| n.split('_').next().unwrap().parse().unwrap())
            .collect()
    }
}

/// `items` by their id (`id` of each, a JSON string).
fn by_id(items: &[Value], id: impl Fn(&Value) -> &Value) -> BTreeMap<String, &Value> {
    items
        .iter()
        .map(|v| (id(v).as_str().unwrap().to_owned(), v))
        .collect()
}

/// The edges of the run `flow` (as `flows show` prints it) as its creator recorded them in its
/// metadata, by atom name.
fn recorded_edges(flow: &Value) -> BTreeSet<(&str, &str)> {
    let graph = &flow["meta"][baton_core::engine::GRAPH_META_KEY];
    let atoms: Vec<&str> = graph["atoms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    let at = |i: &Value| atoms[usize::try_from(i.as_u64().unwrap()).unwrap()];
    graph["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (at(&e[0]), at(&e[1])))
        .collect()
}

/// Fails unless `new` holds everything `old` does, unchanged: every field of an object (a
/// later release may show more), every element of an array, in order, every value equal.
/// `at` names the place in failures.
fn assert_kept(old: &Value, new: &Value, at: &str) {
    match (old, new) {
        (Value::Object(old), Value::Object(new)) => {
            for (k, v) in old {
                let Some(now) = new.get(k) else {
                    panic!("{at}.{k} is gone (was {v})");
                };
                assert_kept(v, now, &format!("{at}.{k}"));
            }
        }
        (Value::Array(old), Value::Array(new)) => {
            assert_eq!(old.len(), new.len(), "{at}: {old:?} became {new:?}");
            for (i, (o, n)) in old.iter().zip(new).enumerate() {
                assert_kept(o, n, &format!("{at}[{i}]"));
            }
        }
        // One number, however it is written (`1` and `1.0`).
        (Value::Number(o), Value::Number(n)) if o.as_f64() == n.as_f64() => {}
        _ => assert_eq!(old, new, "{at} changed"),
    }
}

/// Every job the previous release listed reads back unchanged through `jobs list`, and there
/// is no other; likewise every run through `flows list` and `flows show`; `conductors list`
/// reads what is left of the fleet.
fn assert_all_kept(db: &Previous) {
    let jobs = db.json(&["jobs", "list", "--limit", "1000"]);
    let jobs = by_id(jobs.as_array().unwrap(), |j| &j["id"]);
    let old_jobs = db.old_jobs();
    assert_eq!(
        jobs.keys().collect::<Vec<_>>(),
        old_jobs.keys().collect::<Vec<_>>(),
        "the jobs"
    );
    for (id, old) in &old_jobs {
        assert_kept(old, jobs[id], &format!("job {id}"));
    }

    let flows = db.json(&["flows", "list", "--limit", "1000"]);
    let flows = by_id(flows.as_array().unwrap(), |f| &f["id"]);
    let old_flows = db.old_flows();
    assert_eq!(
        flows.keys().collect::<Vec<_>>(),
        old_flows.keys().collect::<Vec<_>>(),
        "the runs"
    );
    for (id, old) in &old_flows {
        assert_kept(&old["flow"], flows[id], &format!("run {id} as listed"));
        let shown = db.json(&["flows", "show", id]);
        assert_kept(old, &shown, &format!("run {id}"));
    }

    // The live fleet: this build forgets a conductor it finds dead (0.3.0's was killed), so
    // it may list fewer, but none that 0.3.0 did not, and those as 0.3.0 did.
    let conductors = db.json(&["conductors", "list"]);
    let old_conductors = by_id(db.read["conductors"].as_array().unwrap(), |c| &c["id"]);
    for (id, now) in by_id(conductors.as_array().unwrap(), |c| &c["id"]) {
        let Some(old) = old_conductors.get(&id) else {
            panic!("conductor {id} appeared: {now}");
        };
        assert_kept(old, now, &format!("conductor {id}"));
    }
}

/// The migrations move the previous release's database forward, once, and everything in it
/// reads back as that release read it.
async fn migrates_and_reads_back(db: Previous) {
    let before = db.applied_migrations().await;
    let all = db.migrations();
    assert!(before.values().all(|ok| *ok), "{before:?}");
    let old: BTreeSet<i64> = before.keys().copied().collect();
    assert!(
        old.is_subset(&all) && old != all,
        "the fixture is at an earlier schema than this build's: {old:?} of {all:?}"
    );

    for _ in 0..2 {
        let out = support::baton(&db.url, &["migrate"]);
        assert!(out.status.success(), "migrate: {}", stderr(&out));
        assert!(stdout(&out).contains("up to date"), "{}", stdout(&out));
        let after = db.applied_migrations().await;
        assert_eq!(after.keys().copied().collect::<BTreeSet<_>>(), all);
        assert!(after.values().all(|ok| *ok), "{after:?}");
    }

    assert_all_kept(&db);

    // The fixture holds every kind of record the release could make.
    let states = |items: &BTreeMap<String, &Value>, field: &dyn Fn(&Value) -> &Value| {
        items
            .values()
            .map(|v| field(v).as_str().unwrap().to_owned())
            .collect::<BTreeSet<_>>()
    };
    assert_eq!(
        states(&db.old_jobs(), &|j| &j["state"]),
        ["CLAIMED", "COMPLETE", "TRASHED", "UNCLAIMED"]
            .map(String::from)
            .into()
    );
    assert_eq!(
        states(&db.old_flows(), &|f| &f["flow"]["state"]),
        ["FAILURE", "REVERTED", "RUNNING", "SUCCESS"]
            .map(String::from)
            .into()
    );
    let unfinished: BTreeSet<String> = db
        .unfinished()
        .keys()
        .map(|id| db.old_jobs()[id]["factory"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        unfinished,
        ["stack-create", "stack-delete", "stack-update", "steps"]
            .map(String::from)
            .into()
    );
}

/// Purging takes the runs and jobs that ended, and leaves everything still open as it was.
async fn purges_what_ended(db: Previous) {
    let ended_runs = db
        .old_flows()
        .values()
        .filter(|f| f["flow"]["state"] != "RUNNING")
        .count();
    let ended_jobs = db
        .old_jobs()
        .values()
        .filter(|j| j["state"] == "COMPLETE" || j["state"] == "TRASHED")
        .count();
    assert!(ended_runs > 0 && ended_jobs > 0);
    // Everything ended more than ten minutes (the least age purged) before this cutoff, once
    // the fixture is that old.
    let cutoff = ["--ended-before", "2999-01-01T00:00:00Z"];
    let purged = db.json(&[&["flows", "purge"][..], &cutoff].concat());
    assert_eq!(
        purged["purged"], ended_runs,
        "runs purged (a fixture made less than ten minutes ago has nothing old enough): {purged}"
    );
    let purged = db.json(&[&["jobs", "purge"][..], &cutoff].concat());
    assert_eq!(purged["purged"], ended_jobs, "jobs purged: {purged}");

    let jobs = db.json(&["jobs", "list", "--limit", "1000"]);
    let open: BTreeMap<String, &Value> = db
        .old_jobs()
        .into_iter()
        .filter(|(_, j)| j["state"] == "CLAIMED" || j["state"] == "UNCLAIMED")
        .collect();
    let jobs = by_id(jobs.as_array().unwrap(), |j| &j["id"]);
    assert_eq!(
        jobs.keys().collect::<Vec<_>>(),
        open.keys().collect::<Vec<_>>()
    );
    for (id, old) in &open {
        assert_kept(old, jobs[id], &format!("job {id}"));
    }
    let flows = db.json(&["flows", "list", "--limit", "1000"]);
    let flows = by_id(flows.as_array().unwrap(), |f| &f["id"]);
    let unfinished = db.unfinished();
    assert_eq!(
        flows.keys().collect::<Vec<_>>(),
        unfinished.keys().collect::<Vec<_>>()
    );
    for (id, old) in &unfinished {
        assert_kept(old, &db.json(&["flows", "show", id]), &format!("run {id}"));
    }
}

/// A conductor of this build finishes what the previous release left: the jobs its killed
/// conductor held and the jobs still waiting. Every job ends `COMPLETE`, every run `SUCCESS`;
/// the unfinished runs keep the atoms they were started with, and no step that had succeeded
/// runs again.
async fn finishes_unfinished_runs(db: Previous) {
    // The versions the migrations pinned the started runs' jobs to.
    let pinned: BTreeMap<String, Value> = db
        .json(&["jobs", "list", "--limit", "1000"])
        .as_array()
        .unwrap()
        .iter()
        .map(|j| (j["id"].as_str().unwrap().to_owned(), j["version"].clone()))
        .collect();
    let out = run(
        {
            let mut cmd = command(
                Some(&db.url),
                &[
                    "conductor",
                    "--demo",
                    "--exit-when-idle",
                    "--concurrency",
                    "8",
                    "--poll-ms",
                    "50",
                ],
            );
            cmd.arg("--effects").arg(&db.effects);
            cmd
        },
        None,
    );
    assert!(out.status.success(), "the conductor: {}", stderr(&out));
    let open = db
        .old_jobs()
        .values()
        .filter(|j| j["state"] == "CLAIMED" || j["state"] == "UNCLAIMED")
        .count();
    let summary: Value = serde_json::from_str(stdout(&out).lines().last().unwrap()).unwrap();
    assert_eq!(summary["consumed"], open, "{summary}\n{}", stderr(&out));

    // Every job that was open is complete, its run a success; what had ended is as it was.
    let jobs = db.json(&["jobs", "list", "--limit", "1000"]);
    let moved_on: BTreeSet<String> = db
        .old_jobs()
        .into_iter()
        .filter(|(_, j)| j["state"] == "CLAIMED" || j["state"] == "UNCLAIMED")
        .map(|(id, _)| id)
        .collect();
    let old_jobs = db.old_jobs();
    let jobs = by_id(jobs.as_array().unwrap(), |j| &j["id"]);
    for (id, job) in &jobs {
        match old_jobs.get(id) {
            Some(old) if !moved_on.contains(id) => assert_kept(old, job, &format!("job {id}")),
            _ => {
                assert_eq!(job["state"], "COMPLETE", "job {job}");
                assert_eq!(job["outcome"]["state"], "SUCCESS", "job {job}");
            }
        }
    }
    assert_eq!(jobs.len(), old_jobs.len(), "no job was added");

    let backends = baton_sql::open(&db.url).await.unwrap();
    let store = backends.store.clone();
    let effects = SideEffects::read_file(&db.effects).unwrap();
    let creates = creates(&effects);
    let unfinished = db.unfinished();
    let mut runs_checked = 0;
    for id in moved_on {
        let flow: FlowId = id.parse().unwrap();
        let what = format!("{} run {id}", old_jobs[&id]["factory"]);
        let snap = store.load_flow(flow).await.unwrap();
        let history = store.history(flow).await.unwrap();
        assert_eq!(snap.flow.state, FlowState::Success, "{what}");
        // Each step succeeded once and made its side effect at most once per attempt.
        check_steps(&snap, &history, &creates, &what);
        runs_checked += 1;
        let Some(old) = unfinished.get(&id) else {
            continue; // A job that was waiting: its run is this build's.
        };
        // Resumed on the definition it was started with: the same atoms, of the same kinds,
        // in the same order.
        let now: Vec<(&str, &str)> = snap
            .atoms
            .iter()
            .map(|a| (a.name.as_str(), a.kind.as_str()))
            .collect();
        let then: Vec<(&str, &str)> = old["atoms"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| (a["name"].as_str().unwrap(), a["kind"].as_str().unwrap()))
            .collect();
        assert_eq!(now, then, "{what}");
        // ... and wired as it was: the definition this build has under the job's version
        // has the edges the run recorded when it was created.
        let job = &jobs[&id];
        assert_eq!(job["version"], pinned[&id], "{what}: its job's version");
        let version = u32::try_from(job["version"].as_u64().unwrap()).unwrap();
        let factory = FactoryRef::new(job["factory"].as_str().unwrap(), version);
        let (defined, _) = baton_cli::demo::registry(SideEffects::Discard)
            .unwrap()
            .build(&factory, &job["params"])
            .unwrap();
        let defined: BTreeSet<(&str, &str)> = defined.edges().collect();
        assert_eq!(
            defined,
            recorded_edges(&old["flow"]),
            "{what}: the definition of {factory} is not the one the run was started with"
        );
        // The steps that had succeeded under the previous release were not run again: their
        // records are as that release left them (result, attempt, start and end).
        let shown = db.json(&["flows", "show", &id]);
        let mut kept = 0;
        for (i, a) in old["atoms"].as_array().unwrap().iter().enumerate() {
            if a["state"] == "SUCCESS" {
                assert_kept(
                    a,
                    &shown["atoms"][i],
                    &format!("{what}, atom {}", a["name"]),
                );
                kept += 1;
            }
        }
        assert!(kept >= 2, "{what}: {kept} steps had succeeded");
        // Taken over from the dead conductor: claimed again, under a newer token.
        let (then, now) = (&old_jobs[&id], job);
        assert!(
            now["token"].as_u64() > then["token"].as_u64(),
            "{what}: token {} then {}",
            then["token"],
            now["token"]
        );
        // If the run records its factory now, it is the job's.
        if let Some(recorded) = &snap.flow.factory {
            assert_eq!(recorded, &factory, "{what}");
        }
    }
    assert_eq!(runs_checked, open, "every run that was open was checked");

    // The job that waited behind the unfinished stack-create of its key ran after it ended.
    let keyed: Vec<&Value> = jobs
        .values()
        .copied()
        .filter(|j| j["key"] == "stack-interrupted")
        .collect();
    assert_eq!(keyed.len(), 2, "{keyed:?}");
    let (first, second) = (keyed[0], keyed[1]);
    let ended = db.json(&["flows", "show", first["id"].as_str().unwrap()]);
    let started = db.json(&["flows", "show", second["id"].as_str().unwrap()]);
    let time = |v: &Value| {
        v.as_str()
            .unwrap()
            .parse::<chrono::DateTime<chrono::Utc>>()
            .unwrap()
    };
    assert!(
        time(&started["flow"]["created_at"]) >= time(&ended["flow"]["updated_at"]),
        "{} started before {} ended",
        second["id"],
        first["id"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_database_of_the_previous_release_migrates_and_reads_back() {
    migrates_and_reads_back(Previous::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_database_of_the_previous_release_migrates_and_reads_back() {
    if let Some(db) = Previous::postgres().await {
        migrates_and_reads_back(db).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_database_of_the_previous_release_purges_what_ended() {
    purges_what_ended(Previous::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_database_of_the_previous_release_purges_what_ended() {
    if let Some(db) = Previous::postgres().await {
        purges_what_ended(db).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_runs_of_the_previous_release_finish() {
    finishes_unfinished_runs(Previous::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_runs_of_the_previous_release_finish() {
    if let Some(db) = Previous::postgres().await {
        finishes_unfinished_runs(db).await;
    }
}
