//! A conductor killed with SIGKILL in the middle of a job: another conductor takes the job over
//! at once, long before its lease runs out, on SQLite (the owner's lock file, which the kernel
//! unlocks when the process dies) and on PostgreSQL (its advisory lock, gone with its session).

// Test helpers panic on purpose: that is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use baton_cli::demo::SideEffects;
use baton_core::board::NewJob;
use baton_core::JobState;
use serde_json::json;
use support::fleet::{
    conductor_command_with, logs, spawn, stop, wait_for, wait_for_steps, wait_until,
};
use support::{pg_db, sqlite_db};

/// The lease of both conductors: the takeover must come long before it.
const LEASE_MS: u64 = 30_000;

async fn a_killed_owners_job_is_taken_over_before_its_lease(db: &str) {
    let dir = tempfile::tempdir().unwrap();
    let effects = dir.path().join("effects.jsonl");
    let backends = baton_sql::open(db).await.unwrap();
    let (board, store) = (backends.board.clone(), backends.store.clone());
    let job = board
        .post(NewJob::new("orphaned", "steps").params(json!({ "steps": 30, "step_ms": 100 })))
        .await
        .unwrap();
    let mut owner = spawn(conductor_command_with(
        db, "owner", &effects, LEASE_MS, 1000,
    ));
    wait_for_steps(&store, job.flow(), 2).await;
    let successor = spawn(conductor_command_with(
        db,
        "successor",
        &effects,
        LEASE_MS,
        1000,
    ));
    wait_until(
        "the successor is registered",
        Duration::from_secs(30),
        || {
            let board = board.clone();
            async move { board.conductors().await.is_ok_and(|c| c.len() == 2) }
        },
    )
    .await;
    let claimed = board.get(job.id).await.unwrap();
    assert_eq!(claimed.state, JobState::Claimed);

    owner.kill().unwrap(); // SIGKILL
    owner.wait().unwrap();
    let killed = Instant::now();
    let taken = wait_for(
        "the job is taken over",
        Duration::from_secs(LEASE_MS / 1000 + 30),
        || {
            let board = board.clone();
            async move {
                let now = board.get(job.id).await.unwrap();
                (now.token > claimed.token).then(|| killed.elapsed())
            }
        },
    )
    .await;
    eprintln!("taken over {taken:?} after the owner was killed (lease {LEASE_MS} ms)");
    assert!(
        taken < Duration::from_secs(5),
        "taken over only {taken:?} after the kill\n{}",
        logs(&effects)
    );

    wait_until("the job is complete", Duration::from_secs(120), || {
        let board = board.clone();
        async move { support::fleet::is_complete(&*board, job.id).await }
    })
    .await;
    let done = board.get(job.id).await.unwrap();
    assert_eq!(done.outcome.as_ref().unwrap()["state"], json!("SUCCESS"));
    assert_eq!(done.attempts, 2, "claimed by the owner, then the successor");
    let pids: BTreeSet<u32> = SideEffects::read_file(&effects)
        .unwrap()
        .iter()
        .filter(|e| e.flow == job.flow().to_string())
        .map(|e| e.pid)
        .collect();
    assert_eq!(pids.len(), 2, "the run's side effects came from {pids:?}");
    stop(successor);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_killed_owners_job_is_taken_over_before_its_lease() {
    let db = sqlite_db();
    a_killed_owners_job_is_taken_over_before_its_lease(&db.url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_killed_owners_job_is_taken_over_before_its_lease() {
    let Some(db) = pg_db().await else { return };
    a_killed_owners_job_is_taken_over_before_its_lease(&db.url).await;
}
