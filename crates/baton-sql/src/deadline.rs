//! Deadlines: every call a SQL store or job board answers ends within its call timeout.
//!
//! # Why
//!
//! A process cut off from its database by a path that silently drops packets (a dead switch, a
//! partition, a proxy that stops forwarding) sees neither an answer nor an error: TCP keeps
//! retransmitting what it sent for about a quarter of an hour on Linux before it gives up. A
//! conductor waiting that long in a heartbeat or a commit cannot tell the operator anything,
//! cannot stop when asked, and holds pooled connections that no later call can use. So every
//! call has a deadline, [`call_timeout`](crate::PostgresOptions::call_timeout) (5 s by
//! default), chosen by whoever opens the store (`baton conductor` derives it from its lease).
//!
//! # How
//!
//! - **On the client, for every call.** Each method of [`Store`](baton_core::store::Store) and
//!   [`JobBoard`](baton_core::board::JobBoard) on the SQL types runs under a timer. A call
//!   still running when it fires is abandoned (its future dropped) and answers `Unavailable`
//!   with a [`DeadlineExceeded`] as its source: the kind of error the engine retries with
//!   backoff and the conductor treats as "the database is away for now". Like any
//!   `Unavailable` answer to a write, it leaves it unknown whether the write was applied; the
//!   engine finds out when it tries again, and fencing keeps a write of a claim that moved on
//!   out.
//! - **Abandoned connections are closed.** Dropped in the middle of a statement, a connection
//!   may be anywhere in the protocol. sqlx would hand it back to its pool after a ping that has
//!   no timeout of its own: on a silent peer the ping waits as long as TCP does, holding a
//!   place in the pool, and sqlx itself calls that check a band-aid for connections a dropped
//!   future left inconsistent. The PostgreSQL store therefore lends its connections wrapped
//!   (`Lent`): one dropped before the store took it back is closed, never pooled again. The
//!   few statements run on the pool itself (a conductor's registration and the fleet's
//!   listing) go back through a pool hook that bounds sqlx's check by the call timeout and
//!   closes a connection that does not answer in time.
//! - **On the PostgreSQL server.** Connections of the store's pool are opened with
//!   `statement_timeout` and `idle_in_transaction_session_timeout` set to the call timeout, so
//!   the server gives up on a statement the client has abandoned, and ends the session (with
//!   its row locks) of a client that vanished in the middle of a transaction. Waiting for a
//!   pooled connection, and opening one, is bounded by the call timeout too. (sqlx 0.8 has no
//!   way to set TCP keepalive on its sockets; the client's own timer stands in for it. The
//!   server's keepalive is left as configured: a server that closed the session of an owner
//!   that is only cut off would free its liveness lock, and let its jobs be claimed, before
//!   its lease, and with it the owner's self-fencing, ran out.)
//! - **On SQLite**, the busy timeout (how long a statement waits for another process's lock)
//!   is the call timeout. A connection given up on in the middle of its `BEGIN IMMEDIATE`
//!   is closed (`Writable`): sqlx can leave it in a transaction nobody ends.
//! - **Waits are not calls.** [`JobBoard::wait_for_work`](baton_core::board::JobBoard::wait_for_work)
//!   and [`JobBoard::wait_for_cancel`](baton_core::board::JobBoard::wait_for_cancel) return
//!   after the timeout they are given, whatever the connection they listen on does; they are
//!   not cut short by the call timeout.
//!   [`JobBoard::wait_for_end`](baton_core::board::JobBoard::wait_for_end) is a wait between
//!   two looks at the job: it is bounded by its timeout plus a call timeout for each look.
//!   A conductor's registration may check or open its liveness connection, which has a bound
//!   of its own (2 s on PostgreSQL); it gets that bound on top of the call timeout.
//!
//! The trait implementations are written once per type, as implementations on `Raw`, a view
//! of the store or board that does the work unbounded; the macros here generate the public
//! implementations, each method a bounded call of the raw one. So the rule lives in one place
//! for every method of both backends, and no method body carries it. (A method added to
//! either trait must be added to its macro too: until it is, the public types keep the
//! trait's default for it, built on the bounded methods, and ignore the raw one.)

// Without a backend nothing is bounded: only the public items are used then.
#![cfg_attr(
    not(any(feature = "sqlite", feature = "postgres")),
    allow(dead_code, unused_macros, unused_imports)
)]

use std::error::Error as StdError;
use std::future::Future;
use std::time::Duration;

use crate::error::Error;

/// The call timeout of a store opened without one: 5 s.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest call timeout a store accepts: a day. (PostgreSQL counts its statement timeout
/// in milliseconds in a 32-bit integer, about 24 days; the clocks that add it must not
/// overflow either.)
pub const MAX_CALL_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// The source of the `Unavailable` error a call answers when the database did not answer it
/// within the store's call timeout.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the database did not answer `{call}` within {}ms (the call timeout)", limit.as_millis())]
#[non_exhaustive]
pub struct DeadlineExceeded {
    /// The store or board method (`commit`, `heartbeat`, ...).
    pub call: &'static str,
    /// The call timeout.
    pub limit: Duration,
}

/// Checks a call timeout: more than zero, at most [`MAX_CALL_TIMEOUT`].
///
/// # Errors
/// [`Error::InvalidTimeout`] naming `option`.
pub(crate) fn check(option: &'static str, value: Duration) -> Result<Duration, Error> {
    if value.is_zero() || value > MAX_CALL_TIMEOUT {
        return Err(Error::InvalidTimeout {
            option,
            value,
            max: MAX_CALL_TIMEOUT,
        });
    }
    Ok(value)
}

/// Runs `call` (the method `name`) for at most `limit`; past it, the call is dropped and the
/// answer is `unavailable` of a [`DeadlineExceeded`].
pub(crate) async fn bounded<T, E>(
    limit: Duration,
    name: &'static str,
    unavailable: fn(Box<dyn StdError + Send + Sync>) -> E,
    call: impl Future<Output = Result<T, E>>,
) -> Result<T, E> {
    match tokio::time::timeout(limit, call).await {
        Ok(answer) => answer,
        Err(_) => Err(unavailable(Box::new(DeadlineExceeded {
            call: name,
            limit,
        }))),
    }
}

/// A view of a store or board whose trait methods do the work with no deadline: the code of
/// each backend, which the public implementations (see [`bounded_store`] and
/// [`bounded_board`]) call under the call timeout. It dereferences to the store or board, so
/// the raw implementations read as if written on it.
#[derive(Debug)]
pub(crate) struct Raw<'a, T>(pub(crate) &'a T);

impl<T> std::ops::Deref for Raw<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        self.0
    }
}

/// Implements [`Store`](baton_core::store::Store) for `$store`, a type with a
/// `call_timeout(&self) -> Duration` method and a `Store` implementation on `Raw<'_, $store>`:
/// every method is the raw one, bounded by the call timeout.
macro_rules! bounded_store {
    ($store:ty) => {
        #[::async_trait::async_trait]
        impl ::baton_core::store::Store for $store {
            async fn create_flow(
                &self,
                flow: &::baton_core::model::FlowRecord,
                atoms: &[::baton_core::model::AtomRecord],
                fence: ::std::option::Option<::baton_core::Fence>,
            ) -> ::baton_core::store::Result<()> {
                $crate::deadline::store_call(
                    self.call_timeout(),
                    "create_flow",
                    $crate::deadline::Raw(self).create_flow(flow, atoms, fence),
                )
                .await
            }

            async fn load_flow(
                &self,
                id: ::baton_core::FlowId,
            ) -> ::baton_core::store::Result<::baton_core::model::FlowSnapshot> {
                $crate::deadline::store_call(
                    self.call_timeout(),
                    "load_flow",
                    $crate::deadline::Raw(self).load_flow(id),
                )
                .await
            }

            async fn load_run(
                &self,
                id: ::baton_core::FlowId,
            ) -> ::baton_core::store::Result<::baton_core::model::FlowSnapshot> {
                $crate::deadline::store_call(
                    self.call_timeout(),
                    "load_run",
                    $crate::deadline::Raw(self).load_run(id),
                )
                .await
            }

            async fn commit(
                &self,
                batch: &::baton_core::model::Batch,
            ) -> ::baton_core::store::Result<()> {
                $crate::deadline::store_call(
                    self.call_timeout(),
                    "commit",
                    $crate::deadline::Raw(self).commit(batch),
                )
                .await
            }

            async fn history(
                &self,
                id: ::baton_core::FlowId,
            ) -> ::baton_core::store::Result<::std::vec::Vec<::baton_core::model::Transition>> {
                $crate::deadline::store_call(
                    self.call_timeout(),
                    "history",
                    $crate::deadline::Raw(self).history(id),
                )
                .await
            }

            async fn list_flows(
                &self,
                query: &::baton_core::store::FlowQuery,
            ) -> ::baton_core::store::Result<::std::vec::Vec<::baton_core::model::FlowRecord>> {
                $crate::deadline::store_call(
                    self.call_timeout(),
                    "list_flows",
                    $crate::deadline::Raw(self).list_flows(query),
                )
                .await
            }

            async fn head(
                &self,
                id: ::baton_core::FlowId,
            ) -> ::baton_core::store::Result<::baton_core::store::Head> {
                $crate::deadline::store_call(
                    self.call_timeout(),
                    "head",
                    $crate::deadline::Raw(self).head(id),
                )
                .await
            }

            async fn purge_flows(
                &self,
                ended_before: ::chrono::DateTime<::chrono::Utc>,
                limit: u32,
            ) -> ::baton_core::store::Result<u64> {
                $crate::deadline::store_call(
                    self.call_timeout(),
                    "purge_flows",
                    $crate::deadline::Raw(self).purge_flows(ended_before, limit),
                )
                .await
            }

            async fn create_and_commit(
                &self,
                flow: &::baton_core::model::FlowRecord,
                atoms: &[::baton_core::model::AtomRecord],
                fence: ::std::option::Option<::baton_core::Fence>,
                first: &::baton_core::model::Batch,
            ) -> ::baton_core::store::Result<()> {
                $crate::deadline::store_call(
                    self.call_timeout(),
                    "create_and_commit",
                    $crate::deadline::Raw(self).create_and_commit(flow, atoms, fence, first),
                )
                .await
            }

            fn consumes_jobs(&self) -> bool {
                $crate::deadline::Raw(self).consumes_jobs()
            }

            fn kind(&self) -> &'static str {
                $crate::deadline::Raw(self).kind()
            }

            async fn count_runs(
                &self,
            ) -> ::baton_core::store::Result<::baton_core::store::RunCounts> {
                $crate::deadline::store_call(
                    self.call_timeout(),
                    "count_runs",
                    $crate::deadline::Raw(self).count_runs(),
                )
                .await
            }
        }
    };
}
pub(crate) use bounded_store;

/// Implements [`JobBoard`](baton_core::board::JobBoard) for `$board`, a type with a
/// `call_timeout(&self) -> Duration` method and a `JobBoard` implementation on
/// `Raw<'_, $board>`: every call is the raw one, bounded by the call timeout, except the
/// waits, which keep the timeout they are given, and `register`, which gets `$registration`
/// (the bound of the board's own liveness check) on top of it.
macro_rules! bounded_board {
    ($board:ty, $registration:expr) => {
        #[::async_trait::async_trait]
        impl ::baton_core::board::JobBoard for $board {
            async fn post(
                &self,
                job: ::baton_core::board::NewJob,
            ) -> ::baton_core::board::Result<::baton_core::board::Job> {
                $crate::deadline::board_call(
                    self.call_timeout(),
                    "post",
                    $crate::deadline::Raw(self).post(job),
                )
                .await
            }

            async fn claim(
                &self,
                owner: ::baton_core::ConductorId,
                lease: ::std::time::Duration,
                offer: &::baton_core::board::Offer,
            ) -> ::baton_core::board::Result<::std::option::Option<::baton_core::board::Claim>>
            {
                $crate::deadline::board_call(
                    self.call_timeout(),
                    "claim",
                    $crate::deadline::Raw(self).claim(owner, lease, offer),
                )
                .await
            }

            async fn claim_up_to(
                &self,
                owner: ::baton_core::ConductorId,
                lease: ::std::time::Duration,
                max: usize,
                offer: &::baton_core::board::Offer,
            ) -> ::baton_core::board::Result<::std::vec::Vec<::baton_core::board::Claim>> {
                $crate::deadline::board_call(
                    self.call_timeout(),
                    "claim_up_to",
                    $crate::deadline::Raw(self).claim_up_to(owner, lease, max, offer),
                )
                .await
            }

            async fn heartbeat(
                &self,
                fence: ::baton_core::Fence,
                lease: ::std::time::Duration,
                progressed: bool,
            ) -> ::baton_core::board::Result<::chrono::DateTime<::chrono::Utc>> {
                $crate::deadline::board_call(
                    self.call_timeout(),
                    "heartbeat",
                    $crate::deadline::Raw(self).heartbeat(fence, lease, progressed),
                )
                .await
            }

            async fn consume(
                &self,
                fence: ::baton_core::Fence,
                outcome: ::serde_json::Value,
            ) -> ::baton_core::board::Result<()> {
                $crate::deadline::board_call(
                    self.call_timeout(),
                    "consume",
                    $crate::deadline::Raw(self).consume(fence, outcome),
                )
                .await
            }

            async fn abandon(&self, fence: ::baton_core::Fence) -> ::baton_core::board::Result<()> {
                $crate::deadline::board_call(
                    self.call_timeout(),
                    "abandon",
                    $crate::deadline::Raw(self).abandon(fence),
                )
                .await
            }

            async fn park(
                &self,
                fence: ::baton_core::Fence,
                reason: ::serde_json::Value,
            ) -> ::baton_core::board::Result<()> {
                $crate::deadline::board_call(
                    self.call_timeout(),
                    "park",
                    $crate::deadline::Raw(self).park(fence, reason),
                )
                .await
            }

            async fn requeue(
                &self,
                job: ::baton_core::JobId,
                how: ::baton_core::board::Requeue,
            ) -> ::baton_core::board::Result<::baton_core::board::Job> {
                $crate::deadline::board_call(
                    self.call_timeout(),
                    "requeue",
                    $crate::deadline::Raw(self).requeue(job, how),
                )
                .await
            }

            async fn request_cancel(
                &self,
                job: ::baton_core::JobId,
                how: ::baton_core::board::Cancel,
            ) -> ::baton_core::board::Result<::baton_core::board::Job> {
                $crate::deadline::board_call(
                    self.call_timeout(),
                    "request_cancel",
                    $crate::deadline::Raw(self).request_cancel(job, how),
                )
                .await
            }

            async fn cancel_requests(
                &self,
                owner: ::baton_core::ConductorId,
            ) -> ::baton_core::board::Result<
                ::std::vec::Vec<(::baton_core::JobId, ::baton_core::board::Cancel)>,
            > {
                $crate::deadline::board_call(
                    self.call_timeout(),
                    "cancel_requests",
                    $crate::deadline::Raw(self).cancel_requests(owner),
                )
                .await
            }

            async fn wait_for_cancel(
                &self,
                owner: ::baton_core::ConductorId,
                timeout: ::std::time::Duration,
            ) {
                // A wait: bounded by its own timeout.
                $crate::deadline::Raw(self)
                    .wait_for_cancel(owner, timeout)
                    .await;
            }

            async fn wait_for_end(
                &self,
                job: ::baton_core::JobId,
                timeout: ::std::time::Duration,
            ) -> ::baton_core::board::Result<::baton_core::board::Job> {
                // A wait between two calls (a look at the job before it, and one after):
                // bounded by its own timeout, and by the call timeout for each look.
                $crate::deadline::board_call(
                    timeout.saturating_add(self.call_timeout().saturating_mul(2)),
                    "wait_for_end",
                    $crate::deadline::Raw(self).wait_for_end(job, timeout),
                )
                .await
            }

            async fn release(&self, job: ::baton_core::JobId) -> ::baton_core::board::Result<()> {
                $crate::deadline::board_call(
                    self.call_timeout(),
                    "release",
                    $crate::deadline::Raw(self).release(job),
                )
                .await
            }

            async fn trash(
                &self,
                job: ::baton_core::JobId,
                fence: ::std::option::Option<::baton_core::Fence>,
                reason: ::serde_json::Value,
            ) -> ::baton_core::board::Result<()> {
                $crate::deadline::board_call(
                    self.call_timeout(),
                    "trash",
                    $crate::deadline::Raw(self).trash(job, fence, reason),
                )
                .await
            }

            async fn get(
                &self,
                job: ::baton_core::JobId,
            ) -> ::baton_core::board::Result<::baton_core::board::Job> {
                $crate::deadline::board_call(
                    self.call_timeout(),
                    "get",
                    $crate::deadline::Raw(self).get(job),
                )
                .await
            }

            async fn list(
                &self,
                query: &::baton_core::board::JobQuery,
            ) -> ::baton_core::board::Result<::std::vec::Vec<::baton_core::board::Job>> {
                $crate::deadline::board_call(
                    self.call_timeout(),
                    "list",
                    $crate::deadline::Raw(self).list(query),
                )
                .await
            }

            async fn purge_jobs(
                &self,
                ended_before: ::chrono::DateTime<::chrono::Utc>,
                limit: u32,
            ) -> ::baton_core::board::Result<u64> {
                $crate::deadline::board_call(
                    self.call_timeout(),
                    "purge_jobs",
                    $crate::deadline::Raw(self).purge_jobs(ended_before, limit),
                )
                .await
            }

            async fn wait_for_work(&self, timeout: ::std::time::Duration) {
                // A wait: bounded by its own timeout.
                $crate::deadline::Raw(self).wait_for_work(timeout).await;
            }

            async fn flush_wake_ups(&self) {
                // Best effort: a wake-up not sent only delays idle conductors until they poll.
                let _ = ::tokio::time::timeout(
                    self.call_timeout(),
                    $crate::deadline::Raw(self).flush_wake_ups(),
                )
                .await;
            }

            async fn register(
                &self,
                info: &::baton_core::board::ConductorInfo,
            ) -> ::baton_core::board::Result<()> {
                $crate::deadline::board_call(
                    self.call_timeout().saturating_add($registration),
                    "register",
                    $crate::deadline::Raw(self).register(info),
                )
                .await
            }

            async fn deregister(
                &self,
                id: ::baton_core::ConductorId,
            ) -> ::baton_core::board::Result<()> {
                $crate::deadline::board_call(
                    self.call_timeout(),
                    "deregister",
                    $crate::deadline::Raw(self).deregister(id),
                )
                .await
            }

            async fn conductors(
                &self,
            ) -> ::baton_core::board::Result<::std::vec::Vec<::baton_core::board::ConductorInfo>>
            {
                $crate::deadline::board_call(
                    self.call_timeout(),
                    "conductors",
                    $crate::deadline::Raw(self).conductors(),
                )
                .await
            }

            async fn backlog(
                &self,
            ) -> ::baton_core::board::Result<::std::collections::BTreeMap<::std::string::String, u64>>
            {
                $crate::deadline::board_call(
                    self.call_timeout(),
                    "backlog",
                    $crate::deadline::Raw(self).backlog(),
                )
                .await
            }
        }
    };
}
pub(crate) use bounded_board;

/// [`bounded`] for a store call.
pub(crate) async fn store_call<T>(
    limit: Duration,
    name: &'static str,
    call: impl Future<Output = baton_core::store::Result<T>>,
) -> baton_core::store::Result<T> {
    bounded(limit, name, baton_core::store::Error::Unavailable, call).await
}

/// [`bounded`] for a board call.
pub(crate) async fn board_call<T>(
    limit: Duration,
    name: &'static str,
    call: impl Future<Output = baton_core::board::Result<T>>,
) -> baton_core::board::Result<T> {
    bounded(limit, name, baton_core::board::Error::Unavailable, call).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_timeouts_are_more_than_zero_and_at_most_a_day() {
        assert!(matches!(
            check("call_timeout", Duration::ZERO),
            Err(Error::InvalidTimeout { option: "call_timeout", value, .. }) if value.is_zero()
        ));
        assert!(matches!(
            check("call_timeout", MAX_CALL_TIMEOUT + Duration::from_nanos(1)),
            Err(Error::InvalidTimeout { .. })
        ));
        for ok in [
            Duration::from_nanos(1),
            DEFAULT_CALL_TIMEOUT,
            MAX_CALL_TIMEOUT,
        ] {
            assert_eq!(check("call_timeout", ok).unwrap(), ok);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_past_its_deadline_is_unavailable_naming_it() {
        let started = tokio::time::Instant::now();
        let answer: baton_core::store::Result<()> =
            store_call(Duration::from_secs(2), "commit", std::future::pending()).await;
        assert_eq!(started.elapsed(), Duration::from_secs(2));
        let err = answer.unwrap_err();
        assert!(err.is_transient());
        let source = std::error::Error::source(&err)
            .and_then(|s| s.downcast_ref::<DeadlineExceeded>())
            .unwrap();
        assert_eq!(
            *source,
            DeadlineExceeded {
                call: "commit",
                limit: Duration::from_secs(2)
            }
        );
        assert_eq!(
            source.to_string(),
            "the database did not answer `commit` within 2000ms (the call timeout)"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_in_time_keeps_its_answer() {
        let answer = board_call(Duration::from_secs(2), "get", async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Err::<(), _>(baton_core::board::Error::InvalidJob("x".into()))
        })
        .await;
        assert!(matches!(
            answer,
            Err(baton_core::board::Error::InvalidJob(_))
        ));
    }
}
