//! The wake-ups a PostgreSQL board's posts send idle conductors, shared by posts that come
//! close together (see `PostgresJobBoard::with_wake_window`).
//!
//! The first post after a quiet spell sends its `NOTIFY` in its own statement. Posts of the
//! following window commit without one and are *owed* a wake-up: a background task (the
//! flusher) sends one `NOTIFY` when the window ends, after they committed, and that one covers
//! them all. `flush` sends what is owed at once, for a process about to exit.
//!
//! Owed and covered posts are counted rather than flagged, so a flush knows whether the
//! `NOTIFY` it finds in flight covers the posts it was called for, and waits for that one
//! (sends are serialised) instead of returning before it went out.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::postgres::PostgresStore;

/// The wake-up bookkeeping of one board (and its clones).
#[derive(Debug, Clone)]
pub(crate) struct PostWakes {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: PostgresStore,
    channel: Arc<str>,
    window: Duration,
    state: std::sync::Mutex<State>,
    /// Held while a `NOTIFY` covering owed posts is in flight.
    sending: tokio::sync::Mutex<()>,
}

#[derive(Debug, Default)]
struct State {
    /// When the last wake-up went out (with a post, or on its own).
    last_sent: Option<Instant>,
    /// How many posts have committed (or may have) without a wake-up of their own.
    owed: u64,
    /// How many of those a `NOTIFY` sent after them has covered.
    covered: u64,
    /// Whether a flusher task is on its way.
    flushing: bool,
}

impl PostWakes {
    pub(crate) fn new(store: PostgresStore, channel: Arc<str>, window: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                channel,
                window,
                state: std::sync::Mutex::default(),
                sending: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// Whether the post about to be made sends its own wake-up (then it is counted as sent).
    pub(crate) fn post_wakes(&self) -> bool {
        let mut state = self.inner.state();
        let due = state
            .last_sent
            .is_none_or(|t| t.elapsed() >= self.inner.window);
        if due {
            state.last_sent = Some(Instant::now());
        }
        due
    }

    /// A guard for a post: unless told its own wake-up went out with it, it counts the post as
    /// owed one when dropped (also when the post is cancelled half-way, or failed: whether it
    /// committed is then unknown, and a spare wake-up costs little).
    pub(crate) fn guard(&self) -> PostGuard<'_> {
        PostGuard {
            wakes: self,
            sent: false,
        }
    }

    /// Counts a post that committed without a wake-up, and starts a flusher unless one is on
    /// its way. Outside a tokio runtime, or with a window too long to end, nothing is spawned:
    /// the wake-up waits for [`PostWakes::flush`] (or the next post's flusher).
    fn owe(&self) {
        let mut state = self.inner.state();
        state.owed += 1;
        if state.flushing || Instant::now().checked_add(self.inner.window).is_none() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        state.flushing = true;
        drop(state);
        // The reset goes into the task's future, so it also runs if the task is dropped
        // before it is ever polled (spawned onto a runtime that is shutting down).
        runtime.spawn(flusher(ResetFlushing {
            inner: Arc::clone(&self.inner),
            armed: true,
        }));
    }

    /// Sends the wake-up owed to the posts made so far, at once, and returns once one covering
    /// them has gone out (or failed: idle conductors then find the jobs when they poll).
    pub(crate) async fn flush(&self) {
        let target = self.inner.state().owed;
        self.inner.send_covering(target).await;
    }
}

/// See [`PostWakes::guard`].
pub(crate) struct PostGuard<'a> {
    wakes: &'a PostWakes,
    sent: bool,
}

impl PostGuard<'_> {
    /// The post committed with its own wake-up.
    pub(crate) fn sent(mut self) {
        self.sent = true;
    }
}

impl Drop for PostGuard<'_> {
    fn drop(&mut self) {
        if !self.sent {
            self.wakes.owe();
        }
    }
}

impl Inner {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // Every update under this lock is a few plain assignments: a poisoned one is whole.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Makes sure a `NOTIFY` sent after the first `target` owed posts committed has gone out:
    /// waits for one in flight, then sends one if that did not cover them. Answers whether
    /// they are covered.
    async fn send_covering(&self, target: u64) -> bool {
        let _sending = self.sending.lock().await;
        let owed = {
            let mut state = self.state();
            if state.covered >= target {
                return true;
            }
            state.last_sent = Some(Instant::now());
            state.owed
        };
        // Every post counted in `owed` committed before this point, so this covers them all.
        let sent = notify(&self.store, &self.channel).await;
        if sent {
            let mut state = self.state();
            state.covered = state.covered.max(owed);
        }
        sent
    }
}

/// Sends owed wake-ups a window after the last one, until none is owed. A failed send is tried
/// again a window later only if posts were owed meanwhile (each owed post so brings one more
/// try, no more); otherwise the flusher gives up and the next owed post starts another.
async fn flusher(mut reset: ResetFlushing) {
    let inner = Arc::clone(&reset.inner);
    loop {
        let due = inner.state().last_sent.map(|t| t.checked_add(inner.window));
        match due {
            None => {}
            Some(Some(due)) => tokio::time::sleep_until(due.into()).await,
            // A window that never ends: the wake-ups wait for a flush.
            Some(None) => break,
        }
        let target = {
            let mut state = inner.state();
            if state.covered >= state.owed {
                // Decided under the lock `owe` takes: a post owed after this starts a flusher.
                state.flushing = false;
                reset.armed = false;
                return;
            }
            state.owed
        };
        if inner.send_covering(target).await {
            continue;
        }
        let mut state = inner.state();
        if state.owed == target {
            // Nothing owed since the failed send: give up until the next owed post (which
            // starts a flusher again); polling finds the jobs meanwhile.
            state.flushing = false;
            reset.armed = false;
            return;
        }
    }
}

/// Marks the flusher as gone when its task ends in any way but the ones that say so under the
/// lock (it panicked, or was dropped with its runtime).
struct ResetFlushing {
    inner: Arc<Inner>,
    armed: bool,
}

impl Drop for ResetFlushing {
    fn drop(&mut self) {
        if self.armed {
            self.inner.state().flushing = false;
        }
    }
}

/// How long a wake-up may take to go out before it is given up on: a statement on a
/// connection whose server vanished can otherwise hang for as long as TCP retransmits.
const NOTIFY_TIMEOUT: Duration = Duration::from_secs(5);

/// Sends one wake-up on `channel`; answers whether it went out. A missed wake-up only delays
/// idle conductors until they poll.
pub(crate) async fn notify(store: &PostgresStore, channel: &str) -> bool {
    let send = async {
        let mut kept = store.acquire().await?;
        let sent = sqlx::query("SELECT pg_notify($1, '')")
            .bind(channel)
            .execute(&mut *kept)
            .await;
        store.release(kept, &sent);
        sent.map(|_| ())
    };
    match tokio::time::timeout(NOTIFY_TIMEOUT, send).await {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "job wake-up not sent; conductors find the job by polling");
            false
        }
        Err(_) => {
            tracing::debug!("job wake-up timed out; conductors find the job by polling");
            false
        }
    }
}
