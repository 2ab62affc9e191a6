//! The `baton` command line, as a library: the binary's `main` only calls [`main`].
//!
//! - [`demo`]: the Heat-style demo flows (stack create, update, delete) over fake cloud
//!   providers that record every side effect.
//! - [`exit`]: the documented exit codes.
//!
//! Only this crate writes to the terminal.

#![forbid(unsafe_code)]
// The command line's job is to print.
#![allow(clippy::print_stdout, clippy::print_stderr)]

/// `println!` that does not panic when stdout is closed (`baton flows list | head`): the
/// reader has gone, so there is nobody left to tell.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

/// `print!` that does not panic when stdout is closed.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout().lock(), $($arg)*);
    }};
}

pub mod args;
mod cmd;
pub mod demo;
mod error;
pub mod exit;
mod hint;
mod output;
mod traces;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches};

pub use error::CliError;

use args::{Cli, Command};

/// Runs the command line; returns the process's exit code.
#[must_use]
pub fn main() -> i32 {
    let parsed = Cli::command()
        .try_get_matches()
        .and_then(|matches| Ok((Cli::from_arg_matches(&matches)?, matches)));
    let (cli, matches) = match parsed {
        Ok(parsed) => parsed,
        Err(e) => {
            if e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                // clap answers `baton flows` with the help of `flows`: say first what is
                // wrong, as every error does.
                eprintln!("error: a command is missing: the choices follow\n");
            }
            let _ = e.print();
            return if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            };
        }
    };
    let given = |id| matches.value_source(id) == Some(ValueSource::CommandLine);
    let db = cmd::Database {
        url_given: given("db"),
        schema_given: given("schema"),
        url: cli.db.clone(),
        schema: cli.schema.clone(),
    };
    let traces = init_logging(&cli.command);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return exit::INTERNAL;
        }
    };
    let code = match runtime.block_on(run(cli, &db)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{e}");
            e.code
        }
    };
    // Tasks left in the runtime end their spans as they are dropped: drop them first, then
    // send the spans still queued before the process ends.
    drop(runtime);
    traces.finish();
    code
}

/// Installs the logger (and the trace exporter when the environment asks for one); returns
/// what must be finished before the process exits.
fn init_logging(command: &Command) -> traces::Exporting {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::Layer as _;

    // The conductor logs what it does; other commands report errors themselves, as one line
    // and its cause. RUST_LOG overrides.
    // (sqlx reports the server's routine notices at info: keep those out.)
    let default = match command {
        Command::Conductor(_) => "info,sqlx=warn",
        // The console logs the errors it answers 500 or 503 for.
        Command::Serve(_) => "warn,sqlx=warn",
        _ => "off",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let log = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_filter(filter);
    traces::install(tracing_subscriber::registry().with(log))
}

/// Runs a command; each opens `db` once it has checked what it can without it.
async fn run(cli: Cli, db: &cmd::Database) -> error::Result<i32> {
    let style = output::Style::detect(cli.color);
    match cli.command {
        Command::Demo(args) => cmd::demo::demo(db, args, style).await,
        Command::Conductor(args) => {
            cmd::demo::conductor(db, args).await?;
            Ok(exit::OK)
        }
        Command::Flows(c) => cmd::flows::run(db, c, style).await.map(|()| exit::OK),
        Command::Jobs(c) => cmd::jobs::run(db, c, style).await.map(|()| exit::OK),
        Command::Conductors(c) => cmd::conductors::run(db, c, style).await.map(|()| exit::OK),
        Command::Serve(args) => cmd::serve::serve(db, args).await.map(|()| exit::OK),
        Command::Migrate => {
            db.open().await?;
            outln!("the schema of {} is up to date", db.shown());
            Ok(exit::OK)
        }
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "baton", &mut std::io::stdout());
            Ok(exit::OK)
        }
    }
}
