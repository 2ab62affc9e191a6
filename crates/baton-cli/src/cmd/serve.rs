//! `baton serve`: the operator's console (crate `baton-console`).

use baton_console::{AdminToken, Console, LiveSource};
use tokio_util::sync::CancellationToken;

use super::Database;
use crate::args::ServeArgs;
use crate::error::{CliError, Result};
use crate::exit;

/// Runs `baton serve`: checks the token and the address, opens the database, serves until
/// SIGINT or SIGTERM.
pub(crate) async fn serve(db: &Database, args: ServeArgs) -> Result<()> {
    let token = admin_token(args.admin_token_file.as_deref())?;
    let backends = db.open().await?;
    let console = console(db, backends, token);
    let read_only = console.is_read_only();
    let bound = console.bind(args.listen).await.map_err(console_error)?;
    let addr = bound.local_addr().map_err(|e| {
        CliError::new(exit::INTERNAL, "cannot read the console's address").caused_by(&e)
    })?;
    outln!("baton console at http://{addr}/ (database {})", db.shown());
    outln!(
        "{}; SIGINT or SIGTERM stops it",
        if read_only {
            "read-only: no admin token given (BATON_ADMIN_TOKEN or --admin-token-file)"
        } else {
            "actions need the admin token"
        }
    );
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    let mut signals = tokio::task::JoinSet::new();
    signals.spawn(async move {
        if super::signalled(&stop).await {
            stop.cancel();
        }
    });
    let served = bound.run(shutdown.clone()).await;
    shutdown.cancel();
    signals.shutdown().await;
    served.map_err(console_error)
}

/// The console over `backends`, acting with `token` if given; on PostgreSQL it listens for
/// the store's notifications.
pub(crate) fn console(
    db: &Database,
    backends: baton_sql::Backends,
    token: Option<AdminToken>,
) -> Console {
    // The process's own figures (the demo's conductor, say) beside the database gauges at
    // `/metrics`: installed before any engine or conductor of the process is built.
    if let Err(e) = baton_console::metrics::install() {
        tracing::warn!(error = %e, "the console's /metrics shows no figures of this process");
    }
    let mut console = Console::new(backends.store, backends.board);
    if let Some(token) = token {
        console = console.admin_token(token);
    }
    if db.url.starts_with("postgres:") || db.url.starts_with("postgresql:") {
        let schema = db
            .schema
            .clone()
            .unwrap_or_else(|| baton_sql::DEFAULT_SCHEMA.to_owned());
        console = console.live(LiveSource::postgres(db.url.clone(), schema));
    }
    console
}

/// The admin token: from `file` (`--admin-token-file`), or `BATON_ADMIN_TOKEN`; not both.
pub(crate) fn admin_token(file: Option<&std::path::Path>) -> Result<Option<AdminToken>> {
    let bad =
        |e: baton_console::TokenError| CliError::new(exit::BAD_INPUT, e.to_string()).caused_by(&e);
    let from_env = AdminToken::from_env().map_err(bad)?;
    match (file, from_env) {
        (Some(_), Some(_)) => Err(CliError::new(
            exit::BAD_INPUT,
            format!(
                "the admin token is given twice: by --admin-token-file and by {}; give one",
                baton_console::TOKEN_ENV
            ),
        )),
        (Some(path), None) => AdminToken::from_file(path).map(Some).map_err(bad),
        (None, token) => Ok(token),
    }
}

pub(crate) fn console_error(e: baton_console::Error) -> CliError {
    let code = match &e {
        baton_console::Error::UnsafeBind { .. } | baton_console::Error::Token(_) => exit::BAD_INPUT,
        _ => exit::INTERNAL,
    };
    CliError::new(code, e.to_string()).caused_by(&e)
}
