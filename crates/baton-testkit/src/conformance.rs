//! Store conformance: cases every [`Store`] must pass, generic over the backend.
//!
//! A backend's tests expand [`store_conformance!`](crate::store_conformance) with a constructor
//! expression; each case becomes its own `#[tokio::test]`.

use baton_core::model::{AtomKind, AtomRecord, Batch, FlowRecord, Write};
use baton_core::store::{Error, FlowQuery, Store};
use baton_core::{AtomState, FlowId, FlowState, Intention};
use chrono::Utc;
use serde_json::json;

fn flow_record(name: &str) -> FlowRecord {
    let now = Utc::now();
    FlowRecord {
        id: FlowId::new(),
        name: name.to_owned(),
        state: FlowState::Pending,
        intention: Intention::Execute,
        inputs: crate::inputs([("x", json!(1))]),
        meta: json!({"owner": "tests"}),
        factory: None,
        fingerprint: None,
        deadline: None,
        created_at: now,
        updated_at: now,
    }
}

fn atoms() -> Vec<AtomRecord> {
    vec![
        AtomRecord::pending("a", AtomKind::Task),
        AtomRecord::pending("r", AtomKind::Retry),
    ]
}

fn start(rec: &AtomRecord) -> Write {
    let mut next = rec.clone();
    next.state = AtomState::Running;
    next.attempt += 1;
    Write::Atom {
        expected_state: rec.state,
        expected_attempt: rec.attempt,
        record: next,
    }
}

/// A batch that starts the flow and its atom `first`.
fn start_flow(flow: FlowId, first: &AtomRecord) -> Batch {
    let mut batch = Batch::new(flow, None);
    batch.writes.push(Write::Flow {
        from: FlowState::Pending,
        to: FlowState::Running,
        intention: Intention::Execute,
    });
    batch.writes.push(start(first));
    batch
}

/// Unfinished runs are counted by state, every unfinished state listed (zeros included), ended
/// runs not at all; an estimate of the runs stored, if the store gives one, is at least the
/// unfinished ones.
pub async fn unfinished_runs_are_counted_by_state<S: Store>(store: S) {
    let counts = store.count_runs().await.unwrap();
    let unfinished: Vec<FlowState> = FlowState::ALL
        .iter()
        .copied()
        .filter(|s| !s.is_terminal())
        .collect();
    assert_eq!(
        counts
            .unfinished
            .iter()
            .map(|(s, _)| *s)
            .collect::<Vec<_>>(),
        unfinished
    );
    assert!(counts.unfinished.iter().all(|(_, n)| *n == 0), "{counts:?}");
    let paths: [&[FlowState]; 7] = [
        &[],
        &[],
        &[],
        &[FlowState::Running],
        &[FlowState::Running],
        &[FlowState::Running, FlowState::Success],
        &[
            FlowState::Running,
            FlowState::Suspending,
            FlowState::Suspended,
        ],
    ];
    for path in paths {
        let f = flow_record("counted");
        store.create_flow(&f, &atoms(), None).await.unwrap();
        if path.is_empty() {
            continue;
        }
        let mut batch = Batch::new(f.id, None);
        let mut from = FlowState::Pending;
        for &to in path {
            batch.writes.push(Write::Flow {
                from,
                to,
                intention: Intention::Execute,
            });
            from = to;
        }
        store.commit(&batch).await.unwrap();
    }
    let counts = store.count_runs().await.unwrap();
    let count = |state| {
        counts
            .unfinished
            .iter()
            .find(|(s, _)| *s == state)
            .map(|(_, n)| *n)
    };
    assert_eq!(count(FlowState::Pending), Some(3), "{counts:?}");
    assert_eq!(count(FlowState::Running), Some(2), "{counts:?}");
    assert_eq!(count(FlowState::Suspended), Some(1), "{counts:?}");
    assert_eq!(
        count(FlowState::Success),
        None,
        "ended runs are not counted"
    );
    let total: u64 = counts.unfinished.iter().map(|(_, n)| n).sum();
    assert_eq!(total, 6);
    if let Some(stored) = counts.stored_estimate {
        assert!(stored >= 6, "{counts:?}");
    }
}

/// A created flow loads back exactly as written.
pub async fn create_and_load_round_trip<S: Store>(store: S) {
    let flow = flow_record("round-trip");
    store.create_flow(&flow, &atoms(), None).await.unwrap();
    let snap = store.load_flow(flow.id).await.unwrap();
    assert_eq!(snap.flow.id, flow.id);
    assert_eq!(snap.flow.name, flow.name);
    assert_eq!(snap.flow.inputs, flow.inputs);
    assert_eq!(snap.flow.meta, flow.meta);
    assert_eq!(snap.atoms, atoms());
    assert!(matches!(
        store.create_flow(&flow, &atoms(), None).await,
        Err(Error::FlowExists(id)) if id == flow.id
    ));
    assert!(matches!(
        store.load_flow(FlowId::new()).await,
        Err(Error::FlowNotFound(_))
    ));
}

/// `load_run` reads what `load_flow` does, but for the run's `meta`, which it may leave out;
/// and the store can go on committing after it.
pub async fn load_run_is_load_flow_but_for_meta<S: Store>(store: S) {
    let flow = flow_record("load-run");
    let atoms = atoms();
    store.create_flow(&flow, &atoms, None).await.unwrap();
    store.commit(&start_flow(flow.id, &atoms[0])).await.unwrap();

    let full = store.load_flow(flow.id).await.unwrap();
    let run = store.load_run(flow.id).await.unwrap();
    assert_eq!(run.atoms, full.atoms);
    assert!(
        run.flow.meta.is_null() || run.flow.meta == full.flow.meta,
        "meta {}",
        run.flow.meta
    );
    let mut without_meta = full.flow.clone();
    without_meta.meta = run.flow.meta.clone();
    assert_eq!(run.flow, without_meta);

    let mut next = Batch::new(flow.id, None);
    next.writes.push(start(&atoms[1]));
    store.commit(&next).await.unwrap();
    assert_eq!(
        store.load_run(flow.id).await.unwrap().atoms[1].state,
        AtomState::Running
    );
    assert!(matches!(
        store.load_run(FlowId::new()).await,
        Err(Error::FlowNotFound(_))
    ));
}

/// A batch applies all its writes, in order, and records one transition per change of state.
pub async fn batch_applies_in_order_with_history<S: Store>(store: S) {
    let flow = flow_record("batch");
    let atoms = atoms();
    store.create_flow(&flow, &atoms, None).await.unwrap();
    let mut batch = start_flow(flow.id, &atoms[0]);
    let mut done = atoms[0].clone();
    done.state = AtomState::Success;
    done.attempt = 1;
    done.result = Some(json!({"id": "net-1", "nested": [1, 2.5, null, "x"]}));
    batch.writes.push(Write::Atom {
        expected_state: AtomState::Running,
        expected_attempt: 1,
        record: done.clone(),
    });
    store.commit(&batch).await.unwrap();

    let snap = store.load_flow(flow.id).await.unwrap();
    assert_eq!(snap.flow.state, FlowState::Running);
    let a = snap.atoms.iter().find(|a| a.name == "a").unwrap();
    assert_eq!(a, &done);
    let history = store.history(flow.id).await.unwrap();
    assert_eq!(history.len(), 3);
    assert_eq!(
        history.iter().map(|t| t.seq).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
}

/// A run stored with its first batch reads back with the batch applied and its transitions
/// numbered from 1; a taken id or a refused first batch stores nothing; a batch asking the
/// store to consume a job without a fence is refused.
pub async fn create_and_commit_stores_a_run_with_its_first_batch<S: Store>(store: S) {
    let flow = flow_record("created-with-first-batch");
    let atoms = atoms();
    let first = start_flow(flow.id, &atoms[0]);
    store
        .create_and_commit(&flow, &atoms, None, &first)
        .await
        .unwrap();
    let snap = store.load_flow(flow.id).await.unwrap();
    assert_eq!(snap.flow.state, FlowState::Running);
    let a = snap.atoms.iter().find(|a| a.name == "a").unwrap();
    assert_eq!((a.state, a.attempt), (AtomState::Running, 1));
    let history = store.history(flow.id).await.unwrap();
    assert_eq!(
        history.iter().map(|t| t.seq).collect::<Vec<_>>(),
        vec![1, 2]
    );
    // Later batches go on from there.
    let mut next = Batch::new(flow.id, None);
    next.writes.push(start(&atoms[1]));
    store.commit(&next).await.unwrap();
    assert_eq!(store.history(flow.id).await.unwrap().len(), 3);

    // The id is taken: nothing changes.
    let err = store
        .create_and_commit(&flow, &atoms, None, &first)
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::FlowExists(id) if id == flow.id),
        "{err}"
    );
    assert_eq!(store.history(flow.id).await.unwrap().len(), 3);

    // A first batch that does not apply to the new run: refused, and no run is left behind.
    let other = flow_record("refused-first-batch");
    let mut wrong = Batch::new(other.id, None);
    wrong.writes.push(Write::Flow {
        from: FlowState::Running,
        to: FlowState::Success,
        intention: Intention::Execute,
    });
    wrong.writes.push(start(&atoms[0]));
    wrong.writes.push(start(&atoms[0]));
    let err = store
        .create_and_commit(&other, &atoms, None, &wrong)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Conflict { .. } | Error::IllegalTransition { .. }
        ),
        "{err}"
    );
    assert!(matches!(
        store.load_flow(other.id).await,
        Err(Error::FlowNotFound(_))
    ));

    // Consuming a job needs the job's claim.
    let mut unfenced = Batch::new(flow.id, None);
    unfenced.writes.push(Write::Flow {
        from: FlowState::Running,
        to: FlowState::Suspending,
        intention: Intention::Execute,
    });
    unfenced.consume = Some(json!({"state": "SUCCESS"}));
    let err = store.commit(&unfenced).await.unwrap_err();
    assert!(matches!(err, Error::Refused { .. }), "{err}");
    assert_eq!(
        store.load_flow(flow.id).await.unwrap().flow.state,
        FlowState::Running
    );
}

/// A write expecting the wrong state or attempt is refused, and refuses the whole batch.
pub async fn stale_writes_conflict_and_change_nothing<S: Store>(store: S) {
    let flow = flow_record("conflict");
    let atoms = atoms();
    store.create_flow(&flow, &atoms, None).await.unwrap();
    let mut first = Batch::new(flow.id, None);
    first.writes.push(start(&atoms[0]));
    store.commit(&first).await.unwrap();

    // Same write again: the atom is no longer PENDING at attempt 0.
    let mut again = Batch::new(flow.id, None);
    again.writes.push(start(&atoms[1]));
    again.writes.push(start(&atoms[0]));
    let err = store.commit(&again).await.unwrap_err();
    assert!(matches!(err, Error::Conflict { .. }), "{err}");
    let snap = store.load_flow(flow.id).await.unwrap();
    let r = snap.atoms.iter().find(|a| a.name == "r").unwrap();
    assert_eq!(
        r.state,
        AtomState::Pending,
        "the refused batch changed atom r"
    );
    assert_eq!(store.history(flow.id).await.unwrap().len(), 1);
}

/// The state machine is enforced: illegal transitions are refused.
pub async fn illegal_transitions_are_refused<S: Store>(store: S) {
    let flow = flow_record("illegal");
    let atoms = atoms();
    store.create_flow(&flow, &atoms, None).await.unwrap();
    let mut skip = atoms[0].clone();
    skip.state = AtomState::Success;
    let mut batch = Batch::new(flow.id, None);
    batch.writes.push(Write::Atom {
        expected_state: AtomState::Pending,
        expected_attempt: 0,
        record: skip,
    });
    let err = store.commit(&batch).await.unwrap_err();
    assert!(matches!(err, Error::IllegalTransition { .. }), "{err}");

    let mut batch = Batch::new(flow.id, None);
    batch.writes.push(Write::Flow {
        from: FlowState::Pending,
        to: FlowState::Success,
        intention: Intention::Execute,
    });
    let err = store.commit(&batch).await.unwrap_err();
    assert!(matches!(err, Error::IllegalTransition { .. }), "{err}");
}

/// Unknown flows and atoms are named in the error.
pub async fn unknown_flow_or_atom_is_named<S: Store>(store: S) {
    let flow = flow_record("unknown");
    store.create_flow(&flow, &atoms(), None).await.unwrap();
    let mut batch = Batch::new(flow.id, None);
    batch
        .writes
        .push(start(&AtomRecord::pending("ghost", AtomKind::Task)));
    let err = store.commit(&batch).await.unwrap_err();
    assert!(
        matches!(&err, Error::AtomNotFound { atom, .. } if atom == "ghost"),
        "{err}"
    );
    let batch = Batch::new(FlowId::new(), None);
    assert!(matches!(
        store.commit(&batch).await,
        Err(Error::FlowNotFound(_))
    ));
}

/// Listing filters by state and name, newest first, and honours the limit.
pub async fn list_filters_and_orders<S: Store>(store: S) {
    let name = format!("list-{}", FlowId::new());
    let mut ids = Vec::new();
    for _ in 0..3 {
        let mut f = flow_record(&name);
        f.created_at = Utc::now();
        store.create_flow(&f, &atoms(), None).await.unwrap();
        ids.push(f.id);
    }
    let mut batch = Batch::new(ids[0], None);
    batch.writes.push(Write::Flow {
        from: FlowState::Pending,
        to: FlowState::Running,
        intention: Intention::Execute,
    });
    store.commit(&batch).await.unwrap();

    let all = store
        .list_flows(&FlowQuery::all().name(&name))
        .await
        .unwrap();
    assert_eq!(
        all.iter().map(|f| f.id).collect::<Vec<_>>(),
        ids.iter().rev().copied().collect::<Vec<_>>()
    );
    let running = store
        .list_flows(&FlowQuery::all().name(&name).state(FlowState::Running))
        .await
        .unwrap();
    assert_eq!(
        running.iter().map(|f| f.id).collect::<Vec<_>>(),
        vec![ids[0]]
    );
    let limited = store
        .list_flows(&FlowQuery::all().name(&name).limit(2))
        .await
        .unwrap();
    assert_eq!(limited.len(), 2);
}

/// Creation-time filters select the runs created in the window, newest first, and page like
/// any filter; a run's head is its state and a step number that grows with each commit.
pub async fn time_filters_and_heads<S: Store>(store: S) {
    let name = format!("time-{}", FlowId::new());
    let base = Utc::now() - chrono::Duration::hours(1);
    let mut ids = Vec::new();
    for minutes in [0, 10, 20, 30] {
        let mut f = flow_record(&name);
        f.created_at = base + chrono::Duration::minutes(minutes);
        store.create_flow(&f, &atoms(), None).await.unwrap();
        ids.push(f.id);
    }
    let listed = |q: FlowQuery| {
        let store = &store;
        async move {
            store
                .list_flows(&q)
                .await
                .unwrap()
                .iter()
                .map(|f| f.id)
                .collect::<Vec<_>>()
        }
    };
    let named = FlowQuery::all().name(&name);
    let minutes = |m| base + chrono::Duration::minutes(m);
    assert_eq!(
        listed(named.clone().created_since(minutes(10))).await,
        vec![ids[3], ids[2], ids[1]]
    );
    assert_eq!(
        listed(named.clone().created_until(minutes(20))).await,
        vec![ids[1], ids[0]]
    );
    let window = named
        .clone()
        .created_since(minutes(5))
        .created_until(minutes(25));
    assert_eq!(listed(window.clone()).await, vec![ids[2], ids[1]]);
    assert_eq!(listed(window.clone().limit(1)).await, vec![ids[2]]);
    assert_eq!(listed(window.after(ids[2])).await, vec![ids[1]]);
    assert!(listed(named.created_since(minutes(31))).await.is_empty());

    let before = store.head(ids[0]).await.unwrap();
    assert_eq!(before.state, FlowState::Pending);
    store
        .commit(&start_flow(ids[0], &atoms()[0]))
        .await
        .unwrap();
    let after = store.head(ids[0]).await.unwrap();
    assert_eq!(after.state, FlowState::Running);
    assert!(after.seq > before.seq, "{before:?} then {after:?}");
    let unknown = FlowId::new();
    assert!(matches!(
        store.head(unknown).await,
        Err(Error::FlowNotFound(id)) if id == unknown
    ));
}

/// Moves `flow` (pending, with the atoms of [`atoms`]) through a run that starts atom `a`, and
/// on to `end`, one batch per move, each made `ago` before now: it then has a step log and a
/// history, and (if `end` is an ended state) ended `ago` before now.
async fn run_to<S: Store>(store: &S, flow: FlowId, end: FlowState, ago: chrono::Duration) {
    let mut batch = Batch::new(flow, None);
    batch.at = Utc::now() - ago;
    batch.writes.push(Write::Flow {
        from: FlowState::Pending,
        to: FlowState::Running,
        intention: Intention::Execute,
    });
    batch.writes.push(start(&atoms()[0]));
    store.commit(&batch).await.unwrap();
    if end == FlowState::Running {
        return;
    }
    let mut batch = Batch::new(flow, None);
    batch.at = Utc::now() - ago;
    batch.writes.push(Write::Flow {
        from: FlowState::Running,
        to: end,
        intention: Intention::Execute,
    });
    store.commit(&batch).await.unwrap();
}

/// Purging deletes runs that ended before the cutoff, oldest first and no more than asked,
/// with everything about them (a run created again with the same id starts clean); runs that
/// have not ended, ended after the cutoff, or ended less than `PURGE_MIN_AGE` ago whatever
/// the cutoff, stay.
pub async fn purge_deletes_only_runs_that_ended_before_the_cutoff<S: Store>(store: S) {
    let hours = chrono::Duration::hours;
    let name = format!("purge-{}", FlowId::new());
    let make = || {
        let f = flow_record(&name);
        (f.id, f)
    };
    let (ok, ok_rec) = make();
    let (failed, failed_rec) = make();
    let (running, running_rec) = make();
    let (late, late_rec) = make();
    let (recent, recent_rec) = make();
    for rec in [&ok_rec, &failed_rec, &running_rec, &late_rec, &recent_rec] {
        store.create_flow(rec, &atoms(), None).await.unwrap();
    }
    run_to(&store, ok, FlowState::Success, hours(3)).await;
    run_to(&store, failed, FlowState::Failure, hours(3)).await;
    run_to(&store, running, FlowState::Running, hours(3)).await;
    run_to(&store, late, FlowState::Success, hours(1)).await;
    // Ended a minute ago: younger than `PURGE_MIN_AGE`.
    run_to(
        &store,
        recent,
        FlowState::Success,
        chrono::Duration::minutes(1),
    )
    .await;
    let cutoff = Utc::now() - hours(2);

    assert_eq!(store.purge_flows(cutoff, 0).await.unwrap(), 0);
    assert_eq!(store.purge_flows(cutoff, 1).await.unwrap(), 1);
    assert!(matches!(
        store.load_flow(ok).await,
        Err(Error::FlowNotFound(id)) if id == ok
    ));
    assert!(store.load_flow(failed).await.is_ok(), "the limit was one");
    assert_eq!(store.purge_flows(cutoff, 10).await.unwrap(), 1);
    assert_eq!(store.purge_flows(cutoff, 10).await.unwrap(), 0);
    for gone in [ok, failed] {
        assert!(matches!(
            store.load_flow(gone).await,
            Err(Error::FlowNotFound(_))
        ));
        assert!(matches!(
            store.history(gone).await,
            Err(Error::FlowNotFound(_))
        ));
    }
    let listed = || async {
        store
            .list_flows(&FlowQuery::all().name(&name))
            .await
            .unwrap()
            .iter()
            .map(|f| f.id)
            .collect::<Vec<FlowId>>()
    };
    assert_eq!(listed().await, vec![recent, late, running]);
    assert_eq!(
        store.load_flow(running).await.unwrap().flow.state,
        FlowState::Running
    );
    // Nothing of the old run is left to leak into a new one with the same id.
    store.create_flow(&ok_rec, &atoms(), None).await.unwrap();
    let again = store.load_flow(ok).await.unwrap();
    assert_eq!(again.flow.state, FlowState::Pending);
    assert_eq!(again.atoms, atoms());
    assert!(store.history(ok).await.unwrap().is_empty());
    run_to(&store, ok, FlowState::Success, hours(1)).await;
    // The latest cutoff there is takes every run that ended long enough ago (SQLite compares
    // times as text, and years past 9999 are written with a sign), but not the recent one.
    let everything = chrono::DateTime::<Utc>::MAX_UTC;
    assert_eq!(store.purge_flows(everything, 10).await.unwrap(), 2);
    assert_eq!(listed().await, vec![recent, running]);
}

/// A run's inputs get the limit every stored JSON value gets ([`DEFAULT_MAX_VALUE_BYTES`] by
/// default, as the store under test is made): over it, creating the run is refused with
/// `TooLarge`, naming the inputs, their size and the limit, and nothing is stored; at the limit
/// the run is stored. A result over it is refused likewise.
///
/// [`DEFAULT_MAX_VALUE_BYTES`]: baton_core::store::DEFAULT_MAX_VALUE_BYTES
pub async fn values_over_the_limit_are_refused<S: Store>(store: S) {
    let limit = baton_core::store::DEFAULT_MAX_VALUE_BYTES;
    // `{"x":"..."}`: eight bytes and the text.
    let inputs = |size: usize| crate::inputs([("x", json!("i".repeat(size - 8)))]);
    let mut big = flow_record("big-inputs");
    big.inputs = inputs(limit + 1);
    let too_large = |err: Error, what: &str, atom: Option<&str>, size: usize, flow: FlowId| {
        assert!(
            matches!(&err, Error::TooLarge { flow: f, atom: a, what: w, size: s, limit: l }
                if *f == flow && a.as_deref() == atom && *w == what && *s == size && *l == limit),
            "{err}"
        );
        assert!(
            err.to_string().contains(&format!("limit of {limit}")),
            "{err}"
        );
    };
    // (Not `unwrap_err`, which would print the megabyte of inputs.)
    let Err(err) = store.create_flow(&big, &atoms(), None).await else {
        panic!("inputs over the limit were stored");
    };
    too_large(err, "inputs", None, limit + 1, big.id);
    let first = start_flow(big.id, &atoms()[0]);
    let Err(err) = store.create_and_commit(&big, &atoms(), None, &first).await else {
        panic!("inputs over the limit were stored with a first batch");
    };
    too_large(err, "inputs", None, limit + 1, big.id);
    assert!(matches!(
        store.load_flow(big.id).await,
        Err(Error::FlowNotFound(_))
    ));

    big.inputs = inputs(limit);
    store.create_flow(&big, &atoms(), None).await.unwrap();
    assert!(store.load_flow(big.id).await.unwrap().flow.inputs == big.inputs);

    // A result over the limit.
    let mut batch = start_flow(big.id, &atoms()[0]);
    let mut done = atoms()[0].clone();
    done.state = AtomState::Success;
    done.attempt = 1;
    // A JSON string: its text and two quotes.
    done.result = Some(json!("r".repeat(limit - 1)));
    batch.writes.push(Write::Atom {
        expected_state: AtomState::Running,
        expected_attempt: 1,
        record: done,
    });
    let Err(err) = store.commit(&batch).await else {
        panic!("a result over the limit was stored");
    };
    too_large(err, "result", Some("a"), limit + 1, big.id);
    let snap = store.load_flow(big.id).await.unwrap();
    assert_eq!(snap.flow.state, FlowState::Pending);
}

/// A run records the factory, version and fingerprint of its definition, loads them back, and
/// listings filter by factory, version and whether a run has ended.
pub async fn runs_record_their_definition_and_list_by_it<S: Store>(store: S) {
    use baton_core::FactoryRef;
    let fingerprint = baton_core::Flow::linear("f")
        .add(baton_core::Atom::from_fn("a", |_| async { Ok(json!(1)) }))
        .compile()
        .unwrap()
        .fingerprint();
    let mut v1 = flow_record("versioned");
    v1.factory = Some(FactoryRef::new("stack-create", 1));
    v1.fingerprint = Some(fingerprint);
    let mut v2 = flow_record("versioned");
    v2.factory = Some(FactoryRef::new("stack-create", 2));
    let plain = flow_record("versioned");
    for f in [&v1, &v2, &plain] {
        store.create_flow(f, &atoms(), None).await.unwrap();
    }
    for f in [&v1, &v2, &plain] {
        for loaded in [
            store.load_flow(f.id).await.unwrap().flow,
            store.load_run(f.id).await.unwrap().flow,
        ] {
            assert_eq!(loaded.factory, f.factory);
            assert_eq!(loaded.fingerprint, f.fingerprint);
        }
    }
    // v2 ends; v1 and the plain run do not.
    let mut batch = Batch::new(v2.id, None);
    for (from, to) in [
        (FlowState::Pending, FlowState::Running),
        (FlowState::Running, FlowState::Failure),
    ] {
        batch.writes.push(Write::Flow {
            from,
            to,
            intention: Intention::Execute,
        });
    }
    store.commit(&batch).await.unwrap();
    let ids = |q: FlowQuery| {
        let store = &store;
        async move {
            store
                .list_flows(&q.name("versioned"))
                .await
                .unwrap()
                .into_iter()
                .map(|f| f.id)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        ids(FlowQuery::all().factory("stack-create")).await,
        [v2.id, v1.id]
    );
    assert_eq!(
        ids(FlowQuery::all().factory("stack-create").version(1)).await,
        [v1.id]
    );
    assert_eq!(ids(FlowQuery::all().version(2)).await, [v2.id]);
    assert!(ids(FlowQuery::all().factory("other")).await.is_empty());
    assert_eq!(ids(FlowQuery::all().unfinished()).await, [plain.id, v1.id]);
    let listed = store
        .list_flows(&FlowQuery::all().name("versioned").version(1))
        .await
        .unwrap();
    assert_eq!(listed[0].factory, v1.factory);
    assert_eq!(listed[0].fingerprint, v1.fingerprint);
}

/// A run's deadline and its atoms' attempt deadlines read back exactly, whether given at the
/// run's creation or written by a batch, from every read (`load_flow`, `load_run`, listings).
pub async fn deadlines_round_trip<S: Store>(store: S) {
    use baton_core::model::Deadline;
    // Whole microseconds: what every store keeps of a time.
    let at = |secs: i64| {
        let t = Utc::now() + chrono::Duration::seconds(secs);
        chrono::DateTime::from_timestamp_micros(t.timestamp_micros()).unwrap()
    };
    let mut reverting = flow_record("deadlines");
    reverting.deadline = Some(Deadline::revert_at(at(60)));
    let mut failing = flow_record("deadlines");
    failing.deadline = Some(Deadline::fail_at(at(120)));
    let plain = flow_record("deadlines");
    // An atom created part-way (running, with its attempt's deadline), beside pristine ones.
    let mut created = atoms();
    created[1].state = AtomState::Running;
    created[1].attempt = 1;
    created[1].started_at = Some(at(0));
    created[1].deadline = Some(at(30));
    for f in [&reverting, &failing, &plain] {
        store.create_flow(f, &created, None).await.unwrap();
    }
    for f in [&reverting, &failing, &plain] {
        for loaded in [
            store.load_flow(f.id).await.unwrap(),
            store.load_run(f.id).await.unwrap(),
        ] {
            assert_eq!(loaded.flow.deadline, f.deadline);
            assert_eq!(loaded.atoms, created);
        }
    }
    let listed = store
        .list_flows(&FlowQuery::all().name("deadlines"))
        .await
        .unwrap();
    assert_eq!(listed.len(), 3);
    for l in &listed {
        let f = [&reverting, &failing, &plain]
            .into_iter()
            .find(|f| f.id == l.id)
            .unwrap();
        assert_eq!(l.deadline, f.deadline);
    }

    // Written by a batch: set, then cleared.
    let mut batch = start_flow(reverting.id, &created[0]);
    let Some(Write::Atom { record, .. }) = batch.writes.last_mut() else {
        unreachable!("start_flow ends with the atom's start")
    };
    record.deadline = Some(at(45));
    let running = record.clone();
    store.commit(&batch).await.unwrap();
    for loaded in [
        store.load_flow(reverting.id).await.unwrap(),
        store.load_run(reverting.id).await.unwrap(),
    ] {
        assert_eq!(loaded.atoms[0], running);
    }
    let mut done = running.clone();
    done.state = AtomState::Success;
    done.result = Some(json!(1));
    done.deadline = None;
    let mut batch = Batch::new(reverting.id, None);
    batch.writes.push(Write::Atom {
        expected_state: AtomState::Running,
        expected_attempt: 1,
        record: done.clone(),
    });
    store.commit(&batch).await.unwrap();
    assert_eq!(store.load_run(reverting.id).await.unwrap().atoms[0], done);
}

/// Reads every page of `query` with pages of `size`, each after the previous page's last row,
/// checking that no page is longer than `size`: the rows in the order they came.
async fn all_pages<S: Store>(store: &S, query: &FlowQuery, size: usize) -> Vec<FlowId> {
    let mut seen = Vec::new();
    let mut page_query = query.clone().limit(size);
    loop {
        let page = store.list_flows(&page_query).await.unwrap();
        assert!(
            page.len() <= size,
            "a page of {} rows with limit {size}",
            page.len()
        );
        seen.extend(page.iter().map(|f| f.id));
        match page.last() {
            Some(last) if page.len() == size => page_query = page_query.after(last.id),
            _ => return seen,
        }
    }
}

/// Listings page: pages of any size, each after the last row of the one before, hold every
/// run the filter selects exactly once, newest first, with each filter; a page after a run
/// the store does not hold is refused, naming the run.
pub async fn listings_page_through_every_run_once<S: Store>(store: S) {
    use baton_core::FactoryRef;
    let name = format!("pages-{}", FlowId::new());
    let factory = format!("factory-{}", FlowId::new());
    let mut made = Vec::new();
    for i in 0..9u32 {
        let mut f = flow_record(&name);
        if i % 3 != 0 {
            f.factory = Some(FactoryRef::new(factory.as_str(), 1 + i % 2));
        }
        store.create_flow(&f, &atoms(), None).await.unwrap();
        if i % 4 == 1 {
            let mut batch = Batch::new(f.id, None);
            for (from, to) in [
                (FlowState::Pending, FlowState::Running),
                (FlowState::Running, FlowState::Success),
            ] {
                batch.writes.push(Write::Flow {
                    from,
                    to,
                    intention: Intention::Execute,
                });
            }
            store.commit(&batch).await.unwrap();
        }
        made.push(store.load_flow(f.id).await.unwrap().flow);
    }
    let queries = [
        FlowQuery::all().name(&name),
        FlowQuery::all().name(&name).state(FlowState::Pending),
        FlowQuery::all().name(&name).state(FlowState::Success),
        FlowQuery::all().name(&name).unfinished(),
        FlowQuery::all().factory(&factory),
        FlowQuery::all().factory(&factory).version(2),
        FlowQuery::all().name(&name).version(1),
        FlowQuery::all().factory(&factory).unfinished(),
    ];
    for query in &queries {
        // Newest first: the reverse of creation, filtered.
        let expected: Vec<FlowId> = made
            .iter()
            .rev()
            .filter(|f| query.matches(f))
            .map(|f| f.id)
            .collect();
        assert!(!expected.is_empty(), "{query:?} selects no run");
        for size in [1, 2, 3, expected.len(), expected.len() + 1] {
            assert_eq!(
                all_pages(&store, query, size).await,
                expected,
                "{query:?} in pages of {size}"
            );
        }
    }
    // A page after the last run is empty.
    let oldest = made[0].id;
    let tail = store
        .list_flows(&FlowQuery::all().name(&name).after(oldest))
        .await
        .unwrap();
    assert!(tail.is_empty());
    // A cursor the store does not hold is refused, naming it.
    let ghost = FlowId::new();
    let err = store
        .list_flows(&FlowQuery::all().name(&name).after(ghost).limit(2))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::UnknownCursor(id) if id == ghost),
        "{err}"
    );
    assert!(err.to_string().contains(&ghost.to_string()));
}

/// Expands to one `#[tokio::test]` per conformance case, each given a store from `$make`
/// (an async expression).
///
/// For a backend that may be missing (a database server the environment may not have), write
/// `store_conformance!(optional: make)` with `make` an expression of type `Option<S>`: each case
/// returns early, passing, when it is `None`. The constructor decides whether a missing server
/// is a skip or a failure, and says so.
#[macro_export]
macro_rules! store_conformance {
    (optional: $make:expr) => {
        $crate::store_conformance!(@all [optional] $make);
    };
    (@all [$mode:ident] $make:expr) => {
        $crate::store_conformance!(@cases [$mode] $make;
            create_and_load_round_trip,
            load_run_is_load_flow_but_for_meta,
            batch_applies_in_order_with_history,
            create_and_commit_stores_a_run_with_its_first_batch,
            stale_writes_conflict_and_change_nothing,
            illegal_transitions_are_refused,
            unknown_flow_or_atom_is_named,
            list_filters_and_orders,
            time_filters_and_heads,
            listings_page_through_every_run_once,
            purge_deletes_only_runs_that_ended_before_the_cutoff,
            values_over_the_limit_are_refused,
            runs_record_their_definition_and_list_by_it,
            deadlines_round_trip,
            unfinished_runs_are_counted_by_state,
        );
    };
    (@cases [required] $make:expr; $($case:ident,)*) => {
        $(
            #[tokio::test]
            async fn $case() {
                $crate::conformance::$case($make).await;
            }
        )*
    };
    (@cases [optional] $make:expr; $($case:ident,)*) => {
        $(
            #[tokio::test]
            async fn $case() {
                if let Some(store) = $make {
                    $crate::conformance::$case(store).await;
                }
            }
        )*
    };
    (@cases $make:expr; $($case:ident,)*) => {
        $crate::store_conformance!(@cases [required] $make; $($case,)*);
    };
    ($make:expr) => {
        $crate::store_conformance!(@all [required] $make);
    };
}
