//! `/metrics`: the Prometheus text exposition.
//!
//! (A stub: the metrics are added by their own change.)

use crate::Console;

/// The route serving `/metrics`.
pub(crate) fn router() -> axum::Router<Console> {
    axum::Router::new()
}
