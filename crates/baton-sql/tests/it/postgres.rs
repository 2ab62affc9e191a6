//! The PostgreSQL store.

use baton_core::store::Store;
use baton_sql::{PostgresOptions, PostgresStore};
use sqlx::Connection;

use crate::support::{fresh_schema, pg_connect, postgres_store, postgres_store_with, postgres_url};

mod conformance {
    use crate::support::postgres_store;

    baton_testkit::store_conformance!(optional: postgres_store().await);
}

/// Time limits, deadlines and cancellation.
mod limits {
    use crate::support::postgres_store;

    baton_testkit::limits_conformance!(optional: postgres_store().await);
}

/// Per-atom retry policies.
mod policies {
    use crate::support::postgres_store;

    baton_testkit::policies_conformance!(optional: postgres_store().await);
}

/// Typed tasks' values through the store and a resume.
mod typed {
    use crate::support::postgres_store;

    baton_testkit::typed_conformance!(optional: postgres_store().await);
}

/// The same contract, with steps written long (the default of 0.2.0; short is the default now).
mod conformance_long_steps {
    use baton_sql::{PostgresOptions, StepFormat};

    use crate::support::postgres_store_with;

    baton_testkit::store_conformance!(
        optional: postgres_store_with(PostgresOptions::new().step_format(StepFormat::Long)).await
    );
}

crate::generic_cases!(
    postgres_store().await,
    postgres_store_with(PostgresOptions::new().max_value_bytes(1024)).await
);

async fn tables_in(conn: &mut sqlx::PgConnection, schema: &str) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1 \
         ORDER BY table_name",
    )
    .bind(schema)
    .fetch_all(conn)
    .await
    .unwrap()
}

async fn search_path(conn: &mut sqlx::PgConnection) -> String {
    sqlx::query_scalar("SHOW search_path")
        .fetch_one(conn)
        .await
        .unwrap()
}

/// Drops `schema` and everything in it.
pub async fn drop_schema(url: &str, schema: &str) {
    let mut conn = pg_connect(url, None).await;
    sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
}

/// A fresh schema with `migrator`'s migrations applied (a database as an earlier release left
/// it), and a connection to it.
async fn schema_as_of(
    url: &str,
    migrator: sqlx::migrate::Migrator,
) -> (String, sqlx::PgConnection) {
    let schema = fresh_schema();
    let mut plain = pg_connect(url, None).await;
    sqlx::query(&format!("CREATE SCHEMA \"{schema}\""))
        .execute(&mut plain)
        .await
        .unwrap();
    plain.close().await.unwrap();
    let mut conn = pg_connect(url, Some(&schema)).await;
    migrator.run(&mut conn).await.unwrap();
    (schema, conn)
}

/// Opens a store in `schema`, or `None` (skipped) without a server.
async fn open(url: &str, schema: &str) -> Option<PostgresStore> {
    match PostgresStore::connect_with(url, PostgresOptions::new().schema(schema)).await {
        Ok(store) => Some(store),
        Err(e) if e.is_transient() => {
            crate::support::skip(&format!("PostgreSQL is unreachable: {e:?}"))
        }
        Err(e) => panic!("{e:?}"),
    }
}

#[tokio::test]
async fn migrations_create_the_schema_once_without_leaking_the_search_path() {
    let Some(url) = postgres_url() else { return };
    let schema = fresh_schema();
    let Some(store) = open(&url, &schema).await else {
        return;
    };
    let mut plain = pg_connect(&url, None).await;
    let default_path = search_path(&mut plain).await;

    assert_eq!(
        tables_in(&mut plain, &schema).await,
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
    let functions: Vec<String> = sqlx::query_scalar(
        "SELECT p.proname::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
         WHERE n.nspname = $1 ORDER BY 1",
    )
    .bind(&schema)
    .fetch_all(&mut plain)
    .await
    .unwrap();
    assert_eq!(
        functions,
        [
            "check_fence",
            "claimable_jobs",
            "create_flow",
            "lock_held",
            "now_ms",
            "refuse_claims_of_earlier_releases"
        ]
    );
    let flow = crate::cases::new_flow(&store).await;

    // Nobody else's search path changed: a new plain connection has the server's default.
    let mut fresh = pg_connect(&url, None).await;
    let path = search_path(&mut fresh).await;
    assert_eq!(path, default_path);
    assert!(!path.contains(&schema), "{path}");

    // Migrating again, and reopening, change nothing.
    store.migrate().await.unwrap();
    store.close().await;
    let again = open(&url, &schema).await.unwrap();
    let applied: i64 =
        sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {schema}._sqlx_migrations"))
            .fetch_one(&mut plain)
            .await
            .unwrap();
    assert_eq!(applied, crate::support::migration_count("postgres"));
    assert_eq!(again.load_flow(flow.id).await.unwrap().flow.id, flow.id);
    again.close().await;
    plain.close().await.unwrap();
    fresh.close().await.unwrap();
    drop_schema(&url, &schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_opens_of_a_new_schema_both_succeed() {
    let Some(url) = postgres_url() else { return };
    for _ in 0..3 {
        let schema = fresh_schema();
        let (a, b) = tokio::join!(
            tokio::spawn({
                let (url, schema) = (url.clone(), schema.clone());
                async move { open(&url, &schema).await }
            }),
            tokio::spawn({
                let (url, schema) = (url.clone(), schema.clone());
                async move { open(&url, &schema).await }
            }),
        );
        let (Some(a), Some(b)) = (a.unwrap(), b.unwrap()) else {
            return;
        };
        let flow = crate::cases::new_flow(&a).await;
        assert_eq!(b.load_flow(flow.id).await.unwrap().flow.id, flow.id);
        a.close().await;
        b.close().await;
        drop_schema(&url, &schema).await;
    }
}

#[tokio::test]
async fn an_unreachable_server_is_unavailable() {
    // Nothing listens on port 1.
    let err = PostgresStore::connect("postgres://postgres@127.0.0.1:1/postgres")
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err:?}");
}

/// A store writing long steps and one writing short ones share a schema (see
/// `cases::step_formats_mix`).
#[tokio::test]
async fn step_formats_mix() {
    let Some(url) = postgres_url() else { return };
    let schema = fresh_schema();
    // Short steps are the default.
    let Some(short) = open(&url, &schema).await else {
        return;
    };
    let long = PostgresStore::connect_with(
        &url,
        PostgresOptions::new()
            .schema(&schema)
            .step_format(baton_sql::StepFormat::Long),
    )
    .await
    .unwrap();
    crate::cases::step_formats_mix(long.clone(), short.clone()).await;
    // Both forms are in the log, each stamped with the oldest version that reads it.
    let mut conn = pg_connect(&url, Some(&schema)).await;
    let forms: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT left(body, 6), model_version::bigint, count(*) FROM steps GROUP BY 1, 2 ORDER BY 1",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    let forms: Vec<(&str, i64)> = forms.iter().map(|(f, v, _)| (f.as_str(), *v)).collect();
    assert_eq!(forms, [(r#"[{"o":"#, 2), (r#"[{"op""#, 1)]);
    conn.close().await.unwrap();
    long.close().await;
    short.close().await;
    drop_schema(&url, &schema).await;
}

#[tokio::test]
async fn a_stale_write_to_a_purged_run_is_refused() {
    let Some(url) = postgres_url() else { return };
    let schema = fresh_schema();
    let (Some(stale), Some(other)) = (open(&url, &schema).await, open(&url, &schema).await) else {
        return;
    };
    crate::cases::a_stale_write_to_a_purged_run_is_refused(&stale, &other, |s| {
        s.backdate_cached_views(std::time::Duration::from_secs(2 * 3600));
    })
    .await;
    stale.close().await;
    other.close().await;
    drop_schema(&url, &schema).await;
}

#[tokio::test]
async fn stale_knowledge_is_caught_by_the_log() {
    let Some(url) = postgres_url() else { return };
    let schema = fresh_schema();
    let (Some(first), Some(second)) = (open(&url, &schema).await, open(&url, &schema).await) else {
        return;
    };
    crate::cases::stale_knowledge_is_caught_by_the_log(&first, &second).await;
    first.close().await;
    second.close().await;
    drop_schema(&url, &schema).await;
}

/// A schema last written by a baton from before the step log, with a run in progress, is
/// upgraded on connect, and the run goes on (see `cases::old_run_goes_on`).
#[tokio::test]
async fn a_run_in_progress_survives_the_upgrade_to_the_step_log() {
    let Some(url) = postgres_url() else { return };
    let (schema, mut conn) = schema_as_of(
        &url,
        crate::cases::before_the_step_log(sqlx::migrate!("./migrations/postgres")),
    )
    .await;
    let flow = baton_core::FlowId::new();
    for sql in crate::cases::old_run(flow) {
        sqlx::query(&sql).execute(&mut conn).await.unwrap();
    }
    conn.close().await.unwrap();
    // Connecting applies the step log's migration.
    let Some(store) = open(&url, &schema).await else {
        return;
    };
    crate::cases::old_run_goes_on(&store, flow).await;
    store.close().await;
    drop_schema(&url, &schema).await;
}

/// Purging ended runs leaves no row of theirs in any table, and none of the others' goes.
#[tokio::test]
async fn purged_runs_leave_no_rows_behind() {
    use baton_core::{Engine, FlowState};
    use baton_testkit::{scenarios, Log};

    let Some(url) = postgres_url() else { return };
    let schema = fresh_schema();
    let Some(store) = open(&url, &schema).await else {
        return;
    };
    let engine = Engine::new(store.clone());
    let flow = scenarios::long_linear(&Log::new(), 5);
    for _ in 0..3 {
        let outcome = engine
            .start(
                &flow,
                baton_testkit::inputs([("seed", serde_json::json!(1))]),
            )
            .await
            .unwrap();
        assert_eq!(outcome.state, FlowState::Success);
    }
    let kept = engine
        .create(
            &flow,
            baton_testkit::inputs([("seed", serde_json::json!(2))]),
        )
        .await
        .unwrap();
    let mut conn = pg_connect(&url, Some(&schema)).await;
    // As if they had ended a day ago: purges keep runs that ended in the last ten minutes.
    sqlx::query("UPDATE flows SET updated_at = now() - interval '1 day' WHERE state = 'SUCCESS'")
        .execute(&mut conn)
        .await
        .unwrap();
    let mut counts = Vec::new();
    let cutoff = chrono::Utc::now() + chrono::Duration::seconds(1);
    assert_eq!(store.purge_flows(cutoff, 2).await.unwrap(), 2);
    assert_eq!(store.purge_flows(cutoff, 2).await.unwrap(), 1);
    for table in ["flows", "atoms", "steps", "history"] {
        let n: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(&mut conn)
            .await
            .unwrap();
        counts.push(n);
    }
    // What is left is the run that has not started: its row and its atoms.
    let atoms = i64::try_from(store.load_flow(kept).await.unwrap().atoms.len()).unwrap();
    assert_eq!(counts, [1, atoms, 0, 0]);
    assert_eq!(
        engine.run(&flow, kept).await.unwrap().state,
        FlowState::Success
    );
    conn.close().await.unwrap();
    store.close().await;
    drop_schema(&url, &schema).await;
}

/// A board last written by baton 0.3 is upgraded on connect: the job it claimed is pinned to
/// version 1, and a claim made by 0.3's own statement, from a process still running while the
/// migration was applied, is refused (see `cases::old_jobs_after_the_upgrade`).
#[tokio::test]
async fn a_board_of_the_previous_release_is_upgraded_and_its_claims_refused() {
    let Some(url) = postgres_url() else { return };
    let (schema, mut conn) = schema_as_of(
        &url,
        crate::cases::before_versions(sqlx::migrate!("./migrations/postgres")),
    )
    .await;
    let (claimed, waiting) = (baton_core::JobId::new(), baton_core::JobId::new());
    for sql in crate::cases::old_jobs(claimed, waiting, "2026-11-01T10:00:00Z") {
        sqlx::query(&sql).execute(&mut conn).await.unwrap();
    }
    let Some(store) = open(&url, &schema).await else {
        return;
    };
    let board = baton_sql::PostgresJobBoard::new(&store);
    // The claim statement of baton 0.3.0, word for word.
    const OLD_CLAIM: &str = "WITH fresh AS ( \
         SELECT j.id, j.priority, j.seq FROM jobs j \
          WHERE j.state = 'UNCLAIMED' AND (j.job_key IS NULL OR NOT EXISTS ( \
            SELECT 1 FROM jobs k WHERE k.job_key = j.job_key \
               AND k.state IN ('UNCLAIMED', 'CLAIMED') AND k.seq < j.seq)) \
          ORDER BY j.priority DESC, j.seq LIMIT $4 FOR UPDATE OF j SKIP LOCKED \
         ), stale AS ( \
         SELECT j.id, j.priority, j.seq FROM jobs j \
          WHERE j.state = 'CLAIMED' AND j.lease_expires_at <= (SELECT now_ms()) \
            AND (j.job_key IS NULL OR NOT EXISTS ( \
            SELECT 1 FROM jobs k WHERE k.job_key = j.job_key \
               AND k.state IN ('UNCLAIMED', 'CLAIMED') AND k.seq < j.seq)) \
          ORDER BY j.priority DESC, j.seq LIMIT $4 FOR UPDATE OF j SKIP LOCKED \
         ), picked AS ( \
         SELECT id FROM (SELECT * FROM fresh UNION ALL SELECT * FROM stale) c \
          ORDER BY priority DESC, seq LIMIT $4 \
         ), claimed AS ( \
         UPDATE jobs SET state = 'CLAIMED', owner = $1, owner_lock = $2, \
                lease_expires_at = now_ms() + $3, token = token + 1, \
                attempts = attempts + 1, updated_at = now() \
           FROM picked WHERE jobs.id = picked.id RETURNING jobs.* \
         ), fenced AS ( \
         INSERT INTO fences (job_id, token) SELECT id, token FROM claimed \
         ON CONFLICT (job_id) DO UPDATE SET token = EXCLUDED.token \
         ) SELECT count(*) FROM claimed";
    crate::cases::old_jobs_after_the_upgrade(&board, claimed, waiting, || async {
        sqlx::query_scalar::<_, i64>(OLD_CLAIM)
            .bind(baton_core::ConductorId::new().as_uuid())
            .bind(None::<i64>)
            .bind(60_000_i64)
            .bind(5_i64)
            .fetch_one(&mut conn)
            .await
            .map(|n| u64::try_from(n).unwrap_or(0))
    })
    .await;
    conn.close().await.unwrap();
    store.close().await;
    drop_schema(&url, &schema).await;
}

/// A board written by the release before flat claims (a job in every state) is upgraded on
/// connect, and its jobs are listed, claimed (through `claimable_jobs`) and purged as they were
/// (see `cases::jobs_before_flat_claims_after_the_upgrade`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_written_before_flat_claims_work_after_the_upgrade() {
    let Some(url) = postgres_url() else { return };
    let (schema, mut conn) = schema_as_of(
        &url,
        crate::cases::before_flat_claims(sqlx::migrate!("./migrations/postgres")),
    )
    .await;
    let (old, sql) = crate::cases::jobs_before_flat_claims("2026-12-08T10:00:00Z");
    sqlx::query(&sql).execute(&mut conn).await.unwrap();
    let Some(store) = open(&url, &schema).await else {
        return;
    };
    let board = baton_sql::PostgresJobBoard::new(&store);
    crate::cases::jobs_before_flat_claims_after_the_upgrade(&board, &old).await;
    conn.close().await.unwrap();
    store.close().await;
    drop_schema(&url, &schema).await;
}

/// A board written by the release before watched jobs is upgraded on connect: a job it posted
/// is waited for (the wait marks it) and its end reaches the waiter at once (see
/// `cases::a_job_posted_before_the_upgrade_is_waited_for`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_posted_before_watched_jobs_is_waited_for_after_the_upgrade() {
    let Some(url) = postgres_url() else { return };
    let (schema, mut conn) = schema_as_of(
        &url,
        crate::cases::before_watched(sqlx::migrate!("./migrations/postgres")),
    )
    .await;
    let job = baton_core::JobId::new();
    sqlx::query(&crate::cases::job_before_watched(
        job,
        "2026-12-07T10:00:00Z",
    ))
    .execute(&mut conn)
    .await
    .unwrap();
    let Some(store) = open(&url, &schema).await else {
        return;
    };
    let watched: bool = sqlx::query_scalar("SELECT watched FROM jobs WHERE id = $1")
        .bind(job.as_uuid())
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert!(!watched, "a job posted before the upgrade is not watched");
    let board = baton_sql::PostgresJobBoard::new(&store);
    crate::cases::a_job_posted_before_the_upgrade_is_waited_for(&board, job).await;
    conn.close().await.unwrap();
    store.close().await;
    drop_schema(&url, &schema).await;
}

crate::checkpoint_cases!(|policy| crate::support::postgres_store_with(
    PostgresOptions::new().checkpoints(policy)
));

/// The whole store contract with a checkpoint at every step.
mod conformance_checkpoints {
    use baton_sql::{Checkpoints, PostgresOptions};

    use crate::support::postgres_store_with;

    baton_testkit::store_conformance!(
        optional: postgres_store_with(
            PostgresOptions::new().checkpoints(Checkpoints::every(1, 0))
        )
        .await
    );
}

/// A run written by the release before checkpoints, its schema upgraded on connecting, loads
/// from its whole log and goes on (see `checkpoints::a_run_from_before_checkpoints_goes_on`).
#[tokio::test]
async fn a_run_written_before_checkpoints_goes_on_after_the_upgrade() {
    let Some(url) = postgres_url() else { return };
    let (schema, mut conn) = schema_as_of(
        &url,
        crate::cases::migrations_before(sqlx::migrate!("./migrations/postgres"), 20261209120000),
    )
    .await;
    let flow = baton_core::FlowId::new();
    for sql in crate::checkpoints::run_before_checkpoints(flow, false) {
        sqlx::query(&sql).execute(&mut conn).await.unwrap();
    }
    let store = match PostgresStore::connect_with(
        &url,
        PostgresOptions::new()
            .schema(&schema)
            .checkpoints(baton_sql::Checkpoints::every(1, 0)),
    )
    .await
    {
        Ok(store) => store,
        Err(e) => panic!("{e:?}"),
    };
    let whole = store.replaying_whole_log();
    crate::checkpoints::a_run_from_before_checkpoints_goes_on(&store, &whole, flow).await;
}

/// A board vacuums its churning tables itself once enough dead rows piled up (the main test
/// server runs with autovacuum off, so nobody else does), and claims, fences and ends work on
/// through it: after 2 100 jobs claimed (each claim leaves a dead row), a claim vacuums
/// `jobs`; the claims hold, their fences work, and a new job is claimed under token 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_board_vacuums_its_tables_and_claims_go_on() {
    use baton_core::board::{JobBoard, JobQuery, NewJob};
    use baton_core::{ConductorId, FencingToken, JobState};
    use std::time::{Duration, Instant};

    let Some(url) = postgres_url() else { return };
    let schema = fresh_schema();
    let Some(store) = open(&url, &schema).await else {
        return;
    };
    let board = baton_sql::PostgresJobBoard::new(&store).with_vacuum(Some(Duration::ZERO));
    let offer = baton_testkit::board::offer();
    let owner = ConductorId::new();
    let lease = Duration::from_secs(600);
    for i in 0..2100 {
        board
            .post(NewJob::new(format!("churn-{i}"), "noop"))
            .await
            .unwrap();
    }
    let mut fences = Vec::new();
    loop {
        let claims = board.claim_up_to(owner, lease, 100, &offer).await.unwrap();
        if claims.is_empty() {
            break;
        }
        fences.extend(claims.iter().map(|c| c.fence));
    }
    assert_eq!(fences.len(), 2100);
    let mut conn = pg_connect(&url, Some(&schema)).await;
    // The server counts dead rows a moment after the statements that left them: claims look
    // again until it has, and one of them vacuums.
    let started = Instant::now();
    loop {
        assert!(board.claim(owner, lease, &offer).await.unwrap().is_none());
        let vacuumed: bool = sqlx::query_scalar(
            "SELECT last_vacuum IS NOT NULL FROM pg_stat_user_tables WHERE relid = 'jobs'::regclass",
        )
        .fetch_one(&mut conn)
        .await
        .unwrap();
        if vacuumed {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no claim vacuumed the jobs table"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let claimed = board
        .list(&JobQuery::all().state(JobState::Claimed))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 2100);
    board.heartbeat(fences[0], lease, true).await.unwrap();
    board
        .consume(fences[0], serde_json::json!("ok"))
        .await
        .unwrap();
    assert!(board.heartbeat(fences[0], lease, false).await.is_err());
    assert!(board.heartbeat(fences[2099], lease, false).await.is_ok());
    let new = board.post(NewJob::new("after", "noop")).await.unwrap();
    let claim = board.claim(owner, lease, &offer).await.unwrap().unwrap();
    assert_eq!((claim.job.id, claim.fence.token), (new.id, FencingToken(1)));
    conn.close().await.unwrap();
    store.close().await;
    drop_schema(&url, &schema).await;
}
