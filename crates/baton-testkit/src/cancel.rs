//! Cancelling jobs through the board, with conductors: a running job, a waiting one, one whose
//! owner died; suspend; supersede by key; job deadlines. Every case runs on every backend pair;
//! a backend's tests expand [`cancel_conformance!`](crate::cancel_conformance).

use std::time::{Duration, Instant};

use baton_core::board::{Cancel, JobBoard};
use baton_core::conductor::Options;
use baton_core::store::Store;
use baton_core::{Atom, AtomState, Blueprint, Flow, FlowState, JobId, JobState, NewJob, Registry};
use chrono::Utc;
use serde_json::json;

use crate::lifecycle::start;
use crate::{Action, Log, Phase, Probe};

/// `slow`: `steps` probes in a line, each taking `step_ms`.
fn registry(log: &Log) -> Registry {
    let log = log.clone();
    Registry::new()
        .register("slow", 1, move |params| {
            let n = params["steps"].as_u64().ok_or("`steps` must be a number")?;
            let step = Duration::from_millis(params["step_ms"].as_u64().unwrap_or(200));
            let mut flow = Flow::linear("slow");
            for i in 0..n {
                flow = flow.add(Atom::task(format!("s{i}"), Probe::new(&log).delay(step)));
            }
            Ok(Blueprint::new(flow))
        })
        .unwrap()
}

fn options() -> Options {
    let mut o = Options::default();
    o.lease = Duration::from_millis(900);
    o.heartbeat = Duration::from_millis(100);
    o.poll = Duration::from_millis(30);
    o.drain_timeout = Duration::from_secs(5);
    o
}

fn slow(name: &str, steps: u32, step_ms: u64) -> NewJob {
    NewJob::new(name, "slow").params(json!({ "steps": steps, "step_ms": step_ms }))
}

async fn wait_until<F, Fut>(what: &str, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..1500 {
        if done().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting until {what}");
}

async fn ended<B: JobBoard>(board: &B, job: JobId) -> baton_core::board::Job {
    for _ in 0..1500 {
        let job = board.get(job).await.unwrap();
        if job.state.is_terminal() || job.state == JobState::Parked {
            return job;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for job {job} to end");
}

/// The calls of `flow`'s run in `log`, as `(atom, action, phase)`.
fn calls_of(log: &Log, flow: baton_core::FlowId) -> Vec<(String, Action, Phase)> {
    let prefix = format!("{flow}/");
    log.calls()
        .into_iter()
        .filter(|c| c.key.starts_with(&prefix))
        .map(|c| (c.atom, c.action, c.phase))
        .collect()
}

/// A running job asked to revert: its owner notices within about a second, cancels the
/// running task and reverts what ran, in reverse order; the job completes `REVERTED`.
pub async fn cancelling_a_running_job_reverts_its_run<B, S>(board: B, store: S)
where
    B: JobBoard + Clone + 'static,
    S: Store + Clone + 'static,
{
    let log = Log::new();
    let job = board.post(slow("cancel-running", 4, 3_000)).await.unwrap();
    let conductor = start(&board, &store, registry(&log), options());
    wait_until("s1 started", || async {
        calls_of(&log, job.flow()).contains(&("s1".into(), Action::Execute, Phase::Start))
    })
    .await;
    let asked = Instant::now();
    board.request_cancel(job.id, Cancel::Revert).await.unwrap();
    let done = ended(&board, job.id).await;
    // A 3 s step cancelled: well under a step, whatever the board's latency.
    let took = asked.elapsed();
    assert!(took < Duration::from_millis(2_500), "took {took:?}");
    assert_eq!(done.state, JobState::Complete);
    assert_eq!(done.outcome.unwrap()["state"], json!("REVERTED"));
    let run = store.load_flow(job.flow()).await.unwrap();
    assert_eq!(run.flow.state, FlowState::Reverted);
    let calls = calls_of(&log, job.flow());
    let reverts: Vec<&str> = calls
        .iter()
        .filter(|(_, a, p)| *a == Action::Revert && *p == Phase::Start)
        .map(|(atom, _, _)| atom.as_str())
        .collect();
    assert_eq!(reverts, ["s1", "s0"], "{calls:?}");
    assert!(
        !calls.contains(&("s1".into(), Action::Execute, Phase::Ok)),
        "s1 was cancelled, not finished: {calls:?}"
    );
    conductor.stop().await;
}

/// A job asked to revert while it waits is honoured by whoever claims it: nothing runs, and
/// the job completes saying its run never started.
pub async fn cancelling_a_waiting_job_runs_nothing<B, S>(board: B, store: S)
where
    B: JobBoard + Clone + 'static,
    S: Store + Clone + 'static,
{
    let log = Log::new();
    let job = board.post(slow("cancel-waiting", 3, 50)).await.unwrap();
    board.request_cancel(job.id, Cancel::Revert).await.unwrap();
    let conductor = start(&board, &store, registry(&log), options());
    let done = ended(&board, job.id).await;
    assert_eq!(done.state, JobState::Complete);
    assert_eq!(done.outcome.unwrap()["state"], json!(null));
    assert!(log.calls().is_empty(), "{:?}", log.calls());
    conductor.stop().await;
}

/// A job whose owner died mid-run, asked to revert: the conductor that claims it when the
/// lease runs out reverts what ran.
pub async fn cancelling_a_dead_owners_job_reverts_it_on_takeover<B, S>(board: B, store: S)
where
    B: JobBoard + Clone + 'static,
    S: Store + Clone + 'static,
{
    let log = Log::new();
    let job = board.post(slow("cancel-dead", 4, 300)).await.unwrap();
    let doomed = start(&board, &store, registry(&log), options());
    wait_until("s1 started", || async {
        calls_of(&log, job.flow()).contains(&("s1".into(), Action::Execute, Phase::Start))
    })
    .await;
    doomed.kill().await;
    board.request_cancel(job.id, Cancel::Revert).await.unwrap();
    let heir = start(&board, &store, registry(&log), options());
    let done = ended(&board, job.id).await;
    assert_eq!(done.state, JobState::Complete);
    assert_eq!(done.outcome.unwrap()["state"], json!("REVERTED"));
    let run = store.load_flow(job.flow()).await.unwrap();
    assert!(run
        .atoms
        .iter()
        .all(|a| matches!(a.state, AtomState::Reverted | AtomState::Pending)));
    assert_eq!(run.atoms[0].state, AtomState::Reverted);
    heir.stop().await;
}

/// A running job asked to suspend: its task is cancelled, the run ends `SUSPENDED`, and the
/// job is parked for an operator; reopened, it runs on to `SUCCESS`, the cancelled step again.
pub async fn suspending_a_running_job_parks_it<B, S>(board: B, store: S)
where
    B: JobBoard + Clone + 'static,
    S: Store + Clone + 'static,
{
    let log = Log::new();
    let job = board.post(slow("suspend", 3, 1_500)).await.unwrap();
    let conductor = start(&board, &store, registry(&log), options());
    wait_until("s1 started", || async {
        calls_of(&log, job.flow()).contains(&("s1".into(), Action::Execute, Phase::Start))
    })
    .await;
    board.request_cancel(job.id, Cancel::Suspend).await.unwrap();
    let parked = ended(&board, job.id).await;
    assert_eq!(parked.state, JobState::Parked);
    assert_eq!(parked.outcome.unwrap()["parked"], json!("suspended"));
    assert_eq!(parked.cancel, None, "parking answers the request");
    let run = store.load_flow(job.flow()).await.unwrap();
    assert_eq!(run.flow.state, FlowState::Suspended);
    assert_eq!(
        run.atoms[1].state,
        AtomState::Running,
        "left as interrupted"
    );

    board
        .requeue(job.id, baton_core::board::Requeue::retry())
        .await
        .unwrap();
    wait_until("the job is complete", || async {
        board.get(job.id).await.unwrap().state == JobState::Complete
    })
    .await;
    let run = store.load_flow(job.flow()).await.unwrap();
    assert_eq!(run.flow.state, FlowState::Success);
    assert_eq!(run.atoms[1].attempt, 2, "the cancelled step ran again");
    conductor.stop().await;
}

/// Supersede by key: a new update of a stack replaces the one in progress. The old run is
/// reverted, then the new one runs to `SUCCESS`, never interleaved.
pub async fn a_superseding_job_runs_after_the_old_one_is_reverted<B, S>(board: B, store: S)
where
    B: JobBoard + Clone + 'static,
    S: Store + Clone + 'static,
{
    let log = Log::new();
    let old = board
        .post(slow("update-1", 4, 400).key("stack-7"))
        .await
        .unwrap();
    let conductor = start(&board, &store, registry(&log), options());
    wait_until("the old update's s1 started", || async {
        calls_of(&log, old.flow()).contains(&("s1".into(), Action::Execute, Phase::Start))
    })
    .await;
    let new = board
        .post(slow("update-2", 2, 50).key("stack-7").supersede())
        .await
        .unwrap();
    assert_eq!(new.supersedes, [old.id]);
    let done = ended(&board, new.id).await;
    assert_eq!(done.state, JobState::Complete);
    assert_eq!(done.outcome.unwrap()["state"], json!("SUCCESS"));
    let old_done = board.get(old.id).await.unwrap();
    assert_eq!(old_done.outcome.unwrap()["state"], json!("REVERTED"));
    // Never interleaved: every call of the old run came before the first of the new.
    let calls = log.calls();
    let prefix = format!("{}/", new.flow());
    let first_new = calls
        .iter()
        .position(|c| c.key.starts_with(&prefix))
        .unwrap();
    let old_prefix = format!("{}/", old.flow());
    let last_old = calls
        .iter()
        .rposition(|c| c.key.starts_with(&old_prefix))
        .unwrap();
    assert!(last_old < first_new, "interleaved: {calls:#?}");
    conductor.stop().await;
}

/// A job's deadline is its run's: past it, the running task is cancelled and the run reverts.
/// A job whose deadline passes while it waits completes without a run.
pub async fn a_jobs_deadline_reverts_its_run<B, S>(board: B, store: S)
where
    B: JobBoard + Clone + 'static,
    S: Store + Clone + 'static,
{
    let log = Log::new();
    let deadline = Utc::now() + chrono::Duration::milliseconds(1_200);
    let job = board
        .post(slow("deadline", 4, 600).deadline(deadline))
        .await
        .unwrap();
    let conductor = start(&board, &store, registry(&log), options());
    let done = ended(&board, job.id).await;
    assert_eq!(done.state, JobState::Complete);
    assert_eq!(done.outcome.unwrap()["state"], json!("REVERTED"));
    let run = store.load_flow(job.flow()).await.unwrap();
    assert_eq!(
        run.flow.deadline.map(|d| d.at.timestamp_millis()),
        Some(deadline.timestamp_millis())
    );
    let failure = run
        .atoms
        .iter()
        .find_map(|a| a.failure.clone())
        .expect("the step running at the deadline failed");
    assert_eq!(failure.kind, baton_core::FailureKind::Timeout);
    conductor.stop().await;

    let late = board
        .post(slow("too-late", 2, 50).deadline(Utc::now() + chrono::Duration::milliseconds(200)))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let conductor = start(&board, &store, registry(&log), options());
    let done = ended(&board, late.id).await;
    assert_eq!(done.state, JobState::Complete);
    let outcome = done.outcome.unwrap();
    assert_eq!(outcome["state"], json!(null), "{outcome}");
    assert!(outcome["deadline"].is_string(), "{outcome}");
    assert!(calls_of(&log, late.flow()).is_empty());
    conductor.stop().await;
}

/// Expands to one `#[tokio::test]` per case, each given a board and its store from `$make`
/// (with `optional:`, an `Option` of the pair; `None` passes at once).
#[macro_export]
macro_rules! cancel_conformance {
    (optional: $make:expr) => {
        $crate::cancel_conformance!(@all [optional] $make);
    };
    ($make:expr) => {
        $crate::cancel_conformance!(@all [required] $make);
    };
    (@all [$mode:ident] $make:expr) => {
        $crate::cancel_conformance!(@cases [$mode] $make;
            cancelling_a_running_job_reverts_its_run,
            cancelling_a_waiting_job_runs_nothing,
            cancelling_a_dead_owners_job_reverts_it_on_takeover,
            suspending_a_running_job_parks_it,
            a_superseding_job_runs_after_the_old_one_is_reverted,
            a_jobs_deadline_reverts_its_run,
        );
    };
    (@cases [required] $make:expr; $($case:ident,)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let (board, store) = $make;
                $crate::cancel::$case(board, store).await;
            }
        )*
    };
    (@cases [optional] $make:expr; $($case:ident,)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                if let Some((board, store)) = $make {
                    $crate::cancel::$case(board, store).await;
                }
            }
        )*
    };
}
