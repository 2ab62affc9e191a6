//! The SQLite store: one database file, shared by the processes of one host.

use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use baton_core::model::{AtomRecord, Batch, FlowRecord, FlowSnapshot, Transition};
use baton_core::store::{self, FlowQuery, Store};
use baton_core::{Fence, FencingToken, FlowId, JobId};
use chrono::{DateTime, Utc};
use sqlx::migrate::Migrator;
use sqlx::pool::PoolConnection;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{Connection, QueryBuilder, Row, Sqlite};

use crate::codec::{
    self, Meta, RawAtom, RawFlow, RawTransition, StepFormat, DEFAULT_MAX_VALUE_BYTES, ROW_VERSION,
};
use crate::deadline::Raw;
use crate::error::{classify, is_unique_violation, Error};
use crate::steplog::{self, Checkpoints, Known, LoadFrom, Stamp, Step, StepRow};

static MIGRATOR: Migrator = sqlx::migrate!("./migrations/sqlite");

/// Drops `sqlite_stat4`, the per-value statistics an `ANALYZE` leaves (the bundled SQLite is
/// built with them), if the database holds them; `sqlite_stat1` stays.
///
/// With `sqlite_stat4` present, SQLite compiles a statement again whenever a value bound to it
/// is compared with an indexed column, in case the value calls for another plan: every
/// post, claim, step and consume was parsed and planned anew at each execution. On a database
/// of a million runs that an operator had analyzed, that cost four conductors with stores of
/// their own about an eighth of their job rate (0.78–0.85 of an empty database's rate with
/// them, 0.91–0.93 without: `baton-bench history`, docs/performance.md). None of
/// the writes on a job's path needs a plan that depends on a value: the post, the steps and
/// the consume find their rows by a unique key or a row number, and the claim names the
/// indexes it walks.
///
/// A write to the schema, so only when the table is there. Run where the migrations run, in
/// their transaction, and by the job board at each conductor's heartbeat
/// ([`JobBoard::register`](baton_core::board::JobBoard::register)), in its write: so an
/// `ANALYZE` of a file that running conductors share costs them one heartbeat's worth of
/// recompiling, not the rest of their lives.
///
/// Best effort: a failure is logged and the caller's transaction goes on. Statistics cost
/// speed, never correctness, so they must not fail an open or stop a conductor.
pub(crate) async fn drop_value_statistics(conn: &mut SqliteConnection) {
    let present = sqlx::query_scalar::<_, i64>(
        "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = 'sqlite_stat4'",
    )
    .fetch_optional(&mut *conn)
    .await;
    let dropped = match present {
        Ok(None) => return,
        Ok(Some(_)) => sqlx::query("DROP TABLE sqlite_stat4")
            .execute(&mut *conn)
            .await
            .map(drop),
        Err(e) => Err(e),
    };
    match dropped {
        Ok(()) => tracing::info!("dropped sqlite_stat4 (per-value statistics of an ANALYZE): with them SQLite compiles the store's statements again at every execution"),
        Err(e) => tracing::warn!(error = %e, "could not drop sqlite_stat4 (per-value statistics of an ANALYZE); statements are compiled again at every execution until it is dropped"),
    }
}

/// How hard SQLite works to make a commit durable (its `synchronous` setting, in WAL mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Synchronous {
    /// `synchronous=NORMAL`, the default: a commit survives the death of the process (a
    /// crash, `SIGKILL`), because it is in the operating system's cache when `commit` returns.
    /// A power loss or an operating-system crash may lose the last commits (never corrupt the
    /// database). Commits do not wait for the disk, so they are fast.
    #[default]
    Normal,
    /// `synchronous=FULL`: every commit waits until the write-ahead log is on the disk, so it
    /// survives a power loss too. Each commit costs an `fsync`.
    Full,
}

/// Settings for [`SqliteStore::open_with`].
#[derive(Debug, Clone)]
#[non_exhaustive]
#[must_use]
pub struct SqliteOptions {
    /// Durability of commits; see [`Synchronous`].
    pub synchronous: Synchronous,
    /// How long any call of the store or of a job board built on it may take before it fails
    /// with `Unavailable` (whose source is a [`DeadlineExceeded`](crate::DeadlineExceeded)),
    /// and SQLite's busy timeout: how long a statement waits for another connection (another
    /// process) to release the database. More than zero, at most
    /// [`MAX_CALL_TIMEOUT`](crate::MAX_CALL_TIMEOUT); default 5 s
    /// ([`DEFAULT_CALL_TIMEOUT`](crate::DEFAULT_CALL_TIMEOUT)). See [`crate::deadline`].
    pub call_timeout: Duration,
    /// How many connections the store opens at most: one for writes, the others for reads,
    /// which run in parallel (at least one). Default 4. An in-memory database always uses one.
    pub max_connections: u32,
    /// The largest stored JSON value (result, failure, revert failure, retry history, a run's
    /// inputs) in bytes; a larger one is refused with [`store::Error::TooLarge`]. The job
    /// board built on the store refuses a job's parameters over it likewise
    /// ([`board::Error::TooLarge`](baton_core::board::Error::TooLarge)). Default 1 MiB
    /// ([`DEFAULT_MAX_VALUE_BYTES`]).
    pub max_value_bytes: usize,
    /// How long a commit's one-statement append (the usual way to commit; the transactions of
    /// the careful way, of creations and of batches that end a job do not spin) keeps polling
    /// for SQLite's answer before its task goes to sleep until woken (see [`crate::spin`]).
    /// Default zero: not at all.
    ///
    /// The runtime thread runs nothing else while it polls, so this suits a process that
    /// runs one flow at a time (a command-line tool, a script): there, 100 µs (about twice a
    /// one-step commit) made a linear flow's steps 10–20 % faster on a 2-core machine. With
    /// many flows at once, the thread is better spent on the others: four conductors in one
    /// process completed about 12 % fewer jobs a second with it (`baton-bench jobs
    /// --backend sqlite --sqlite-spin-us 100` against `0`).
    pub spin: Duration,
    /// How steps are written (see [`StepFormat`]); default [`StepFormat::Short`], which
    /// versions from 0.2.0 on read ([`StepFormat::Long`] for a fleet that still has 0.1.0
    /// engines).
    pub step_format: StepFormat,
    /// When a step also writes a checkpoint of its run, so that a load replays only the steps
    /// after it (see [`Checkpoints`]); default [`Checkpoints::DEFAULT`].
    pub checkpoints: Checkpoints,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        Self {
            synchronous: Synchronous::Normal,
            call_timeout: crate::DEFAULT_CALL_TIMEOUT,
            max_connections: 4,
            max_value_bytes: DEFAULT_MAX_VALUE_BYTES,
            spin: Duration::ZERO,
            step_format: StepFormat::default(),
            checkpoints: Checkpoints::DEFAULT,
        }
    }
}

impl SqliteOptions {
    /// Default settings.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets [`SqliteOptions::synchronous`].
    pub fn synchronous(mut self, synchronous: Synchronous) -> Self {
        self.synchronous = synchronous;
        self
    }

    /// Sets [`SqliteOptions::call_timeout`] (checked when the store is opened).
    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = timeout;
        self
    }

    /// Sets [`SqliteOptions::max_connections`] (at least 1).
    pub fn max_connections(mut self, n: u32) -> Self {
        self.max_connections = n.max(1);
        self
    }

    /// Sets [`SqliteOptions::max_value_bytes`].
    pub fn max_value_bytes(mut self, limit: usize) -> Self {
        self.max_value_bytes = limit;
        self
    }

    /// Sets [`SqliteOptions::step_format`].
    pub fn step_format(mut self, format: StepFormat) -> Self {
        self.step_format = format;
        self
    }

    /// Sets [`SqliteOptions::spin`].
    pub fn spin(mut self, spin: Duration) -> Self {
        self.spin = spin;
        self
    }

    /// Sets [`SqliteOptions::checkpoints`].
    pub fn checkpoints(mut self, checkpoints: Checkpoints) -> Self {
        self.checkpoints = checkpoints;
        self
    }
}

/// A [`Store`] in a SQLite database.
///
/// The database is in WAL mode: readers never block the writer, and several processes of one
/// host may share the file (not over a network file system). Writes take turns: in-process
/// writers queue on an async lock and use one connection, kept between writes; writers of
/// other processes wait up to the busy timeout. A commit is one statement, its own
/// transaction: the insert of one row into the flow's step log, whose primary key makes it a
/// compare-and-set (see `docs/stores.md`, "What one step costs"); a fenced commit checks the
/// job's token in the same statement. A refused insert is followed by a `BEGIN IMMEDIATE`
/// transaction that reads the flow as it is, checks write by write and names exactly what is
/// wrong (or appends, if the batch still applies). Expect
/// several thousand small commits a second with [`Synchronous::Normal`], and as many as the
/// disk syncs a second with [`Synchronous::Full`].
///
/// Clones share the pool and the commit counter.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    /// For reads.
    pool: SqlitePool,
    /// Serialises this process's write transactions, so they queue in order instead of
    /// polling SQLite's lock.
    write_gate: Arc<tokio::sync::Mutex<()>>,
    /// A pool of one connection, for writes: SQLite has one writer at a time anyway, and the
    /// connection that made the last commit still has the pages it needs cached, where another
    /// connection would read them again.
    writer: SqlitePool,
    /// The writer's connection, kept between writes (taking a connection from a pool and
    /// giving it back costs more than many a commit). Locked only by the holder of the write
    /// gate.
    writer_conn: Arc<tokio::sync::Mutex<Option<Writable>>>,
    /// Whether the writer's connection is kept between writes: not for an in-memory database,
    /// whose one connection serves the readers too.
    keep_writer: bool,
    /// Set when a write fails: the next one first checks that the connection still answers.
    writer_suspect: Arc<AtomicBool>,
    commits: Arc<AtomicU64>,
    max_value_bytes: usize,
    step_format: StepFormat,
    spin: Duration,
    checkpoints: Checkpoints,
    /// Loads replay the whole log, ignoring checkpoints (see
    /// [`SqliteStore::replaying_whole_log`]).
    whole_log: bool,
    /// What this store knows of the flows it writes to (see [`crate::steplog`]).
    known: Arc<steplog::Cache>,
    /// Wakes this process's conductors waiting for work (the job boards made from this store
    /// wait on it) when a job ends with a flow's last step: a job with the same key may run.
    job_wake: Arc<baton_core::board::Wake>,
    /// Wakes this process's conductors waiting for cancel requests on their jobs (the job
    /// boards made from this store make the requests and wait on it).
    cancel_wake: Arc<baton_core::board::Wake>,
    /// Wakes those of this process waiting for a job to end (the job boards made from this
    /// store wait on it) when a job ends, here with a flow's last step or on a board.
    job_ends: Arc<baton_core::board::Ends>,
    /// The bound of every call (see [`crate::deadline`]).
    call_timeout: Duration,
    /// The database file, symbolic links resolved (`None`: in memory); the job boards keep
    /// their conductors' liveness locks beside it.
    file: Option<Arc<std::path::Path>>,
}

fn is_memory(url: &str) -> bool {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or(url);
    rest.starts_with(":memory:") || rest.contains("mode=memory")
}

fn config(e: impl std::fmt::Display) -> Error {
    Error::Config {
        detail: e.to_string(),
    }
}

impl SqliteStore {
    /// Opens (creating it if needed) the database at `url` with default options, and applies
    /// the migrations.
    ///
    /// `url` is `sqlite://path`, `sqlite:path` or `sqlite::memory:` (a database private to
    /// this store and its clones, gone when they are dropped).
    ///
    /// # Errors
    /// [`Error::Config`] for a bad URL, [`Error::Store`] if the database cannot be opened,
    /// [`Error::Migrate`] if it holds migrations this build does not know or has edited.
    ///
    /// # Cancel safety
    /// Not cancel safe: dropped midway, the migrations may have been applied or not (each is
    /// applied whole or not at all).
    pub async fn open(url: &str) -> Result<Self, Error> {
        Self::open_with(url, SqliteOptions::default()).await
    }

    /// [`SqliteStore::open`] with options.
    ///
    /// # Errors
    /// As [`SqliteStore::open`].
    ///
    /// # Cancel safety
    /// As [`SqliteStore::open`].
    #[tracing::instrument(skip_all, fields(backend = "sqlite", url = %crate::redact_url(url)), err)]
    pub async fn open_with(url: &str, options: SqliteOptions) -> Result<Self, Error> {
        let call_timeout = crate::deadline::check("call_timeout", options.call_timeout)?;
        let memory = is_memory(url);
        let connect = SqliteConnectOptions::from_str(url)
            .map_err(config)?
            .create_if_missing(true)
            .busy_timeout(call_timeout)
            .foreign_keys(true)
            .synchronous(match options.synchronous {
                Synchronous::Normal => SqliteSynchronous::Normal,
                Synchronous::Full => SqliteSynchronous::Full,
            });
        let connect_file = connect.get_filename().to_path_buf();
        // Pinging a SQLite connection before use only costs a message to its thread: there is
        // no server that could have gone away.
        let (pool, writer) = if memory {
            // One connection, kept for the life of the pool: an in-memory database lives
            // only as long as a connection to it, and all callers must see the same one.
            let pool = SqlitePoolOptions::new()
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
                .test_before_acquire(false)
                .connect_with(connect)
                .await
                .map_err(|e| Error::Store(classify(e)))?;
            (pool.clone(), pool)
        } else {
            let writer = SqlitePoolOptions::new()
                .max_connections(1)
                .test_before_acquire(false)
                .connect_with(connect.clone())
                .await
                .map_err(|e| Error::Store(classify(e)))?;
            let pool = SqlitePoolOptions::new()
                .max_connections(options.max_connections.saturating_sub(1).max(1))
                .test_before_acquire(false)
                .connect_with(connect)
                .await
                .map_err(|e| Error::Store(classify(e)))?;
            (pool, writer)
        };
        let store = Self {
            pool,
            write_gate: Arc::new(tokio::sync::Mutex::new(())),
            writer,
            writer_conn: Arc::new(tokio::sync::Mutex::new(None)),
            keep_writer: !memory,
            writer_suspect: Arc::new(AtomicBool::new(false)),
            commits: Arc::new(AtomicU64::new(0)),
            max_value_bytes: options.max_value_bytes,
            step_format: options.step_format,
            spin: options.spin,
            checkpoints: options.checkpoints,
            whole_log: false,
            known: Arc::default(),
            job_wake: Arc::default(),
            cancel_wake: Arc::default(),
            job_ends: Arc::default(),
            call_timeout,
            // The file exists now: every process that names it, by whatever path, finds the
            // same one.
            file: (!memory).then(|| {
                let named = connect_file;
                std::fs::canonicalize(&named).unwrap_or(named).into()
            }),
        };
        if !memory {
            store.enable_wal(call_timeout).await?;
        }
        store.migrate().await?;
        Ok(store)
    }

    /// Switches the database to WAL mode (a persistent setting of the file). Switching needs
    /// an exclusive lock that SQLite's busy timeout does not wait for, so a race with another
    /// process opening the same new file is retried here for up to `patience`.
    async fn enable_wal(&self, patience: Duration) -> Result<(), Error> {
        let deadline = Instant::now() + patience;
        loop {
            let answer: Result<String, sqlx::Error> =
                sqlx::query_scalar("PRAGMA journal_mode = WAL")
                    .fetch_one(&self.writer)
                    .await;
            match answer {
                Ok(mode) if mode.eq_ignore_ascii_case("wal") => return Ok(()),
                Ok(mode) => {
                    return Err(config(format!(
                        "the database refused WAL mode (journal mode {mode:?})"
                    )))
                }
                Err(e) => {
                    let e = classify(e);
                    if !e.is_transient() || Instant::now() >= deadline {
                        return Err(Error::Store(e));
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }

    /// Applies the migrations this build carries that the database lacks. [`SqliteStore::open`]
    /// does it already; it is safe to repeat, and safe while other processes open the same
    /// database (the migrations run inside one `BEGIN IMMEDIATE` transaction).
    ///
    /// # Errors
    /// [`Error::Migrate`], or [`Error::Store`] if the database cannot be reached.
    ///
    /// # Cancel safety
    /// Cancel safe: dropped midway, the transaction rolls back.
    pub async fn migrate(&self) -> Result<(), Error> {
        let mut turn = self.write_turn().await?;
        let mut tx = self
            .begin_immediate(&mut turn)
            .await
            .map_err(Error::Store)?;
        let result = MIGRATOR.run_direct(&mut *tx).await;
        if result.is_ok() {
            drop_value_statistics(&mut tx).await;
        }
        match result {
            Ok(()) => tx
                .commit()
                .await
                .map_err(|e| Error::Store(self.failed(classify(e)))),
            Err(e) => {
                let _ = tx.rollback().await;
                self.writer_suspect.store(true, Ordering::Relaxed);
                Err(crate::error::migrate(e))
            }
        }
    }

    /// (For tests.) Makes everything this store knows of the runs it writes to look `by`
    /// older, as if this process had been paused that long: past a minute, its next commit to
    /// each run reads the run again instead of trusting what it knew.
    #[doc(hidden)]
    pub fn backdate_cached_views(&self, by: std::time::Duration) {
        self.known
            .backdate(chrono::Duration::from_std(by).unwrap_or(chrono::Duration::MAX));
    }

    /// How long a call of this store, or of a job board built on it, may take (see
    /// [`SqliteOptions::call_timeout`]).
    #[must_use]
    pub fn call_timeout(&self) -> Duration {
        self.call_timeout
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
    /// are accepted for that job. (The job board does this when it claims a job.)
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
        let mut turn = self.write_turn().await?;
        sqlx::query(
            "INSERT INTO fences (job_id, token) VALUES (?1, ?2) \
             ON CONFLICT (job_id) DO UPDATE SET token = excluded.token",
        )
        .bind(job.to_string())
        .bind(token)
        .execute(turn.conn()?)
        .await
        .map_err(|e| self.failed(classify(e)))?;
        Ok(())
    }

    /// Closes the pool, waiting for connections in use to be returned.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn close(&self) {
        // The writer's pool waits for its connection, so give it back first.
        let gate = self.write_gate.lock().await;
        let held = self.writer_conn.lock().await.take();
        drop(held);
        drop(gate);
        self.pool.close().await;
        self.writer.close().await;
    }

    /// A load in one read transaction: the flow, its atoms and its log come from the same
    /// snapshot.
    async fn load(&self, id: FlowId, meta: Meta) -> store::Result<FlowSnapshot> {
        let began = Utc::now();
        let from = if self.whole_log {
            LoadFrom::WholeLog
        } else {
            LoadFrom::Checkpoint
        };
        let mut tx = self.pool.begin().await.map_err(classify)?;
        let result = read_flow(&mut tx, id, began, meta, from).await;
        let (snapshot, known) = codec::finish(tx, result).await?;
        self.known.put(id, known);
        Ok(snapshot)
    }

    /// Waits for this process's turn to write (the write gate), with the writer's connection.
    async fn write_turn(&self) -> store::Result<Turn<'_>> {
        let gate = self.write_gate.lock().await;
        let mut slot = self.writer_conn.lock().await;
        if self.writer_suspect.swap(false, Ordering::Relaxed) {
            // The last write failed: keep the connection only if it still answers.
            if let Some(mut conn) = slot.take() {
                if conn.ping().await.is_ok() {
                    *slot = Some(conn);
                } else {
                    conn.conn.close_on_drop();
                }
            }
        }
        if slot.is_none() {
            *slot = Some(Writable::new(
                self.writer.acquire().await.map_err(classify)?,
            ));
        }
        Ok(Turn {
            slot,
            keep: self.keep_writer,
            _gate: gate,
        })
    }

    /// Begins a write transaction on `turn`'s connection: `BEGIN IMMEDIATE`, which takes
    /// SQLite's write lock at once (waiting up to the busy timeout for another process).
    async fn begin_immediate<'t>(
        &self,
        turn: &'t mut Turn<'_>,
    ) -> store::Result<sqlx::Transaction<'t, Sqlite>> {
        match turn.slot.as_mut() {
            Some(conn) => conn
                .begin_immediate()
                .await
                .map_err(|e| self.failed(classify(e))),
            None => Err(crate::error::backend("no connection to write on")),
        }
    }

    /// Notes that a write failed, so the next one checks the writer's connection first.
    fn failed(&self, e: store::Error) -> store::Error {
        self.writer_suspect.store(true, Ordering::Relaxed);
        e
    }

    pub(crate) fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// The limit on a JSON value (the job board keeps to it for a job's parameters).
    pub(crate) fn max_value_bytes(&self) -> usize {
        self.max_value_bytes
    }

    /// What this process's job boards on this store wait on for new work.
    pub(crate) fn job_wake(&self) -> &Arc<baton_core::board::Wake> {
        &self.job_wake
    }

    /// What this process's job boards on this store wait on for cancel requests.
    pub(crate) fn cancel_wake(&self) -> &Arc<baton_core::board::Wake> {
        &self.cancel_wake
    }

    /// What this process's job boards on this store wait on for jobs to end.
    pub(crate) fn job_ends(&self) -> &Arc<baton_core::board::Ends> {
        &self.job_ends
    }

    /// The lock this process's write transactions queue on (the job board's too).
    pub(crate) fn write_gate(&self) -> &tokio::sync::Mutex<()> {
        &self.write_gate
    }

    /// The database file (`None`: an in-memory database).
    pub(crate) fn file(&self) -> Option<&std::path::Path> {
        self.file.as_deref()
    }
}

/// A pooled connection to write on, closed if it is dropped while a `BEGIN IMMEDIATE` on it is
/// under way ([`Writable::begin_immediate`]).
///
/// A call given up half-way (past its deadline, say) drops what it was doing. sqlx rolls
/// back a `BEGIN` whose caller went away before the worker thread answered it, but a custom
/// `BEGIN` (`begin_with`) given up after that answer, while sqlx checks that it did start a
/// transaction, leaves the connection in a transaction that nothing will end: the next
/// `begin_with` on it fails ("non-zero transaction depth") and a plain `begin` nests in it,
/// holding SQLite's write lock for good. Such a connection is closed instead, never used
/// again.
#[derive(Debug)]
pub(crate) struct Writable {
    conn: PoolConnection<Sqlite>,
    /// Set while a `BEGIN IMMEDIATE` is under way.
    beginning: bool,
}

impl Writable {
    pub(crate) fn new(conn: PoolConnection<Sqlite>) -> Self {
        Self {
            conn,
            beginning: false,
        }
    }

    /// Begins a write transaction: `BEGIN IMMEDIATE`, which takes SQLite's write lock at once
    /// (waiting up to the busy timeout for another process).
    pub(crate) async fn begin_immediate(
        &mut self,
    ) -> Result<sqlx::Transaction<'_, Sqlite>, sqlx::Error> {
        let Self { conn, beginning } = self;
        *beginning = true;
        let tx = conn.begin_with("BEGIN IMMEDIATE").await;
        *beginning = false;
        tx
    }
}

impl std::ops::Deref for Writable {
    type Target = SqliteConnection;

    fn deref(&self) -> &SqliteConnection {
        &self.conn
    }
}

impl std::ops::DerefMut for Writable {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        &mut self.conn
    }
}

impl Drop for Writable {
    fn drop(&mut self) {
        if self.beginning {
            self.conn.close_on_drop();
        }
    }
}

/// A turn to write: the write gate, held, and the connection to write on.
struct Turn<'a> {
    slot: tokio::sync::MutexGuard<'a, Option<Writable>>,
    keep: bool,
    // Dropped after `slot` (fields drop in order): the connection is put away first.
    _gate: tokio::sync::MutexGuard<'a, ()>,
}

impl Turn<'_> {
    /// The writer's connection.
    fn conn(&mut self) -> store::Result<&mut SqliteConnection> {
        match self.slot.as_mut() {
            Some(conn) => Ok(&mut **conn),
            None => Err(crate::error::backend("no connection to write on")),
        }
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let abandoned = self.slot.as_ref().is_some_and(|conn| conn.beginning);
        if !self.keep || abandoned {
            // Back to the pool, for the readers; or, given up on in the middle of its
            // `BEGIN`, closed (see `Writable`).
            self.slot.take();
        }
    }
}

async fn check_fence(
    conn: &mut SqliteConnection,
    flow: FlowId,
    fence: Option<Fence>,
) -> store::Result<()> {
    let Some(fence) = fence else {
        return Ok(());
    };
    let current: Option<i64> = sqlx::query_scalar("SELECT token FROM fences WHERE job_id = ?1")
        .bind(fence.job.to_string())
        .fetch_optional(&mut *conn)
        .await
        .map_err(classify)?;
    match (current, codec::token_to_db(fence.token)) {
        (Some(current), Some(presented)) if current == presented => Ok(()),
        _ => Err(store::Error::Fenced {
            flow,
            job: fence.job,
            token: fence.token,
        }),
    }
}

/// What tells whether a batch of `flow` ending job `job` was stored already (see
/// [`codec::Ended`]).
async fn ended(
    conn: &mut SqliteConnection,
    flow: FlowId,
    job: JobId,
) -> sqlx::Result<codec::Ended> {
    let last_step: Option<Option<String>> = sqlx::query_scalar(
        "SELECT (SELECT s.body FROM steps s WHERE s.id > f.seq * ?2 AND s.id < (f.seq + 1) * ?2 \
                 ORDER BY s.id DESC LIMIT 1) \
           FROM flows f WHERE f.id = ?1",
    )
    .bind(flow.to_string())
    .bind(STEPS_PER_FLOW)
    .fetch_optional(&mut *conn)
    .await?;
    let job = sqlx::query_as("SELECT state, token, outcome FROM jobs WHERE id = ?1")
        .bind(job.to_string())
        .fetch_optional(&mut *conn)
        .await?;
    Ok(codec::Ended {
        last_step: last_step.flatten(),
        job,
    })
}

/// Marks the job `fence` claims `COMPLETE` with `outcome`, in the caller's transaction;
/// [`store::Error::Fenced`] if the claim is no longer current.
async fn consume_job(
    conn: &mut SqliteConnection,
    flow: FlowId,
    fence: Fence,
    outcome: &str,
) -> store::Result<()> {
    let token = codec::token_to_db(fence.token);
    let done = sqlx::query(
        "UPDATE jobs SET state = 'COMPLETE', owner = NULL, lease_expires_at = NULL, \
             outcome = ?3, updated_at = ?4 \
         WHERE id = ?1 AND state = 'CLAIMED' AND token = ?2",
    )
    .bind(fence.job.to_string())
    .bind(token)
    .bind(outcome)
    .bind(codec::time_text(chrono::Utc::now()))
    .execute(&mut *conn)
    .await
    .map_err(classify)?;
    if done.rows_affected() == 1 {
        Ok(())
    } else {
        Err(store::Error::Fenced {
            flow,
            job: fence.job,
            token: fence.token,
        })
    }
}

fn flow_id_of(text: &str) -> store::Result<FlowId> {
    FlowId::from_str(text).map_err(|e| {
        codec::corrupt(
            FlowId::from_uuid(uuid::Uuid::nil()),
            None,
            format!("unreadable flow id: {e}"),
        )
    })
}

fn time(column: &str, text: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    codec::parse_time(text).map_err(|e| format!("column {column}: {e}"))
}

fn opt_time(
    column: &str,
    text: Option<String>,
) -> Result<Option<chrono::DateTime<chrono::Utc>>, String> {
    text.map(|t| time(column, &t)).transpose()
}

fn get<'r, T>(row: &'r SqliteRow, column: &str) -> Result<T, String>
where
    T: sqlx::Decode<'r, Sqlite> + sqlx::Type<Sqlite>,
{
    row.try_get(column)
        .map_err(|e| format!("column {column}: {e}"))
}

/// The columns of a flow's row, with `meta` as given (the column, or `'null' AS meta`).
macro_rules! flow_columns {
    ($meta:literal) => {
        concat!(
            "id, name, state, intention, inputs, ",
            $meta,
            ", created_at, updated_at, model_version, factory, factory_version, fingerprint, \
             deadline, deadline_then"
        )
    };
}

fn flow_from_row(row: &SqliteRow) -> store::Result<FlowRecord> {
    let id_text: String = get(row, "id")
        .map_err(|d| codec::corrupt(FlowId::from_uuid(uuid::Uuid::nil()), None, d))?;
    let id = flow_id_of(&id_text)?;
    let raw = (|| -> Result<RawFlow, String> {
        Ok(RawFlow {
            id,
            name: get(row, "name")?,
            state: get(row, "state")?,
            intention: get(row, "intention")?,
            inputs: get(row, "inputs")?,
            meta: get(row, "meta")?,
            created_at: time("created_at", &get::<String>(row, "created_at")?)?,
            updated_at: time("updated_at", &get::<String>(row, "updated_at")?)?,
            model_version: get(row, "model_version")?,
            factory: get(row, "factory")?,
            factory_version: get(row, "factory_version")?,
            fingerprint: get(row, "fingerprint")?,
            deadline: opt_time("deadline", get(row, "deadline")?)?,
            deadline_then: get(row, "deadline_then")?,
        })
    })()
    .map_err(|d| codec::corrupt(id, None, d))?;
    codec::decode_flow(raw)
}

const ATOM_COLUMNS: &str = "name, kind, state, intention, attempt, round, result, failure, \
     revert_failure, retry_history, retry_at, progress, started_at, finished_at, model_version, \
     deadline";

fn atom_from_row(flow: FlowId, row: &SqliteRow) -> store::Result<AtomRecord> {
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
            retry_at: opt_time("retry_at", get(row, "retry_at")?)?,
            progress: get(row, "progress")?,
            started_at: opt_time("started_at", get(row, "started_at")?)?,
            finished_at: opt_time("finished_at", get(row, "finished_at")?)?,
            deadline: opt_time("deadline", get(row, "deadline")?)?,
            model_version: get(row, "model_version")?,
        })
    })()
    .map_err(|d| codec::corrupt(flow, Some(&name), d))?;
    codec::decode_atom(flow, name, raw)
}

fn transition_from_row(flow: FlowId, row: &SqliteRow) -> store::Result<Option<Transition>> {
    let atom: Option<String> = get(row, "atom").unwrap_or_default();
    let raw = (|| -> Result<Option<RawTransition>, String> {
        let Some(seq) = get::<Option<i64>>(row, "seq")? else {
            return Ok(None);
        };
        Ok(Some(RawTransition {
            seq,
            at: time("at", &get::<String>(row, "at")?)?,
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

fn step_from_row(flow: FlowId, row: &SqliteRow) -> store::Result<StepRow> {
    let go = || -> Result<StepRow, String> {
        Ok(StepRow {
            seq: get(row, "seq")?,
            at: time("at", &get::<String>(row, "at")?)?,
            body: get(row, "body")?,
            model_version: get(row, "model_version")?,
        })
    };
    go().map_err(|d| codec::corrupt(flow, None, format!("step log: {d}")))
}

/// How many steps a flow may have: its steps' row ids are `base + seq`, where `base` is the
/// flow's `flows.seq` times this (see the migration that creates `steps`).
const STEPS_PER_FLOW: i64 = 1 << 32;

/// Where the steps of the flow with `flows.seq = flow_seq` start.
fn base_of(flow: FlowId, flow_seq: i64) -> store::Result<i64> {
    flow_seq.checked_mul(STEPS_PER_FLOW).ok_or_else(|| {
        codec::corrupt(
            flow,
            None,
            format!("flow number {flow_seq} is out of range"),
        )
    })
}

/// The flow's steps from number `from_seq` on, in order; its steps start at `base`. Read packed, in chunks, for the
/// reasons given at [`read_atoms`]; a step row of an unexpected type sends the whole read down
/// the row-by-row path, whose error says what is wrong.
async fn read_steps(
    conn: &mut SqliteConnection,
    flow: FlowId,
    base: i64,
    from_seq: i64,
) -> store::Result<Vec<StepRow>> {
    let end = base.saturating_add(STEPS_PER_FLOW);
    let mut steps = Vec::new();
    let mut after = base.saturating_add(from_seq.max(1) - 1);
    loop {
        let query = sqlx::query_as(
            "SELECT json_group_array(json_array(id, seq, at, body, model_version)), count(*), \
                    max(id), max(typeof(seq) <> 'integer' OR typeof(at) <> 'text' \
                        OR typeof(body) <> 'text' OR typeof(model_version) <> 'integer') \
               FROM (SELECT * FROM steps WHERE id > ?1 AND id < ?2 ORDER BY id LIMIT ?3)",
        )
        .bind(after)
        .bind(end)
        .bind(PACKED_CHUNK);
        let Some(chunk) = read_packed(conn, flow, query, PACKED_CHUNK).await? else {
            return read_step_rows(conn, flow, base, from_seq).await;
        };
        let Ok(rows) = serde_json::from_str::<Vec<(i64, i64, String, String, i64)>>(&chunk.json)
        else {
            return read_step_rows(conn, flow, base, from_seq).await;
        };
        for (id, seq, at, body, model_version) in rows {
            steps.push((
                id,
                StepRow {
                    seq,
                    at: time("at", &at)
                        .map_err(|d| codec::corrupt(flow, None, format!("step log: {d}")))?,
                    body,
                    model_version,
                },
            ));
        }
        match chunk.next_after {
            Some(last) => after = last,
            None => break,
        }
    }
    steps.sort_by_key(|(id, _)| *id);
    Ok(steps.into_iter().map(|(_, step)| step).collect())
}

/// The flow's steps from number `from_seq` on, one row at a time.
async fn read_step_rows(
    conn: &mut SqliteConnection,
    flow: FlowId,
    base: i64,
    from_seq: i64,
) -> store::Result<Vec<StepRow>> {
    let rows = sqlx::query(
        "SELECT seq, at, body, model_version FROM steps WHERE id > ?1 AND id < ?2 ORDER BY id",
    )
    .bind(base.saturating_add(from_seq.max(1) - 1))
    .bind(base.saturating_add(STEPS_PER_FLOW))
    .fetch_all(&mut *conn)
    .await
    .map_err(classify)?;
    rows.iter().map(|r| step_from_row(flow, r)).collect()
}

/// An atom's row as SQLite packs it into a JSON array (see [`packed_atoms`]): `position`,
/// `name`, `kind` and `model_version`, then, unless the atom is as its creation left it
/// ([`PackedAtom::rest`] is `None`), the other columns of [`ATOM_COLUMNS`] in order (`progress`
/// as text with 17 significant digits, which reads back exactly; SQLite's JSON writes 15).
pub(crate) struct PackedAtom {
    position: i64,
    name: String,
    kind: String,
    model_version: i64,
    rest: Option<PackedRest>,
}

/// The columns of an atom that has moved since its creation.
struct PackedRest {
    state: String,
    intention: String,
    attempt: i64,
    round: i64,
    result: Option<String>,
    failure: Option<String>,
    revert_failure: Option<String>,
    retry_history: String,
    retry_at: Option<String>,
    progress: String,
    started_at: Option<String>,
    finished_at: Option<String>,
    deadline: Option<String>,
}

impl<'de> serde::Deserialize<'de> for PackedAtom {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{Error as _, SeqAccess, Visitor};

        struct Row;
        impl<'de> Visitor<'de> for Row {
            type Value = PackedAtom;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a packed atom row")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<PackedAtom, A::Error> {
                // A row cut short is refused (the read then goes row by row, whose error
                // says what is wrong).
                macro_rules! field {
                    () => {
                        seq.next_element()?
                            .ok_or_else(|| A::Error::custom("a packed atom row ended early"))?
                    };
                }
                let position = field!();
                let name = field!();
                let kind = field!();
                let model_version = field!();
                let rest = match seq.next_element::<String>()? {
                    None => None,
                    Some(state) => Some(PackedRest {
                        state,
                        intention: field!(),
                        attempt: field!(),
                        round: field!(),
                        result: field!(),
                        failure: field!(),
                        revert_failure: field!(),
                        retry_history: field!(),
                        retry_at: field!(),
                        progress: field!(),
                        started_at: field!(),
                        finished_at: field!(),
                        deadline: field!(),
                    }),
                };
                Ok(PackedAtom {
                    position,
                    name,
                    kind,
                    model_version,
                    rest,
                })
            }
        }
        d.deserialize_seq(Row)
    }
}

/// Rows read packed per statement: bounds the memory a packed read holds at once (the text
/// SQLite builds, sqlx's copy of it and the parsed rows) to a few copies of this many rows.
const PACKED_CHUNK: i64 = 128;

/// A chunk of rows packed by SQLite.
struct Packed {
    /// The rows, a JSON array of arrays.
    json: String,
    /// The key to read on from, if the chunk was full (more rows may follow).
    next_after: Option<i64>,
}

/// What a packing query answers: the packed rows, how many, the last key, and whether any
/// row has a value of an unexpected type.
type PackedAnswer = (String, i64, Option<i64>, Option<bool>);

/// Runs a packing query (see [`PackedAnswer`]; `chunk` is the `LIMIT` it was given). `None`
/// when the rows must be read one by one instead: an odd row; an answer sqlx cannot decode
/// (text that is not UTF-8, a key that is not a number); or a statement error that leaves the
/// transaction as it was (`SQLITE_ERROR`, as for a BLOB that SQLite's JSON functions refuse,
/// or `SQLITE_TOOBIG`). Any other error is the read's error: SQLite may have rolled back the
/// transaction the read is part of.
async fn read_packed<'q>(
    conn: &mut SqliteConnection,
    flow: FlowId,
    query: sqlx::query::QueryAs<'q, Sqlite, PackedAnswer, sqlx::sqlite::SqliteArguments<'q>>,
    chunk: i64,
) -> store::Result<Option<Packed>> {
    match query.fetch_one(&mut *conn).await {
        Ok((_, _, _, Some(true))) => {
            tracing::debug!(%flow, "a row of an unexpected type: reading the rows one by one");
            Ok(None)
        }
        Ok((json, count, last, _)) => Ok(Some(Packed {
            json,
            next_after: last.filter(|_| count >= chunk),
        })),
        Err(e) if statement_error(&e) => {
            tracing::debug!(%flow, error = %e, "packing refused: reading the rows one by one");
            Ok(None)
        }
        Err(e) => Err(classify(e)),
    }
}

/// Whether `e` is an error of the statement alone (`SQLITE_ERROR`, `SQLITE_TOOBIG`, or an
/// answer sqlx could not decode), which leaves an open transaction as it was.
fn statement_error(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_))
        || e.as_database_error()
            .and_then(|d| d.code())
            .and_then(|code| code.parse::<i64>().ok())
            .is_some_and(|code| matches!(code & 0xff, 1 | 18))
}

/// Packs up to `?3` of flow `?1`'s atoms with positions after `?2` (from the first, if `?2` is
/// NULL): see [`read_packed`] and [`PackedAtom`]. No upper bound: a damaged position (text, a
/// BLOB) sorts after every number, so it lands in a chunk and trips the type check instead of
/// being left out. Two statements, not one with `?2 IS NULL OR position > ?2`, which SQLite
/// cannot answer from the index's range: each chunk would scan the flow's atoms from the first.
///
/// An atom as its creation left it (every atom of a new run, and on SQLite the `atoms` table
/// is written only at creation: later changes are in the step log) is packed as four values.
/// The columns it is recognised by need no type check: a column of INTEGER or REAL affinity
/// that equals 0 holds the number 0 (SQLite stores `0.0` in an INTEGER column, or `0` in a REAL
/// one, as that column's type), and one of TEXT affinity that equals a text holds text (a BLOB
/// never equals a text). The four it is packed as are checked, `name` and `kind` included: a
/// BLOB there that is valid binary JSON, `json_array` would take as JSON.
macro_rules! packed_atoms {
    ($after:literal) => {
        concat!(
            "\
    SELECT json_group_array(CASE WHEN pristine \
               THEN json_array(position, name, kind, model_version) \
               ELSE json_array(position, name, kind, model_version, state, intention, attempt, \
                   round, result, failure, revert_failure, retry_history, retry_at, \
                   printf('%!.17g', progress), started_at, finished_at, deadline) END), \
           count(*), max(position), \
           max(typeof(model_version) <> 'integer' OR typeof(position) <> 'integer' \
               OR typeof(name) <> 'text' OR typeof(kind) <> 'text' \
               OR CASE WHEN pristine THEN 0 \
               ELSE typeof(state) <> 'text' OR typeof(intention) <> 'text' \
                   OR typeof(attempt) <> 'integer' OR typeof(round) <> 'integer' \
                   OR typeof(result) NOT IN ('text', 'null') \
                   OR typeof(failure) NOT IN ('text', 'null') \
                   OR typeof(revert_failure) NOT IN ('text', 'null') \
                   OR typeof(retry_history) <> 'text' OR typeof(retry_at) NOT IN ('text', 'null') \
                   OR typeof(progress) <> 'real' OR typeof(started_at) NOT IN ('text', 'null') \
                   OR typeof(finished_at) NOT IN ('text', 'null') \
                   OR typeof(deadline) NOT IN ('text', 'null') END) \
      FROM (SELECT *, state = 'PENDING' AND intention = 'EXECUTE' AND attempt = 0 \
                   AND round = 0 AND result IS NULL AND failure IS NULL \
                   AND revert_failure IS NULL AND retry_history = '[]' AND retry_at IS NULL \
                   AND progress = 0 AND started_at IS NULL AND finished_at IS NULL \
                   AND deadline IS NULL \
                   AS pristine \
              FROM atoms WHERE flow_id = ?1",
            $after,
            " ORDER BY position LIMIT ?3)"
        )
    };
}

/// The flow's atoms, in creation order.
///
/// sqlx hands a result's rows over from its SQLite thread one message at a time, and each row
/// is copied column by column: for a flow of 1000 atoms that took 4–10 ms, most of the time
/// to load it. So SQLite packs the atoms into JSON text, [`PACKED_CHUNK`] rows per statement.
/// JSON columns stay text (quoted), so a damaged value is found by the same checks as on the
/// row-by-row path; a value of an unexpected type (SQLite lets a column hold any) sends the
/// whole read down the row-by-row path, whose error names the row.
async fn read_atoms(
    conn: &mut SqliteConnection,
    id: FlowId,
    key: &str,
) -> store::Result<Vec<AtomRecord>> {
    let mut atoms = Vec::new();
    let mut after: Option<i64> = None;
    loop {
        let sql = match after {
            None => packed_atoms!(""),
            Some(_) => packed_atoms!(" AND position > ?2"),
        };
        let query = sqlx::query_as(sql).bind(key).bind(after).bind(PACKED_CHUNK);
        let Some(chunk) = read_packed(conn, id, query, PACKED_CHUNK).await? else {
            return read_atom_rows(conn, id, key).await;
        };
        let Ok(rows) = serde_json::from_str::<Vec<PackedAtom>>(&chunk.json) else {
            return read_atom_rows(conn, id, key).await;
        };
        for a in rows {
            let position = a.position;
            match unpack_atom(id, a)? {
                Some(atom) => atoms.push((position, atom)),
                None => return read_atom_rows(conn, id, key).await,
            }
        }
        match chunk.next_after {
            Some(last) => after = Some(last),
            None => break,
        }
    }
    atoms.sort_by_key(|(position, _)| *position);
    Ok(atoms.into_iter().map(|(_, atom)| atom).collect())
}

/// The flow's atoms, one row at a time.
async fn read_atom_rows(
    conn: &mut SqliteConnection,
    id: FlowId,
    key: &str,
) -> store::Result<Vec<AtomRecord>> {
    let rows = sqlx::query(&format!(
        "SELECT {ATOM_COLUMNS} FROM atoms WHERE flow_id = ?1 ORDER BY position"
    ))
    .bind(key)
    .fetch_all(&mut *conn)
    .await
    .map_err(classify)?;
    rows.iter().map(|r| atom_from_row(id, r)).collect()
}

/// An atom read packed; `None` if its `progress` does not read back as a number (then the
/// row-by-row path says why).
pub(crate) fn unpack_atom(flow: FlowId, a: PackedAtom) -> store::Result<Option<AtomRecord>> {
    let name = a.name;
    let Some(rest) = a.rest else {
        return codec::decode_pristine_atom(flow, name, &a.kind, a.model_version).map(Some);
    };
    let Ok(progress) = rest.progress.parse::<f64>() else {
        return Ok(None);
    };
    let raw = (|| -> Result<RawAtom, String> {
        Ok(RawAtom {
            kind: a.kind,
            state: rest.state,
            intention: rest.intention,
            attempt: rest.attempt,
            round: rest.round,
            result: rest.result,
            failure: rest.failure,
            revert_failure: rest.revert_failure,
            retry_history: rest.retry_history,
            retry_at: opt_time("retry_at", rest.retry_at)?,
            progress,
            started_at: opt_time("started_at", rest.started_at)?,
            finished_at: opt_time("finished_at", rest.finished_at)?,
            deadline: opt_time("deadline", rest.deadline)?,
            model_version: a.model_version,
        })
    })()
    .map_err(|d| codec::corrupt(flow, Some(&name), d))?;
    codec::decode_atom(flow, name, raw).map(Some)
}

/// The flow as it is now, and what this store then knows of it. Run it in a transaction, so
/// that the rows come from one snapshot.
///
/// With [`Meta::Skip`] the run's `meta` is read as `null` (see [`Store::load_run`]). The
/// log is read from the run's checkpoint on, or whole (see [`steplog::read_from`]).
async fn read_flow(
    conn: &mut SqliteConnection,
    id: FlowId,
    began: DateTime<Utc>,
    meta: Meta,
    from: LoadFrom,
) -> store::Result<(FlowSnapshot, Known)> {
    let key = id.to_string();
    let sql = match meta {
        Meta::Read => concat!(
            "SELECT ",
            flow_columns!("meta"),
            ", seq AS flow_seq, checkpoint_seq, checkpoint_at FROM flows WHERE id = ?1"
        ),
        Meta::Skip => concat!(
            "SELECT ",
            flow_columns!("'null' AS meta"),
            ", seq AS flow_seq, checkpoint_seq, checkpoint_at FROM flows WHERE id = ?1"
        ),
    };
    let row = sqlx::query(sql)
        .bind(&key)
        .fetch_optional(&mut *conn)
        .await
        .map_err(classify)?
        .ok_or(store::Error::FlowNotFound(id))?;
    let atoms = read_atoms(conn, id, &key).await?;
    let (flow_seq, stamp) = (|| -> Result<(i64, Stamp), String> {
        let stamp = Stamp {
            seq: get(&row, "checkpoint_seq")?,
            at: opt_time("checkpoint_at", get(&row, "checkpoint_at")?)?,
        };
        Ok((get(&row, "flow_seq")?, stamp))
    })()
    .map_err(|d| codec::corrupt(id, None, d))?;
    let base = base_of(id, flow_seq)?;
    let steps = read_steps(conn, id, base, steplog::read_from(stamp, from)).await?;
    let flow = flow_from_row(&row)?;
    let (snapshot, known) = steplog::assemble(flow, atoms, stamp, &steps, began)?;
    Ok((snapshot, known.based(base)))
}

/// Appends `step` as step number `seq` of the flow whose steps start at `base`: `Ok(false)`
/// if that run (its row with this key and number) is gone or the fence (job id and token)
/// does not hold, a unique violation if that step exists already.
async fn append(
    conn: &mut SqliteConnection,
    key: &str,
    base: i64,
    seq: i64,
    at: &str,
    step: &Step,
    fence: Option<&(String, i64)>,
) -> Result<bool, sqlx::Error> {
    if !(1..STEPS_PER_FLOW).contains(&seq) {
        return Err(sqlx::Error::Protocol(format!(
            "flow {key} cannot have a step number {seq}: a flow holds fewer than 2^32 steps"
        )));
    }
    // Only while the run exists (a lookup of its row by key, `base` being its `seq` shifted):
    // a writer with a stale view of a run that ended and was purged meanwhile finds no
    // step after its last one to collide with, and must be refused all the same. The lookup
    // gives the row its `flow_id`, NULL (refused as such) when the run or the fence is gone.
    //
    // `INSERT ... VALUES`, not `INSERT ... SELECT ... WHERE EXISTS`: SQLite runs an
    // `INSERT ... SELECT` on a table with a row trigger through a temporary table, which cost
    // about 2 µs a step (a tenth of one) to open and close.
    macro_rules! insert {
        ($fence:literal) => {
            concat!(
                "INSERT INTO steps \
                 (id, flow_id, seq, at, flow_state, flow_intention, body, model_version) \
                 VALUES (?1 + ?3, (SELECT id FROM flows WHERE seq = ?1 >> 32 AND id = ?2",
                $fence,
                "), ?3, ?4, ?5, ?6, ?7, ?8)"
            )
        };
    }
    let sql = match fence {
        None => insert!(""),
        Some(_) => insert!(" AND EXISTS (SELECT 1 FROM fences WHERE job_id = ?9 AND token = ?10)"),
    };
    let mut query = sqlx::query(sql)
        .bind(base)
        .bind(key)
        .bind(seq)
        .bind(at)
        .bind(step.flow_state)
        .bind(step.flow_intention)
        .bind(step.body.as_str())
        .bind(step.model_version);
    if let Some((job, token)) = fence {
        query = query.bind(job.as_str()).bind(*token);
    }
    match query.execute(conn).await {
        Ok(_) => Ok(true),
        Err(e) if is_gone_run(&e) => Ok(false),
        Err(e) => Err(e),
    }
}

/// SQLite's extended result code for a `NOT NULL` constraint that failed.
const SQLITE_CONSTRAINT_NOTNULL: &str = "1299";

/// Whether [`append`] was refused for a NULL `flow_id`: the run or the fence it looked up is
/// gone. Told by the extended result code alone, never by the message (SQLite's to word):
/// every other `NOT NULL` column of the insert is bound from a value that is never NULL, so
/// `flow_id` is the only one it can find NULL.
fn is_gone_run(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .is_some_and(|d| d.code().as_deref() == Some(SQLITE_CONSTRAINT_NOTNULL))
}

/// [`append`] inside a transaction that has just read or written the run: the run is there,
/// so a refusal would be a bug, reported rather than committed as a step that is not.
async fn append_in_transaction(
    conn: &mut SqliteConnection,
    key: &str,
    base: i64,
    seq: i64,
    at: &str,
    step: &Step,
) -> store::Result<()> {
    if append(conn, key, base, seq, at, step, None)
        .await
        .map_err(classify)?
    {
        Ok(())
    } else {
        Err(crate::error::backend(format!(
            "flow {key}: its step {seq} was refused although the transaction holds the run"
        )))
    }
}

/// Binds an encoded atom's columns, in `ATOM_VALUES` order, after the flow id and name.
macro_rules! bind_atom {
    ($query:expr, $enc:expr) => {{
        let enc = $enc;
        $query
            .bind(enc.kind)
            .bind(enc.state)
            .bind(enc.intention)
            .bind(i64::from(enc.attempt))
            .bind(i64::from(enc.round))
            .bind(enc.result.as_deref().map(serde_json::value::RawValue::get))
            .bind(enc.failure.as_deref().map(serde_json::value::RawValue::get))
            .bind(
                enc.revert_failure
                    .as_deref()
                    .map(serde_json::value::RawValue::get),
            )
            .bind(enc.retry_history.get())
            .bind(enc.retry_at.map(codec::time_text))
            .bind(enc.progress)
            .bind(enc.started_at.map(codec::time_text))
            .bind(enc.finished_at.map(codec::time_text))
            .bind(ROW_VERSION)
            .bind(enc.deadline.map(codec::time_text))
    }};
}

/// How many atoms one statement inserts at a run's creation: as many of the biggest size as
/// fit, then of the next, so that any run takes few statements and the connection's statement
/// cache holds only these four texts. 50 rows of 18 values keep a statement under the 999
/// variables older SQLite builds allow.
const ATOMS_PER_INSERT: [usize; 4] = [50, 16, 4, 1];

/// The statement that inserts `ATOMS_PER_INSERT[size]` atoms.
fn insert_atoms_sql(size: usize) -> &'static str {
    static TEXTS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let texts = TEXTS.get_or_init(|| {
        ATOMS_PER_INSERT
            .iter()
            .map(|&rows| {
                let row = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";
                format!(
                    "INSERT INTO atoms (flow_id, name, position, kind, state, intention, \
                     attempt, round, result, failure, revert_failure, retry_history, retry_at, \
                     progress, started_at, finished_at, model_version, deadline) VALUES {}",
                    vec![row; rows].join(", ")
                )
            })
            .collect()
    });
    &texts[size]
}

/// The largest statement size of [`ATOMS_PER_INSERT`] that `left` rows fill: its index and
/// its rows. The last size is 1, so one always fits.
fn batch_of(left: usize) -> (usize, usize) {
    let size = ATOMS_PER_INSERT
        .iter()
        .position(|&rows| rows <= left)
        .unwrap_or(ATOMS_PER_INSERT.len() - 1);
    (size, ATOMS_PER_INSERT[size])
}

/// Inserts a new run's atoms, several rows a statement (see [`ATOMS_PER_INSERT`]): one
/// statement an atom held SQLite's write lock about four times as long for a run of 1000
/// atoms, a message to sqlx's SQLite thread and back for each.
async fn insert_atoms(
    conn: &mut SqliteConnection,
    flow: &str,
    atoms: &[codec::EncodedAtom<'_>],
) -> store::Result<()> {
    let mut done = 0;
    while done < atoms.len() {
        let (size, rows) = batch_of(atoms.len() - done);
        let mut query = sqlx::query(insert_atoms_sql(size));
        for (i, enc) in atoms[done..done + rows].iter().enumerate() {
            let position =
                i64::try_from(done + i).map_err(|_| crate::error::backend("too many atoms"))?;
            query = bind_atom!(query.bind(flow).bind(enc.name).bind(position), enc);
        }
        query.execute(&mut *conn).await.map_err(classify)?;
        done += rows;
    }
    Ok(())
}

/// Writes `checkpoint` in the caller's transaction, which has just appended its step: the
/// rows of the atoms it holds (several a statement, as [`insert_atoms`] does) and the run's
/// stamp.
async fn write_checkpoint(
    conn: &mut SqliteConnection,
    flow: FlowId,
    key: &str,
    checkpoint: &steplog::Checkpoint<'_>,
    limit: usize,
) -> store::Result<()> {
    let encoded = checkpoint
        .atoms
        .iter()
        .map(|a| codec::encode_atom(flow, a, limit))
        .collect::<store::Result<Vec<_>>>()?;
    let mut done = 0;
    let mut updated = 0;
    while done < encoded.len() {
        let (size, rows) = batch_of(encoded.len() - done);
        let mut query = sqlx::query(update_atoms_sql(size));
        for enc in &encoded[done..done + rows] {
            query = bind_atom!(query.bind(enc.name), enc);
        }
        updated += query
            .bind(key)
            .execute(&mut *conn)
            .await
            .map_err(classify)?
            .rows_affected();
        done += rows;
    }
    if updated != encoded.len() as u64 {
        // Refused, so the step goes with it: a checkpoint never disagrees with the log.
        return Err(codec::corrupt(
            flow,
            None,
            format!(
                "a checkpoint at step {} found {updated} of its {} atoms' rows",
                checkpoint.seq,
                encoded.len()
            ),
        ));
    }
    sqlx::query("UPDATE flows SET checkpoint_seq = ?1, checkpoint_at = ?2 WHERE id = ?3")
        .bind(checkpoint.seq)
        .bind(codec::time_text(checkpoint.at))
        .bind(key)
        .execute(&mut *conn)
        .await
        .map_err(classify)?;
    Ok(())
}

/// The statement that rewrites `ATOMS_PER_INSERT[size]` atoms' rows of one run for a
/// checkpoint: the rows' values (name, then the columns [`bind_atom`] binds), then the run.
fn update_atoms_sql(size: usize) -> &'static str {
    static TEXTS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let texts = TEXTS.get_or_init(|| {
        ATOMS_PER_INSERT
            .iter()
            .map(|&rows| {
                let row = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";
                format!(
                    "UPDATE atoms SET kind = v.column2, state = v.column3, \
                     intention = v.column4, attempt = v.column5, round = v.column6, \
                     result = v.column7, failure = v.column8, revert_failure = v.column9, \
                     retry_history = v.column10, retry_at = v.column11, progress = v.column12, \
                     started_at = v.column13, finished_at = v.column14, \
                     model_version = v.column15, deadline = v.column16 \
                     FROM (VALUES {}) AS v \
                     WHERE atoms.flow_id = ? AND atoms.name = v.column1",
                    vec![row; rows].join(", ")
                )
            })
            .collect()
    });
    &texts[size]
}

impl SqliteStore {
    /// Stores a new run, and its first batch with it if there is one, in one transaction.
    async fn create(
        &self,
        flow: &FlowRecord,
        atoms: &[AtomRecord],
        fence: Option<Fence>,
        first: Option<&Batch>,
    ) -> store::Result<()> {
        // The fence's flow, and the first batch, are checked and encoded before any
        // transaction.
        codec::fence_to_db(flow.id, fence)?;
        let (row, first) =
            steplog::first_step(flow, atoms, first, self.max_value_bytes, self.step_format)?;
        let encoded = atoms
            .iter()
            .map(|a| codec::encode_atom(flow.id, a, self.max_value_bytes))
            .collect::<store::Result<Vec<_>>>()?;
        let inputs =
            serde_json::to_string(&flow.inputs).map_err(|e| store::Error::Backend(Box::new(e)))?;
        let meta =
            serde_json::to_string(&flow.meta).map_err(|e| store::Error::Backend(Box::new(e)))?;
        let id = flow.id.to_string();

        let mut turn = self.write_turn().await?;
        let began = Utc::now();
        let mut tx = self.begin_immediate(&mut turn).await?;
        let result = async {
            check_fence(&mut tx, flow.id, fence).await?;
            let inserted = sqlx::query(
                "INSERT INTO flows (id, name, state, intention, inputs, meta, created_at, updated_at, \
                 model_version, factory, factory_version, fingerprint, deadline, deadline_then) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14) \
                 ON CONFLICT (id) DO NOTHING",
            )
            .bind(&id)
            .bind(&flow.name)
            .bind(row.state)
            .bind(row.intention)
            .bind(inputs)
            .bind(meta)
            .bind(codec::time_text(flow.created_at))
            .bind(codec::time_text(row.updated_at))
            .bind(ROW_VERSION)
            .bind(flow.factory.as_ref().map(|f| f.name.as_str()))
            .bind(flow.factory.as_ref().map(|f| i64::from(f.version)))
            .bind(flow.fingerprint.map(|f| f.to_string()))
            .bind(flow.deadline.map(|d| codec::time_text(d.at)))
            .bind(flow.deadline.map(|d| d.then.as_str()))
            .execute(&mut *tx)
            .await
            .map_err(classify)?;
            if inserted.rows_affected() == 0 {
                return Err(store::Error::FlowExists(flow.id));
            }
            let base = base_of(flow.id, inserted.last_insert_rowid())?;
            insert_atoms(&mut tx, &id, &encoded).await?;
            if let Some((batch, step, consume)) = &first {
                let at = codec::time_text(batch.at);
                append_in_transaction(&mut tx, &id, base, 1, &at, step).await?;
                if let Some((fence, outcome)) = consume {
                    consume_job(&mut tx, flow.id, *fence, outcome).await?;
                }
            }
            Ok(base)
        }
        .await;
        let base = codec::finish(tx, result)
            .await
            .map_err(|e| self.failed(e))?;
        self.commits.fetch_add(1, Ordering::Relaxed);
        let mut known = Known::of(0, flow, atoms, began).based(base);
        if let Some((batch, _, consume)) = &first {
            known.apply(&batch.writes, batch.at, Some(began), false);
            if let Some((fence, _)) = consume {
                self.job_wake.wake();
                self.job_ends.ended(fence.job);
            }
        }
        self.known.put(flow.id, known);
        Ok(())
    }
}

crate::deadline::bounded_store!(SqliteStore);

/// The store's calls, unbounded: [`crate::deadline`] bounds each.
#[async_trait]
impl Store for Raw<'_, SqliteStore> {
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
        "sqlite"
    }

    async fn count_runs(&self) -> store::Result<store::RunCounts> {
        let rows = sqlx::query_as(crate::counts::UNFINISHED_BY_STATE)
            .fetch_all(&self.pool)
            .await
            .map_err(classify)?;
        // `seq` is the rowid: its least and greatest are one probe each at the b-tree's ends
        // (each in a query of its own: SQLite probes for a lone min() or max() only, and
        // scans the table for both in one).
        let estimate: Option<i64> = sqlx::query_scalar(
            "SELECT (SELECT max(seq) FROM flows) - (SELECT min(seq) FROM flows) + 1",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(classify)?;
        crate::counts::run_counts(rows, Some(estimate.unwrap_or(0)))
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
            codec::fence_to_db(flow, batch.fence)?.map(|(job, token)| (job.to_string(), token));
        let consume = codec::consumed_job(batch)?;
        // The flow's key as its rows hold it (a UUID's hyphenated form), without allocating.
        let mut key_buf = uuid::Uuid::encode_buffer();
        let key: &str = flow.as_uuid().hyphenated().encode_lower(&mut key_buf);
        let at = codec::time_text(batch.at);

        let mut turn = self.write_turn().await?;
        let sent = Utc::now();
        // The one-statement append, when what this store knows of the flow admits the batch
        // (and the batch ends no job: that takes a second statement, so a transaction).
        if let Some(mut known) = self
            .known
            .take(flow)
            .filter(|k| consume.is_none() && k.trusted(sent) && k.admits(&batch.writes))
        {
            // A step that is due to write a checkpoint writes it in its own transaction.
            let checkpoint = known.checkpoint_with(batch, self.checkpoints);
            let appended = match &checkpoint {
                None => {
                    // Waiting for the answer by spinning first: see `SqliteOptions::spin`.
                    let appended = append(
                        turn.conn()?,
                        key,
                        known.base,
                        known.seq + 1,
                        &at,
                        &step,
                        fence.as_ref(),
                    );
                    crate::spin::spin_then_sleep(self.spin, appended).await
                }
                Some(checkpoint) => {
                    let mut tx = self.begin_immediate(&mut turn).await?;
                    let appended = append(
                        &mut tx,
                        key,
                        known.base,
                        known.seq + 1,
                        &at,
                        &step,
                        fence.as_ref(),
                    )
                    .await;
                    let result = match appended {
                        Ok(true) => {
                            write_checkpoint(&mut tx, flow, key, checkpoint, self.max_value_bytes)
                                .await
                        }
                        // Nothing to undo, but nothing to keep: the careful way follows.
                        Ok(false) | Err(_) => Err(store::Error::Refused {
                            flow,
                            reason: "not appended",
                        }),
                    };
                    match codec::finish(tx, result).await {
                        Ok(()) => Ok(true),
                        Err(store::Error::Refused { .. }) => appended,
                        Err(e) => return Err(self.failed(e)),
                    }
                }
            };
            let checkpointed = checkpoint.is_some();
            match appended {
                Ok(true) => {
                    // The append looked the run up: the knowledge is confirmed as of `sent`.
                    known.apply(&batch.writes, batch.at, Some(sent), checkpointed);
                    self.known.put(flow, known);
                    self.commits.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
                // The fence did not hold, or someone else appended first: the careful way
                // finds out which, and what to report.
                Ok(false) => {}
                Err(e) if is_unique_violation(&e) => {}
                Err(e) => return Err(self.failed(classify(e))),
            }
        }
        // The careful way: read what the flow is now and check write by write.
        let began = Utc::now();
        let mut tx = self.begin_immediate(&mut turn).await?;
        let result = async {
            let checked = async {
                check_fence(&mut tx, flow, batch.fence).await?;
                let (snapshot, known) =
                    read_flow(&mut tx, flow, began, Meta::Skip, LoadFrom::Checkpoint).await?;
                codec::check_writes(flow, &snapshot.flow, &snapshot.atoms, &batch.writes)?;
                Ok(known)
            }
            .await;
            let known = match (checked, &consume) {
                (Ok(known), _) => known,
                // A batch that ends a job, refused: maybe because an earlier attempt of it
                // was stored, and only its answer was lost (see `codec::Ended`).
                (
                    Err(
                        refused @ (store::Error::Fenced { .. }
                        | store::Error::Conflict { .. }
                        | store::Error::IllegalTransition { .. }),
                    ),
                    Some((fence, outcome)),
                ) => {
                    let ended = ended(&mut tx, flow, fence.job).await.map_err(classify)?;
                    if ended.holds(&step.body, *fence, outcome) {
                        return Ok(None);
                    }
                    return Err(refused);
                }
                (Err(e), _) => return Err(e),
            };
            append_in_transaction(&mut tx, key, known.base, known.seq + 1, &at, &step).await?;
            let mut checkpointed = false;
            if let Some((fence, outcome)) = &consume {
                // The run's last step: a checkpoint would be of no use.
                consume_job(&mut tx, flow, *fence, outcome).await?;
            } else if let Some(checkpoint) = known.checkpoint_with(batch, self.checkpoints) {
                write_checkpoint(&mut tx, flow, key, &checkpoint, self.max_value_bytes).await?;
                checkpointed = true;
            }
            Ok(Some((known, checkpointed)))
        }
        .await;
        // `None`: stored by an earlier attempt; the run has ended, there is nothing to know.
        let known = codec::finish(tx, result)
            .await
            .map_err(|e| self.failed(e))?;
        if let Some((mut known, checkpointed)) = known {
            known.apply(&batch.writes, batch.at, Some(began), checkpointed);
            self.known.put(flow, known);
        }
        self.commits.fetch_add(1, Ordering::Relaxed);
        if let Some((fence, _)) = &consume {
            self.job_wake.wake();
            self.job_ends.ended(fence.job);
        }
        Ok(())
    }

    async fn history(&self, id: FlowId) -> store::Result<Vec<Transition>> {
        let mut tx = self.pool.begin().await.map_err(classify)?;
        let key = id.to_string();
        let result = async {
            let rows = sqlx::query(
                "SELECT f.seq AS flow_seq, h.seq, h.at, h.subject, h.atom, h.from_state, \
                 h.to_state, h.attempt \
                 FROM flows f LEFT JOIN history h ON h.flow_id = f.id \
                 WHERE f.id = ?1 ORDER BY h.seq",
            )
            .bind(&key)
            .fetch_all(&mut *tx)
            .await
            .map_err(classify)?;
            let Some(first) = rows.first() else {
                return Err(store::Error::FlowNotFound(id));
            };
            let flow_seq: i64 = get(first, "flow_seq").map_err(|d| codec::corrupt(id, None, d))?;
            let steps = read_steps(&mut tx, id, base_of(id, flow_seq)?, 1).await?;
            Ok((rows, steps))
        }
        .await;
        let (rows, steps) = codec::finish(tx, result).await?;
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
        let after = match query.after {
            Some(flow) => Some(
                sqlx::query_scalar::<_, i64>("SELECT seq FROM flows WHERE id = ?1")
                    .bind(flow.to_string())
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(classify)?
                    .ok_or(store::Error::UnknownCursor(flow))?,
            ),
            None => None,
        };
        let mut q = QueryBuilder::<Sqlite>::new(format!(
            "SELECT {LISTED_FLOW_COLUMNS} FROM flows WHERE 1 = 1"
        ));
        codec::push_flow_query(&mut q, query, after, |t| {
            codec::time_text(codec::sortable_time(t))
        });
        let rows = q.build().fetch_all(&self.pool).await.map_err(classify)?;
        rows.iter().map(flow_from_row).collect()
    }

    async fn head(&self, id: FlowId) -> store::Result<store::Head> {
        let row: Option<(String, i64)> = sqlx::query_as(
            "SELECT state, coalesce((SELECT s.seq FROM steps s WHERE s.id > f.seq * 4294967296 \
             AND s.id < (f.seq + 1) * 4294967296 ORDER BY s.id DESC LIMIT 1), 0) \
             FROM flows f WHERE f.id = ?1",
        )
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await
        .map_err(classify)?;
        let (state, seq) = row.ok_or(store::Error::FlowNotFound(id))?;
        codec::head(id, &state, seq)
    }

    async fn purge_flows(&self, ended_before: DateTime<Utc>, limit: u32) -> store::Result<u64> {
        if limit == 0 {
            return Ok(0);
        }
        let [a, b, c] = codec::TERMINAL_FLOW_STATES;
        let ended_before = store::purge_cutoff(ended_before, Utc::now());
        let before = codec::time_text(codec::sortable_time(ended_before));
        let mut turn = self.write_turn().await?;
        let mut tx = self.begin_immediate(&mut turn).await?;
        let result = async {
            // A run's `updated_at` is the time of its last move, which for an ended run is
            // its end (the step log's trigger keeps it).
            // A run whose job is still open is kept: its conductor may be about to end the
            // job, and would start a deleted run afresh (a conductor's run has its job's id).
            let doomed: Vec<(i64, String)> = sqlx::query_as(
                "SELECT seq, id FROM flows WHERE state IN (?1, ?2, ?3) AND updated_at < ?4 \
                 AND NOT EXISTS (SELECT 1 FROM jobs WHERE jobs.id = flows.id \
                                 AND jobs.state IN ('UNCLAIMED', 'CLAIMED', 'PARKED')) \
                 ORDER BY seq LIMIT ?5",
            )
            .bind(a)
            .bind(b)
            .bind(c)
            .bind(&before)
            .bind(i64::from(limit))
            .fetch_all(&mut *tx)
            .await
            .map_err(classify)?;
            for (seq, id) in &doomed {
                let flow = flow_id_of(id).unwrap_or(FlowId::from_uuid(uuid::Uuid::nil()));
                let base = base_of(flow, *seq)?;
                sqlx::query("DELETE FROM steps WHERE id >= ?1 AND id < ?2")
                    .bind(base)
                    .bind(base.saturating_add(STEPS_PER_FLOW))
                    .execute(&mut *tx)
                    .await
                    .map_err(classify)?;
                for table in ["history", "atoms"] {
                    sqlx::query(&format!("DELETE FROM {table} WHERE flow_id = ?1"))
                        .bind(id)
                        .execute(&mut *tx)
                        .await
                        .map_err(classify)?;
                }
                sqlx::query("DELETE FROM flows WHERE seq = ?1")
                    .bind(seq)
                    .execute(&mut *tx)
                    .await
                    .map_err(classify)?;
            }
            Ok(doomed)
        }
        .await;
        let doomed = codec::finish(tx, result)
            .await
            .map_err(|e| self.failed(e))?;
        for (_, id) in &doomed {
            if let Ok(flow) = flow_id_of(id) {
                self.known.take(flow);
            }
        }
        Ok(doomed.len() as u64)
    }
}

/// The flow's columns for listings: `updated_at` is the time of the last step, if any.
const LISTED_FLOW_COLUMNS: &str = "id, name, state, intention, inputs, meta, created_at, \
     coalesce((SELECT s.at FROM steps s WHERE s.id > flows.seq * 4294967296 \
     AND s.id < (flows.seq + 1) * 4294967296 ORDER BY s.id DESC LIMIT 1), updated_at) \
     AS updated_at, model_version, factory, factory_version, fingerprint, deadline, \
     deadline_then";

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::*;

    /// A connection whose `BEGIN IMMEDIATE` was given up on half-way is closed, not handed back
    /// to the pool: the pool's next connection is another one (a temporary table, which lives
    /// as long as its connection, is gone). The window that makes this necessary (the call
    /// given up after SQLite answered, while sqlx checks the transaction) depends on how the
    /// connection's thread is scheduled; giving up before the answer puts the connection in
    /// the same state for this check.
    #[tokio::test]
    async fn a_connection_given_up_on_in_its_begin_is_closed() {
        let dir = tempfile::tempdir().unwrap();
        let connect = SqliteConnectOptions::new()
            .filename(dir.path().join("begin.db"))
            .create_if_missing(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(connect)
            .await
            .unwrap();
        let marked = "SELECT count(*) FROM temp.sqlite_master WHERE name = 'marker'";
        let mut conn = Writable::new(pool.acquire().await.unwrap());
        sqlx::query("CREATE TEMP TABLE marker (x)")
            .execute(&mut *conn)
            .await
            .unwrap();
        {
            let mut begin = Box::pin(conn.begin_immediate());
            assert!(futures::poll!(&mut begin).is_pending());
        }
        assert!(conn.beginning, "given up on in the middle of its BEGIN");
        drop(conn);
        let mut next = tokio::time::timeout(Duration::from_secs(10), pool.acquire())
            .await
            .unwrap()
            .unwrap();
        let n: i64 = sqlx::query_scalar(marked)
            .fetch_one(&mut *next)
            .await
            .unwrap();
        assert_eq!(n, 0, "the connection given up on was lent again");
        next.begin_with("BEGIN IMMEDIATE").await.unwrap();

        // One that began and ended goes back to the pool as usual.
        drop(next);
        let mut conn = Writable::new(pool.acquire().await.unwrap());
        sqlx::query("CREATE TEMP TABLE marker (x)")
            .execute(&mut *conn)
            .await
            .unwrap();
        conn.begin_immediate()
            .await
            .unwrap()
            .commit()
            .await
            .unwrap();
        drop(conn);
        let mut again = pool.acquire().await.unwrap();
        let n: i64 = sqlx::query_scalar(marked)
            .fetch_one(&mut *again)
            .await
            .unwrap();
        assert_eq!(n, 1);
    }

    /// A database error as SQLite would report it: an extended result code and a message.
    #[derive(Debug)]
    struct Reported {
        code: &'static str,
        message: &'static str,
    }

    impl std::fmt::Display for Reported {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.message)
        }
    }

    impl std::error::Error for Reported {}

    impl sqlx::error::DatabaseError for Reported {
        fn message(&self) -> &str {
            self.message
        }

        fn code(&self) -> Option<Cow<'_, str>> {
            Some(Cow::Borrowed(self.code))
        }

        fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
            self
        }

        fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
            self
        }

        fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
            self
        }

        fn kind(&self) -> sqlx::error::ErrorKind {
            sqlx::error::ErrorKind::Other
        }
    }

    fn reported(code: &'static str, message: &'static str) -> sqlx::Error {
        sqlx::Error::Database(Box::new(Reported { code, message }))
    }

    /// A gone run is told by SQLite's extended result code (`SQLITE_CONSTRAINT_NOTNULL`),
    /// whatever the message says: its wording is SQLite's to change.
    #[test]
    fn a_gone_run_is_told_by_the_error_code_not_the_message() {
        assert!(is_gone_run(&reported(
            "1299",
            "NOT NULL constraint failed: main.steps.flow_id (in a later wording)"
        )));
        // Another constraint, or another error, whatever its message.
        assert!(!is_gone_run(&reported(
            "1555",
            "NOT NULL constraint failed: steps.flow_id"
        )));
        assert!(!is_gone_run(&reported(
            "1",
            "NOT NULL constraint failed: steps.flow_id"
        )));
        assert!(!is_gone_run(&sqlx::Error::RowNotFound));
    }
}
