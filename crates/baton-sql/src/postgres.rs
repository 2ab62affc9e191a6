//! The PostgreSQL store: shared by a fleet of engines, in a schema of its own.

use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use baton_core::model::{AtomRecord, Batch, FlowRecord, FlowSnapshot, Transition};
use baton_core::store::{self, FlowQuery, Store};
use baton_core::{Fence, FencingToken, FlowId, JobId};
use sqlx::migrate::Migrator;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgRow};
use sqlx::types::Json;
use sqlx::{Connection, Postgres, QueryBuilder, Row};

use crate::codec::{
    self, Meta, RawAtom, RawFlow, RawTransition, StepFormat, DEFAULT_MAX_VALUE_BYTES,
};
use crate::deadline::Raw;
use crate::error::{classify, is_unique_violation, Error};
use crate::steplog::{self, Checkpoints, Known, LoadFrom, Stamp, Step, StepRow};
use serde_json::value::RawValue;

static MIGRATOR: Migrator = sqlx::migrate!("./migrations/postgres");

/// The schema the store's tables live in unless configured otherwise.
pub const DEFAULT_SCHEMA: &str = "baton";

/// Settings for [`PostgresStore::connect_with`].
#[derive(Debug, Clone)]
#[non_exhaustive]
#[must_use]
pub struct PostgresOptions {
    /// The schema that holds the store's tables, functions and migration records (created if
    /// missing). A plain lowercase identifier; default [`DEFAULT_SCHEMA`].
    pub schema: String,
    /// How many connections the pool opens at most. Default 10. Writes keep up to half of
    /// them between writes (see [`PostgresStore`]); reads and the other writes share the rest.
    pub max_connections: u32,
    /// How long an operation waits for a connection (for instance while the server is down)
    /// before it fails with [`store::Error::Unavailable`], at most: the call timeout bounds
    /// it too, so the wait is the shorter of the two. Default 10 s.
    pub acquire_timeout: Duration,
    /// How long any call of the store or of a job board built on it may take before it fails
    /// with `Unavailable` (whose source is a [`DeadlineExceeded`](crate::DeadlineExceeded)):
    /// waiting for a connection, opening one, and its statements. The server is told too:
    /// the pool's connections have it as their `statement_timeout` and
    /// `idle_in_transaction_session_timeout`. More than zero, at most
    /// [`MAX_CALL_TIMEOUT`](crate::MAX_CALL_TIMEOUT); default 5 s
    /// ([`DEFAULT_CALL_TIMEOUT`](crate::DEFAULT_CALL_TIMEOUT)). See [`crate::deadline`].
    pub call_timeout: Duration,
    /// The largest stored JSON value (result, failure, revert failure, retry history, a run's
    /// inputs) in bytes; a larger one is refused with [`store::Error::TooLarge`]. The job
    /// board built on the store refuses a job's parameters over it likewise
    /// ([`board::Error::TooLarge`](baton_core::board::Error::TooLarge)). Default 1 MiB
    /// ([`DEFAULT_MAX_VALUE_BYTES`]).
    pub max_value_bytes: usize,
    /// How steps are written (see [`StepFormat`]); default [`StepFormat::Short`], which
    /// versions from 0.2.0 on read ([`StepFormat::Long`] for a fleet that still has 0.1.0
    /// engines).
    pub step_format: StepFormat,
    /// When a step also writes a checkpoint of its run, so that a load replays only the steps
    /// after it (see [`Checkpoints`]); default [`Checkpoints::DEFAULT`].
    pub checkpoints: Checkpoints,
    /// Whether each step appended to a run's log is announced on the schema's
    /// [`step_channel`] (`NOTIFY`, payload `flow <id> <seq>`), in the statement that appends
    /// it, so that it is sent exactly when the step commits: what the console listens to, to
    /// follow a run live. (A run's first step, stored with its creation, is not announced.)
    /// Default off.
    pub announce_steps: bool,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        Self {
            schema: DEFAULT_SCHEMA.to_owned(),
            max_connections: 10,
            acquire_timeout: Duration::from_secs(10),
            call_timeout: crate::DEFAULT_CALL_TIMEOUT,
            max_value_bytes: DEFAULT_MAX_VALUE_BYTES,
            step_format: StepFormat::default(),
            checkpoints: Checkpoints::DEFAULT,
            announce_steps: false,
        }
    }
}

impl PostgresOptions {
    /// Default settings.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets [`PostgresOptions::schema`].
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// Sets [`PostgresOptions::max_connections`] (at least 1).
    pub fn max_connections(mut self, n: u32) -> Self {
        self.max_connections = n.max(1);
        self
    }

    /// Sets [`PostgresOptions::acquire_timeout`].
    pub fn acquire_timeout(mut self, timeout: Duration) -> Self {
        self.acquire_timeout = timeout;
        self
    }

    /// Sets [`PostgresOptions::call_timeout`] (checked when the store connects).
    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = timeout;
        self
    }

    /// Sets [`PostgresOptions::max_value_bytes`].
    pub fn max_value_bytes(mut self, limit: usize) -> Self {
        self.max_value_bytes = limit;
        self
    }

    /// Sets [`PostgresOptions::step_format`].
    pub fn step_format(mut self, format: StepFormat) -> Self {
        self.step_format = format;
        self
    }

    /// Sets [`PostgresOptions::checkpoints`].
    pub fn checkpoints(mut self, checkpoints: Checkpoints) -> Self {
        self.checkpoints = checkpoints;
        self
    }

    /// Sets [`PostgresOptions::announce_steps`].
    pub fn announce_steps(mut self, announce: bool) -> Self {
        self.announce_steps = announce;
        self
    }
}

/// A [`Store`] in a PostgreSQL database.
///
/// Every object lives in one schema (see [`PostgresOptions::schema`]); each pooled connection
/// has its `search_path` set to it alone, at connection time, so nothing else in the database
/// is touched and no other connection's `search_path` changes.
///
/// A commit is one statement, so one round trip and one transaction: the insert of one row
/// into the flow's step log, whose primary key makes it a compare-and-set (see
/// `docs/stores.md`, "What one step costs"). A fenced commit checks the job's token in the same
/// statement. A refused insert is followed by a careful `REPEATABLE READ` transaction that
/// reads the flow as it is, checks write by write and names exactly what is wrong (or
/// appends, if the batch still applies). Creating a flow is one statement too.
///
/// Connections are not pinged before use (that would double the round trips), and writes keep
/// theirs between writes instead of giving them back to the pool, which pings a connection
/// given back: up to half of [`PostgresOptions::max_connections`] stay with the writes. A
/// connection that died is noticed by the operation that uses it, which fails with
/// [`store::Error::Unavailable`] (the connection is then closed), and the engine retries.
///
/// PostgreSQL keeps timestamps to the microsecond: times read back are rounded to it.
///
/// Clones share the pool and the commit counter.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
    /// Connections that commits keep out of the pool between them.
    spare: Arc<Spare>,
    schema: Arc<str>,
    commits: Arc<AtomicU64>,
    max_value_bytes: usize,
    step_format: StepFormat,
    checkpoints: Checkpoints,
    /// Loads replay the whole log, ignoring checkpoints (see
    /// [`PostgresStore::replaying_whole_log`]).
    whole_log: bool,
    /// What this store knows of the flows it writes to (see [`crate::steplog`]).
    known: Arc<steplog::Cache>,
    /// The channel of the job board's wake-ups (see [`job_channel`]).
    channel: Arc<str>,
    /// The channel steps are announced on, if they are (see
    /// [`PostgresOptions::announce_steps`]).
    announce: Option<Arc<str>>,
    /// The bound of every call (see [`crate::deadline`]).
    call_timeout: Duration,
    /// How to connect for migrations: as the pool does, but without the call timeout on the
    /// server's side (a migration may take long, or wait for another process's).
    unbounded: Arc<PgConnectOptions>,
}

fn config(e: impl std::fmt::Display) -> Error {
    Error::Config {
        detail: e.to_string(),
    }
}

fn valid_schema(schema: &str) -> bool {
    let mut chars = schema.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    first_ok
        && schema.len() <= 63
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !schema.starts_with("pg_")
}

impl PostgresStore {
    /// Connects to the database at `url` (`postgres://` or `postgresql://`) with default
    /// options, creating the schema `baton` and applying the migrations if needed.
    ///
    /// # Errors
    /// [`Error::Config`] for a bad URL, [`Error::Store`] if the server cannot be reached
    /// (`Unavailable`) or refuses, [`Error::Migrate`] if the schema holds migrations this build
    /// does not know or has edited.
    ///
    /// # Cancel safety
    /// Not cancel safe: dropped midway, the migrations may have been applied or not (each is
    /// applied whole or not at all).
    pub async fn connect(url: &str) -> Result<Self, Error> {
        Self::connect_with(url, PostgresOptions::default()).await
    }

    /// [`PostgresStore::connect`] with options.
    ///
    /// # Errors
    /// As [`PostgresStore::connect`], and [`Error::InvalidSchema`] for a schema name that is
    /// not a plain lowercase identifier.
    ///
    /// # Cancel safety
    /// As [`PostgresStore::connect`].
    #[tracing::instrument(
        skip_all,
        fields(backend = "postgres", url = %crate::redact_url(url), schema = %options.schema),
        err
    )]
    pub async fn connect_with(url: &str, options: PostgresOptions) -> Result<Self, Error> {
        if !valid_schema(&options.schema) {
            return Err(Error::InvalidSchema {
                schema: options.schema,
            });
        }
        if let Some(name) = crate::url::unread_secret(url) {
            // The driver would ignore it (and log its value): refuse it, saying where a
            // password goes.
            return Err(Error::Config {
                detail: format!(
                    "the URL's query parameter `{name}` is not one PostgreSQL URLs take: \
                     give the password as `password=` or in the user part (user:password@host)"
                ),
            });
        }
        let call_timeout = crate::deadline::check("call_timeout", options.call_timeout)?;
        // The search path travels in the startup packet: set on every connection the pool
        // opens, at no extra round trip, and never on anyone else's connection. So do the
        // server's timeouts (see `crate::deadline`), in whole milliseconds (zero would turn
        // them off).
        let unbounded = PgConnectOptions::from_str(url)
            .map_err(config)?
            .options([("search_path", options.schema.as_str())]);
        let server_timeout = call_timeout.as_millis().max(1).to_string();
        let connect = unbounded.clone().options([
            ("statement_timeout", server_timeout.as_str()),
            (
                "idle_in_transaction_session_timeout",
                server_timeout.as_str(),
            ),
        ]);
        prepare_schema(&unbounded, &options.schema, call_timeout).await?;
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections.max(1))
            .acquire_timeout(options.acquire_timeout.min(call_timeout))
            .test_before_acquire(false)
            .after_release(move |conn, _| {
                Box::pin(async move { Ok(answers_within(conn, call_timeout).await) })
            })
            .connect_with(connect)
            .await
            .map_err(|e| Error::Store(classify(e)))?;
        Ok(Self {
            spare: Arc::new(Spare::holding(options.max_connections.max(1) / 2)),
            pool,
            call_timeout,
            unbounded: Arc::new(unbounded),
            channel: job_channel(&options.schema).into(),
            announce: options
                .announce_steps
                .then(|| step_channel(&options.schema).into()),
            schema: options.schema.into(),
            commits: Arc::new(AtomicU64::new(0)),
            max_value_bytes: options.max_value_bytes,
            step_format: options.step_format,
            checkpoints: options.checkpoints,
            whole_log: false,
            known: Arc::default(),
        })
    }

    /// Applies the migrations this build carries that the schema lacks.
    /// [`PostgresStore::connect`] does it already; it is safe to repeat, and safe while other
    /// processes do it (sqlx holds an advisory lock while migrating).
    ///
    /// # Errors
    /// [`Error::Migrate`], or [`Error::Store`] if the database cannot be reached.
    ///
    /// Migrations run on a connection of their own (closed afterwards, so the migrator's
    /// advisory lock goes with it whatever happens), without the call timeout: opening it is
    /// bounded by the call timeout, applying the migrations is not.
    ///
    /// # Cancel safety
    /// Not cancel safe: dropped midway, some migrations may have been applied.
    pub async fn migrate(&self) -> Result<(), Error> {
        prepare_schema(&self.unbounded, &self.schema, self.call_timeout).await
    }

    /// How long a call of this store, or of a job board built on it, may take (see
    /// [`PostgresOptions::call_timeout`]).
    #[must_use]
    pub fn call_timeout(&self) -> Duration {
        self.call_timeout
    }

    /// The schema the store lives in.
    #[must_use]
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// (For tests.) Makes everything this store knows of the runs it writes to look `by`
    /// older, as if this process had been paused that long: past a minute, its next commit to
    /// each run reads the run again instead of trusting what it knew.
    #[doc(hidden)]
    pub fn backdate_cached_views(&self, by: std::time::Duration) {
        self.known
            .backdate(chrono::Duration::from_std(by).unwrap_or(chrono::Duration::MAX));
    }

    /// How many transactions (flow creations and batches) this store and its clones have
    /// committed.
    #[must_use]
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// For benchmarks and tests: the same store (sharing its connections), except that its
    /// loads replay a run's whole log over the atoms' rows, ignoring checkpoints, as a baton of
    /// an earlier release does; they give the same state, more slowly.
    #[doc(hidden)]
    #[must_use]
    pub fn replaying_whole_log(&self) -> Self {
        Self {
            whole_log: true,
            ..self.clone()
        }
    }

    /// Records `token` as the current claim of `job`: from now on only writes fenced with it
    /// are accepted for that job. (The job board does this when it claims a job.) It waits for
    /// fenced writes of the job that are committing, so none commits after it returns with
    /// the old token.
    ///
    /// # Errors
    /// [`store::Error::Backend`] for a token above `i64::MAX`, which cannot be stored;
    /// [`store::Error::Unavailable`] if the database cannot be reached.
    ///
    /// # Cancel safety
    /// Cancel safe: one statement, applied or not.
    pub async fn set_fence(&self, job: JobId, token: FencingToken) -> store::Result<()> {
        let token = codec::token_to_db(token).ok_or_else(|| {
            crate::error::backend(format!("fencing token {token} is too large to store"))
        })?;
        self.write(
            sqlx::query(
                "INSERT INTO fences (job_id, token) VALUES ($1, $2) \
                 ON CONFLICT (job_id) DO UPDATE SET token = excluded.token",
            )
            .bind(job.as_uuid())
            .bind(token),
        )
        .await
        .map_err(classify)?;
        Ok(())
    }

    /// Closes the pool, waiting for connections in use to be returned.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn close(&self) {
        // The pool waits for the connections it lent, so give them back first.
        drop(self.spare.drain());
        self.pool.close().await;
    }

    /// Runs a writing statement on a connection kept between writes (see [`Spare`]).
    async fn write(
        &self,
        query: sqlx::query::Query<'_, Postgres, sqlx::postgres::PgArguments>,
    ) -> Result<sqlx::postgres::PgQueryResult, sqlx::Error> {
        let mut conn = self.acquire().await?;
        let outcome = query.execute(&mut *conn).await;
        self.release(conn, &outcome);
        outcome
    }

    /// A connection for one operation: a kept one if there is any, else one from the pool.
    /// Give it back with [`PostgresStore::release`], so it is kept too (the pool would ping it
    /// on its way back, a round trip per operation). One dropped instead (its operation
    /// abandoned half-way, or ended by an early return) is closed: see [`Lent`].
    pub(crate) async fn acquire(&self) -> Result<Lent, sqlx::Error> {
        match self.spare.take() {
            Some(conn) => Ok(conn),
            None => Ok(Lent::new(self.pool.acquire().await?)),
        }
    }

    /// Gives back a connection from [`PostgresStore::acquire`] after an operation with this
    /// outcome: kept unless the operation failed in a way that may have broken it.
    pub(crate) fn release<T>(&self, conn: Lent, outcome: &Result<T, sqlx::Error>) {
        self.spare.keep(conn, healthy(outcome));
    }

    /// Begins a transaction on a connection from [`PostgresStore::acquire`]. Committed or
    /// rolled back, the connection is given back; dropped otherwise (abandoned half-way, or
    /// ended by an early return), it is closed, and the server rolls the transaction back.
    pub(crate) async fn begin(&self) -> Result<Tx<'_>, sqlx::Error> {
        let mut conn = self.acquire().await?;
        sqlx::Executor::execute(&mut *conn, "BEGIN").await?;
        Ok(Tx { store: self, conn })
    }

    pub(crate) fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The limit on a JSON value (the job board keeps to it for a job's parameters).
    pub(crate) fn max_value_bytes(&self) -> usize {
        self.max_value_bytes
    }

    /// The channel the job board's wake-ups are sent on (see [`job_channel`]).
    pub(crate) fn job_channel(&self) -> &str {
        &self.channel
    }
}

/// PostgreSQL's longest identifier, in bytes (`NAMEDATALEN - 1`): a channel name too.
const MAX_IDENTIFIER_BYTES: usize = 63;

/// The channel the job wake-ups of `schema` are sent on: `baton_jobs_` and the schema, when
/// that fits an identifier; for a longer schema (up to 63 bytes are allowed), `baton_jobs_`,
/// the schema's first bytes, `_` and 16 hex digits of a hash of the whole schema: 63
/// bytes. (PostgreSQL refuses a longer channel in `pg_notify`, and cuts a `LISTEN`'s short,
/// so neither wake-ups nor keyed jobs' ends would work.) The hash (64-bit FNV-1a) is the same
/// on every machine and in every build, as every process of a fleet must agree on the
/// channel; two schemas that share one only wake each other's conductors for nothing.
///
/// A listener (the console, say) hears there that jobs were posted, or that a job someone
/// waits for ended; the payload says no more.
#[must_use]
pub fn job_channel(schema: &str) -> String {
    channel("baton_jobs_", schema)
}

/// The channel a store of `schema` announces its committed steps on, when it was opened with
/// [`PostgresOptions::announce_steps`]: `baton_events_` and the schema, shortened as
/// [`job_channel`] shortens. Each notification's payload is `flow <id> <seq>`: the run and
/// the number of the step committed (see [`parse_step_announcement`]).
#[must_use]
pub fn step_channel(schema: &str) -> String {
    channel("baton_events_", schema)
}

/// The run and step number a notification on [`step_channel`] announces; `None` for a
/// payload of another form.
#[must_use]
pub fn parse_step_announcement(payload: &str) -> Option<(FlowId, u64)> {
    let mut words = payload.split(' ');
    if words.next()? != "flow" {
        return None;
    }
    let flow = words.next()?.parse().ok()?;
    let seq = words.next()?.parse().ok()?;
    words.next().is_none().then_some((flow, seq))
}

/// `prefix` and `schema`, made to fit an identifier (see [`job_channel`]).
fn channel(prefix: &str, schema: &str) -> String {
    let plain = format!("{prefix}{schema}");
    if plain.len() <= MAX_IDENTIFIER_BYTES {
        return plain;
    }
    let hash = schema.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    // A validated schema is ASCII, so any byte is a character boundary.
    let kept = MAX_IDENTIFIER_BYTES - prefix.len() - 1 - 16;
    let head = schema.get(..kept).unwrap_or(schema);
    format!("{prefix}{head}_{hash:016x}")
}

/// A pooled connection lent to one operation (by [`PostgresStore::acquire`]), closed when it
/// is dropped unless the store took it back ([`PostgresStore::release`]).
///
/// An operation abandoned half-way (its future dropped: a call past its deadline, a run
/// halted) drops its connection anywhere in the protocol: a statement sent and its answer not
/// read, a transaction open. Dropped as it is, sqlx would give it back to the pool after a
/// ping with no timeout, which on a server that went silent waits as long as TCP does and
/// holds a place in the pool meanwhile. Closed instead, it is never lent again; the pool opens
/// another when one is needed.
#[derive(Debug)]
pub(crate) struct Lent {
    conn: PoolConnection<Postgres>,
    /// Set while the store holds it (between operations, or on its way back to the pool).
    given_back: bool,
}

impl Lent {
    fn new(conn: PoolConnection<Postgres>) -> Self {
        Self {
            conn,
            given_back: false,
        }
    }
}

impl std::ops::Deref for Lent {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        &self.conn
    }
}

impl std::ops::DerefMut for Lent {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.conn
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        if !self.given_back {
            self.conn.close_on_drop();
        }
    }
}

/// A transaction on a connection lent by [`PostgresStore::begin`]: committed or rolled back,
/// the connection goes back to the store; dropped otherwise, it is closed (see [`Lent`]), and
/// the server rolls the transaction back.
#[derive(Debug)]
pub(crate) struct Tx<'s> {
    store: &'s PostgresStore,
    conn: Lent,
}

impl Tx<'_> {
    /// Commits the transaction.
    pub(crate) async fn commit(self) -> Result<(), sqlx::Error> {
        self.end("COMMIT").await
    }

    /// Rolls the transaction back.
    pub(crate) async fn rollback(self) -> Result<(), sqlx::Error> {
        self.end("ROLLBACK").await
    }

    async fn end(self, how: &'static str) -> Result<(), sqlx::Error> {
        let Tx { store, mut conn } = self;
        let ended = sqlx::Executor::execute(&mut *conn, how).await.map(|_| ());
        store.release(conn, &ended);
        ended
    }
}

impl std::ops::Deref for Tx<'_> {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        &self.conn
    }
}

impl std::ops::DerefMut for Tx<'_> {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.conn
    }
}

/// Whether `conn` answers a ping within `limit`. The pool checks every connection sqlx itself
/// hands back to it this way (see [`crate::deadline`]): one that does not answer is closed,
/// not pooled.
async fn answers_within(conn: &mut PgConnection, limit: Duration) -> bool {
    matches!(tokio::time::timeout(limit, conn.ping()).await, Ok(Ok(())))
}

/// Whether a connection is still good after an operation with this outcome: anything but an
/// error the server reported may have left it broken or mid-protocol.
fn healthy<T>(outcome: &Result<T, sqlx::Error>) -> bool {
    !matches!(outcome, Err(e) if !matches!(e, sqlx::Error::Database(_)))
}

/// Connections kept out of the pool between writes, up to a cap.
///
/// Giving a connection back to sqlx's pool costs a round trip each time (the pool pings it,
/// from a task of its own), which is a good part of a commit. A connection here goes back
/// only when the cap is reached, the store is closed, or a write on it failed in a way that
/// may have broken it (anything but an error the server reported): then it is closed. The
/// pool lends the rest to reads and to writes that find no spare.
#[derive(Debug)]
struct Spare {
    conns: std::sync::Mutex<Kept>,
    cap: usize,
}

#[derive(Debug, Default)]
struct Kept {
    conns: Vec<Lent>,
    /// Set by [`Spare::drain`] (the store is closing): nothing is kept any more, so the pool
    /// gets back every connection an operation racing the close still held.
    closed: bool,
}

impl Spare {
    fn holding(cap: u32) -> Self {
        Self {
            conns: std::sync::Mutex::default(),
            cap: usize::try_from(cap).unwrap_or(usize::MAX).max(1),
        }
    }

    fn take(&self) -> Option<Lent> {
        let mut conn = self.lock().conns.pop()?;
        conn.given_back = false;
        Some(conn)
    }

    /// Keeps `conn` for the next write, unless it may be broken (`healthy` is false when an
    /// operation on it failed with anything but an error the server reported): then it is
    /// closed.
    fn keep(&self, mut conn: Lent, healthy: bool) {
        if !healthy {
            return;
        }
        conn.given_back = true;
        let mut kept = self.lock();
        if !kept.closed && kept.conns.len() < self.cap {
            kept.conns.push(conn);
        }
    }

    /// Gives up the kept connections, for good: later ones go back to the pool at once.
    fn drain(&self) -> Vec<Lent> {
        let mut kept = self.lock();
        kept.closed = true;
        std::mem::take(&mut kept.conns)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Kept> {
        // Nothing can be left half done under this lock: a poisoned one is as good as new.
        self.conns
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Creates the schema if it is missing, then applies the migrations, on a connection of its
/// own that is closed afterwards (the migrator's advisory lock goes with it, whatever happens).
/// Opening the connection and looking for the schema are bounded by `limit` (the call
/// timeout); the migrations are not.
async fn prepare_schema(
    connect: &PgConnectOptions,
    schema: &str,
    limit: Duration,
) -> Result<(), Error> {
    let late = |call| {
        Error::Store(store::Error::Unavailable(Box::new(
            crate::DeadlineExceeded { call, limit },
        )))
    };
    let mut conn = tokio::time::timeout(limit, PgConnection::connect_with(connect))
        .await
        .map_err(|_| late("connect"))?
        .map_err(|e| Error::Store(classify(e)))?;
    let exists = sqlx::query_scalar::<_, bool>(
        "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)",
    )
    .bind(schema)
    .fetch_one(&mut conn);
    let exists = tokio::time::timeout(limit, exists)
        .await
        .map_err(|_| late("connect"))?
        .map_err(|e| Error::Store(classify(e)))?;
    if !exists {
        // The name was validated as a plain identifier, so it can be spliced in.
        let created = sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\""))
            .execute(&mut conn)
            .await;
        match created {
            Ok(_) => tracing::info!(schema, "created schema"),
            // Another process created it at the same moment: a unique violation on the
            // catalog, or "schema already exists".
            Err(sqlx::Error::Database(e))
                if matches!(e.code().as_deref(), Some("23505" | "42P06")) => {}
            Err(e) => return Err(Error::Store(classify(e))),
        }
    }
    MIGRATOR
        .run_direct(&mut conn)
        .await
        .map_err(crate::error::migrate)?;
    conn.close().await.map_err(|e| Error::Store(classify(e)))
}

/// A JSON value's text, if there is one.
fn raw<'a>(value: &'a Option<std::borrow::Cow<'static, RawValue>>) -> Option<&'a str> {
    value.as_deref().map(RawValue::get)
}

/// Creating a run in one statement: the fence check (share-locking the fence row, so a new
/// claim waits for the creation), the flow's row, and its atoms from arrays, one per column.
/// Answers whether the fence held and whether the flow was created (it was not if the id is
/// taken).
const CREATE_FLOW_WITH: &str = "\
    WITH fence AS ( \
        SELECT $1::uuid IS NULL OR EXISTS ( \
            SELECT 1 FROM fences WHERE job_id = $1 AND token = $2 FOR SHARE) AS holds \
    ), flow AS ( \
        INSERT INTO flows (id, name, state, intention, inputs, meta, created_at, updated_at, \
                           model_version, factory, factory_version, fingerprint, deadline, \
                           deadline_then) \
        SELECT $3, $4, $5, $6, $7, $8, $9, $10, $11, $26, $27, $28, $29, $30 \
          FROM fence WHERE fence.holds \
        ON CONFLICT (id) DO NOTHING \
        RETURNING id \
    ), atoms AS ( \
        INSERT INTO atoms (flow_id, name, position, kind, state, intention, attempt, round, \
                           result, failure, revert_failure, retry_history, retry_at, progress, \
                           started_at, finished_at, model_version, deadline) \
        SELECT flow.id, a.name, a.pos - 1, a.kind, a.state, a.intention, a.attempt, a.round, \
               a.result::jsonb, a.failure::jsonb, a.revert_failure::jsonb, \
               a.retry_history::jsonb, a.retry_at, a.progress, a.started_at, a.finished_at, $11, \
               a.deadline \
          FROM flow, unnest($12::text[], $13::text[], $14::text[], $15::text[], $16::bigint[], \
                            $17::bigint[], $18::text[], $19::text[], $20::text[], $21::text[], \
                            $22::timestamptz[], $23::float8[], $24::timestamptz[], \
                            $25::timestamptz[], $31::timestamptz[]) \
               WITH ORDINALITY AS a(name, kind, state, intention, attempt, round, result, \
                                    failure, revert_failure, retry_history, retry_at, progress, \
                                    started_at, finished_at, deadline, pos) \
    )";

/// What creating a run answers: whether the fence held and whether the flow was created.
const CREATE_FLOW_ANSWER: &str =
    " SELECT (SELECT holds FROM fence) AS holds, EXISTS (SELECT 1 FROM flow) AS created";

/// Creating a run ([`CREATE_FLOW_WITH`]: `$26`..`$30` are the run's factory, factory version,
/// fingerprint, deadline and what happens at it, `$31` its atoms' deadlines), and with
/// `with_step` its first batch too: its step is appended in the same statement if (and only
/// if) the flow was created (`$32`..`$36`: time, flow state, intention, body, model version).
fn create_flow_sql(with_step: bool) -> String {
    if with_step {
        format!(
            "{CREATE_FLOW_WITH}, step AS ( \
                 INSERT INTO steps (flow_id, seq, at, flow_state, flow_intention, body, \
                                    model_version) \
                 SELECT flow.id, 1, $32, $33, $34, $35, $36 FROM flow \
             ){CREATE_FLOW_ANSWER}"
        )
    } else {
        format!("{CREATE_FLOW_WITH}{CREATE_FLOW_ANSWER}")
    }
}

/// Ends the job a fenced batch consumes, in the batch's transaction: `$1` job, `$2` token,
/// `$3` outcome, `$4` the job board's channel, woken when the job has a key (another job with
/// it may run now), and told of the job's end if someone waits for it. A row back means the
/// job was consumed.
const CONSUME_JOB: &str = concat!(
    "WITH done AS ( \
        UPDATE jobs SET state = 'COMPLETE', owner = NULL, owner_lock = NULL, \
               lease_expires_at = NULL, outcome = $3::jsonb, updated_at = now() \
         WHERE id = $1 AND state = 'CLAIMED' AND token = $2 \
        RETURNING id, job_key, watched \
    ) SELECT (CASE WHEN job_key IS NOT NULL THEN pg_notify($4, '') END) IS NULL, ",
    crate::wake::announce_end!("$4", "done"),
    " FROM done"
);

/// The one-statement append of a batch that also consumes its job: the job's row is updated
/// first (its token checked under the row's lock, so a new claim waits for this statement),
/// and the step is appended only if that held. `$1`..`$7` the step, `$8` job, `$9` token,
/// `$10` outcome, `$11` channel (woken as [`CONSUME_JOB`] says); answers whether the step was
/// appended. `$returning` is what the step's insert returns, `$more` more columns of the
/// answer.
macro_rules! append_and_consume {
    ($returning:literal, $more:literal) => {
        concat!(
            "WITH done AS ( \
                UPDATE jobs SET state = 'COMPLETE', owner = NULL, owner_lock = NULL, \
                       lease_expires_at = NULL, outcome = $10::jsonb, updated_at = now() \
                 WHERE id = $8 AND state = 'CLAIMED' AND token = $9 \
                RETURNING id, job_key, watched \
            ), step AS ( \
                INSERT INTO steps (flow_id, seq, at, flow_state, flow_intention, body, \
                                   model_version) \
                SELECT $1, $2, $3, $4, $5, $6, $7 FROM done \
                RETURNING ",
            $returning,
            " \
            ), moved AS ( \
                UPDATE flows SET state = $4, intention = $5, updated_at = $3 \
                  FROM step WHERE flows.id = step.flow_id AND $4::text IS NOT NULL \
            ) SELECT EXISTS (SELECT 1 FROM step) AS appended, \
                     (SELECT (CASE WHEN job_key IS NOT NULL THEN pg_notify($11, '') END) IS NULL \
                        FROM done) AS woke, \
                     (SELECT ",
            crate::wake::announce_end!("$11", "done"),
            " FROM done) AS told",
            $more
        )
    };
}

/// See [`append_and_consume`].
const APPEND_AND_CONSUME: &str = append_and_consume!("flow_id", "");

/// [`APPEND_AND_CONSUME`] that also announces the step on the channel `$12`
/// ([`PostgresOptions::announce_steps`]).
const APPEND_AND_CONSUME_ANNOUNCING: &str = append_and_consume!(
    "flow_id, seq",
    ", (SELECT pg_notify($12, 'flow ' || flow_id || ' ' || seq) IS NULL FROM step) AS announced"
);

// ----- reading rows -------------------------------------------------------------------------

fn get<'r, T>(row: &'r PgRow, column: &str) -> Result<T, String>
where
    T: sqlx::Decode<'r, Postgres> + sqlx::Type<Postgres>,
{
    row.try_get(column)
        .map_err(|e| format!("column {column}: {e}"))
}

/// The columns of a flow's row, with `meta` as given (the column as text, or
/// `'null' AS meta`).
macro_rules! flow_columns {
    ($meta:literal) => {
        concat!(
            "id, name, state, intention, inputs::text AS inputs, ",
            $meta,
            ", created_at, updated_at, model_version, factory, factory_version, fingerprint, \
             deadline, deadline_then"
        )
    };
}

fn flow_from_row(row: &PgRow) -> store::Result<FlowRecord> {
    let id: uuid::Uuid = get(row, "id")
        .map_err(|d| codec::corrupt(FlowId::from_uuid(uuid::Uuid::nil()), None, d))?;
    let id = FlowId::from_uuid(id);
    let raw = (|| -> Result<RawFlow, String> {
        Ok(RawFlow {
            id,
            name: get(row, "name")?,
            state: get(row, "state")?,
            intention: get(row, "intention")?,
            inputs: get(row, "inputs")?,
            meta: get(row, "meta")?,
            created_at: get(row, "created_at")?,
            updated_at: get(row, "updated_at")?,
            model_version: get(row, "model_version")?,
            factory: get(row, "factory")?,
            factory_version: get(row, "factory_version")?,
            fingerprint: get(row, "fingerprint")?,
            deadline: get(row, "deadline")?,
            deadline_then: get(row, "deadline_then")?,
        })
    })()
    .map_err(|d| codec::corrupt(id, None, d))?;
    codec::decode_flow(raw)
}

const ATOM_COLUMNS: &str = "name, kind, state, intention, attempt, round, result::text AS result, \
     failure::text AS failure, revert_failure::text AS revert_failure, \
     retry_history::text AS retry_history, retry_at, progress, started_at, finished_at, \
     model_version, deadline";

fn atom_from_row(flow: FlowId, row: &PgRow) -> store::Result<AtomRecord> {
    let name: String = get(row, "name").map_err(|d| codec::corrupt(flow, None, d))?;
    let raw = (|| -> Result<RawAtom, String> {
        Ok(RawAtom {
            kind: get(row, "kind")?,
            state: get(row, "state")?,
            intention: get(row, "intention")?,
            attempt: get(row, "attempt")?,
            round: get(row, "round")?,
            result: get(row, "result")?,
            failure: get(row, "failure")?,
            revert_failure: get(row, "revert_failure")?,
            retry_history: get(row, "retry_history")?,
            retry_at: get(row, "retry_at")?,
            progress: get(row, "progress")?,
            started_at: get(row, "started_at")?,
            finished_at: get(row, "finished_at")?,
            deadline: get(row, "deadline")?,
            model_version: get(row, "model_version")?,
        })
    })()
    .map_err(|d| codec::corrupt(flow, Some(&name), d))?;
    codec::decode_atom(flow, name, raw)
}

fn transition_from_row(flow: FlowId, row: &PgRow) -> store::Result<Option<Transition>> {
    let atom: Option<String> = get(row, "atom").unwrap_or_default();
    let raw = (|| -> Result<Option<RawTransition>, String> {
        let Some(seq) = get::<Option<i64>>(row, "seq")? else {
            return Ok(None);
        };
        Ok(Some(RawTransition {
            seq,
            at: get(row, "at")?,
            subject: get(row, "subject")?,
            atom: atom.clone(),
            from_state: get(row, "from_state")?,
            to_state: get(row, "to_state")?,
            attempt: get(row, "attempt")?,
        }))
    })()
    .map_err(|d| codec::corrupt(flow, atom.as_deref(), d))?;
    raw.map(|raw| codec::decode_transition(flow, raw))
        .transpose()
}

fn step_from_row(flow: FlowId, row: &PgRow) -> store::Result<StepRow> {
    let go = || -> Result<StepRow, String> {
        Ok(StepRow {
            seq: get(row, "seq")?,
            at: get(row, "at")?,
            body: get(row, "body")?,
            model_version: get(row, "model_version")?,
        })
    };
    go().map_err(|d| codec::corrupt(flow, None, format!("step log: {d}")))
}

/// The flow's steps from number `from_seq` on, in order.
async fn read_steps(
    conn: &mut PgConnection,
    flow: FlowId,
    from_seq: i64,
) -> store::Result<Vec<StepRow>> {
    let rows = sqlx::query(
        "SELECT seq, at, body, model_version FROM steps WHERE flow_id = $1 AND seq >= $2 \
         ORDER BY seq",
    )
    .bind(flow.as_uuid())
    .bind(from_seq)
    .fetch_all(&mut *conn)
    .await
    .map_err(classify)?;
    rows.iter().map(|r| step_from_row(flow, r)).collect()
}

/// The flow as it is now, and what this store then knows of it (as of a statement sent at
/// `began` or later). Run it in a `REPEATABLE READ` transaction, so that the rows come from one
/// snapshot.
///
/// With [`Meta::Skip`] the run's `meta` is read as `null` (see [`Store::load_run`]). The log is
/// read from the run's checkpoint on, or whole (see [`steplog::read_from`]).
async fn read_flow(
    conn: &mut PgConnection,
    id: FlowId,
    meta: Meta,
    from: LoadFrom,
    began: chrono::DateTime<chrono::Utc>,
) -> store::Result<(FlowSnapshot, Known)> {
    let sql = match meta {
        Meta::Read => concat!(
            "SELECT ",
            flow_columns!("meta::text AS meta"),
            ", checkpoint_seq, checkpoint_at FROM flows WHERE id = $1"
        ),
        Meta::Skip => concat!(
            "SELECT ",
            flow_columns!("'null' AS meta"),
            ", checkpoint_seq, checkpoint_at FROM flows WHERE id = $1"
        ),
    };
    let row = sqlx::query(sql)
        .bind(id.as_uuid())
        .fetch_optional(&mut *conn)
        .await
        .map_err(classify)?
        .ok_or(store::Error::FlowNotFound(id))?;
    let stamp = (|| -> Result<Stamp, String> {
        Ok(Stamp {
            seq: get(&row, "checkpoint_seq")?,
            at: get(&row, "checkpoint_at")?,
        })
    })()
    .map_err(|d| codec::corrupt(id, None, d))?;
    let rows = sqlx::query(&format!(
        "SELECT {ATOM_COLUMNS} FROM atoms WHERE flow_id = $1 ORDER BY position"
    ))
    .bind(id.as_uuid())
    .fetch_all(&mut *conn)
    .await
    .map_err(classify)?;
    let steps = read_steps(conn, id, steplog::read_from(stamp, from)).await?;
    let flow = flow_from_row(&row)?;
    let atoms = rows
        .iter()
        .map(|r| atom_from_row(id, r))
        .collect::<store::Result<Vec<_>>>()?;
    steplog::assemble(flow, atoms, stamp, &steps, began)
}

/// Binds the per-atom columns a run's creation and a checkpoint both write, name to
/// `finished_at`, each as an array (the statements `unnest` them), in that order.
macro_rules! bind_atom_columns {
    ($query:expr, $encoded:expr) => {{
        let encoded = &$encoded;
        $query
            .bind(encoded.iter().map(|a| a.name).collect::<Vec<_>>())
            .bind(encoded.iter().map(|a| a.kind).collect::<Vec<_>>())
            .bind(encoded.iter().map(|a| a.state).collect::<Vec<_>>())
            .bind(encoded.iter().map(|a| a.intention).collect::<Vec<_>>())
            .bind(
                encoded
                    .iter()
                    .map(|a| i64::from(a.attempt))
                    .collect::<Vec<_>>(),
            )
            .bind(
                encoded
                    .iter()
                    .map(|a| i64::from(a.round))
                    .collect::<Vec<_>>(),
            )
            .bind(encoded.iter().map(|a| raw(&a.result)).collect::<Vec<_>>())
            .bind(encoded.iter().map(|a| raw(&a.failure)).collect::<Vec<_>>())
            .bind(
                encoded
                    .iter()
                    .map(|a| raw(&a.revert_failure))
                    .collect::<Vec<_>>(),
            )
            .bind(
                encoded
                    .iter()
                    .map(|a| a.retry_history.get())
                    .collect::<Vec<_>>(),
            )
            .bind(encoded.iter().map(|a| a.retry_at).collect::<Vec<_>>())
            .bind(encoded.iter().map(|a| a.progress).collect::<Vec<_>>())
            .bind(encoded.iter().map(|a| a.started_at).collect::<Vec<_>>())
            .bind(encoded.iter().map(|a| a.finished_at).collect::<Vec<_>>())
    }};
}

/// Writes `checkpoint` in the caller's transaction, which has just appended its step: the
/// rows of the atoms it holds, from arrays (one per column, as a creation inserts them), and
/// the run's stamp, in one statement.
async fn write_checkpoint(
    conn: &mut PgConnection,
    flow: FlowId,
    checkpoint: &steplog::Checkpoint<'_>,
    limit: usize,
) -> Result<(), Attempt> {
    let encoded = checkpoint
        .atoms
        .iter()
        .map(|a| codec::encode_atom(flow, a, limit))
        .collect::<store::Result<Vec<_>>>()
        .map_err(Attempt::Store)?;
    let query = sqlx::query_scalar(
        "WITH rewritten AS ( \
             UPDATE atoms SET kind = a.kind, state = a.state, intention = a.intention, \
                    attempt = a.attempt, round = a.round, result = a.result::jsonb, \
                    failure = a.failure::jsonb, revert_failure = a.revert_failure::jsonb, \
                    retry_history = a.retry_history::jsonb, retry_at = a.retry_at, \
                    progress = a.progress, started_at = a.started_at, \
                    finished_at = a.finished_at, model_version = $4, deadline = a.deadline \
               FROM unnest($5::text[], $6::text[], $7::text[], $8::text[], $9::bigint[], \
                           $10::bigint[], $11::text[], $12::text[], $13::text[], $14::text[], \
                           $15::timestamptz[], $16::float8[], $17::timestamptz[], \
                           $18::timestamptz[], $19::timestamptz[]) \
                    AS a(name, kind, state, intention, attempt, round, result, failure, \
                         revert_failure, retry_history, retry_at, progress, started_at, \
                         finished_at, deadline) \
              WHERE atoms.flow_id = $1 AND atoms.name = a.name \
             RETURNING 1 \
         ), stamped AS ( \
             UPDATE flows SET checkpoint_seq = $2, checkpoint_at = $3 WHERE id = $1 \
         ) SELECT count(*) FROM rewritten",
    )
    .bind(flow.as_uuid())
    .bind(checkpoint.seq)
    .bind(checkpoint.at)
    .bind(codec::ROW_VERSION);
    let updated: i64 = bind_atom_columns!(query, encoded)
        .bind(encoded.iter().map(|a| a.deadline).collect::<Vec<_>>())
        .fetch_one(&mut *conn)
        .await
        .map_err(Attempt::Db)?;
    if usize::try_from(updated).ok() != Some(encoded.len()) {
        // Refused, so the step goes with it: a checkpoint never disagrees with the log.
        return Err(Attempt::Store(codec::corrupt(
            flow,
            None,
            format!(
                "a checkpoint at step {} found {updated} of its {} atoms' rows",
                checkpoint.seq,
                encoded.len()
            ),
        )));
    }
    Ok(())
}

/// The statement that appends a step: `$1`..`$7` are the row; a fenced one also takes the
/// job (`$8`) and token (`$9`), and share-locks the fence row until the commit, so a new claim
/// of the job (which updates that row) waits for the append: the two never interleave.
///
/// A step that moves the flow (`$4`, `$5` not null) also updates the flow's row, in the same
/// statement and only if the step was appended. Either way the statement's count of rows
/// (`rows_affected`) is 1 if the step was appended, 0 if the fence did not hold. (A run's row
/// is not looked up: a view of a run that may have been purged since is not trusted for the
/// one-statement append at all, see `steplog::VIEW_TRUST`.)
///
/// An announcing statement ([`PostgresOptions::announce_steps`]) also takes the channel, as the
/// parameter after the others (`$8`, or `$10` when fenced), and notifies it of the step it
/// appended; its count of rows is the same.
fn append_sql(fenced: bool, moves_flow: bool, announce: bool) -> &'static str {
    if announce {
        static ANNOUNCING: std::sync::OnceLock<[String; 4]> = std::sync::OnceLock::new();
        let all = ANNOUNCING.get_or_init(|| {
            [(false, false), (true, false), (false, true), (true, true)]
                .map(|(fenced, moves_flow)| announcing_append_sql(fenced, moves_flow))
        });
        return &all[usize::from(fenced) + 2 * usize::from(moves_flow)];
    }
    match (fenced, moves_flow) {
        (false, false) => {
            "INSERT INTO steps (flow_id, seq, at, flow_state, flow_intention, body, model_version) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)"
        }
        (true, false) => {
            "INSERT INTO steps (flow_id, seq, at, flow_state, flow_intention, body, model_version) \
             SELECT $1, $2, $3, $4, $5, $6, $7 \
             WHERE EXISTS (SELECT 1 FROM fences WHERE job_id = $8 AND token = $9 FOR SHARE)"
        }
        (false, true) => {
            "WITH step AS ( \
                 INSERT INTO steps (flow_id, seq, at, flow_state, flow_intention, body, \
                                    model_version) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING flow_id \
             ), moved AS ( \
                 UPDATE flows SET state = $4, intention = $5, updated_at = $3 \
                   FROM step WHERE flows.id = step.flow_id \
             ) SELECT 1 FROM step"
        }
        (true, true) => {
            "WITH step AS ( \
                 INSERT INTO steps (flow_id, seq, at, flow_state, flow_intention, body, \
                                    model_version) \
                 SELECT $1, $2, $3, $4, $5, $6, $7 \
                 WHERE EXISTS (SELECT 1 FROM fences WHERE job_id = $8 AND token = $9 FOR SHARE) \
                 RETURNING flow_id \
             ), moved AS ( \
                 UPDATE flows SET state = $4, intention = $5, updated_at = $3 \
                   FROM step WHERE flows.id = step.flow_id \
             ) SELECT 1 FROM step"
        }
    }
}

/// The announcing form of [`append_sql`].
fn announcing_append_sql(fenced: bool, moves_flow: bool) -> String {
    let (values, channel) = if fenced {
        (
            "SELECT $1, $2, $3, $4, $5, $6, $7 \
             WHERE EXISTS (SELECT 1 FROM fences WHERE job_id = $8 AND token = $9 FOR SHARE)",
            "$10",
        )
    } else {
        ("VALUES ($1, $2, $3, $4, $5, $6, $7)", "$8")
    };
    let moved = if moves_flow {
        ", moved AS ( \
             UPDATE flows SET state = $4, intention = $5, updated_at = $3 \
               FROM step WHERE flows.id = step.flow_id \
         )"
    } else {
        ""
    };
    format!(
        "WITH step AS ( \
             INSERT INTO steps (flow_id, seq, at, flow_state, flow_intention, body, \
                                model_version) \
             {values} RETURNING flow_id, seq \
         ){moved} SELECT pg_notify({channel}, 'flow ' || step.flow_id || ' ' || step.seq) \
         FROM step"
    )
}

/// Whether a careful commit met another writer (a step appended, a fence row updated) and
/// should look again.
fn met_another_writer(e: &sqlx::Error) -> bool {
    e.as_database_error().is_some_and(|d| {
        d.is_unique_violation() || matches!(d.code().as_deref(), Some("40001" | "40P01"))
    })
}

/// How many times a careful commit looks again after meeting another writer.
const CAREFUL_TRIES: usize = 5;

impl PostgresStore {
    /// Runs `read` in a read-only `REPEATABLE READ` transaction (so its rows come from one
    /// snapshot), on a connection from [`PostgresStore::acquire`].
    async fn read_only<T, F>(&self, read: F) -> store::Result<T>
    where
        F: for<'c> FnOnce(
            &'c mut PgConnection,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = store::Result<T>> + Send + 'c>,
        >,
    {
        let mut conn = self.acquire().await.map_err(classify)?;
        let mut tx = conn
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await
            .map_err(classify)?;
        let result = read(&mut tx).await;
        let answer = codec::finish(tx, result).await;
        // A refusal (not found, corrupt) leaves the connection as good as it was.
        let healthy = !matches!(answer, Err(store::Error::Unavailable(_)));
        self.spare.keep(conn, healthy);
        answer
    }

    /// A load in one read-only snapshot for the flow, its atoms and its log.
    async fn load(&self, id: FlowId, meta: Meta) -> store::Result<FlowSnapshot> {
        let began = chrono::Utc::now();
        let from = if self.whole_log {
            LoadFrom::WholeLog
        } else {
            LoadFrom::Checkpoint
        };
        let (snapshot, known) = self
            .read_only(|tx| Box::pin(read_flow(tx, id, meta, from, began)))
            .await?;
        self.known.put(id, known);
        Ok(snapshot)
    }

    /// The append of a step that writes a checkpoint, as [`append_sql`] and
    /// [`write_checkpoint`] in one transaction: `Ok(false)` (nothing written) if the fence did
    /// not hold, a unique violation if another writer appended first.
    async fn append_with_checkpoint(
        &self,
        batch: &Batch,
        step: &Step,
        known: &Known,
        fence: Option<(uuid::Uuid, i64)>,
    ) -> Result<bool, sqlx::Error> {
        let Some(checkpoint) = known.checkpoint_with(batch, self.checkpoints) else {
            return Err(sqlx::Error::Protocol("no checkpoint is due".into()));
        };
        let mut tx = self.begin().await?;
        let query = self.append_step(batch, known.seq + 1, step, fence);
        if query.execute(&mut *tx).await?.rows_affected() != 1 {
            tx.rollback().await?;
            return Ok(false);
        }
        match write_checkpoint(&mut tx, batch.flow, &checkpoint, self.max_value_bytes).await {
            Ok(()) => {
                tx.commit().await?;
                Ok(true)
            }
            Err(Attempt::Db(e)) => Err(e),
            // Nothing was written; the careful way reports what is wrong.
            Err(Attempt::Store(_)) => {
                tx.rollback().await?;
                Ok(false)
            }
        }
    }

    /// The statement that appends `step` to `batch`'s run as its step `seq` ([`append_sql`]),
    /// its parameters bound: fenced by `fence` (job and token) if given, announced if this
    /// store announces steps.
    fn append_step<'q>(
        &'q self,
        batch: &'q Batch,
        seq: i64,
        step: &'q Step,
        fence: Option<(uuid::Uuid, i64)>,
    ) -> sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments> {
        let mut query = sqlx::query(append_sql(
            fence.is_some(),
            step.flow_state.is_some(),
            self.announce.is_some(),
        ))
        .bind(batch.flow.as_uuid())
        .bind(seq)
        .bind(batch.at)
        .bind(step.flow_state)
        .bind(step.flow_intention)
        .bind(step.body.as_str())
        .bind(step.model_version);
        if let Some((job, token)) = fence {
            query = query.bind(job).bind(token);
        }
        if let Some(channel) = &self.announce {
            query = query.bind(channel.as_ref());
        }
        query
    }

    /// The careful commit: in one `REPEATABLE READ` transaction, check the fence, read the flow
    /// as it is, check write by write (reporting exactly what is wrong) and append, with a
    /// checkpoint if one is due. Returns what was known of the flow before the batch, and
    /// whether a checkpoint was written; `None` if the batch ends a job and an earlier attempt
    /// of it was stored already (see [`codec::Ended`]).
    async fn commit_carefully(
        &self,
        batch: &Batch,
        step: &Step,
        consume: Option<&(Fence, String)>,
        began: chrono::DateTime<chrono::Utc>,
    ) -> store::Result<Option<(Known, bool)>> {
        let flow = batch.flow;
        let mut tries = 0;
        loop {
            tries += 1;
            let mut conn = self.acquire().await.map_err(classify)?;
            let outcome = self
                .try_carefully(&mut conn, batch, step, consume, began)
                .await;
            let healthy = match &outcome {
                Err(Attempt::Db(e)) => matches!(e, sqlx::Error::Database(_)),
                _ => true,
            };
            self.spare.keep(conn, healthy);
            match outcome {
                Ok(done) => return Ok(done),
                Err(Attempt::Db(e)) if met_another_writer(&e) && tries < CAREFUL_TRIES => {}
                // Another writer's steps, again and again: a conflict. (A serialization
                // failure or a deadlock that persists is left to `classify`: unavailable,
                // retried like an outage.)
                Err(Attempt::Db(e)) if is_unique_violation(&e) => {
                    return Err(store::Error::Conflict {
                        flow,
                        subject: "flow".into(),
                        expected: "no other writer".into(),
                        actual: format!("other writers changed it {tries} times meanwhile"),
                    })
                }
                Err(Attempt::Db(e)) => return Err(classify(e)),
                Err(Attempt::Store(e)) => return Err(e),
            }
        }
    }

    async fn try_carefully(
        &self,
        conn: &mut PgConnection,
        batch: &Batch,
        step: &Step,
        consume: Option<&(Fence, String)>,
        began: chrono::DateTime<chrono::Utc>,
    ) -> Result<Option<(Known, bool)>, Attempt> {
        let flow = batch.flow;
        let mut tx = conn
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ")
            .await
            .map_err(Attempt::Db)?;
        let result = async {
            // A job's row is locked before its fence row, in the order a claim locks them,
            // so the two never wait for each other.
            if let Some((fence, outcome)) = consume {
                if !self
                    .end_job(&mut tx, flow, *fence, outcome, &step.body)
                    .await?
                {
                    return Ok(None);
                }
            }
            if let Some(f) = batch.fence {
                let current: Option<i64> =
                    sqlx::query_scalar("SELECT token FROM fences WHERE job_id = $1 FOR SHARE")
                        .bind(f.job.as_uuid())
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(Attempt::Db)?;
                if current.is_none() || current != codec::token_to_db(f.token) {
                    return Err(Attempt::Store(store::Error::Fenced {
                        flow,
                        job: f.job,
                        token: f.token,
                    }));
                }
            }
            let (snapshot, known) =
                read_flow(&mut tx, flow, Meta::Skip, LoadFrom::Checkpoint, began)
                    .await
                    .map_err(Attempt::Store)?;
            codec::check_writes(flow, &snapshot.flow, &snapshot.atoms, &batch.writes)
                .map_err(Attempt::Store)?;
            self.append_step(batch, known.seq + 1, step, None)
                .execute(&mut *tx)
                .await
                .map_err(Attempt::Db)?;
            // The run's last step (ending its job) needs no checkpoint.
            let checkpoint = match consume {
                Some(_) => None,
                None => known.checkpoint_with(batch, self.checkpoints),
            };
            if let Some(checkpoint) = &checkpoint {
                write_checkpoint(&mut tx, flow, checkpoint, self.max_value_bytes).await?;
            }
            let checkpointed = checkpoint.is_some();
            Ok(Some((known, checkpointed)))
        }
        .await;
        settle(tx, result).await
    }
}

/// What tells whether a batch ending job `job` was stored already (see [`codec::Ended`]).
async fn ended(conn: &mut PgConnection, flow: FlowId, job: JobId) -> sqlx::Result<codec::Ended> {
    let last_step: Option<String> =
        sqlx::query_scalar("SELECT body FROM steps WHERE flow_id = $1 ORDER BY seq DESC LIMIT 1")
            .bind(flow.as_uuid())
            .fetch_optional(&mut *conn)
            .await?;
    let job = sqlx::query_as("SELECT state, token, outcome::text FROM jobs WHERE id = $1")
        .bind(job.as_uuid())
        .fetch_optional(&mut *conn)
        .await?;
    Ok(codec::Ended { last_step, job })
}

/// Why a careful commit's attempt failed: the database (maybe another writer, to look again
/// for), or the batch itself.
enum Attempt {
    Db(sqlx::Error),
    Store(store::Error),
}

/// Commits `tx` if `result` is a success, else rolls it back and passes the refusal on.
async fn settle<T>(
    tx: sqlx::Transaction<'_, Postgres>,
    result: Result<T, Attempt>,
) -> Result<T, Attempt> {
    match result {
        Ok(done) => {
            tx.commit().await.map_err(Attempt::Db)?;
            Ok(done)
        }
        Err(e) => {
            // The refusal is the news; a failed rollback ends with the connection anyway.
            let _ = tx.rollback().await;
            Err(e)
        }
    }
}

impl PostgresStore {
    /// Stores a new run, and its first batch with it if there is one, in one statement (a
    /// transaction if the first batch also ends the run's job).
    async fn create(
        &self,
        flow: &FlowRecord,
        atoms: &[AtomRecord],
        fence: Option<Fence>,
        first: Option<&Batch>,
    ) -> store::Result<()> {
        // The first batch is checked and encoded before any statement.
        let (row, first) =
            steplog::first_step(flow, atoms, first, self.max_value_bytes, self.step_format)?;
        let encoded = atoms
            .iter()
            .map(|a| codec::encode_atom(flow.id, a, self.max_value_bytes))
            .collect::<store::Result<Vec<_>>>()?;
        let (fence_job, fence_token) = codec::fence_to_db(flow.id, fence)?
            .map(|(job, token)| (job.as_uuid(), token))
            .unzip();
        let sql = create_flow_sql(first.is_some());
        let began = chrono::Utc::now();
        let query = sqlx::query_as::<_, (bool, bool)>(&sql)
            .bind(fence_job)
            .bind(fence_token)
            .bind(flow.id.as_uuid())
            .bind(&flow.name)
            .bind(row.state)
            .bind(row.intention)
            .bind(Json(&flow.inputs))
            .bind(Json(&flow.meta))
            .bind(flow.created_at)
            .bind(row.updated_at)
            .bind(codec::ROW_VERSION);
        let mut query = bind_atom_columns!(query, encoded)
            .bind(flow.factory.as_ref().map(|f| f.name.as_str()))
            .bind(flow.factory.as_ref().map(|f| i64::from(f.version)))
            .bind(flow.fingerprint.map(|f| f.to_string()))
            .bind(flow.deadline.map(|d| d.at))
            .bind(flow.deadline.map(|d| d.then.as_str()))
            .bind(encoded.iter().map(|a| a.deadline).collect::<Vec<_>>());
        if let Some((batch, step, _)) = &first {
            query = query
                .bind(batch.at)
                .bind(step.flow_state)
                .bind(step.flow_intention)
                .bind(step.body.as_str())
                .bind(step.model_version);
        }
        let consume = first
            .as_ref()
            .and_then(|(_, step, consume)| Some((step, consume.as_ref()?)));
        let mut conn = self.acquire().await.map_err(classify)?;
        let answer = match consume {
            None => query.fetch_one(&mut *conn).await.map_err(Attempt::Db),
            // A run whose first batch ends it (it has nothing to run): the job's end needs a
            // statement of its own, so both go in a transaction.
            Some((step, (job_fence, outcome))) => {
                let job = (*job_fence, outcome.as_str());
                self.create_and_consume(&mut conn, query, job, flow.id, &step.body)
                    .await
            }
        };
        let healthy =
            !matches!(&answer, Err(Attempt::Db(e)) if !matches!(e, sqlx::Error::Database(_)));
        self.spare.keep(conn, healthy);
        let answer = match answer {
            Ok(answer) => answer,
            Err(Attempt::Db(e)) => return Err(classify(e)),
            Err(Attempt::Store(e)) => return Err(e),
        };
        match (answer, fence) {
            ((false, _), Some(f)) => Err(store::Error::Fenced {
                flow: flow.id,
                job: f.job,
                token: f.token,
            }),
            ((_, false), _) => Err(store::Error::FlowExists(flow.id)),
            _ => {
                self.commits.fetch_add(1, Ordering::Relaxed);
                let mut known = Known::of(0, flow, atoms, began);
                if let Some((batch, _, _)) = &first {
                    known.apply(&batch.writes, batch.at, Some(began), false);
                }
                self.known.put(flow.id, known);
                Ok(())
            }
        }
    }

    /// Runs the creation `query`, whose first step has `body`, and ends the job `fence`
    /// claims, in one transaction. (If an earlier attempt of the same creation did both, it
    /// answers as if this one had.)
    async fn create_and_consume(
        &self,
        conn: &mut PgConnection,
        query: sqlx::query::QueryAs<'_, Postgres, (bool, bool), sqlx::postgres::PgArguments>,
        (fence, outcome): (Fence, &str),
        flow: FlowId,
        body: &str,
    ) -> Result<(bool, bool), Attempt> {
        let mut tx = conn.begin().await.map_err(Attempt::Db)?;
        let result = async {
            // The job's row first, then the creation (which share-locks the fence row): the
            // order a claim locks them in. A refused creation rolls the consume back.
            if !self.end_job(&mut tx, flow, fence, outcome, body).await? {
                return Ok((true, true));
            }
            let answer = query.fetch_one(&mut *tx).await.map_err(Attempt::Db)?;
            match answer {
                (true, true) => Ok(answer),
                (false, _) => Err(Attempt::Store(store::Error::Fenced {
                    flow,
                    job: fence.job,
                    token: fence.token,
                })),
                (true, false) => Err(Attempt::Store(store::Error::FlowExists(flow))),
            }
        }
        .await;
        settle(tx, result).await
    }

    /// Ends the job `fence` claims in the caller's transaction, for the batch whose step has
    /// `body`: `true` if it did; `false` if an earlier attempt of that batch ended it with its
    /// step, and only the answer was lost (see [`codec::Ended`]).
    ///
    /// # Errors
    /// [`store::Error::Fenced`] if the claim no longer holds otherwise.
    async fn end_job(
        &self,
        conn: &mut PgConnection,
        flow: FlowId,
        fence: Fence,
        outcome: &str,
        body: &str,
    ) -> Result<bool, Attempt> {
        match self.consume_job(&mut *conn, flow, fence, outcome).await {
            Ok(()) => Ok(true),
            Err(refused @ Attempt::Store(store::Error::Fenced { .. })) => {
                let ended = ended(conn, flow, fence.job).await.map_err(Attempt::Db)?;
                if ended.holds(body, fence, outcome) {
                    Ok(false)
                } else {
                    Err(refused)
                }
            }
            Err(other) => Err(other),
        }
    }

    /// Ends the job `fence` claims, in the caller's transaction ([`CONSUME_JOB`]).
    async fn consume_job(
        &self,
        conn: &mut PgConnection,
        flow: FlowId,
        fence: Fence,
        outcome: &str,
    ) -> Result<(), Attempt> {
        let consumed: Option<bool> = sqlx::query_scalar(CONSUME_JOB)
            .bind(fence.job.as_uuid())
            .bind(codec::token_to_db(fence.token))
            .bind(outcome)
            .bind(self.job_channel())
            .fetch_optional(&mut *conn)
            .await
            .map_err(Attempt::Db)?;
        match consumed {
            Some(_) => Ok(()),
            None => Err(Attempt::Store(store::Error::Fenced {
                flow,
                job: fence.job,
                token: fence.token,
            })),
        }
    }
}

crate::deadline::bounded_store!(PostgresStore);

/// The store's calls, unbounded: [`crate::deadline`] bounds each.
#[async_trait]
impl Store for Raw<'_, PostgresStore> {
    async fn create_flow(
        &self,
        flow: &FlowRecord,
        atoms: &[AtomRecord],
        fence: Option<Fence>,
    ) -> store::Result<()> {
        self.create(flow, atoms, fence, None).await
    }

    async fn create_and_commit(
        &self,
        flow: &FlowRecord,
        atoms: &[AtomRecord],
        fence: Option<Fence>,
        first: &Batch,
    ) -> store::Result<()> {
        store::check_first_batch(flow, fence, first)?;
        self.create(flow, atoms, fence, Some(first)).await
    }

    fn consumes_jobs(&self) -> bool {
        true
    }

    fn kind(&self) -> &'static str {
        "postgres"
    }

    async fn count_runs(&self) -> store::Result<store::RunCounts> {
        let mut conn = self.acquire().await.map_err(classify)?;
        let counted = async {
            let rows: Vec<(String, i64)> = sqlx::query_as(crate::counts::UNFINISHED_BY_STATE)
                .fetch_all(&mut *conn)
                .await?;
            // The server's running count of live rows (the statistics it keeps as rows are
            // inserted and deleted): one catalogue row, whatever the table's size.
            let estimate: Option<i64> = sqlx::query_scalar(
                "SELECT n_live_tup FROM pg_stat_user_tables WHERE relid = 'flows'::regclass",
            )
            .fetch_optional(&mut *conn)
            .await?;
            Ok::<_, sqlx::Error>((rows, estimate))
        }
        .await;
        self.release(conn, &counted);
        let (rows, estimate) = counted.map_err(classify)?;
        crate::counts::run_counts(rows, estimate)
    }

    async fn load_flow(&self, id: FlowId) -> store::Result<FlowSnapshot> {
        self.load(id, Meta::Read).await
    }

    async fn load_run(&self, id: FlowId) -> store::Result<FlowSnapshot> {
        self.load(id, Meta::Skip).await
    }

    async fn commit(&self, batch: &Batch) -> store::Result<()> {
        let flow = batch.flow;
        // Everything that needs no data first, so a refused batch costs no transaction.
        let step = steplog::encode_batch(batch, self.max_value_bytes, self.step_format)?;
        let fence =
            codec::fence_to_db(flow, batch.fence)?.map(|(job, token)| (job.as_uuid(), token));
        let consume = codec::consumed_job(batch)?;
        // The one-statement append, when what this store knows of the flow admits the batch.
        let known = self
            .known
            .take(flow)
            .filter(|k| k.trusted(chrono::Utc::now()) && k.admits(&batch.writes));
        if let Some(mut known) = known {
            let seq = known.seq + 1;
            // A step that is due to write a checkpoint (unless it is the run's last, ending
            // its job) writes it in a transaction with the append.
            let checkpoint = match consume {
                Some(_) => false,
                None => known.checkpoint_with(batch, self.checkpoints).is_some(),
            }
            .then_some(());
            let appended = match (&consume, fence) {
                // The run's last step, ending its job too.
                (Some((_, outcome)), Some((job, token))) => {
                    let sql = match self.announce {
                        Some(_) => APPEND_AND_CONSUME_ANNOUNCING,
                        None => APPEND_AND_CONSUME,
                    };
                    let mut query = sqlx::query_as::<_, (bool, Option<bool>)>(sql)
                        .bind(flow.as_uuid())
                        .bind(seq)
                        .bind(batch.at)
                        .bind(step.flow_state)
                        .bind(step.flow_intention)
                        .bind(step.body.as_str())
                        .bind(step.model_version)
                        .bind(job)
                        .bind(token)
                        .bind(outcome.as_str())
                        .bind(self.job_channel());
                    if let Some(channel) = &self.announce {
                        query = query.bind(channel.as_ref());
                    }
                    let mut conn = self.acquire().await.map_err(classify)?;
                    let answer = query.fetch_one(&mut *conn).await;
                    self.release(conn, &answer);
                    answer.map(|(appended, _)| appended)
                }
                _ if checkpoint.is_some() => {
                    self.append_with_checkpoint(batch, &step, &known, fence)
                        .await
                }
                _ => self
                    .write(self.append_step(batch, seq, &step, fence))
                    .await
                    .map(|done| done.rows_affected() == 1),
            };
            match appended {
                Ok(true) => {
                    // The append did not look the run up: the stamp stays (see `Known::apply`).
                    known.apply(&batch.writes, batch.at, None, checkpoint.is_some());
                    self.known.put(flow, known);
                    self.commits.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
                // The fence did not hold, or someone else appended first: the careful way
                // finds out which, and what to report.
                Ok(false) => {}
                Err(e) if is_unique_violation(&e) => {}
                Err(e) => return Err(classify(e)),
            }
        }
        let began = chrono::Utc::now();
        // `None`: stored by an earlier attempt; the run has ended, there is nothing to know.
        if let Some((mut known, checkpointed)) = self
            .commit_carefully(batch, &step, consume.as_ref(), began)
            .await?
        {
            known.apply(&batch.writes, batch.at, Some(began), checkpointed);
            self.known.put(flow, known);
        }
        self.commits.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn history(&self, id: FlowId) -> store::Result<Vec<Transition>> {
        let (rows, steps) = self
            .read_only(|tx| {
                Box::pin(async move {
                    let rows = sqlx::query(
                        "SELECT h.seq, h.at, h.subject, h.atom, h.from_state, h.to_state, \
                                h.attempt \
                         FROM flows f LEFT JOIN history h ON h.flow_id = f.id \
                         WHERE f.id = $1 ORDER BY h.seq",
                    )
                    .bind(id.as_uuid())
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(classify)?;
                    let steps = read_steps(tx, id, 1).await?;
                    Ok((rows, steps))
                })
            })
            .await?;
        if rows.is_empty() {
            return Err(store::Error::FlowNotFound(id));
        }
        let recorded = rows
            .iter()
            .filter_map(|row| transition_from_row(id, row).transpose())
            .collect::<store::Result<Vec<_>>>()?;
        steplog::history(id, recorded, &steps)
    }

    async fn list_flows(&self, query: &FlowQuery) -> store::Result<Vec<FlowRecord>> {
        let mut conn = self.acquire().await.map_err(classify)?;
        let rows = async {
            let after = match query.after {
                Some(flow) => {
                    let seq = sqlx::query_scalar::<_, i64>("SELECT seq FROM flows WHERE id = $1")
                        .bind(flow.as_uuid())
                        .fetch_optional(&mut *conn)
                        .await?;
                    match seq {
                        Some(seq) => Some(seq),
                        None => return Ok(Err(store::Error::UnknownCursor(flow))),
                    }
                }
                None => None,
            };
            let mut q = QueryBuilder::<Postgres>::new(format!(
                "SELECT {LISTED_FLOW_COLUMNS} FROM flows WHERE true"
            ));
            codec::push_flow_query(&mut q, query, after, |t| t);
            q.build().fetch_all(&mut *conn).await.map(Ok)
        }
        .await;
        self.release(conn, &rows);
        rows.map_err(classify)??.iter().map(flow_from_row).collect()
    }

    async fn head(&self, id: FlowId) -> store::Result<store::Head> {
        let mut conn = self.acquire().await.map_err(classify)?;
        let row = sqlx::query_as::<_, (String, i64)>(
            "SELECT state, coalesce((SELECT max(s.seq) FROM steps s WHERE s.flow_id = f.id), 0) \
             FROM flows f WHERE f.id = $1",
        )
        .bind(id.as_uuid())
        .fetch_optional(&mut *conn)
        .await;
        self.release(conn, &row);
        let (state, seq) = row
            .map_err(classify)?
            .ok_or(store::Error::FlowNotFound(id))?;
        codec::head(id, &state, seq)
    }

    async fn purge_flows(
        &self,
        ended_before: chrono::DateTime<chrono::Utc>,
        limit: u32,
    ) -> store::Result<u64> {
        if limit == 0 {
            return Ok(0);
        }
        let ended_before = store::purge_cutoff(ended_before, chrono::Utc::now());
        let mut kept = self.acquire().await.map_err(classify)?;
        // One statement, so one transaction: the runs with their step logs and atoms (their
        // history goes by the foreign key's cascade). A run's `updated_at` is the time of its
        // last move, for an ended run its end.
        let purged: Result<Vec<uuid::Uuid>, sqlx::Error> = sqlx::query_scalar(
            "WITH doomed AS ( \
                 SELECT id FROM flows WHERE state = ANY($1) AND updated_at < $2 \
                   AND NOT EXISTS (SELECT 1 FROM jobs WHERE jobs.id = flows.id \
                                   AND jobs.state IN ('UNCLAIMED', 'CLAIMED', 'PARKED')) \
                 ORDER BY seq LIMIT $3 FOR UPDATE SKIP LOCKED), \
             gone_steps AS (DELETE FROM steps WHERE flow_id IN (SELECT id FROM doomed)), \
             gone_atoms AS (DELETE FROM atoms WHERE flow_id IN (SELECT id FROM doomed)) \
             DELETE FROM flows WHERE id IN (SELECT id FROM doomed) RETURNING id",
        )
        .bind(&codec::TERMINAL_FLOW_STATES[..])
        .bind(ended_before)
        .bind(i64::from(limit))
        .fetch_all(&mut *kept)
        .await;
        self.release(kept, &purged);
        let purged = purged.map_err(classify)?;
        for id in &purged {
            self.known.take(FlowId::from_uuid(*id));
        }
        Ok(purged.len() as u64)
    }
}

/// The flow's columns for listings: `updated_at` is the time of the last step, if any.
const LISTED_FLOW_COLUMNS: &str = "id, name, state, intention, inputs::text AS inputs, \
     meta::text AS meta, created_at, \
     coalesce((SELECT s.at FROM steps s WHERE s.flow_id = flows.id ORDER BY s.seq DESC \
     LIMIT 1), updated_at) AS updated_at, model_version, factory, factory_version, fingerprint, \
     deadline, deadline_then";

#[cfg(test)]
mod tests {
    use super::*;

    /// Every valid schema gets a channel that fits an identifier; a schema short enough keeps
    /// the channel earlier versions used, and long ones that differ anywhere get different
    /// channels.
    #[test]
    fn job_channels_fit_an_identifier() {
        assert_eq!(job_channel("baton"), "baton_jobs_baton");
        let longest_plain = "s".repeat(MAX_IDENTIFIER_BYTES - "baton_jobs_".len());
        assert_eq!(
            job_channel(&longest_plain),
            format!("baton_jobs_{longest_plain}")
        );
        let long = "s".repeat(63);
        let mut other = long.clone();
        other.replace_range(62.., "t");
        for schema in [&long, &other, &format!("{longest_plain}x")] {
            assert!(valid_schema(schema));
            let channel = job_channel(schema);
            assert_eq!(channel.len(), MAX_IDENTIFIER_BYTES, "{channel}");
            assert!(channel.starts_with("baton_jobs_sss"), "{channel}");
        }
        assert_ne!(job_channel(&long), job_channel(&other));
        // The same in every build: a fleet must agree.
        assert_eq!(
            job_channel(&long),
            "baton_jobs_sssssssssssssssssssssssssssssssssss_64515d96d7bbe874"
        );
    }

    #[test]
    fn schema_names_are_plain_identifiers() {
        for ok in ["baton", "_x", "a1_b2", &"s".repeat(63)] {
            assert!(valid_schema(ok), "{ok}");
        }
        for bad in [
            "",
            "1a",
            "Baton",
            "a-b",
            "a b",
            "a\"b",
            "pg_x",
            &"s".repeat(64),
        ] {
            assert!(!valid_schema(bad), "{bad}");
        }
    }
}
