//! The pages: static HTML, CSS and JavaScript from `assets/`, reading the JSON API.
//!
//! (A stub: the pages are added by their own change.)

use crate::Console;

/// The routes serving the pages and their assets.
pub(crate) fn router() -> axum::Router<Console> {
    axum::Router::new()
}
