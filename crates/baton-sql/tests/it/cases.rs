//! Cases both backends run, generic over the store.

use std::sync::Arc;

use baton_core::model::{AtomKind, AtomRecord, Batch, FlowRecord, Write};
use baton_core::store::{Error, Store};
use baton_core::{
    AtomState, Engine, Failure, FailureKind, Fence, FencingToken, FlowId, FlowState, Intention,
    JobId, JobState,
};
use baton_testkit::crash::crash_at_every_write;
use baton_testkit::scenarios::{self, Scenario};
use baton_testkit::Log;
use chrono::Utc;
use serde_json::json;
use tokio::sync::Barrier;

use crate::support::Harness;

pub fn flow_record(name: &str) -> FlowRecord {
    let now = Utc::now();
    FlowRecord {
        id: FlowId::new(),
        name: name.to_owned(),
        state: FlowState::Pending,
        intention: Intention::Execute,
        inputs: baton_testkit::inputs([("x", json!(1))]),
        meta: json!({"owner": "tests"}),
        factory: None,
        fingerprint: None,
        deadline: None,
        created_at: now,
        updated_at: now,
    }
}

pub fn atoms() -> Vec<AtomRecord> {
    vec![
        AtomRecord::pending("a", AtomKind::Task),
        AtomRecord::pending("b", AtomKind::Task),
    ]
}

pub fn start(rec: &AtomRecord) -> Write {
    let mut next = rec.clone();
    next.state = AtomState::Running;
    next.attempt += 1;
    next.started_at = Some(Utc::now());
    Write::Atom {
        expected_state: rec.state,
        expected_attempt: rec.attempt,
        record: next,
    }
}

/// A stored flow whose atom `a` was started by one committed step.
pub async fn flow_with_one_step<S: Store>(store: &S) -> FlowRecord {
    let flow = new_flow(store).await;
    let mut batch = Batch::new(flow.id, None);
    batch.writes.push(start(&atoms()[0]));
    store.commit(&batch).await.unwrap();
    flow
}

/// A stored flow with two pending atoms.
pub async fn new_flow<S: Store>(store: &S) -> FlowRecord {
    let flow = flow_record("cases");
    store.create_flow(&flow, &atoms(), None).await.unwrap();
    flow
}

/// The SQL stores leave a run's `meta` unread when an engine loads it to run it (for a big
/// flow, mostly the graph's shape), and read it whole for `load_flow`.
pub async fn loading_a_run_leaves_its_meta_unread<S: Store>(store: S) {
    let flow = new_flow(&store).await;
    assert!(!flow.meta.is_null());
    assert_eq!(store.load_flow(flow.id).await.unwrap().flow.meta, flow.meta);
    assert!(store.load_run(flow.id).await.unwrap().flow.meta.is_null());
}

/// Every field of a record survives the store: JSON values of all shapes, a JSON `null` result
/// apart from no result, failures, retry history, timestamps (to the microsecond, the coarser
/// of the two databases), and atoms in creation order.
pub async fn full_records_round_trip<S: Harness>(store: S) {
    use baton_core::model::RetryAttempt;
    use chrono::SubsecRound;

    let now = Utc::now().trunc_subsecs(6);
    let mut flow = flow_record("full");
    flow.created_at = now;
    flow.updated_at = now;
    flow.inputs = baton_testkit::inputs([
        ("n", json!(12.5)),
        ("s", json!("ünïcødé \"quoted\" \\ back")),
        (
            "deep",
            json!({"a": [1, {"b": null}], "big": 18_446_744_073_709_551_615_u64}),
        ),
    ]);
    flow.meta = serde_json::Value::Null;
    let names = ["z", "m", "a", "q"];
    let atoms: Vec<AtomRecord> = names
        .iter()
        .map(|n| AtomRecord::pending(*n, AtomKind::Task))
        .collect();
    store.create_flow(&flow, &atoms, None).await.unwrap();
    let snap = store.load_flow(flow.id).await.unwrap();
    assert_eq!(snap.flow, flow);
    assert_eq!(snap.atoms, atoms, "atoms load in creation order");

    let failure = Failure {
        message: "boom".into(),
        causes: vec!["disk full".into()],
        atom: "m".into(),
        attempt: 2,
        retryable: true,
        retry_after: None,
        kind: FailureKind::Execute,
    };
    let mut m = atoms[1].clone();
    m.state = AtomState::Running;
    m.attempt = 1;
    let mut m_done = m.clone();
    m_done.state = AtomState::Failure;
    m_done.intention = Intention::Revert;
    m_done.round = 3;
    m_done.failure = Some(failure.clone());
    m_done.revert_failure = Some(Failure {
        kind: FailureKind::Revert,
        ..failure.clone()
    });
    m_done.retry_history = vec![RetryAttempt::new(json!({"try": 1}), vec![failure])];
    m_done.retry_at = Some(now + chrono::Duration::seconds(30));
    m_done.progress = 0.375;
    m_done.started_at = Some(now);
    m_done.finished_at = Some(now + chrono::Duration::milliseconds(1));
    let mut z = atoms[0].clone();
    z.state = AtomState::Running;
    z.attempt = 1;
    let mut z_done = z.clone();
    z_done.state = AtomState::Success;
    z_done.result = Some(serde_json::Value::Null);

    let mut batch = Batch::new(flow.id, None);
    batch.at = now;
    for (from, to) in [
        (&atoms[1], &m),
        (&m, &m_done),
        (&atoms[0], &z),
        (&z, &z_done),
    ] {
        batch.writes.push(Write::Atom {
            expected_state: from.state,
            expected_attempt: from.attempt,
            record: to.clone(),
        });
    }
    store.commit(&batch).await.unwrap();
    let snap = store.load_flow(flow.id).await.unwrap();
    assert_eq!(
        snap.atoms,
        vec![z_done, m_done, atoms[2].clone(), atoms[3].clone()]
    );
    assert_eq!(snap.atoms[0].result, Some(serde_json::Value::Null));
    assert_eq!(snap.atoms[2].result, None);
    assert_eq!(snap.flow.updated_at, now);
    let history = store.history(flow.id).await.unwrap();
    assert_eq!(history.len(), 4);
    assert!(history.iter().all(|t| t.at == now));
}

/// A batch with a value over the limit is refused whole, naming the atom and the value.
pub async fn size_limit_refuses_the_whole_batch<S: Harness>(store: S, limit: usize) {
    let flow = new_flow(&store).await;
    let before = store.commits();
    let mut big = AtomRecord::pending("a", AtomKind::Task);
    big.state = AtomState::Success;
    big.attempt = 1;
    big.result = Some(json!("x".repeat(limit)));
    let mut batch = Batch::new(flow.id, None);
    batch.writes.push(start(&atoms()[1]));
    batch.writes.push(start(&atoms()[0]));
    batch.writes.push(Write::Atom {
        expected_state: AtomState::Running,
        expected_attempt: 1,
        record: big,
    });
    let err = store.commit(&batch).await.unwrap_err();
    assert!(
        matches!(&err, Error::TooLarge { flow: f, atom: Some(atom), what: "result", size, limit: l }
            if *f == flow.id && atom == "a" && *size == limit + 2 && *l == limit),
        "{err}"
    );

    // A failure over the limit too.
    let mut failed = AtomRecord::pending("b", AtomKind::Task);
    failed.state = AtomState::Failure;
    failed.attempt = 1;
    failed.failure = Some(Failure {
        message: "m".repeat(limit),
        causes: Vec::new(),
        atom: "b".into(),
        attempt: 1,
        retryable: false,
        retry_after: None,
        kind: FailureKind::Execute,
    });
    let mut batch = Batch::new(flow.id, None);
    batch.writes.push(start(&atoms()[1]));
    batch.writes.push(Write::Atom {
        expected_state: AtomState::Running,
        expected_attempt: 1,
        record: failed,
    });
    let err = store.commit(&batch).await.unwrap_err();
    assert!(
        matches!(&err, Error::TooLarge { atom: Some(atom), what: "failure", .. } if atom == "b"),
        "{err}"
    );

    let snap = store.load_flow(flow.id).await.unwrap();
    assert!(snap.atoms.iter().all(|a| a.state == AtomState::Pending));
    assert!(store.history(flow.id).await.unwrap().is_empty());
    assert_eq!(store.commits(), before);

    // Just under the limit is fine.
    let mut ok = AtomRecord::pending("a", AtomKind::Task);
    ok.state = AtomState::Success;
    ok.attempt = 1;
    ok.result = Some(json!("x".repeat(limit - 2)));
    let mut batch = Batch::new(flow.id, None);
    batch.writes.push(start(&atoms()[0]));
    batch.writes.push(Write::Atom {
        expected_state: AtomState::Running,
        expected_attempt: 1,
        record: ok.clone(),
    });
    store.commit(&batch).await.unwrap();
    let snap = store.load_flow(flow.id).await.unwrap();
    assert_eq!(snap.atoms[0].result, ok.result);
}

/// Damaged rows are reported as `Corrupt`, naming the flow and the atom.
pub async fn damaged_rows_are_corrupt_naming_flow_and_atom<S: Harness>(store: S) {
    let expect_corrupt = |err: Error, flow: FlowId, atom: Option<&str>, needle: &str| match err {
        Error::Corrupt {
            flow: f,
            atom: a,
            detail,
        } => {
            assert_eq!(f, flow);
            assert_eq!(a.as_deref(), atom);
            assert!(detail.contains(needle), "{detail:?} lacks {needle:?}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    };

    // An unknown state.
    let flow = new_flow(&store).await;
    store
        .exec(&format!(
            "UPDATE atoms SET state = 'EXPLODED' WHERE flow_id = '{}' AND name = 'b'",
            flow.id
        ))
        .await;
    let err = store.load_flow(flow.id).await.unwrap_err();
    expect_corrupt(err, flow.id, Some("b"), "EXPLODED");

    // JSON that is not a failure.
    let flow = new_flow(&store).await;
    store
        .exec(&format!(
            "UPDATE atoms SET failure = '{{\"nope\": 1}}' WHERE flow_id = '{}' AND name = 'a'",
            flow.id
        ))
        .await;
    let err = store.load_flow(flow.id).await.unwrap_err();
    expect_corrupt(err, flow.id, Some("a"), "failure");

    // A row written by a newer baton.
    let flow = new_flow(&store).await;
    store
        .exec(&format!(
            "UPDATE atoms SET model_version = 99 WHERE flow_id = '{}' AND name = 'a'",
            flow.id
        ))
        .await;
    let err = store.load_flow(flow.id).await.unwrap_err();
    expect_too_new(err, flow.id, 99);

    // A damaged flow row: no atom to name.
    let flow = new_flow(&store).await;
    store
        .exec(&format!(
            "UPDATE flows SET intention = 'SIDEWAYS' WHERE id = '{}'",
            flow.id
        ))
        .await;
    let err = store.load_flow(flow.id).await.unwrap_err();
    expect_corrupt(err, flow.id, None, "SIDEWAYS");
    let err = store
        .list_flows(&baton_core::store::FlowQuery::all())
        .await
        .unwrap_err();
    expect_corrupt(err, flow.id, None, "SIDEWAYS");

    // A damaged step of the log names its atom, in the history and on load.
    let flow = flow_with_one_step(&store).await;
    store
        .exec(&format!(
            "UPDATE steps SET body = replace(body, '\"RUNNING\"', '\"MELTED\"') WHERE flow_id = '{}'",
            flow.id
        ))
        .await;
    let err = store.history(flow.id).await.unwrap_err();
    expect_corrupt(err, flow.id, Some("a"), "MELTED");
    let err = store.load_flow(flow.id).await.unwrap_err();
    expect_corrupt(err, flow.id, Some("a"), "MELTED");

    // A step that is not JSON at all: no atom to name, but the step is.
    let flow = flow_with_one_step(&store).await;
    store
        .exec(&format!(
            "UPDATE steps SET body = '[{{\"op\":' WHERE flow_id = '{}'",
            flow.id
        ))
        .await;
    let err = store.load_flow(flow.id).await.unwrap_err();
    expect_corrupt(err, flow.id, None, "step 1");

    // A step written by a newer baton.
    let flow = flow_with_one_step(&store).await;
    store
        .exec(&format!(
            "UPDATE steps SET model_version = 99 WHERE flow_id = '{}'",
            flow.id
        ))
        .await;
    let err = store.history(flow.id).await.unwrap_err();
    expect_too_new(err, flow.id, 99);
}

fn expect_too_new(err: Error, flow: FlowId, version: u32) {
    assert!(
        matches!(&err, Error::TooNew { flow: f, version: v, supported } if *f == flow && *v == version && *supported == baton_core::model::MODEL_VERSION),
        "{err:?}"
    );
    assert!(err.to_string().contains("newer version of baton"), "{err}");
}

/// Many tasks committing to different flows at once all succeed, and every commit counts.
pub async fn many_writers_on_different_flows_all_succeed<S: Harness>(store: S) {
    const WRITERS: usize = 16;
    let before = store.commits();
    let barrier = Arc::new(Barrier::new(WRITERS));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..WRITERS {
        let store = store.clone();
        let barrier = barrier.clone();
        tasks.spawn(async move {
            let log = Log::new();
            let flow = scenarios::long_linear(&log, 5);
            barrier.wait().await;
            let inputs = baton_testkit::inputs([("seed", json!(1))]);
            Engine::new(store)
                .with_parallelism(1)
                .start(&flow, inputs)
                .await
                .unwrap()
        });
    }
    let mut done = 0;
    while let Some(outcome) = tasks.join_next().await {
        assert_eq!(outcome.unwrap().state, FlowState::Success);
        done += 1;
    }
    assert_eq!(done, WRITERS);
    // Each run: a creation, then one commit per step (start flow + t0, t_i done + t_i+1
    // started, ..., t4 done + flow done).
    let per_run = store.commits() - before;
    assert_eq!(per_run % WRITERS as u64, 0, "{per_run}");
    assert!(per_run / WRITERS as u64 >= 6, "{per_run}");
}

/// Two writers racing the same compare-and-set: exactly one wins, the other gets `Conflict`.
pub async fn racing_writers_one_wins_one_conflicts<S: Harness>(store: S) {
    for _ in 0..10 {
        let flow = new_flow(&store).await;
        let barrier = Arc::new(Barrier::new(2));
        let race = |store: S, barrier: Arc<Barrier>| async move {
            let mut batch = Batch::new(flow.id, None);
            batch.writes.push(start(&atoms()[0]));
            barrier.wait().await;
            store.commit(&batch).await
        };
        let (a, b) = tokio::join!(
            tokio::spawn(race(store.clone(), barrier.clone())),
            tokio::spawn(race(store.clone(), barrier.clone())),
        );
        let results = [a.unwrap(), b.unwrap()];
        let wins = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(wins, 1, "{results:?}");
        assert!(
            results
                .iter()
                .any(|r| matches!(r, Err(Error::Conflict { subject, .. }) if subject == "atom a")),
            "{results:?}"
        );
        assert_eq!(store.history(flow.id).await.unwrap().len(), 1);
    }
}

/// Fenced writes are accepted with the job's current token and refused with any other, in
/// creations as in batches; a refused write changes nothing.
pub async fn fences_refuse_stale_tokens<S: Harness>(store: S) {
    let job = JobId::new();
    let fence = |token| Fence {
        job,
        token: FencingToken(token),
    };

    // No claim recorded yet: any token is stale. (The job's own run: a claim fences no other.)
    let mut flow = flow_record("fenced");
    flow.id = FlowId::for_job(job);
    let err = store
        .create_flow(&flow, &atoms(), Some(fence(1)))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Fenced { flow: f, job: j, token: FencingToken(1) } if f == flow.id && j == job),
        "{err}"
    );
    assert!(matches!(
        store.load_flow(flow.id).await,
        Err(Error::FlowNotFound(_))
    ));

    store.set_fence(job, FencingToken(1)).await;
    store
        .create_flow(&flow, &atoms(), Some(fence(1)))
        .await
        .unwrap();
    let mut batch = Batch::new(flow.id, Some(fence(1)));
    batch.writes.push(start(&atoms()[0]));
    store.commit(&batch).await.unwrap();

    // Another engine claims the job: the old token is refused, the new one accepted.
    store.set_fence(job, FencingToken(2)).await;
    let mut stale = Batch::new(flow.id, Some(fence(1)));
    stale.writes.push(start(&atoms()[1]));
    let err = store.commit(&stale).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Fenced {
                token: FencingToken(1),
                ..
            }
        ),
        "{err}"
    );
    let snap = store.load_flow(flow.id).await.unwrap();
    assert_eq!(snap.atoms[1].state, AtomState::Pending);

    let mut current = Batch::new(flow.id, Some(fence(2)));
    current.writes.push(start(&atoms()[1]));
    store.commit(&current).await.unwrap();

    // A token too large to store is never current.
    let mut huge = Batch::new(flow.id, Some(fence(u64::MAX)));
    huge.writes.push(Write::Flow {
        from: FlowState::Pending,
        to: FlowState::Running,
        intention: Intention::Execute,
    });
    assert!(matches!(
        store.commit(&huge).await,
        Err(Error::Fenced { .. })
    ));
    // Unfenced writes are not checked.
    store.commit(&huge_unfenced(flow.id)).await.unwrap();
    assert_eq!(store.history(flow.id).await.unwrap().len(), 3);
}

fn huge_unfenced(flow: FlowId) -> Batch {
    let mut batch = Batch::new(flow, None);
    batch.writes.push(Write::Flow {
        from: FlowState::Pending,
        to: FlowState::Running,
        intention: Intention::Execute,
    });
    batch
}

/// The engine runs flows end to end on the store: one that succeeds, one that fails and is
/// reverted, and one with retries.
pub async fn engine_runs_flows_end_to_end<S: Harness>(store: S) {
    for scenario in [
        scenarios::linear(),
        scenarios::failing(),
        scenarios::retrying(),
    ] {
        let log = Log::new();
        let flow = (scenario.build)(&log);
        let before = store.commits();
        let engine = Engine::new(store.clone()).with_parallelism(scenario.parallelism);
        let outcome = engine.start(&flow, scenario.inputs.clone()).await.unwrap();
        let expected = match scenario.name {
            "failing" => FlowState::Reverted,
            _ => FlowState::Success,
        };
        assert_eq!(outcome.state, expected, "{}", scenario.name);
        let snap = store.load_flow(outcome.flow).await.unwrap();
        assert_eq!(snap.flow.state, expected);
        let history = store.history(outcome.flow).await.unwrap();
        assert!(!history.is_empty());
        assert!(history
            .iter()
            .enumerate()
            .all(|(i, t)| t.seq == i as u64 + 1));
        assert!(store.commits() > before);
        // Running the ended flow again writes nothing and gives the same outcome.
        let commits = store.commits();
        let again = engine.run(&flow, outcome.flow).await.unwrap();
        assert_eq!(again.state, expected);
        assert_eq!(again.results, outcome.results);
        assert_eq!(store.commits(), commits);
    }
    // The data went through the store: t4's input is t3's result, and so on.
    let log = Log::new();
    let flow = scenarios::long_linear(&log, 3);
    let outcome = Engine::new(store.clone())
        .start(&flow, baton_testkit::inputs([("seed", json!(7))]))
        .await
        .unwrap();
    let t2 = &outcome.results["t2"];
    assert_eq!(
        t2["inputs"]["v1"]["inputs"]["v0"]["inputs"]["seed"],
        json!(7)
    );
}

/// A run killed at any write and resumed ends as an uninterrupted run does.
pub async fn crash_at_every_write_resumes<S: Harness>(store: S, scenario: Scenario) {
    let coverage = crash_at_every_write(store, &scenario).await;
    assert!(
        coverage.writes >= 3,
        "{}: only {} writes",
        scenario.name,
        coverage.writes
    );
    assert!(
        coverage.crashes >= coverage.writes,
        "{}: {coverage:?}",
        scenario.name
    );
}

/// A small deterministic generator, so a failing batch can be replayed from its seed.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next()).unwrap() % n
    }

    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
}

/// Random batches (chains of writes to one atom, flow writes, stale expectations, illegal
/// transitions, unknown atoms, a fence) give exactly what `MemoryStore`, the reference, gives:
/// the same error or none, the same records and the same history.
pub async fn batches_agree_with_the_memory_store<S: Harness>(store: S) {
    use baton_core::store::FlowQuery;
    use baton_core::MemoryStore;
    use chrono::SubsecRound;

    let reference = MemoryStore::new();
    let job = JobId::new();
    store.set_fence(job, FencingToken(7)).await;
    reference.set_fence(job, FencingToken(7));
    let mut rng = Lcg(0x5eed);
    let names = ["a", "b", "c"];
    for round in 0..40 {
        let mut flow = flow_record("agree");
        flow.created_at = flow.created_at.trunc_subsecs(6);
        flow.updated_at = flow.created_at;
        let atoms: Vec<AtomRecord> = names
            .iter()
            .map(|n| AtomRecord::pending(*n, AtomKind::Task))
            .collect();
        store.create_flow(&flow, &atoms, None).await.unwrap();
        reference.create_flow(&flow, &atoms, None).await.unwrap();
        for step in 0..12 {
            let ctx = format!("round {round}, batch {step}");
            let now = Utc::now().trunc_subsecs(6);
            let fence = match rng.below(10) {
                0 => Some(Fence {
                    job,
                    token: FencingToken(7),
                }),
                1 => Some(Fence {
                    job,
                    token: FencingToken(6),
                }),
                _ => None,
            };
            let mut batch = Batch::new(flow.id, fence);
            batch.at = now;
            // What the writes so far leave, as the batch is built.
            let snap = reference.load_flow(flow.id).await.unwrap();
            let mut flow_state = snap.flow.state;
            let mut current = snap.atoms.clone();
            for _ in 0..=rng.below(5) {
                if rng.chance(20) {
                    let from = if rng.chance(85) {
                        flow_state
                    } else {
                        rng.pick(FlowState::ALL)
                    };
                    let legal: Vec<FlowState> = FlowState::ALL
                        .iter()
                        .copied()
                        .filter(|to| from == *to || from.can_transition(*to))
                        .collect();
                    let to = if rng.chance(85) && !legal.is_empty() {
                        rng.pick(&legal)
                    } else {
                        rng.pick(FlowState::ALL)
                    };
                    batch.writes.push(Write::Flow {
                        from,
                        to,
                        intention: rng.pick(Intention::ALL),
                    });
                    flow_state = to;
                    continue;
                }
                if rng.chance(4) {
                    batch
                        .writes
                        .push(start(&AtomRecord::pending("ghost", AtomKind::Task)));
                    continue;
                }
                let i = rng.below(current.len());
                let before = current[i].clone();
                let (expected_state, expected_attempt) = if rng.chance(85) {
                    (before.state, before.attempt)
                } else {
                    (rng.pick(AtomState::ALL), before.attempt + rng.pick(&[0, 1]))
                };
                let legal: Vec<AtomState> = AtomState::ALL
                    .iter()
                    .copied()
                    .filter(|to| expected_state.can_transition(*to))
                    .collect();
                let mut next = before.clone();
                next.state = if rng.chance(90) && !legal.is_empty() {
                    rng.pick(&legal)
                } else {
                    rng.pick(AtomState::ALL)
                };
                next.attempt = match rng.below(10) {
                    0 => expected_attempt.saturating_sub(1),
                    1..=4 => expected_attempt + 1,
                    _ => expected_attempt,
                };
                next.intention = rng.pick(Intention::ALL);
                next.result = match rng.below(3) {
                    0 => None,
                    1 => Some(serde_json::Value::Null),
                    _ => Some(json!({"round": round, "step": step, "x": [1.5, "y"]})),
                };
                next.progress = f64::from(u32::try_from(rng.below(5)).unwrap()) / 4.0;
                next.started_at = rng.chance(50).then_some(now);
                next.finished_at = rng.chance(30).then_some(now);
                batch.writes.push(Write::Atom {
                    expected_state,
                    expected_attempt,
                    record: next.clone(),
                });
                current[i] = next;
            }
            let got = store.commit(&batch).await;
            let want = reference.commit(&batch).await;
            match (&got, &want) {
                (Ok(()), Ok(())) => {}
                (Err(g), Err(w)) => assert_eq!(g.to_string(), w.to_string(), "{ctx}: {batch:?}"),
                _ => panic!("{ctx}: got {got:?}, want {want:?} for {batch:?}"),
            }
            let (g, w) = (
                store.load_flow(flow.id).await.unwrap(),
                reference.load_flow(flow.id).await.unwrap(),
            );
            assert_eq!(g.atoms, w.atoms, "{ctx}: {batch:?}");
            assert_eq!(
                (g.flow.state, g.flow.intention),
                (w.flow.state, w.flow.intention),
                "{ctx}: {batch:?}"
            );
            assert_eq!(g.flow.updated_at, w.flow.updated_at, "{ctx}");
            assert_eq!(
                store.history(flow.id).await.unwrap(),
                reference.history(flow.id).await.unwrap(),
                "{ctx}: {batch:?}"
            );
        }
    }
    assert!(!store
        .list_flows(&FlowQuery::all())
        .await
        .unwrap()
        .is_empty());
}

/// Two stores writing to one flow, as two processes would: what each remembers of the flow
/// goes stale when the other writes, and the step log's primary key catches it. A stale write
/// is refused as a conflict naming the atom, a write that expects what the other store left is
/// applied, and the history keeps every change once, in order.
pub async fn stale_knowledge_is_caught_by_the_log<S: Store>(first: &S, second: &S) {
    let flow = new_flow(first).await;
    let [a, b]: [AtomRecord; 2] = atoms().try_into().unwrap();
    second.load_flow(flow.id).await.unwrap();
    let mut started = Batch::new(flow.id, None);
    started.writes.push(start(&a));
    second.commit(&started).await.unwrap();

    // `first` still believes `a` is PENDING.
    let err = first.commit(&started).await.unwrap_err();
    assert!(
        matches!(&err, Error::Conflict { subject, .. } if subject == "atom a"),
        "{err}"
    );

    // What `second` left, `first` can build on.
    let running = second.load_flow(flow.id).await.unwrap().atoms[0].clone();
    let mut done = running.clone();
    done.state = AtomState::Success;
    done.result = Some(json!(1));
    let mut finished = Batch::new(flow.id, None);
    finished.writes.push(Write::Atom {
        expected_state: running.state,
        expected_attempt: running.attempt,
        record: done,
    });
    first.commit(&finished).await.unwrap();

    // `second` is now the stale one, about a flow whose log moved on; its write to `b` is
    // still right, and is applied.
    let mut other = Batch::new(flow.id, None);
    other.writes.push(start(&b));
    second.commit(&other).await.unwrap();

    let snapshot = first.load_flow(flow.id).await.unwrap();
    assert_eq!(snapshot.atoms[0].state, AtomState::Success);
    assert_eq!(snapshot.atoms[0].result, Some(json!(1)));
    assert_eq!(snapshot.atoms[1].state, AtomState::Running);
    let history = second.history(flow.id).await.unwrap();
    let seen: Vec<_> = history
        .iter()
        .map(|t| match &t.change {
            baton_core::model::Change::Atom { atom, to, .. } => (t.seq, atom.clone(), *to),
            other => panic!("unexpected change {other:?}"),
        })
        .collect();
    assert_eq!(
        seen,
        [
            (1, "a".to_owned(), AtomState::Running),
            (2, "a".to_owned(), AtomState::Success),
            (3, "b".to_owned(), AtomState::Running),
        ]
    );
}

/// The migrations of `migrator` from before the step log (`20250801000000`), to make a
/// database as an older baton left it.
/// A writer whose view of a run is stale (it last saw the run running, and was then paused,
/// which `age` stands in for) while another store ends the run, purges it and creates a new
/// one (on SQLite the new run may take the purged run's number, and with it the range of its
/// step keys): the stale write is refused, not appended to a run that is gone, and the new
/// run is untouched.
pub async fn a_stale_write_to_a_purged_run_is_refused<S: Store>(
    stale: &S,
    other: &S,
    age: impl Fn(&S),
) {
    let flow = flow_with_one_step(other).await;
    let snapshot = stale.load_flow(flow.id).await.unwrap();
    let running = snapshot.atoms[0].clone();
    assert_eq!(running.state, AtomState::Running);

    let mut end = Batch::new(flow.id, None);
    for (from, to) in [
        (FlowState::Pending, FlowState::Running),
        (FlowState::Running, FlowState::Failure),
    ] {
        end.writes.push(Write::Flow {
            from,
            to,
            intention: Intention::Execute,
        });
    }
    // The run ended an hour ago, and the stale writer has been paused longer than that.
    end.at = Utc::now() - chrono::Duration::hours(1);
    other.commit(&end).await.unwrap();
    age(stale);
    let cutoff = Utc::now() + chrono::Duration::seconds(1);
    assert_eq!(other.purge_flows(cutoff, 100).await.unwrap(), 1);
    let fresh = new_flow(other).await;

    let mut done = running.clone();
    done.state = AtomState::Success;
    let mut late = Batch::new(flow.id, None);
    late.writes.push(Write::Atom {
        expected_state: running.state,
        expected_attempt: running.attempt,
        record: done,
    });
    let err = stale.commit(&late).await.unwrap_err();
    assert!(
        matches!(err, Error::FlowNotFound(id) if id == flow.id),
        "{err}"
    );
    let untouched = other.load_flow(fresh.id).await.unwrap();
    assert_eq!(untouched.atoms, atoms());
    assert!(other.history(fresh.id).await.unwrap().is_empty());
    assert!(matches!(
        other.load_flow(flow.id).await,
        Err(Error::FlowNotFound(_))
    ));
}

pub fn before_the_step_log(migrator: sqlx::migrate::Migrator) -> sqlx::migrate::Migrator {
    migrations_before(migrator, 20250801000000)
}

/// The migrations of `migrator` older than `version`: a database as an earlier release left
/// it.
pub fn migrations_before(
    mut migrator: sqlx::migrate::Migrator,
    version: i64,
) -> sqlx::migrate::Migrator {
    migrator.migrations = std::borrow::Cow::Owned(
        migrator
            .migrations
            .iter()
            .filter(|m| m.version < version)
            .cloned()
            .collect(),
    );
    migrator
}

/// SQL (good on both databases) for a run as a baton from before the step log left it: `a`
/// done, `b` running, four transitions in `history`.
pub fn old_run(flow: FlowId) -> Vec<String> {
    let now = "2025-07-01T10:00:00.000000000Z";
    vec![
        format!(
            "INSERT INTO flows (id, name, state, intention, inputs, meta, created_at, updated_at, \
             model_version) VALUES ('{flow}', 'old', 'RUNNING', 'EXECUTE', '{{}}', '{{}}', '{now}', \
             '{now}', 1)"
        ),
        format!(
            "INSERT INTO atoms (flow_id, name, position, kind, state, intention, attempt, round, \
             result, retry_history, progress, started_at, finished_at, model_version) VALUES \
             ('{flow}', 'a', 0, 'task', 'SUCCESS', 'EXECUTE', 1, 0, '\"made\"', '[]', 1.0, '{now}', \
             '{now}', 1), \
             ('{flow}', 'b', 1, 'task', 'RUNNING', 'EXECUTE', 1, 0, NULL, '[]', 0.0, '{now}', NULL, 1)"
        ),
        format!(
            "INSERT INTO history (flow_id, seq, at, subject, atom, from_state, to_state, attempt) \
             VALUES ('{flow}', 1, '{now}', 'flow', NULL, 'PENDING', 'RUNNING', NULL), \
             ('{flow}', 2, '{now}', 'atom', 'a', 'PENDING', 'RUNNING', 1), \
             ('{flow}', 3, '{now}', 'atom', 'a', 'RUNNING', 'SUCCESS', 1), \
             ('{flow}', 4, '{now}', 'atom', 'b', 'PENDING', 'RUNNING', 1)"
        ),
    ]
}

/// The run of [`old_run`], in an upgraded database, loads as it was and goes on: new steps go
/// to the log, and the history continues the old numbering.
pub async fn old_run_goes_on<S: Store>(store: &S, flow: FlowId) {
    use baton_core::model::Change;
    use baton_core::store::FlowQuery;

    let snapshot = store.load_flow(flow).await.unwrap();
    assert_eq!(snapshot.flow.state, FlowState::Running);
    assert_eq!(snapshot.atoms[0].result, Some(serde_json::json!("made")));
    let b = snapshot.atoms[1].clone();
    assert_eq!((b.state, b.attempt), (AtomState::Running, 1));

    // The run goes on: `b` succeeds, and so does the flow.
    let mut done = b.clone();
    done.state = AtomState::Success;
    done.result = Some(serde_json::json!(2));
    let mut batch = Batch::new(flow, None);
    batch.writes.push(Write::Atom {
        expected_state: b.state,
        expected_attempt: b.attempt,
        record: done,
    });
    batch.writes.push(Write::Flow {
        from: FlowState::Running,
        to: FlowState::Success,
        intention: Intention::Execute,
    });
    store.commit(&batch).await.unwrap();

    let snapshot = store.load_flow(flow).await.unwrap();
    assert_eq!(snapshot.flow.state, FlowState::Success);
    assert_eq!(snapshot.atoms[1].result, Some(serde_json::json!(2)));
    let listed = store.list_flows(&FlowQuery::all()).await.unwrap();
    assert_eq!(listed[0].state, FlowState::Success);
    let history = store.history(flow).await.unwrap();
    assert_eq!(
        history.iter().map(|t| t.seq).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5, 6]
    );
    assert!(matches!(
        &history[4].change,
        Change::Atom { atom, to: AtomState::Success, .. } if atom == "b"
    ));
    assert!(matches!(
        history[5].change,
        Change::Flow {
            to: FlowState::Success,
            ..
        }
    ));
}

/// Stores of one database that write steps in different forms (`StepFormat`), as engines of
/// two versions would during an upgrade: a run that one begins and the other resumes after a
/// crash ends as an uninterrupted run does, with the same history, whichever writes first,
/// and each reads everything the other wrote.
pub async fn step_formats_mix<S: Store + Clone + 'static>(long: S, short: S) {
    use baton_testkit::{Action, CrashMode, CrashStore};

    for scenario in [scenarios::retrying(), scenarios::failing()] {
        let reference_log = Log::new();
        let flow = (scenario.build)(&reference_log);
        let reference = Engine::new(long.clone())
            .start(&flow, scenario.inputs.clone())
            .await
            .unwrap();
        let reference_history = long.history(reference.flow).await.unwrap().len();
        for (first, then) in [(&long, &short), (&short, &long)] {
            let log = Log::new();
            let flow = (scenario.build)(&log);
            let id = FlowId::new();
            let crashing = CrashStore::new(first.clone(), 4, CrashMode::AfterWrite);
            let engine = Engine::new(crashing.clone());
            engine
                .create_with(
                    &flow,
                    scenario.inputs.clone(),
                    baton_core::CreateOptions::new().id(id),
                )
                .await
                .unwrap();
            assert!(engine.run(&flow, id).await.is_err(), "{}", scenario.name);
            assert!(crashing.crashed());
            let outcome = Engine::new(then.clone()).run(&flow, id).await.unwrap();
            assert_eq!(outcome.state, reference.state, "{}", scenario.name);
            assert_eq!(outcome.results, reference.results, "{}", scenario.name);
            // One task may run again: the one the crash caught running.
            let runs = log.successes(Action::Execute).values().sum::<usize>();
            let want = reference_log
                .successes(Action::Execute)
                .values()
                .sum::<usize>();
            assert!(
                runs == want || runs == want + 1,
                "{}: {runs} runs against {want}",
                scenario.name
            );
            // The crash adds at most the new attempt of that task to the history.
            let history = then.history(id).await.unwrap();
            assert!(
                history.len() == reference_history || history.len() == reference_history + 1,
                "{}: {} transitions against {reference_history}",
                scenario.name,
                history.len()
            );
            // Each store reads what both wrote, the same way.
            assert_eq!(first.history(id).await.unwrap(), history);
            assert_eq!(
                first.load_flow(id).await.unwrap(),
                then.load_flow(id).await.unwrap()
            );
        }
    }
}

/// The migrations of the release before versions (baton 0.3).
pub fn before_versions(migrator: sqlx::migrate::Migrator) -> sqlx::migrate::Migrator {
    migrations_before(migrator, 20261206000000)
}

/// SQL (good on both databases) for a board as baton 0.3 left it: job `claimed` claimed once
/// (its lease long run out), job `waiting` never claimed. `now` is a time column's text.
pub fn old_jobs(claimed: JobId, waiting: JobId, now: &str) -> Vec<String> {
    vec![format!(
        "INSERT INTO jobs (id, name, factory, params, priority, state, owner, lease_expires_at, \
         token, attempts, created_at, updated_at) VALUES \
         ('{claimed}', 'claimed', 'stack', '{{}}', 0, 'CLAIMED', '{owner}', 1, 1, 1, '{now}', '{now}'), \
         ('{waiting}', 'waiting', 'stack', '{{}}', 0, 'UNCLAIMED', NULL, NULL, 0, 0, '{now}', '{now}')",
        owner = baton_core::ConductorId::new(),
    )]
}

/// After the upgrade: the job 0.3 claimed is pinned to version 1, the other is not pinned; a
/// claim of this release pins it to the newest version offered and takes the first at
/// version 1; a claim as 0.3 made it is refused by the database (`old_claim` runs it) and
/// changes nothing.
pub async fn old_jobs_after_the_upgrade<B, F, Fut>(
    board: &B,
    claimed: JobId,
    waiting: JobId,
    old_claim: F,
) where
    B: baton_core::JobBoard,
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<u64, sqlx::Error>>,
{
    use baton_core::board::Offer;
    assert_eq!(board.get(claimed).await.unwrap().version, Some(1));
    assert_eq!(board.get(waiting).await.unwrap().version, None);
    let refused = old_claim().await.unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("older than the database schema"),
        "{refused}"
    );
    assert_eq!(
        board.get(waiting).await.unwrap().state,
        baton_core::JobState::Unclaimed
    );
    let offer = Offer::new().with("stack", 1).with("stack", 2);
    let claims = board
        .claim_up_to(
            baton_core::ConductorId::new(),
            std::time::Duration::from_secs(60),
            5,
            &offer,
        )
        .await
        .unwrap();
    let got: Vec<_> = claims.iter().map(|c| (c.job.id, c.job.version)).collect();
    assert_eq!(got, [(claimed, Some(1)), (waiting, Some(2))]);
}

/// The migrations of the release before watched jobs (`20261208000000`).
pub fn before_watched(migrator: sqlx::migrate::Migrator) -> sqlx::migrate::Migrator {
    migrations_before(migrator, 20261208000000)
}

/// SQL (good on both databases) for job `job` as the release before watched jobs posted it:
/// waiting, pinned to version 1 of `noop`. `now` is a time column's text.
pub fn job_before_watched(job: JobId, now: &str) -> String {
    format!(
        "INSERT INTO jobs (id, name, factory, params, priority, state, token, attempts, version, \
         created_at, updated_at) VALUES \
         ('{job}', 'before', 'noop', '{{}}', 0, 'UNCLAIMED', 0, 0, 1, '{now}', '{now}')"
    )
}

/// After the upgrade, job `job` (posted before it, so not watched) is waited for by a handle
/// that looks only every 30 s: the wait marks it where a mark is needed, and returns as soon as
/// a claim made here consumes it, woken by the board's news of the end.
pub async fn a_job_posted_before_the_upgrade_is_waited_for<B>(board: &B, job: JobId)
where
    B: baton_core::JobBoard + Clone + 'static,
{
    use baton_core::handle::Ended;
    use baton_core::JobHandle;
    use std::time::{Duration, Instant};

    let handle: JobHandle<()> =
        JobHandle::new(Arc::new(board.clone()), job).poll_every(Duration::from_secs(30));
    let waiter = tokio::spawn(async move {
        let started = Instant::now();
        (handle.wait().await.unwrap(), started.elapsed())
    });
    // The wait looks (and marks) first; the end comes after.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let claim = board
        .claim(
            baton_core::ConductorId::new(),
            Duration::from_secs(60),
            &baton_testkit::board::offer(),
        )
        .await
        .unwrap()
        .expect("the job posted before the upgrade is claimed");
    assert_eq!(claim.job.id, job);
    board
        .consume(
            claim.fence,
            json!({"flow": claim.job.flow(), "state": "SUCCESS", "failures": []}),
        )
        .await
        .unwrap();
    let (ended, waited) = waiter.await.unwrap();
    assert_eq!(ended, Ended::Succeeded(()));
    assert!(
        waited < Duration::from_secs(10),
        "the wait took {waited:?}: the end's news did not wake it"
    );
}

/// The migrations before claims went flat (`20261209000000_flat_claims`, issue 18).
pub fn before_flat_claims(migrator: sqlx::migrate::Migrator) -> sqlx::migrate::Migrator {
    migrations_before(migrator, 20261209000000)
}

/// The jobs of [`jobs_before_flat_claims`], in posting order.
pub struct OldBoard {
    /// Waiting, priority 0.
    pub waiting: JobId,
    /// Waiting, priority 5.
    pub urgent: JobId,
    /// Claimed, its lease long run out (token 1).
    pub stale: JobId,
    /// Claimed, its lease good for centuries (token 1).
    pub live: JobId,
    /// Parked, key `k` (token 2).
    pub parked: JobId,
    /// Waiting behind the parked job, key `k`.
    pub behind: JobId,
    /// Complete.
    pub complete: JobId,
    /// Trashed.
    pub trashed: JobId,
}

impl OldBoard {
    fn ids(&self) -> Vec<JobId> {
        vec![
            self.waiting,
            self.urgent,
            self.stale,
            self.live,
            self.parked,
            self.behind,
            self.complete,
            self.trashed,
        ]
    }
}

/// SQL (good on both databases) for a board as the release before flat claims left it: a job
/// in every state, all of factory `noop` at version 1 and ended long ago where they ended.
/// `now` is a time column's text.
pub fn jobs_before_flat_claims(now: &str) -> (OldBoard, String) {
    let old = OldBoard {
        waiting: JobId::new(),
        urgent: JobId::new(),
        stale: JobId::new(),
        live: JobId::new(),
        parked: JobId::new(),
        behind: JobId::new(),
        complete: JobId::new(),
        trashed: JobId::new(),
    };
    let owner = baton_core::ConductorId::new();
    let row =
        |id: JobId, key: &str, priority: i32, state: &str, owner: &str, lease: &str, token| {
            format!(
            "('{id}', '{state}', 'noop', '{{}}', {key}, {priority}, '{state}', {owner}, {lease}, \
              {token}, {token}, 1, '{now}', '{now}')"
        )
        };
    let sql = format!(
        "INSERT INTO jobs (id, name, factory, params, job_key, priority, state, owner, \
                           lease_expires_at, token, attempts, version, created_at, updated_at) \
         VALUES {}",
        [
            row(old.waiting, "NULL", 0, "UNCLAIMED", "NULL", "NULL", 0),
            row(old.urgent, "NULL", 5, "UNCLAIMED", "NULL", "NULL", 0),
            row(
                old.stale,
                "NULL",
                0,
                "CLAIMED",
                &format!("'{owner}'"),
                "1",
                1
            ),
            row(
                old.live,
                "NULL",
                0,
                "CLAIMED",
                &format!("'{owner}'"),
                "99999999999999",
                1
            ),
            row(old.parked, "'k'", 0, "PARKED", "NULL", "NULL", 2),
            row(old.behind, "'k'", 0, "UNCLAIMED", "NULL", "NULL", 0),
            row(old.complete, "NULL", 0, "COMPLETE", "NULL", "NULL", 1),
            row(old.trashed, "NULL", 0, "TRASHED", "NULL", "NULL", 1),
        ]
        .join(", ")
    );
    (old, sql)
}

/// After the upgrade, the jobs written before it are listed, got, claimed (by priority, then
/// posting order; the stale claim taken over under a new token, the live one left to its
/// owner, whose fence still holds; the job behind the parked one of its key only once that is
/// trashed) and purged as ended jobs are.
pub async fn jobs_before_flat_claims_after_the_upgrade<B: baton_core::JobBoard>(
    board: &B,
    old: &OldBoard,
) {
    use baton_core::board::JobQuery;
    use baton_core::ConductorId;
    use std::time::Duration;

    let lease = Duration::from_secs(60);
    let offer = baton_testkit::board::offer();
    let listed: Vec<JobId> = board
        .list(&JobQuery::all())
        .await
        .unwrap()
        .iter()
        .map(|j| j.id)
        .collect();
    assert_eq!(listed, old.ids(), "listed in posting order");
    for (id, state) in old.ids().into_iter().zip([
        JobState::Unclaimed,
        JobState::Unclaimed,
        JobState::Claimed,
        JobState::Claimed,
        JobState::Parked,
        JobState::Unclaimed,
        JobState::Complete,
        JobState::Trashed,
    ]) {
        assert_eq!(board.get(id).await.unwrap().state, state);
    }
    let owner = ConductorId::new();
    let mut claimed = Vec::new();
    while let Some(claim) = board.claim(owner, lease, &offer).await.unwrap() {
        claimed.push((claim.job.id, claim.fence.token));
    }
    assert_eq!(
        claimed,
        vec![
            (old.urgent, FencingToken(1)),
            (old.waiting, FencingToken(1)),
            (old.stale, FencingToken(2)),
        ]
    );
    board
        .heartbeat(
            Fence {
                job: old.live,
                token: FencingToken(1),
            },
            lease,
            false,
        )
        .await
        .expect("the live claim holds through the upgrade");
    board.trash(old.parked, None, json!("gone")).await.unwrap();
    let behind = board.claim(owner, lease, &offer).await.unwrap().unwrap();
    assert_eq!(behind.job.id, old.behind);
    assert_eq!(
        board
            .purge_jobs(chrono::DateTime::<Utc>::MAX_UTC, 100)
            .await
            .unwrap(),
        3,
        "the complete, the trashed and the parked job trashed since"
    );
    for gone in [old.complete, old.trashed, old.parked] {
        assert!(matches!(
            board.get(gone).await,
            Err(baton_core::board::Error::JobNotFound(id)) if id == gone
        ));
    }
}
