//! Lifecycle conformance: conductors on a board and its store, through upgrades, definition
//! changes, poison jobs and operator recovery. Every case runs on every backend pair, as the
//! [`board`](crate::board) cases do; a backend's tests expand
//! [`lifecycle_conformance!`](crate::lifecycle_conformance).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use baton_core::board::{Cancel, JobBoard};
use baton_core::conductor::{Options, Summary};
use baton_core::model::{Change, FactoryRef};
use baton_core::recovery::{self, Because};
use baton_core::store::{FlowQuery, Store};
use baton_core::{
    Atom, AtomState, Blueprint, Conductor, ConductorId, Engine, Flow, FlowId, FlowState, JobId,
    JobState, NewJob, Registry,
};
use serde_json::json;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{Action, Log, Phase, Probe};

const STEP: Duration = Duration::from_millis(150);

/// Version `version` of the `stack` factory: `steps` steps in a line, with one more per
/// version after the first (what a release adding an atom looks like).
fn stack(log: &Log, version: u32) -> impl Fn(&serde_json::Value) -> Result<Blueprint, String> {
    let log = log.clone();
    move |params| {
        let n = params["steps"].as_u64().ok_or("`steps` must be a number")?;
        let mut flow = Flow::linear("stack");
        for i in 0..n + u64::from(version) - 1 {
            flow = flow.add(Atom::task(format!("s{i}"), Probe::new(&log).delay(STEP)));
        }
        Ok(Blueprint::new(flow))
    }
}

/// A registry with the given versions of the `stack` factory.
pub fn registry(log: &Log, versions: &[u32]) -> Registry {
    versions.iter().fold(Registry::new(), |r, &v| {
        r.register("stack", v, stack(log, v)).unwrap()
    })
}

fn options() -> Options {
    let mut o = Options::default();
    o.lease = Duration::from_millis(600);
    o.heartbeat = Duration::from_millis(100);
    o.poll = Duration::from_millis(30);
    o.drain_timeout = Duration::from_secs(5);
    o
}

/// A conductor running in a task of its own.
#[derive(Debug)]
pub struct Running {
    shutdown: CancellationToken,
    task: JoinHandle<Result<Summary, baton_core::conductor::Error>>,
}

impl Running {
    /// Stops it gracefully.
    pub async fn stop(self) -> Summary {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap()
    }

    /// Kills it: no hand-back, no deregistration; its claims run out with their leases.
    pub async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// Starts a conductor with `registry` on `board` and `store`.
pub fn start<B, S>(board: &B, store: &S, registry: Registry, o: Options) -> Running
where
    B: JobBoard + Clone + 'static,
    S: Store + Clone + 'static,
{
    let shutdown = CancellationToken::new();
    let conductor = Conductor::new(
        Arc::new(board.clone()),
        Engine::new(store.clone()),
        registry,
    )
    .with_options(o)
    .unwrap();
    Running {
        task: tokio::spawn(conductor.run(shutdown.clone())),
        shutdown,
    }
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
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting until {what}");
}

/// How many times each atom of the run reached `state`, from its history.
async fn reached<S: Store>(store: &S, flow: FlowId, state: AtomState) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    let Ok(history) = store.history(flow).await else {
        return out;
    };
    for t in history {
        if let Change::Atom { atom, to, .. } = t.change {
            if to == state {
                *out.entry(atom).or_default() += 1;
            }
        }
    }
    out
}

async fn state_of<B: JobBoard>(board: &B, job: JobId) -> JobState {
    board.get(job).await.unwrap().state
}

/// The rolling upgrade: a run made by version 1, its conductor killed mid-run; a fleet with
/// only version 2 leaves the job waiting; a conductor offering both finishes the run on
/// version 1, every step succeeding once.
pub async fn a_run_finishes_on_the_version_it_was_created_with<B, S>(board: B, store: S)
where
    B: JobBoard + Clone + 'static,
    S: Store + Clone + 'static,
{
    let log = Log::new();
    let job = board
        .post(NewJob::new("create", "stack").params(json!({"steps": 3})))
        .await
        .unwrap();
    let flow = job.flow();

    let old = start(&board, &store, registry(&log, &[1]), options());
    wait_until("s0 succeeded", || async {
        reached(&store, flow, AtomState::Success)
            .await
            .contains_key("s0")
    })
    .await;
    old.kill().await;
    let run = store.load_flow(flow).await.unwrap().flow;
    assert_eq!(run.factory, Some(FactoryRef::new("stack", 1)));
    assert_eq!(run.state, FlowState::Running);

    // The new fleet: version 2 only. It must not touch the job, however long it waits.
    let new = start(&board, &store, registry(&log, &[2]), options());
    tokio::time::sleep(options().lease * 3).await;
    let summary = new.stop().await;
    assert_eq!(
        summary.claimed, 0,
        "a conductor without version 1 claimed the job"
    );
    let waiting = board.get(job.id).await.unwrap();
    assert_eq!((waiting.attempts, waiting.version), (1, Some(1)));
    assert!(!waiting.state.is_terminal(), "{}", waiting.state);

    // A conductor that still has version 1 finishes it there.
    let both = start(&board, &store, registry(&log, &[1, 2]), options());
    wait_until("the job is complete", || async {
        state_of(&board, job.id).await == JobState::Complete
    })
    .await;
    both.stop().await;
    let run = store.load_flow(flow).await.unwrap();
    assert_eq!(run.flow.state, FlowState::Success);
    assert_eq!(run.atoms.len(), 3, "built with version 1");
    let once: BTreeMap<String, usize> = ["s0", "s1", "s2"]
        .iter()
        .map(|s| ((*s).to_owned(), 1))
        .collect();
    assert_eq!(reached(&store, flow, AtomState::Success).await, once);
}

/// A definition changed under the same version and atom names (the steps no longer in a line)
/// is caught by the fingerprint: the job is parked naming the difference, the run untouched.
pub async fn a_changed_wiring_under_the_same_names_parks_the_job<B, S>(board: B, store: S)
where
    B: JobBoard + Clone + 'static,
    S: Store + Clone + 'static,
{
    let log = Log::new();
    let job = board
        .post(NewJob::new("create", "stack").params(json!({"steps": 3})))
        .await
        .unwrap();
    let old = start(&board, &store, registry(&log, &[1]), options());
    wait_until("s0 succeeded", || async {
        reached(&store, job.flow(), AtomState::Success)
            .await
            .contains_key("s0")
    })
    .await;
    old.kill().await;
    let before = store.history(job.flow()).await.unwrap();

    let log2 = log.clone();
    let rewired = Registry::new()
        .register("stack", 1, move |_| {
            let mut flow = Flow::unordered("stack");
            for i in 0..3 {
                flow = flow.add(Atom::task(format!("s{i}"), Probe::new(&log2)));
            }
            Ok(Blueprint::new(flow))
        })
        .unwrap();
    let c = start(&board, &store, rewired, options());
    wait_until("the job is parked", || async {
        state_of(&board, job.id).await == JobState::Parked
    })
    .await;
    let summary = c.stop().await;
    assert_eq!(summary.parked, 1);
    let outcome = board.get(job.id).await.unwrap().outcome.unwrap();
    assert_eq!(outcome["parked"], "definition", "{outcome}");
    let error = outcome["error"].as_str().unwrap();
    assert!(error.contains("wiring"), "{error}");
    assert!(
        error.contains("edges no longer defined: s0 -> s1, s1 -> s2"),
        "{error}"
    );
    assert_eq!(
        store.history(job.flow()).await.unwrap(),
        before,
        "the run was left as stored"
    );
}

/// A job that crashed its conductors (claimed again and again, never progressing, never handed
/// back) is parked when claimed past the limit, instead of crashing one more; others run; an
/// operator's retry puts it back.
pub async fn a_job_claimed_too_often_without_progress_is_parked<B, S>(board: B, store: S)
where
    B: JobBoard + Clone + 'static,
    S: Store + Clone + 'static,
{
    let log = Log::new();
    let poison = board
        .post(NewJob::new("poison", "stack").params(json!({"steps": 2})))
        .await
        .unwrap();
    // Three conductors that died right after claiming it.
    let offer = registry(&log, &[1]).offer();
    for _ in 0..3 {
        let claim = loop {
            match board
                .claim(ConductorId::new(), Duration::from_millis(30), &offer)
                .await
                .unwrap()
            {
                Some(c) => break c,
                None => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        };
        assert_eq!(claim.job.id, poison.id);
    }
    tokio::time::sleep(Duration::from_millis(40)).await;
    let good = board
        .post(NewJob::new("good", "stack").params(json!({"steps": 1})))
        .await
        .unwrap();
    let mut o = options();
    o.max_stalled_claims = 3;
    let c = start(&board, &store, registry(&log, &[1]), o);
    wait_until("both jobs are done", || async {
        state_of(&board, poison.id).await == JobState::Parked
            && state_of(&board, good.id).await == JobState::Complete
    })
    .await;
    c.stop().await;
    let parked = board.get(poison.id).await.unwrap();
    assert_eq!(parked.outcome.as_ref().unwrap()["parked"], "stalled");
    assert_eq!(parked.attempts, 4);
    // Only the poison job's flow has a second step: it never ran.
    assert!(log.of("s1").is_empty(), "the poison job's flow ran");
    // An operator retries it (say, after a fix): it runs.
    let retried = recovery::retry(&board, poison.id).await.unwrap();
    assert_eq!(
        (retried.state, retried.stalled_claims),
        (JobState::Unclaimed, 0)
    );
    let c = start(&board, &store, registry(&log, &[1]), options());
    wait_until("the retried job is complete", || async {
        state_of(&board, poison.id).await == JobState::Complete
    })
    .await;
    c.stop().await;
}

/// `flows revert` of a stranded run (its job trashed while it ran): the job is reopened with a
/// request to revert, and a conductor reverts exactly the atoms that ran, in reverse order.
pub async fn reverting_a_stranded_run_undoes_exactly_what_ran_in_reverse_order<B, S>(
    board: B,
    store: S,
) where
    B: JobBoard + Clone + 'static,
    S: Store + Clone + 'static,
{
    let log = Log::new();
    let job = board
        .post(NewJob::new("create", "stack").params(json!({"steps": 5})))
        .await
        .unwrap();
    let flow = job.flow();
    let c = start(&board, &store, registry(&log, &[1]), options());
    wait_until("s1 succeeded", || async {
        reached(&store, flow, AtomState::Success)
            .await
            .contains_key("s1")
    })
    .await;
    c.kill().await;
    // Owned by a live lease: refused, nothing changed.
    assert!(matches!(
        recovery::revert(&store, &board, flow).await,
        Err(recovery::Error::Owned { .. })
    ));
    assert_eq!(board.get(job.id).await.unwrap().cancel, None);
    // An operator trashes the job: the run is stranded, and listed so.
    board.trash(job.id, None, json!("gave up")).await.unwrap();
    let stranded = recovery::stranded(&store, &board, &FlowQuery::all())
        .await
        .unwrap();
    assert_eq!(stranded.len(), 1);
    assert_eq!(stranded[0].flow.id, flow);
    assert_eq!(stranded[0].because, Because::JobEnded(JobState::Trashed));

    let requeued = recovery::revert(&store, &board, flow).await.unwrap();
    assert_eq!(
        (requeued.state, requeued.cancel),
        (JobState::Unclaimed, Some(Cancel::Revert))
    );
    let started = log.sequence(Action::Execute, Phase::Start);
    let c = start(&board, &store, registry(&log, &[1]), options());
    wait_until("the job is complete", || async {
        state_of(&board, job.id).await == JobState::Complete
    })
    .await;
    c.stop().await;
    let run = store.load_flow(flow).await.unwrap();
    assert_eq!(run.flow.state, FlowState::Reverted);
    let outcome = board.get(job.id).await.unwrap().outcome.unwrap();
    assert_eq!(outcome["state"], "REVERTED", "{outcome}");
    // Exactly what ran (started, maybe interrupted), undone last first; nothing ran anew.
    let mut ran: Vec<String> = started.clone();
    ran.dedup();
    ran.reverse();
    assert_eq!(log.sequence(Action::Revert, Phase::Ok), ran);
    assert_eq!(log.sequence(Action::Execute, Phase::Start), started);
    assert!(recovery::stranded(&store, &board, &FlowQuery::all())
        .await
        .unwrap()
        .is_empty());
}

/// Expands to one `#[tokio::test]` per lifecycle case, each calling the case with a fresh
/// (board, store) pair made by `$make` (with `optional:`, an `Option` of one: the case is
/// skipped when it is `None`, as for a database that is not configured).
#[macro_export]
macro_rules! lifecycle_conformance {
    (optional: $make:expr) => {
        $crate::lifecycle_conformance!(@all [optional] $make);
    };
    ($make:expr) => {
        $crate::lifecycle_conformance!(@all [required] $make);
    };
    (@all [$mode:ident] $make:expr) => {
        $crate::lifecycle_conformance!(@cases [$mode] $make;
            a_run_finishes_on_the_version_it_was_created_with,
            a_changed_wiring_under_the_same_names_parks_the_job,
            a_job_claimed_too_often_without_progress_is_parked,
            reverting_a_stranded_run_undoes_exactly_what_ran_in_reverse_order,
        );
    };
    (@cases [required] $make:expr; $($case:ident,)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let (board, store) = $make;
                $crate::lifecycle::$case(board, store).await;
            }
        )*
    };
    (@cases [optional] $make:expr; $($case:ident,)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                if let Some((board, store)) = $make {
                    $crate::lifecycle::$case(board, store).await;
                }
            }
        )*
    };
}
