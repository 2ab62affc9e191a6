//! Wake-ups for boards whose news travels inside one process.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

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
    async fn without_a_wake_up_the_wait_times_out() {
        let wake = Wake::new();
        let started = Instant::now();
        wake.wait(Duration::from_millis(30)).await;
        assert!(started.elapsed() >= Duration::from_millis(30));
        assert_eq!(wake.waiting.load(Ordering::SeqCst), 0);
    }
}
