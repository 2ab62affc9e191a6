//! A job-board wrapper that fails chosen operations on command.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use baton_core::board::{
    Cancel, Claim, ConductorInfo, Error, Job, JobBoard, JobQuery, NewJob, Offer, Requeue, Result,
};
use baton_core::{ConductorId, Fence, JobId};
use chrono::{DateTime, Utc};
use serde_json::Value;

/// The operations a [`FaultyBoard`] fails on command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BoardOp {
    /// [`JobBoard::claim`] and [`JobBoard::claim_up_to`].
    Claim,
    /// [`JobBoard::heartbeat`]: a claim's lease.
    Heartbeat,
    /// [`JobBoard::register`]: a conductor's own heartbeat.
    Register,
    /// [`JobBoard::list`].
    List,
}

/// What a faulty operation does.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// Answers the error the function makes.
    Fail(fn() -> Error),
    /// Never answers (until healed): a connection that stopped carrying packets.
    Hang,
}

/// The faulty operations, each with its fault.
type Faults = Vec<(BoardOp, Fault)>;

/// A job board that passes everything to the board it wraps, except the operations a test
/// tells it to fail ([`FaultyBoard::fail`]): those answer the error the test's function makes,
/// until the test calls [`FaultyBoard::heal`].
#[derive(Debug, Clone)]
pub struct FaultyBoard<B> {
    inner: B,
    faults: Arc<Mutex<Faults>>,
    failed: Arc<AtomicU64>,
}

impl<B: JobBoard> FaultyBoard<B> {
    /// A wrapper of `inner` that fails nothing yet.
    pub fn new(inner: B) -> Self {
        Self {
            inner,
            faults: Arc::default(),
            failed: Arc::default(),
        }
    }

    /// From now on, every call of `op` fails with what `error` makes.
    pub fn fail(&self, op: BoardOp, error: fn() -> Error) {
        let mut faults = self.faults();
        faults.retain(|(o, _)| *o != op);
        faults.push((op, Fault::Fail(error)));
    }

    /// From now on, every call of `op` hangs, without an answer, until [`FaultyBoard::heal`]
    /// (then it goes through).
    pub fn hang(&self, op: BoardOp) {
        let mut faults = self.faults();
        faults.retain(|(o, _)| *o != op);
        faults.push((op, Fault::Hang));
    }

    /// From now on, nothing fails.
    pub fn heal(&self) {
        self.faults().clear();
    }

    /// How many calls it failed.
    #[must_use]
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::SeqCst)
    }

    fn faults(&self) -> std::sync::MutexGuard<'_, Faults> {
        self.faults.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The error to answer a call of `op` with, if `op` is failing; waits while it hangs.
    async fn fault(&self, op: BoardOp) -> Result<()> {
        let mut counted = false;
        loop {
            let fault = self
                .faults()
                .iter()
                .find(|(o, _)| *o == op)
                .map(|(_, f)| *f);
            match fault {
                Some(Fault::Fail(error)) => {
                    self.failed.fetch_add(1, Ordering::SeqCst);
                    return Err(error());
                }
                Some(Fault::Hang) => {
                    if !counted {
                        counted = true;
                        self.failed.fetch_add(1, Ordering::SeqCst);
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                None => return Ok(()),
            }
        }
    }
}

#[async_trait]
impl<B: JobBoard> JobBoard for FaultyBoard<B> {
    async fn post(&self, job: NewJob) -> Result<Job> {
        self.inner.post(job).await
    }

    async fn claim(
        &self,
        owner: ConductorId,
        lease: Duration,
        offer: &Offer,
    ) -> Result<Option<Claim>> {
        self.fault(BoardOp::Claim).await?;
        self.inner.claim(owner, lease, offer).await
    }

    async fn claim_up_to(
        &self,
        owner: ConductorId,
        lease: Duration,
        max: usize,
        offer: &Offer,
    ) -> Result<Vec<Claim>> {
        self.fault(BoardOp::Claim).await?;
        self.inner.claim_up_to(owner, lease, max, offer).await
    }

    async fn heartbeat(
        &self,
        fence: Fence,
        lease: Duration,
        progressed: bool,
    ) -> Result<DateTime<Utc>> {
        self.fault(BoardOp::Heartbeat).await?;
        self.inner.heartbeat(fence, lease, progressed).await
    }

    async fn park(&self, fence: Fence, reason: Value) -> Result<()> {
        self.inner.park(fence, reason).await
    }

    async fn requeue(&self, job: JobId, how: Requeue) -> Result<Job> {
        self.inner.requeue(job, how).await
    }

    async fn consume(&self, fence: Fence, outcome: Value) -> Result<()> {
        self.inner.consume(fence, outcome).await
    }

    async fn abandon(&self, fence: Fence) -> Result<()> {
        self.inner.abandon(fence).await
    }

    async fn request_cancel(&self, job: JobId, how: Cancel) -> Result<Job> {
        self.inner.request_cancel(job, how).await
    }

    async fn cancel_requests(&self, owner: ConductorId) -> Result<Vec<(JobId, Cancel)>> {
        self.inner.cancel_requests(owner).await
    }

    async fn wait_for_cancel(&self, owner: ConductorId, timeout: Duration) {
        self.inner.wait_for_cancel(owner, timeout).await;
    }

    async fn wait_for_end(&self, job: JobId, timeout: Duration) -> Result<Job> {
        self.inner.wait_for_end(job, timeout).await
    }

    async fn release(&self, job: JobId) -> Result<()> {
        self.inner.release(job).await
    }

    async fn trash(&self, job: JobId, fence: Option<Fence>, reason: Value) -> Result<()> {
        self.inner.trash(job, fence, reason).await
    }

    async fn get(&self, job: JobId) -> Result<Job> {
        self.inner.get(job).await
    }

    async fn list(&self, query: &JobQuery) -> Result<Vec<Job>> {
        self.fault(BoardOp::List).await?;
        self.inner.list(query).await
    }

    async fn purge_jobs(&self, ended_before: DateTime<Utc>, limit: u32) -> Result<u64> {
        self.inner.purge_jobs(ended_before, limit).await
    }

    async fn wait_for_work(&self, timeout: Duration) {
        self.inner.wait_for_work(timeout).await;
    }

    async fn flush_wake_ups(&self) {
        self.inner.flush_wake_ups().await;
    }

    async fn register(&self, info: &ConductorInfo) -> Result<()> {
        self.fault(BoardOp::Register).await?;
        self.inner.register(info).await
    }

    async fn deregister(&self, id: ConductorId) -> Result<()> {
        self.inner.deregister(id).await
    }

    async fn conductors(&self) -> Result<Vec<ConductorInfo>> {
        self.inner.conductors().await
    }
}
