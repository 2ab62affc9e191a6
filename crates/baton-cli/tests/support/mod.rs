//! Shared helpers of the CLI's tests: running the real binary, and throwaway databases.

#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stderr
)]

use std::ffi::OsStr;
use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

pub mod fleet;

/// Runs `baton --db <db> <args>` and returns what it did.
pub fn baton(db: &str, args: &[&str]) -> Output {
    run(command(Some(db), args), None)
}

/// `baton [--db <db>] <args>`, to adjust before [`run`]: started as a test's tool, with no
/// settings from the environment of the tests (the database, the schema, the log level,
/// `cargo run`'s package name, where to send traces).
pub fn command<S: AsRef<OsStr>>(db: Option<&str>, args: &[S]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_baton"));
    if let Some(db) = db {
        cmd.arg("--db").arg(db);
    }
    cmd.args(args)
        .env_remove("BATON_DATABASE_URL")
        .env_remove("BATON_SCHEMA")
        .env_remove("BATON_ADMIN_TOKEN")
        .env_remove("RUST_LOG")
        .env_remove("CARGO_PKG_NAME")
        .env("NO_COLOR", "1");
    for (var, _) in std::env::vars_os() {
        if var.to_string_lossy().starts_with("OTEL_") {
            cmd.env_remove(var);
        }
    }
    cmd
}

/// How long a command may take before the test gives up on it (and kills it).
pub const TIME_LIMIT: Duration = Duration::from_secs(120);

/// Runs `cmd`, with `stdin` on its standard input (nothing otherwise), and returns what it
/// did; fails the test if it runs for longer than [`TIME_LIMIT`].
pub fn run(mut cmd: Command, stdin: Option<Vec<u8>>) -> Output {
    let shown: Vec<String> = cmd
        .get_args()
        .map(|a| a.to_string_lossy().chars().take(80).collect())
        .collect();
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("the baton binary runs");
    let pid = child.id();
    if let (Some(bytes), Some(mut input)) = (stdin, child.stdin.take()) {
        // The command may stop reading early (it refuses too much): that is its answer.
        std::thread::spawn(move || {
            let _ = input.write_all(&bytes);
        });
    }
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(child.wait_with_output());
    });
    match finished.recv_timeout(TIME_LIMIT) {
        Ok(output) => output.expect("the baton binary runs"),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("baton {shown:?} did not finish within {TIME_LIMIT:?}");
        }
    }
}

/// Stdout as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Stderr as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A SQLite database in a temporary folder.
pub struct SqliteDb {
    pub url: String,
    pub dir: tempfile::TempDir,
}

pub fn sqlite_db() -> SqliteDb {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("baton.db").display());
    SqliteDb { url, dir }
}

/// A PostgreSQL database of its own on the test server, dropped when this goes.
pub struct PgDb {
    pub url: String,
    admin: String,
    name: String,
}

impl Drop for PgDb {
    fn drop(&mut self) {
        let (admin, name) = (self.admin.clone(), self.name.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                use sqlx::Connection;
                if let Ok(mut conn) = sqlx::PgConnection::connect(&admin).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut conn)
                        .await;
                }
            });
        })
        .join();
    }
}

/// A fresh PostgreSQL database, or `None` (the test is skipped) when there is no server and
/// CI is not set; under `CI=true` a missing server fails the test.
pub async fn pg_db() -> Option<PgDb> {
    use sqlx::Connection;
    let ci = std::env::var("CI").as_deref() == Ok("true");
    let Ok(admin) = std::env::var("BATON_TEST_POSTGRES_URL") else {
        assert!(!ci, "BATON_TEST_POSTGRES_URL must be set when CI=true");
        eprintln!("skipped: BATON_TEST_POSTGRES_URL is not set");
        return None;
    };
    let mut conn = match sqlx::PgConnection::connect(&admin).await {
        Ok(c) => c,
        Err(e) if !ci => {
            eprintln!("skipped: PostgreSQL unreachable: {e}");
            return None;
        }
        Err(e) => panic!("PostgreSQL unreachable (CI=true): {e}"),
    };
    let name = format!("baton_cli_{}", uuid::Uuid::now_v7().simple());
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .unwrap();
    let (base, _) = admin.rsplit_once('/').expect("the URL names a database");
    Some(PgDb {
        url: format!("{base}/{name}"),
        admin,
        name,
    })
}
