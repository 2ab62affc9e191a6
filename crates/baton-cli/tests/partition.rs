//! A conductor cut off from PostgreSQL, as real processes: `baton conductor` "cut" reaches the
//! database through a loopback proxy, "other" directly. The proxy stops forwarding while "cut"
//! is in the middle of a step (silence both ways, sockets kept open: a dead network path).
//!
//! - "cut" stops its step before "other" can claim the job (its lease, 3 s, runs out on the
//!   board; "cut" fences itself a fifth of it earlier): from the side effects' timestamps, no
//!   two processes run the same atom at once, and "cut" makes no cloud call after the
//!   takeover;
//! - it says so at once: its calls fail within their call timeout (a third of the lease), and
//!   its log shows it well within the lease;
//! - once the link heals it recovers: still running, registered again, and running work;
//! - cut off again and asked to stop (SIGTERM), it ends within its drain timeout and two call
//!   timeouts.

// Test helpers panic on purpose: that is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use baton_cli::demo::{Effect, SideEffects};
use baton_core::board::Job;
use baton_testkit::Proxy;
use chrono::{DateTime, Utc};
use support::fleet::{conductor_command_with, logs, signal, spawn, wait_until, Conductor};
use support::{baton, pg_db, stderr};

/// The lease and heartbeat of the report.
const LEASE_MS: u64 = 3_000;
const HEARTBEAT_MS: u64 = 500;
/// What `baton conductor` makes of that lease: a third of it.
const CALL_TIMEOUT: Duration = Duration::from_millis(LEASE_MS / 3);
/// The drain timeout "cut" is started with.
const DRAIN_MS: u64 = 2_000;
/// Each step takes 4 s: 2 s preparing its call, the call (confirmed first), 2 s for the
/// resource.
const STEP_MS: u64 = 4_000;
const STEPS: u32 = 3;

fn at(e: &Effect) -> DateTime<Utc> {
    e.at.parse().unwrap()
}

/// Posts a demo job (`baton demo post --json` with `args`) and returns it.
fn post(db: &str, args: &[&str]) -> Job {
    let mut all = vec!["demo", "post", "--json"];
    all.extend_from_slice(args);
    let out = baton(db, &all);
    assert!(out.status.success(), "demo post: {}", stderr(&out));
    let jobs: Vec<Job> = serde_json::from_slice(&out.stdout).unwrap();
    jobs[0].clone()
}

/// Posts a job only "cut" runs (`stack-create` 2, one server), with steps of `step_ms`.
fn post_for_cut(db: &str, step_ms: u64) -> Job {
    let params = serde_json::json!({ "step_ms": step_ms, "servers": 1, "volumes": 0 });
    post(
        db,
        &[
            "--factory",
            "stack-create",
            "--version",
            "2",
            "--params",
            &params.to_string(),
        ],
    )
}

/// The effects recorded so far.
fn effects(file: &Path) -> Vec<Effect> {
    SideEffects::read_file(file).unwrap()
}

/// Waits until `pid` has recorded `action` for an atom of `flow` (any atom if `atom` is
/// `None`), and returns that effect.
async fn effect_of(
    file: &Path,
    what: &str,
    pid: u32,
    action: &str,
    flow: &str,
    atom: Option<&str>,
) -> Effect {
    support::fleet::wait_for(what, Duration::from_secs(30), || {
        let found = effects(file).into_iter().find(|e| {
            e.pid == pid && e.action == action && e.flow == flow && atom.is_none_or(|a| e.atom == a)
        });
        async move { found }
    })
    .await
}

/// Conductor `name`'s log so far.
fn log_of(file: &Path, name: &str) -> String {
    std::fs::read_to_string(file.with_file_name(format!("{name}.log"))).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_conductor_cut_off_stops_before_the_takeover_and_recovers() {
    let Some(db) = pg_db().await else {
        return;
    };
    let began = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("effects.jsonl");
    let proxy = Proxy::to_url(&db.url).await.unwrap();
    let params = serde_json::json!({ "steps": STEPS, "step_ms": STEP_MS }).to_string();
    let job = post(&db.url, &["--factory", "steps", "--params", &params]);
    let flow = job.flow().to_string();

    let mut command =
        conductor_command_with(&proxy.url(&db.url), "cut", &file, LEASE_MS, HEARTBEAT_MS);
    command.args(["--drain-timeout-ms", &DRAIN_MS.to_string()]);
    let mut cut = spawn(command);
    let cut_pid = cut.id();
    let first = effect_of(
        &file,
        "\"cut\" begins a step",
        cut_pid,
        "begin",
        &flow,
        None,
    )
    .await;
    // In the middle of preparing the step's call.
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.cut();
    let cut_at = Instant::now();
    let cut_wall = Utc::now();
    // "other" offers version 1 of every demo factory only: jobs pinned to `stack-create` 2
    // are "cut"'s alone.
    let mut command = conductor_command_with(&db.url, "other", &file, LEASE_MS, HEARTBEAT_MS);
    command.args(["--demo-versions", "1"]);
    let other = spawn(command);
    let other_pid = other.id();

    // "cut" says at once that its database does not answer: its first heartbeat after the
    // cut fails within its call timeout.
    wait_until(
        "\"cut\" logs a call the database did not answer",
        LEASE_DURATION,
        || {
            let log = log_of(&file, "cut");
            async move { log.contains("did not answer") }
        },
    )
    .await;
    let said = cut_at.elapsed();
    eprintln!("\"cut\" logged the loss {said:?} after the cut");
    assert!(said < LEASE_DURATION, "{said:?}\n{}", logs(&file));

    // "other" takes the job over once the lease ran out, and runs the step "cut" was in.
    let takeover = effect_of(
        &file,
        "\"other\" begins the step \"cut\" was in",
        other_pid,
        "begin",
        &flow,
        Some(&first.atom),
    )
    .await;
    let stopped = effects(&file)
        .into_iter()
        .find(|e| e.pid == cut_pid && e.atom == first.atom && e.action == "stop")
        .unwrap_or_else(|| {
            panic!(
                "\"cut\" never stopped {}: {:#?}\n{}",
                first.atom,
                effects(&file),
                logs(&file)
            )
        });
    eprintln!(
        "cut at {cut_wall}; \"cut\" stopped {} at {} ({} ms after the cut); \"other\" began it at {} ({} ms after \"cut\" stopped)",
        first.atom,
        stopped.at,
        (at(&stopped) - cut_wall).num_milliseconds(),
        takeover.at,
        (at(&takeover) - at(&stopped)).num_milliseconds()
    );
    assert!(
        at(&stopped) < at(&takeover),
        "\"cut\" stopped {} at {}, after \"other\" began it at {}\n{}",
        first.atom,
        stopped.at,
        takeover.at,
        logs(&file)
    );
    let self_fenced = log_of(&file, "cut").contains("no heartbeat confirmed by the board");
    assert!(self_fenced, "{}", logs(&file));

    // The link heals while "other" runs the job: "cut" is still there, registers again, and
    // runs work ("stack-create" 2, which only it offers).
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    proxy.heal();
    let healed = Instant::now();
    let healed_wall = Utc::now();
    assert!(
        cut.try_wait().unwrap().is_none(),
        "\"cut\" exited: {}",
        logs(&file)
    );
    let backends = baton_sql::open(&db.url).await.unwrap();
    wait_until("\"cut\" registers again", Duration::from_secs(15), || {
        let board = backends.board.clone();
        async move {
            board
                .conductors()
                .await
                .unwrap()
                .iter()
                .any(|c| c.name == "cut" && c.last_seen > healed_wall)
        }
    })
    .await;
    let work = post_for_cut(&db.url, 20);
    wait_until("\"cut\" runs new work", Duration::from_secs(20), || {
        let board = backends.board.clone();
        async move { support::fleet::is_complete(&*board, work.id).await }
    })
    .await;
    let work_flow = work.flow().to_string();
    let made: Vec<Effect> = effects(&file)
        .into_iter()
        .filter(|e| e.flow == work_flow && e.action == "create")
        .collect();
    assert!(
        !made.is_empty() && made.iter().all(|e| e.pid == cut_pid),
        "{made:#?}"
    );
    eprintln!("\"cut\" ran new work {:?} after the heal", healed.elapsed());

    // Cut off again while running a step, and asked to stop: it ends within its drain timeout
    // and two call timeouts (the hand-back of the job it had to halt, and deregistering).
    let slow = post_for_cut(&db.url, 3_000);
    effect_of(
        &file,
        "\"cut\" begins a slow step",
        cut_pid,
        "begin",
        &slow.flow().to_string(),
        None,
    )
    .await;
    proxy.cut();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let asked = Instant::now();
    signal(&cut, "TERM");
    let limit = Duration::from_millis(DRAIN_MS) + CALL_TIMEOUT * 2;
    let status = wait_exit(&mut cut, limit + Duration::from_secs(10)).await;
    let took = asked.elapsed();
    eprintln!(
        "\"cut\", cut off, ended {took:?} after SIGTERM (drain timeout {DRAIN_MS} ms, call timeout {CALL_TIMEOUT:?})"
    );
    assert!(status.is_some(), "\"cut\" did not end\n{}", logs(&file));
    assert!(
        took <= limit + Duration::from_millis(1_500),
        "{took:?}\n{}",
        logs(&file)
    );
    assert!(status.unwrap().success(), "{:?}\n{}", status, logs(&file));
    proxy.heal();

    // "other" finishes the first job; every step made its resource once, and "cut" made no
    // cloud call after "other" took over.
    wait_until("the first job completes", Duration::from_secs(40), || {
        let board = backends.board.clone();
        async move { support::fleet::is_complete(&*board, job.id).await }
    })
    .await;
    let log = effects(&file);
    let late: Vec<&Effect> = log
        .iter()
        .filter(|e| e.pid == cut_pid && e.flow == flow && e.is_call() && at(e) >= at(&takeover))
        .collect();
    assert!(
        late.is_empty(),
        "calls by \"cut\" after the takeover: {late:#?}"
    );
    for i in 0..STEPS {
        let atom = format!("step-{i:04}");
        let made = log
            .iter()
            .filter(|e| e.flow == flow && e.atom == atom && e.action == "create")
            .count();
        assert_eq!(made, 1, "{atom} made {made} resources: {log:#?}");
    }
    assert!(support::fleet::stop(other).success(), "{}", logs(&file));
    eprintln!("the whole test took {:?}", began.elapsed());
}

/// The lease, as a duration.
const LEASE_DURATION: Duration = Duration::from_millis(LEASE_MS);

/// Waits up to `limit` for `child` to exit; its status, or `None` if it is still running.
async fn wait_exit(child: &mut Conductor, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
