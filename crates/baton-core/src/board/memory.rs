//! The in-memory job board: the reference implementation of [`JobBoard`].

use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap};
use std::ops::Bound::{Excluded, Unbounded};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;

use super::{
    Cancel, CancelStep, Claim, ConductorInfo, Error, Job, JobBoard, JobQuery, NewJob, Offer,
    Requeue, Result,
};
use crate::ids::{ConductorId, Fence, FencingToken, JobId};
use crate::state::JobState;
use crate::store::MemoryStore;

#[derive(Debug, Default)]
struct Inner {
    jobs: HashMap<JobId, Job>,
    order: Vec<JobId>,
    /// Each job's place in posting order (`order` shifts when jobs are purged).
    seqs: HashMap<JobId, u64>,
    next_seq: u64,
    /// The jobs that may be open (waiting, claimed or parked), in claim order: what claims
    /// look through, so that their cost does not grow with the jobs that ended. An entry is
    /// added when a job is posted or put back on the board, and dropped when a claim or a
    /// listing finds its job ended (or purged).
    open: BTreeSet<Open>,
    /// The same jobs in posting order, for listings; cleaned the same way.
    open_in_order: BTreeSet<(u64, JobId)>,
    /// The jobs of each key that may hold it, in posting order; cleaned the same way.
    keyed: HashMap<String, BTreeSet<(u64, JobId)>>,
    conductors: HashMap<ConductorId, ConductorInfo>,
}

/// An entry of [`Inner::open`]: a job's priority (highest first) and place in posting order.
type Open = (Reverse<i32>, u64, JobId);

impl Inner {
    /// Enters job `id` (posted or put back on the board) in the indexes of open jobs.
    fn track(&mut self, id: JobId) {
        let Some(job) = self.jobs.get(&id) else {
            return;
        };
        let seq = *self.seqs.entry(id).or_insert_with(|| {
            self.next_seq += 1;
            self.next_seq
        });
        self.open.insert((Reverse(job.priority), seq, id));
        self.open_in_order.insert((seq, id));
        if let Some(key) = &job.key {
            self.keyed.entry(key.clone()).or_default().insert((seq, id));
        }
    }

    /// The open jobs that `query` matches, in posting order, up to its limit; the ended ones
    /// met on the way are dropped from the index.
    fn open_jobs(&mut self, query: &JobQuery, after: Option<u64>) -> Vec<Job> {
        let limit = query.limit.unwrap_or(usize::MAX);
        let mut found = Vec::new();
        let mut ended = Vec::new();
        let from = after.map_or(Unbounded, |seq| {
            Excluded((seq, JobId::from_uuid(uuid::Uuid::max())))
        });
        for entry in self.open_in_order.range((from, Unbounded)) {
            if found.len() >= limit {
                break;
            }
            match self.jobs.get(&entry.1) {
                Some(j) if !j.state.is_terminal() => {
                    if query.matches(j) {
                        found.push(j.clone());
                    }
                }
                _ => ended.push(*entry),
            }
        }
        for entry in &ended {
            self.open_in_order.remove(entry);
        }
        found
    }

    /// The job that holds `key` (the earliest that has not ended), the ended ones met on the
    /// way dropped from the index.
    fn key_head(&mut self, key: &str) -> Option<JobId> {
        let entries = self.keyed.get_mut(key)?;
        while let Some(&(seq, id)) = entries.first() {
            if self.jobs.get(&id).is_some_and(|j| j.state.holds_key()) {
                return Some(id);
            }
            entries.remove(&(seq, id));
        }
        self.keyed.remove(key);
        None
    }
}

/// A [`JobBoard`] in process memory, fencing the flows of a [`MemoryStore`].
///
/// Clones share the same board.
#[derive(Debug, Clone)]
pub struct MemoryJobBoard {
    inner: Arc<Mutex<Inner>>,
    store: MemoryStore,
    wake: Arc<super::Wake>,
    /// Wakes owners waiting for cancel requests ([`JobBoard::wait_for_cancel`]).
    cancels: Arc<super::Wake>,
    /// Wakes those waiting for a job to end ([`JobBoard::wait_for_end`]).
    ends: Arc<super::Ends>,
}

fn lease_until(now: DateTime<Utc>, lease: Duration) -> DateTime<Utc> {
    crate::time::after(now, lease)
}

impl MemoryJobBoard {
    /// A board whose claims fence writes to `store`.
    #[must_use]
    pub fn new(store: &MemoryStore) -> Self {
        Self {
            inner: Arc::default(),
            store: store.clone(),
            wake: Arc::new(super::Wake::new()),
            cancels: Arc::new(super::Wake::new()),
            ends: Arc::new(super::Ends::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every mutation below checks first and then applies, so a panic elsewhere while the
        // lock was held cannot have left a half-made change.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Makes a claimed `job` `UNCLAIMED` and revokes its claim: the token moves on, so its
    /// owner can write nothing more, before anyone claims the job again.
    fn hand_back(&self, job: &mut Job) {
        job.state = JobState::Unclaimed;
        job.owner = None;
        job.lease_expires_at = None;
        job.token = FencingToken(job.token.0.saturating_add(1));
        job.updated_at = Utc::now();
        self.store.set_fence(job.id, job.token);
    }

    /// Puts `job` back on the board, `UNCLAIMED`, as [`JobBoard::requeue`] does (its claim,
    /// if any, revoked; its outcome cleared and its stall count reset), with a request to
    /// revert its run if `revert`.
    fn reopen(&self, job: &mut Job, revert: bool) {
        self.hand_back(job);
        job.outcome = None;
        job.stalled_claims = 0;
        if revert {
            job.cancel = Some(Cancel::Revert);
        }
        self.store.set_job_open(job.id, true);
    }

    /// Applies `step` (decided by [`super::check_cancel`]) to `job`; answers whether its owner
    /// is to be told (a request set on a claimed job).
    fn apply_cancel(&self, job: &mut Job, step: CancelStep) -> bool {
        match step {
            CancelStep::Keep => false,
            CancelStep::Set(how) => {
                job.cancel = Some(how);
                job.updated_at = Utc::now();
                job.state == JobState::Claimed
            }
            CancelStep::Reopen => {
                self.reopen(job, true);
                false
            }
        }
    }

    /// The job under `fence`, if the claim is current.
    fn claimed(inner: &mut Inner, fence: Fence) -> Result<&mut Job> {
        let job = inner
            .jobs
            .get_mut(&fence.job)
            .ok_or(Error::JobNotFound(fence.job))?;
        if job.state != JobState::Claimed || job.token != fence.token {
            return Err(Error::ClaimLost {
                job: fence.job,
                token: fence.token,
            });
        }
        Ok(job)
    }
}

#[async_trait]
impl JobBoard for MemoryJobBoard {
    async fn post(&self, new: NewJob) -> Result<Job> {
        new.check(self.store.max_value_bytes())?;
        let now = Utc::now();
        let mut job = Job {
            id: JobId::new(),
            name: new.name,
            factory: new.factory,
            params: new.params,
            key: new.key,
            priority: new.priority,
            state: JobState::Unclaimed,
            owner: None,
            lease_expires_at: None,
            token: FencingToken(0),
            attempts: 0,
            outcome: None,
            version: new.version,
            stalled_claims: 0,
            cancel: None,
            // Kept to the millisecond, as the SQL boards keep it.
            deadline: new
                .deadline
                .map(|d| chrono::SubsecRound::trunc_subsecs(d, 3)),
            supersedes: Vec::new(),
            created_at: now,
            updated_at: now,
        };
        let told = {
            let mut inner = self.lock();
            let mut told = false;
            if new.supersede {
                // Every step is decided before any is applied: a refusal changes nothing.
                let holding: Vec<JobId> = job
                    .key
                    .as_ref()
                    .and_then(|k| inner.keyed.get(k))
                    .map(|e| e.iter().map(|(_, id)| *id).collect())
                    .unwrap_or_default();
                let steps = holding
                    .iter()
                    .filter_map(|id| inner.jobs.get(id))
                    .filter(|j| j.key == job.key && j.state.holds_key())
                    .map(|j| {
                        Ok((
                            j.id,
                            super::check_cancel(j.id, j.state, j.cancel, Cancel::Revert)?,
                        ))
                    })
                    .collect::<Result<Vec<_>>>()?;
                for (id, step) in steps {
                    if let Some(earlier) = inner.jobs.get_mut(&id) {
                        told |= self.apply_cancel(earlier, step);
                        job.supersedes.push(id);
                    }
                }
            }
            inner.order.push(job.id);
            inner.jobs.insert(job.id, job.clone());
            inner.track(job.id);
            told
        };
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
    ) -> Result<Option<Claim>> {
        let now = Utc::now();
        let mut inner = self.lock();
        let inner = &mut *inner;
        let live = |j: &Job| j.lease_expires_at.is_some_and(|t| t > now);
        // Along the open jobs in claim order: the first that may run is the one. Ended jobs
        // met on the way leave the index; the earliest unfinished job of each key is the only
        // one of its key that may run.
        let mut ended = Vec::new();
        let mut best = None;
        let mut next = inner.open.first().copied();
        while let Some(entry) = next {
            next = inner
                .open
                .range((Excluded(entry), Unbounded))
                .next()
                .copied();
            let id = entry.2;
            let Some(j) = inner.jobs.get(&id) else {
                ended.push(entry);
                continue;
            };
            let eligible = match j.state {
                JobState::Unclaimed => true,
                JobState::Claimed => !live(j),
                JobState::Parked => false,
                JobState::Complete | JobState::Trashed => {
                    ended.push(entry);
                    false
                }
            };
            if !eligible || !offer.covers(j) {
                continue;
            }
            if let Some(key) = j.key.clone() {
                if inner.key_head(&key) != Some(id) {
                    continue;
                }
            }
            best = Some(id);
            break;
        }
        for entry in &ended {
            inner.open.remove(entry);
        }
        let Some(id) = best else {
            return Ok(None);
        };
        let Some(job) = inner.jobs.get_mut(&id) else {
            return Ok(None);
        };
        job.version = offer.pin(job);
        job.state = JobState::Claimed;
        job.owner = Some(owner);
        job.token = FencingToken(job.token.0 + 1);
        job.attempts = job.attempts.saturating_add(1);
        job.stalled_claims = job.stalled_claims.saturating_add(1);
        let expires = lease_until(now, lease);
        job.lease_expires_at = Some(expires);
        job.updated_at = now;
        let claim = Claim {
            job: job.clone(),
            fence: Fence {
                job: id,
                token: job.token,
            },
            lease_expires_at: expires,
        };
        // Under the board's lock: from here on only the new token can write the job's flow.
        self.store.set_fence(id, claim.fence.token);
        self.store.set_job_open(id, true);
        Ok(Some(claim))
    }

    async fn heartbeat(
        &self,
        fence: Fence,
        lease: Duration,
        progressed: bool,
    ) -> Result<DateTime<Utc>> {
        let now = Utc::now();
        let mut inner = self.lock();
        let job = Self::claimed(&mut inner, fence)?;
        let expires = lease_until(now, lease);
        job.lease_expires_at = Some(expires);
        job.updated_at = now;
        if progressed {
            job.stalled_claims = 0;
        }
        Ok(expires)
    }

    async fn consume(&self, fence: Fence, outcome: Value) -> Result<()> {
        let mut inner = self.lock();
        let job = Self::claimed(&mut inner, fence)?;
        job.state = JobState::Complete;
        job.owner = None;
        job.lease_expires_at = None;
        job.outcome = Some(outcome);
        job.updated_at = Utc::now();
        self.store.set_job_open(fence.job, false);
        drop(inner);
        // A job waiting on the same key may now run.
        self.wake.wake();
        self.ends.ended(fence.job);
        Ok(())
    }

    async fn abandon(&self, fence: Fence) -> Result<()> {
        {
            let mut inner = self.lock();
            let job = Self::claimed(&mut inner, fence)?;
            job.stalled_claims = 0;
            self.hand_back(job);
        }
        self.wake.wake();
        Ok(())
    }

    async fn park(&self, fence: Fence, reason: Value) -> Result<()> {
        let mut inner = self.lock();
        let job = Self::claimed(&mut inner, fence)?;
        job.state = JobState::Parked;
        job.owner = None;
        job.lease_expires_at = None;
        job.token = FencingToken(job.token.0 + 1);
        job.outcome = Some(reason);
        // Parking answers a request to suspend.
        if job.cancel == Some(Cancel::Suspend) {
            job.cancel = None;
        }
        job.updated_at = Utc::now();
        self.store.set_fence(fence.job, job.token);
        drop(inner);
        self.ends.ended(fence.job);
        Ok(())
    }

    async fn requeue(&self, id: JobId, how: Requeue) -> Result<Job> {
        let now = Utc::now();
        let job = {
            let mut inner = self.lock();
            let job = inner.jobs.get_mut(&id).ok_or(Error::JobNotFound(id))?;
            super::check_requeue(
                id,
                job.state,
                job.lease_expires_at.is_some_and(|t| t > now),
                self.store.run_unfinished(job.flow()),
                how,
            )?;
            // Whatever claim there was is revoked: whoever claims the job next does so under a
            // token no earlier owner holds.
            self.reopen(job, how.revert);
            let job = job.clone();
            inner.track(id);
            job
        };
        self.wake.wake();
        Ok(job)
    }

    async fn request_cancel(&self, id: JobId, how: Cancel) -> Result<Job> {
        let (job, step) = {
            let mut inner = self.lock();
            let job = inner.jobs.get_mut(&id).ok_or(Error::JobNotFound(id))?;
            let step = super::check_cancel(id, job.state, job.cancel, how)?;
            if self.apply_cancel(job, step) {
                self.cancels.wake();
            }
            let job = job.clone();
            inner.track(id);
            (job, step)
        };
        if step == CancelStep::Reopen {
            self.wake.wake();
        }
        Ok(job)
    }

    async fn cancel_requests(&self, owner: ConductorId) -> Result<Vec<(JobId, Cancel)>> {
        let mut inner = self.lock();
        Ok(inner
            .open_jobs(&JobQuery::all().state(JobState::Claimed).owner(owner), None)
            .into_iter()
            .filter_map(|j| Some((j.id, j.cancel?)))
            .collect())
    }

    async fn wait_for_cancel(&self, _owner: ConductorId, timeout: Duration) {
        self.cancels.wait(timeout).await;
    }

    async fn wait_for_end(&self, job: JobId, timeout: Duration) -> Result<Job> {
        self.ends.wait_for_end(job, timeout, |j| self.get(j)).await
    }

    async fn release(&self, id: JobId) -> Result<()> {
        {
            let mut inner = self.lock();
            let job = inner.jobs.get_mut(&id).ok_or(Error::JobNotFound(id))?;
            if job.state.is_terminal() {
                return Err(Error::InvalidState {
                    job: id,
                    state: job.state,
                    operation: "release",
                });
            }
            if job.state != JobState::Claimed {
                return Ok(());
            }
            self.hand_back(job);
        }
        self.wake.wake();
        Ok(())
    }

    async fn trash(&self, id: JobId, fence: Option<Fence>, reason: Value) -> Result<()> {
        let mut inner = self.lock();
        let job = match fence {
            Some(f) if f.job == id => Self::claimed(&mut inner, f)?,
            Some(f) => {
                return Err(Error::ClaimLost {
                    job: f.job,
                    token: f.token,
                })
            }
            None => inner.jobs.get_mut(&id).ok_or(Error::JobNotFound(id))?,
        };
        if job.state == JobState::Complete {
            return Err(Error::InvalidState {
                job: id,
                state: job.state,
                operation: "trash",
            });
        }
        job.state = JobState::Trashed;
        job.owner = None;
        job.lease_expires_at = None;
        // Revoke any claim: its owner can no longer write the flow.
        job.token = FencingToken(job.token.0 + 1);
        job.outcome = Some(reason);
        job.updated_at = Utc::now();
        self.store.set_fence(id, job.token);
        self.store.set_job_open(id, false);
        drop(inner);
        self.wake.wake();
        self.ends.ended(id);
        Ok(())
    }

    async fn get(&self, id: JobId) -> Result<Job> {
        self.lock()
            .jobs
            .get(&id)
            .cloned()
            .ok_or(Error::JobNotFound(id))
    }

    async fn list(&self, query: &JobQuery) -> Result<Vec<Job>> {
        let mut inner = self.lock();
        // A page after a job: the jobs posted after it (posting order is the listing's).
        let after = match query.after {
            Some(after) => Some(*inner.seqs.get(&after).ok_or(Error::UnknownCursor(after))?),
            None => None,
        };
        // Jobs of an unfinished state are found among the open ones, whatever ended.
        if query.state.is_some_and(|s| !s.is_terminal()) {
            return Ok(inner.open_jobs(query, after));
        }
        let seqs = &inner.seqs;
        Ok(inner
            .order
            .iter()
            .filter(|id| after.is_none_or(|a| seqs.get(*id).is_some_and(|s| *s > a)))
            .filter_map(|id| inner.jobs.get(id))
            .filter(|j| query.matches(j))
            .take(query.limit.unwrap_or(usize::MAX))
            .cloned()
            .collect())
    }

    async fn purge_jobs(&self, ended_before: DateTime<Utc>, limit: u32) -> Result<u64> {
        let mut inner = self.lock();
        let inner = &mut *inner;
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        let mut purged = Vec::new();
        let jobs = &mut inner.jobs;
        let store = &self.store;
        inner.order.retain(|id| {
            // A job whose run is unfinished stays: it is what an operator recovers the run
            // with.
            let ended = jobs.get(id).is_some_and(|j| {
                j.state.is_terminal()
                    && j.updated_at < ended_before
                    && !store.run_unfinished(j.flow())
            });
            if purged.len() < limit && ended {
                jobs.remove(id);
                purged.push(*id);
                return false;
            }
            true
        });
        for id in &purged {
            self.store.forget_fence(*id);
            inner.seqs.remove(id);
        }
        Ok(purged.len() as u64)
    }

    async fn wait_for_work(&self, timeout: Duration) {
        self.wake.wait(timeout).await;
    }

    async fn register(&self, info: &ConductorInfo) -> Result<()> {
        self.lock().conductors.insert(info.id, info.clone());
        Ok(())
    }

    async fn deregister(&self, id: ConductorId) -> Result<()> {
        self.lock().conductors.remove(&id);
        Ok(())
    }

    async fn conductors(&self) -> Result<Vec<ConductorInfo>> {
        let horizon = Utc::now()
            - chrono::Duration::from_std(super::CONDUCTOR_UNSEEN_LIMIT)
                .unwrap_or_else(|_| chrono::Duration::zero());
        let mut inner = self.lock();
        inner.conductors.retain(|_, c| c.last_seen >= horizon);
        let mut all: Vec<ConductorInfo> = inner.conductors.values().cloned().collect();
        drop(inner);
        all.sort_by_key(|c| c.started_at);
        Ok(all)
    }
}
