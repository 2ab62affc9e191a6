//! `baton conductor --metrics-listen` with real processes: a conductor is killed (SIGKILL) in
//! the middle of a job, a second one with metrics takes over and runs the rest, and what its
//! `/metrics` shows, during the work and after it, is checked against the database: steps
//! committed against the step log's rows, claims and takeovers against the jobs' attempts,
//! consumed jobs and ended runs against the board, histogram counts against their counters,
//! and every line against the Prometheus text format.

// Test helpers panic on purpose: that is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod support;

use std::time::Duration;

use baton_core::board::{JobQuery, NewJob};
use baton_core::JobState;
use baton_testkit::prometheus::{self, Scrape};
use serde_json::json;
use support::fleet::{conductor, conductor_command, spawn, stop, wait_for, wait_for_steps};
use support::{pg_db, sqlite_db};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const JOBS: usize = 4;
const STEPS: u64 = 30;
const LEASE_MS: u64 = 3000;
const WAIT: Duration = Duration::from_secs(90);

/// `GET /metrics` from `addr`: the response's content type and body.
async fn scrape_text(addr: &str) -> (String, String) {
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(
        format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut raw = Vec::new();
    conn.read_to_end(&mut raw).await.unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let header = |name: &str| {
        head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    };
    let length: usize = header("content-length")
        .expect("a body of known length")
        .parse()
        .unwrap();
    assert_eq!(body.len(), length);
    (header("content-type").unwrap_or_default(), body.to_owned())
}

/// A scrape of `addr`, parsed (the test fails on any line Prometheus would refuse).
async fn scrape(addr: &str) -> Scrape {
    let (content_type, body) = scrape_text(addr).await;
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    prometheus::parse(&body).unwrap_or_else(|e| panic!("{e}\n{body}"))
}

/// Rows of the step log: the steps every engine committed to this database.
async fn step_rows(db: &str) -> f64 {
    use sqlx::Connection;
    let n: i64 = if db.starts_with("sqlite:") {
        let mut conn = sqlx::SqliteConnection::connect(db).await.unwrap();
        sqlx::query_scalar("SELECT count(*) FROM steps")
            .fetch_one(&mut conn)
            .await
            .unwrap()
    } else {
        let mut conn = sqlx::PgConnection::connect(db).await.unwrap();
        sqlx::query_scalar("SELECT count(*) FROM baton.steps")
            .fetch_one(&mut conn)
            .await
            .unwrap()
    };
    n as f64
}

/// What the board says: the jobs' claims in all (their attempts), those claimed more than
/// once, and those complete.
async fn board_counts(board: &std::sync::Arc<dyn baton_core::JobBoard>) -> (f64, f64, f64) {
    let jobs = board.list(&JobQuery::all()).await.unwrap();
    let claims: u32 = jobs.iter().map(|j| j.attempts).sum();
    let again = jobs.iter().filter(|j| j.attempts > 1).count();
    let complete = jobs
        .iter()
        .filter(|j| j.state == JobState::Complete)
        .count();
    (f64::from(claims), again as f64, complete as f64)
}

async fn metrics_match_the_database(db: &str, store: &str) {
    let dir = tempfile::tempdir().unwrap();
    let effects = dir.path().join("effects.jsonl");
    let backends = baton_sql::open(db).await.unwrap();
    let mut jobs = Vec::new();
    for i in 0..JOBS {
        let job = NewJob::new(format!("steps-{i}"), "steps")
            .params(json!({ "steps": STEPS, "step_ms": 40 }));
        jobs.push(backends.board.post(job).await.unwrap());
    }

    // A first conductor, without metrics, dies in the middle of a job.
    let mut first = conductor(db, "first", &effects, LEASE_MS);
    wait_for_steps(&backends.store, jobs[0].flow(), 3).await;
    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();
    let steps_before = step_rows(db).await;
    let (claims_before, _, complete_before) = board_counts(&backends.board).await;
    assert!(claims_before >= 1.0);

    // The second serves its metrics on a port of its own choosing, and says which.
    let mut cmd = conductor_command(db, "second", &effects, LEASE_MS);
    cmd.args(["--metrics-listen", "127.0.0.1:0"]);
    let second = spawn(cmd);
    let log = effects.with_file_name("second.log");
    let addr = wait_for("the metrics address", WAIT, || {
        let log = log.clone();
        async move {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            text.lines().find_map(|l| {
                let rest = l.strip_prefix("metrics at http://")?;
                Some(rest.strip_suffix("/metrics")?.to_owned())
            })
        }
    })
    .await;

    // During the work: a scrape taken while a claim is held (the lease margin is a number
    // only then).
    let during = wait_for("a scrape while a job runs", WAIT, || {
        let addr = addr.clone();
        async move {
            let s = scrape(&addr).await;
            let margin = s.value("baton_lease_margin_seconds", &[])?;
            let steps = s.value("baton_steps_committed_total", &[("store", store)])?;
            (margin.is_finite() && steps >= 1.0).then_some(s)
        }
    })
    .await;
    let margin = during.value("baton_lease_margin_seconds", &[]).unwrap();
    assert!(
        margin > 0.0 && margin <= LEASE_MS as f64 / 1000.0,
        "a lease margin of {margin} s on a lease of {LEASE_MS} ms"
    );
    assert!(during.value("baton_jobs_claimed_total", &[]).unwrap() >= 1.0);
    for family in ["baton_step_commit_seconds", "baton_claim_seconds"] {
        assert_eq!(during.families[family].kind, "histogram", "{family}");
    }

    // After: every job complete, and the conductor done with each (it counts a job once its
    // task ends, just after the job's last step).
    let board = backends.board.clone();
    let after = wait_for("every job consumed", WAIT, || {
        let (addr, board) = (addr.clone(), board.clone());
        async move {
            let (_, _, complete) = board_counts(&board).await;
            let s = scrape(&addr).await;
            let consumed = s.value("baton_jobs_consumed_total", &[])?;
            (complete == JOBS as f64 && consumed == complete - complete_before).then_some(s)
        }
    })
    .await;
    let (claims, claimed_again, complete) = board_counts(&backends.board).await;
    let value = |name: &str, labels: &[(&str, &str)]| {
        after
            .value(name, labels)
            .unwrap_or_else(|| panic!("no {name}{labels:?}"))
    };

    // Steps: the rows this conductor added to the step log; its histogram saw each commit.
    let steps = value("baton_steps_committed_total", &[("store", store)]);
    assert_eq!(steps, step_rows(db).await - steps_before);
    assert_eq!(
        value("baton_step_commit_seconds_count", &[("store", store)]),
        steps
    );
    // Claims: the jobs' attempts since the first conductor died; the takeovers are the jobs
    // it had claimed and not finished, which this one claimed again.
    assert_eq!(
        value("baton_jobs_claimed_total", &[]),
        claims - claims_before
    );
    assert_eq!(value("baton_takeovers_total", &[]), claimed_again);
    assert!(
        claimed_again >= 1.0,
        "the first conductor's job was taken over"
    );
    // One observation per claim call; a call takes up to the conductor's two free slots.
    let claim_calls = value("baton_claim_seconds_count", &[]);
    assert!(claim_calls >= 1.0 && 2.0 * claim_calls >= value("baton_jobs_claimed_total", &[]));
    // Ends: every job it claimed was consumed, its run a success; nothing else.
    assert_eq!(
        value("baton_jobs_consumed_total", &[]),
        complete - complete_before
    );
    assert_eq!(
        value("baton_runs_ended_total", &[("state", "SUCCESS")]),
        complete - complete_before
    );
    for name in [
        "baton_jobs_abandoned_total",
        "baton_jobs_lost_total",
        "baton_jobs_parked_total",
    ] {
        assert_eq!(value(name, &[]), 0.0, "{name}");
    }
    // No claim held: no margin.
    assert!(value("baton_lease_margin_seconds", &[]).is_nan());
    // Counters never go back.
    for name in [
        "baton_jobs_claimed_total",
        "baton_steps_committed_total",
        "baton_claim_seconds_count",
    ] {
        assert!(during.sum(name) <= after.sum(name), "{name}");
    }

    let status = stop(second);
    assert!(status.success(), "the conductor exited with {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_conductor_metrics_match_the_database() {
    let db = sqlite_db();
    metrics_match_the_database(&db.url, "sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_conductor_metrics_match_the_database() {
    let Some(db) = pg_db().await else { return };
    metrics_match_the_database(&db.url, "postgres").await;
}
