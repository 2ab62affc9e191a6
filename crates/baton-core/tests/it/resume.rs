//! Resume: suspended and interrupted runs pick up where they stopped.

use std::time::Duration;

use baton_core::store::Store;
use baton_core::{
    Atom, AtomState, CompiledFlow, Control, CreateOptions, Engine, Flow, FlowId, FlowState, Inputs,
    MemoryStore, RunOptions,
};
use baton_testkit::{Action, CrashMode, CrashStore, FlakyStore, Log, Phase, Probe};
use serde_json::json;

fn three_steps(log: &Log) -> CompiledFlow {
    Flow::linear("three")
        .add(Atom::task("a", Probe::new(log)))
        .add(Atom::task(
            "b",
            Probe::new(log).delay(Duration::from_millis(30)),
        ))
        .add(Atom::task("c", Probe::new(log)))
        .compile()
        .unwrap()
}

#[tokio::test]
async fn suspend_stops_at_a_step_boundary_and_resume_finishes() {
    let log = Log::new();
    let flow = three_steps(&log);
    let store = MemoryStore::new();
    let engine = Engine::new(store.clone());
    let id = engine.create(&flow, Inputs::new()).await.unwrap();
    let control = Control::new();
    let mut events = engine.subscribe();
    let c2 = control.clone();
    let watcher = tokio::spawn(async move {
        // Suspend while `b` runs.
        while let Some(e) = events.next().await {
            let e = e.unwrap();
            if let baton_core::EventKind::Transition(baton_core::model::Change::Atom {
                atom,
                to: AtomState::Running,
                ..
            }) = e.kind
            {
                if atom == "b" {
                    c2.suspend();
                    return;
                }
            }
        }
    });
    let outcome = engine
        .run_with(&flow, id, RunOptions::new().control(control))
        .await
        .unwrap();
    watcher.await.unwrap();
    assert_eq!(outcome.state, FlowState::Suspended);
    let snap = store.load_flow(id).await.unwrap();
    let state = |n: &str| snap.atoms.iter().find(|a| a.name == n).unwrap().state;
    assert_eq!(
        state("b"),
        AtomState::Success,
        "the running atom finished and was recorded"
    );
    assert_eq!(state("c"), AtomState::Pending, "nothing new started");

    let outcome = engine.run(&flow, id).await.unwrap();
    assert_eq!(outcome.state, FlowState::Success);
    assert_eq!(log.successes(Action::Execute).values().sum::<usize>(), 3);
    let flow_states: Vec<(FlowState, FlowState)> = store
        .history(id)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|t| match t.change {
            baton_core::model::Change::Flow { from, to } => Some((from, to)),
            _ => None,
        })
        .collect();
    assert_eq!(
        flow_states,
        vec![
            (FlowState::Pending, FlowState::Running),
            (FlowState::Running, FlowState::Suspending),
            (FlowState::Suspending, FlowState::Suspended),
            (FlowState::Suspended, FlowState::Resuming),
            (FlowState::Resuming, FlowState::Running),
            (FlowState::Running, FlowState::Success),
        ]
    );
}

#[tokio::test]
async fn a_rerun_keeps_the_idempotency_key_and_counts_the_attempt() {
    let log = Log::new();
    let flow = three_steps(&log);
    let store = MemoryStore::new();
    // Crash on the write that would record `b`'s result.
    let crash = CrashStore::new(store.clone(), 4, CrashMode::BeforeWrite);
    let id = FlowId::new();
    let engine = Engine::new(crash);
    engine
        .create_with(&flow, Inputs::new(), CreateOptions::new().id(id))
        .await
        .unwrap();
    assert!(engine.run(&flow, id).await.is_err());
    let outcome = Engine::new(store).run(&flow, id).await.unwrap();
    assert!(outcome.is_success());
    let b: Vec<_> = log
        .of("b")
        .into_iter()
        .filter(|c| c.action == Action::Execute && c.phase == Phase::Start)
        .collect();
    assert_eq!(b.len(), 2, "b ran again after the crash");
    assert_eq!((b[0].attempt, b[1].attempt), (1, 2));
    assert_eq!(b[0].key, b[1].key);
}

#[tokio::test]
async fn a_retry_round_gets_a_new_idempotency_key() {
    let log = Log::new();
    let flow = Flow::linear("rounds")
        .retry(Atom::retry("r", baton_core::retry::Times::new(2)).provides("try"))
        .add(
            Atom::task(
                "x",
                Probe::new(&log).fails_when(|ctx| ctx.input::<u32>("try").unwrap() < 2),
            )
            .requires(["try"]),
        )
        .compile()
        .unwrap();
    Engine::new(MemoryStore::new())
        .start(&flow, Inputs::new())
        .await
        .unwrap();
    let keys: Vec<String> = log
        .of("x")
        .into_iter()
        .filter(|c| c.action == Action::Execute && c.phase == Phase::Start)
        .map(|c| c.key)
        .collect();
    assert_eq!(keys.len(), 2);
    assert_ne!(keys[0], keys[1]);
}

#[tokio::test]
async fn a_finished_flow_is_not_run_again() {
    let log = Log::new();
    let flow = three_steps(&log);
    let store = MemoryStore::new();
    let engine = Engine::new(store.clone());
    let first = engine.start(&flow, Inputs::new()).await.unwrap();
    let commits = store.commits();
    let again = engine.run(&flow, first.flow).await.unwrap();
    assert_eq!(again, first);
    assert_eq!(store.commits(), commits, "nothing was written");
    assert_eq!(log.successes(Action::Execute).values().sum::<usize>(), 3);
}

#[tokio::test]
async fn halt_writes_nothing_more() {
    let flow = Flow::linear("halted")
        .add(Atom::from_fn("long", |_| async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            Ok(json!(null))
        }))
        .compile()
        .unwrap();
    let store = MemoryStore::new();
    let engine = Engine::new(store.clone());
    let id = engine.create(&flow, Inputs::new()).await.unwrap();
    let control = Control::new();
    let c2 = control.clone();
    let run = tokio::spawn({
        let engine = engine.clone();
        let flow = flow.clone();
        async move {
            engine
                .run_with(&flow, id, RunOptions::new().control(c2))
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let commits = store.commits();
    control.halt();
    let err = run.await.unwrap().unwrap_err();
    assert!(
        matches!(err, baton_core::engine::Error::Halted(f) if f == id),
        "{err}"
    );
    assert_eq!(store.commits(), commits);
    let snap = store.load_flow(id).await.unwrap();
    assert_eq!(snap.atoms[0].state, AtomState::Running);
}

#[tokio::test]
async fn an_unavailable_store_is_retried_and_loses_nothing() {
    let log = Log::new();
    let mut flow = Flow::linear("flaky-store");
    for i in 0..20 {
        flow = flow.add(Atom::task(format!("t{i}"), Probe::new(&log)));
    }
    let flow = flow.compile().unwrap();
    let flaky = FlakyStore::new(MemoryStore::new(), 3);
    let mut options = baton_core::engine::Options::default();
    options.store_retry_base = Duration::from_millis(1);
    let outcome = Engine::new(flaky.clone())
        .with_options(options)
        .start(&flow, Inputs::new())
        .await
        .unwrap();
    assert!(outcome.is_success());
    assert!(
        flaky.failures() >= 5,
        "the store failed {} times",
        flaky.failures()
    );
    let execs = log.successes(Action::Execute);
    assert!(execs.values().all(|&n| n == 1), "{execs:?}");
}

#[tokio::test]
async fn a_fenced_write_stops_the_run() {
    let flow = Flow::linear("fenced")
        .add(Atom::from_fn("a", |_| async { Ok(json!(1)) }))
        .compile()
        .unwrap();
    let store = MemoryStore::new();
    let job = baton_core::JobId::new();
    store.set_fence(job, baton_core::FencingToken(2));
    let engine = Engine::new(store.clone());
    // The job's run: a claim fences its own job's flow only.
    let id = engine
        .create_with(
            &flow,
            Inputs::new(),
            baton_core::CreateOptions::new().id(baton_core::FlowId::for_job(job)),
        )
        .await
        .unwrap();
    let stale = baton_core::Fence {
        job,
        token: baton_core::FencingToken(1),
    };
    let err = engine
        .run_with(&flow, id, RunOptions::new().fence(stale))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            baton_core::engine::Error::Store(baton_core::store::Error::Fenced { .. })
        ),
        "{err}"
    );
    assert_eq!(
        store.load_flow(id).await.unwrap().flow.state,
        FlowState::Pending
    );
}

#[tokio::test]
async fn running_with_another_definition_is_refused() {
    let log = Log::new();
    let flow = three_steps(&log);
    let store = MemoryStore::new();
    let engine = Engine::new(store.clone());
    let id = engine.create(&flow, Inputs::new()).await.unwrap();
    let other = Flow::linear("three")
        .add(Atom::task("a", Probe::new(&log)))
        .add(Atom::task("z", Probe::new(&log)))
        .add(Atom::task("c", Probe::new(&log)))
        .compile()
        .unwrap();
    let err = engine.run(&other, id).await.unwrap_err();
    assert!(err.to_string().contains("\"z\""), "{err}");
    assert!(log.calls().is_empty(), "nothing ran");
}

#[tokio::test]
async fn an_atom_interrupted_mid_execute_is_reverted_without_a_result() {
    let log = Log::new();
    let flow = Flow::unordered("interrupted")
        .add(Atom::task(
            "slow",
            Probe::new(&log).delay(Duration::from_millis(200)),
        ))
        .add(Atom::task("fails", Probe::new(&log).fails()))
        .compile()
        .unwrap();
    let store = MemoryStore::new();
    // Writes: 1 create, 2 start both, 3 `fails` failed + flow reverting + its revert begins,
    // 4 `fails` reverted: crash there, while `slow` is still running.
    let crash = CrashStore::new(store.clone(), 4, CrashMode::BeforeWrite);
    let id = FlowId::new();
    let engine = Engine::new(crash).with_parallelism(2);
    engine
        .create_with(&flow, Inputs::new(), CreateOptions::new().id(id))
        .await
        .unwrap();
    assert!(engine.run(&flow, id).await.is_err());
    let snap = store.load_flow(id).await.unwrap();
    assert_eq!(snap.flow.state, FlowState::Reverting);
    let state = |n: &str| snap.atoms.iter().find(|a| a.name == n).unwrap().state;
    assert_eq!(state("slow"), AtomState::Running);
    assert_eq!(state("fails"), AtomState::Reverting);

    let outcome = Engine::new(store.clone()).run(&flow, id).await.unwrap();
    assert_eq!(outcome.state, FlowState::Reverted);
    let slow_revert = log
        .of("slow")
        .into_iter()
        .find(|c| c.action == Action::Revert)
        .expect("the interrupted atom was reverted");
    assert_eq!(slow_revert.result, None);
    assert!(
        !slow_revert.had_failure,
        "an interrupted execute has neither result nor failure"
    );
    assert_eq!(
        log.successes(Action::Revert)["fails"],
        2,
        "the revert caught mid-way ran again"
    );
}

#[test]
fn engine_handles_and_futures_are_send_and_sync() {
    fn send_sync<T: Send + Sync>(_: &T) {}
    fn send<T: Send>(_: &T) {}
    let engine = Engine::new(MemoryStore::new());
    send_sync(&engine);
    send_sync(&Control::new());
    let flow = Flow::linear("f").compile().unwrap();
    send(&engine.run(&flow, FlowId::new()));
    send(&engine.start(&flow, Inputs::new()));
    send(&engine.subscribe());
}

/// A store that is unreachable for its first few reads.
#[derive(Debug, Clone)]
struct SlowToWake {
    inner: MemoryStore,
    failures_left: std::sync::Arc<std::sync::atomic::AtomicU32>,
}

#[derive(Debug)]
struct Down;

impl std::fmt::Display for Down {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection refused")
    }
}

impl std::error::Error for Down {}

#[async_trait::async_trait]
impl Store for SlowToWake {
    async fn create_flow(
        &self,
        flow: &baton_core::model::FlowRecord,
        atoms: &[baton_core::model::AtomRecord],
        fence: Option<baton_core::Fence>,
    ) -> baton_core::store::Result<()> {
        self.inner.create_flow(flow, atoms, fence).await
    }

    async fn load_flow(
        &self,
        id: FlowId,
    ) -> baton_core::store::Result<baton_core::model::FlowSnapshot> {
        let left = self.failures_left.load(std::sync::atomic::Ordering::SeqCst);
        if left > 0 {
            self.failures_left
                .store(left - 1, std::sync::atomic::Ordering::SeqCst);
            return Err(baton_core::store::Error::Unavailable(Box::new(Down)));
        }
        self.inner.load_flow(id).await
    }

    async fn commit(&self, batch: &baton_core::model::Batch) -> baton_core::store::Result<()> {
        self.inner.commit(batch).await
    }

    async fn history(
        &self,
        id: FlowId,
    ) -> baton_core::store::Result<Vec<baton_core::model::Transition>> {
        self.inner.history(id).await
    }

    async fn list_flows(
        &self,
        query: &baton_core::store::FlowQuery,
    ) -> baton_core::store::Result<Vec<baton_core::model::FlowRecord>> {
        self.inner.list_flows(query).await
    }

    async fn purge_flows(
        &self,
        ended_before: chrono::DateTime<chrono::Utc>,
        limit: u32,
    ) -> baton_core::store::Result<u64> {
        self.inner.purge_flows(ended_before, limit).await
    }
}

#[tokio::test]
async fn an_unavailable_store_at_load_is_waited_for() {
    let log = Log::new();
    let flow = three_steps(&log);
    let store = SlowToWake {
        inner: MemoryStore::new(),
        failures_left: std::sync::Arc::new(std::sync::atomic::AtomicU32::new(3)),
    };
    let mut options = baton_core::engine::Options::default();
    options.store_retry_base = Duration::from_millis(1);
    let engine = Engine::new(store.clone()).with_options(options);
    let id = engine.create(&flow, Inputs::new()).await.unwrap();
    let outcome = engine.run(&flow, id).await.unwrap();
    assert!(outcome.is_success());
    assert_eq!(
        store
            .failures_left
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
}

/// A store whose first `create_and_commit` reports the database unreachable, after applying
/// it (the answer was lost) or not (the request was).
#[derive(Debug, Clone)]
struct CreationAnswerLost {
    inner: MemoryStore,
    applied: bool,
    interloper: bool,
    fired: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

#[async_trait::async_trait]
impl Store for CreationAnswerLost {
    async fn create_flow(
        &self,
        flow: &baton_core::model::FlowRecord,
        atoms: &[baton_core::model::AtomRecord],
        fence: Option<baton_core::Fence>,
    ) -> baton_core::store::Result<()> {
        self.inner.create_flow(flow, atoms, fence).await
    }

    async fn load_flow(
        &self,
        id: FlowId,
    ) -> baton_core::store::Result<baton_core::model::FlowSnapshot> {
        self.inner.load_flow(id).await
    }

    async fn commit(&self, batch: &baton_core::model::Batch) -> baton_core::store::Result<()> {
        self.inner.commit(batch).await
    }

    async fn history(
        &self,
        id: FlowId,
    ) -> baton_core::store::Result<Vec<baton_core::model::Transition>> {
        self.inner.history(id).await
    }

    async fn list_flows(
        &self,
        query: &baton_core::store::FlowQuery,
    ) -> baton_core::store::Result<Vec<baton_core::model::FlowRecord>> {
        self.inner.list_flows(query).await
    }

    async fn purge_flows(
        &self,
        ended_before: chrono::DateTime<chrono::Utc>,
        limit: u32,
    ) -> baton_core::store::Result<u64> {
        self.inner.purge_flows(ended_before, limit).await
    }

    async fn create_and_commit(
        &self,
        flow: &baton_core::model::FlowRecord,
        atoms: &[baton_core::model::AtomRecord],
        fence: Option<baton_core::Fence>,
        first: &baton_core::model::Batch,
    ) -> baton_core::store::Result<()> {
        if self.fired.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return self
                .inner
                .create_and_commit(flow, atoms, fence, first)
                .await;
        }
        if self.interloper {
            // Not ours: another engine stores a run with the same id meanwhile.
            let mut theirs = flow.clone();
            theirs.created_at -= chrono::Duration::seconds(1);
            self.inner.create_flow(&theirs, atoms, None).await?;
        } else if self.applied {
            self.inner
                .create_and_commit(flow, atoms, fence, first)
                .await?;
        }
        Err(baton_core::store::Error::Unavailable(Box::new(Down)))
    }
}

#[tokio::test]
async fn a_creation_whose_answer_was_lost_is_retried_and_runs_once() {
    for applied in [false, true] {
        let log = Log::new();
        let flow = three_steps(&log);
        let store = CreationAnswerLost {
            inner: MemoryStore::new(),
            applied,
            interloper: false,
            fired: std::sync::Arc::default(),
        };
        let mut options = baton_core::engine::Options::default();
        options.store_retry_base = Duration::from_millis(1);
        let outcome = Engine::new(store.clone())
            .with_options(options)
            .start(&flow, Inputs::new())
            .await
            .unwrap();
        assert!(outcome.is_success(), "applied: {applied}");
        assert!(store.fired.load(std::sync::atomic::Ordering::SeqCst));
        let execs = log.successes(Action::Execute);
        assert_eq!(execs.len(), 3, "applied: {applied}: {execs:?}");
        assert!(
            execs.values().all(|&n| n == 1),
            "applied: {applied}: {execs:?}"
        );
        // The first step is in the history once, whichever way the creation went.
        let history = store.inner.history(outcome.flow).await.unwrap();
        let first_starts = history
            .iter()
            .filter(|t| {
                matches!(&t.change, baton_core::model::Change::Atom { atom, to, .. }
                    if atom == "a" && *to == AtomState::Running)
            })
            .count();
        assert_eq!(first_starts, 1, "applied: {applied}: {history:?}");
    }
}

#[tokio::test]
async fn a_retried_creation_does_not_adopt_another_engines_run() {
    let log = Log::new();
    let flow = three_steps(&log);
    let store = CreationAnswerLost {
        inner: MemoryStore::new(),
        applied: false,
        interloper: true,
        fired: std::sync::Arc::default(),
    };
    let mut options = baton_core::engine::Options::default();
    options.store_retry_base = Duration::from_millis(1);
    let err = Engine::new(store.clone())
        .with_options(options)
        .start(&flow, Inputs::new())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            baton_core::engine::Error::Store(baton_core::store::Error::FlowExists(_))
        ),
        "{err}"
    );
    assert!(log.successes(Action::Execute).is_empty(), "a task ran");
}

/// A store that refuses every batch's first attempt as unreachable (storing nothing) and
/// remembers the time each attempt carried.
#[derive(Debug, Clone, Default)]
struct RefusesFirstAttempts {
    inner: MemoryStore,
    attempts: std::sync::Arc<std::sync::Mutex<Vec<chrono::DateTime<chrono::Utc>>>>,
}

#[async_trait::async_trait]
impl Store for RefusesFirstAttempts {
    async fn create_flow(
        &self,
        flow: &baton_core::model::FlowRecord,
        atoms: &[baton_core::model::AtomRecord],
        fence: Option<baton_core::Fence>,
    ) -> baton_core::store::Result<()> {
        self.inner.create_flow(flow, atoms, fence).await
    }

    async fn load_flow(
        &self,
        id: FlowId,
    ) -> baton_core::store::Result<baton_core::model::FlowSnapshot> {
        self.inner.load_flow(id).await
    }

    async fn commit(&self, batch: &baton_core::model::Batch) -> baton_core::store::Result<()> {
        let first = {
            let mut attempts = self.attempts.lock().unwrap();
            attempts.push(batch.at);
            attempts.len() % 2 == 1
        };
        if first {
            return Err(baton_core::store::Error::Unavailable(Box::new(Down)));
        }
        self.inner.commit(batch).await
    }

    async fn history(
        &self,
        id: FlowId,
    ) -> baton_core::store::Result<Vec<baton_core::model::Transition>> {
        self.inner.history(id).await
    }

    async fn list_flows(
        &self,
        query: &baton_core::store::FlowQuery,
    ) -> baton_core::store::Result<Vec<baton_core::model::FlowRecord>> {
        self.inner.list_flows(query).await
    }

    async fn purge_flows(
        &self,
        ended_before: chrono::DateTime<chrono::Utc>,
        limit: u32,
    ) -> baton_core::store::Result<u64> {
        self.inner.purge_flows(ended_before, limit).await
    }
}

/// A batch retried through an outage carries the time it is stored, not the time it was
/// first tried: a run's end is never recorded as older than it is (purges go by it).
#[tokio::test]
async fn a_retried_batch_is_stamped_when_it_is_stored() {
    let log = Log::new();
    let flow = three_steps(&log);
    let store = RefusesFirstAttempts::default();
    let mut options = baton_core::engine::Options::default();
    options.store_retry_base = Duration::from_millis(20);
    let engine = Engine::new(store.clone()).with_options(options);
    let id = engine.create(&flow, Inputs::new()).await.unwrap();
    assert!(engine.run(&flow, id).await.unwrap().is_success());
    let attempts = store.attempts.lock().unwrap().clone();
    assert!(attempts.len() >= 2);
    for pair in attempts.chunks(2) {
        if let [first, second] = pair {
            assert!(
                *second >= *first + chrono::Duration::milliseconds(20),
                "the retry kept the first attempt's time: {first} then {second}"
            );
        }
    }
    // The run's recorded end is its last (stored) attempt's time.
    let ended = store.load_flow(id).await.unwrap().flow.updated_at;
    assert_eq!(Some(&ended), attempts.last());
}

/// A task that asks its run to suspend, then succeeds.
fn suspends(name: &str, control: &Control) -> Atom {
    let control = control.clone();
    Atom::from_fn(name, move |_| {
        control.suspend();
        async { Ok(json!("done")) }
    })
}

/// The states of a stored run's atoms, by name.
async fn states(store: &MemoryStore, id: FlowId) -> std::collections::BTreeMap<String, AtomState> {
    let snap = store.load_flow(id).await.unwrap();
    snap.atoms.into_iter().map(|a| (a.name, a.state)).collect()
}

/// Runs a new run of `flow` on a memory store under `control`, and checks it ends suspended.
async fn run_to_suspended(flow: &CompiledFlow, control: Control) -> (Engine, MemoryStore, FlowId) {
    let store = MemoryStore::new();
    let engine = Engine::new(store.clone());
    let id = engine.create(flow, Inputs::new()).await.unwrap();
    let outcome = engine
        .run_with(flow, id, RunOptions::new().control(control))
        .await
        .unwrap();
    assert_eq!(outcome.state, FlowState::Suspended);
    (engine, store, id)
}

/// A suspend requested at the very end of a task that runs alone (every task of a linear
/// flow) is seen before the next task could start: nothing starts after the request.
#[tokio::test]
async fn a_suspend_requested_by_a_lone_task_starts_nothing_after_it() {
    let log = Log::new();
    let control = Control::new();
    let flow = Flow::linear("three")
        .add(suspends("t1", &control))
        .add(Atom::task("t2", Probe::new(&log)))
        .add(Atom::task("t3", Probe::new(&log)))
        .compile()
        .unwrap();
    let (engine, store, id) = run_to_suspended(&flow, control).await;
    let states = states(&store, id).await;
    assert_eq!(states["t1"], AtomState::Success);
    assert_eq!(
        states["t2"],
        AtomState::Pending,
        "t2 started after the suspend"
    );
    assert!(log.calls().is_empty());
    let outcome = engine.run(&flow, id).await.unwrap();
    assert_eq!(outcome.state, FlowState::Success);
    assert_eq!(log.successes(Action::Execute).len(), 2);
}

/// The same for a task that runs beside another: when it ends, what it unblocks does not
/// start, and the run suspends once the other task is done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suspend_requested_by_a_parallel_task_starts_nothing_after_it() {
    let log = Log::new();
    let control = Control::new();
    let flow = Flow::unordered("both")
        .add(
            Flow::linear("left")
                .add(suspends("asks", &control))
                .add(Atom::task("next", Probe::new(&log))),
        )
        .add(Atom::task(
            "slow",
            Probe::new(&log).delay(Duration::from_millis(50)),
        ))
        .compile()
        .unwrap();
    let (engine, store, id) = run_to_suspended(&flow, control).await;
    let states = states(&store, id).await;
    assert_eq!(states["asks"], AtomState::Success);
    assert_eq!(
        states["slow"],
        AtomState::Success,
        "the running task was recorded"
    );
    assert_eq!(
        states["next"],
        AtomState::Pending,
        "next started after the suspend"
    );
    let outcome = engine.run(&flow, id).await.unwrap();
    assert_eq!(outcome.state, FlowState::Success);
}

/// And while reverting: a suspend requested at the end of a revert that runs alone lets no
/// further revert start; the run resumes reverting.
#[tokio::test]
async fn a_suspend_requested_by_a_revert_starts_nothing_after_it() {
    let log = Log::new();
    let control = Control::new();
    let asks = {
        let control = control.clone();
        baton_core::FnTask::new(|_| async { Ok(json!("done")) }).on_revert(move |_| {
            control.suspend();
            async { Ok(()) }
        })
    };
    let flow = Flow::linear("undo")
        .add(Atom::task("t1", Probe::new(&log)))
        .add(Atom::task("t2", asks))
        .add(Atom::task("t3", Probe::new(&log).fails()))
        .compile()
        .unwrap();
    let (engine, store, id) = run_to_suspended(&flow, control).await;
    let states = states(&store, id).await;
    assert_eq!(states["t2"], AtomState::Reverted);
    assert_eq!(
        states["t1"],
        AtomState::Success,
        "t1's revert started after the suspend"
    );
    assert!(!log.successes(Action::Revert).contains_key("t1"));
    let outcome = engine.run(&flow, id).await.unwrap();
    assert_eq!(outcome.state, FlowState::Reverted);
    assert_eq!(log.successes(Action::Revert)["t1"], 1);
}
