//! The news a PostgreSQL board sends and hears on its channel: the wake-ups its posts send idle
//! conductors, shared by posts that come close together (see
//! `PostgresJobBoard::with_wake_window`), and the [`Listener`] its waiters hear them on, with
//! the cancel requests sent to the owners of claimed jobs and the ends of the jobs someone
//! waits for.
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

use baton_core::board::{EndWatch, Ends, Wake};
use baton_core::JobId;
use futures::FutureExt;
use sqlx::postgres::PgListener;

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

/// The payload of the `NOTIFY` a cancel request sends to the owner of a claimed job. Wake-ups
/// for work carry an empty one (as every release of baton sends them), and a listener of an
/// earlier release takes this one for a wake-up for work too: it costs it a claim that finds
/// nothing.
pub(crate) const CANCEL_NEWS: &str = "cancel";

/// The start of the payload of the `NOTIFY` that tells of a job's end, followed by the job's
/// id. Like a cancel request's, a listener of an earlier release takes it for a wake-up for
/// work.
macro_rules! end_news {
    () => {
        "ended "
    };
}
pub(crate) use end_news;

/// An expression (for a statement's select list) that tells of the end of the job in row
/// `$row` (a name whose `id` and `watched` columns are the ended job's) on the channel bound
/// as `$channel`, if someone waits for it (`watched`): evaluated once per row, a `NOTIFY` sent
/// when the transaction commits.
macro_rules! announce_end {
    ($channel:literal, $row:literal) => {
        concat!(
            "(CASE WHEN ",
            $row,
            ".watched THEN pg_notify(",
            $channel,
            ", '",
            $crate::wake::end_news!(),
            "' || ",
            $row,
            ".id::text) END) IS NULL"
        )
    };
}
pub(crate) use announce_end;

/// What a board's callers wait for on its channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum News {
    /// A job may be claimable ([`JobBoard::wait_for_work`](baton_core::JobBoard::wait_for_work)).
    Work,
    /// A claimed job was asked to stop
    /// ([`JobBoard::wait_for_cancel`](baton_core::JobBoard::wait_for_cancel)).
    Cancel,
    /// A job someone waits for ended
    /// ([`JobBoard::wait_for_end`](baton_core::JobBoard::wait_for_end)).
    Ended(JobId),
}

impl News {
    fn of(payload: &str) -> Self {
        if payload == CANCEL_NEWS {
            return News::Cancel;
        }
        match payload.strip_prefix(end_news!()).map(str::parse) {
            Some(Ok(job)) => News::Ended(job),
            // Not ours to read: as every payload of an unknown kind, a wake-up for work.
            _ => News::Work,
        }
    }
}

/// The connection a board (and its clones) listens on for news, shared by everyone waiting:
/// a conductor's loop waits for work while its watcher waits for cancel requests, and a
/// service waits for the jobs it posted to end, and all hear through one connection rather
/// than one each.
///
/// Whoever waits while nobody listens takes the connection (opening it the first time, outside
/// the store's pool) and receives; the others wait in process: on a [`Wake`] for their kind of
/// news, or, for a job's end, on the [`Ends`] of the job they watch. The one receiving passes
/// on what it hears: news of its own kind wakes it and the others waiting for that kind; news
/// of another kind wakes those waiting for it, or, for work and cancel requests, is kept for
/// the next one to wait (so a cancel request heard while the owner's watcher was busy
/// elsewhere is not lost); the end of a job nobody here watches is dropped. When its wait ends
/// it lets go, and the next waiter takes over; what arrives meanwhile waits in the connection.
/// So news is heard at once whoever happens to be listening, and the poll is only a fallback
/// (a lost connection, a `NOTIFY` sent before the connection listened).
#[derive(Debug)]
pub(crate) struct Listener {
    store: PostgresStore,
    channel: Arc<str>,
    conn: tokio::sync::Mutex<Option<PgListener>>,
    work: Wake,
    cancel: Wake,
    ends: Ends,
}

impl Listener {
    pub(crate) fn new(store: PostgresStore, channel: Arc<str>) -> Self {
        Self {
            store,
            channel,
            conn: tokio::sync::Mutex::new(None),
            work: Wake::new(),
            cancel: Wake::new(),
            ends: Ends::new(),
        }
    }

    /// Passes `heard` on to those waiting for it here: a job's end to its watchers, other
    /// news to those waiting for its kind, or to the next one to wait for it if `keep`.
    fn pass_on(&self, heard: News, keep: bool) {
        let wake = match heard {
            News::Ended(job) => return self.ends.ended(job),
            News::Work => &self.work,
            News::Cancel => &self.cancel,
        };
        if keep {
            wake.wake();
        } else {
            wake.wake_waiting();
        }
    }

    /// A deadline `timeout` from now; for a timeout too long for the clock, a day from now
    /// (the caller looks again then).
    pub(crate) fn deadline(timeout: Duration) -> tokio::time::Instant {
        let now = tokio::time::Instant::now();
        now.checked_add(timeout)
            .unwrap_or_else(|| now + Duration::from_secs(86_400))
    }

    /// Returns when `news` (work, or a cancel request) may have come, or after `timeout`.
    ///
    /// # Cancel safety
    /// Cancel safe: a caller given up on half-way loses nothing (news it was receiving stays
    /// in the connection, or was passed on).
    pub(crate) async fn wait(&self, news: News, timeout: Duration) {
        let deadline = Self::deadline(timeout);
        let passed_on = match news {
            News::Work => &self.work,
            News::Cancel => &self.cancel,
            // Waited for with `wait_for_end`.
            News::Ended(_) => return tokio::time::sleep_until(deadline).await,
        };
        tokio::select! {
            // The news passed on comes first: taking the connection when both are ready would
            // drop it (it is not kept for a caller that was waiting when it came).
            biased;
            () = passed_on.wait(deadline - tokio::time::Instant::now()) => {}
            mut conn = self.conn.lock() => self.receive(&mut conn, news, deadline).await,
        }
    }

    /// Starts watching job `job`'s end (see [`Ends::watch`]): before looking at the job.
    pub(crate) fn watch(&self, job: JobId) -> EndWatch<'_> {
        self.ends.watch(job)
    }

    /// Makes sure the connection listens (opening it if there is none, by `deadline`), so that
    /// a `NOTIFY` sent from now on reaches it: before looking at a job whose end is then
    /// waited for. If someone holds the connection, it listens already (or is opening it: an
    /// end sent in that moment is found by the waiter's next look).
    pub(crate) async fn listen(&self, deadline: tokio::time::Instant) {
        let Ok(mut conn) = self.conn.try_lock() else {
            return;
        };
        if conn.is_none() {
            *conn = self.subscribe(deadline).await;
        }
    }

    /// Returns when the end of the job `watch` watches may have come, or at `deadline`.
    ///
    /// # Cancel safety
    /// Cancel safe, as [`Listener::wait`].
    pub(crate) async fn wait_for_end(&self, watch: &EndWatch<'_>, deadline: tokio::time::Instant) {
        tokio::select! {
            biased;
            () = watch.wait(deadline.saturating_duration_since(tokio::time::Instant::now())) => {}
            mut conn = self.conn.lock() => {
                if !watch.told() {
                    self.receive(&mut conn, News::Ended(watch.job()), deadline).await;
                }
            }
        }
    }

    /// Receives on the connection (opening it if there is none) until `news` comes or the
    /// deadline, passing on the other kind.
    async fn receive(
        &self,
        conn: &mut Option<PgListener>,
        news: News,
        deadline: tokio::time::Instant,
    ) {
        if conn.is_none() {
            *conn = self.subscribe(deadline).await;
        }
        let Some(listener) = conn.as_mut() else {
            // Cannot listen: wait out the poll.
            tokio::time::sleep_until(deadline).await;
            return;
        };
        loop {
            match tokio::time::timeout_at(deadline, listener.try_recv()).await {
                Err(_) => return,
                Ok(Ok(Some(notice))) => {
                    let heard = News::of(notice.payload());
                    if heard == news {
                        // This caller looks for itself: nothing to keep for a later one.
                        self.pass_on(heard, false);
                        return;
                    }
                    self.pass_on(heard, true);
                }
                Ok(Ok(None)) => {
                    tracing::debug!(
                        "job wake-up listener lost its connection; reconnecting next time"
                    );
                    *conn = None;
                    return;
                }
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "job wake-up listener failed; reconnecting next time");
                    *conn = None;
                    return;
                }
            }
        }
    }

    /// A connection listening on the board's channel, if one can be had by `deadline`.
    async fn subscribe(&self, deadline: tokio::time::Instant) -> Option<PgListener> {
        // On a connection of its own, outside the store's pool: a listener kept between waits
        // would otherwise hold one of the pool's connections for good, and closing the store
        // (which waits for them all) would wait for this board to go.
        let own = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_lazy_with((*self.store.pool().connect_options()).clone());
        let listening = tokio::time::timeout_at(deadline, PgListener::connect_with(&own));
        match listening.await.unwrap_or(Err(sqlx::Error::PoolTimedOut)) {
            Ok(mut listener) => {
                // Reconnecting is done here, never inside `try_recv`: that one is given up on
                // at the deadline, and giving it up in the middle of a reconnection could hand
                // a half-subscribed connection back to the pool.
                listener.eager_reconnect(false);
                // Bounded by the poll too; a listener given up on half-way is dropped with its
                // own one-connection pool, so nothing half-subscribed is reused.
                let subscribed = tokio::time::timeout_at(deadline, listener.listen(&self.channel));
                matches!(subscribed.await, Ok(Ok(()))).then_some(listener)
            }
            Err(e) => {
                tracing::debug!(error = %e, "cannot listen for job wake-ups; polling");
                None
            }
        }
    }

    /// Drops the wake-ups for work already received, passing on the cancel requests: a claim
    /// about to be made sees the work they announce (a wake-up is sent when its job is
    /// committed), so each would only cost another claim finding nothing. The connection is
    /// left alone while someone receives on it.
    pub(crate) fn forget_work(&self) {
        self.work.forget();
        let Ok(mut conn) = self.conn.try_lock() else {
            return;
        };
        let Some(listener) = conn.as_mut() else {
            return;
        };
        // Only what has arrived: `try_recv` is polled once, never waited for. The listener
        // does not reconnect on its own (see `subscribe`), so polling it once cannot stop a
        // reconnection half-way; a lost connection is dropped here and made anew by a wait.
        loop {
            match listener.try_recv().now_or_never() {
                Some(Ok(Some(notice))) => match News::of(notice.payload()) {
                    News::Work => {}
                    other => self.pass_on(other, true),
                },
                None => return,
                Some(Ok(None) | Err(_)) => {
                    *conn = None;
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_are_read_by_kind() {
        let job = JobId::new();
        assert_eq!(News::of(""), News::Work);
        assert_eq!(News::of(CANCEL_NEWS), News::Cancel);
        assert_eq!(News::of(&format!("ended {job}")), News::Ended(job));
        // What this release does not know is a wake-up for work, as it always was.
        assert_eq!(News::of("ended nobody"), News::Work);
        assert_eq!(News::of("later news"), News::Work);
        let sql = announce_end!("$4", "done");
        assert_eq!(
            sql,
            "(CASE WHEN done.watched THEN pg_notify($4, 'ended ' || done.id::text) END) IS NULL"
        );
    }
}
