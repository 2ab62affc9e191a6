//! Owners that stop themselves, as real processes: a `baton conductor` paused (SIGSTOP) past
//! its lease, while another conductor takes its job over, makes no cloud call after that
//! claim once it runs again (SIGCONT); its in-flight call sees its cancellation.
//!
//! Two things stop it, whichever comes first when it wakes: its own watchdog (no heartbeat
//! confirmed for the lease less the margin: it halts the run, firing the call's token) and the
//! demo provider's confirmation of the claim before its call (refused: the claim has moved
//! on). `baton-core`'s `self_fencing` tests check each of them alone.

// Test helpers panic on purpose: that is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod support;

use std::time::Duration;

use baton_cli::demo::{Effect, SideEffects};
use baton_core::board::Job;
use baton_core::{AtomState, FlowState};
use chrono::{DateTime, Utc};
use support::fleet::{conductor_command_with, logs, poll_until, signal, spawn, stop, wait_until};
use support::{baton, pg_db, sqlite_db, stderr};

/// The lease and heartbeat of the report: a 3 s lease, a heartbeat every 0.5 s.
const LEASE_MS: u64 = 3_000;
/// Each fake cloud call takes 3 s: 1.5 s preparing, the call, 1.5 s for the resource.
const STEP_MS: u64 = 3_000;
const STEPS: u32 = 4;

fn at(e: &Effect) -> DateTime<Utc> {
    e.at.parse().unwrap()
}

async fn paused_owner_makes_no_call_after_the_takeover(db: &str, dir: &std::path::Path) {
    let effects = dir.join("effects.jsonl");
    let params = serde_json::json!({ "steps": STEPS, "step_ms": STEP_MS }).to_string();
    let out = baton(
        db,
        &[
            "demo",
            "post",
            "--factory",
            "steps",
            "--params",
            &params,
            "--json",
        ],
    );
    assert!(out.status.success(), "demo post: {}", stderr(&out));
    let job: Vec<Job> = serde_json::from_slice(&out.stdout).unwrap();
    let job = job[0].clone();

    let command = |name: &str| conductor_command_with(db, name, &effects, LEASE_MS, 500);
    let first = spawn(command("first"));
    let first_pid = first.id();
    let begun = |pid: u32, atom: &str| {
        let effects = effects.clone();
        let atom = atom.to_owned();
        async move {
            SideEffects::read_file(&effects)
                .unwrap()
                .iter()
                .any(|e| e.pid == pid && e.atom == atom && e.action == "begin")
        }
    };
    // Paused while it prepares the second step's call (before its confirmation and call).
    let atom = "step-0001";
    wait_until(
        "the first conductor begins step-0001",
        Duration::from_secs(30),
        || begun(first_pid, atom),
    )
    .await;
    signal(&first, "STOP");
    let second = spawn(command("second"));
    let second_pid = second.id();
    if poll_until(Duration::from_secs(15), || begun(second_pid, atom)).await {
        // Paused 5 s in all, past its lease; then it runs again beside the new owner.
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        signal(&first, "CONT");
    } else {
        // On SQLite, a process paused while it holds the database's write lock (writing a
        // heartbeat) stops every writer, the new owner's claim included, until it runs
        // again. Woken 15 s after its lease ran out, it must still stop before the new owner
        // takes the step over, and make no call after that.
        eprintln!("the paused owner held the database's write lock: woken before the takeover");
        signal(&first, "CONT");
        wait_until(
            "the second conductor takes the job over",
            Duration::from_secs(30),
            || begun(second_pid, atom),
        )
        .await;
    }

    let backends = baton_sql::open(db).await.unwrap();
    wait_until("the job completes", Duration::from_secs(60), || {
        let board = backends.board.clone();
        async move { support::fleet::is_complete(&*board, job.id).await }
    })
    .await;
    let log = SideEffects::read_file(&effects).unwrap();
    let takeover = log
        .iter()
        .filter(|e| e.pid == second_pid && e.action == "begin")
        .map(at)
        .min()
        .unwrap();
    let late: Vec<&Effect> = log
        .iter()
        .filter(|e| e.pid == first_pid && e.is_call() && at(e) >= takeover)
        .collect();
    assert!(
        late.is_empty(),
        "the paused owner made calls after the takeover at {takeover}: {late:#?}\n{}",
        logs(&effects)
    );
    assert!(
        log.iter()
            .any(|e| e.pid == first_pid && e.atom == atom && e.action == "stop"),
        "the paused owner's call never saw its cancellation: {log:#?}\n{}",
        logs(&effects)
    );
    // Every step made its resource once, and the run succeeded.
    for i in 0..STEPS {
        let atom = format!("step-{i:04}");
        let made = log
            .iter()
            .filter(|e| e.atom == atom && e.action == "create")
            .count();
        assert_eq!(made, 1, "{atom} made {made} resources: {log:#?}");
    }
    let snap = backends.store.load_flow(job.flow()).await.unwrap();
    assert_eq!(snap.flow.state, FlowState::Success);
    assert!(snap.atoms.iter().all(|a| a.state == AtomState::Success));
    for child in [first, second] {
        assert!(stop(child).success(), "{}", logs(&effects));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_paused_owner_makes_no_call_after_the_takeover() {
    let db = sqlite_db();
    paused_owner_makes_no_call_after_the_takeover(&db.url, db.dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_paused_owner_makes_no_call_after_the_takeover() {
    let Some(db) = pg_db().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    paused_owner_makes_no_call_after_the_takeover(&db.url, dir.path()).await;
}
