//! The crate's error type, and how sqlx errors map onto the store's error kinds.

use std::error::Error as StdError;

use baton_core::store;

/// What can go wrong when opening a SQL store.
///
/// Once a store is open, its operations report [`baton_core::store::Error`] like every other
/// store; this type covers what comes before: choosing a backend from a URL, validating
/// options, connecting and migrating.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The URL's scheme names no store baton knows.
    #[error(
        "unknown store url scheme {scheme:?}: expected `sqlite:`, `postgres:` or `postgresql:`"
    )]
    UnknownScheme {
        /// The scheme found (the text before the first `:`).
        scheme: String,
    },
    /// The URL names a backend that this build of baton-sql was compiled without.
    #[error("the {backend} store is not compiled in: enable the `{feature}` feature of baton-sql")]
    BackendDisabled {
        /// `sqlite` or `postgres`.
        backend: &'static str,
        /// The cargo feature that compiles it in.
        feature: &'static str,
    },
    /// The URL or the options are not valid.
    #[error("invalid store configuration: {detail}")]
    Config {
        /// What is wrong.
        detail: String,
    },
    /// A timeout option is zero or longer than allowed: the option, the value and the longest
    /// allowed.
    #[error("{option} {value:?} is not a usable timeout: give more than zero and at most {max:?}")]
    InvalidTimeout {
        /// The option (e.g. `call_timeout`).
        option: &'static str,
        /// The value given.
        value: std::time::Duration,
        /// The longest value allowed.
        max: std::time::Duration,
    },
    /// The PostgreSQL schema name is not a plain lowercase identifier.
    #[error(
        "invalid schema name {schema:?}: use 1 to 63 lowercase letters, digits or underscores, not starting with a digit"
    )]
    InvalidSchema {
        /// The name given.
        schema: String,
    },
    /// Applying the migrations failed (for instance an applied migration was edited, or the
    /// database holds migrations of a newer baton).
    #[error("migrating the store's schema failed")]
    Migrate(#[source] Box<dyn StdError + Send + Sync>),
    /// The database could not be reached or answered with an error. `Unavailable` inside means
    /// retrying later may work.
    #[error(transparent)]
    Store(#[from] store::Error),
}

impl Error {
    /// Whether opening may succeed if retried later unchanged (the database was unreachable).
    #[must_use]
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Store(e) if e.is_transient())
    }
}

/// The result type of this crate's own operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// SQLite primary result codes that mean "try again later": `SQLITE_BUSY` (another connection
/// holds the lock past the busy timeout), `SQLITE_LOCKED`, `SQLITE_IOERR`, `SQLITE_CANTOPEN`
/// and `SQLITE_FULL`.
#[cfg(feature = "sqlite")]
const SQLITE_TRANSIENT: [i64; 5] = [5, 6, 10, 13, 14];

/// SQLite primary result codes that mean the database file is damaged: `SQLITE_CORRUPT`
/// ("database disk image is malformed") and `SQLITE_NOTADB` ("file is not a database").
#[cfg(feature = "sqlite")]
const SQLITE_CORRUPT: [i64; 2] = [11, 26];

/// Maps a sqlx error onto the store's error kinds: what retrying may cure becomes
/// [`store::Error::Unavailable`], a damaged database [`store::Error::CorruptDatabase`],
/// everything else [`store::Error::Backend`]. Each keeps the sqlx error (and so the server's
/// message) as its source.
///
/// Transient: I/O errors (connection refused, reset, closed), TLS failures, a pool that timed
/// out waiting for a connection; PostgreSQL's refusals that an outage, a failover or an
/// operator's fix cures (see [`POSTGRES_TRANSIENT`]); and SQLite's busy, locked, I/O,
/// full-disk and cannot-open codes. A pool closed on purpose is not transient.
/// Damaged: SQLite's corrupt and not-a-database codes.
pub(crate) fn classify(err: sqlx::Error) -> store::Error {
    if is_transient(&err) {
        store::Error::Unavailable(Box::new(err))
    } else if is_corrupt_database(&err) {
        store::Error::CorruptDatabase(Box::new(err))
    } else {
        store::Error::Backend(Box::new(err))
    }
}

fn is_transient(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::PoolTimedOut => true,
        sqlx::Error::Database(db) => transient_database_error(db.as_ref()),
        _ => false,
    }
}

fn transient_database_error(db: &dyn sqlx::error::DatabaseError) -> bool {
    #[cfg(feature = "postgres")]
    if let Some(pg) = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
        return transient_postgres_code(pg.code());
    }
    #[cfg(feature = "sqlite")]
    if let Some(code) = sqlite_code(db) {
        return transient_sqlite_code(code);
    }
    let _ = db;
    false
}

/// The PostgreSQL SQLSTATEs (whole classes end in `*`) that mean "the database cannot be
/// reached now", which retrying may cure:
///
/// - `08*`: connection exceptions;
/// - `57P0*`: the server is shutting down or starting (admin, crash, cannot connect now), and
///   `57014`, a statement the server cancelled;
/// - `3D000` (the database does not exist), `28*` (the role or its password is refused):
///   the database cannot be reached until an operator makes it or fixes the credentials;
/// - `53000`, `53100`, `53200`, `53300`: the server is out of resources (disk, memory,
///   connections); `53400`, a configuration limit, is not among them;
/// - `40001` (serialization failure), `40P01` (deadlock detected) and `40003` (statement
///   completion unknown): the transaction was rolled back, and another try may pass;
/// - `25006`: a read-only transaction, as on a primary that became a standby in a failover.
#[cfg(feature = "postgres")]
pub(crate) const POSTGRES_TRANSIENT: [&str; 13] = [
    "08*", "57P0*", "57014", "3D000", "28*", "53000", "53100", "53200", "53300", "40001", "40P01",
    "40003", "25006",
];

/// The result code of an error SQLite reported; `None` for any other database's.
#[cfg(feature = "sqlite")]
fn sqlite_code(db: &dyn sqlx::error::DatabaseError) -> Option<i64> {
    db.try_downcast_ref::<sqlx::sqlite::SqliteError>()?;
    db.code()?.parse().ok()
}

fn is_corrupt_database(err: &sqlx::Error) -> bool {
    #[cfg(feature = "sqlite")]
    if let sqlx::Error::Database(db) = err {
        return sqlite_code(db.as_ref()).is_some_and(corrupt_sqlite_code);
    }
    let _ = err;
    false
}

#[cfg(feature = "sqlite")]
fn corrupt_sqlite_code(code: i64) -> bool {
    SQLITE_CORRUPT.contains(&(code & 0xff))
}

#[cfg(feature = "postgres")]
fn transient_postgres_code(code: &str) -> bool {
    POSTGRES_TRANSIENT
        .iter()
        .any(|known| match known.strip_suffix('*') {
            Some(class) => code.starts_with(class),
            None => code == *known,
        })
}

#[cfg(feature = "sqlite")]
fn transient_sqlite_code(code: i64) -> bool {
    // Extended result codes carry the primary code in their low byte.
    SQLITE_TRANSIENT.contains(&(code & 0xff))
}

/// Whether the database refused a row because its key exists.
#[allow(dead_code)] // not every feature combination uses it
pub(crate) fn is_unique_violation(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .is_some_and(sqlx::error::DatabaseError::is_unique_violation)
}

/// Maps a migration failure: a database that cannot be reached is [`Error::Store`] (transient),
/// anything else [`Error::Migrate`].
#[allow(dead_code)] // not every feature combination uses it
pub(crate) fn migrate(err: sqlx::migrate::MigrateError) -> Error {
    match err {
        sqlx::migrate::MigrateError::Execute(e) if is_transient(&e) => Error::Store(classify(e)),
        other => Error::Migrate(Box::new(other)),
    }
}

/// A `Backend` error with a message of our own (for answers the store cannot make sense of).
#[allow(dead_code)] // not every feature combination uses it
pub(crate) fn backend(msg: impl Into<String>) -> store::Error {
    store::Error::Backend(msg.into().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_and_pool_timeouts_are_transient() {
        let refused = sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(classify(refused).is_transient());
        assert!(classify(sqlx::Error::PoolTimedOut).is_transient());
        assert!(!classify(sqlx::Error::PoolClosed).is_transient());
        assert!(!classify(sqlx::Error::RowNotFound).is_transient());
    }

    #[cfg(feature = "postgres")]
    #[test]
    fn postgres_refusals_retrying_may_cure_are_transient() {
        for code in [
            "08000", "08006", "08001", "57P01", "57P02", "57P03", "57014", "3D000", "28000",
            "28P01", "53000", "53100", "53200", "53300", "40001", "40P01", "40003", "25006",
        ] {
            assert!(transient_postgres_code(code), "{code}");
        }
        for code in [
            "23505", "42P01", "53400", "40002", "25001", "57000", "BT004", "",
        ] {
            assert!(!transient_postgres_code(code), "{code}");
        }
    }

    #[cfg(feature = "sqlite")]
    #[test]
    fn sqlite_busy_and_io_codes_are_transient() {
        // SQLITE_BUSY, SQLITE_BUSY_SNAPSHOT, SQLITE_IOERR_WRITE
        for code in [5, 517, 778] {
            assert!(transient_sqlite_code(code), "{code}");
        }
        // SQLITE_CONSTRAINT_PRIMARYKEY, SQLITE_ERROR
        for code in [1555, 1] {
            assert!(!transient_sqlite_code(code), "{code}");
        }
    }

    #[cfg(feature = "sqlite")]
    #[test]
    fn sqlite_corrupt_and_not_a_database_codes_are_corruption() {
        // SQLITE_CORRUPT, SQLITE_CORRUPT_INDEX, SQLITE_NOTADB
        for code in [11, 779, 26] {
            assert!(corrupt_sqlite_code(code), "{code}");
            assert!(!transient_sqlite_code(code), "{code}");
        }
        // SQLITE_BUSY, SQLITE_ERROR, SQLITE_CONSTRAINT_PRIMARYKEY
        for code in [5, 1, 1555] {
            assert!(!corrupt_sqlite_code(code), "{code}");
        }
    }
}
