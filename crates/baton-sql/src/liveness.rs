//! The liveness locks of the conductors registered through a PostgreSQL job board.
//!
//! A registered conductor holds a session-level advisory lock (keyed by [`lock_key`]) on a
//! connection of its own, kept idle for as long as it lives: when its process dies, the server
//! closes the connection and drops the lock, and claims treat its jobs as free (see
//! `PostgresJobBoard`).
//!
//! Registering checks the connection (a ping) or opens a new one and takes the lock, each
//! bounded by [`LIVENESS_WAIT`], and never while holding anything a claim needs: a claim only
//! asks, under a short synchronous lock, whether its owner holds its lock here. The lock may
//! be held by another session for a while (a connection of this conductor that died on this
//! side but not yet on the server's, or the same conductor registered through another
//! board), so it is taken with `pg_try_advisory_lock`, tried again with backoff until the
//! bound, rather than with `pg_advisory_lock`, which waits for as long as the other session
//! holds it: a registration that waited so long held up every claim of its board, and the
//! conductor's loop with it (which then saw no shutdown signal either).
//!
//! A conductor whose connection died while it lives (a database restart, a crash of another
//! backend that made the server drop every session, a failover, a network blip) re-takes its
//! lock at its next registration. Until then, and for a grace after it, its board does not
//! trust other conductors' free locks either: the same event may have freed theirs, and they
//! re-take them at their own next registrations (see [`Liveness::settled`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use baton_core::board;
use baton_core::ConductorId;
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};
use tokio::time::{timeout_at, Instant};

use crate::board_common::db;

/// How long registering a conductor waits, at most, for its liveness connection to answer a
/// ping, for a new one to open, or for the lock to be free; past it the registration fails
/// with [`board::Error::Unavailable`] (a conductor tries again at its next heartbeat).
pub(crate) const LIVENESS_WAIT: Duration = Duration::from_secs(2);

/// The advisory lock key of a conductor: 62 bits of its id (positive, so its halves map to
/// `pg_locks`' unsigned `classid`/`objid` simply).
pub(crate) fn lock_key(id: ConductorId) -> i64 {
    let bytes = id.as_uuid().as_u128();
    let low = u64::try_from(bytes & u128::from(u64::MAX)).unwrap_or(0);
    let high = u64::try_from(bytes >> 64).unwrap_or(0);
    i64::try_from((low ^ high) & ((1u64 << 62) - 1)).unwrap_or(0)
}

/// A conductor's liveness connection, holding its lock; `None` once given up. Locked only to
/// ping or close it, by the registrations of that one conductor.
type Held = Arc<tokio::sync::Mutex<Option<PgConnection>>>;

/// The liveness connections of the conductors registered through a board (and its clones).
#[derive(Debug, Default)]
pub(crate) struct Liveness {
    conns: std::sync::Mutex<HashMap<ConductorId, Held>>,
    /// The conductors whose liveness connection died while registered here: when their lock
    /// was taken again (`None`: not yet).
    retaken: std::sync::Mutex<HashMap<ConductorId, Option<Instant>>>,
}

fn unavailable(detail: String) -> board::Error {
    board::Error::Unavailable(detail.into())
}

impl Liveness {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ConductorId, Held>> {
        // Each change is one insert or removal: a poisoned map is still a good one.
        self.conns
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn retaken(&self) -> std::sync::MutexGuard<'_, HashMap<ConductorId, Option<Instant>>> {
        self.retaken
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether `id` holds its lock through this board, as far as it knows (it learns that a
    /// connection died at the next registration). Never waits for a registration.
    pub(crate) fn holds(&self, id: ConductorId) -> bool {
        self.lock().contains_key(&id)
    }

    /// Whether `id` may trust other conductors' free locks as their deaths: unless its own
    /// connection died, not before it took its lock again and `grace` passed since. Whatever
    /// freed its lock (a restart, a failover, every session of the server dropped) may have
    /// freed everyone's, and the others take theirs again at their next registrations.
    pub(crate) fn settled(&self, id: ConductorId, grace: Duration) -> bool {
        match self.retaken().get(&id) {
            None => true,
            Some(None) => false,
            Some(Some(at)) => at.elapsed() >= grace,
        }
    }

    /// Makes sure `id` holds its lock: its connection answers, or a new one takes the lock.
    ///
    /// # Errors
    /// [`board::Error::Unavailable`] if that takes longer than [`LIVENESS_WAIT`] (the lock
    /// held by another session all along, the server not answering), or the server cannot be
    /// reached.
    pub(crate) async fn keep(
        &self,
        id: ConductorId,
        connect: &PgConnectOptions,
    ) -> Result<(), board::Error> {
        let deadline = Instant::now() + LIVENESS_WAIT;
        if self.answers(id, deadline).await {
            return Ok(());
        }
        let conn = take(id, connect, deadline).await?;
        self.lock()
            .insert(id, Arc::new(tokio::sync::Mutex::new(Some(conn))));
        if let Some(at) = self.retaken().get_mut(&id) {
            *at = Some(Instant::now());
        }
        Ok(())
    }

    /// Whether `id`'s connection answers a ping before `deadline`; one that does not is
    /// dropped (closing it on this side: the server drops its lock once it notices).
    async fn answers(&self, id: ConductorId, deadline: Instant) -> bool {
        let Some(held) = self.lock().get(&id).cloned() else {
            return false;
        };
        let mut slot = held.lock().await;
        let answered = match slot.as_mut() {
            Some(conn) => matches!(timeout_at(deadline, conn.ping()).await, Ok(Ok(()))),
            None => false,
        };
        if !answered {
            slot.take();
            drop(slot);
            let mut conns = self.lock();
            if conns.get(&id).is_some_and(|h| Arc::ptr_eq(h, &held)) {
                conns.remove(&id);
            }
            drop(conns);
            self.retaken().insert(id, None);
        }
        answered
    }

    /// Gives up `id`'s lock: its connection is closed (within [`LIVENESS_WAIT`]; dropped
    /// otherwise, which the server notices in time).
    pub(crate) async fn release(&self, id: ConductorId) {
        self.retaken().remove(&id);
        let held = self.lock().remove(&id);
        if let Some(held) = held {
            let conn = held.lock().await.take();
            if let Some(conn) = conn {
                let _ = tokio::time::timeout(LIVENESS_WAIT, conn.close()).await;
            }
        }
    }
}

/// Opens a connection and takes `id`'s lock on it, trying again with backoff while another
/// session holds it, until `deadline`.
async fn take(
    id: ConductorId,
    connect: &PgConnectOptions,
    deadline: Instant,
) -> Result<PgConnection, board::Error> {
    let late = || {
        unavailable(format!(
            "conductor {id}: its liveness lock could not be taken within {LIVENESS_WAIT:?}"
        ))
    };
    let mut conn = timeout_at(deadline, PgConnection::connect_with(connect))
        .await
        .map_err(|_| late())?
        .map_err(db)?;
    let mut pause = Duration::from_millis(10);
    loop {
        let tried = sqlx::query_scalar::<_, bool>("SELECT pg_try_advisory_lock($1)")
            .bind(lock_key(id))
            .fetch_one(&mut conn);
        if timeout_at(deadline, tried)
            .await
            .map_err(|_| late())?
            .map_err(db)?
        {
            return Ok(conn);
        }
        if Instant::now() + pause >= deadline {
            return Err(unavailable(format!(
                "conductor {id}: its liveness lock is held by another session"
            )));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}
