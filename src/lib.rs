//! baton: durable, distributed workflows.
//!
//! Flows are DAGs of tasks with `execute` and `revert`; an engine runs them and persists every
//! step before acting on it, so a flow interrupted at any point resumes where it stopped, in
//! the same process or another one. This facade re-exports [`baton_core`], and the SQL stores
//! of `baton-sql` as [`sql`] (features `sqlite`, on by default, and `postgres`).
//!
//! See the repository's `docs/` for the user guide.

#![forbid(unsafe_code)]

pub use baton_core::*;

/// Durable stores on SQLite and PostgreSQL (`baton-sql`): [`sql::connect`] opens one by URL.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub use baton_sql as sql;
