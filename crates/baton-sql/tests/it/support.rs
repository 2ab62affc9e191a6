//! Store constructors for the tests, and the little each backend must offer the generic cases.

use std::io::Write as _;
use std::ops::Deref;
use std::sync::Arc;

use async_trait::async_trait;
use baton_core::model::{AtomRecord, Batch, FlowRecord, FlowSnapshot, Transition};
use baton_core::store::{FlowQuery, Result, Store};
use baton_core::{Fence, FencingToken, FlowId, JobId};
use baton_sql::{PostgresOptions, PostgresStore, SqliteOptions, SqliteStore};
use sqlx::Connection;

/// A store under test, with what keeps its database alive (a temporary directory) or cleans it
/// up (a PostgreSQL schema dropped when the last clone goes).
#[derive(Debug, Clone)]
pub struct Held<S> {
    pub store: S,
    pub raw: Raw,
    _guard: Arc<Guard>,
}

impl<S> Held<S> {
    /// The same database (kept alive as long as either), through `store`.
    pub fn with_store(&self, store: S) -> Self {
        Self {
            store,
            raw: self.raw.clone(),
            _guard: self._guard.clone(),
        }
    }
}

impl Held<SqliteStore> {
    /// Another store on the same database, with default options: what it knows of runs is
    /// its own.
    pub async fn reopened(&self) -> Self {
        let Raw::Sqlite { url } = &self.raw else {
            panic!("not a SQLite store");
        };
        self.with_store(SqliteStore::open(url).await.unwrap())
    }
}

impl Held<PostgresStore> {
    /// Another store on the same schema, with default options: what it knows of runs is its
    /// own.
    pub async fn reopened(&self) -> Self {
        let Raw::Postgres { url, schema } = &self.raw else {
            panic!("not a PostgreSQL store");
        };
        let options = PostgresOptions::new().schema(schema);
        self.with_store(PostgresStore::connect_with(url, options).await.unwrap())
    }
}

impl<S> Deref for Held<S> {
    type Target = S;

    fn deref(&self) -> &S {
        &self.store
    }
}

/// How to reach the store's database behind its back.
#[derive(Debug, Clone)]
pub enum Raw {
    Sqlite { url: String },
    Postgres { url: String, schema: String },
}

#[derive(Debug)]
enum Guard {
    Dir(#[allow(dead_code)] tempfile::TempDir),
    Schema { url: String, schema: String },
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Guard::Schema { url, schema } = self {
            let (url, schema) = (url.clone(), schema.clone());
            // Drop runs inside the test's runtime, which cannot be blocked on: use a thread
            // with a runtime of its own.
            let cleanup = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    if let Ok(mut conn) = sqlx::PgConnection::connect(&url).await {
                        // Never hang a test on a lock: leave the schema behind instead.
                        let _ = sqlx::query("SET lock_timeout = '5s'")
                            .execute(&mut conn)
                            .await;
                        let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                            .execute(&mut conn)
                            .await;
                        let _ = conn.close().await;
                    }
                });
            });
            let _ = cleanup.join();
        }
    }
}

#[async_trait]
impl<S: Store> Store for Held<S> {
    async fn create_flow(
        &self,
        flow: &FlowRecord,
        atoms: &[AtomRecord],
        fence: Option<Fence>,
    ) -> Result<()> {
        self.store.create_flow(flow, atoms, fence).await
    }

    async fn load_flow(&self, id: FlowId) -> Result<FlowSnapshot> {
        self.store.load_flow(id).await
    }

    async fn load_run(&self, id: FlowId) -> Result<FlowSnapshot> {
        self.store.load_run(id).await
    }

    async fn commit(&self, batch: &Batch) -> Result<()> {
        self.store.commit(batch).await
    }

    async fn history(&self, id: FlowId) -> Result<Vec<Transition>> {
        self.store.history(id).await
    }

    async fn list_flows(&self, query: &FlowQuery) -> Result<Vec<FlowRecord>> {
        self.store.list_flows(query).await
    }

    async fn head(&self, id: FlowId) -> Result<baton_core::store::Head> {
        self.store.head(id).await
    }

    async fn purge_flows(
        &self,
        ended_before: chrono::DateTime<chrono::Utc>,
        limit: u32,
    ) -> Result<u64> {
        self.store.purge_flows(ended_before, limit).await
    }

    async fn create_and_commit(
        &self,
        flow: &FlowRecord,
        atoms: &[AtomRecord],
        fence: Option<Fence>,
        first: &Batch,
    ) -> Result<()> {
        self.store
            .create_and_commit(flow, atoms, fence, first)
            .await
    }

    fn consumes_jobs(&self) -> bool {
        self.store.consumes_jobs()
    }

    fn kind(&self) -> &'static str {
        self.store.kind()
    }

    async fn count_runs(&self) -> baton_core::store::Result<baton_core::store::RunCounts> {
        self.store.count_runs().await
    }
}

/// What the generic cases need beyond the `Store` trait.
#[async_trait]
pub trait Harness: Store + Clone + 'static {
    async fn set_fence(&self, job: JobId, token: FencingToken);
    fn commits(&self) -> u64;
    /// Runs `sql` on a connection of its own to the store's database (and schema).
    async fn exec(&self, sql: &str);
}

#[async_trait]
impl Harness for Held<SqliteStore> {
    async fn set_fence(&self, job: JobId, token: FencingToken) {
        self.store.set_fence(job, token).await.unwrap();
    }

    fn commits(&self) -> u64 {
        self.store.commits()
    }

    async fn exec(&self, sql: &str) {
        self.raw.exec(sql).await;
    }
}

#[async_trait]
impl Harness for Held<PostgresStore> {
    async fn set_fence(&self, job: JobId, token: FencingToken) {
        self.store.set_fence(job, token).await.unwrap();
    }

    fn commits(&self) -> u64 {
        self.store.commits()
    }

    async fn exec(&self, sql: &str) {
        self.raw.exec(sql).await;
    }
}

impl Raw {
    /// Runs `sql`, a query answering one number.
    pub async fn count(&self, sql: &str) -> i64 {
        match self {
            Raw::Sqlite { url } => {
                let mut conn = sqlx::SqliteConnection::connect(url).await.unwrap();
                let n = sqlx::query_scalar(sql).fetch_one(&mut conn).await.unwrap();
                conn.close().await.unwrap();
                n
            }
            Raw::Postgres { url, schema } => {
                let mut conn = pg_connect(url, Some(schema)).await;
                let n = sqlx::query_scalar(sql).fetch_one(&mut conn).await.unwrap();
                conn.close().await.unwrap();
                n
            }
        }
    }

    pub async fn exec(&self, sql: &str) {
        match self {
            Raw::Sqlite { url } => {
                let mut conn = sqlx::SqliteConnection::connect(url).await.unwrap();
                sqlx::query(sql).execute(&mut conn).await.unwrap();
                conn.close().await.unwrap();
            }
            Raw::Postgres { url, schema } => {
                let mut conn = pg_connect(url, Some(schema)).await;
                sqlx::query(sql).execute(&mut conn).await.unwrap();
                conn.close().await.unwrap();
            }
        }
    }
}

/// A plain connection to the test server, with `search_path` set to `schema` if given.
pub async fn pg_connect(url: &str, schema: Option<&str>) -> sqlx::PgConnection {
    let mut options: sqlx::postgres::PgConnectOptions = url.parse().unwrap();
    if let Some(schema) = schema {
        options = options.options([("search_path", schema)]);
    }
    sqlx::PgConnection::connect_with(&options).await.unwrap()
}

/// A fresh temporary directory and the URL of a database file in it (not created yet).
pub fn sqlite_url() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("baton.db").display());
    (dir, url)
}

/// A SQLite store on a fresh database file, with `options`.
pub async fn sqlite_store_with(options: SqliteOptions) -> Option<Held<SqliteStore>> {
    let (dir, url) = sqlite_url();
    let store = SqliteStore::open_with(&url, options).await.unwrap();
    Some(Held {
        store,
        raw: Raw::Sqlite { url },
        _guard: Arc::new(Guard::Dir(dir)),
    })
}

/// A SQLite store on a fresh database file. (An `Option` only to match [`postgres_store`].)
pub async fn sqlite_store() -> Option<Held<SqliteStore>> {
    sqlite_store_with(SqliteOptions::new()).await
}

/// The test server's URL, or why there is none. A missing server fails the test under
/// `CI=true` and skips it otherwise.
pub fn postgres_url() -> Option<String> {
    match std::env::var("BATON_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => skip("BATON_TEST_POSTGRES_URL is not set"),
    }
}

/// Reports a PostgreSQL test that cannot run: a failure under `CI=true`, a skip otherwise.
pub fn skip<T>(why: &str) -> Option<T> {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{why}; PostgreSQL tests must run when CI=true");
    }
    // Straight to the stderr handle: the test harness captures `eprintln!`, and a skip should
    // be seen.
    let _ = writeln!(
        std::io::stderr(),
        "skipped: {why} (PostgreSQL tests need a server; set BATON_TEST_POSTGRES_URL)"
    );
    None
}

/// A schema name no other test uses.
pub fn fresh_schema() -> String {
    format!("baton_test_{}", uuid::Uuid::now_v7().simple())
}

/// A PostgreSQL store in a fresh schema, with `options` (its schema replaced), or `None` when
/// there is no server to test against (see [`skip`]).
pub async fn postgres_store_with(options: PostgresOptions) -> Option<Held<PostgresStore>> {
    let url = postgres_url()?;
    postgres_store_via(&url, &url, options).await
}

/// [`postgres_store_with`], the store reaching the server of `url` at `via` instead (through a
/// proxy, say); the schema is cleaned up through `url`.
pub async fn postgres_store_via(
    url: &str,
    via: &str,
    options: PostgresOptions,
) -> Option<Held<PostgresStore>> {
    let url = url.to_owned();
    let schema = fresh_schema();
    match PostgresStore::connect_with(via, options.schema(schema.clone())).await {
        Ok(store) => Some(Held {
            store,
            raw: Raw::Postgres {
                url: url.clone(),
                schema: schema.clone(),
            },
            _guard: Arc::new(Guard::Schema { url, schema }),
        }),
        Err(e) if e.is_transient() => skip(&format!("PostgreSQL is unreachable: {e:?}")),
        Err(e) => panic!("cannot open the PostgreSQL store: {e:?}"),
    }
}

/// A PostgreSQL store in a fresh schema, or `None` when there is no server (see [`skip`]).
pub async fn postgres_store() -> Option<Held<PostgresStore>> {
    postgres_store_with(PostgresOptions::new()).await
}

/// How many migrations this build carries for `backend` (`sqlite` or `postgres`).
pub fn migration_count(backend: &str) -> i64 {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("migrations")
        .join(backend);
    let n = std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "sql")
        })
        .count();
    i64::try_from(n).unwrap()
}

/// Whether `check` came true within `limit` (checked every 20 ms).
pub async fn eventually(limit: std::time::Duration, mut check: impl FnMut() -> bool) -> bool {
    let started = std::time::Instant::now();
    while !check() {
        if started.elapsed() >= limit {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    true
}
