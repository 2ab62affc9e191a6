//! The console's `/metrics`: the database gauges against what the store and board hold, on
//! memory, SQLite and PostgreSQL; how long they are kept; and the router a conductor serves
//! alone.

// Test helpers panic on purpose: that is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use baton_console::metrics::{self, CONTENT_TYPE, DATABASE_GAUGES_FOR};
use baton_console::Console;
use baton_core::board::{ConductorInfo, NewJob, Offer};
use baton_core::store::Store;
use baton_core::{Atom, ConductorId, Engine, Flow, JobBoard, MemoryJobBoard, MemoryStore};
use baton_testkit::prometheus::{self, Scrape};
use serde_json::json;
use tower::ServiceExt;

/// `GET path` from `router`: status, content type and body.
async fn get(router: axum::Router, path: &str) -> (StatusCode, String, String) {
    let response = router
        .oneshot(Request::get(path).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    (
        status,
        content_type,
        String::from_utf8(body.to_vec()).unwrap(),
    )
}

/// The console's `/metrics`, parsed.
async fn scrape(console: &Console) -> Scrape {
    let (status, content_type, body) = get(console.clone().router(), "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(content_type, CONTENT_TYPE);
    prometheus::parse(&body).unwrap_or_else(|e| panic!("{e}\n{body}"))
}

fn one_step() -> baton_core::CompiledFlow {
    Flow::linear("one")
        .add(Atom::from_fn("a", |_| async { Ok(json!(1)) }))
        .compile()
        .unwrap()
}

/// Two runs waiting, one ended; three jobs of factory `a` and one of `b` waiting (one of
/// them with a name that needs escaping); one conductor alive. Then the gauges must say so.
async fn gauges_match(store: Arc<dyn Store>, board: Arc<dyn JobBoard>, exact_estimate: bool) {
    let engine = Engine::from_arc(store.clone());
    let flow = one_step();
    for _ in 0..2 {
        engine.create(&flow, Default::default()).await.unwrap();
    }
    engine.start(&flow, Default::default()).await.unwrap();
    for factory in ["a", "a", "a", "b\"q"] {
        board.post(NewJob::new("job", factory)).await.unwrap();
    }
    let now = chrono::Utc::now();
    board
        .register(&ConductorInfo {
            id: ConductorId::new(),
            name: "c".into(),
            host: "h".into(),
            pid: std::process::id(),
            started_at: now,
            last_seen: now,
            offer: Offer::new(),
        })
        .await
        .unwrap();

    let console = Console::new(store, board);
    let s = scrape(&console).await;
    assert_eq!(s.value("baton_runs", &[("state", "PENDING")]), Some(2.0));
    assert_eq!(s.sum("baton_runs"), 2.0, "only unfinished runs are counted");
    assert_eq!(s.samples("baton_runs").count(), 6, "every unfinished state");
    assert_eq!(
        s.value("baton_backlog_jobs", &[("factory", "a")]),
        Some(3.0)
    );
    assert_eq!(
        s.value("baton_backlog_jobs", &[("factory", "b\"q")]),
        Some(1.0)
    );
    assert_eq!(s.value("baton_conductors_alive", &[]), Some(1.0));
    assert_eq!(s.value("baton_database_up", &[]), Some(1.0));
    match s.value("baton_runs_stored", &[]) {
        Some(stored) if exact_estimate => assert_eq!(stored, 3.0),
        // An estimate that may lag, but never below the unfinished runs.
        Some(stored) => assert!(stored >= 2.0, "{stored}"),
        None => assert!(!exact_estimate, "no baton_runs_stored"),
    }
    for family in ["baton_runs", "baton_backlog_jobs", "baton_conductors_alive"] {
        assert_eq!(s.families[family].kind, "gauge", "{family}");
    }
}

#[tokio::test]
async fn memory_gauges_match_the_store_and_board() {
    let store = MemoryStore::new();
    let board = MemoryJobBoard::new(&store);
    gauges_match(Arc::new(store), Arc::new(board), false).await;
}

#[tokio::test]
async fn sqlite_gauges_match_the_store_and_board() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("baton.db").display());
    let backends = baton_sql::open(&url).await.unwrap();
    gauges_match(backends.store, backends.board, true).await;
}

#[tokio::test]
async fn postgres_gauges_match_the_store_and_board() {
    let ci = std::env::var("CI").as_deref() == Ok("true");
    let Ok(url) = std::env::var("BATON_TEST_POSTGRES_URL") else {
        assert!(!ci, "BATON_TEST_POSTGRES_URL must be set when CI=true");
        eprintln!("skipped: BATON_TEST_POSTGRES_URL is not set");
        return;
    };
    let schema = format!("console_metrics_{}", uuid_suffix());
    let options = baton_sql::OpenOptions::new().schema(&schema);
    let backends = match baton_sql::open_with(&url, options).await {
        Ok(b) => b,
        Err(e) if !ci => {
            eprintln!("skipped: PostgreSQL unreachable: {e}");
            return;
        }
        Err(e) => panic!("PostgreSQL unreachable (CI=true): {e}"),
    };
    gauges_match(backends.store, backends.board, false).await;
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(&mut conn)
        .await
        .unwrap();
}

fn uuid_suffix() -> String {
    format!(
        "{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

#[tokio::test(start_paused = true)]
async fn database_gauges_are_kept_for_five_seconds() {
    let store = MemoryStore::new();
    let board = Arc::new(MemoryJobBoard::new(&store));
    let console = Console::new(Arc::new(store), board.clone());
    let router = console.router();
    let backlog = |text: &str| {
        prometheus::parse(text)
            .unwrap()
            .value("baton_backlog_jobs", &[("factory", "a")])
    };
    assert_eq!(backlog(&get(router.clone(), "/metrics").await.2), None);
    board.post(NewJob::new("job", "a")).await.unwrap();
    tokio::time::advance(DATABASE_GAUGES_FOR - Duration::from_millis(1)).await;
    assert_eq!(
        backlog(&get(router.clone(), "/metrics").await.2),
        None,
        "kept"
    );
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(
        backlog(&get(router, "/metrics").await.2),
        Some(1.0),
        "queried again"
    );
}

#[tokio::test]
async fn the_conductor_router_serves_what_this_process_counted() {
    let exporter = metrics::install().unwrap();
    // Once per process: a second call hands back the same recorder.
    metrics::install().unwrap();
    assert!(metrics::installed().is_some());
    // Built after the recorder: its steps are counted.
    let engine = Engine::new(MemoryStore::new());
    engine.start(&one_step(), Default::default()).await.unwrap();

    let router = metrics::metrics_router(exporter);
    let (status, content_type, body) = get(router.clone(), "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(content_type, CONTENT_TYPE);
    let s = prometheus::parse(&body).unwrap_or_else(|e| panic!("{e}\n{body}"));
    let steps = s
        .value("baton_steps_committed_total", &[("store", "memory")])
        .unwrap();
    assert!(steps >= 1.0, "{steps}");
    assert_eq!(s.families["baton_step_commit_seconds"].kind, "histogram");
    assert!(
        s.value("baton_runs_ended_total", &[("state", "SUCCESS")])
            .unwrap()
            >= 1.0
    );
    // No database gauges: those are the console's.
    assert!(!s.families.contains_key("baton_runs"));
    assert_eq!(get(router, "/other").await.0, StatusCode::NOT_FOUND);
}
