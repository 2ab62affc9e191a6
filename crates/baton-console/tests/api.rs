//! The console's JSON API, served on a real listener (127.0.0.1, a port of its own) and asked
//! over HTTP, on SQLite and on PostgreSQL (and the in-memory backends).
//!
//! PostgreSQL tests need a server: `BATON_TEST_POSTGRES_URL`, e.g.
//! `postgres://postgres@127.0.0.1:5432/postgres`. Without it they are skipped, unless
//! `CI=true`, where they fail. Each uses a schema of its own, dropped at the end.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stderr,
    missing_docs
)]

use std::sync::Arc;
use std::time::Duration;

use baton_console::{AdminToken, Console, LiveSource};
use baton_core::board::{ConductorInfo, JobBoard, NewJob, Offer};
use baton_core::store::{FlowQuery, Store};
use baton_core::{Atom, ConductorId, Engine, Flow, FlowId, FnTask, JobId};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "test-admin-token-0123456789";

/// Where a test's database is, and how to clean it up.
enum Db {
    /// In process memory: each console gets a new store and board.
    Memory,
    Sqlite {
        url: String,
        _dir: tempfile::TempDir,
    },
    Postgres {
        url: String,
        schema: String,
    },
}

impl Db {
    fn sqlite() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("baton.db").display());
        Db::Sqlite { url, _dir: dir }
    }

    /// A fresh schema on the test server; `None` (skipped) without one, unless `CI=true`.
    fn postgres() -> Option<Self> {
        let ci = std::env::var("CI").as_deref() == Ok("true");
        match std::env::var("BATON_TEST_POSTGRES_URL") {
            Ok(url) if !url.is_empty() => Some(Db::Postgres {
                url,
                schema: format!("baton_console_{}", uuid_like()),
            }),
            _ => {
                assert!(!ci, "BATON_TEST_POSTGRES_URL must be set when CI=true");
                eprintln!("skipped: BATON_TEST_POSTGRES_URL is not set");
                None
            }
        }
    }

    async fn open(&self) -> baton_sql::Backends {
        match self {
            Db::Memory => {
                let store = baton_core::MemoryStore::new();
                let board = baton_core::MemoryJobBoard::new(&store);
                baton_sql::Backends {
                    store: Arc::new(store),
                    board: Arc::new(board),
                }
            }
            Db::Sqlite { url, .. } => baton_sql::open(url).await.unwrap(),
            Db::Postgres { url, schema } => {
                baton_sql::open_with(url, baton_sql::OpenOptions::new().schema(schema))
                    .await
                    .unwrap()
            }
        }
    }

    fn live(&self) -> LiveSource {
        match self {
            Db::Memory | Db::Sqlite { .. } => LiveSource::Poll,
            Db::Postgres { url, schema } => LiveSource::postgres(url.clone(), schema.clone()),
        }
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        if let Db::Postgres { url, schema } = self {
            let (url, schema) = (url.clone(), schema.clone());
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    use sqlx::Connection;
                    if let Ok(mut conn) = sqlx::PgConnection::connect(&url).await {
                        let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                            .execute(&mut conn)
                            .await;
                    }
                });
            })
            .join();
        }
    }
}

fn uuid_like() -> String {
    FlowId::new().to_string().replace('-', "")
}

/// A console serving on 127.0.0.1, port chosen by the system.
struct Served {
    base: String,
    http: reqwest::Client,
    store: Arc<dyn Store>,
    board: Arc<dyn JobBoard>,
    shutdown: CancellationToken,
    server: tokio::task::JoinHandle<Result<(), baton_console::Error>>,
}

impl Served {
    async fn start(db: &Db, token: Option<&str>) -> Self {
        let backends = db.open().await;
        let (store, board) = (backends.store.clone(), backends.board.clone());
        let mut console = Console::new(backends.store, backends.board).live(db.live());
        if let Some(token) = token {
            console = console.admin_token(AdminToken::new(token, "test").unwrap());
        }
        let bound = console.bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let base = format!("http://{}", bound.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(bound.run(shutdown.clone()));
        Served {
            base,
            http: reqwest::Client::new(),
            store,
            board,
            shutdown,
            server,
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.server.await.unwrap().unwrap();
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap()
    }

    /// A GET answered 200 with JSON.
    async fn json(&self, path: &str) -> Value {
        let r = self.get(path).await;
        assert_eq!(r.status(), StatusCode::OK, "GET {path}");
        r.json().await.unwrap()
    }

    /// A POST with the admin token (or `token`), and `body` as JSON if given.
    async fn post(
        &self,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> reqwest::Response {
        let mut req = self.http.post(format!("{}{path}", self.base));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        req.send().await.unwrap()
    }
}

/// Checks an error answer: its status, its JSON `code`, and an `error` sentence.
async fn refused(r: reqwest::Response, status: StatusCode, code: &str) -> String {
    assert_eq!(r.status(), status, "{:?}", r.url().path());
    assert_eq!(
        r.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/json"),
        "an error is JSON"
    );
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], code, "{body}");
    let sentence = body["error"].as_str().unwrap().to_owned();
    assert!(!sentence.is_empty());
    sentence
}

/// A flow of three tasks in a line.
fn three_steps() -> baton_core::CompiledFlow {
    let task = || FnTask::new(|_| async { Ok(json!("done")) });
    Flow::linear("three")
        .add(Atom::task("one", task()))
        .add(Atom::task("two", task()))
        .add(Atom::task("three", task()))
        .compile()
        .unwrap()
}

/// A new, pending run (created by an engine, so its graph is recorded).
async fn created_run(store: &Arc<dyn Store>) -> FlowId {
    Engine::from_arc(store.clone())
        .create(&three_steps(), Default::default())
        .await
        .unwrap()
}

/// A run that ran to its end.
async fn finished_run(store: &Arc<dyn Store>) -> FlowId {
    let engine = Engine::from_arc(store.clone());
    let flow = three_steps();
    let id = engine.create(&flow, Default::default()).await.unwrap();
    assert!(engine.run(&flow, id).await.unwrap().is_success());
    id
}

fn job(name: &str) -> NewJob {
    NewJob::new(name, "noop")
}

/// Every read endpoint answers what the library holds, in the command line's shapes.
async fn reads(db: Db) {
    let s = Served::start(&db, None).await;
    let older = finished_run(&s.store).await;
    let newer = created_run(&s.store).await;

    // The flows list is `flows list --json`: the store's records, newest first.
    let listed = s.json("/api/flows").await;
    let expected =
        serde_json::to_value(s.store.list_flows(&FlowQuery::all()).await.unwrap()).unwrap();
    assert_eq!(listed, expected);
    let ids: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [newer.to_string(), older.to_string()]);

    // Filters.
    let running = s.json("/api/flows?state=success").await;
    assert_eq!(running.as_array().unwrap().len(), 1);
    assert_eq!(running[0]["id"], older.to_string());
    let unfinished = s.json("/api/flows?unfinished=true").await;
    assert_eq!(unfinished.as_array().unwrap().len(), 1);
    assert_eq!(unfinished[0]["id"], newer.to_string());
    assert_eq!(
        s.json("/api/flows?name=three")
            .await
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(s.json("/api/flows?name=other").await, json!([]));
    assert_eq!(s.json("/api/flows?factory=none").await, json!([]));
    assert_eq!(
        s.json("/api/flows?since=2000-01-01T00:00:00Z&until=2999-01-01T00:00:00Z")
            .await
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        s.json("/api/flows?since=2999-01-01T00:00:00Z").await,
        json!([])
    );
    assert_eq!(
        s.json("/api/flows?until=2000-01-01T00:00:00Z").await,
        json!([])
    );
    assert_eq!(s.json("/api/flows?stranded=true").await, json!([]));

    // Paging: a full page links to the next one.
    let first = s.get("/api/flows?limit=1&name=three").await;
    assert_eq!(first.status(), StatusCode::OK);
    let link = first.headers()["link"].to_str().unwrap().to_owned();
    assert_eq!(
        link,
        format!("</api/flows?limit=1&name=three&after={newer}>; rel=\"next\"")
    );
    let next = s
        .json(&format!("/api/flows?limit=1&name=three&after={newer}"))
        .await;
    assert_eq!(next[0]["id"], older.to_string());
    let last = s
        .json(&format!("/api/flows?limit=1&name=three&after={older}"))
        .await;
    assert_eq!(last, json!([]));
    let partial = s.get("/api/flows?limit=5").await;
    assert!(
        partial.headers().get("link").is_none(),
        "a page not full is the last"
    );

    // One run: `flows show --json`, its graph and its job.
    let detail = s.json(&format!("/api/flows/{older}")).await;
    let view = baton_core::store::RunView::load(&*s.store, older)
        .await
        .unwrap();
    let shown = serde_json::to_value(&view).unwrap();
    for key in ["flow", "atoms", "history"] {
        assert_eq!(detail[key], shown[key], "{key}");
    }
    assert_eq!(detail["job"], Value::Null);
    let nodes = detail["graph"]["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3);
    assert!(nodes
        .iter()
        .all(|n| n["state"] == "SUCCESS" && n["kind"].is_string()));
    assert_eq!(
        detail["graph"]["edges"],
        json!([["one", "two"], ["two", "three"]])
    );

    // Jobs: `jobs list --json`, `jobs show --json`; the key filter of flows goes through them.
    let posted = s.board.post(job("a").key("stack-a")).await.unwrap();
    let other = s.board.post(job("b").key("stack-b")).await.unwrap();
    let jobs = s.json("/api/jobs").await;
    assert_eq!(jobs, serde_json::to_value([&posted, &other]).unwrap());
    assert_eq!(
        s.json("/api/jobs?key=stack-b").await[0]["id"],
        other.id.to_string()
    );
    assert_eq!(
        s.json("/api/jobs?state=unclaimed&limit=1")
            .await
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(s.json("/api/jobs?state=parked").await, json!([]));
    assert_eq!(
        s.json(&format!("/api/jobs/{}", posted.id)).await,
        serde_json::to_value(&posted).unwrap()
    );
    let run = baton_testkit::board::job_run(posted.id, "stack");
    s.store.create_flow(&run, &[], None).await.unwrap();
    let keyed = s.json("/api/flows?key=stack-a").await;
    assert_eq!(keyed.as_array().unwrap().len(), 1);
    assert_eq!(keyed[0]["id"], run.id.to_string());
    assert_eq!(s.json("/api/flows?key=stack-none").await, json!([]));
    let with_job = s.json(&format!("/api/flows/{}", run.id)).await;
    assert_eq!(with_job["job"]["id"], posted.id.to_string());

    // Conductors, with what each runs.
    let me = ConductorInfo {
        id: ConductorId::new(),
        name: "c1".into(),
        host: "here".into(),
        pid: std::process::id(),
        started_at: chrono::Utc::now(),
        last_seen: chrono::Utc::now(),
        offer: Offer::new().with("noop", 1),
    };
    s.board.register(&me).await.unwrap();
    let claim = s
        .board
        .claim(me.id, Duration::from_secs(60), &me.offer)
        .await
        .unwrap()
        .unwrap();
    let fleet = s.json("/api/conductors").await;
    let c = fleet
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == me.id.to_string())
        .unwrap();
    assert_eq!(c["name"], "c1");
    assert_eq!(c["runs"], json!([claim.job.id.to_string()]));
    assert_eq!(
        s.json(&format!("/api/jobs?owner={}", me.id)).await[0]["id"],
        claim.job.id.to_string()
    );

    // Health.
    let health = s.get("/healthz").await;
    assert_eq!(health.status(), StatusCode::OK);
    assert_eq!(health.text().await.unwrap(), "ok");
    s.stop().await;
}

/// Bad ids, bad filters, unknown cursors and routes: 400 or 404 with a JSON error.
async fn bad_requests(db: Db) {
    let s = Served::start(&db, Some(TOKEN)).await;
    let id = finished_run(&s.store).await;
    let unknown = FlowId::new();
    use StatusCode as S;
    for (path, status, code) in [
        (
            "/api/flows/not-an-id".to_owned(),
            S::BAD_REQUEST,
            "bad_request",
        ),
        (format!("/api/flows/{unknown}"), S::NOT_FOUND, "not_found"),
        ("/api/jobs/123".to_owned(), S::BAD_REQUEST, "bad_request"),
        (
            format!("/api/jobs/{}", JobId::new()),
            S::NOT_FOUND,
            "not_found",
        ),
        (
            "/api/flows?state=sleeping".to_owned(),
            S::BAD_REQUEST,
            "bad_request",
        ),
        (
            "/api/flows?limit=0".to_owned(),
            S::BAD_REQUEST,
            "bad_request",
        ),
        (
            "/api/flows?limit=1001".to_owned(),
            S::BAD_REQUEST,
            "bad_request",
        ),
        (
            "/api/flows?limit=many".to_owned(),
            S::BAD_REQUEST,
            "bad_request",
        ),
        (
            "/api/flows?version=-1".to_owned(),
            S::BAD_REQUEST,
            "bad_request",
        ),
        (
            "/api/flows?unfinished=maybe".to_owned(),
            S::BAD_REQUEST,
            "bad_request",
        ),
        (
            "/api/flows?since=yesterday".to_owned(),
            S::BAD_REQUEST,
            "bad_request",
        ),
        (
            "/api/flows?colour=red".to_owned(),
            S::BAD_REQUEST,
            "bad_request",
        ),
        (
            "/api/flows?after=nope".to_owned(),
            S::BAD_REQUEST,
            "bad_request",
        ),
        (
            format!("/api/flows?after={unknown}"),
            S::BAD_REQUEST,
            "bad_request",
        ),
        (
            format!("/api/flows?key=k&after={unknown}"),
            S::BAD_REQUEST,
            "bad_request",
        ),
        (
            "/api/flows?key=k&stranded=true".to_owned(),
            S::BAD_REQUEST,
            "bad_request",
        ),
        (
            format!("/api/jobs?after={}", JobId::new()),
            S::BAD_REQUEST,
            "bad_request",
        ),
        (
            "/api/jobs?state=lost".to_owned(),
            S::BAD_REQUEST,
            "bad_request",
        ),
        (
            "/api/jobs?owner=someone".to_owned(),
            S::BAD_REQUEST,
            "bad_request",
        ),
        ("/api/events".to_owned(), S::BAD_REQUEST, "bad_request"),
        (
            "/api/events?flow=x".to_owned(),
            S::BAD_REQUEST,
            "bad_request",
        ),
        (
            format!("/api/events?flow={unknown}"),
            S::NOT_FOUND,
            "not_found",
        ),
        ("/api/nothing/here".to_owned(), S::NOT_FOUND, "not_found"),
        ("/api".to_owned(), S::NOT_FOUND, "not_found"),
    ] {
        refused(s.get(&path).await, status, code).await;
    }
    // An unknown cursor names the run.
    let sentence = refused(
        s.get(&format!("/api/flows?after={unknown}")).await,
        S::BAD_REQUEST,
        "bad_request",
    )
    .await;
    assert!(sentence.contains(&unknown.to_string()), "{sentence}");
    // On loopback, a Host that does not name this machine is refused (DNS rebinding).
    let rebound = s
        .http
        .get(format!("{}/api/flows", s.base))
        .header("host", "evil.example")
        .send()
        .await
        .unwrap();
    refused(rebound, S::BAD_REQUEST, "bad_request").await;
    let named = s
        .http
        .get(format!("{}/api/flows", s.base))
        .header("host", "localhost")
        .send()
        .await
        .unwrap();
    assert_eq!(named.status(), S::OK);
    // Reads are GET, actions POST.
    let wrong = s
        .http
        .delete(format!("{}/api/flows/{id}", s.base))
        .send()
        .await
        .unwrap();
    refused(wrong, S::METHOD_NOT_ALLOWED, "method_not_allowed").await;
    refused(
        s.get(&format!("/api/flows/{id}/cancel")).await,
        S::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    )
    .await;
    s.stop().await;
}

/// Actions: the admin token is needed (401 without or wrong, 403 on a read-only console);
/// bodies are limited, JSON, and of the action's shape; the state decides (409).
async fn actions(db: Db) {
    let s = Served::start(&db, Some(TOKEN)).await;
    let posted = s.board.post(job("a").key("stack-a")).await.unwrap();
    let cancel = format!("/api/jobs/{}/cancel", posted.id);
    use StatusCode as S;

    // Credentials.
    refused(
        s.post(&cancel, None, None).await,
        S::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
    let wrong = s
        .post(&cancel, Some("test-admin-token-0123456780"), None)
        .await;
    assert_eq!(wrong.headers()["www-authenticate"], "Bearer");
    refused(wrong, S::UNAUTHORIZED, "unauthorized").await;
    let basic = s
        .http
        .post(format!("{}{cancel}", s.base))
        .basic_auth("admin", Some(TOKEN))
        .send()
        .await
        .unwrap();
    refused(basic, S::UNAUTHORIZED, "unauthorized").await;

    // Bodies.
    let huge = s
        .http
        .post(format!("{}{cancel}", s.base))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body(format!(
            "{{\"revert\": true, \"pad\": \"{}\"}}",
            "x".repeat(20_000)
        ))
        .send()
        .await
        .unwrap();
    refused(huge, S::PAYLOAD_TOO_LARGE, "too_large").await;
    let malformed = s
        .http
        .post(format!("{}{cancel}", s.base))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body("{\"revert\": tru")
        .send()
        .await
        .unwrap();
    refused(malformed, S::BAD_REQUEST, "bad_request").await;
    let text = s
        .http
        .post(format!("{}{cancel}", s.base))
        .bearer_auth(TOKEN)
        .header("content-type", "text/plain")
        .body("revert please")
        .send()
        .await
        .unwrap();
    refused(text, S::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type").await;
    refused(
        s.post(&cancel, Some(TOKEN), Some(json!({"revert": "yes"})))
            .await,
        S::BAD_REQUEST,
        "bad_request",
    )
    .await;
    refused(
        s.post(&cancel, Some(TOKEN), Some(json!({"surprise": 1})))
            .await,
        S::BAD_REQUEST,
        "bad_request",
    )
    .await;
    refused(
        s.post("/api/jobs/nope/cancel", Some(TOKEN), None).await,
        S::BAD_REQUEST,
        "bad_request",
    )
    .await;

    // Cancel: the job carries the request (suspend, then revert, which wins).
    let r = s
        .post(&cancel, Some(TOKEN), Some(json!({"revert": false})))
        .await;
    assert_eq!(r.status(), S::OK);
    let j: Value = r.json().await.unwrap();
    assert_eq!(j["cancel"], "SUSPEND", "{j}");
    let r = s.post(&cancel, Some(TOKEN), None).await;
    assert_eq!(r.status(), S::OK);
    let j: Value = r.json().await.unwrap();
    assert_eq!(j["cancel"], "REVERT", "{j}");
    assert_eq!(
        s.board.get(posted.id).await.unwrap().cancel,
        Some(baton_core::board::Cancel::Revert)
    );

    // Retry wants a parked job: 409, saying why.
    let sentence = refused(
        s.post(&format!("/api/jobs/{}/retry", posted.id), Some(TOKEN), None)
            .await,
        S::CONFLICT,
        "conflict",
    )
    .await;
    assert!(sentence.contains("parked"), "{sentence}");
    // Revert and resume want an unfinished run with a job: a finished one is 409, an
    // unknown one 404.
    let done = finished_run(&s.store).await;
    refused(
        s.post(&format!("/api/flows/{done}/revert"), Some(TOKEN), None)
            .await,
        S::CONFLICT,
        "conflict",
    )
    .await;
    refused(
        s.post(
            &format!("/api/flows/{}/resume", FlowId::new()),
            Some(TOKEN),
            None,
        )
        .await,
        S::NOT_FOUND,
        "not_found",
    )
    .await;
    // Cancelling a run no job drives: 404, saying what to do instead.
    refused(
        s.post(&format!("/api/flows/{done}/cancel"), Some(TOKEN), None)
            .await,
        S::NOT_FOUND,
        "not_found",
    )
    .await;

    // Abandon: an unclaimed job stays as it is.
    let r = s
        .post(
            &format!("/api/jobs/{}/abandon", posted.id),
            Some(TOKEN),
            Some(json!({})),
        )
        .await;
    assert_eq!(r.status(), S::OK);
    let j: Value = r.json().await.unwrap();
    assert_eq!(j["state"], "UNCLAIMED");

    // Trash: refused while the job's run is unfinished, unless forced.
    let run = baton_testkit::board::job_run(posted.id, "stack");
    s.store.create_flow(&run, &[], None).await.unwrap();
    let trash = format!("/api/jobs/{}/trash", posted.id);
    let sentence = refused(
        s.post(&trash, Some(TOKEN), Some(json!({"reason": "test"})))
            .await,
        S::CONFLICT,
        "conflict",
    )
    .await;
    assert!(sentence.contains("unfinished"), "{sentence}");
    let r = s
        .post(
            &trash,
            Some(TOKEN),
            Some(json!({"reason": "test", "force": true})),
        )
        .await;
    assert_eq!(r.status(), S::OK);
    let j: Value = r.json().await.unwrap();
    assert_eq!(j["state"], "TRASHED");
    assert_eq!(j["outcome"], json!({"trashed": "test"}));
    // An ended job cannot be cancelled.
    refused(
        s.post(&cancel, Some(TOKEN), None).await,
        S::CONFLICT,
        "conflict",
    )
    .await;
    s.stop().await;

    // A console without a token refuses every action, whatever the request carries.
    let ro = Served::start(&db, None).await;
    let other = ro.board.post(job("b")).await.unwrap();
    for action in ["retry", "cancel", "abandon", "trash"] {
        let path = format!("/api/jobs/{}/{action}", other.id);
        refused(
            ro.post(&path, Some(TOKEN), None).await,
            S::FORBIDDEN,
            "read_only",
        )
        .await;
    }
    for action in ["cancel", "revert", "resume"] {
        let path = format!("/api/flows/{}/{action}", other.flow());
        refused(ro.post(&path, None, None).await, S::FORBIDDEN, "read_only").await;
    }
    assert_eq!(ro.board.get(other.id).await.unwrap().cancel, None);
    ro.stop().await;
}

/// Every answer carries the protective headers; the API's are not cached.
async fn headers(db: Db) {
    let s = Served::start(&db, None).await;
    for path in ["/api/flows", "/api/nothing", "/healthz", "/api/flows/bad"] {
        let r = s.get(path).await;
        let h = r.headers();
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(h["x-frame-options"], "DENY", "{path}");
        assert_eq!(h["referrer-policy"], "no-referrer", "{path}");
        assert_eq!(
            h["content-security-policy"], "default-src 'self'; frame-ancestors 'none'",
            "{path}"
        );
        if path.starts_with("/api") {
            assert_eq!(h["cache-control"], "no-store", "{path}");
        }
    }
    s.stop().await;
}

/// Reads SSE events from `r` until `done` says an event's data is the last wanted; returns
/// every event (name, data) read.
async fn events_until(
    r: &mut reqwest::Response,
    done: impl Fn(&str, &Value) -> bool,
) -> Vec<(String, Value)> {
    let mut buffer = String::new();
    let mut seen = Vec::new();
    loop {
        let chunk = tokio::time::timeout(Duration::from_secs(60), r.chunk())
            .await
            .expect("an event within a minute")
            .unwrap()
            .expect("the stream goes on");
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let mut name = String::new();
            let mut data = String::new();
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    name = v.trim().to_owned();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim());
                }
            }
            if data.is_empty() {
                continue; // a keep-alive comment
            }
            let value: Value = serde_json::from_str(&data).unwrap();
            let last = done(&name, &value);
            seen.push((name, value));
            if last {
                return seen;
            }
        }
    }
}

/// A run's subscription gets its state at once, then an event for its steps as they commit,
/// until it succeeds; the jobs' subscription gets a job posted, then the job asked to cancel.
async fn live_updates(db: Db) {
    let s = Served::start(&db, None).await;
    let flow = three_steps();
    let engine = Engine::from_arc(s.store.clone());
    let id = engine.create(&flow, Default::default()).await.unwrap();
    let mut r = s.get(&format!("/api/events?flow={id}")).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let first = events_until(&mut r, |_, _| true).await;
    assert_eq!(first[0].0, "flow");
    assert_eq!(first[0].1["id"], id.to_string());
    assert_eq!(first[0].1["state"], "PENDING");
    let start = first[0].1["seq"].as_u64().unwrap();
    let run = tokio::spawn(async move { engine.run(&flow, id).await.unwrap().is_success() });
    let seen = events_until(&mut r, |_, v| v["state"] == "SUCCESS").await;
    assert!(run.await.unwrap());
    assert!(seen.iter().all(|(name, _)| name == "flow"));
    let seqs: Vec<u64> = seen
        .iter()
        .map(|(_, v)| v["seq"].as_u64().unwrap())
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    assert!(seqs[0] > start, "{seqs:?} after {start}");
    let head = s.store.head(id).await.unwrap();
    assert_eq!(*seqs.last().unwrap(), head.seq);
    drop(r);

    let mut jobs = s.get("/api/events?jobs=1").await;
    assert_eq!(jobs.status(), StatusCode::OK);
    let posted = s.board.post(job("watched")).await.unwrap();
    let want = posted.id.to_string();
    let seen = events_until(&mut jobs, |name, v| name == "job" && v["id"] == want).await;
    assert_eq!(seen.last().unwrap().1["state"], "UNCLAIMED");
    s.board
        .request_cancel(posted.id, baton_core::board::Cancel::Revert)
        .await
        .unwrap();
    let seen = events_until(&mut jobs, |_, v| v["id"] == want && v["cancel"] == "REVERT").await;
    assert_eq!(seen.last().unwrap().0, "job");
    drop(jobs);
    s.stop().await;
}

#[tokio::test]
async fn memory_reads() {
    reads(Db::Memory).await;
}

#[tokio::test]
async fn memory_bad_requests() {
    bad_requests(Db::Memory).await;
}

#[tokio::test]
async fn memory_actions() {
    actions(Db::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_live_updates() {
    live_updates(Db::Memory).await;
}

#[tokio::test]
async fn sqlite_reads() {
    reads(Db::sqlite()).await;
}

#[tokio::test]
async fn postgres_reads() {
    if let Some(db) = Db::postgres() {
        reads(db).await;
    }
}

#[tokio::test]
async fn sqlite_bad_requests() {
    bad_requests(Db::sqlite()).await;
}

#[tokio::test]
async fn postgres_bad_requests() {
    if let Some(db) = Db::postgres() {
        bad_requests(db).await;
    }
}

#[tokio::test]
async fn sqlite_actions() {
    actions(Db::sqlite()).await;
}

#[tokio::test]
async fn postgres_actions() {
    if let Some(db) = Db::postgres() {
        actions(db).await;
    }
}

#[tokio::test]
async fn sqlite_headers() {
    headers(Db::sqlite()).await;
}

#[tokio::test]
async fn postgres_headers() {
    if let Some(db) = Db::postgres() {
        headers(db).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_live_updates() {
    live_updates(Db::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_live_updates() {
    if let Some(db) = Db::postgres() {
        live_updates(db).await;
    }
}

/// Without an admin token, only loopback may be listened on; with one, any address.
#[tokio::test]
async fn non_loopback_needs_a_token() {
    let db = Db::sqlite();
    let backends = db.open().await;
    let console = Console::new(backends.store.clone(), backends.board.clone());
    match console.bind("0.0.0.0:0".parse().unwrap()).await {
        Err(baton_console::Error::UnsafeBind { addr }) => {
            assert_eq!(addr, "0.0.0.0:0".parse().unwrap());
        }
        other => panic!("bound without a token: {other:?}"),
    }
    assert!(Console::new(backends.store.clone(), backends.board.clone())
        .bind("[::]:0".parse().unwrap())
        .await
        .is_err());
    let with_token = Console::new(backends.store, backends.board)
        .admin_token(AdminToken::new(TOKEN, "test").unwrap());
    assert!(with_token.bind("0.0.0.0:0".parse().unwrap()).await.is_ok());
}

/// A database error is answered 500 with a fixed sentence: never the URL or its password.
#[tokio::test]
async fn postgres_database_errors_do_not_show_the_url() {
    let Some(db) = Db::postgres() else {
        return;
    };
    let Db::Postgres { url, schema } = &db else {
        unreachable!()
    };
    let with_password = url.replacen("://postgres@", "://postgres:s3cret@", 1);
    let secret = Db::Postgres {
        url: with_password.clone(),
        schema: schema.clone(),
    };
    let s = Served::start(&secret, None).await;
    std::mem::forget(secret); // `db` drops the schema
    {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
        sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
            .execute(&mut conn)
            .await
            .unwrap();
    }
    let r = s.get("/api/flows").await;
    let status = r.status();
    let body = r.text().await.unwrap();
    assert!(
        status == StatusCode::INTERNAL_SERVER_ERROR || status == StatusCode::SERVICE_UNAVAILABLE,
        "{status} {body}"
    );
    assert!(
        !body.contains("s3cret") && !body.contains("postgres://"),
        "{body}"
    );
    let value: Value = serde_json::from_str(&body).unwrap();
    assert!(value["code"] == "internal" || value["code"] == "unavailable");
    s.stop().await;
}

/// A PostgreSQL store opened with `announce_steps` (here through `OpenOptions`) notifies each committed step on its
/// channel, `flow <id> <seq>`, and the console's listener hears it.
#[tokio::test]
async fn postgres_steps_are_announced() {
    let Some(db) = Db::postgres() else {
        return;
    };
    let Db::Postgres { url, schema } = &db else {
        unreachable!()
    };
    let store = baton_sql::open_with(
        url,
        baton_sql::OpenOptions::new()
            .schema(schema.clone())
            .announce_steps(true),
    )
    .await
    .unwrap()
    .store;
    let mut listener = sqlx::postgres::PgListener::connect(url).await.unwrap();
    listener
        .listen(&baton_sql::step_channel(schema))
        .await
        .unwrap();
    let id = finished_run(&store).await;
    let head = store.head(id).await.unwrap();
    let mut heard = Vec::new();
    while heard.last() != Some(&head.seq) {
        let n = tokio::time::timeout(Duration::from_secs(60), listener.recv())
            .await
            .expect("a notification within a minute")
            .unwrap();
        let (flow, seq) = baton_sql::parse_step_announcement(n.payload()).unwrap();
        assert_eq!(flow, id);
        heard.push(seq);
    }
    assert!(heard.windows(2).all(|w| w[0] < w[1]), "{heard:?}");
}
