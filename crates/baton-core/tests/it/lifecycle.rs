//! Every run ends at rest: upgrades, mixed fleets, bad jobs and operator recovery, on the
//! memory board. The scenarios every backend runs are in `baton_testkit::lifecycle`; these are
//! the ones about the conductor and the engine alone.

mod conformance {
    fn pair() -> (baton_core::MemoryJobBoard, baton_core::MemoryStore) {
        let store = baton_core::MemoryStore::new();
        (baton_core::MemoryJobBoard::new(&store), store)
    }

    baton_testkit::lifecycle_conformance!(pair());

    mod cancel {
        baton_testkit::cancel_conformance!(super::pair());
    }
}

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use baton_core::board::JobBoard;
use baton_core::conductor::{Options, Summary};
use baton_core::model::{Change, FactoryRef};
use baton_core::recovery;
use baton_core::store::{FlowQuery, Store};
use baton_core::{
    AtomState, Blueprint, Conductor, ConductorId, Engine, Flow, FlowId, FlowState, JobState,
    MemoryJobBoard, MemoryStore, NewJob, Registry,
};
use baton_testkit::{Action, Log, Phase, Probe};
use serde_json::json;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const STEP: Duration = Duration::from_millis(150);

/// Version `version` of the `stack` factory: `steps` steps in a line, with one more per
/// version after the first (what a release adding an atom looks like).
fn stack(log: &Log, version: u32) -> impl Fn(&serde_json::Value) -> Result<Blueprint, String> {
    let log = log.clone();
    move |params| {
        let n = params["steps"].as_u64().ok_or("`steps` must be a number")?;
        let mut flow = Flow::linear("stack");
        for i in 0..n + u64::from(version) - 1 {
            flow = flow.add(baton_core::Atom::task(
                format!("s{i}"),
                Probe::new(&log).delay(STEP),
            ));
        }
        Ok(Blueprint::new(flow))
    }
}

fn registry(log: &Log, versions: &[u32]) -> Registry {
    versions.iter().fold(Registry::new(), |r, &v| {
        r.register("stack", v, stack(log, v)).unwrap()
    })
}

fn options() -> Options {
    let mut o = Options::default();
    o.lease = Duration::from_millis(500);
    o.heartbeat = Duration::from_millis(100);
    o.poll = Duration::from_millis(30);
    o.drain_timeout = Duration::from_secs(5);
    o
}

struct Running {
    shutdown: CancellationToken,
    task: JoinHandle<Result<Summary, baton_core::conductor::Error>>,
}

impl Running {
    /// Stops it gracefully.
    async fn stop(self) -> Summary {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap()
    }
}

fn start(board: &MemoryJobBoard, store: &MemoryStore, registry: Registry, o: Options) -> Running {
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
    for _ in 0..600 {
        if done().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting until {what}");
}

/// How many times each atom of the run reached `state`, from its history.
async fn reached(store: &MemoryStore, flow: FlowId, state: AtomState) -> BTreeMap<String, usize> {
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

async fn state_of(board: &MemoryJobBoard, job: baton_core::JobId) -> JobState {
    board.get(job).await.unwrap().state
}

/// A job whose factory panics is parked with the panic's message, and the conductor goes on
/// with other jobs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_factory_that_panics_parks_its_job_and_the_fleet_goes_on() {
    let (store, log) = (MemoryStore::new(), Log::new());
    let board = MemoryJobBoard::new(&store);
    let poison = board
        .post(NewJob::new("poison", "boom").params(json!({})))
        .await
        .unwrap();
    let good = board
        .post(NewJob::new("good", "stack").params(json!({"steps": 1})))
        .await
        .unwrap();
    let registry = registry(&log, &[1])
        .register("boom", 1, |_| panic!("the factory exploded"))
        .unwrap();
    let c = start(&board, &store, registry, options());
    wait_until("both jobs are done", || async {
        state_of(&board, poison.id).await == JobState::Parked
            && state_of(&board, good.id).await == JobState::Complete
    })
    .await;
    let summary = c.stop().await;
    assert_eq!((summary.parked, summary.consumed), (1, 1));
    let outcome = board.get(poison.id).await.unwrap().outcome.unwrap();
    assert_eq!(outcome["parked"], "build");
    assert!(
        outcome["error"]
            .as_str()
            .unwrap()
            .contains("the factory exploded"),
        "{outcome}"
    );
}

/// What an operator may not do is refused with a typed error, and nothing changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_refuses_what_makes_no_sense() {
    let (store, log) = (MemoryStore::new(), Log::new());
    let board = MemoryJobBoard::new(&store);
    let job = board
        .post(NewJob::new("create", "stack").params(json!({"steps": 1})))
        .await
        .unwrap();
    // Retry of a job that is not parked.
    assert!(matches!(
        recovery::retry(&board, job.id).await,
        Err(recovery::Error::NotParked {
            state: JobState::Unclaimed,
            ..
        })
    ));
    // A job pinned to version 0 cannot be posted.
    assert!(board
        .post(NewJob::new("zero", "stack").version(0))
        .await
        .is_err());
    let c = start(&board, &store, registry(&log, &[1]), options());
    wait_until("the job is complete", || async {
        state_of(&board, job.id).await == JobState::Complete
    })
    .await;
    c.stop().await;
    // Revert or resume of a run that ended.
    for result in [
        recovery::revert(&store, &board, job.flow()).await,
        recovery::resume(&store, &board, job.flow()).await,
    ] {
        assert!(
            matches!(
                result,
                Err(recovery::Error::Ended {
                    state: FlowState::Success,
                    ..
                })
            ),
            "{result:?}"
        );
    }
    assert_eq!(state_of(&board, job.id).await, JobState::Complete);
    // A run no job made.
    let flow = Flow::linear("plain")
        .add(baton_core::Atom::task("a", Probe::new(&log)))
        .compile()
        .unwrap();
    let plain = Engine::new(store.clone())
        .create(&flow, Default::default())
        .await
        .unwrap();
    assert!(matches!(
        recovery::revert(&store, &board, plain).await,
        Err(recovery::Error::NoJob { .. })
    ));
}

/// A waiting job asked to revert before its run ever started completes without one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_asked_to_revert_before_it_ran_completes_without_a_run() {
    let (store, log) = (MemoryStore::new(), Log::new());
    let board = MemoryJobBoard::new(&store);
    let job = board
        .post(NewJob::new("create", "stack").params(json!({"steps": 2})))
        .await
        .unwrap();
    board
        .requeue(job.id, baton_core::board::Requeue::revert())
        .await
        .unwrap();
    let c = start(&board, &store, registry(&log, &[1]), options());
    wait_until("the job is complete", || async {
        state_of(&board, job.id).await == JobState::Complete
    })
    .await;
    c.stop().await;
    let outcome = board.get(job.id).await.unwrap().outcome.unwrap();
    assert!(outcome["cancelled"].is_string(), "{outcome}");
    assert!(
        store.load_flow(job.flow()).await.is_err(),
        "no run was created"
    );
    assert!(log.calls().is_empty(), "nothing ran");
}

/// A conductor shut down while an atom outlasts its drain timeout halts the run and hands the
/// job back: the next conductor takes it at once, and restarts are not counted as stalls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_halted_at_shutdown_is_handed_back_and_is_no_stall() {
    let (store, log) = (MemoryStore::new(), Log::new());
    let board = MemoryJobBoard::new(&store);
    let log2 = log.clone();
    let slow = || {
        let log = log2.clone();
        Registry::new()
            .register("slow", 1, move |_| {
                Ok(Blueprint::new(Flow::linear("slow").add(
                    baton_core::Atom::task("long", Probe::new(&log).delay(Duration::from_secs(30))),
                )))
            })
            .unwrap()
    };
    let job = board.post(NewJob::new("slow", "slow")).await.unwrap();
    let mut o = options();
    o.drain_timeout = Duration::from_millis(20);
    o.max_stalled_claims = 2;
    for round in 1..=4 {
        let c = start(&board, &store, slow(), o.clone());
        wait_until("the long atom runs", || async {
            log.of("long").len() >= round
        })
        .await;
        let summary = c.stop().await;
        assert_eq!(summary.left_behind, 1);
        let after = board.get(job.id).await.unwrap();
        assert_eq!(after.state, JobState::Unclaimed, "handed back at once");
        assert_eq!(after.stalled_claims, 0);
    }
    assert_eq!(board.get(job.id).await.unwrap().attempts, 4);
}

/// A store that says every run was written by a newer baton.
#[derive(Debug, Clone)]
struct FromTheFuture(MemoryStore);

#[async_trait::async_trait]
impl Store for FromTheFuture {
    async fn create_flow(
        &self,
        flow: &baton_core::model::FlowRecord,
        atoms: &[baton_core::model::AtomRecord],
        fence: Option<baton_core::Fence>,
    ) -> baton_core::store::Result<()> {
        self.0.create_flow(flow, atoms, fence).await
    }
    async fn load_flow(
        &self,
        id: FlowId,
    ) -> baton_core::store::Result<baton_core::model::FlowSnapshot> {
        Err(baton_core::store::Error::TooNew {
            flow: id,
            version: 99,
            supported: 2,
        })
    }
    async fn commit(&self, batch: &baton_core::model::Batch) -> baton_core::store::Result<()> {
        self.0.commit(batch).await
    }
    async fn history(
        &self,
        id: FlowId,
    ) -> baton_core::store::Result<Vec<baton_core::model::Transition>> {
        self.0.history(id).await
    }
    async fn list_flows(
        &self,
        q: &FlowQuery,
    ) -> baton_core::store::Result<Vec<baton_core::model::FlowRecord>> {
        self.0.list_flows(q).await
    }
    async fn purge_flows(
        &self,
        before: chrono::DateTime<chrono::Utc>,
        limit: u32,
    ) -> baton_core::store::Result<u64> {
        self.0.purge_flows(before, limit).await
    }
}

/// Claims of a run that a newer baton wrote are left for a newer conductor, and are no stalls:
/// however many older conductors meet it, the job is never parked as a poison job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_of_a_newer_baton_is_left_alone_and_never_parked() {
    let (store, log) = (MemoryStore::new(), Log::new());
    let board = MemoryJobBoard::new(&store);
    let job = board
        .post(NewJob::new("create", "stack").params(json!({"steps": 1})))
        .await
        .unwrap();
    // Its run exists (made by the newer conductor that died).
    let flow = registry(&log, &[1])
        .build(&FactoryRef::new("stack", 1), &json!({"steps": 1}))
        .unwrap()
        .0;
    let first = board
        .claim(
            ConductorId::new(),
            Duration::from_millis(30),
            &registry(&log, &[1]).offer(),
        )
        .await
        .unwrap()
        .unwrap();
    Engine::new(store.clone())
        .create_with(
            &flow,
            Default::default(),
            baton_core::CreateOptions::new()
                .id(job.flow())
                .fence(first.fence),
        )
        .await
        .unwrap();
    let mut o = options();
    o.lease = Duration::from_millis(60);
    o.heartbeat = Duration::from_millis(20);
    o.max_stalled_claims = 2;
    let conductor = Conductor::new(
        Arc::new(board.clone()),
        Engine::new(FromTheFuture(store.clone())),
        registry(&log, &[1]),
    )
    .with_options(o)
    .unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(conductor.run(shutdown.clone()));
    wait_until("the job was claimed five more times", || async {
        board.get(job.id).await.unwrap().attempts >= 6
    })
    .await;
    shutdown.cancel();
    let summary = task.await.unwrap().unwrap();
    assert!(summary.left_for_newer >= 5, "{summary:?}");
    assert_eq!(summary.parked, 0);
    assert_ne!(board.get(job.id).await.unwrap().state, JobState::Parked);
}

/// An idle conductor polls for work on time even when it reports in more often than it polls
/// (each report used to start its wait for work afresh, so it never polled): a job whose owner
/// died, which no wake-up announces, is taken over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_conductor_polls_even_when_it_reports_in_more_often() {
    let (store, log) = (MemoryStore::new(), Log::new());
    let board = MemoryJobBoard::new(&store);
    let job = board
        .post(NewJob::new("orphan", "stack").params(json!({"steps": 1})))
        .await
        .unwrap();
    // Its owner claimed it and died at once.
    board
        .claim(
            ConductorId::new(),
            Duration::from_millis(30),
            &registry(&log, &[1]).offer(),
        )
        .await
        .unwrap()
        .unwrap();
    let mut o = options();
    o.heartbeat = Duration::from_millis(20);
    o.poll = Duration::from_millis(150);
    let c = start(&board, &store, registry(&log, &[1]), o);
    wait_until("the orphan is complete", || async {
        state_of(&board, job.id).await == JobState::Complete
    })
    .await;
    c.stop().await;
}

/// `RunOptions::revert` turns a run round from any state it can be resumed in: a run never
/// started reverts nothing; a suspended one reverts what ran, last first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_asked_to_revert_turns_round_from_pending_and_suspended() {
    use baton_core::{Control, RunOptions};
    let (store, log) = (MemoryStore::new(), Log::new());
    let engine = Engine::new(store.clone());
    let flow = registry(&log, &[1])
        .build(&FactoryRef::new("stack", 1), &json!({"steps": 5}))
        .unwrap()
        .0;
    let pending = engine.create(&flow, Default::default()).await.unwrap();
    let outcome = engine
        .run_with(&flow, pending, RunOptions::new().revert())
        .await
        .unwrap();
    assert_eq!(outcome.state, FlowState::Reverted);
    assert!(log.calls().is_empty(), "nothing ran, nothing reverted");

    // Suspended after its second step.
    let suspended = engine.create(&flow, Default::default()).await.unwrap();
    let control = Control::new();
    let watch = {
        let (store, control) = (store.clone(), control.clone());
        tokio::spawn(async move {
            while !reached(&store, suspended, AtomState::Success)
                .await
                .contains_key("s1")
            {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            control.suspend();
        })
    };
    let outcome = engine
        .run_with(&flow, suspended, RunOptions::new().control(control))
        .await
        .unwrap();
    watch.await.unwrap();
    assert_eq!(outcome.state, FlowState::Suspended);
    let outcome = engine
        .run_with(&flow, suspended, RunOptions::new().revert())
        .await
        .unwrap();
    assert_eq!(outcome.state, FlowState::Reverted);
    let mut ran = log.sequence(Action::Execute, Phase::Ok);
    ran.reverse();
    assert_eq!(log.sequence(Action::Revert, Phase::Ok), ran);
    // Asked again of a run that ended: left as it is.
    let again = engine
        .run_with(&flow, suspended, RunOptions::new().revert())
        .await
        .unwrap();
    assert_eq!(again.state, FlowState::Reverted);
}
