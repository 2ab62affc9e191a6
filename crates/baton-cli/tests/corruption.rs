//! A damaged database stops a conductor: the real `baton conductor` on a SQLite file with
//! garbage written into its middle logs the damage at error level and exits non-zero, instead
//! of running on (or hanging) beside it.

// Test helpers panic on purpose: that is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod support;

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use baton_core::board::NewJob;
use serde_json::json;
use support::sqlite_db;

/// How long the conductor gets to notice the damage and stop. It needs well under a second;
/// a conductor still running after this hangs.
const PATIENCE: Duration = Duration::from_secs(60);

/// Posts `count` jobs of the demo's `steps` factory, each with a padded name so that the jobs
/// table fills most of the file, and folds SQLite's write-ahead log into the file.
async fn post_jobs(url: &str, path: &Path, count: usize) {
    let backends = baton_sql::open(url).await.unwrap();
    let padding = "p".repeat(3000);
    for i in 0..count {
        backends
            .board
            .post(
                NewJob::new(format!("job {i} {padding}"), "steps")
                    .params(json!({"steps": 1, "step_ms": 0})),
            )
            .await
            .unwrap();
    }
    drop(backends);
    use sqlx::Connection;
    let mut conn = sqlx::SqliteConnection::connect(url).await.unwrap();
    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    for suffix in ["-wal", "-shm"] {
        let mut side = path.as_os_str().to_owned();
        side.push(suffix);
        let _ = std::fs::remove_file(side);
    }
}

/// Overwrites 8 KiB in the middle of the file with pseudo-random bytes (the same every run).
fn damage_middle(path: &Path) {
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).unwrap();
    let len = u64::try_from(bytes.len()).unwrap();
    assert!(
        len > 64 * 1024,
        "the database is too small to damage: {len} bytes"
    );
    let at = (len / 2) & !4095;
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let garbage: Vec<u8> = (0..8192)
        .map(|_| {
            // xorshift64
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_le_bytes()[0]
        })
        .collect();
    file.seek(SeekFrom::Start(at)).unwrap();
    file.write_all(&garbage).unwrap();
    file.sync_all().unwrap();
}

/// A database with 300 jobs waiting and 8 KiB of garbage in its middle.
async fn damaged_db() -> support::SqliteDb {
    let db = sqlite_db();
    let path = db.dir.path().join("baton.db");
    post_jobs(&db.url, &path, 300).await;
    damage_middle(&path);
    db
}

/// Runs `baton --db <db> <args>` until it exits by itself, for at most [`PATIENCE`]; what it
/// wrote to standard error, and its exit code. Fails the test if it is still running then.
fn run_until_it_exits(db: &str, args: &[&str]) -> (String, Option<i32>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(["--db", db])
        .args(args)
        .env_remove("BATON_DATABASE_URL")
        .env_remove("RUST_LOG")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Its standard error is read as it is written: a pipe nobody reads fills up (64 KiB here,
    // a few dozen log lines naming the test's long job names) and blocks the writer.
    let mut pipe = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = Vec::new();
        pipe.read_to_end(&mut text).unwrap();
        text
    });
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() && started.elapsed() < PATIENCE {
        std::thread::sleep(Duration::from_millis(50));
    }
    let hung = child.try_wait().unwrap().is_none();
    if hung {
        child.kill().unwrap();
    }
    let status = child.wait().unwrap();
    let stderr = String::from_utf8_lossy(&reader.join().unwrap()).into_owned();
    let tail: Vec<&str> = stderr.lines().rev().take(20).collect();
    assert!(
        !hung,
        "`baton {}` was still running after {PATIENCE:?}; the end of its log:\n{}",
        args.join(" "),
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    (stderr, status.code())
}

/// The last two lines of standard error: the command's error and its cause.
fn last_two(stderr: &str) -> Vec<&str> {
    let mut end: Vec<&str> = stderr.lines().rev().take(2).collect();
    end.reverse();
    end
}

const MALFORMED: &str =
    "  caused by: error returned from database: (code: 11) database disk image is malformed";

#[tokio::test(flavor = "multi_thread")]
async fn a_conductor_on_a_damaged_sqlite_file_stops_with_an_error() {
    let db = damaged_db().await;
    let (stderr, code) = run_until_it_exits(
        &db.url,
        &[
            "conductor",
            "--demo",
            "--exit-when-idle",
            "--poll-ms",
            "20",
            "--heartbeat-ms",
            "200",
        ],
    );
    assert_eq!(code, Some(baton_cli::exit::INTERNAL), "{stderr}");
    assert!(
        stderr
            .lines()
            .any(|l| l.contains("ERROR") && l.contains("malformed")),
        "an error-level line names the damage: {stderr}"
    );
    // Whichever meets the damaged page first stops the command: a claim or a step (the
    // conductor failed), or the look at whether the board is idle.
    let end = last_two(&stderr);
    assert!(
        [
            "error: the conductor failed: the database is corrupt",
            "error: the database is corrupt"
        ]
        .contains(&end[0]),
        "{stderr}"
    );
    assert_eq!(end[1], MALFORMED, "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_demo_on_a_damaged_sqlite_file_stops_with_an_error() {
    let db = damaged_db().await;
    let (stderr, code) = run_until_it_exits(&db.url, &["demo", "--step-ms", "0"]);
    assert_eq!(code, Some(baton_cli::exit::INTERNAL), "{stderr}");
    assert_eq!(
        last_two(&stderr),
        [
            "error: the conductor failed: the database is corrupt",
            MALFORMED
        ],
        "{stderr}"
    );
}
