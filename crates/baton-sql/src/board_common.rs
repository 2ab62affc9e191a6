//! What the SQL job boards share: error mapping, row decoding helpers, and the rules they
//! apply in SQL.

use std::future::Future;
use std::str::FromStr;
use std::time::{Duration, Instant};

use baton_core::board::{self, Cancel, CancelStep, Job, Offer};
use baton_core::{ConductorId, Fence, FencingToken, JobId, JobState};
use chrono::{DateTime, TimeZone, Utc};
use serde_json::Value;

/// How often, at most, a board looks for the jobs of dead owners before a claim: one look (at
/// `pg_locks` on PostgreSQL, at the lock files on SQLite) is cheap a few times a second, too
/// dear for every claim.
pub(crate) const REAP_EVERY: Duration = Duration::from_millis(100);

/// Lets something happen at most once per interval (a board's looks for dead owners).
#[derive(Debug, Default)]
pub(crate) struct Throttle(std::sync::Mutex<Option<Instant>>);

impl Throttle {
    /// Whether `every` has passed since the last time this answered `true` (which it then
    /// counts from now).
    pub(crate) fn due(&self, every: Duration) -> bool {
        let mut last = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match *last {
            Some(t) if t.elapsed() < every => false,
            _ => {
                *last = Some(Instant::now());
                true
            }
        }
    }
}

/// Maps a sqlx error onto the board's error kinds, as the store does.
pub(crate) fn db(err: sqlx::Error) -> board::Error {
    match crate::error::classify(err) {
        baton_core::store::Error::Unavailable(e) => board::Error::Unavailable(e),
        baton_core::store::Error::CorruptDatabase(e) => board::Error::CorruptDatabase(e),
        other => board::Error::Backend(Box::new(other)),
    }
}

/// A lease deadline in milliseconds since the epoch, as a time.
pub(crate) fn from_ms(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms)
        .single()
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// A duration in whole milliseconds, saturated to what the database stores.
pub(crate) fn ms(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The parts of a job row, in text/integer form, before checking.
pub(crate) struct RawJob {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) factory: String,
    pub(crate) params: Value,
    pub(crate) key: Option<String>,
    pub(crate) priority: i64,
    pub(crate) state: String,
    pub(crate) owner: Option<String>,
    pub(crate) lease_expires_at: Option<i64>,
    pub(crate) token: i64,
    pub(crate) attempts: i64,
    pub(crate) outcome: Option<Value>,
    pub(crate) version: Option<i64>,
    pub(crate) stalled_claims: i64,
    pub(crate) cancel: Option<String>,
    /// Milliseconds since the Unix epoch.
    pub(crate) deadline: Option<i64>,
    /// Job ids.
    pub(crate) supersedes: Option<Vec<String>>,
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) updated_at: DateTime<Utc>,
}

fn corrupt(job: &str, detail: impl Into<String>) -> board::Error {
    board::Error::Corrupt {
        job: job.to_owned(),
        detail: detail.into(),
    }
}

impl RawJob {
    /// Checks and converts the row.
    pub(crate) fn decode(self) -> Result<Job, board::Error> {
        let id = JobId::from_str(&self.id).map_err(|e| corrupt(&self.id, e.to_string()))?;
        let state =
            JobState::from_str(&self.state).map_err(|e| corrupt(&self.id, e.to_string()))?;
        let owner = self
            .owner
            .as_deref()
            .map(ConductorId::from_str)
            .transpose()
            .map_err(|e| corrupt(&self.id, e.to_string()))?;
        let token = u64::try_from(self.token)
            .map_err(|_| corrupt(&self.id, format!("negative token {}", self.token)))?;
        let attempts = u32::try_from(self.attempts)
            .map_err(|_| corrupt(&self.id, format!("attempts {} out of range", self.attempts)))?;
        let priority = i32::try_from(self.priority)
            .map_err(|_| corrupt(&self.id, format!("priority {} out of range", self.priority)))?;
        let version = self
            .version
            .map(|v| match u32::try_from(v) {
                Ok(v) if v > 0 => Ok(v),
                _ => Err(corrupt(&self.id, format!("version {v} out of range"))),
            })
            .transpose()?;
        let stalled_claims = u32::try_from(self.stalled_claims).map_err(|_| {
            corrupt(
                &self.id,
                format!("stalled_claims {} out of range", self.stalled_claims),
            )
        })?;
        let cancel = self
            .cancel
            .as_deref()
            .map(Cancel::from_str)
            .transpose()
            .map_err(|e| corrupt(&self.id, e.to_string()))?;
        let deadline = self
            .deadline
            .map(|ms| {
                Utc.timestamp_millis_opt(ms)
                    .single()
                    .ok_or_else(|| corrupt(&self.id, format!("deadline {ms} out of range")))
            })
            .transpose()?;
        let supersedes = self
            .supersedes
            .unwrap_or_default()
            .iter()
            .map(|j| JobId::from_str(j).map_err(|e| corrupt(&self.id, format!("supersedes: {e}"))))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Job {
            id,
            name: self.name,
            factory: self.factory,
            params: self.params,
            key: self.key,
            priority,
            state,
            owner,
            lease_expires_at: self.lease_expires_at.map(from_ms),
            token: FencingToken(token),
            attempts,
            outcome: self.outcome,
            version,
            stalled_claims,
            cancel,
            deadline,
            supersedes,
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
}

/// A deadline as the boards store it: milliseconds since the Unix epoch.
pub(crate) fn deadline_ms(deadline: Option<DateTime<Utc>>) -> Option<i64> {
    deadline.map(|d| d.timestamp_millis())
}

/// The statements on job rows that the protocols written once here (cancel requests,
/// supersede) need of a board's dialect, run in the caller's transaction.
pub(crate) trait JobRows: Send {
    /// Job `id`'s state and cancel request, if it exists, locked until the transaction ends
    /// where the database locks rows.
    fn cancel_of(
        &mut self,
        id: JobId,
    ) -> impl Future<Output = Result<Option<(String, Option<String>)>, board::Error>> + Send;

    /// The ids of the jobs of `key` that hold it (not ended), in posting order, locked like
    /// [`JobRows::cancel_of`].
    fn holding(
        &mut self,
        key: &str,
    ) -> impl Future<Output = Result<Vec<JobId>, board::Error>> + Send;

    /// Job `id` put back on the board, as [`JobBoard::requeue`](baton_core::JobBoard::requeue)
    /// puts it, with a request to revert its run if `revert`; answers it as it now is.
    fn reopen(
        &mut self,
        id: JobId,
        revert: bool,
    ) -> impl Future<Output = Result<Job, board::Error>> + Send;

    /// Job `id` with its request set to `how`; with `tell`, a wake-up for its owner goes with
    /// the transaction (where the board sends one). Answers it as it now is.
    fn set_cancel(
        &mut self,
        id: JobId,
        how: Cancel,
        tell: bool,
    ) -> impl Future<Output = Result<Job, board::Error>> + Send;

    /// Job `id` as it is.
    fn job(&mut self, id: JobId) -> impl Future<Output = Result<Job, board::Error>> + Send;
}

/// Asks `how` of job `id`, as [`JobBoard::request_cancel`](baton_core::JobBoard::request_cancel)
/// says ([`board::check_cancel`] decides). Answers the job as it now is, its state before, and
/// what was done to it.
pub(crate) async fn cancel<R: JobRows>(
    rows: &mut R,
    id: JobId,
    how: Cancel,
) -> Result<(Job, JobState, CancelStep), board::Error> {
    let (state, current) = rows
        .cancel_of(id)
        .await?
        .map_or((None, None), |(s, c)| (Some(s), c));
    let state = job_state(id, state)?;
    let current = current
        .as_deref()
        .map(Cancel::from_str)
        .transpose()
        .map_err(|e| corrupt(&id.to_string(), e.to_string()))?;
    let step = board::check_cancel(id, state, current, how)?;
    let job = match step {
        CancelStep::Reopen => rows.reopen(id, true).await?,
        CancelStep::Set(how) => rows.set_cancel(id, how, owner_told(state, step)).await?,
        _ => rows.job(id).await?,
    };
    Ok((job, state, step))
}

/// What a superseding post of a job of `key` does before the job is inserted: every job that
/// holds the key is asked to revert ([`cancel`]). Answers their ids, in posting order, and
/// whether an owner is to be told.
pub(crate) async fn supersede<R: JobRows>(
    rows: &mut R,
    key: &str,
) -> Result<(Vec<JobId>, bool), board::Error> {
    let earlier = rows.holding(key).await?;
    let mut told = false;
    for &id in &earlier {
        let (_, state, step) = cancel(rows, id, Cancel::Revert).await?;
        told |= owner_told(state, step);
    }
    Ok((earlier, told))
}

/// A job id read from a row.
pub(crate) fn job_id(text: &str) -> Result<JobId, board::Error> {
    JobId::from_str(text).map_err(|e| corrupt(text, e.to_string()))
}

/// A row of an owner's cancel requests (`id` and `cancel` text), checked.
pub(crate) fn cancel_request(id: &str, cancel: &str) -> Result<(JobId, Cancel), board::Error> {
    let how = Cancel::from_str(cancel).map_err(|e| corrupt(id, e.to_string()))?;
    Ok((job_id(id)?, how))
}

/// Whether what a cancel request did to a job in `state` is news for its owner: a request set
/// on a claimed job.
pub(crate) fn owner_told(state: JobState, step: CancelStep) -> bool {
    state == JobState::Claimed && matches!(step, CancelStep::Set(_))
}

/// Parking answers a request to suspend: the assignment a park makes to `cancel`.
pub(crate) const PARK_CANCEL: &str =
    "cancel = CASE WHEN cancel = 'SUSPEND' THEN NULL ELSE cancel END";

/// The token as the database stores it.
pub(crate) fn token_db(token: FencingToken) -> Result<i64, board::Error> {
    i64::try_from(token.0).map_err(|_| board::Error::ClaimLost {
        job: JobId::from_uuid(uuid::Uuid::nil()),
        token,
    })
}

/// The state in a job's row: `None` (no row) is [`board::Error::JobNotFound`], unreadable text
/// is [`board::Error::Corrupt`].
pub(crate) fn job_state(id: JobId, text: Option<String>) -> Result<JobState, board::Error> {
    text.ok_or(board::Error::JobNotFound(id))?
        .parse()
        .map_err(|e: baton_core::ParseStateError| corrupt(&id.to_string(), e.to_string()))
}

/// Whether an operator's release of a job in `state` has a claim to revoke; a finished job
/// cannot be released.
pub(crate) fn release_needed(id: JobId, state: JobState) -> Result<bool, board::Error> {
    if state.is_terminal() {
        return Err(board::Error::InvalidState {
            job: id,
            state,
            operation: "release",
        });
    }
    Ok(state == JobState::Claimed)
}

/// Checks a request to trash job `id`, whose row holds `state` and `token`: under a claim
/// (`fence`), the claim must be the job's current one; a completed job cannot be trashed.
pub(crate) fn check_trash(
    id: JobId,
    state: JobState,
    token: i64,
    fence: Option<Fence>,
) -> Result<(), board::Error> {
    if let Some(f) = fence {
        let current =
            f.job == id && state == JobState::Claimed && token_db(f.token).ok() == Some(token);
        if !current {
            return Err(board::Error::ClaimLost {
                job: f.job,
                token: f.token,
            });
        }
    }
    if state == JobState::Complete {
        return Err(board::Error::InvalidState {
            job: id,
            state,
            operation: "trash",
        });
    }
    Ok(())
}

/// Adds `query`'s filters to a listing of jobs (`SELECT ... FROM jobs WHERE true` so far),
/// then its position, order and limit: the same SQL for both databases. `owner` is
/// `query.owner` as the database stores it; `after` is the `seq` of `query.after` (looked up
/// by the caller, who refuses a cursor it does not find).
///
/// Jobs are listed in posting order, `seq`. Every filter has an index that leads with it and
/// ends with `seq` (`jobs_by_state`, `jobs_by_key`, `jobs_by_owner`), so a page is one range of
/// one index, whatever the table's size. The posting order is a column of its own, so a
/// listing of jobs kept in more than one table stays a merge of ranges in `seq`.
pub(crate) fn push_job_query<'a, DB, O>(
    q: &mut sqlx::QueryBuilder<'a, DB>,
    query: &board::JobQuery,
    owner: Option<O>,
    after: Option<i64>,
) where
    DB: sqlx::Database,
    O: sqlx::Encode<'a, DB> + sqlx::Type<DB> + 'a,
    String: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    i64: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
{
    if let Some(state) = query.state {
        q.push(" AND state = ").push_bind(state.as_str().to_owned());
    }
    if let Some(key) = &query.key {
        q.push(" AND job_key = ").push_bind(key.clone());
    }
    if let Some(owner) = owner {
        q.push(" AND owner = ").push_bind(owner);
    }
    if let Some(seq) = after {
        q.push(" AND seq > ").push_bind(seq);
    }
    q.push(" ORDER BY seq");
    if let Some(limit) = query.limit {
        q.push(" LIMIT ")
            .push_bind(i64::try_from(limit).unwrap_or(i64::MAX));
    }
}

/// The states of a job that holds its key, as SQL text: waiting, claimed or parked.
pub(crate) const HOLDS_KEY: &str = "('UNCLAIMED', 'CLAIMED', 'PARKED')";

/// The states of a run that has ended, as SQL text.
pub(crate) const RUN_ENDED: &str = "('SUCCESS', 'FAILURE', 'REVERTED')";

/// An offer as parallel lists of factory names and versions (one entry per pair), for claim
/// statements to join against.
pub(crate) fn offer_lists(offer: &Offer) -> (Vec<String>, Vec<i64>) {
    offer
        .pairs()
        .map(|(f, v)| (f.to_owned(), i64::from(v)))
        .unzip()
}

/// An offer as the JSON array of `[factory, version]` pairs the boards store and pass to
/// SQLite's `json_each`.
pub(crate) fn offer_json(offer: &Offer) -> Value {
    Value::Array(
        offer
            .pairs()
            .map(|(f, v)| Value::Array(vec![Value::from(f), Value::from(v)]))
            .collect(),
    )
}

/// An offer read back from its stored JSON (`None`: a conductor of an earlier release).
pub(crate) fn offer_from_json(
    conductor: &str,
    json: Option<&Value>,
) -> Result<Offer, board::Error> {
    let Some(json) = json else {
        return Ok(Offer::new());
    };
    let bad = || board::Error::Corrupt {
        job: format!("conductor {conductor}"),
        detail: format!("offer {json}"),
    };
    let pairs = json.as_array().ok_or_else(bad)?;
    let mut offer = Offer::new();
    for pair in pairs {
        let (Some(factory), Some(version)) = (
            pair.get(0).and_then(Value::as_str),
            pair.get(1)
                .and_then(Value::as_u64)
                .and_then(|v| u32::try_from(v).ok()),
        ) else {
            return Err(bad());
        };
        offer = offer.with(factory, version);
    }
    Ok(offer)
}
