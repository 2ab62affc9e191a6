//! baton's operator console: a JSON API, live updates and web pages over the same store and job
//! board the conductors use.
//!
//! [`Console`] holds a [`Store`] and a [`JobBoard`]; [`Console::router`] turns it into an axum
//! [`Router`](axum::Router) serving
//!
//! - the JSON API under `/api/` (runs, jobs, conductors, and the actions an operator takes on
//!   them), in the same shapes as the command line's `--json`;
//! - live updates as server-sent events (`/api/events`, see [`LiveSource`]);
//! - `/healthz`, the pages (`/`, `/flows`, `/jobs`, `/conductors`) and the Prometheus metrics
//!   (`/metrics`).
//!
//! [`Console::bind`] binds a listener and [`Bound::run`] serves until shut down; [`serve`]
//! does both. The console is read-only unless given an [`AdminToken`], and refuses to listen
//! on anything but loopback without one ([`Error::UnsafeBind`]).
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let backends = baton_sql::open("sqlite://baton.db").await?;
//! let console = baton_console::Console::new(backends.store, backends.board)
//!     .admin_token(baton_console::AdminToken::new("a-long-random-admin-token", "example")?);
//! let shutdown = tokio_util::sync::CancellationToken::new();
//! baton_console::serve("127.0.0.1:8080".parse()?, console, shutdown).await?;
//! # Ok(())
//! # }
//! ```
//!
//! docs/console.md describes every endpoint, the security model and how to run it
//! (`baton serve`).

#![forbid(unsafe_code)]

mod api;
/// docs/console.md, whose examples are compiled as this crate's doctests.
#[cfg(doctest)]
#[doc = include_str!("../../../docs/console.md")]
mod console_md {}
mod error;
mod live;
pub mod metrics;
mod pages;
mod security;

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderValue};
use axum::routing::get;
use baton_core::store::Store;
use baton_core::JobBoard;
use tokio_util::sync::CancellationToken;
use tower_http::set_header::SetResponseHeaderLayer;

pub use api::{DEFAULT_LIMIT, MAX_LIMIT};
pub use error::{ApiError, Error, TokenError};
pub use live::{LiveSource, POLL, POLL_LISTENING};
pub use security::{AdminToken, MIN_TOKEN_BYTES, TOKEN_ENV};

/// The largest request body the console reads, in bytes: 16 KiB (an action's body is a few
/// dozen). A larger one is answered 413.
pub const MAX_BODY_BYTES: usize = 16 << 10;

/// The address `baton serve` listens on unless told otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// The console: the store and job board it reads and acts on, and its settings.
///
/// Cheap to clone; every request handler holds one.
#[derive(Clone)]
pub struct Console {
    store: Arc<dyn Store>,
    board: Arc<dyn JobBoard>,
    token: Option<AdminToken>,
    source: LiveSource,
    live: Arc<live::Hub>,
    /// Answer only requests whose `Host` names this machine (see [`Console::bind`]).
    local_only: bool,
}

impl fmt::Debug for Console {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Console")
            .field("store", &self.store)
            .field("board", &self.board)
            .field("read_only", &self.token.is_none())
            .field("live", &self.source)
            .finish_non_exhaustive()
    }
}

impl Console {
    /// A read-only console over `store` and `board`, polling for live updates.
    #[must_use]
    pub fn new(store: Arc<dyn Store>, board: Arc<dyn JobBoard>) -> Self {
        Self {
            store,
            board,
            token: None,
            source: LiveSource::default(),
            live: Arc::default(),
            local_only: false,
        }
    }

    /// The console, acting for requests that carry `token` (`Authorization: Bearer <token>`).
    #[must_use]
    pub fn admin_token(mut self, token: AdminToken) -> Self {
        self.token = Some(token);
        self
    }

    /// The console, hearing of changes from `source` besides polling.
    #[must_use]
    pub fn live(mut self, source: LiveSource) -> Self {
        self.source = source;
        self
    }

    /// Whether the console refuses every action (it has no admin token).
    #[must_use]
    pub fn is_read_only(&self) -> bool {
        self.token.is_none()
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

    /// The console's HTTP routes, with the protective headers on every answer and the body
    /// limit ([`MAX_BODY_BYTES`]). Live updates from PostgreSQL need [`Bound::run`], which
    /// also runs the listener; this router alone polls.
    pub fn router(self) -> axum::Router {
        let api = api::router().layer(SetResponseHeaderLayer::overriding(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        ));
        let router = axum::Router::new()
            .route("/healthz", get(api::healthz))
            .merge(api)
            // pages: mounted here
            .merge(pages::router())
            // metrics: mounted here
            .merge(metrics::router())
            .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
            .layer(axum::middleware::from_fn_with_state(
                self.clone(),
                check_host,
            ));
        security::headers(router).with_state(self)
    }

    /// Binds a listener at `addr` for the console. On a loopback address, the console then
    /// answers only requests whose `Host` header names the machine by address or as
    /// `localhost` (`400` otherwise): a page of another site cannot have its name resolve to
    /// 127.0.0.1 and read the console through an operator's browser (DNS rebinding).
    ///
    /// # Errors
    /// [`Error::UnsafeBind`] for an address other than loopback when the console has no
    /// admin token; [`Error::Bind`] when the address cannot be bound.
    ///
    /// # Cancel safety
    /// Cancel safe: dropped, it binds nothing.
    pub async fn bind(self, addr: SocketAddr) -> Result<Bound, Error> {
        if !addr.ip().is_loopback() && self.token.is_none() {
            return Err(Error::UnsafeBind { addr });
        }
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Bind { addr, source })?;
        let console = Console {
            local_only: addr.ip().is_loopback(),
            ..self
        };
        Ok(Bound { listener, console })
    }
}

/// Refuses a request whose `Host` does not name this machine, on a console that answers
/// only those.
async fn check_host(
    axum::extract::State(console): axum::extract::State<Console>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    if console.local_only && !security::local_host(request.headers()) {
        return ApiError::bad_request(
            "the Host header names neither this machine's address nor localhost: open the \
             console by address (http://127.0.0.1:PORT/) or as localhost",
        )
        .into_response();
    }
    next.run(request).await
}

/// A console with its listener bound, ready to [`run`](Bound::run).
#[derive(Debug)]
pub struct Bound {
    listener: tokio::net::TcpListener,
    console: Console,
}

impl Bound {
    /// The address it listens on (with the port chosen, if port 0 was asked for).
    ///
    /// # Errors
    /// As [`tokio::net::TcpListener::local_addr`].
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves the console until `shutdown` is cancelled, with the PostgreSQL listener beside
    /// it if the console has one ([`LiveSource::Postgres`]). On shutdown, live-update streams
    /// end and the server waits for the requests under way.
    ///
    /// # Errors
    /// [`Error::Serve`] if the server fails.
    ///
    /// # Cancel safety
    /// Not cancel safe: cancel `shutdown` instead.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), Error> {
        let hub = Arc::clone(&self.console.live);
        let mut tasks = tokio::task::JoinSet::new();
        if let LiveSource::Postgres { url, schema } = &self.console.source {
            tasks.spawn(live::listen(Arc::clone(&hub), url.clone(), schema.clone()));
        }
        let closing = hub.closing.clone();
        let served = axum::serve(self.listener, self.console.router())
            .with_graceful_shutdown(async move {
                shutdown.cancelled().await;
                // Live-update streams never end by themselves: end them, so that their
                // connections close and the server can stop.
                closing.cancel();
            })
            .await;
        hub.closing.cancel();
        tasks.shutdown().await;
        served.map_err(Error::Serve)
    }
}

/// Binds `console` at `addr` and serves it until `shutdown` is cancelled
/// ([`Console::bind`], then [`Bound::run`]).
///
/// # Errors
/// As [`Console::bind`] and [`Bound::run`].
///
/// # Cancel safety
/// Not cancel safe: cancel `shutdown` instead.
pub async fn serve(
    addr: SocketAddr,
    console: Console,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    console.bind(addr).await?.run(shutdown).await
}
