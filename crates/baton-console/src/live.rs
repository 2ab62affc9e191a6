//! Live updates: `GET /api/events` as server-sent events.
//!
//! - `?flow=ID`: an event `flow` with `{"id", "state", "seq"}` when the subscription starts,
//!   then whenever the run commits a step ([`Store::head`](baton_core::store::Store::head)
//!   changes). The stream ends when the run is purged.
//! - `?jobs=1`: an event `job` with the job's record whenever a job changes: posted, claimed,
//!   asked to cancel, parked, ended (open jobs, up to [`MAX_LIMIT`](crate::api::MAX_LIMIT) of
//!   each state, and those that leave them).
//!
//! Where the news comes from ([`LiveSource`]): every subscription polls, every
//! [`POLL`] (a keyed read of the run's head; three listings of open jobs). On PostgreSQL the
//! console also `LISTEN`s, on one connection, for the steps stores announce
//! ([`PostgresOptions::announce_steps`](baton_sql::PostgresOptions::announce_steps)) and the
//! board's job notifications, and fans them out to the subscriptions, which then read at
//! once; while that connection is up, the polls slow to [`POLL_LISTENING`] and only catch
//! what a store that does not announce wrote. When the connection fails, the console
//! connects again after a second, and polls at [`POLL`] meanwhile.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use baton_core::board::{Cancel, Job, JobQuery};
use baton_core::store::{self, Head};
use baton_core::{FencingToken, FlowId, JobId, JobState};
use baton_sql::Announcement;
use futures::Stream;
use serde::Deserialize;
use tokio::sync::broadcast;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::{ApiError, ApiResult};
use crate::Console;

/// How often a subscription polls the store when nothing tells it of changes.
pub const POLL: Duration = Duration::from_millis(500);

/// How often a subscription polls while the console listens to PostgreSQL's notifications.
pub const POLL_LISTENING: Duration = Duration::from_secs(2);

/// The least time between two reads of one subscription: a run committing a thousand steps a
/// second costs its watchers ten reads a second.
const MIN_GAP: Duration = Duration::from_millis(100);

/// How long the listener waits before it connects again after a failure.
const RECONNECT: Duration = Duration::from_secs(1);

/// Where the console hears of changes, beyond polling.
#[derive(Clone, Default)]
#[non_exhaustive]
pub enum LiveSource {
    /// Polling only (SQLite, memory, or a PostgreSQL database the console does not listen to).
    #[default]
    Poll,
    /// PostgreSQL's `LISTEN`: the database at `url`, the store's schema `schema`.
    Postgres {
        /// The database's URL (never shown: `Debug` hides its password).
        url: String,
        /// The store's schema.
        schema: String,
    },
}

impl LiveSource {
    /// Listening to the PostgreSQL database at `url`, whose store lives in `schema`.
    #[must_use]
    pub fn postgres(url: impl Into<String>, schema: impl Into<String>) -> Self {
        LiveSource::Postgres {
            url: url.into(),
            schema: schema.into(),
        }
    }
}

impl std::fmt::Debug for LiveSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LiveSource::Poll => f.write_str("Poll"),
            LiveSource::Postgres { url, schema } => f
                .debug_struct("Postgres")
                .field("url", &baton_sql::redact_url(url))
                .field("schema", schema)
                .finish(),
        }
    }
}

/// News the listener fans out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Notice {
    /// A run committed a step.
    Step(FlowId),
    /// Jobs changed.
    Jobs,
    /// News may have been lost (the listener's connection dropped): everyone reads.
    All,
}

/// What the subscriptions share: the listener's news, and the console's closing.
#[derive(Debug)]
pub(crate) struct Hub {
    notices: broadcast::Sender<Notice>,
    listening: AtomicBool,
    /// Cancelled when the server shuts down: every stream ends, so that connections close.
    pub(crate) closing: CancellationToken,
}

impl Default for Hub {
    fn default() -> Self {
        Self {
            notices: broadcast::channel(1024).0,
            listening: AtomicBool::new(false),
            closing: CancellationToken::new(),
        }
    }
}

impl Hub {
    fn poll_every(&self) -> Duration {
        if self.listening.load(Ordering::Relaxed) {
            POLL_LISTENING
        } else {
            POLL
        }
    }

    fn tell(&self, notice: Notice) {
        // No subscriber, nobody to tell.
        let _ = self.notices.send(notice);
    }
}

/// Listens to PostgreSQL's notifications for the hub until it closes, connecting again after
/// failures.
pub(crate) async fn listen(hub: Arc<Hub>, url: String, schema: String) {
    while !hub.closing.is_cancelled() {
        match baton_sql::Announcements::connect(&url, &schema).await {
            Ok(mut news) => {
                hub.listening.store(true, Ordering::Relaxed);
                // What came before the LISTEN is unknown.
                hub.tell(Notice::All);
                loop {
                    let next = tokio::select! {
                        () = hub.closing.cancelled() => break,
                        next = news.next() => next,
                    };
                    match next {
                        Ok(Announcement::Step { flow, .. }) => hub.tell(Notice::Step(flow)),
                        Ok(Announcement::Jobs) => hub.tell(Notice::Jobs),
                        Ok(_) => hub.tell(Notice::All),
                        Err(e) => {
                            tracing::warn!(error = %e, "the console stopped listening to PostgreSQL");
                            break;
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "the console cannot listen to PostgreSQL"),
        }
        hub.listening.store(false, Ordering::Relaxed);
        tokio::select! {
            () = hub.closing.cancelled() => {}
            () = tokio::time::sleep(RECONNECT) => {}
        }
    }
    hub.listening.store(false, Ordering::Relaxed);
}

/// The query of `GET /api/events`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Subscribe {
    flow: Option<String>,
    jobs: Option<String>,
}

/// `GET /api/events?flow=ID` or `?jobs=1`.
pub(crate) async fn events(
    State(console): State<Console>,
    query: Result<Query<Subscribe>, QueryRejection>,
) -> ApiResult<Response> {
    let Query(s) = query?;
    let jobs = matches!(s.jobs.as_deref(), Some("1" | "true"));
    if s.jobs.is_some() && !jobs && s.jobs.as_deref() != Some("0") {
        return Err(ApiError::bad_request("jobs takes 1 (or true)"));
    }
    match (s.flow, jobs) {
        (Some(flow), false) => {
            let id: FlowId = flow
                .parse()
                .map_err(|e| ApiError::bad_request(format!("bad flow id {flow:?}: {e}")))?;
            let head = console.store.head(id).await?;
            let stream = flow_events(console, id, head);
            Ok(Sse::new(stream)
                .keep_alive(KeepAlive::default())
                .into_response())
        }
        (None, true) => {
            let mut watch = JobWatch::new(console);
            watch.poll(false).await?;
            Ok(Sse::new(job_events(watch))
                .keep_alive(KeepAlive::default())
                .into_response())
        }
        _ => Err(ApiError::bad_request(
            "subscribe to one run (flow=ID) or to the jobs (jobs=1)",
        )),
    }
}

/// The `flow` event of a run's head.
fn flow_event(id: FlowId, head: Head) -> Event {
    Event::default()
        .event("flow")
        .data(serde_json::json!({ "id": id, "state": head.state, "seq": head.seq }).to_string())
}

/// What a subscription waits for before it reads again: its poll coming due, news for it, or
/// the console closing. `false` when the console closes.
async fn wake(
    hub: &Hub,
    notices: &mut broadcast::Receiver<Notice>,
    next_poll: Instant,
    wanted: impl Fn(Notice) -> bool,
) -> bool {
    loop {
        tokio::select! {
            () = hub.closing.cancelled() => return false,
            () = tokio::time::sleep_until(next_poll) => return true,
            notice = notices.recv() => match notice {
                Ok(n) if n == Notice::All || wanted(n) => return true,
                Ok(_) => {}
                // Missed some: read, to be sure.
                Err(broadcast::error::RecvError::Lagged(_)) => return true,
                // The hub lives as long as the console: polling goes on.
                Err(broadcast::error::RecvError::Closed) => {
                    tokio::select! {
                        () = hub.closing.cancelled() => return false,
                        () = tokio::time::sleep_until(next_poll) => return true,
                    }
                }
            },
        }
    }
}

/// A run's subscription.
struct FlowWatch {
    console: Console,
    id: FlowId,
    last: Head,
    pending: Option<Head>,
    notices: broadcast::Receiver<Notice>,
}

fn flow_events(
    console: Console,
    id: FlowId,
    head: Head,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let watch = FlowWatch {
        notices: console.live.notices.subscribe(),
        console,
        id,
        last: head,
        pending: Some(head),
    };
    futures::stream::unfold(watch, |mut w| async move {
        let mut read_at = Instant::now();
        loop {
            if let Some(head) = w.pending.take() {
                w.last = head;
                return Some((Ok(flow_event(w.id, head)), w));
            }
            let hub = Arc::clone(&w.console.live);
            let next_poll = read_at + hub.poll_every();
            let id = w.id;
            if !wake(&hub, &mut w.notices, next_poll, |n| n == Notice::Step(id)).await {
                return None;
            }
            tokio::time::sleep_until(read_at + MIN_GAP).await;
            read_at = Instant::now();
            match w.console.store.head(w.id).await {
                Ok(head) if head != w.last => w.pending = Some(head),
                Ok(_) => {}
                Err(store::Error::FlowNotFound(_)) => return None,
                Err(e) => {
                    tracing::debug!(error = %e, flow = %w.id, "a live update could not read the run")
                }
            }
        }
    })
}

/// What makes a job's change worth an event (a lease renewal is not).
type Stamp = (JobState, FencingToken, u32, Option<Cancel>);

fn stamp(job: &Job) -> Stamp {
    (job.state, job.token, job.attempts, job.cancel)
}

/// The jobs' subscription: the open jobs as last seen, and the changes not yet sent.
struct JobWatch {
    console: Console,
    seen: HashMap<JobId, Stamp>,
    queue: VecDeque<Job>,
    notices: broadcast::Receiver<Notice>,
}

impl JobWatch {
    fn new(console: Console) -> Self {
        Self {
            notices: console.live.notices.subscribe(),
            console,
            seen: HashMap::new(),
            queue: VecDeque::new(),
        }
    }

    /// Reads the open jobs, and queues those that changed since the last read (when
    /// `report`) and those that left the open states.
    async fn poll(&mut self, report: bool) -> ApiResult<()> {
        let board = &self.console.board;
        let mut now = HashMap::new();
        for state in [JobState::Unclaimed, JobState::Claimed, JobState::Parked] {
            let jobs = board
                .list(&JobQuery::all().state(state).limit(crate::api::MAX_LIMIT))
                .await?;
            for job in jobs {
                let s = stamp(&job);
                if report && self.seen.get(&job.id) != Some(&s) {
                    self.queue.push_back(job.clone());
                }
                now.insert(job.id, s);
            }
        }
        if report {
            for (id, old) in &self.seen {
                if now.contains_key(id) {
                    continue;
                }
                match board.get(*id).await {
                    Ok(job) if stamp(&job) != *old => self.queue.push_back(job),
                    Ok(_) | Err(baton_core::board::Error::JobNotFound(_)) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        self.seen = now;
        Ok(())
    }
}

fn job_events(watch: JobWatch) -> impl Stream<Item = Result<Event, Infallible>> {
    futures::stream::unfold(watch, |mut w| async move {
        let mut read_at = Instant::now();
        loop {
            if let Some(job) = w.queue.pop_front() {
                let data = serde_json::to_string(&job).unwrap_or_default();
                return Some((Ok(Event::default().event("job").data(data)), w));
            }
            let hub = Arc::clone(&w.console.live);
            let next_poll = read_at + hub.poll_every();
            if !wake(&hub, &mut w.notices, next_poll, |n| n == Notice::Jobs).await {
                return None;
            }
            tokio::time::sleep_until(read_at + MIN_GAP).await;
            read_at = Instant::now();
            if let Err(e) = w.poll(true).await {
                tracing::debug!(error = %e.message(), "a live update could not read the jobs");
            }
        }
    })
}
