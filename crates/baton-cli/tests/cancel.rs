//! `baton jobs cancel`, `baton flows cancel`, `jobs post --supersede` and `--deadline`, and
//! `jobs wait`, with a real conductor process: what an operator types, and what each refuses.

// Test helpers panic on purpose: that is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod support;

use std::time::Duration;

use baton_cli::exit;
use baton_core::board::Job;
use support::fleet::{conductor, logs, stop};
use support::{baton, pg_db, sqlite_db, stderr, stdout};

fn post(db: &str, extra: &[&str]) -> Job {
    let params = serde_json::json!({ "steps": 6, "step_ms": 1_000 }).to_string();
    let mut args = vec![
        "demo",
        "post",
        "--factory",
        "steps",
        "--params",
        &params,
        "--json",
    ];
    args.extend_from_slice(extra);
    let out = baton(db, &args);
    assert!(out.status.success(), "demo post: {}", stderr(&out));
    let jobs: Vec<Job> = serde_json::from_slice(&out.stdout).unwrap();
    jobs.into_iter().next().unwrap()
}

fn refused(out: &std::process::Output, code: i32, message: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(code), "{err}");
    assert!(err.contains(message), "expected {message:?} in: {err}");
}

async fn cancel_with_a_conductor(db: &str, dir: &std::path::Path) {
    let effects = dir.join("effects.jsonl");
    let fleet = conductor(db, "c", &effects, 3_000);

    // Cancel and revert a running job, waiting for the rollback.
    let job = post(db, &[]);
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let id = job.id.to_string();
    let out = baton(db, &["jobs", "cancel", &id, "--wait"]);
    assert!(
        out.status.success(),
        "{}{}\n{}",
        stdout(&out),
        stderr(&out),
        logs(&effects)
    );
    assert!(
        stdout(&out).contains("its run is REVERTED"),
        "{}",
        stdout(&out)
    );
    // Waiting for it now says how it ended, and fails: it did not succeed.
    let out = baton(db, &["jobs", "wait", &id]);
    assert_eq!(
        out.status.code(),
        Some(exit::FLOW_FAILED),
        "{}",
        stderr(&out)
    );
    assert!(stdout(&out).contains("was reverted"), "{}", stdout(&out));
    // The run ended: a second request is refused, naming the job's state.
    refused(
        &baton(db, &["jobs", "cancel", &id]),
        exit::CONFLICT,
        "COMPLETE",
    );

    // Suspend another through its flow id: the job is parked, the run suspended.
    let job = post(db, &[]);
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let flow = job.flow().to_string();
    let out = baton(db, &["flows", "cancel", &flow, "--no-revert", "--wait"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(
        stdout(&out).contains("PARKED; its run is SUSPENDED"),
        "{}",
        stdout(&out)
    );
    // ... and then reverted by an operator.
    let out = baton(db, &["flows", "revert", &flow, "--wait"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));

    // A deadline shorter than the run: reverted when it passes.
    let job = post(db, &["--deadline", "2s"]);
    let id = job.id.to_string();
    let mut shown = None;
    for _ in 0..300 {
        let out = baton(db, &["jobs", "show", &id, "--json"]);
        let job: Job = serde_json::from_slice(&out.stdout).unwrap();
        if job.state == baton_core::JobState::Complete {
            shown = Some(job);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let shown = shown.expect("the job with a deadline completed");
    assert!(shown.deadline.is_some());
    assert_eq!(
        shown.outcome.unwrap()["state"],
        serde_json::json!("REVERTED")
    );

    // Supersede by key: the first update is reverted, the second runs.
    let first = post(db, &["--key", "stack:web"]);
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let params = serde_json::json!({ "steps": 2, "step_ms": 100 }).to_string();
    let out = baton(
        db,
        &[
            "jobs",
            "post",
            "--factory",
            "steps",
            "--params",
            &params,
            "--key",
            "stack:web",
            "--supersede",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(&format!("supersedes job {}", first.id)),
        "{}",
        stdout(&out)
    );
    let superseding = stdout(&out).split_whitespace().nth(2).unwrap().to_owned();
    // Waiting for the superseding job: it runs once the first is reverted, and succeeds.
    let out = baton(db, &["jobs", "wait", &superseding, "--json"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let waited: Job = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (waited.state, waited.outcome.unwrap()["state"].clone()),
        (baton_core::JobState::Complete, serde_json::json!("SUCCESS"))
    );
    assert!(stop(fleet).success(), "{}", logs(&effects));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_cancel_revert_suspend_deadline_and_supersede() {
    let db = sqlite_db();
    cancel_with_a_conductor(&db.url, db.dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_cancel_revert_suspend_deadline_and_supersede() {
    let Some(db) = pg_db().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    cancel_with_a_conductor(&db.url, dir.path()).await;
}

/// Bad input is refused with a one-line error and the right exit code, and changes nothing.
#[test]
fn bad_cancel_and_deadline_input_is_refused() {
    let db = sqlite_db();
    let url = &db.url;
    let unknown = baton_core::JobId::new().to_string();
    refused(
        &baton(url, &["jobs", "cancel", &unknown]),
        exit::NOT_FOUND,
        &unknown,
    );
    refused(
        &baton(url, &["flows", "cancel", &unknown]),
        exit::NOT_FOUND,
        "no job drives flow",
    );
    refused(
        &baton(url, &["jobs", "cancel", "not-an-id"]),
        exit::BAD_INPUT,
        "not-an-id",
    );
    refused(
        &baton(url, &["jobs", "wait", &unknown]),
        exit::NOT_FOUND,
        &unknown,
    );
    refused(
        &baton(url, &["jobs", "wait", "not-an-id"]),
        exit::BAD_INPUT,
        "not-an-id",
    );
    refused(
        &baton(
            url,
            &["jobs", "post", "--factory", "steps", "--deadline", "0s"],
        ),
        exit::BAD_INPUT,
        "--deadline 0s is not in the future",
    );
    refused(
        &baton(
            url,
            &["jobs", "post", "--factory", "steps", "--deadline", "-5s"],
        ),
        exit::USAGE,
        "'-5'",
    );
    refused(
        &baton(url, &["jobs", "post", "--factory", "steps", "--supersede"]),
        exit::USAGE,
        "--key",
    );
    let listed = baton(url, &["jobs", "list", "--json"]);
    assert_eq!(stdout(&listed).trim(), "[]", "nothing was posted");
}
