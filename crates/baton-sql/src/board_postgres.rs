//! The PostgreSQL job board: shared by a fleet of conductors on many machines.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use baton_core::board::{
    self, Cancel, CancelStep, Claim, ConductorInfo, Job, JobBoard, JobQuery, NewJob, Offer, Requeue,
};
use baton_core::{ConductorId, Fence, JobId, JobState};
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::postgres::{PgConnection, PgRow};
use sqlx::Row;

use crate::board_common::{
    cancel, cancel_request, check_trash, db, deadline_ms, from_ms, job_state, ms, offer_from_json,
    offer_json, offer_lists, push_job_query, release_needed, supersede, token_db, JobRows, RawJob,
    Throttle, HOLDS_KEY, PARK_CANCEL, REAP_EVERY, RUN_ENDED,
};
use crate::deadline::Raw;
use crate::liveness::{lock_key, Liveness};
use crate::postgres::PostgresStore;
use crate::wake::{self, announce_end, Listener, News, PostWakes, CANCEL_NEWS};

/// When a fenced update wakes idle conductors.
#[derive(Debug, Clone, Copy)]
enum Wake {
    Never,
    Always,
    IfKeyed,
}

const COLUMNS: &str =
    "id::text AS id, name, factory, params, job_key, priority::bigint AS priority, \
                       state, owner::text AS owner, lease_expires_at, token, attempts, outcome, \
                       version, stalled_claims, cancel, deadline, \
                       supersedes::text[] AS supersedes, created_at, updated_at";

/// The first half of the transaction-scoped advisory lock a post of a keyed job takes on its
/// key (the second half is a hash of the key), so that a superseding post sees every earlier
/// job of its key: posts of the key wait for it, and it for them. Locks of two 32-bit halves
/// are a space apart from the conductors' liveness locks (one 64-bit key each), so a key's lock
/// is never a conductor's.
const KEY_LOCK: i32 = 0x6b65_7973;

/// A [`JobBoard`] in a PostgreSQL schema, beside a [`PostgresStore`] whose flows its claims
/// fence.
///
/// - **Claims** are one statement: the next eligible job is picked with
///   `FOR UPDATE SKIP LOCKED`, updated, and its fence token moved on, all at once.
/// - **Dead owners are found at once.** A conductor that registers through this board takes a
///   session-level advisory lock on a connection of its own, kept idle for as long as the
///   process lives (like an ephemeral node in ZooKeeper). When the process dies, the server
///   closes that connection and drops the lock. Claims look for such orphans (at most every
///   100 ms per board: one look at `pg_locks` is not free) and expire their leases, so the
///   owner's jobs are claimed within a poll interval instead of when their leases run out.
///   Leases remain the backstop for owners that are alive but cut off. Registering waits 2 s
///   at most for the lock (or the connection), and claims never wait for it.
/// - **A database restart moves no job.** A restart drops every session, and with them every
///   conductor's lock: right after it, every owner looks dead. So a free lock counts as its
///   owner's death only once the server has been up for longer than a grace
///   ([`PostgresJobBoard::with_restart_grace`], 15 s by default), long enough for live
///   conductors to take their locks again at their next heartbeat; until then only leases run
///   out. A board whose own conductor lost its lock (every session dropped without a restart,
///   a failover) likewise trusts no free lock until it took its own again and the grace passed.
/// - **Wake-ups**: posting, abandoning, releasing and consuming a keyed job send a
///   `NOTIFY`, so idle conductors (waiting in [`JobBoard::wait_for_work`]) react at once
///   (posts close together share one, sent at most a window later: see
///   [`PostgresJobBoard::with_wake_window`]); polling covers a missed one.
/// - **Cancel requests** on a claimed job send a `NOTIFY` on the same channel when they
///   commit, so its owner, waiting in [`JobBoard::wait_for_cancel`], hears of it at once.
///   A board listens on one connection of its own for both, whichever of its waiters holds it
///   passing on what the others wait for.
/// - **Keyed posts** take a transaction-scoped advisory lock on their key, so a superseding
///   post ([`NewJob::supersede`]) sees every job of its key posted before it.
#[derive(Debug, Clone)]
pub struct PostgresJobBoard {
    store: PostgresStore,
    channel: Arc<str>,
    liveness: Arc<Liveness>,
    listener: Arc<Listener>,
    reaps: Arc<Throttle>,
    vacuums: Arc<Throttle>,
    vacuum_every: Option<Duration>,
    restart_grace: Duration,
    wakes: PostWakes,
}

/// The default of [`PostgresJobBoard::with_wake_window`].
pub const DEFAULT_WAKE_WINDOW: Duration = Duration::from_millis(20);

/// The default of [`PostgresJobBoard::with_vacuum`]: a look every 2 s.
pub const DEFAULT_VACUUM_EVERY: Duration = Duration::from_secs(2);

/// How many dead rows a table of the board holds before the board vacuums it: a dozen pages
/// or so of dead index entries for a claim to walk past (about 170 fit a page).
const VACUUM_AFTER_DEAD_ROWS: i64 = 2000;

/// The tables the board vacuums: those every claim, heartbeat and end rewrites a row of.
const CHURNING: [&str; 2] = ["jobs", "fences"];

/// The default of [`PostgresJobBoard::with_restart_grace`]: 15 s, time for conductors that
/// heartbeat every 10 s or more often to take their locks again.
pub const DEFAULT_RESTART_GRACE: Duration = Duration::from_secs(15);

/// Whether the server has been up for longer than `$n` milliseconds (the restart grace): only
/// then does a free liveness lock mean that its owner died.
fn up_longer_than(n: u8) -> String {
    format!("(pg_postmaster_start_time() <= clock_timestamp() - ${n}::float8 * interval '1 millisecond')")
}

fn decode(row: &PgRow) -> Result<Job, board::Error> {
    RawJob {
        id: row.try_get("id").map_err(db)?,
        name: row.try_get("name").map_err(db)?,
        factory: row.try_get("factory").map_err(db)?,
        params: row.try_get("params").map_err(db)?,
        key: row.try_get("job_key").map_err(db)?,
        priority: row.try_get("priority").map_err(db)?,
        state: row.try_get("state").map_err(db)?,
        owner: row.try_get("owner").map_err(db)?,
        lease_expires_at: row.try_get("lease_expires_at").map_err(db)?,
        token: row.try_get("token").map_err(db)?,
        attempts: row.try_get("attempts").map_err(db)?,
        outcome: row.try_get("outcome").map_err(db)?,
        version: row.try_get("version").map_err(db)?,
        stalled_claims: row.try_get("stalled_claims").map_err(db)?,
        cancel: row.try_get("cancel").map_err(db)?,
        deadline: row.try_get("deadline").map_err(db)?,
        supersedes: row.try_get("supersedes").map_err(db)?,
        created_at: row.try_get("created_at").map_err(db)?,
        updated_at: row.try_get("updated_at").map_err(db)?,
    }
    .decode()
}

/// The statement that posts a job (`$1` id, `$2` name, `$3` factory, `$4` params, `$5` key,
/// `$6` priority, `$7` the channel, `$8` version, `$9` deadline, `$10` the jobs it supersedes,
/// `$11` whether it is watched),
/// answering it and `woke` (an expression that sends its wake-up, or not). A keyed job takes
/// its key's lock first ([`KEY_LOCK`]; the aggregate answers one row either way, so the job is
/// inserted once the lock is held).
fn post_sql(woke: &str) -> String {
    format!(
        "WITH keyed AS MATERIALIZED ( \
             SELECT count(pg_advisory_xact_lock({KEY_LOCK}, hashtext(p.k))) AS locks \
               FROM (SELECT $5::text AS k) p WHERE p.k IS NOT NULL \
         ), posted AS ( \
             INSERT INTO jobs (id, name, factory, params, job_key, priority, state, token, attempts, \
                               version, deadline, supersedes, watched, created_at, updated_at) \
             SELECT $1, $2, $3, $4, $5, $6, 'UNCLAIMED', 0, 0, $8, $9, $10, $11, now(), now() FROM keyed \
             RETURNING * \
         ) SELECT {COLUMNS}, {woke} AS woke FROM posted"
    )
}

/// [`post_sql`]'s statement with `new`'s values bound.
fn bind_post<'q>(
    sql: &'q str,
    new: &'q NewJob,
    channel: &'q str,
    supersedes: Option<Vec<uuid::Uuid>>,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    sqlx::query(sql)
        .bind(JobId::new().as_uuid())
        .bind(&new.name)
        .bind(&new.factory)
        .bind(&new.params)
        .bind(&new.key)
        .bind(new.priority)
        .bind(channel)
        .bind(new.version.map(i64::from))
        .bind(deadline_ms(new.deadline))
        .bind(supersedes)
        .bind(new.watched)
}

/// The board's statements on job rows, in the transaction of the connection it holds (see
/// [`JobRows`]); a request for a claimed job's owner is sent on `channel`.
struct Rows<'c> {
    conn: &'c mut PgConnection,
    channel: &'c str,
}

impl JobRows for Rows<'_> {
    async fn cancel_of(
        &mut self,
        id: JobId,
    ) -> Result<Option<(String, Option<String>)>, board::Error> {
        sqlx::query_as("SELECT state, cancel FROM jobs WHERE id = $1 FOR UPDATE")
            .bind(id.as_uuid())
            .fetch_optional(&mut *self.conn)
            .await
            .map_err(db)
    }

    async fn holding(&mut self, key: &str) -> Result<Vec<JobId>, board::Error> {
        let ids: Vec<uuid::Uuid> = sqlx::query_scalar(&format!(
            "SELECT id FROM jobs WHERE job_key = $1 AND state IN {HOLDS_KEY} ORDER BY seq \
             FOR UPDATE"
        ))
        .bind(key)
        .fetch_all(&mut *self.conn)
        .await
        .map_err(db)?;
        Ok(ids.into_iter().map(JobId::from_uuid).collect())
    }

    async fn reopen(&mut self, id: JobId, revert: bool) -> Result<Job, board::Error> {
        // Whatever claim there was is revoked: the token moves on, in `fences` too.
        let row = sqlx::query(&format!(
            "WITH requeued AS ( \
                 UPDATE jobs SET state = 'UNCLAIMED', owner = NULL, owner_lock = NULL, \
                        lease_expires_at = NULL, token = token + 1, outcome = NULL, \
                        stalled_claims = 0, cancel = CASE WHEN $2 THEN 'REVERT' ELSE cancel END, \
                        updated_at = now() \
                  WHERE id = $1 RETURNING * \
             ), fenced AS ( \
                 INSERT INTO fences (job_id, token) SELECT id, token FROM requeued \
                 ON CONFLICT (job_id) DO UPDATE SET token = EXCLUDED.token \
             ) SELECT {COLUMNS} FROM requeued"
        ))
        .bind(id.as_uuid())
        .bind(revert)
        .fetch_one(&mut *self.conn)
        .await
        .map_err(db)?;
        decode(&row)
    }

    async fn set_cancel(
        &mut self,
        id: JobId,
        how: Cancel,
        tell: bool,
    ) -> Result<Job, board::Error> {
        // The owner's wake-up goes out when the transaction commits.
        let told = if tell {
            format!("pg_notify($3, '{CANCEL_NEWS}') IS NULL")
        } else {
            "$3::text IS NOT NULL".to_owned()
        };
        let row = sqlx::query(&format!(
            "WITH asked AS ( \
                 UPDATE jobs SET cancel = $2, updated_at = now() WHERE id = $1 RETURNING * \
             ) SELECT {COLUMNS}, {told} AS told FROM asked"
        ))
        .bind(id.as_uuid())
        .bind(how.as_str())
        .bind(self.channel)
        .fetch_one(&mut *self.conn)
        .await
        .map_err(db)?;
        decode(&row)
    }

    async fn job(&mut self, id: JobId) -> Result<Job, board::Error> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM jobs WHERE id = $1"))
            .bind(id.as_uuid())
            .fetch_one(&mut *self.conn)
            .await
            .map_err(db)?;
        decode(&row)
    }
}

impl PostgresJobBoard {
    /// A board in `store`'s schema; its claims fence writes to `store`'s flows.
    #[must_use]
    pub fn new(store: &PostgresStore) -> Self {
        Self {
            channel: store.job_channel().into(),
            store: store.clone(),
            liveness: Arc::default(),
            listener: Arc::new(Listener::new(store.clone(), store.job_channel().into())),
            reaps: Arc::default(),
            vacuums: Arc::default(),
            vacuum_every: Some(DEFAULT_VACUUM_EVERY),
            restart_grace: DEFAULT_RESTART_GRACE,
            wakes: PostWakes::new(
                store.clone(),
                store.job_channel().into(),
                DEFAULT_WAKE_WINDOW,
            ),
        }
    }

    /// How long after a wake-up this board's posts share the next one (default
    /// [`DEFAULT_WAKE_WINDOW`], 20 ms; zero: every post sends its own).
    ///
    /// A post wakes idle conductors with a `NOTIFY` sent when it commits. PostgreSQL signals
    /// every listening session for each one and serialises the commits of notifying
    /// transactions (they take a lock held until after the commit), so a wake-up
    /// per post cost a fleet of four conductors about a fifth of its jobs a second. So the
    /// first post after a quiet spell wakes conductors at once, and the posts of the following
    /// window commit without a `NOTIFY` and share one sent when the window ends (after they
    /// committed): an idle conductor learns of each job at most a window late. A process that
    /// posts and exits at once calls [`JobBoard::flush_wake_ups`] first; it returns once a
    /// wake-up covering every earlier post has gone out (waiting for one already on its way).
    /// A window too long to end (`Duration::MAX`) holds every wake-up after the first until a
    /// flush (or until the conductors poll).
    #[must_use]
    pub fn with_wake_window(mut self, window: Duration) -> Self {
        self.wakes = PostWakes::new(self.store.clone(), Arc::clone(&self.channel), window);
        self
    }

    /// How long a call of this board may take: its store's
    /// [`call_timeout`](PostgresStore::call_timeout).
    #[must_use]
    pub fn call_timeout(&self) -> Duration {
        self.store.call_timeout()
    }

    /// How long after the database server starts a free liveness lock still does not count as
    /// its owner's death (default [`DEFAULT_RESTART_GRACE`], 15 s; zero: at once).
    ///
    /// A restart of the server (or a failover, or a crash of one backend, after which the
    /// server drops every session) frees every conductor's liveness lock at once; each live
    /// conductor takes its lock again at its next heartbeat. Were a free lock trusted at once,
    /// the first claim after the restart would take every running job from its live owner, and
    /// the fleet would trade all its jobs (safely, thanks to fencing, but each one's step in
    /// flight would run again). So for `grace` after the server started, counted by the
    /// server's clock (`pg_postmaster_start_time()`), a claim takes only jobs whose leases ran
    /// out. A board whose own conductor's lock was lost does the same until it took the lock
    /// again and `grace` passed since, which covers the events that drop every session without
    /// restarting the server.
    ///
    /// Choose it longer than the conductors' heartbeat, with room for reconnecting. What a
    /// longer grace costs is bounded by the lease: a conductor that dies within the grace has
    /// its jobs taken when their leases run out, as if it had no lock.
    #[must_use]
    pub fn with_restart_grace(mut self, grace: Duration) -> Self {
        self.restart_grace = grace;
        self
    }

    /// How often this board looks whether its tables need vacuuming, and vacuums them if so
    /// (default [`DEFAULT_VACUUM_EVERY`], 2 s; `None`: never, the server's autovacuum alone
    /// keeps them).
    ///
    /// A claim moves its job out of the index of waiting jobs, and a job's end moves it out
    /// of the index of leases, but PostgreSQL keeps the old entries in the index until the
    /// table is vacuumed; each claim walks past every one of them before it finds a job it
    /// can take. A server whose autovacuum is off never removes them, and one at its defaults
    /// does so only after a fifth of the table is dead: a claim then costs more the more jobs
    /// have been claimed, and a deep backlog drains several times slower than a shallow one.
    /// So claims look, at most once per `every` on this board, at the server's count of dead
    /// rows in `jobs` and `fences`, and when a table holds 2 000 or more and nobody vacuumed
    /// it in the last `every`, run `VACUUM (SKIP_LOCKED, INDEX_CLEANUP ON)` on it (a
    /// vacuum already under way elsewhere is not waited for). A vacuum reads only the pages
    /// changed since the last one, and every page of the table's indexes: about 0.1 s for a
    /// table of 500 000 jobs on a small, busy machine, which the claim running it waits for.
    /// It needs the role to own the tables (a role
    /// that does not gets a warning from the server, and nothing is vacuumed); a failed one is
    /// logged and the claim goes on. See `docs/operations.md`.
    #[must_use]
    pub fn with_vacuum(mut self, every: Option<Duration>) -> Self {
        self.vacuum_every = every;
        self
    }

    /// Vacuums those of the board's tables that hold enough dead rows and were not vacuumed
    /// in the last `every` (see [`PostgresJobBoard::with_vacuum`]). Best effort: a failure is
    /// logged, and the claim that called this goes on.
    async fn vacuum(&self, every: Duration) {
        let mut kept = match self.store.acquire().await {
            Ok(kept) => kept,
            Err(e) => {
                tracing::warn!(error = %e, "could not look whether the job board needs vacuuming");
                return;
            }
        };
        let due: Result<Vec<String>, _> = sqlx::query_scalar(
            "SELECT relname::text FROM pg_stat_user_tables \
              WHERE relid IN ('jobs'::regclass, 'fences'::regclass) AND n_dead_tup >= $1 \
                AND coalesce(greatest(last_vacuum, last_autovacuum), '-infinity') \
                    < now() - $2::float8 * interval '1 millisecond'",
        )
        .bind(VACUUM_AFTER_DEAD_ROWS)
        .bind(ms(every))
        .fetch_all(&mut *kept)
        .await;
        let done = match due {
            Err(e) => Err(e),
            Ok(due) => {
                let mut done = Ok(());
                // Names from the list above, never from the database.
                for table in CHURNING.iter().filter(|t| due.iter().any(|d| d == *t)) {
                    let started = std::time::Instant::now();
                    let sql = format!("VACUUM (SKIP_LOCKED, INDEX_CLEANUP ON) {table}");
                    done = sqlx::Executor::execute(&mut *kept, sql.as_str())
                        .await
                        .map(|_| tracing::debug!(table, took = ?started.elapsed(), "vacuumed"));
                    if done.is_err() {
                        break;
                    }
                }
                done
            }
        };
        self.store.release(kept, &done);
        if let Err(e) = done {
            tracing::warn!(error = %e, "could not vacuum the job board's tables");
        }
    }

    /// Why a fenced update touched no row.
    async fn lost(&self, fence: Fence) -> board::Error {
        let mut kept = match self.store.acquire().await {
            Ok(kept) => kept,
            Err(e) => return db(e),
        };
        let exists: Result<Option<i32>, _> = sqlx::query_scalar("SELECT 1 FROM jobs WHERE id = $1")
            .bind(fence.job.as_uuid())
            .fetch_optional(&mut *kept)
            .await;
        self.store.release(kept, &exists);
        match exists {
            Ok(None) => board::Error::JobNotFound(fence.job),
            Ok(Some(_)) => board::Error::ClaimLost {
                job: fence.job,
                token: fence.token,
            },
            Err(e) => db(e),
        }
    }

    /// Runs a fenced update (`$1` job, `$2` token, `$3` the extra value; it must return
    /// `id, token, lease_expires_at, job_key`, and `watched` if it `ends` the job) and sends a
    /// wake-up as `wake` says, in the same statement. With `revoke`, the update moves the
    /// job's token on, and the statement records the new token in `fences` too, so the claim's
    /// writes are refused from then on. With `ends`, the statement tells of the job's end if
    /// someone waits for it.
    async fn fenced(
        &self,
        fence: Fence,
        sql: &str,
        extra: Option<Value>,
        (wake, revoke, ends): (Wake, bool, bool),
    ) -> Result<Option<i64>, board::Error> {
        let token = token_db(fence.token)?;
        let notify = match wake {
            Wake::Never => "$4::text IS NOT NULL",
            Wake::Always => "pg_notify($4, '') IS NULL",
            // Only a keyed job's end can let another job run.
            Wake::IfKeyed => {
                "(CASE WHEN done.job_key IS NOT NULL THEN pg_notify($4, '') END) IS NULL"
            }
        };
        let revoked = if revoke {
            ", revoked AS (INSERT INTO fences (job_id, token) SELECT id, token FROM done \
             ON CONFLICT (job_id) DO UPDATE SET token = EXCLUDED.token)"
        } else {
            ""
        };
        let told = if ends {
            announce_end!("$4", "done")
        } else {
            "true"
        };
        let sql = format!(
            "WITH done AS ({sql}){revoked} SELECT done.lease_expires_at, {notify}, {told} FROM done"
        );
        let mut kept = self.store.acquire().await.map_err(db)?;
        let row: Result<Option<(Option<i64>, bool)>, _> = sqlx::query_as(&sql)
            .bind(fence.job.as_uuid())
            .bind(token)
            .bind(extra)
            .bind(&*self.channel)
            .fetch_optional(&mut *kept)
            .await;
        self.store.release(kept, &row);
        let row = row.map_err(db)?;
        match row {
            Some((lease, _)) => Ok(lease),
            None => Err(self.lost(fence).await),
        }
    }

    /// Expires the leases of jobs whose owner's liveness lock is gone (its process died), so
    /// the next claim takes them at once; unless the server started less than the restart
    /// grace ago, or the claimant's own lock (`own`, if it holds one) is gone too: then a free
    /// lock may only mean that the server dropped its session. One look at `pg_locks` per
    /// call: cheap a few times a second, too dear for every claim.
    async fn reap(&self, own: Option<i64>) -> Result<(), board::Error> {
        let mut kept = self.store.acquire().await.map_err(db)?;
        let reaped = sqlx::query(&format!(
            "WITH live AS MATERIALIZED ( \
                 SELECT (l.classid::bigint << 32) | l.objid::bigint AS owner_lock FROM pg_locks l \
                  WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 \
                    AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())), \
             trusted AS MATERIALIZED ( \
                 SELECT {} AND ($2::bigint IS NULL OR $2 IN (SELECT owner_lock FROM live)) AS yes) \
             UPDATE jobs SET lease_expires_at = 0 \
              WHERE (SELECT yes FROM trusted) \
                AND state = 'CLAIMED' AND owner_lock IS NOT NULL AND lease_expires_at > 0 \
                AND owner_lock NOT IN (SELECT owner_lock FROM live)",
            up_longer_than(1)
        ))
        .bind(ms(self.restart_grace))
        .bind(own)
        .execute(&mut *kept)
        .await;
        self.store.release(kept, &reaped);
        let reaped = reaped.map_err(db)?;
        if reaped.rows_affected() > 0 {
            tracing::info!(
                jobs = reaped.rows_affected(),
                "owners of claimed jobs are gone: their jobs are free"
            );
        }
        Ok(())
    }

    async fn notify(&self) {
        wake::notify(&self.store, &self.channel).await;
    }

    /// Job `id`, marked as watched ([`NewJob::watched`]) unless it is: in one statement whose
    /// row is the job as the mark left it, so that an end committed after it sees the mark
    /// (the job's row lock orders the two), and one committed while the mark waited for the
    /// row is in the row it answers. (Hence no condition on the state: one that an end made
    /// false would skip the row and answer the job as it was before the end.) A job marked
    /// already is only read: no write, no row lock for a claim to skip.
    async fn mark_watched(&self, id: JobId) -> Result<Job, board::Error> {
        self.one_job(
            &format!(
                "WITH marked AS ( \
                     UPDATE jobs SET watched = true WHERE id = $1 AND NOT watched RETURNING * \
                 ) SELECT {COLUMNS} FROM marked \
                 UNION ALL \
                 SELECT {COLUMNS} FROM jobs WHERE id = $1 AND NOT EXISTS (SELECT 1 FROM marked)"
            ),
            id,
        )
        .await
    }

    /// The job row `sql` answers for job `id` (bound as `$1`).
    async fn one_job(&self, sql: &str, id: JobId) -> Result<Job, board::Error> {
        let mut kept = self.store.acquire().await.map_err(db)?;
        let row = sqlx::query(sql)
            .bind(id.as_uuid())
            .fetch_optional(&mut *kept)
            .await;
        self.store.release(kept, &row);
        let row = row.map_err(db)?.ok_or(board::Error::JobNotFound(id))?;
        decode(&row)
    }

    /// Posts `new`, a job of `key` that supersedes, in one transaction: under the key's lock
    /// (so every earlier job of the key is seen), the earlier unfinished jobs of the key are
    /// asked to revert (their owners told), then the job is posted with its own wake-up.
    async fn post_superseding(&self, new: &NewJob, key: &str) -> Result<Job, board::Error> {
        let mut tx = self.store.begin().await.map_err(db)?;
        sqlx::query(&format!(
            "SELECT pg_advisory_xact_lock({KEY_LOCK}, hashtext($1))"
        ))
        .bind(key)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        // Statements of their own, after the lock: they see the posts the lock waited for. The
        // rows are locked, so none of them ends before it is asked to revert.
        let mut rows = Rows {
            conn: &mut tx,
            channel: &self.channel,
        };
        let (earlier, _) = supersede(&mut rows, key).await?;
        let supersedes = (!earlier.is_empty())
            .then(|| earlier.iter().map(|id| id.as_uuid()).collect::<Vec<_>>());
        let sql = post_sql("pg_notify($7, '') IS NULL");
        let row = bind_post(&sql, new, &self.channel, supersedes)
            .fetch_one(&mut *tx)
            .await
            .map_err(db)?;
        let job = decode(&row)?;
        tx.commit().await.map_err(db)?;
        Ok(job)
    }
}

crate::deadline::bounded_board!(PostgresJobBoard, crate::liveness::LIVENESS_WAIT);

/// The board's calls, unbounded: [`crate::deadline`] bounds each.
#[async_trait]
impl JobBoard for Raw<'_, PostgresJobBoard> {
    async fn post(&self, new: NewJob) -> Result<Job, board::Error> {
        new.check(self.store.max_value_bytes())?;
        if let (true, Some(key)) = (new.supersede, new.key.as_deref()) {
            return self.post_superseding(&new, key).await;
        }
        let wakes = self.wakes.post_wakes();
        let woke = if wakes {
            "pg_notify($7, '') IS NULL"
        } else {
            "$7::text IS NOT NULL"
        };
        let sql = post_sql(woke);
        let mut kept = self.store.acquire().await.map_err(db)?;
        // Counts the post as owed a wake-up unless its own went out with it, also if this
        // future is dropped half-way. (A statement cancelled half-way may still commit after
        // the wake-up that covers it went out: that job then waits for a poll.)
        let guard = self.wakes.guard();
        let row = bind_post(&sql, &new, &self.channel, None)
            .fetch_one(&mut *kept)
            .await;
        self.store.release(kept, &row);
        if wakes && row.is_ok() {
            guard.sent();
        } else {
            drop(guard);
        }
        let row = row.map_err(db)?;
        decode(&row)
    }

    async fn claim(
        &self,
        owner: ConductorId,
        lease: Duration,
        offer: &Offer,
    ) -> Result<Option<Claim>, board::Error> {
        Ok(self.claim_up_to(owner, lease, 1, offer).await?.pop())
    }

    async fn claim_up_to(
        &self,
        owner: ConductorId,
        lease: Duration,
        max: usize,
        offer: &Offer,
    ) -> Result<Vec<Claim>, board::Error> {
        if max == 0 || offer.is_empty() {
            return Ok(Vec::new());
        }
        if self.reaps.due(REAP_EVERY) && self.liveness.settled(owner, self.restart_grace) {
            self.reap(self.liveness.holds(owner).then(|| lock_key(owner)))
                .await?;
        }
        if let Some(every) = self.vacuum_every {
            if self.vacuums.due(every) {
                self.vacuum(every).await;
            }
        }
        self.listener.forget_work();
        let owner_lock = self.liveness.holds(owner).then(|| lock_key(owner));
        // The jobs are chosen by `claimable_jobs` (see its migration): two paths, each along
        // an index of its own and each taking at most `max`, unclaimed jobs in claim order and
        // claimed jobs whose lease ran out, planned so that neither sorts the backlog. The
        // best `max` of both are claimed (a row a path locked but the cut left out is free
        // again when the statement ends).
        let sql = format!(
            "WITH picked AS ( \
                 SELECT id FROM claimable_jobs($4, $5::text[], $6::bigint[]) \
             ), claimed AS ( \
                 UPDATE jobs SET state = 'CLAIMED', owner = $1, owner_lock = $2, \
                        lease_expires_at = now_ms() + $3, token = token + 1, \
                        claim_token = token + 1, \
                        attempts = LEAST(attempts + 1, 4294967295), \
                        stalled_claims = LEAST(stalled_claims + 1, 4294967295), \
                        version = COALESCE(version, (SELECT max(o.v) FROM \
                            unnest($5::text[], $6::bigint[]) o(f, v) WHERE o.f = jobs.factory)), \
                        updated_at = now() \
                   FROM picked WHERE jobs.id = picked.id \
                 RETURNING jobs.* \
             ), fenced AS ( \
                 INSERT INTO fences (job_id, token) SELECT id, token FROM claimed \
                 ON CONFLICT (job_id) DO UPDATE SET token = EXCLUDED.token \
             ) SELECT {COLUMNS} FROM claimed ORDER BY priority DESC, seq"
        );
        let (factories, versions) = offer_lists(offer);
        let mut kept = self.store.acquire().await.map_err(db)?;
        let rows = sqlx::query(&sql)
            .bind(owner.as_uuid())
            .bind(owner_lock)
            .bind(ms(lease))
            .bind(i64::try_from(max).unwrap_or(i64::MAX))
            .bind(factories)
            .bind(versions)
            .fetch_all(&mut *kept)
            .await;
        self.store.release(kept, &rows);
        rows.map_err(db)?
            .iter()
            .map(|row| {
                let job = decode(row)?;
                Ok(Claim {
                    fence: Fence {
                        job: job.id,
                        token: job.token,
                    },
                    lease_expires_at: job.lease_expires_at.unwrap_or_else(Utc::now),
                    job,
                })
            })
            .collect()
    }

    async fn heartbeat(
        &self,
        fence: Fence,
        lease: Duration,
        progressed: bool,
    ) -> Result<DateTime<Utc>, board::Error> {
        let sql = if progressed {
            "UPDATE jobs SET lease_expires_at = now_ms() + ($3::jsonb #>> '{}')::bigint, \
                 stalled_claims = 0, updated_at = now() \
             WHERE id = $1 AND state = 'CLAIMED' AND token = $2 \
             RETURNING id, token, lease_expires_at, job_key"
        } else {
            "UPDATE jobs SET lease_expires_at = now_ms() + ($3::jsonb #>> '{}')::bigint, updated_at = now() \
             WHERE id = $1 AND state = 'CLAIMED' AND token = $2 \
             RETURNING id, token, lease_expires_at, job_key"
        };
        let lease = self
            .fenced(
                fence,
                sql,
                Some(Value::from(ms(lease))),
                (Wake::Never, false, false),
            )
            .await?;
        Ok(lease.map_or_else(Utc::now, from_ms))
    }

    async fn consume(&self, fence: Fence, outcome: Value) -> Result<(), board::Error> {
        self.fenced(
            fence,
            "UPDATE jobs SET state = 'COMPLETE', owner = NULL, owner_lock = NULL, lease_expires_at = NULL, \
                 outcome = $3, updated_at = now() \
             WHERE id = $1 AND state = 'CLAIMED' AND token = $2 \
             RETURNING id, token, lease_expires_at, job_key, watched",
            Some(outcome),
            (Wake::IfKeyed, false, true),
        )
        .await?;
        Ok(())
    }

    async fn abandon(&self, fence: Fence) -> Result<(), board::Error> {
        self.fenced(
            fence,
            "UPDATE jobs SET state = 'UNCLAIMED', owner = NULL, owner_lock = NULL, lease_expires_at = NULL, \
                 token = token + 1, stalled_claims = 0, updated_at = now() \
             WHERE id = $1 AND state = 'CLAIMED' AND token = $2 AND $3::jsonb IS NULL \
             RETURNING id, token, lease_expires_at, job_key",
            None,
            (Wake::Always, true, false),
        )
        .await?;
        Ok(())
    }

    async fn park(&self, fence: Fence, reason: Value) -> Result<(), board::Error> {
        self.fenced(
            fence,
            &format!(
                "UPDATE jobs SET state = 'PARKED', owner = NULL, owner_lock = NULL, lease_expires_at = NULL, \
                     token = token + 1, outcome = $3, {PARK_CANCEL}, updated_at = now() \
                 WHERE id = $1 AND state = 'CLAIMED' AND token = $2 \
                 RETURNING id, token, lease_expires_at, job_key, watched"
            ),
            Some(reason),
            (Wake::Never, true, true),
        )
        .await?;
        Ok(())
    }

    async fn requeue(&self, id: JobId, how: Requeue) -> Result<Job, board::Error> {
        let mut tx = self.store.begin().await.map_err(db)?;
        let row: Option<(String, bool, bool)> = sqlx::query_as(&format!(
            "SELECT j.state, coalesce(j.lease_expires_at > now_ms(), false), \
                    EXISTS (SELECT 1 FROM flows f WHERE f.id = j.id AND f.state NOT IN {RUN_ENDED}) \
               FROM jobs j WHERE j.id = $1 FOR UPDATE OF j"
        ))
        .bind(id.as_uuid())
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?;
        let (state, lease_live, run_unfinished) = row.ok_or(board::Error::JobNotFound(id))?;
        let state = job_state(id, Some(state))?;
        if let Err(e) = board::check_requeue(id, state, lease_live, run_unfinished, how) {
            let _ = tx.rollback().await;
            return Err(e);
        }
        // Whatever claim there was is revoked: the token moves on.
        let job = Rows {
            conn: &mut tx,
            channel: &self.channel,
        }
        .reopen(id, how.revert)
        .await?;
        tx.commit().await.map_err(db)?;
        self.notify().await;
        Ok(job)
    }

    async fn request_cancel(&self, id: JobId, how: Cancel) -> Result<Job, board::Error> {
        let mut tx = self.store.begin().await.map_err(db)?;
        let mut rows = Rows {
            conn: &mut tx,
            channel: &self.channel,
        };
        let (job, _, step) = cancel(&mut rows, id, how).await?;
        tx.commit().await.map_err(db)?;
        if step == CancelStep::Reopen {
            self.notify().await;
        }
        Ok(job)
    }

    async fn cancel_requests(
        &self,
        owner: ConductorId,
    ) -> Result<Vec<(JobId, Cancel)>, board::Error> {
        let mut kept = self.store.acquire().await.map_err(db)?;
        let rows: Result<Vec<(String, String)>, _> = sqlx::query_as(
            "SELECT id::text, cancel FROM jobs \
              WHERE owner = $1 AND state = 'CLAIMED' AND cancel IS NOT NULL ORDER BY seq",
        )
        .bind(owner.as_uuid())
        .fetch_all(&mut *kept)
        .await;
        self.store.release(kept, &rows);
        rows.map_err(db)?
            .iter()
            .map(|(id, how)| cancel_request(id, how))
            .collect()
    }

    async fn release(&self, id: JobId) -> Result<(), board::Error> {
        let mut tx = self.store.begin().await.map_err(db)?;
        let state: Option<String> =
            sqlx::query_scalar("SELECT state FROM jobs WHERE id = $1 FOR UPDATE")
                .bind(id.as_uuid())
                .fetch_optional(&mut *tx)
                .await
                .map_err(db)?;
        let needed = match release_needed(id, job_state(id, state)?) {
            Ok(needed) => needed,
            Err(e) => {
                let _ = tx.rollback().await;
                return Err(e);
            }
        };
        if needed {
            sqlx::query(
                "WITH released AS ( \
                     UPDATE jobs SET state = 'UNCLAIMED', owner = NULL, owner_lock = NULL, \
                            lease_expires_at = NULL, token = token + 1, updated_at = now() \
                      WHERE id = $1 RETURNING id, token) \
                 INSERT INTO fences (job_id, token) SELECT id, token FROM released \
                 ON CONFLICT (job_id) DO UPDATE SET token = EXCLUDED.token",
            )
            .bind(id.as_uuid())
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        }
        tx.commit().await.map_err(db)?;
        self.notify().await;
        Ok(())
    }

    async fn trash(
        &self,
        id: JobId,
        fence: Option<Fence>,
        reason: Value,
    ) -> Result<(), board::Error> {
        let mut tx = self.store.begin().await.map_err(db)?;
        let row: Option<(String, i64)> =
            sqlx::query_as("SELECT state, token FROM jobs WHERE id = $1 FOR UPDATE")
                .bind(id.as_uuid())
                .fetch_optional(&mut *tx)
                .await
                .map_err(db)?;
        let (state, token) = row.ok_or(board::Error::JobNotFound(id))?;
        let refusal = check_trash(id, job_state(id, Some(state))?, token, fence).err();
        if let Some(e) = refusal {
            let _ = tx.rollback().await;
            return Err(e);
        }
        sqlx::query(concat!(
            "WITH trashed AS ( \
                 UPDATE jobs SET state = 'TRASHED', owner = NULL, owner_lock = NULL, lease_expires_at = NULL, \
                        token = token + 1, outcome = $2, updated_at = now() \
                  WHERE id = $1 RETURNING id, token, watched), \
             fenced AS ( \
                 INSERT INTO fences (job_id, token) SELECT id, token FROM trashed \
                 ON CONFLICT (job_id) DO UPDATE SET token = EXCLUDED.token) \
             SELECT ",
            announce_end!("$3", "trashed"),
            " FROM trashed"
        ))
        .bind(id.as_uuid())
        .bind(&reason)
        .bind(&*self.channel)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        // A job waiting behind this one's key may run now.
        self.notify().await;
        Ok(())
    }

    async fn get(&self, id: JobId) -> Result<Job, board::Error> {
        self.one_job(&format!("SELECT {COLUMNS} FROM jobs WHERE id = $1"), id)
            .await
    }

    async fn list(&self, query: &JobQuery) -> Result<Vec<Job>, board::Error> {
        let mut kept = self.store.acquire().await.map_err(db)?;
        let rows = async {
            let after = match query.after {
                Some(job) => {
                    let seq = sqlx::query_scalar::<_, i64>("SELECT seq FROM jobs WHERE id = $1")
                        .bind(job.as_uuid())
                        .fetch_optional(&mut *kept)
                        .await?;
                    match seq {
                        Some(seq) => Some(seq),
                        None => return Ok(Err(board::Error::UnknownCursor(job))),
                    }
                }
                None => None,
            };
            let mut q = sqlx::QueryBuilder::new(format!("SELECT {COLUMNS} FROM jobs WHERE true"));
            push_job_query(&mut q, query, query.owner.map(|o| o.as_uuid()), after);
            q.build().fetch_all(&mut *kept).await.map(Ok)
        }
        .await;
        self.store.release(kept, &rows);
        rows.map_err(db)??.iter().map(decode).collect()
    }

    async fn purge_jobs(
        &self,
        ended_before: DateTime<Utc>,
        limit: u32,
    ) -> Result<u64, board::Error> {
        if limit == 0 {
            return Ok(0);
        }
        let mut kept = self.store.acquire().await.map_err(db)?;
        // One statement: the jobs and their fences go together. A job being trashed or
        // consumed at this moment is skipped (it is not over yet).
        // A job whose run is unfinished stays: it is what an operator recovers the run with.
        let purged = sqlx::query_scalar::<_, i64>(&format!(
            "WITH doomed AS ( \
                 SELECT j.id FROM jobs j WHERE j.state IN ($1, $2) AND j.updated_at < $3 \
                    AND NOT EXISTS (SELECT 1 FROM flows f WHERE f.id = j.id \
                                       AND f.state NOT IN {RUN_ENDED}) \
                 ORDER BY j.seq LIMIT $4 FOR UPDATE OF j SKIP LOCKED), \
             gone_fences AS (DELETE FROM fences WHERE job_id IN (SELECT id FROM doomed)), \
             gone AS (DELETE FROM jobs WHERE id IN (SELECT id FROM doomed) RETURNING 1) \
             SELECT count(*) FROM gone",
        ))
        .bind(JobState::Complete.as_str())
        .bind(JobState::Trashed.as_str())
        .bind(ended_before)
        .bind(i64::from(limit))
        .fetch_one(&mut *kept)
        .await;
        self.store.release(kept, &purged);
        Ok(u64::try_from(purged.map_err(db)?).unwrap_or(0))
    }

    async fn wait_for_work(&self, timeout: Duration) {
        self.listener.wait(News::Work, timeout).await;
    }

    async fn wait_for_cancel(&self, _owner: ConductorId, timeout: Duration) {
        self.listener.wait(News::Cancel, timeout).await;
    }

    async fn wait_for_end(&self, job: JobId, timeout: Duration) -> Result<Job, board::Error> {
        let deadline = Listener::deadline(timeout);
        // Watching, and listening, before the look: an end after it is heard.
        let watch = self.listener.watch(job);
        self.listener.listen(deadline).await;
        let now = self.mark_watched(job).await?;
        if now.state.is_at_rest() {
            return Ok(now);
        }
        self.listener.wait_for_end(&watch, deadline).await;
        drop(watch);
        self.get(job).await
    }

    async fn flush_wake_ups(&self) {
        self.wakes.flush().await;
    }

    async fn register(&self, info: &ConductorInfo) -> Result<(), board::Error> {
        // Check (or take) the liveness lock on a connection of our own, kept idle; bounded,
        // and without holding up claims meanwhile (see `crate::liveness`).
        self.liveness
            .keep(info.id, &self.store.pool().connect_options())
            .await?;
        sqlx::query(
            "INSERT INTO conductors (id, name, host, pid, started_at, last_seen, offer) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (id) DO UPDATE SET last_seen = EXCLUDED.last_seen, offer = EXCLUDED.offer",
        )
        .bind(info.id.as_uuid())
        .bind(&info.name)
        .bind(&info.host)
        .bind(i64::from(info.pid))
        .bind(info.started_at)
        .bind(info.last_seen)
        .bind(offer_json(&info.offer))
        .execute(self.store.pool())
        .await
        .map_err(db)?;
        Ok(())
    }

    async fn deregister(&self, id: ConductorId) -> Result<(), board::Error> {
        // Closing the session releases its advisory lock.
        self.liveness.release(id).await;
        sqlx::query("DELETE FROM conductors WHERE id = $1")
            .bind(id.as_uuid())
            .execute(self.store.pool())
            .await
            .map_err(db)?;
        Ok(())
    }

    async fn backlog(&self) -> Result<std::collections::BTreeMap<String, u64>, board::Error> {
        let mut kept = self.store.acquire().await.map_err(db)?;
        let rows: Result<Vec<(String, i64)>, sqlx::Error> =
            sqlx::query_as(crate::counts::BACKLOG_BY_FACTORY)
                .fetch_all(&mut *kept)
                .await;
        self.store.release(kept, &rows);
        crate::counts::backlog(rows.map_err(db)?)
    }

    async fn conductors(&self) -> Result<Vec<ConductorInfo>, board::Error> {
        #[allow(clippy::type_complexity)] // one row, as sqlx reads it
        let rows: Vec<(
            uuid::Uuid,
            String,
            String,
            i64,
            DateTime<Utc>,
            DateTime<Utc>,
            Option<Value>,
        )> = sqlx::query_as(
            "SELECT id, name, host, pid, started_at, last_seen, offer FROM conductors ORDER BY started_at",
        )
        .fetch_all(self.store.pool())
        .await
        .map_err(db)?;
        let all = rows
            .into_iter()
            .map(|(id, name, host, pid, started_at, last_seen, offer)| {
                Ok(ConductorInfo {
                    offer: offer_from_json(&id.to_string(), offer.as_ref())?,
                    id: ConductorId::from_uuid(id),
                    name,
                    host,
                    pid: u32::try_from(pid).map_err(|_| board::Error::Corrupt {
                        job: format!("conductor {id}"),
                        detail: format!("pid {pid}"),
                    })?,
                    started_at,
                    last_seen,
                })
            })
            .collect::<Result<Vec<_>, board::Error>>()?;
        // Within the restart grace, a free lock may be a live conductor's that has not taken it
        // again yet: nobody is dead.
        let trusted: bool = sqlx::query_scalar(&format!("SELECT {}", up_longer_than(1)))
            .bind(ms(self.restart_grace))
            .fetch_one(self.store.pool())
            .await
            .map_err(db)?;
        if !trusted {
            return Ok(all);
        }
        // Read after the rows: a conductor takes its lock before it writes its row, so one
        // listed above without a lock now is dead (or lost its lock's connection, and takes it
        // again, with its row, at its next report).
        let live: std::collections::HashSet<i64> = sqlx::query_scalar(
            "SELECT (l.classid::bigint << 32) | l.objid::bigint FROM pg_locks l \
              WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 \
                AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        )
        .fetch_all(self.store.pool())
        .await
        .map_err(db)?
        .into_iter()
        .collect();
        let (alive, dead): (Vec<_>, Vec<_>) = all
            .into_iter()
            .partition(|c| live.contains(&lock_key(c.id)));
        for c in &dead {
            // Unless it took its lock again meanwhile. Best effort: the listing stands even if
            // forgetting fails.
            let done = sqlx::query(&format!(
                "DELETE FROM conductors WHERE id = $2 AND NOT lock_held($3) AND {}",
                up_longer_than(1)
            ))
            .bind(ms(self.restart_grace))
            .bind(c.id.as_uuid())
            .bind(lock_key(c.id))
            .execute(self.store.pool())
            .await;
            match done {
                Ok(done) if done.rows_affected() == 1 => {
                    tracing::info!(conductor = %c.id, name = %c.name, host = %c.host, pid = c.pid, "forgot a dead conductor");
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(conductor = %c.id, error = %e, "could not forget a dead conductor")
                }
            }
        }
        Ok(alive)
    }
}
