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
mod output;

use clap::{CommandFactory, Parser};

pub use error::CliError;

use args::{Cli, Command};

/// Runs the command line; returns the process's exit code.
#[must_use]
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            };
        }
    };
    init_logging(&cli.command);
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
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{e}");
            e.code
        }
    }
}

fn init_logging(command: &Command) {
    // The conductor logs what it does; other commands report errors themselves, as one line
    // and its cause. RUST_LOG overrides.
    // (sqlx reports the server's routine notices at info: keep those out.)
    let default = match command {
        Command::Conductor(_) => "info,sqlx=warn",
        _ => "off",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

async fn run(cli: Cli) -> error::Result<i32> {
    let style = output::Style::detect(cli.color);
    if let Command::Completions { shell } = cli.command {
        clap_complete::generate(shell, &mut Cli::command(), "baton", &mut std::io::stdout());
        return Ok(exit::OK);
    }
    let mut options = baton_sql::OpenOptions::new();
    if let Some(schema) = &cli.schema {
        options = options.schema(schema);
    }
    let backends = baton_sql::open_with(&cli.db, options).await?;
    match cli.command {
        Command::Demo(args) => {
            // How to reach this database again, for the hints the demo prints.
            let target = match &cli.schema {
                Some(schema) => format!("{} --schema {schema}", cli.db),
                None => cli.db.clone(),
            };
            cmd::demo::demo(&target, backends.store, backends.board, args, style).await
        }
        Command::Conductor(args) => {
            cmd::demo::conductor(backends.store, backends.board, args).await?;
            Ok(exit::OK)
        }
        Command::Flows(c) => cmd::flows::run(&*backends.store, c, style)
            .await
            .map(|()| exit::OK),
        Command::Jobs(c) => cmd::jobs::run(&*backends.board, c, style)
            .await
            .map(|()| exit::OK),
        Command::Conductors(c) => cmd::conductors::run(&*backends.board, c, style)
            .await
            .map(|()| exit::OK),
        Command::Migrate => {
            outln!("the schema of {} is up to date", cli.db);
            Ok(exit::OK)
        }
        Command::Completions { .. } => Ok(exit::OK),
    }
}
