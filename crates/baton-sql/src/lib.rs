//! baton's SQL stores: [`baton_core::store::Store`] implementations on SQLite and PostgreSQL,
//! built on sqlx.
//!
//! A store keeps flow runs, their atoms and the history of their transitions, so that an engine
//! can resume a run from wherever it stopped, in another process if need be. Both stores keep
//! exactly the semantics of `baton_core::MemoryStore` (the conformance suite in
//! `baton-testkit` holds them to it) and add durability:
//!
//! - [`SqliteStore`] (feature `sqlite`): one database file in WAL mode, for one host. Several
//!   processes of that host may share it.
//! - [`PostgresStore`] (feature `postgres`): a PostgreSQL database shared by a fleet of
//!   engines. Its tables live in their own schema (`baton` unless configured otherwise), and a
//!   commit is one round trip.
//!
//! On both, a commit appends one row to the flow's step log (`steps`): the primary key makes
//! the append a compare-and-set, and a fenced append checks the claim in the same statement.
//!
//! Both apply their migrations (embedded in the binary) when they open a database, safely when
//! several processes open the same one at once. The schema has seven tables: `flows`, `atoms`,
//! `steps` and `history` (the store; `history` only holds what baton wrote before the step
//! log), `fences` (the current claim token of each job, for fenced
//! writes), and `jobs` and `conductors` (the job boards, [`SqliteJobBoard`] and
//! [`PostgresJobBoard`], which share the store's database).
//!
//! # Quick start
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use baton_core::{Atom, Engine, Flow, FlowState};
//! use serde_json::json;
//!
//! // `sqlite://baton.db` for a file, `postgres://user@host/db` for PostgreSQL.
//! let store = baton_sql::connect("sqlite::memory:").await?;
//! let flow = Flow::linear("hello")
//!     .add(Atom::from_fn("greet", |_| async { Ok(json!("hello")) }).provides("greeting"))
//!     .compile()?;
//! let outcome = Engine::from_arc(store.clone()).start(&flow, Default::default()).await?;
//! assert_eq!(outcome.state, FlowState::Success);
//! assert_eq!(store.history(outcome.flow).await?.len(), 4);
//! # Ok::<_, Box<dyn std::error::Error>>(()) }).unwrap();
//! ```
//!
//! To configure a store, open it with its options:
//!
//! ```no_run
//! # async fn f() -> Result<(), baton_sql::Error> {
//! use baton_sql::{PostgresOptions, PostgresStore, SqliteOptions, SqliteStore, Synchronous};
//!
//! // Commits that survive a power loss, not just a killed process.
//! let sqlite =
//!     SqliteStore::open_with("sqlite://baton.db", SqliteOptions::new().synchronous(Synchronous::Full))
//!         .await?;
//! // Tables in schema `workflows` instead of `baton`.
//! let pg = PostgresStore::connect_with(
//!     "postgres://baton@db.internal/ops",
//!     PostgresOptions::new().schema("workflows"),
//! )
//! .await?;
//! # Ok(()) }
//! ```
//!
//! # Errors
//!
//! Opening a store reports this crate's [`Error`]; a store's operations report
//! [`baton_core::store::Error`] like every store. A database that cannot be reached (connection
//! refused or lost, a pool timed out, PostgreSQL shutting down, failing over, out of
//! connections, a database or role it does not know, a serialization failure or deadlock,
//! SQLite busy past its timeout) is `Unavailable`, which the engine retries, with the
//! database's message as its source; rows it cannot read are `Corrupt`, naming the flow and
//! atom, and rows of a newer version of baton are `TooNew`; JSON values over the configured
//! limit (1 MiB by default: results, failures, a run's inputs, a job's parameters) are
//! `TooLarge`, and nothing of their batch is written.
//!
//! # Deadlines
//!
//! Every call of a store or a job board ends within the store's call timeout (5 s unless
//! opened with another: [`SqliteOptions::call_timeout`], [`PostgresOptions::call_timeout`],
//! [`OpenOptions::call_timeout`]). A call the database does not answer in time, a server
//! that went silent say, is `Unavailable`, with a [`DeadlineExceeded`] as its source; the
//! connection it was using is closed. See [`deadline`] for what is bounded where, and why.
//!
//! # Features
//!
//! `sqlite` and `postgres` (both on by default) compile in each backend. [`connect`] answers
//! [`Error::BackendDisabled`] for a URL whose backend is not compiled in.

#![forbid(unsafe_code)]

#[cfg(feature = "postgres")]
mod announce;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod board_common;
#[cfg(feature = "postgres")]
mod board_postgres;
#[cfg(feature = "sqlite")]
mod board_sqlite;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod codec;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod counts;
pub mod deadline;
mod error;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
#[doc(hidden)]
pub mod fuzzing;
#[cfg(feature = "postgres")]
mod liveness;
#[cfg(feature = "sqlite")]
mod lockfile;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod rfc3339;
#[cfg(feature = "sqlite")]
pub mod spin;
#[cfg(feature = "sqlite")]
mod sqlite;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod steplog;
mod url;
#[cfg(feature = "postgres")]
mod wake;

use std::sync::Arc;

use baton_core::store::Store;

#[cfg(feature = "postgres")]
pub use announce::{Announcement, Announcements};
#[cfg(feature = "postgres")]
pub use board_postgres::{
    PostgresJobBoard, DEFAULT_RESTART_GRACE, DEFAULT_VACUUM_EVERY, DEFAULT_WAKE_WINDOW,
};
#[cfg(feature = "sqlite")]
pub use board_sqlite::SqliteJobBoard;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub use codec::{StepFormat, DEFAULT_MAX_VALUE_BYTES};
pub use deadline::{DeadlineExceeded, DEFAULT_CALL_TIMEOUT, MAX_CALL_TIMEOUT};
pub use error::{Error, Result};
#[cfg(feature = "postgres")]
pub use postgres::{
    job_channel, parse_step_announcement, step_channel, PostgresOptions, PostgresStore,
    DEFAULT_SCHEMA,
};
#[cfg(feature = "sqlite")]
pub use sqlite::{SqliteOptions, SqliteStore, Synchronous};
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub use steplog::Checkpoints;
pub use url::redact_url;

/// The backend a URL names, from its scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Backend {
    /// `sqlite:`
    Sqlite,
    /// `postgres:` or `postgresql:`
    Postgres,
}

impl Backend {
    /// The backend `url` names.
    ///
    /// # Errors
    /// [`Error::UnknownScheme`] if the scheme is none of `sqlite`, `postgres`, `postgresql`.
    /// It names the scheme found only if the text before the first `:` is one (letters,
    /// digits, `+`, `-`, `.`, starting with a letter), and is empty otherwise: text that is
    /// not a scheme may be a user name and password given without one.
    pub fn of_url(url: &str) -> Result<Self> {
        let scheme = url.split_once(':').map_or("", |(scheme, _)| scheme);
        match scheme.to_ascii_lowercase().as_str() {
            "sqlite" => Ok(Backend::Sqlite),
            "postgres" | "postgresql" => Ok(Backend::Postgres),
            _ => {
                let is_scheme = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
                    && scheme
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
                Err(Error::UnknownScheme {
                    scheme: if is_scheme {
                        scheme.to_owned()
                    } else {
                        String::new()
                    },
                })
            }
        }
    }
}

/// Opens the store at `url` with default options, choosing the backend by the URL's scheme:
/// `sqlite:` ([`SqliteStore`]), `postgres:` or `postgresql:` ([`PostgresStore`]). The
/// migrations are applied.
///
/// # Errors
/// [`Error::UnknownScheme`] for another scheme, [`Error::BackendDisabled`] when the backend is
/// not compiled in, and the errors of the backend's `open`/`connect`.
///
/// # Cancel safety
/// Not cancel safe: dropped midway, the migrations may or may not have been applied (each one
/// whole or not at all).
pub async fn connect(url: &str) -> Result<Arc<dyn Store>> {
    match Backend::of_url(url)? {
        #[cfg(feature = "sqlite")]
        Backend::Sqlite => Ok(Arc::new(SqliteStore::open(url).await?)),
        #[cfg(not(feature = "sqlite"))]
        Backend::Sqlite => Err(Error::BackendDisabled {
            backend: "sqlite",
            feature: "sqlite",
        }),
        #[cfg(feature = "postgres")]
        Backend::Postgres => Ok(Arc::new(PostgresStore::connect(url).await?)),
        #[cfg(not(feature = "postgres"))]
        Backend::Postgres => Err(Error::BackendDisabled {
            backend: "postgres",
            feature: "postgres",
        }),
    }
}

/// A store and the job board that shares its database, as [`open`] returns them.
#[derive(Debug, Clone)]
pub struct Backends {
    /// The store.
    pub store: Arc<dyn Store>,
    /// The job board, whose claims fence the store's flows.
    pub board: Arc<dyn baton_core::board::JobBoard>,
}

/// Opens the store at `url` and the job board beside it (same database), choosing the backend
/// by the URL's scheme like [`connect`].
///
/// # Errors
/// As [`connect`].
///
/// # Cancel safety
/// As [`connect`].
pub async fn open(url: &str) -> Result<Backends> {
    open_with(url, OpenOptions::new()).await
}

/// What [`open_with`] may be told beyond the URL.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
#[must_use]
pub struct OpenOptions {
    /// The PostgreSQL schema to use instead of the default (`baton`). Refused for SQLite, which
    /// has no schemas.
    pub schema: Option<String>,
    /// How long any call of the store or the board may take (see [`deadline`]); `None` for
    /// [`DEFAULT_CALL_TIMEOUT`]. Checked when the store opens: more than zero, at most
    /// [`MAX_CALL_TIMEOUT`].
    pub call_timeout: Option<std::time::Duration>,
    /// PostgreSQL: announce each step the store appends
    /// ([`PostgresOptions::announce_steps`]), for the console to follow runs at once. Ignored
    /// for SQLite, which has nobody to tell. Default off.
    pub announce_steps: bool,
}

impl OpenOptions {
    /// The defaults: the default schema and call timeout.
    pub fn new() -> Self {
        Self::default()
    }

    /// Bounds every call of the store and the board by `timeout` (see [`deadline`]).
    pub fn call_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.call_timeout = Some(timeout);
        self
    }

    /// Uses the PostgreSQL schema `schema`.
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = Some(schema.into());
        self
    }

    /// Sets [`OpenOptions::announce_steps`].
    pub fn announce_steps(mut self, announce: bool) -> Self {
        self.announce_steps = announce;
        self
    }
}

/// [`open`] with options.
///
/// # Errors
/// As [`open`], and [`Error::Config`] if a schema is given for SQLite,
/// [`Error::InvalidSchema`] if it is not a plain lowercase identifier,
/// [`Error::InvalidTimeout`] for a call timeout of zero or over [`MAX_CALL_TIMEOUT`].
///
/// # Cancel safety
/// As [`connect`].
pub async fn open_with(url: &str, options: OpenOptions) -> Result<Backends> {
    let backend = Backend::of_url(url)?;
    if backend == Backend::Sqlite && options.schema.is_some() {
        return Err(Error::Config {
            detail: "a schema applies to PostgreSQL only; a SQLite database has none".into(),
        });
    }
    match backend {
        #[cfg(feature = "sqlite")]
        Backend::Sqlite => {
            let mut sqlite = SqliteOptions::new();
            if let Some(timeout) = options.call_timeout {
                sqlite = sqlite.call_timeout(timeout);
            }
            let store = SqliteStore::open_with(url, sqlite).await?;
            let board = SqliteJobBoard::new(&store);
            Ok(Backends {
                store: Arc::new(store),
                board: Arc::new(board),
            })
        }
        #[cfg(not(feature = "sqlite"))]
        Backend::Sqlite => Err(Error::BackendDisabled {
            backend: "sqlite",
            feature: "sqlite",
        }),
        #[cfg(feature = "postgres")]
        Backend::Postgres => {
            let mut pg = PostgresOptions::new();
            if let Some(schema) = options.schema {
                pg = pg.schema(schema);
            }
            if let Some(timeout) = options.call_timeout {
                pg = pg.call_timeout(timeout);
            }
            let store =
                PostgresStore::connect_with(url, pg.announce_steps(options.announce_steps)).await?;
            let board = PostgresJobBoard::new(&store);
            Ok(Backends {
                store: Arc::new(store),
                board: Arc::new(board),
            })
        }
        #[cfg(not(feature = "postgres"))]
        Backend::Postgres => Err(Error::BackendDisabled {
            backend: "postgres",
            feature: "postgres",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes_pick_backends() {
        assert_eq!(Backend::of_url("sqlite::memory:").unwrap(), Backend::Sqlite);
        assert_eq!(Backend::of_url("sqlite://a.db").unwrap(), Backend::Sqlite);
        assert_eq!(
            Backend::of_url("postgres://h/db").unwrap(),
            Backend::Postgres
        );
        assert_eq!(
            Backend::of_url("PostgreSQL://h/db").unwrap(),
            Backend::Postgres
        );
        assert!(matches!(
            Backend::of_url("mysql://h/db"),
            Err(Error::UnknownScheme { scheme }) if scheme == "mysql"
        ));
        assert!(matches!(
            Backend::of_url("baton.db"),
            Err(Error::UnknownScheme { scheme }) if scheme.is_empty()
        ));
    }

    /// A URL given without its scheme may begin with a user name and password: the error
    /// names a scheme only when the text is one.
    #[test]
    fn an_unknown_scheme_is_named_only_when_it_is_one() {
        for (url, named) in [
            ("mysql://h/db", "mysql"),
            ("git+ssh://h/db", "git+ssh"),
            ("s3cret@db.internal:5432/ops", ""),
            ("//baton:s3cret@db/ops", ""),
            ("1x:y", ""),
        ] {
            assert!(
                matches!(Backend::of_url(url), Err(Error::UnknownScheme { scheme }) if scheme == named),
                "{url}"
            );
        }
    }
}
