//! The SQLite store.

use baton_core::store::Store;
use baton_sql::{SqliteOptions, SqliteStore, Synchronous};
use sqlx::Connection;

use crate::support::{sqlite_store, sqlite_store_with, sqlite_url};

mod conformance {
    use crate::support::sqlite_store;

    baton_testkit::store_conformance!(optional: sqlite_store().await);
}

/// Time limits, deadlines and cancellation.
mod limits {
    use crate::support::sqlite_store;

    baton_testkit::limits_conformance!(optional: sqlite_store().await);
}

/// Per-atom retry policies.
mod policies {
    use crate::support::sqlite_store;

    baton_testkit::policies_conformance!(optional: sqlite_store().await);
}

/// Typed tasks' values through the store and a resume.
mod typed {
    use crate::support::sqlite_store;

    baton_testkit::typed_conformance!(optional: sqlite_store().await);
}

/// The same contract, with steps written long (the default of 0.2.0; short is the default now).
mod conformance_long_steps {
    use baton_sql::{SqliteOptions, StepFormat};

    use crate::support::sqlite_store_with;

    baton_testkit::store_conformance!(
        optional: sqlite_store_with(SqliteOptions::new().step_format(StepFormat::Long)).await
    );
}

crate::generic_cases!(
    sqlite_store().await,
    sqlite_store_with(SqliteOptions::new().max_value_bytes(1024)).await
);

async fn tables(url: &str) -> Vec<String> {
    let mut conn = sqlx::SqliteConnection::connect(url).await.unwrap();
    let names = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' \
         ORDER BY name",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();
    names
}

async fn scalar(url: &str, sql: &str) -> String {
    let mut conn = sqlx::SqliteConnection::connect(url).await.unwrap();
    let value: String = sqlx::query_scalar(sql).fetch_one(&mut conn).await.unwrap();
    conn.close().await.unwrap();
    value
}

#[tokio::test]
async fn migrations_create_the_schema_once() {
    let (_dir, url) = sqlite_url();
    let store = SqliteStore::open(&url).await.unwrap();
    assert_eq!(
        tables(&url).await,
        [
            "_sqlx_migrations",
            "atoms",
            "conductors",
            "fences",
            "flows",
            "history",
            "jobs",
            "steps"
        ]
    );
    assert_eq!(scalar(&url, "PRAGMA journal_mode").await, "wal");
    let flow = crate::cases::new_flow(&store).await;

    // Migrating again, and reopening, change nothing.
    store.migrate().await.unwrap();
    store.close().await;
    let again = SqliteStore::open(&url).await.unwrap();
    assert_eq!(
        scalar(&url, "SELECT CAST(COUNT(*) AS TEXT) FROM _sqlx_migrations").await,
        crate::support::migration_count("sqlite").to_string()
    );
    assert_eq!(
        again.load_flow(flow.id).await.unwrap().flow,
        flow_at_rest(&flow)
    );
}

fn flow_at_rest(flow: &baton_core::model::FlowRecord) -> baton_core::model::FlowRecord {
    flow.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_opens_of_a_new_database_both_succeed() {
    for _ in 0..5 {
        let (_dir, url) = sqlite_url();
        let (a, b) = tokio::join!(
            tokio::spawn({
                let url = url.clone();
                async move { SqliteStore::open(&url).await }
            }),
            tokio::spawn({
                let url = url.clone();
                async move { SqliteStore::open(&url).await }
            }),
        );
        let (a, b) = (a.unwrap().unwrap(), b.unwrap().unwrap());
        let flow = crate::cases::new_flow(&a).await;
        assert_eq!(b.load_flow(flow.id).await.unwrap().flow.id, flow.id);
        assert_eq!(
            scalar(&url, "SELECT CAST(COUNT(*) AS TEXT) FROM _sqlx_migrations").await,
            crate::support::migration_count("sqlite").to_string()
        );
    }
}

#[tokio::test]
async fn in_memory_databases_are_shared_by_clones_only() {
    let store = SqliteStore::open("sqlite::memory:").await.unwrap();
    let clone = store.clone();
    let flow = crate::cases::new_flow(&store).await;
    assert_eq!(clone.load_flow(flow.id).await.unwrap().flow.id, flow.id);
    let other = SqliteStore::open("sqlite::memory:").await.unwrap();
    assert!(other.load_flow(flow.id).await.is_err());
}

#[tokio::test]
async fn full_synchronous_mode_commits() {
    let (_dir, url) = sqlite_url();
    let store = SqliteStore::open_with(&url, SqliteOptions::new().synchronous(Synchronous::Full))
        .await
        .unwrap();
    let flow = crate::cases::new_flow(&store).await;
    assert_eq!(store.commits(), 1);
    assert_eq!(store.load_flow(flow.id).await.unwrap().flow.id, flow.id);
}

/// The call timeout is SQLite's busy timeout: a write waits that long for another process's
/// lock, then answers `Unavailable`, and works once the lock is gone.
#[tokio::test]
async fn a_locked_database_is_unavailable_within_the_call_timeout() {
    let (_dir, url) = sqlite_url();
    let limit = std::time::Duration::from_millis(300);
    let store = SqliteStore::open_with(&url, SqliteOptions::new().call_timeout(limit))
        .await
        .unwrap();
    assert_eq!(store.call_timeout(), limit);
    // Another process holds the write lock.
    let mut other = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::raw_sql("BEGIN IMMEDIATE")
        .execute(&mut other)
        .await
        .unwrap();
    let flow = crate::cases::flow_record("locked");
    let started = std::time::Instant::now();
    let err = store
        .create_flow(&flow, &crate::cases::atoms(), None)
        .await
        .unwrap_err();
    let took = started.elapsed();
    eprintln!("a write on a locked database failed after {took:?} (call timeout {limit:?})");
    assert!(err.is_transient(), "{err:?}");
    assert!(
        took >= limit / 2 && took < limit + std::time::Duration::from_secs(2),
        "{took:?}"
    );
    sqlx::raw_sql("ROLLBACK").execute(&mut other).await.unwrap();
    store
        .create_flow(&flow, &crate::cases::atoms(), None)
        .await
        .unwrap();
}

/// Two stores opened separately on one file share nothing in process (no pool, no write
/// lock), as two processes would: their writers contend through SQLite's own locking.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stores_on_one_file_write_side_by_side() {
    use baton_core::{Engine, FlowState};
    use baton_testkit::{scenarios, Log};

    let (_dir, url) = sqlite_url();
    let first = SqliteStore::open(&url).await.unwrap();
    let second = SqliteStore::open(&url).await.unwrap();
    let mut runs = tokio::task::JoinSet::new();
    for i in 0..12 {
        let store = if i % 2 == 0 {
            first.clone()
        } else {
            second.clone()
        };
        runs.spawn(async move {
            let flow = scenarios::long_linear(&Log::new(), 5);
            let inputs = baton_testkit::inputs([("seed", serde_json::json!(i))]);
            let outcome = Engine::new(store).start(&flow, inputs).await.unwrap();
            (outcome.flow, outcome.state)
        });
    }
    let mut flows = Vec::new();
    while let Some(done) = runs.join_next().await {
        let (flow, state) = done.unwrap();
        assert_eq!(state, FlowState::Success);
        flows.push(flow);
    }
    // Each store sees the other's flows.
    for flow in flows {
        assert_eq!(
            first.load_flow(flow).await.unwrap().flow.state,
            FlowState::Success
        );
        assert_eq!(second.history(flow).await.unwrap().len(), 12);
    }
}

/// A store writing long steps and one writing short ones share a file (see
/// `cases::step_formats_mix`).
#[tokio::test]
async fn step_formats_mix() {
    let (_dir, url) = sqlite_url();
    // Short steps are the default.
    let short = SqliteStore::open(&url).await.unwrap();
    let long = SqliteStore::open_with(
        &url,
        SqliteOptions::new().step_format(baton_sql::StepFormat::Long),
    )
    .await
    .unwrap();
    crate::cases::step_formats_mix(long, short).await;
    // Both forms are in the log, each stamped with the oldest version that reads it.
    for (form, version) in [(r#"[{"op":%"#, "1"), (r#"[{"o":%"#, "2")] {
        let steps = scalar(
            &url,
            &format!(
                "SELECT CAST(count(*) AS TEXT) FROM steps WHERE body LIKE '{form}' AND model_version = {version}"
            ),
        )
        .await;
        assert_ne!(steps, "0", "no step like {form}");
    }
    let all = scalar(&url, "SELECT CAST(count(*) AS TEXT) FROM steps").await;
    let stamped = scalar(
        &url,
        r#"SELECT CAST(count(*) AS TEXT) FROM steps WHERE (body LIKE '[{"o":%' AND model_version = 2) OR (body LIKE '[{"op":%' AND model_version = 1)"#,
    )
    .await;
    assert_eq!(all, stamped);
}

#[tokio::test]
async fn a_stale_write_to_a_purged_run_is_refused() {
    let (_dir, url) = sqlite_url();
    let stale = SqliteStore::open(&url).await.unwrap();
    let other = SqliteStore::open(&url).await.unwrap();
    crate::cases::a_stale_write_to_a_purged_run_is_refused(&stale, &other, |s| {
        s.backdate_cached_views(std::time::Duration::from_secs(2 * 3600));
    })
    .await;
}

/// The same, with the writer's view still trusted (confirmed moments ago; the run's end was
/// stamped an hour back so it can be purged at once): the one-statement append itself must
/// find the run gone, or the late step would land in the new run's range of step keys.
#[tokio::test]
async fn a_trusted_write_to_a_purged_run_is_refused_by_the_append() {
    let (_dir, url) = sqlite_url();
    let stale = SqliteStore::open(&url).await.unwrap();
    let other = SqliteStore::open(&url).await.unwrap();
    crate::cases::a_stale_write_to_a_purged_run_is_refused(&stale, &other, |_| {}).await;
}

#[tokio::test]
async fn stale_knowledge_is_caught_by_the_log() {
    let (_dir, url) = sqlite_url();
    let first = SqliteStore::open(&url).await.unwrap();
    let second = SqliteStore::open(&url).await.unwrap();
    crate::cases::stale_knowledge_is_caught_by_the_log(&first, &second).await;
}

/// A database last written by a baton from before the step log, with a run in progress, is
/// upgraded on open, and the run goes on (see `cases::old_run_goes_on`).
#[tokio::test]
async fn a_run_in_progress_survives_the_upgrade_to_the_step_log() {
    let (_dir, url, mut conn) = database_as_of(crate::cases::before_the_step_log(sqlx::migrate!(
        "./migrations/sqlite"
    )))
    .await;
    let flow = baton_core::FlowId::new();
    for sql in crate::cases::old_run(flow) {
        sqlx::query(&sql).execute(&mut conn).await.unwrap();
    }
    conn.close().await.unwrap();
    // Opening applies the step log's migration.
    let store = SqliteStore::open(&url).await.unwrap();
    crate::cases::old_run_goes_on(&store, flow).await;
}

/// A task may write through its own run's store (here: create child runs, which takes the
/// store's write gate) while its run commits a progress report it sent just before: the run
/// must not stop polling the task while it waits for the gate the task holds.
#[tokio::test]
async fn a_task_writing_to_its_own_store_does_not_block_its_run() {
    use baton_core::{Atom, Engine, Flow, FlowState};
    use std::time::Duration;

    let (_dir, url) = sqlite_url();
    let store = SqliteStore::open(&url).await.unwrap();
    let mut options = baton_core::engine::Options::default();
    options.progress_interval = Duration::ZERO; // every report is a commit
    let engine = Engine::new(store.clone()).with_options(options);
    let child = Flow::linear("child")
        .add(Atom::from_fn("c", |_| async {
            Ok(serde_json::Value::Null)
        }))
        .compile()
        .unwrap();
    let spawner = engine.clone();
    let parent = Flow::linear("parent")
        .add(Atom::from_fn("p", move |ctx| {
            let engine = spawner.clone();
            let child = child.clone();
            async move {
                let mut children = Vec::new();
                for i in 0..20 {
                    ctx.progress(f64::from(i) / 20.0);
                    children.push(engine.create(&child, Default::default()).await?.to_string());
                }
                Ok(serde_json::json!(children))
            }
        }))
        .compile()
        .unwrap();
    let outcome = tokio::time::timeout(
        Duration::from_secs(30),
        engine.start(&parent, Default::default()),
    )
    .await
    .expect("the run is stuck behind its own task")
    .unwrap();
    assert_eq!(outcome.state, FlowState::Success);
    let children = outcome.results["p"].as_array().unwrap().len();
    assert_eq!(children, 20);
}

/// SQLite reads a flow's atoms and steps packed into one JSON text; rows that do not fit that
/// shape (SQLite lets a column hold a value of another type) are still reported as `Corrupt`,
/// naming the flow and the atom, through the row-by-row path. Atoms come back in creation
/// order, whatever their names, and a flow with many steps replays them in order.
#[tokio::test]
async fn loading_reads_packed_rows_and_names_damaged_ones() {
    use crate::cases::{flow_record, flow_with_one_step, new_flow, start};
    use crate::support::Harness;
    use baton_core::model::{AtomKind, AtomRecord, Batch};
    use baton_core::store::Error;
    use baton_core::AtomState;

    let store = sqlite_store().await.expect("SQLite is always there");
    let corrupt = |err: Error| match err {
        Error::Corrupt { flow, atom, detail } => (flow, atom, detail),
        other => panic!("expected Corrupt, got {other:?}"),
    };

    // Creation order, not name order, over several packed chunks (128 rows each) and
    // inserted in statements of each size (323 = 6 × 50 + 16 + 4 + 3 × 1); progress that
    // needs all 17 digits; and a history of more steps than a chunk holds.
    let flow = flow_record("packed");
    let count = 323;
    let names: Vec<String> = (0..count)
        .map(|i| format!("atom-{}", count - 1 - i))
        .collect();
    let atoms: Vec<AtomRecord> = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let mut a = AtomRecord::pending(n.as_str(), AtomKind::Task);
            a.progress = [1.0 / 3.0, 0.1 + 0.2, 2.0 / 3.0, 0.123_456_789_012_345_68][i % 4];
            a
        })
        .collect();
    store.create_flow(&flow, &atoms, None).await.unwrap();
    let mut current = atoms.clone();
    for rec in &mut current {
        let mut batch = Batch::new(flow.id, None);
        let write = start(rec);
        if let baton_core::model::Write::Atom { record, .. } = &write {
            *rec = record.clone();
        }
        batch.writes.push(write);
        store.commit(&batch).await.unwrap();
    }
    let snap = store.load_flow(flow.id).await.unwrap();
    let loaded: Vec<&str> = snap.atoms.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(loaded, names);
    assert!(snap.atoms.iter().all(|a| a.state == AtomState::Running));
    assert_eq!(snap.atoms, current);
    assert_eq!(store.history(flow.id).await.unwrap().len(), count);

    // Progress written by hand, exactly.
    let flow = new_flow(&store).await;
    store
        .exec(&format!(
            "UPDATE atoms SET progress = 1.0 / 3.0 WHERE flow_id = '{}' AND name = 'a'",
            flow.id
        ))
        .await;
    let snap = store.load_flow(flow.id).await.unwrap();
    assert_eq!(snap.atoms[0].progress.to_bits(), (1.0_f64 / 3.0).to_bits());

    // Atoms as their creation left them are packed short; one that differs from a new atom
    // in any single column is not, and loads back as it was.
    let failure = baton_core::Failure {
        message: "boom".to_owned(),
        causes: Vec::new(),
        atom: "x".to_owned(),
        attempt: 1,
        retryable: false,
        retry_after: None,
        kind: baton_core::FailureKind::Execute,
    };
    let when = chrono::DateTime::parse_from_rfc3339("2026-12-05T10:00:00.5Z")
        .unwrap()
        .to_utc();
    type Change = Box<dyn Fn(&mut AtomRecord)>;
    let changes: Vec<(&str, Change)> = vec![
        ("new", Box::new(|_| {})),
        ("retry", Box::new(|a| a.kind = AtomKind::Retry)),
        ("state", Box::new(|a| a.state = AtomState::Ignore)),
        (
            "intention",
            Box::new(|a| a.intention = baton_core::Intention::Revert),
        ),
        ("attempt", Box::new(|a| a.attempt = 1)),
        ("round", Box::new(|a| a.round = 1)),
        (
            "null-result",
            Box::new(|a| a.result = Some(serde_json::Value::Null)),
        ),
        (
            "failure",
            Box::new({
                let failure = failure.clone();
                move |a| a.failure = Some(failure.clone())
            }),
        ),
        (
            "revert-failure",
            Box::new(move |a| a.revert_failure = Some(failure.clone())),
        ),
        (
            "retry-history",
            Box::new(|a| {
                a.retry_history = vec![baton_core::model::RetryAttempt::new(
                    serde_json::json!(1),
                    Vec::new(),
                )]
            }),
        ),
        ("retry-at", Box::new(move |a| a.retry_at = Some(when))),
        ("progress", Box::new(|a| a.progress = 0.5)),
        ("started", Box::new(move |a| a.started_at = Some(when))),
        ("finished", Box::new(move |a| a.finished_at = Some(when))),
    ];
    let atoms: Vec<AtomRecord> = changes
        .iter()
        .map(|(name, change)| {
            let mut a = AtomRecord::pending(*name, AtomKind::Task);
            change(&mut a);
            a
        })
        .collect();
    let flow = flow_record("one-change-each");
    store.create_flow(&flow, &atoms, None).await.unwrap();
    assert_eq!(store.load_flow(flow.id).await.unwrap().atoms, atoms);

    // A damaged position (text, or out of the usual range) loses no atom: the load reads
    // them all, in the order the row-by-row path would.
    for (damage, order) in [("'last'", ["a", "b"]), ("-5", ["b", "a"])] {
        let flow = new_flow(&store).await;
        store
            .exec(&format!(
                "UPDATE atoms SET position = {damage} WHERE flow_id = '{}' AND name = 'b'",
                flow.id
            ))
            .await;
        let snap = store.load_flow(flow.id).await.unwrap();
        let names: Vec<&str> = snap.atoms.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, order, "position {damage}");
    }

    // Values of the wrong type: a number column holding text; a BLOB that SQLite's JSON
    // functions would read as JSONB (the number 7) where a number belongs; a BLOB where a JSON
    // text belongs; and in an atom as its creation left it (packed short), a valid JSONB BLOB
    // as its kind, and text as its model version. Each is named: (set, atom, column).
    for (set, name, column) in [
        ("attempt = 'many'", "b", "attempt"),
        ("attempt = x'1337'", "b", "attempt"),
        ("result = x'00ff'", "a", "result"),
        ("kind = jsonb('\"task\"')", "b", "kind"),
        ("model_version = 'two'", "b", "model_version"),
    ] {
        let flow = new_flow(&store).await;
        store
            .exec(&format!(
                "UPDATE atoms SET {set} WHERE flow_id = '{}' AND name = '{name}'",
                flow.id
            ))
            .await;
        let (f, atom, detail) = corrupt(store.load_flow(flow.id).await.unwrap_err());
        assert_eq!((f, atom.as_deref()), (flow.id, Some(name)), "{set}");
        assert!(detail.contains(column), "{set}: {detail}");
    }

    // A name that is a valid JSONB BLOB in an atom as its creation left it: the row cannot
    // name itself, so the error names the column.
    let flow = new_flow(&store).await;
    store
        .exec(&format!(
            "UPDATE atoms SET name = jsonb('\"b\"') WHERE flow_id = '{}' AND name = 'b'",
            flow.id
        ))
        .await;
    let (f, atom, detail) = corrupt(store.load_flow(flow.id).await.unwrap_err());
    assert_eq!((f, atom), (flow.id, None));
    assert!(detail.contains("name"), "{detail}");

    // A step whose number is text.
    let flow = flow_with_one_step(&store).await;
    store
        .exec(&format!(
            "UPDATE steps SET seq = 'first' WHERE flow_id = '{}'",
            flow.id
        ))
        .await;
    let (f, atom, detail) = corrupt(store.load_flow(flow.id).await.unwrap_err());
    assert_eq!((f, atom), (flow.id, None));
    assert!(detail.contains("step log"), "{detail}");
}

/// Purging ended runs leaves no row of theirs in any table, and none of the others' goes.
#[tokio::test]
async fn purged_runs_leave_no_rows_behind() {
    use baton_core::{Engine, FlowState};
    use baton_testkit::{scenarios, Log};

    let (_dir, url) = sqlite_url();
    let store = SqliteStore::open(&url).await.unwrap();
    let engine = Engine::new(store.clone());
    let flow = scenarios::long_linear(&Log::new(), 5);
    let mut ended = Vec::new();
    for _ in 0..3 {
        let outcome = engine
            .start(
                &flow,
                baton_testkit::inputs([("seed", serde_json::json!(1))]),
            )
            .await
            .unwrap();
        assert_eq!(outcome.state, FlowState::Success);
        ended.push(outcome.flow);
    }
    let kept = engine
        .create(
            &flow,
            baton_testkit::inputs([("seed", serde_json::json!(2))]),
        )
        .await
        .unwrap();
    let counts = || async {
        let mut out = Vec::new();
        for table in ["flows", "atoms", "steps", "history"] {
            out.push(scalar(&url, &format!("SELECT CAST(count(*) AS TEXT) FROM {table}")).await);
        }
        out
    };
    assert_ne!(counts().await[2], "0", "the runs have steps");
    // As if they had ended a day ago: purges keep runs that ended in the last ten minutes.
    let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::query(
        "UPDATE flows SET updated_at = '2000-01-01T00:00:00.000000000Z' WHERE state = 'SUCCESS'",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();
    let purged = store
        .purge_flows(chrono::Utc::now() + chrono::Duration::seconds(1), 2)
        .await
        .unwrap()
        + store
            .purge_flows(chrono::Utc::now() + chrono::Duration::seconds(1), 2)
            .await
            .unwrap();
    assert_eq!(purged, 3);
    // What is left is the run that has not started: its row and its atoms.
    let atoms = store.load_flow(kept).await.unwrap().atoms.len().to_string();
    assert_eq!(counts().await, ["1", atoms.as_str(), "0", "0"]);
    assert_eq!(
        engine.run(&flow, kept).await.unwrap().state,
        FlowState::Success
    );
}

/// A database last written by baton 0.3 is upgraded on open: the job it claimed is pinned to
/// version 1, and a claim made by 0.3's own statement, from a process still running while the
/// migration was applied, is refused (see `cases::old_jobs_after_the_upgrade`).
#[tokio::test]
async fn a_board_of_the_previous_release_is_upgraded_and_its_claims_refused() {
    let (_dir, url, mut conn) = database_as_of(crate::cases::before_versions(sqlx::migrate!(
        "./migrations/sqlite"
    )))
    .await;
    let (claimed, waiting) = (baton_core::JobId::new(), baton_core::JobId::new());
    for sql in crate::cases::old_jobs(claimed, waiting, "2026-11-01T10:00:00.000000000Z") {
        sqlx::query(&sql).execute(&mut conn).await.unwrap();
    }
    let store = SqliteStore::open(&url).await.unwrap();
    let board = baton_sql::SqliteJobBoard::new(&store);
    // The claim statement of baton 0.3.0, word for word.
    const OLD_CLAIM: &str =
        "UPDATE jobs SET state = 'CLAIMED', owner = ?1, lease_expires_at = ?2 + ?3, \
             token = token + 1, attempts = attempts + 1, updated_at = ?4 \
         WHERE id IN ( \
             SELECT j.id FROM jobs j \
              WHERE j.state IN ('UNCLAIMED', 'CLAIMED') \
                AND (j.state = 'UNCLAIMED' OR (j.state = 'CLAIMED' AND j.lease_expires_at <= ?2)) \
                AND (j.job_key IS NULL OR NOT EXISTS ( \
                    SELECT 1 FROM jobs k WHERE k.job_key = j.job_key \
                       AND k.state IN ('UNCLAIMED', 'CLAIMED') AND k.seq < j.seq)) \
              ORDER BY j.priority DESC, j.seq LIMIT ?5)";
    crate::cases::old_jobs_after_the_upgrade(&board, claimed, waiting, || async {
        sqlx::query(OLD_CLAIM)
            .bind(baton_core::ConductorId::new().to_string())
            .bind(chrono::Utc::now().timestamp_millis())
            .bind(60_000_i64)
            .bind("2026-12-06T10:00:00.000000000Z")
            .bind(5_i64)
            .execute(&mut conn)
            .await
            .map(|done| done.rows_affected())
    })
    .await;
    conn.close().await.unwrap();
}

/// A board written by the release before watched jobs is upgraded on open: a job it posted is
/// waited for, and an end made here wakes the waiter at once (see
/// `cases::a_job_posted_before_the_upgrade_is_waited_for`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_posted_before_watched_jobs_is_waited_for_after_the_upgrade() {
    let (_dir, url, mut conn) = database_as_of(crate::cases::before_watched(sqlx::migrate!(
        "./migrations/sqlite"
    )))
    .await;
    let job = baton_core::JobId::new();
    sqlx::query(&crate::cases::job_before_watched(
        job,
        "2026-12-07T10:00:00.000000000Z",
    ))
    .execute(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();
    let store = SqliteStore::open(&url).await.unwrap();
    let board = baton_sql::SqliteJobBoard::new(&store);
    crate::cases::a_job_posted_before_the_upgrade_is_waited_for(&board, job).await;
}

/// A board with a job in every state, written as the release before flat claims wrote it, is
/// opened, and its jobs are listed, claimed and purged as they were (see
/// `cases::jobs_before_flat_claims_after_the_upgrade`; SQLite has no migration of its own for
/// flat claims, so this checks the same cases as on PostgreSQL at the current schema).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_written_before_flat_claims_work_after_the_upgrade() {
    let (_dir, url, mut conn) = database_as_of(crate::cases::before_flat_claims(sqlx::migrate!(
        "./migrations/sqlite"
    )))
    .await;
    let (old, sql) = crate::cases::jobs_before_flat_claims("2026-12-08T10:00:00.000000000Z");
    sqlx::query(&sql).execute(&mut conn).await.unwrap();
    conn.close().await.unwrap();
    let store = SqliteStore::open(&url).await.unwrap();
    let board = baton_sql::SqliteJobBoard::new(&store);
    crate::cases::jobs_before_flat_claims_after_the_upgrade(&board, &old).await;
}

/// A fresh database file with `migrator`'s migrations applied (a database as an earlier
/// release left it): its folder, its URL, and a connection to it.
async fn database_as_of(
    migrator: sqlx::migrate::Migrator,
) -> (tempfile::TempDir, String, sqlx::SqliteConnection) {
    let (dir, url) = sqlite_url();
    let options: sqlx::sqlite::SqliteConnectOptions = url.parse().unwrap();
    let mut conn = sqlx::SqliteConnection::connect_with(&options.create_if_missing(true))
        .await
        .unwrap();
    migrator.run(&mut conn).await.unwrap();
    (dir, url, conn)
}

crate::checkpoint_cases!(|policy| crate::support::sqlite_store_with(
    SqliteOptions::new().checkpoints(policy)
));

/// The whole store contract with a checkpoint at every step.
mod conformance_checkpoints {
    use baton_sql::{Checkpoints, SqliteOptions};

    use crate::support::sqlite_store_with;

    baton_testkit::store_conformance!(
        optional: sqlite_store_with(SqliteOptions::new().checkpoints(Checkpoints::every(1, 0)))
            .await
    );
}

/// A run written by the release before checkpoints, its database upgraded on open, loads from
/// its whole log and goes on (see `checkpoints::a_run_from_before_checkpoints_goes_on`).
#[tokio::test]
async fn a_run_written_before_checkpoints_goes_on_after_the_upgrade() {
    let (_dir, url, mut conn) = database_as_of(crate::cases::migrations_before(
        sqlx::migrate!("./migrations/sqlite"),
        20261209120000,
    ))
    .await;
    let flow = baton_core::FlowId::new();
    for sql in crate::checkpoints::run_before_checkpoints(flow, true) {
        sqlx::query(&sql).execute(&mut conn).await.unwrap();
    }
    conn.close().await.unwrap();
    let store = SqliteStore::open_with(
        &url,
        SqliteOptions::new().checkpoints(baton_sql::Checkpoints::every(1, 0)),
    )
    .await
    .unwrap();
    let whole = store.replaying_whole_log();
    crate::checkpoints::a_run_from_before_checkpoints_goes_on(&store, &whole, flow).await;
}
