//! [`CrashStore`]: a store wrapper that kills the engine at its k-th write.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;

use crate::ids::{Fence, FlowId};
use crate::model::{AtomRecord, Batch, FlowRecord, FlowSnapshot, Transition};
use crate::store::{Error, FlowQuery, Result, Store};

/// When a [`CrashStore`] kills the engine at its k-th write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CrashMode {
    /// The k-th write is not applied: the process died before it reached the store.
    BeforeWrite,
    /// The k-th write is applied, then the engine dies before it can act on it (the answer
    /// was lost on the way back).
    AfterWrite,
}

impl CrashMode {
    /// Both modes, in the order a [`CrashTest`](super::CrashTest) tries them.
    pub const ALL: [CrashMode; 2] = [CrashMode::BeforeWrite, CrashMode::AfterWrite];
}

/// The error a [`CrashStore`] answers with.
#[derive(Debug)]
struct Injected;

impl std::fmt::Display for Injected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("injected crash")
    }
}

impl std::error::Error for Injected {}

fn injected_crash() -> Error {
    Error::Backend(Box::new(Injected))
}

/// A store wrapper that fails its k-th write (a flow's creation or a batch) with an error
/// that is not transient, so the engine stops dead there as if its process had died, and
/// fails every later write too: a dead engine writes nothing more. Reads pass through.
///
/// The error is an [`Error::Backend`] unless [`CrashStore::failing_with`] chooses another.
/// Clones share the count of writes.
#[derive(Debug, Clone)]
pub struct CrashStore<S> {
    inner: S,
    crash_at: u64,
    mode: CrashMode,
    writes: Arc<AtomicU64>,
    error: fn() -> Error,
}

impl<S: Store> CrashStore<S> {
    /// Crashes at write number `crash_at` (from 1), as `mode` says.
    pub fn new(inner: S, crash_at: u64, mode: CrashMode) -> Self {
        Self {
            inner,
            crash_at,
            mode,
            writes: Arc::new(AtomicU64::new(0)),
            error: injected_crash,
        }
    }

    /// Fails with the error `error` makes instead (say, [`Error::CorruptDatabase`]: a
    /// database found damaged at that write).
    #[must_use]
    pub fn failing_with(mut self, error: fn() -> Error) -> Self {
        self.error = error;
        self
    }

    /// A wrapper that never crashes, and counts writes.
    pub fn counting(inner: S) -> Self {
        Self::new(inner, u64::MAX, CrashMode::BeforeWrite)
    }

    /// How many writes were attempted.
    #[must_use]
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::SeqCst)
    }

    /// Whether the crash happened.
    #[must_use]
    pub fn crashed(&self) -> bool {
        self.writes() >= self.crash_at
    }

    async fn write<F>(&self, f: F) -> Result<()>
    where
        F: std::future::Future<Output = Result<()>>,
    {
        let n = self.writes.fetch_add(1, Ordering::SeqCst) + 1;
        if n < self.crash_at {
            return f.await;
        }
        if n == self.crash_at && self.mode == CrashMode::AfterWrite {
            f.await?;
        }
        Err((self.error)())
    }
}

#[async_trait]
impl<S: Store> Store for CrashStore<S> {
    async fn create_flow(
        &self,
        flow: &FlowRecord,
        atoms: &[AtomRecord],
        fence: Option<Fence>,
    ) -> Result<()> {
        self.write(self.inner.create_flow(flow, atoms, fence)).await
    }

    async fn load_flow(&self, id: FlowId) -> Result<FlowSnapshot> {
        self.inner.load_flow(id).await
    }

    async fn load_run(&self, id: FlowId) -> Result<FlowSnapshot> {
        self.inner.load_run(id).await
    }

    async fn commit(&self, batch: &Batch) -> Result<()> {
        self.write(self.inner.commit(batch)).await
    }

    async fn history(&self, id: FlowId) -> Result<Vec<Transition>> {
        self.inner.history(id).await
    }

    async fn list_flows(&self, query: &FlowQuery) -> Result<Vec<FlowRecord>> {
        self.inner.list_flows(query).await
    }

    async fn head(&self, id: FlowId) -> Result<crate::store::Head> {
        self.inner.head(id).await
    }

    async fn count_runs(&self) -> Result<crate::store::RunCounts> {
        self.inner.count_runs().await
    }

    async fn purge_flows(
        &self,
        ended_before: chrono::DateTime<chrono::Utc>,
        limit: u32,
    ) -> Result<u64> {
        self.inner.purge_flows(ended_before, limit).await
    }

    async fn create_and_commit(
        &self,
        flow: &FlowRecord,
        atoms: &[AtomRecord],
        fence: Option<Fence>,
        first: &Batch,
    ) -> Result<()> {
        self.write(self.inner.create_and_commit(flow, atoms, fence, first))
            .await
    }

    fn consumes_jobs(&self) -> bool {
        self.inner.consumes_jobs()
    }

    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
}
