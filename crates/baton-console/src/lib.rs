//! baton's operator console: a JSON API, live updates and web pages over the same store and job
//! board the conductors use.
//!
//! [`Console`] holds a [`Store`] and a [`JobBoard`]; [`Console::router`] turns it into an axum
//! [`Router`](axum::Router) serving
//!
//! - the JSON API under `/api/` (flows, jobs, conductors, and the actions an operator takes on
//!   them), in the same shapes as the command line's `--json`;
//! - live updates as server-sent events (`/api/events`);
//! - the pages (`/`, `/flows`, `/jobs`, `/conductors`) and the Prometheus metrics (`/metrics`).
//!
//! `serve` binds a listener and runs the router until shut down. The console is read-only
//! unless given an admin token; it refuses to listen on anything but loopback without one.
//!
//! docs/console.md describes every endpoint, the security model and how to run it
//! (`baton serve`).

#![forbid(unsafe_code)]

pub mod metrics;
mod pages;

use std::fmt;
use std::sync::Arc;

use baton_core::store::Store;
use baton_core::JobBoard;

/// The console: the store and job board it reads and acts on, and its settings.
///
/// Cheap to clone; every request handler holds one.
#[derive(Clone)]
pub struct Console {
    store: Arc<dyn Store>,
    board: Arc<dyn JobBoard>,
}

impl fmt::Debug for Console {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Console").finish_non_exhaustive()
    }
}

impl Console {
    /// A read-only console over `store` and `board`.
    #[must_use]
    pub fn new(store: Arc<dyn Store>, board: Arc<dyn JobBoard>) -> Self {
        Self { store, board }
    }

    /// The store this console reads.
    #[must_use]
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The job board this console reads.
    #[must_use]
    pub fn board(&self) -> &Arc<dyn JobBoard> {
        &self.board
    }

    /// The console's HTTP routes.
    pub fn router(self) -> axum::Router {
        axum::Router::new()
            // pages: mounted here
            .merge(pages::router())
            // metrics: mounted here
            .merge(metrics::router())
            .with_state(self)
    }
}
