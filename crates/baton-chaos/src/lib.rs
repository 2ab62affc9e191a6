//! Support for baton's process-level crash tests: how to open a store for a test, from a URL
//! and an optional PostgreSQL schema, in the child and in the test alike.

#![forbid(unsafe_code)]

use std::sync::Arc;

use baton_core::store::Store;

/// Opens the store at `url`; for PostgreSQL, in `schema` if given (so each test has its own).
///
/// # Errors
/// The backend's errors.
pub async fn open(url: &str, schema: Option<&str>) -> Result<Arc<dyn Store>, baton_sql::Error> {
    match (baton_sql::Backend::of_url(url)?, schema) {
        (baton_sql::Backend::Postgres, Some(schema)) => Ok(Arc::new(
            baton_sql::PostgresStore::connect_with(
                url,
                baton_sql::PostgresOptions::new().schema(schema),
            )
            .await?,
        )),
        _ => baton_sql::connect(url).await,
    }
}
