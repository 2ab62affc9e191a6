//! The pages: static HTML, CSS and JavaScript from `assets/`, compiled into the binary, reading
//! the JSON API.
//!
//! Every page route (`/flows`, `/flows/{id}`, `/jobs`, `/jobs/{id}`, `/conductors`) serves the
//! same HTML document; its script (`assets/console.js`) reads the path and draws the page from
//! `/api/`, and follows a run live from `/api/events`. `/` sends the browser to `/flows`. The
//! files are hand-written, with no build step: what is in `assets/` is what is served, at
//! `/assets/<name>`.
//!
//! The HTML has no inline script and no `style` attribute, so the console's
//! Content-Security-Policy (`default-src 'self'`) holds for it; the scripts set styles through
//! the DOM, which that policy allows.

use axum::extract::Path;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

use crate::Console;

/// The document every page route serves.
const PAGE: &str = include_str!("../assets/console.html");

/// One file under `/assets/`.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

/// An [`Asset`] of `assets/`, with its content type.
macro_rules! asset {
    ($name:literal, $content_type:literal) => {
        Asset {
            name: $name,
            content_type: $content_type,
            body: include_bytes!(concat!("../assets/", $name)),
        }
    };
}

/// The files served under `/assets/`, by name.
const ASSETS: &[Asset] = &[
    asset!("console.js", "text/javascript; charset=utf-8"),
    asset!("ui.js", "text/javascript; charset=utf-8"),
    asset!("graph.js", "text/javascript; charset=utf-8"),
    asset!("console.css", "text/css; charset=utf-8"),
    asset!("favicon.svg", "image/svg+xml"),
];

/// The routes serving the pages and their assets.
pub(crate) fn router() -> axum::Router<Console> {
    axum::Router::new()
        .route("/", get(|| async { Redirect::to("/flows") }))
        .route("/flows", get(page))
        .route("/flows/{id}", get(page))
        .route("/jobs", get(page))
        .route("/jobs/{id}", get(page))
        .route("/conductors", get(page))
        .route("/assets/{name}", get(asset))
        .route(
            "/favicon.ico",
            get(|| async { Redirect::to("/assets/favicon.svg") }),
        )
}

/// Revalidated on every load, so a console upgraded in place never runs an old script
/// against a new API (the files are small; the server answers from memory).
const NO_CACHE: HeaderValue = HeaderValue::from_static("no-cache");

async fn page() -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (header::CACHE_CONTROL, NO_CACHE),
        ],
        PAGE,
    )
        .into_response()
}

async fn asset(Path(name): Path<String>) -> Response {
    match ASSETS.iter().find(|a| a.name == name) {
        Some(a) => (
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(a.content_type),
                ),
                (header::CACHE_CONTROL, NO_CACHE),
            ],
            a.body,
        )
            .into_response(),
        None => (
            StatusCode::NOT_FOUND,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            )],
            "no such asset\n",
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Content-Security-Policy (`default-src 'self'`) refuses inline scripts, inline
    /// event handlers and `style` attributes: the document must have none.
    #[test]
    fn the_page_needs_nothing_inline() {
        let lower = PAGE.to_ascii_lowercase();
        for forbidden in [" style=", "<style", "javascript:", " onclick=", " onload="] {
            assert!(!lower.contains(forbidden), "the page holds {forbidden:?}");
        }
        for script in lower.match_indices("<script") {
            let tag = &lower[script.0..];
            let tag = &tag[..tag.find('>').unwrap_or(tag.len())];
            assert!(tag.contains(" src=\"/assets/"), "an inline script: {tag}");
        }
    }

    /// Every file the page and the scripts load is served.
    #[test]
    fn every_asset_referred_to_is_served() {
        let mut referred = Vec::new();
        for text in std::iter::once(PAGE).chain(
            ASSETS
                .iter()
                .filter_map(|a| std::str::from_utf8(a.body).ok()),
        ) {
            for (at, _) in text.match_indices("/assets/") {
                let rest = &text[at + "/assets/".len()..];
                let end = rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '.' || c == '-'))
                    .unwrap_or(rest.len());
                referred.push(rest[..end].to_owned());
            }
            // Module imports: `from "./ui.js"`.
            for (at, _) in text.match_indices("from \"./") {
                let rest = &text[at + "from \"./".len()..];
                referred.push(rest[..rest.find('"').unwrap_or(rest.len())].to_owned());
            }
        }
        assert!(referred.len() >= 5, "{referred:?}");
        for name in referred {
            assert!(
                ASSETS.iter().any(|a| a.name == name),
                "{name} is referred to but not served"
            );
        }
    }
}
