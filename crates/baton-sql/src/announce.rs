//! Listening to what a PostgreSQL database announces: the steps its stores commit (when they
//! announce them, [`PostgresOptions::announce_steps`](crate::PostgresOptions::announce_steps))
//! and its job board's posts and ends. The console follows runs live with it.

use baton_core::FlowId;
use sqlx::postgres::PgListener;

use crate::error::{classify, Error};
use crate::postgres::{job_channel, parse_step_announcement, step_channel};

/// One piece of news from [`Announcements::next`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Announcement {
    /// Run `flow` committed its step `seq`.
    Step {
        /// The run.
        flow: FlowId,
        /// The step's number in the run's log.
        seq: u64,
    },
    /// Jobs were posted, or a job someone waits for ended (the board says no more).
    Jobs,
    /// The connection dropped and was opened again: what was announced meanwhile is lost, so
    /// a listener should look again at whatever it follows.
    Lost,
}

/// A connection `LISTEN`ing on the channels of a store's schema.
#[derive(Debug)]
pub struct Announcements {
    listener: PgListener,
    steps: String,
}

impl Announcements {
    /// Connects to the database at `url` and listens for the announcements of the store and
    /// board in `schema`.
    ///
    /// # Errors
    /// [`Error::Store`] when the database cannot be reached or refuses the `LISTEN`;
    /// [`Error::Config`] for a malformed URL.
    ///
    /// # Cancel safety
    /// Cancel safe: dropped, it leaves nothing behind.
    pub async fn connect(url: &str, schema: &str) -> Result<Self, Error> {
        let steps = step_channel(schema);
        let jobs = job_channel(schema);
        let mut listener = PgListener::connect(url).await.map_err(|e| match e {
            sqlx::Error::Configuration(e) => Error::Config {
                detail: e.to_string(),
            },
            other => Error::Store(classify(other)),
        })?;
        listener
            .listen_all([steps.as_str(), jobs.as_str()])
            .await
            .map_err(|e| Error::Store(classify(e)))?;
        Ok(Self { listener, steps })
    }

    /// The next announcement: waits for one. After [`Announcement::Lost`] the connection is
    /// open again (or the next call fails).
    ///
    /// # Errors
    /// [`Error::Store`] when the connection fails and cannot be opened again.
    ///
    /// # Cancel safety
    /// A wait given up on may lose the announcement it was reading, nothing else: the
    /// connection stays usable. A listener that gives up waits only to stop (as the console
    /// does) loses nothing it needs.
    pub async fn next(&mut self) -> Result<Announcement, Error> {
        loop {
            match self.listener.try_recv().await {
                Ok(Some(n)) if n.channel() == self.steps => {
                    if let Some((flow, seq)) = parse_step_announcement(n.payload()) {
                        return Ok(Announcement::Step { flow, seq });
                    }
                }
                Ok(Some(_)) => return Ok(Announcement::Jobs),
                Ok(None) => return Ok(Announcement::Lost),
                Err(e) => return Err(Error::Store(classify(e))),
            }
        }
    }
}
