//! Wake-ups for boards whose news travels inside one process: new work ([`Wake`]), and the
//! ends of the jobs someone waits for ([`Ends`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;

use crate::ids::JobId;

/// What a board signals when new work may be available, and what
/// [`JobBoard::wait_for_work`](super::JobBoard::wait_for_work) waits on, for boards whose
/// news travels inside one process ([`MemoryJobBoard`](super::MemoryJobBoard), the SQLite
/// board).
///
/// A wake-up reaches every caller waiting at that moment; one that comes while nobody waits
/// is kept, and the next wait returns at once. A conductor is not always waiting (it may be
/// claiming, or starting a job, when a job is posted), and without that a job posted in such
/// a moment would wait for the conductor's next poll.
#[derive(Debug, Default)]
pub struct Wake {
    notify: Notify,
    /// Callers registered with `notify` and not yet back.
    waiting: AtomicUsize,
}

impl Wake {
    /// A wake-up source nobody waits on yet.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Wakes every caller of [`Wake::wait`] waiting now, or, if none is, the next one.
    pub fn wake(&self) {
        if self.waiting.load(Ordering::SeqCst) == 0 {
            // Wakes a waiter that registered but is not counted yet, or keeps the wake-up
            // for the next one.
            self.notify.notify_one();
        } else {
            self.notify.notify_waiters();
        }
    }

    /// Wakes every caller of [`Wake::wait`] waiting now, and keeps nothing for a later one:
    /// for a caller that learnt the news itself and passes it on to the others waiting.
    pub fn wake_waiting(&self) {
        self.notify.notify_waiters();
    }

    /// Drops the wake-up kept for the next wait, if one is (see [`Wake::wake`]): for a
    /// caller about to look for what it would announce.
    pub fn forget(&self) {
        let _ = futures::FutureExt::now_or_never(self.notify.notified());
    }

    /// Returns when woken (or at once if a wake-up was kept), or after `timeout`.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn wait(&self, timeout: Duration) {
        let notified = self.notify.notified();
        let mut notified = std::pin::pin!(notified);
        // Registered before counted: a wake-up that sees the count finds it registered.
        notified.as_mut().enable();
        self.waiting.fetch_add(1, Ordering::SeqCst);
        struct Back<'a>(&'a AtomicUsize);
        impl Drop for Back<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        let _back = Back(&self.waiting);
        let _ = tokio::time::timeout(timeout, notified).await;
    }
}

/// Who waits for which job to end, in one process: what
/// [`JobBoard::wait_for_end`](super::JobBoard::wait_for_end) waits on, and what a board (or a
/// store that ends jobs in its last step) tells when a job ends: consumed, parked or trashed.
///
/// A caller registers before it looks at the job ([`Ends::watch`]), then looks, then waits
/// ([`EndWatch::wait`]): an end told at any time after the registration wakes it, also one
/// told between the look and the wait, so a job that ends in that moment is not missed. Ends
/// of jobs nobody watches cost a look-up in an empty map. Only the callers watching a job
/// are woken by its end, not every waiter of the board.
#[derive(Debug, Default)]
pub struct Ends {
    watched: Mutex<HashMap<JobId, Watched>>,
}

#[derive(Debug)]
struct Watched {
    entry: Arc<EndEntry>,
    /// The [`EndWatch`]es alive for the job.
    watchers: usize,
}

#[derive(Debug, Default)]
struct EndEntry {
    /// How many ends were told while someone watched.
    told: AtomicU64,
    notify: Notify,
}

impl Ends {
    /// Nobody watches any job yet.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    fn map(&self) -> MutexGuard<'_, HashMap<JobId, Watched>> {
        // Every change under the lock is one insert, removal or count: a poisoned map is whole.
        self.watched.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Tells those watching `job` that it ended (or was parked).
    pub fn ended(&self, job: JobId) {
        let map = self.map();
        if let Some(w) = map.get(&job) {
            w.entry.told.fetch_add(1, Ordering::SeqCst);
            w.entry.notify.notify_waiters();
        }
    }

    /// Starts watching `job`: an end told from now on wakes [`EndWatch::wait`]. Register
    /// before looking at the job's state.
    pub fn watch(&self, job: JobId) -> EndWatch<'_> {
        let mut map = self.map();
        let w = map.entry(job).or_insert_with(|| Watched {
            entry: Arc::default(),
            watchers: 0,
        });
        w.watchers += 1;
        let entry = Arc::clone(&w.entry);
        let seen = entry.told.load(Ordering::SeqCst);
        EndWatch {
            ends: self,
            job,
            entry,
            seen,
        }
    }

    /// Registers `job`, looks at it with `look`, and if it is not at rest
    /// ([`JobState::is_at_rest`](crate::JobState::is_at_rest)), waits until its end is told
    /// or `timeout` passes, then looks again: how a board whose news of ends travels inside
    /// the process ([`MemoryJobBoard`](super::MemoryJobBoard), the SQLite board) waits.
    ///
    /// # Errors
    /// What `look` answers.
    ///
    /// # Cancel safety
    /// Cancel safe if `look` is.
    pub async fn wait_for_end<F, Fut>(
        &self,
        job: JobId,
        timeout: Duration,
        look: F,
    ) -> super::Result<super::Job>
    where
        F: Fn(JobId) -> Fut,
        Fut: std::future::Future<Output = super::Result<super::Job>>,
    {
        let watch = self.watch(job);
        let now = look(job).await?;
        if now.state.is_at_rest() {
            return Ok(now);
        }
        watch.wait(timeout).await;
        drop(watch);
        look(job).await
    }
}

/// A caller watching one job's end, from [`Ends::watch`]; it stops watching when dropped.
#[derive(Debug)]
pub struct EndWatch<'a> {
    ends: &'a Ends,
    job: JobId,
    entry: Arc<EndEntry>,
    /// Ends told before the watch began.
    seen: u64,
}

impl EndWatch<'_> {
    /// The job watched.
    #[must_use]
    pub fn job(&self) -> JobId {
        self.job
    }

    /// Whether an end was told since the watch began.
    #[must_use]
    pub fn told(&self) -> bool {
        self.entry.told.load(Ordering::SeqCst) != self.seen
    }

    /// Returns once an end of the job has been told since the watch began (at once if one
    /// has), or after `timeout`.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn wait(&self, timeout: Duration) {
        let deadline = tokio::time::Instant::now().checked_add(timeout);
        loop {
            let notified = self.entry.notify.notified();
            let mut notified = std::pin::pin!(notified);
            // Registered before the count is read: an end told after the read wakes it.
            notified.as_mut().enable();
            if self.told() {
                return;
            }
            match deadline {
                Some(at) => {
                    if tokio::time::timeout_at(at, notified).await.is_err() {
                        return;
                    }
                }
                // A timeout too long for the clock: only an end ends the wait.
                None => notified.await,
            }
        }
    }
}

impl Drop for EndWatch<'_> {
    fn drop(&mut self) {
        let mut map = self.ends.map();
        if let Some(w) = map.get_mut(&self.job) {
            w.watchers = w.watchers.saturating_sub(1);
            if w.watchers == 0 {
                map.remove(&self.job);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Instant;

    #[tokio::test]
    async fn a_wake_up_with_nobody_waiting_is_kept_for_the_next_wait() {
        let wake = Wake::new();
        wake.wake();
        let started = Instant::now();
        wake.wait(Duration::from_secs(10)).await;
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn a_wake_up_reaches_every_waiter() {
        let wake = Arc::new(Wake::new());
        let mut waiters = tokio::task::JoinSet::new();
        for _ in 0..3 {
            let wake = wake.clone();
            waiters.spawn(async move {
                let started = Instant::now();
                wake.wait(Duration::from_secs(10)).await;
                started.elapsed()
            });
        }
        while wake.waiting.load(Ordering::SeqCst) < 3 {
            tokio::task::yield_now().await;
        }
        wake.wake();
        while let Some(waited) = waiters.join_next().await {
            assert!(waited.unwrap() < Duration::from_secs(5));
        }
        // Everyone was waiting: nothing is kept for later.
        let started = Instant::now();
        wake.wait(Duration::from_millis(50)).await;
        assert!(started.elapsed() >= Duration::from_millis(50));
    }

    #[tokio::test]
    async fn a_wake_up_for_those_waiting_is_not_kept() {
        let wake = Arc::new(Wake::new());
        let waiter = {
            let wake = wake.clone();
            tokio::spawn(async move { wake.wait(Duration::from_secs(10)).await })
        };
        while wake.waiting.load(Ordering::SeqCst) < 1 {
            tokio::task::yield_now().await;
        }
        wake.wake_waiting();
        waiter.await.unwrap();
        // Nobody waits now: nothing was kept.
        wake.wake_waiting();
        let started = Instant::now();
        wake.wait(Duration::from_millis(50)).await;
        assert!(started.elapsed() >= Duration::from_millis(50));
    }

    #[tokio::test]
    async fn a_forgotten_wake_up_is_not_kept() {
        let wake = Wake::new();
        wake.wake();
        wake.forget();
        let started = Instant::now();
        wake.wait(Duration::from_millis(50)).await;
        assert!(started.elapsed() >= Duration::from_millis(50));
        // Forgetting with nothing kept changes nothing.
        wake.forget();
        wake.wake();
        let started = Instant::now();
        wake.wait(Duration::from_secs(10)).await;
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn an_end_told_between_the_watch_and_the_wait_is_not_missed() {
        let ends = Ends::new();
        let job = JobId::new();
        let watch = ends.watch(job);
        // The job ends after the caller looked at it, before it waits.
        ends.ended(job);
        let started = Instant::now();
        watch.wait(Duration::from_secs(10)).await;
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn an_end_wakes_every_watcher_of_its_job_and_no_other() {
        let ends = Arc::new(Ends::new());
        let (job, other) = (JobId::new(), JobId::new());
        let mut waiters = tokio::task::JoinSet::new();
        for watched in [job, job, other] {
            let ends = ends.clone();
            let (tx, rx) = tokio::sync::oneshot::channel();
            waiters.spawn(async move {
                let watch = ends.watch(watched);
                tx.send(()).unwrap();
                let started = Instant::now();
                watch.wait(Duration::from_millis(300)).await;
                (watched, started.elapsed())
            });
            rx.await.unwrap();
        }
        ends.ended(job);
        while let Some(waited) = waiters.join_next().await {
            let (watched, waited) = waited.unwrap();
            if watched == job {
                assert!(waited < Duration::from_millis(250), "{waited:?}");
            } else {
                assert!(waited >= Duration::from_millis(300), "{waited:?}");
            }
        }
        // Nobody watches any more: nothing is kept.
        assert!(ends.map().is_empty());
    }

    #[tokio::test]
    async fn an_end_before_the_watch_is_not_kept() {
        let ends = Ends::new();
        let job = JobId::new();
        ends.ended(job);
        let watch = ends.watch(job);
        assert!(!watch.told());
        let started = Instant::now();
        watch.wait(Duration::from_millis(50)).await;
        assert!(started.elapsed() >= Duration::from_millis(50));
        drop(watch);
        assert!(ends.map().is_empty());
    }

    #[tokio::test]
    async fn without_a_wake_up_the_wait_times_out() {
        let wake = Wake::new();
        let started = Instant::now();
        wake.wait(Duration::from_millis(30)).await;
        assert!(started.elapsed() >= Duration::from_millis(30));
        assert_eq!(wake.waiting.load(Ordering::SeqCst), 0);
    }
}
