//! The SQLite job board: jobs and the fleet in the store's own database file.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use baton_core::board::{
    self, Cancel, CancelStep, Claim, ConductorInfo, Job, JobBoard, JobQuery, NewJob, Offer, Requeue,
};
use baton_core::JobState;
use baton_core::{ConductorId, Fence, JobId};
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::sqlite::{SqliteConnection, SqliteRow};
use sqlx::Row;

use crate::board_common::{
    cancel, cancel_request, check_trash, db, deadline_ms, job_id, job_state, ms, offer_from_json,
    offer_json, owner_told, push_job_query, release_needed, supersede, token_db, JobRows, RawJob,
    Throttle, HOLDS_KEY, PARK_CANCEL, REAP_EVERY, RUN_ENDED,
};
use crate::codec;
use crate::deadline::Raw;
use crate::lockfile::{Life, Locks};
use crate::sqlite::{SqliteStore, Writable};

const COLUMNS: &str = "id, name, factory, params, job_key, priority, state, owner, \
                       lease_expires_at, token, attempts, outcome, version, stalled_claims, \
                       cancel, deadline, supersedes, created_at, updated_at";

/// A [`JobBoard`] in a SQLite database, beside a [`SqliteStore`] whose flows its claims fence.
///
/// - **Claims** are `BEGIN IMMEDIATE` transactions, so they are exclusive across the processes
///   that share the file.
/// - **Dead owners are found at once.** Every process that shares the file runs on one host,
///   so the kernel can tell: a conductor that registers through this board holds an exclusive
///   lock on a file of its own (`<id>.lock` in the folder `<database>-conductors/` beside the
///   database file), which the kernel lets go when the process dies, however it dies. Before
///   a claim (at most every 100 ms per board), the board probes those locks, and the claim's
///   transaction frees the jobs of owners whose locks are free, so they are claimed at once
///   instead of when their leases run out. An owner with no lock file (in-memory databases, a
///   conductor of an earlier release, a folder it could not write) is found by its lease
///   running out; leases remain the backstop for owners that are alive but stuck. Why a
///   probe never takes a live owner for dead: `docs/operations.md`, "How dead owners are
///   found".
/// - **Wake-ups**: idle conductors of this process are woken at once when a job is posted or
///   handed back here; conductors of other processes find it when they next poll. Likewise,
///   an owner waiting for cancel requests ([`JobBoard::wait_for_cancel`]) is woken at once by
///   a request made in this process, and otherwise finds it when it next polls; and a caller
///   waiting for a job to end ([`JobBoard::wait_for_end`]) is woken at once by an end made in
///   this process (by a board, or by a store's last step of a flow), and otherwise finds it
///   at its timeout.
#[derive(Debug, Clone)]
pub struct SqliteJobBoard {
    store: SqliteStore,
    wake: Arc<baton_core::board::Wake>,
    cancels: Arc<baton_core::board::Wake>,
    ends: Arc<baton_core::board::Ends>,
    locks: Arc<Locks>,
    reaps: Arc<Throttle>,
    /// Whether a lock that could not be taken was reported (at warning level, once).
    lock_warned: Arc<AtomicBool>,
}

/// Runs `f` on `locks` off the runtime's threads (it does file I/O); `None` if it panicked.
async fn with_locks<T: Send + 'static>(
    locks: &Arc<Locks>,
    f: impl FnOnce(&Locks) -> T + Send + 'static,
) -> Option<T> {
    let locks = Arc::clone(locks);
    tokio::task::spawn_blocking(move || f(&locks)).await.ok()
}

/// Frees the claimed jobs of `dead` (conductors whose lock files a probe found free), in the
/// caller's transaction, and forgets their rows in `conductors`: those whose locks are still
/// free, probed again now that the transaction holds the write lock. Answers them (their lock
/// files are to be deleted once the transaction commits).
async fn free_dead_owners(
    conn: &mut SqliteConnection,
    locks: &Arc<Locks>,
    dead: Vec<ConductorId>,
) -> Result<Vec<ConductorId>, board::Error> {
    if dead.is_empty() {
        return Ok(dead);
    }
    let dead = with_locks(locks, move |l| l.still_dead(dead))
        .await
        .unwrap_or_default();
    if dead.is_empty() {
        return Ok(dead);
    }
    let ids = Value::from(dead.iter().map(ToString::to_string).collect::<Vec<_>>()).to_string();
    let freed = sqlx::query(
        "UPDATE jobs SET lease_expires_at = 0 \
          WHERE state = 'CLAIMED' AND lease_expires_at > 0 \
            AND owner IN (SELECT value FROM json_each(?1))",
    )
    .bind(&ids)
    .execute(&mut *conn)
    .await
    .map_err(db)?;
    sqlx::query("DELETE FROM conductors WHERE id IN (SELECT value FROM json_each(?1))")
        .bind(&ids)
        .execute(&mut *conn)
        .await
        .map_err(db)?;
    if freed.rows_affected() > 0 {
        tracing::info!(
            jobs = freed.rows_affected(),
            "owners of claimed jobs are gone: their jobs are free"
        );
    }
    Ok(dead)
}

fn text_time(job: &str, column: &str, text: &str) -> Result<chrono::DateTime<Utc>, board::Error> {
    codec::parse_time(text).map_err(|e| board::Error::Corrupt {
        job: job.to_owned(),
        detail: format!("column {column}: {e}"),
    })
}

fn json(job: &str, column: &str, text: &str) -> Result<Value, board::Error> {
    serde_json::from_str(text).map_err(|e| board::Error::Corrupt {
        job: job.to_owned(),
        detail: format!("column {column}: {e}"),
    })
}

fn decode(row: &SqliteRow) -> Result<Job, board::Error> {
    let id: String = row.try_get("id").map_err(db)?;
    let outcome: Option<String> = row.try_get("outcome").map_err(db)?;
    let supersedes: Option<String> = row.try_get("supersedes").map_err(db)?;
    RawJob {
        name: row.try_get("name").map_err(db)?,
        factory: row.try_get("factory").map_err(db)?,
        params: json(
            &id,
            "params",
            &row.try_get::<String, _>("params").map_err(db)?,
        )?,
        key: row.try_get("job_key").map_err(db)?,
        priority: row.try_get("priority").map_err(db)?,
        state: row.try_get("state").map_err(db)?,
        owner: row.try_get("owner").map_err(db)?,
        lease_expires_at: row.try_get("lease_expires_at").map_err(db)?,
        token: row.try_get("token").map_err(db)?,
        attempts: row.try_get("attempts").map_err(db)?,
        outcome: outcome
            .as_deref()
            .map(|o| json(&id, "outcome", o))
            .transpose()?,
        version: row.try_get("version").map_err(db)?,
        stalled_claims: row.try_get("stalled_claims").map_err(db)?,
        cancel: row.try_get("cancel").map_err(db)?,
        deadline: row.try_get("deadline").map_err(db)?,
        supersedes: supersedes
            .as_deref()
            .map(|s| {
                serde_json::from_str::<Vec<String>>(s).map_err(|e| board::Error::Corrupt {
                    job: id.clone(),
                    detail: format!("column supersedes: {e}"),
                })
            })
            .transpose()?,
        created_at: text_time(
            &id,
            "created_at",
            &row.try_get::<String, _>("created_at").map_err(db)?,
        )?,
        updated_at: text_time(
            &id,
            "updated_at",
            &row.try_get::<String, _>("updated_at").map_err(db)?,
        )?,
        id,
    }
    .decode()
}

async fn set_fence(conn: &mut SqliteConnection, job: &str, token: i64) -> Result<(), board::Error> {
    sqlx::query(
        "INSERT INTO fences (job_id, token) VALUES (?1, ?2) \
         ON CONFLICT (job_id) DO UPDATE SET token = excluded.token",
    )
    .bind(job)
    .bind(token)
    .execute(conn)
    .await
    .map_err(db)?;
    Ok(())
}

/// Makes claimed job `id` `UNCLAIMED` and revokes its claim (its token moves on, in the job's
/// row and in `fences`), in the caller's transaction; under a claim (`token`), only if that
/// claim is current. Answers whether the job was handed back.
async fn hand_back(
    conn: &mut SqliteConnection,
    id: JobId,
    token: Option<i64>,
) -> Result<bool, board::Error> {
    let key = id.to_string();
    let moved: Option<i64> = sqlx::query_scalar(
        "UPDATE jobs SET state = 'UNCLAIMED', owner = NULL, lease_expires_at = NULL, \
             token = token + 1, updated_at = ?2, \
             stalled_claims = CASE WHEN ?3 IS NULL THEN stalled_claims ELSE 0 END \
         WHERE id = ?1 AND state = 'CLAIMED' AND (?3 IS NULL OR token = ?3) RETURNING token",
    )
    .bind(&key)
    .bind(codec::time_text(Utc::now()))
    .bind(token)
    .fetch_optional(&mut *conn)
    .await
    .map_err(db)?;
    match moved {
        Some(token) => set_fence(conn, &key, token).await.map(|()| true),
        None => Ok(false),
    }
}

/// The board's statements on job rows, in the transaction of the connection it holds (see
/// [`JobRows`]).
struct Rows<'c>(&'c mut SqliteConnection);

impl JobRows for Rows<'_> {
    async fn cancel_of(
        &mut self,
        id: JobId,
    ) -> Result<Option<(String, Option<String>)>, board::Error> {
        sqlx::query_as("SELECT state, cancel FROM jobs WHERE id = ?1")
            .bind(id.to_string())
            .fetch_optional(&mut *self.0)
            .await
            .map_err(db)
    }

    async fn holding(&mut self, key: &str) -> Result<Vec<JobId>, board::Error> {
        let ids: Vec<String> = sqlx::query_scalar(&format!(
            "SELECT id FROM jobs INDEXED BY jobs_keyed_open \
              WHERE job_key = ?1 AND state IN {HOLDS_KEY} ORDER BY seq"
        ))
        .bind(key)
        .fetch_all(&mut *self.0)
        .await
        .map_err(db)?;
        ids.iter().map(|id| job_id(id)).collect()
    }

    async fn reopen(&mut self, id: JobId, revert: bool) -> Result<Job, board::Error> {
        // Whatever claim there was is revoked: the token moves on.
        let row = sqlx::query(&format!(
            "UPDATE jobs SET state = 'UNCLAIMED', owner = NULL, lease_expires_at = NULL, \
                 token = token + 1, outcome = NULL, stalled_claims = 0, \
                 cancel = CASE WHEN ?2 THEN 'REVERT' ELSE cancel END, updated_at = ?3 \
             WHERE id = ?1 RETURNING {COLUMNS}"
        ))
        .bind(id.to_string())
        .bind(revert)
        .bind(codec::time_text(Utc::now()))
        .fetch_one(&mut *self.0)
        .await
        .map_err(db)?;
        let job = decode(&row)?;
        set_fence(self.0, &id.to_string(), token_db(job.token)?).await?;
        Ok(job)
    }

    async fn set_cancel(
        &mut self,
        id: JobId,
        how: Cancel,
        _tell: bool,
    ) -> Result<Job, board::Error> {
        // The owner is told once the transaction commits (`SqliteJobBoard::cancels`).
        let row = sqlx::query(&format!(
            "UPDATE jobs SET cancel = ?2, updated_at = ?3 WHERE id = ?1 RETURNING {COLUMNS}"
        ))
        .bind(id.to_string())
        .bind(how.as_str())
        .bind(codec::time_text(Utc::now()))
        .fetch_one(&mut *self.0)
        .await
        .map_err(db)?;
        decode(&row)
    }

    async fn job(&mut self, id: JobId) -> Result<Job, board::Error> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM jobs WHERE id = ?1"))
            .bind(id.to_string())
            .fetch_one(&mut *self.0)
            .await
            .map_err(db)?;
        decode(&row)
    }
}

/// Why a guarded update touched no row: the job is gone, or the claim is stale.
async fn lost(conn: &mut SqliteConnection, fence: Fence) -> board::Error {
    let exists: Result<Option<i64>, _> = sqlx::query_scalar("SELECT 1 FROM jobs WHERE id = ?1")
        .bind(fence.job.to_string())
        .fetch_optional(conn)
        .await;
    match exists {
        Ok(None) => board::Error::JobNotFound(fence.job),
        Ok(Some(_)) => board::Error::ClaimLost {
            job: fence.job,
            token: fence.token,
        },
        Err(e) => db(e),
    }
}

impl SqliteJobBoard {
    /// A board in `store`'s database; its claims fence writes to `store`'s flows.
    #[must_use]
    pub fn new(store: &SqliteStore) -> Self {
        Self {
            store: store.clone(),
            wake: store.job_wake().clone(),
            cancels: store.cancel_wake().clone(),
            ends: store.job_ends().clone(),
            locks: Arc::new(Locks::new(store.file())),
            reaps: Arc::default(),
            lock_warned: Arc::default(),
        }
    }

    /// How long a call of this board may take: its store's
    /// [`call_timeout`](SqliteStore::call_timeout).
    #[must_use]
    pub fn call_timeout(&self) -> Duration {
        self.store.call_timeout()
    }

    /// Runs `f` in one `BEGIN IMMEDIATE` transaction, committed if it succeeds.
    async fn write<T, F>(&self, f: F) -> Result<T, board::Error>
    where
        F: for<'c> FnOnce(
            &'c mut SqliteConnection,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<T, board::Error>> + Send + 'c>,
        >,
    {
        let _gate = self.store.write_gate().lock().await;
        // Closed if given up on in the middle of its `BEGIN` (see `Writable`).
        let mut conn = Writable::new(self.store.pool().acquire().await.map_err(db)?);
        let mut tx = conn.begin_immediate().await.map_err(db)?;
        match f(&mut tx).await {
            Ok(v) => {
                tx.commit().await.map_err(db)?;
                Ok(v)
            }
            Err(e) => {
                let _ = tx.rollback().await;
                Err(e)
            }
        }
    }

    /// A guarded update of the job under `fence`. `sql` binds, in order: `?1` the job id, `?2`
    /// the token (its `WHERE` must be `id = ?1 AND state = 'CLAIMED' AND token = ?2`), then
    /// the lease (if any), the extra values, and last the update time.
    async fn fenced(
        &self,
        fence: Fence,
        sql: &'static str,
        extra: Vec<Option<String>>,
        lease: Option<i64>,
    ) -> Result<(), board::Error> {
        let token = token_db(fence.token)?;
        self.write(move |conn| {
            Box::pin(async move {
                let mut q = sqlx::query(sql).bind(fence.job.to_string()).bind(token);
                if let Some(l) = lease {
                    q = q.bind(l);
                }
                for e in extra {
                    q = q.bind(e);
                }
                let done = q
                    .bind(codec::time_text(Utc::now()))
                    .execute(&mut *conn)
                    .await
                    .map_err(db)?;
                if done.rows_affected() == 1 {
                    Ok(())
                } else {
                    Err(lost(conn, fence).await)
                }
            })
        })
        .await
    }
}

crate::deadline::bounded_board!(SqliteJobBoard, Duration::ZERO);

/// The board's calls, unbounded: [`crate::deadline`] bounds each.
#[async_trait]
impl JobBoard for Raw<'_, SqliteJobBoard> {
    async fn post(&self, new: NewJob) -> Result<Job, board::Error> {
        new.check(self.store.max_value_bytes())?;
        let id = JobId::new();
        let now = codec::time_text(Utc::now());
        let params = serde_json::to_string(&new.params)
            .map_err(|e| board::Error::InvalidJob(e.to_string()))?;
        let sql = format!(
            "INSERT INTO jobs (id, name, factory, params, job_key, priority, state, token, attempts, version, \
                               deadline, supersedes, watched, created_at, updated_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'UNCLAIMED', 0, 0, ?8, ?9, ?10, ?11, ?7, ?7) RETURNING {COLUMNS}"
        );
        let (job, told) = self
            .write(move |conn| {
                Box::pin(async move {
                    // In the same transaction: the earlier jobs of the key are asked to revert.
                    let (supersedes, told) = match (new.supersede, &new.key) {
                        (true, Some(key)) => supersede(&mut Rows(&mut *conn), key).await?,
                        _ => (Vec::new(), false),
                    };
                    let supersedes = (!supersedes.is_empty()).then(|| {
                        let ids: Vec<String> = supersedes.iter().map(JobId::to_string).collect();
                        serde_json::Value::from(ids).to_string()
                    });
                    let row = sqlx::query(&sql)
                        .bind(id.to_string())
                        .bind(new.name)
                        .bind(new.factory)
                        .bind(params)
                        .bind(new.key)
                        .bind(i64::from(new.priority))
                        .bind(now)
                        .bind(new.version.map(i64::from))
                        .bind(deadline_ms(new.deadline))
                        .bind(supersedes)
                        .bind(new.watched)
                        .fetch_one(conn)
                        .await
                        .map_err(db)?;
                    Ok((decode(&row)?, told))
                })
            })
            .await?;
        if told {
            self.cancels.wake();
        }
        self.wake.wake();
        Ok(job)
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
        // The offer (`?2` of `choose`, `?5` of `take`) is a JSON array of [factory, version]
        // pairs. A job is taken if the offer has its factory, at its version if it is pinned;
        // an unpinned job is pinned to the newest version offered.
        //
        // The jobs are chosen first, walking `jobs_open` (open jobs in claim order), named:
        // left to itself the planner takes an index by state, reads every waiting job and
        // sorts them all to keep `?3`, so a claim cost more the deeper the backlog (a 10 000-job
        // backlog drained at half the rate of a 2 000-job one; docs/performance.md,
        // "Backlogs"). A job's key is checked along `jobs_keyed_open` (open jobs that have a
        // key), named too, as a precaution: with the statistics of a million jobs without a
        // key, Debian's sqlite3 3.40 planned that check as a walk of every earlier job (the
        // bundled SQLite chose the index).
        //
        // Then each chosen job is updated by its row number, one statement each. Updated in
        // one statement (`WHERE id IN (...)`), the jobs were found by a scan of the table
        // whenever the statistics said it was small (an `ANALYZE` of a young database): a scan
        // of every job ever posted, at every claim, once the table had grown.
        let (choose, take) = (claim_choice_sql(), claim_take_sql());
        let offer = offer_json(offer).to_string();
        // Owners found dead are probed outside the transaction, so that it holds the write
        // lock no longer than it must (dead stays dead).
        let dead = if self.reaps.due(REAP_EVERY) {
            with_locks(&self.locks, Locks::dead)
                .await
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        let locks = Arc::clone(&self.locks);
        let now = Utc::now();
        let lease_ms = ms(lease);
        let limit = i64::try_from(max).unwrap_or(i64::MAX);
        let (mut jobs, gone) = self
            .write(move |conn| {
                Box::pin(async move {
                    let gone = free_dead_owners(&mut *conn, &locks, dead).await?;
                    let chosen: Vec<i64> = sqlx::query_scalar(&choose)
                        .bind(now.timestamp_millis())
                        .bind(&offer)
                        .bind(limit)
                        .fetch_all(&mut *conn)
                        .await
                        .map_err(db)?;
                    let mut jobs = Vec::with_capacity(chosen.len());
                    for seq in chosen {
                        let row = sqlx::query(&take)
                            .bind(owner.to_string())
                            .bind(now.timestamp_millis())
                            .bind(lease_ms)
                            .bind(codec::time_text(now))
                            .bind(&offer)
                            .bind(seq)
                            .fetch_one(&mut *conn)
                            .await
                            .map_err(db)?;
                        let job = decode(&row)?;
                        let order: i64 = row.try_get("claim_order").map_err(db)?;
                        // In the same transaction: from now on only the new token writes the
                        // flow.
                        set_fence(conn, &job.id.to_string(), token_db(job.token)?).await?;
                        jobs.push((order, job));
                    }
                    Ok((jobs, gone))
                })
            })
            .await?;
        if !gone.is_empty() {
            with_locks(&self.locks, move |l| l.forget(&gone)).await;
        }
        // In the order one claim at a time would have taken them.
        jobs.sort_by_key(|(order, job)| (std::cmp::Reverse(job.priority), *order));
        Ok(jobs
            .into_iter()
            .map(|(_, job)| Claim {
                fence: Fence {
                    job: job.id,
                    token: job.token,
                },
                lease_expires_at: job.lease_expires_at.unwrap_or(now),
                job,
            })
            .collect())
    }

    async fn heartbeat(
        &self,
        fence: Fence,
        lease: Duration,
        progressed: bool,
    ) -> Result<chrono::DateTime<Utc>, board::Error> {
        let until = Utc::now().timestamp_millis().saturating_add(ms(lease));
        let sql = if progressed {
            "UPDATE jobs SET lease_expires_at = ?3, stalled_claims = 0, updated_at = ?4 \
             WHERE id = ?1 AND state = 'CLAIMED' AND token = ?2"
        } else {
            "UPDATE jobs SET lease_expires_at = ?3, updated_at = ?4 \
             WHERE id = ?1 AND state = 'CLAIMED' AND token = ?2"
        };
        self.fenced(fence, sql, vec![], Some(until)).await?;
        Ok(crate::board_common::from_ms(until))
    }

    async fn consume(&self, fence: Fence, outcome: Value) -> Result<(), board::Error> {
        self.fenced(
            fence,
            "UPDATE jobs SET state = 'COMPLETE', owner = NULL, lease_expires_at = NULL, \
                 outcome = ?3, updated_at = ?4 \
             WHERE id = ?1 AND state = 'CLAIMED' AND token = ?2",
            vec![Some(outcome.to_string())],
            None,
        )
        .await?;
        // A job waiting on the same key may now run.
        self.wake.wake();
        self.ends.ended(fence.job);
        Ok(())
    }

    async fn abandon(&self, fence: Fence) -> Result<(), board::Error> {
        let token = token_db(fence.token)?;
        self.write(move |conn| {
            Box::pin(async move {
                if hand_back(&mut *conn, fence.job, Some(token)).await? {
                    Ok(())
                } else {
                    Err(lost(conn, fence).await)
                }
            })
        })
        .await?;
        self.wake.wake();
        Ok(())
    }

    async fn park(&self, fence: Fence, reason: Value) -> Result<(), board::Error> {
        let token = token_db(fence.token)?;
        self.write(move |conn| {
            Box::pin(async move {
                let key = fence.job.to_string();
                let moved: Option<i64> = sqlx::query_scalar(&format!(
                    "UPDATE jobs SET state = 'PARKED', owner = NULL, lease_expires_at = NULL, \
                             token = token + 1, outcome = ?3, {PARK_CANCEL}, updated_at = ?4 \
                         WHERE id = ?1 AND state = 'CLAIMED' AND token = ?2 RETURNING token"
                ))
                .bind(&key)
                .bind(token)
                .bind(reason.to_string())
                .bind(codec::time_text(Utc::now()))
                .fetch_optional(&mut *conn)
                .await
                .map_err(db)?;
                match moved {
                    Some(token) => set_fence(conn, &key, token).await,
                    None => Err(lost(conn, fence).await),
                }
            })
        })
        .await?;
        self.ends.ended(fence.job);
        Ok(())
    }

    async fn requeue(&self, id: JobId, how: Requeue) -> Result<Job, board::Error> {
        let job = self
            .write(move |conn| {
                Box::pin(async move {
                    let now = Utc::now();
                    let row: Option<(String, bool, bool)> = sqlx::query_as(&format!(
                        "SELECT j.state, coalesce(j.lease_expires_at > ?2, 0), \
                                EXISTS (SELECT 1 FROM flows f WHERE f.id = j.id \
                                           AND f.state NOT IN {RUN_ENDED}) \
                           FROM jobs j WHERE j.id = ?1"
                    ))
                    .bind(id.to_string())
                    .bind(now.timestamp_millis())
                    .fetch_optional(&mut *conn)
                    .await
                    .map_err(db)?;
                    let (state, lease_live, run_unfinished) =
                        row.ok_or(board::Error::JobNotFound(id))?;
                    let state = job_state(id, Some(state))?;
                    board::check_requeue(id, state, lease_live, run_unfinished, how)?;
                    Rows(conn).reopen(id, how.revert).await
                })
            })
            .await?;
        self.wake.wake();
        Ok(job)
    }

    async fn request_cancel(&self, id: JobId, how: Cancel) -> Result<Job, board::Error> {
        let (job, state, step) = self
            .write(move |conn| Box::pin(async move { cancel(&mut Rows(conn), id, how).await }))
            .await?;
        if owner_told(state, step) {
            self.cancels.wake();
        }
        if step == CancelStep::Reopen {
            self.wake.wake();
        }
        Ok(job)
    }

    async fn cancel_requests(
        &self,
        owner: ConductorId,
    ) -> Result<Vec<(JobId, Cancel)>, board::Error> {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT id, cancel FROM jobs \
              WHERE owner = ?1 AND state = 'CLAIMED' AND cancel IS NOT NULL ORDER BY seq",
        )
        .bind(owner.to_string())
        .fetch_all(self.store.pool())
        .await
        .map_err(db)?;
        rows.iter()
            .map(|(id, how)| cancel_request(id, how))
            .collect()
    }

    async fn wait_for_cancel(&self, _owner: ConductorId, timeout: Duration) {
        self.cancels.wait(timeout).await;
    }

    async fn wait_for_end(&self, job: JobId, timeout: Duration) -> Result<Job, board::Error> {
        self.ends.wait_for_end(job, timeout, |j| self.get(j)).await
    }

    async fn release(&self, id: JobId) -> Result<(), board::Error> {
        self.write(move |conn| {
            Box::pin(async move {
                let state: Option<String> =
                    sqlx::query_scalar("SELECT state FROM jobs WHERE id = ?1")
                        .bind(id.to_string())
                        .fetch_optional(&mut *conn)
                        .await
                        .map_err(db)?;
                if release_needed(id, job_state(id, state)?)? {
                    hand_back(conn, id, None).await?;
                }
                Ok(())
            })
        })
        .await?;
        self.wake.wake();
        Ok(())
    }

    async fn trash(
        &self,
        id: JobId,
        fence: Option<Fence>,
        reason: Value,
    ) -> Result<(), board::Error> {
        self.write(move |conn| {
            Box::pin(async move {
                let row: Option<(String, i64)> = sqlx::query_as("SELECT state, token FROM jobs WHERE id = ?1")
                    .bind(id.to_string())
                    .fetch_optional(&mut *conn)
                    .await
                    .map_err(db)?;
                let (state, token) = row.ok_or(board::Error::JobNotFound(id))?;
                check_trash(id, job_state(id, Some(state))?, token, fence)?;
                let token: i64 = sqlx::query_scalar(
                    "UPDATE jobs SET state = 'TRASHED', owner = NULL, lease_expires_at = NULL, \
                         token = token + 1, outcome = ?2, updated_at = ?3 WHERE id = ?1 RETURNING token",
                )
                .bind(id.to_string())
                .bind(reason.to_string())
                .bind(codec::time_text(Utc::now()))
                .fetch_one(&mut *conn)
                .await
                .map_err(db)?;
                set_fence(conn, &id.to_string(), token).await
            })
        })
        .await?;
        self.wake.wake();
        self.ends.ended(id);
        Ok(())
    }

    async fn get(&self, id: JobId) -> Result<Job, board::Error> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM jobs WHERE id = ?1"))
            .bind(id.to_string())
            .fetch_optional(self.store.pool())
            .await
            .map_err(db)?
            .ok_or(board::Error::JobNotFound(id))?;
        decode(&row)
    }

    async fn list(&self, query: &JobQuery) -> Result<Vec<Job>, board::Error> {
        let pool = self.store.pool();
        let after = match query.after {
            Some(job) => Some(
                sqlx::query_scalar::<_, i64>("SELECT seq FROM jobs WHERE id = ?1")
                    .bind(job.to_string())
                    .fetch_optional(pool)
                    .await
                    .map_err(db)?
                    .ok_or(board::Error::UnknownCursor(job))?,
            ),
            None => None,
        };
        let mut q = sqlx::QueryBuilder::new(format!("SELECT {COLUMNS} FROM jobs WHERE 1 = 1"));
        push_job_query(&mut q, query, query.owner.map(|o| o.to_string()), after);
        let rows = q.build().fetch_all(pool).await.map_err(db)?;
        rows.iter().map(decode).collect()
    }

    async fn purge_jobs(
        &self,
        ended_before: DateTime<Utc>,
        limit: u32,
    ) -> Result<u64, board::Error> {
        if limit == 0 {
            return Ok(0);
        }
        let before = codec::time_text(codec::sortable_time(ended_before));
        self.write(move |conn| {
            Box::pin(async move {
                // A job whose run is unfinished stays: it is what an operator recovers the run
                // with.
                let doomed: Vec<String> = sqlx::query_scalar(&format!(
                    "SELECT j.id FROM jobs j WHERE j.state IN (?1, ?2) AND j.updated_at < ?3 \
                        AND NOT EXISTS (SELECT 1 FROM flows f WHERE f.id = j.id \
                                           AND f.state NOT IN {RUN_ENDED}) \
                     ORDER BY j.seq LIMIT ?4"
                ))
                .bind(JobState::Complete.as_str())
                .bind(JobState::Trashed.as_str())
                .bind(before)
                .bind(i64::from(limit))
                .fetch_all(&mut *conn)
                .await
                .map_err(db)?;
                for id in &doomed {
                    for sql in [
                        "DELETE FROM fences WHERE job_id = ?1",
                        "DELETE FROM jobs WHERE id = ?1",
                    ] {
                        sqlx::query(sql)
                            .bind(id)
                            .execute(&mut *conn)
                            .await
                            .map_err(db)?;
                    }
                }
                Ok(doomed.len() as u64)
            })
        })
        .await
    }

    async fn wait_for_work(&self, timeout: Duration) {
        self.wake.wait(timeout).await;
    }

    async fn register(&self, info: &ConductorInfo) -> Result<(), board::Error> {
        // The lock first, then the row: a conductor listed without a lock is dead.
        let id = info.id;
        match with_locks(&self.locks, move |l| l.keep(id)).await {
            Some(Ok(_)) | None => {}
            Some(Err(e)) => {
                if self.lock_warned.swap(true, Ordering::Relaxed) {
                    tracing::debug!(conductor = %id, error = %e, "no liveness lock");
                } else {
                    tracing::warn!(conductor = %id, error = %e, "no liveness lock: if this conductor dies, its jobs wait for their leases");
                }
            }
        }
        let info = info.clone();
        self.write(move |conn| {
            Box::pin(async move {
                sqlx::query(
                    "INSERT INTO conductors (id, name, host, pid, started_at, last_seen, offer) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
                     ON CONFLICT (id) DO UPDATE SET last_seen = excluded.last_seen, offer = excluded.offer",
                )
                .bind(info.id.to_string())
                .bind(info.name)
                .bind(info.host)
                .bind(i64::from(info.pid))
                .bind(codec::time_text(info.started_at))
                .bind(codec::time_text(info.last_seen))
                .bind(offer_json(&info.offer).to_string())
                .execute(&mut *conn)
                .await
                .map_err(db)?;
                // An `ANALYZE` run on the file since: see `drop_value_statistics`.
                crate::sqlite::drop_value_statistics(conn).await;
                Ok(())
            })
        })
        .await
    }

    async fn deregister(&self, id: ConductorId) -> Result<(), board::Error> {
        let left_claimed = self
            .write(move |conn| {
                Box::pin(async move {
                    let left: bool = sqlx::query_scalar(
                        "SELECT EXISTS (SELECT 1 FROM jobs WHERE state = 'CLAIMED' AND owner = ?1)",
                    )
                    .bind(id.to_string())
                    .fetch_one(&mut *conn)
                    .await
                    .map_err(db)?;
                    sqlx::query("DELETE FROM conductors WHERE id = ?1")
                        .bind(id.to_string())
                        .execute(conn)
                        .await
                        .map_err(db)?;
                    Ok(left)
                })
            })
            .await;
        // Jobs it leaves claimed (halted at the drain timeout) are freed at once by the next
        // claim, as a dead owner's are: its lock file stays, free, until then.
        let delete = matches!(left_claimed, Ok(false));
        with_locks(&self.locks, move |l| l.release(id, delete)).await;
        left_claimed.map(|_| ())
    }

    async fn backlog(&self) -> Result<std::collections::BTreeMap<String, u64>, board::Error> {
        let rows = sqlx::query_as(crate::counts::BACKLOG_BY_FACTORY)
            .fetch_all(self.store.pool())
            .await
            .map_err(db)?;
        crate::counts::backlog(rows)
    }

    async fn conductors(&self) -> Result<Vec<ConductorInfo>, board::Error> {
        #[allow(clippy::type_complexity)] // one row, as sqlx reads it
        let rows: Vec<(String, String, String, i64, String, String, Option<String>)> = sqlx::query_as(
            "SELECT id, name, host, pid, started_at, last_seen, offer FROM conductors ORDER BY started_at",
        )
        .fetch_all(self.store.pool())
        .await
        .map_err(db)?;
        let all = rows
            .into_iter()
            .map(|(id, name, host, pid, started, seen, offer)| {
                let bad = |d: String| board::Error::Corrupt {
                    job: format!("conductor {id}"),
                    detail: d,
                };
                let offer = offer
                    .map(|o| {
                        serde_json::from_str::<Value>(&o).map_err(|e| bad(format!("offer: {e}")))
                    })
                    .transpose()?;
                Ok(ConductorInfo {
                    offer: offer_from_json(&id, offer.as_ref())?,
                    id: id
                        .parse()
                        .map_err(|e: baton_core::ParseIdError| bad(e.to_string()))?,
                    name,
                    host,
                    pid: u32::try_from(pid).map_err(|_| bad(format!("pid {pid}")))?,
                    started_at: codec::parse_time(&started).map_err(&bad)?,
                    last_seen: codec::parse_time(&seen).map_err(&bad)?,
                })
            })
            .collect::<Result<Vec<_>, board::Error>>()?;
        // Every process that shares a SQLite file runs on one host, so a conductor whose lock
        // file is free is dead, at once. Without a lock file (a conductor of an earlier
        // release), one registered under this host's name whose process is gone, and that has
        // been quiet for a while (a process of the same host name may not be visible from
        // here: containers of one pod, `/proc` mounted with `hidepid`), is dead; so is one that
        // has not reported in for a long while, whatever its host.
        let ids: Vec<ConductorId> = all.iter().map(|c| c.id).collect();
        let lives = with_locks(&self.locks, move |l| {
            ids.into_iter()
                .map(|id| (id, l.life(id)))
                .collect::<std::collections::HashMap<_, _>>()
        })
        .await
        .unwrap_or_default();
        let here = board::this_host();
        let now = Utc::now();
        let ago = |d: Duration| now - chrono::Duration::from_std(d).unwrap_or_default();
        let (unseen, quiet) = (ago(board::CONDUCTOR_UNSEEN_LIMIT), ago(GONE_AND_QUIET));
        let (live, dead): (Vec<_>, Vec<_>) = all.into_iter().partition(|c| {
            lives.get(&c.id) != Some(&Life::Dead)
                && c.last_seen >= unseen
                && !(c.last_seen < quiet && c.host == here && process_gone(c.pid))
        });
        if !dead.is_empty() {
            // Best effort: the listing stands even if forgetting fails.
            let forgot = self
                .write(move |conn| {
                    Box::pin(async move {
                        for c in &dead {
                            // Unless it reported in meanwhile.
                            let done = sqlx::query(
                                "DELETE FROM conductors WHERE id = ?1 AND last_seen = ?2",
                            )
                            .bind(c.id.to_string())
                            .bind(codec::time_text(c.last_seen))
                            .execute(&mut *conn)
                            .await
                            .map_err(db)?;
                            if done.rows_affected() == 1 {
                                tracing::info!(conductor = %c.id, name = %c.name, pid = c.pid, "forgot a dead conductor");
                            }
                        }
                        Ok(())
                    })
                })
                .await;
            if let Err(e) = forgot {
                tracing::warn!(error = %e, "could not forget dead conductors");
            }
        }
        Ok(live)
    }
}

/// How long a conductor whose process is gone from this host must also have been quiet before
/// it counts as dead (see `conductors`).
const GONE_AND_QUIET: Duration = Duration::from_secs(30);

/// Whether process `pid` of this host is certainly gone: the process table can be read (Linux's
/// `/proc`) and holds no such process. Elsewhere nothing is certain, and only
/// [`board::CONDUCTOR_UNSEEN_LIMIT`] counts.
fn process_gone(pid: u32) -> bool {
    std::path::Path::new("/proc/self").exists()
        && !std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// The claim's first statement: the row numbers (`seq`) of up to `?3` jobs the offer `?2` may
/// take at `?1` (milliseconds since the epoch), in claim order. The comment in `claim_up_to`
/// says why each index is named.
fn claim_choice_sql() -> String {
    format!(
        "SELECT j.seq FROM jobs j INDEXED BY jobs_open \
          WHERE j.state IN ('UNCLAIMED', 'CLAIMED') \
            AND (j.state = 'UNCLAIMED' OR (j.state = 'CLAIMED' AND j.lease_expires_at <= ?1)) \
            AND EXISTS (SELECT 1 FROM json_each(?2) o \
                         WHERE o.value ->> '$[0]' = j.factory \
                           AND (j.version IS NULL OR o.value ->> '$[1]' = j.version)) \
            AND (j.job_key IS NULL OR NOT EXISTS ( \
                SELECT 1 FROM jobs k INDEXED BY jobs_keyed_open \
                 WHERE k.job_key = j.job_key AND k.state IN {HOLDS_KEY} AND k.seq < j.seq)) \
          ORDER BY j.priority DESC, j.seq LIMIT ?3"
    )
}

/// The claim's second statement, once per job chosen: claims job number `?6` for owner `?1`
/// with a lease of `?3` ms from `?2`, at `?4`, pinning it to the newest version of its
/// factory in the offer `?5` if it has none.
fn claim_take_sql() -> String {
    format!(
        "UPDATE jobs SET state = 'CLAIMED', owner = ?1, lease_expires_at = ?2 + ?3, \
             token = token + 1, claim_token = token + 1, \
             attempts = min(attempts + 1, 4294967295), \
             stalled_claims = min(stalled_claims + 1, 4294967295), \
             version = coalesce(version, (SELECT max(o.value ->> '$[1]') FROM json_each(?5) o \
                                           WHERE o.value ->> '$[0]' = jobs.factory)), \
             updated_at = ?4 \
         WHERE seq = ?6 \
         RETURNING {COLUMNS}, seq AS claim_order"
    )
}

#[cfg(test)]
mod tests {
    use sqlx::Connection;

    use super::*;

    /// The query plan of `sql` on a new connection to `url` (which reads the statistics as
    /// they are now), one line per step.
    async fn plan(url: &str, sql: &str) -> Vec<String> {
        let mut conn = SqliteConnection::connect(url).await.unwrap();
        let rows: Vec<(i64, i64, i64, String)> =
            sqlx::query_as(&format!("EXPLAIN QUERY PLAN {sql}"))
                .fetch_all(&mut conn)
                .await
                .unwrap();
        rows.into_iter().map(|(_, _, _, detail)| detail).collect()
    }

    /// A store on a new file in `dir`, its board, and the file's URL, holding three jobs of
    /// factory `f` (and one with key `k` if `keyed`), analyzed.
    async fn analyzed(
        dir: &tempfile::TempDir,
        keyed: bool,
    ) -> (String, SqliteStore, SqliteJobBoard) {
        let url = format!("sqlite://{}", dir.path().join("analyzed.db").display());
        let store = SqliteStore::open(&url).await.unwrap();
        let board = SqliteJobBoard::new(&store);
        for i in 0..3 {
            board
                .post(NewJob::new(format!("job {i}"), "f"))
                .await
                .unwrap();
        }
        if keyed {
            board
                .post(NewJob::new("keyed", "f").key("k"))
                .await
                .unwrap();
        }
        sqlx::query("ANALYZE").execute(store.pool()).await.unwrap();
        (url, store, board)
    }

    /// The statistics tables the file of `store` holds, by name.
    async fn statistics_tables(store: &SqliteStore) -> Vec<String> {
        sqlx::query_scalar(
            "SELECT name FROM sqlite_schema WHERE name LIKE 'sqlite_stat%' ORDER BY name",
        )
        .fetch_all(store.pool())
        .await
        .unwrap()
    }

    /// A claim walks the index of open jobs, checks keys along the index of open keyed jobs and
    /// updates the jobs it chose by their row numbers, whatever the statistics say: as an
    /// `ANALYZE` of a young database leaves them (a table of a few rows, where a scan looks
    /// cheapest), and as one of an old database where no job has a key (where a key looks
    /// shared by every job).
    #[tokio::test]
    async fn claims_keep_their_plan_whatever_the_statistics_say() {
        let dir = tempfile::tempdir().unwrap();
        let (url, store, board) = analyzed(&dir, true).await;
        let young = plan(&url, &claim_take_sql()).await;
        let old_stats = [
            ("sqlite_autoindex_jobs_1", "1000000 1"),
            ("jobs_by_key", "1000000 1000000 1"),
            ("jobs_by_state", "1000000 1000000 1"),
        ];
        let mut plans = vec![(young, plan(&url, &claim_choice_sql()).await)];
        for (index, stat) in old_stats {
            sqlx::query("UPDATE sqlite_stat1 SET stat = ?1 WHERE tbl = 'jobs' AND idx = ?2")
                .bind(stat)
                .bind(index)
                .execute(store.pool())
                .await
                .unwrap();
        }
        plans.push((
            plan(&url, &claim_take_sql()).await,
            plan(&url, &claim_choice_sql()).await,
        ));
        for (take, choose) in plans {
            assert_eq!(
                take.first().map(String::as_str),
                Some("SEARCH jobs USING INTEGER PRIMARY KEY (rowid=?)"),
                "{take:?}"
            );
            assert!(!take.iter().any(|l| l.starts_with("SCAN jobs")), "{take:?}");
            assert!(
                choose.iter().any(|l| l == "SCAN j USING INDEX jobs_open"),
                "{choose:?}"
            );
            assert!(
                choose
                    .iter()
                    .any(|l| l.starts_with("SEARCH k USING INDEX jobs_keyed_open")),
                "{choose:?}"
            );
            assert!(
                !choose.iter().any(|l| l.starts_with("SCAN jobs")),
                "{choose:?}"
            );
        }
        // And the claims work: the unkeyed jobs and the keyed one.
        let offer = Offer::new().with("f", 1);
        let claims = board
            .claim_up_to(ConductorId::new(), Duration::from_secs(30), 10, &offer)
            .await
            .unwrap();
        assert_eq!(claims.len(), 4);
    }

    /// An `ANALYZE` leaves per-value statistics (`sqlite_stat4`), with which SQLite compiles
    /// each statement again at every execution; opening the store drops them and keeps the
    /// others.
    #[tokio::test]
    async fn opening_drops_per_value_statistics() {
        let dir = tempfile::tempdir().unwrap();
        let (url, store, board) = analyzed(&dir, false).await;
        assert_eq!(
            statistics_tables(&store).await,
            ["sqlite_stat1", "sqlite_stat4"],
            "what ANALYZE left"
        );
        drop((board, store));

        let store = SqliteStore::open(&url).await.unwrap();
        assert_eq!(statistics_tables(&store).await, ["sqlite_stat1"]);
        let jobs = SqliteJobBoard::new(&store)
            .list(&JobQuery::all())
            .await
            .unwrap();
        assert_eq!(jobs.len(), 3, "nothing else changed");
        // A second open finds nothing to drop.
        SqliteStore::open(&url).await.unwrap();

        // A conductor already running drops them at its next heartbeat.
        let board = SqliteJobBoard::new(&store);
        let now = Utc::now();
        let info = ConductorInfo {
            id: ConductorId::new(),
            name: "c".into(),
            host: "test".into(),
            pid: std::process::id(),
            started_at: now,
            last_seen: now,
            offer: Offer::new().with("f", 1),
        };
        board.register(&info).await.unwrap();
        sqlx::query("ANALYZE").execute(store.pool()).await.unwrap();
        assert_eq!(
            statistics_tables(&store).await,
            ["sqlite_stat1", "sqlite_stat4"]
        );
        board.register(&info).await.unwrap();
        assert_eq!(statistics_tables(&store).await, ["sqlite_stat1"]);
        assert_eq!(board.conductors().await.unwrap().len(), 1);
    }
}
