use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use baton_core::model::{AtomRecord, Batch, FlowRecord, FlowSnapshot, Transition};
use baton_core::store::{Error, FlowQuery, Result, Store};
use baton_core::{Fence, FlowId};

/// The error a [`FlakyStore`] answers with.
#[derive(Debug)]
struct Injected(&'static str);

impl std::fmt::Display for Injected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for Injected {}

/// A store wrapper that is unavailable for some commits (batches, and creations with a first
/// batch): it answers [`Error::Unavailable`] as its schedule says, for a commit it did not
/// apply or, as when a connection is lost after the commit reached the database, for one it
/// applied.
#[derive(Debug, Clone)]
pub struct FlakyStore<S> {
    inner: S,
    schedule: Schedule,
    commits: Arc<AtomicU64>,
    failures: Arc<AtomicU64>,
}

/// When a [`FlakyStore`] fails a commit.
#[derive(Debug, Clone, Copy)]
enum Schedule {
    /// Every n-th commit, half the time after applying it.
    Every(u64),
    /// The first commit that ends a run, after applying it.
    TheEnd,
}

impl<S: Store> FlakyStore<S> {
    /// Fails every `every`-th commit (at least every 2nd), every other time after applying it.
    pub fn new(inner: S, every: u64) -> Self {
        Self::with(inner, Schedule::Every(every.max(2)))
    }

    /// Loses the answer to the write that ends a run: the first commit that moves its flow to
    /// an ended state is applied, then answered with [`Error::Unavailable`]. Every other
    /// commit, and every later one, passes through.
    pub fn losing_the_end(inner: S) -> Self {
        Self::with(inner, Schedule::TheEnd)
    }

    fn with(inner: S, schedule: Schedule) -> Self {
        Self {
            inner,
            schedule,
            commits: Arc::new(AtomicU64::new(0)),
            failures: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Runs `batch`'s commit, or fails it as the schedule says.
    async fn flaky<F>(&self, batch: &Batch, commit: F) -> Result<()>
    where
        F: std::future::Future<Output = Result<()>>,
    {
        let n = self.commits.fetch_add(1, Ordering::SeqCst) + 1;
        let applied_first = match self.schedule {
            Schedule::Every(every) if n.is_multiple_of(every) => {
                self.failures.fetch_add(1, Ordering::SeqCst) % 2 == 1
            }
            Schedule::Every(_) => return commit.await,
            Schedule::TheEnd => {
                let ends = batch.writes.iter().any(
                    |w| matches!(w, baton_core::model::Write::Flow { to, .. } if to.is_terminal()),
                );
                commit.await?;
                let first = ends
                    && self
                        .failures
                        .compare_exchange(0, 1, Ordering::SeqCst, Ordering::SeqCst)
                        .is_ok();
                if first {
                    return Err(Error::Unavailable(Box::new(Injected(
                        "injected lost answer",
                    ))));
                }
                return Ok(());
            }
        };
        if applied_first {
            commit.await?;
        }
        Err(Error::Unavailable(Box::new(Injected("injected outage"))))
    }

    /// How many commits it failed.
    #[must_use]
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl<S: Store> Store for FlakyStore<S> {
    async fn create_flow(
        &self,
        flow: &FlowRecord,
        atoms: &[AtomRecord],
        fence: Option<Fence>,
    ) -> Result<()> {
        self.inner.create_flow(flow, atoms, fence).await
    }

    async fn load_flow(&self, id: FlowId) -> Result<FlowSnapshot> {
        self.inner.load_flow(id).await
    }

    async fn load_run(&self, id: FlowId) -> Result<FlowSnapshot> {
        self.inner.load_run(id).await
    }

    async fn commit(&self, batch: &Batch) -> Result<()> {
        self.flaky(batch, self.inner.commit(batch)).await
    }

    async fn create_and_commit(
        &self,
        flow: &FlowRecord,
        atoms: &[AtomRecord],
        fence: Option<Fence>,
        first: &Batch,
    ) -> Result<()> {
        self.flaky(
            first,
            self.inner.create_and_commit(flow, atoms, fence, first),
        )
        .await
    }

    fn consumes_jobs(&self) -> bool {
        self.inner.consumes_jobs()
    }

    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    async fn history(&self, id: FlowId) -> Result<Vec<Transition>> {
        self.inner.history(id).await
    }

    async fn list_flows(&self, query: &FlowQuery) -> Result<Vec<FlowRecord>> {
        self.inner.list_flows(query).await
    }

    async fn head(&self, id: FlowId) -> Result<baton_core::store::Head> {
        self.inner.head(id).await
    }

    async fn count_runs(&self) -> Result<baton_core::store::RunCounts> {
        self.inner.count_runs().await
    }

    async fn purge_flows(
        &self,
        ended_before: chrono::DateTime<chrono::Utc>,
        limit: u32,
    ) -> Result<u64> {
        self.inner.purge_flows(ended_before, limit).await
    }
}
