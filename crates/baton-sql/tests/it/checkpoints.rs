//! Checkpoints in the step log: a run loaded from its checkpoint is the run its whole log
//! gives, after any write, a crash at any write, and a resume; runs written before checkpoints
//! load and go on; the history keeps every step.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use baton_core::model::{AtomRecord, Batch, FlowRecord, FlowSnapshot, Transition};
use baton_core::store::{self, FlowQuery, Result, Store};
use baton_core::testing::{CrashMode, CrashStore};
use baton_core::{AtomState, Engine, Fence, Flow, FlowId, FlowState};
use baton_sql::Checkpoints;
use baton_testkit::scenarios::Scenario;
use chrono::{DateTime, Utc};

/// The policy of the crash tests: a checkpoint every other step, so that loads meet both a
/// checkpoint and steps after it, and the fast and careful commits both write checkpoints.
pub const OFTEN: Checkpoints = Checkpoints::every(2, 0);

/// A store whose loads and commits are checked: after each, the run loaded from its checkpoint
/// (through `check`) and the run replayed from its whole log (through `whole`) must be the
/// same. Both are stores of their own on the same database, so their loads leave what the
/// writing `store` knows of its runs (from which its checkpoints are written) as its own
/// commits made it. Differences are collected (a panic inside an engine's task would only
/// stop it).
#[derive(Debug, Clone)]
pub struct Checked<S> {
    pub store: S,
    pub check: S,
    pub whole: S,
    differences: Arc<Mutex<Vec<String>>>,
    checks: Arc<Mutex<u64>>,
}

impl<S: Store> Checked<S> {
    pub fn new(store: S, check: S, whole: S) -> Self {
        Self {
            store,
            check,
            whole,
            differences: Arc::default(),
            checks: Arc::default(),
        }
    }

    /// Loads `id` both ways and notes any difference.
    async fn agree(&self, id: FlowId, after: &str) {
        let whole = self.whole.load_flow(id).await;
        let from_checkpoint = self.check.load_flow(id).await;
        *self.checks.lock().unwrap() += 1;
        let difference = match (from_checkpoint, whole) {
            (Ok(a), Ok(b)) => differences(&a, &b).map(|d| format!("flow {id} after {after}: {d}")),
            (Err(store::Error::FlowNotFound(_)), Err(store::Error::FlowNotFound(_))) => None,
            (a, b) => Some(format!(
                "flow {id} after {after}: from the checkpoint {:?}, from the whole log {:?}",
                a.map(|_| "loaded"),
                b.map(|_| "loaded")
            )),
        };
        if let Some(d) = difference {
            self.differences.lock().unwrap().push(d);
        }
    }

    /// Panics with the differences found, if any; returns how many checks were made.
    pub fn assert_agreed(&self) -> u64 {
        let differences = self.differences.lock().unwrap();
        assert!(differences.is_empty(), "{}", differences.join("\n"));
        *self.checks.lock().unwrap()
    }
}

/// A time as every store keeps it: to the microsecond (PostgreSQL rounds to it, so a record a
/// checkpoint wrote into a row may be up to half a microsecond from the one its step holds).
fn same_time(a: Option<DateTime<Utc>>, b: Option<DateTime<Utc>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => (a - b).num_nanoseconds().is_some_and(|d| d.abs() < 1000),
        (a, b) => a == b,
    }
}

/// What differs between two loads of a run (times to the microsecond), if anything.
pub fn differences(a: &FlowSnapshot, b: &FlowSnapshot) -> Option<String> {
    let mut found = Vec::new();
    let (mut fa, mut fb) = (a.flow.clone(), b.flow.clone());
    if same_time(Some(fa.updated_at), Some(fb.updated_at)) {
        fb.updated_at = fa.updated_at;
    }
    if same_time(Some(fa.created_at), Some(fb.created_at)) {
        fb.created_at = fa.created_at;
    }
    fa.meta = serde_json::Value::Null;
    fb.meta = serde_json::Value::Null;
    if fa != fb || a.flow.meta != b.flow.meta {
        found.push(format!("the run: {fa:?} against {fb:?}"));
    }
    if a.atoms.len() != b.atoms.len() {
        found.push(format!("{} atoms against {}", a.atoms.len(), b.atoms.len()));
    }
    for (x, y) in a.atoms.iter().zip(&b.atoms) {
        let mut y2 = y.clone();
        for (mine, theirs) in [
            (x.started_at, &mut y2.started_at),
            (x.finished_at, &mut y2.finished_at),
            (x.retry_at, &mut y2.retry_at),
            (x.deadline, &mut y2.deadline),
        ] {
            if same_time(mine, *theirs) {
                *theirs = mine;
            }
        }
        if *x != y2 {
            found.push(format!("{x:?} against {y:?}"));
        }
    }
    (!found.is_empty()).then(|| found.join("; "))
}

#[async_trait]
impl<S: Store> Store for Checked<S> {
    async fn create_flow(
        &self,
        flow: &FlowRecord,
        atoms: &[AtomRecord],
        fence: Option<Fence>,
    ) -> Result<()> {
        self.store.create_flow(flow, atoms, fence).await
    }

    async fn load_flow(&self, id: FlowId) -> Result<FlowSnapshot> {
        self.agree(id, "a load").await;
        self.store.load_flow(id).await
    }

    async fn load_run(&self, id: FlowId) -> Result<FlowSnapshot> {
        self.agree(id, "a load").await;
        self.store.load_run(id).await
    }

    async fn commit(&self, batch: &Batch) -> Result<()> {
        let done = self.store.commit(batch).await;
        self.agree(batch.flow, "a commit").await;
        done
    }

    async fn history(&self, id: FlowId) -> Result<Vec<Transition>> {
        self.store.history(id).await
    }

    async fn list_flows(&self, query: &FlowQuery) -> Result<Vec<FlowRecord>> {
        self.store.list_flows(query).await
    }

    async fn head(&self, id: FlowId) -> Result<baton_core::store::Head> {
        self.store.head(id).await
    }

    async fn purge_flows(
        &self,
        ended_before: chrono::DateTime<chrono::Utc>,
        limit: u32,
    ) -> Result<u64> {
        self.store.purge_flows(ended_before, limit).await
    }

    async fn create_and_commit(
        &self,
        flow: &FlowRecord,
        atoms: &[AtomRecord],
        fence: Option<Fence>,
        first: &Batch,
    ) -> Result<()> {
        let done = self
            .store
            .create_and_commit(flow, atoms, fence, first)
            .await;
        self.agree(flow.id, "a creation").await;
        done
    }

    fn consumes_jobs(&self) -> bool {
        self.store.consumes_jobs()
    }

    fn kind(&self) -> &'static str {
        self.store.kind()
    }

    async fn count_runs(&self) -> baton_core::store::Result<baton_core::store::RunCounts> {
        self.store.count_runs().await
    }
}

/// A run killed at any write and resumed ends as an uninterrupted run does, with checkpoints
/// every other step; and after every write, crash or not, and at every load (a resume's
/// first), the run loaded from its checkpoint is what its whole log gives.
pub async fn checkpoints_agree_with_the_log_at_every_crash<S: Store + Clone + 'static>(
    store: S,
    check: S,
    whole: S,
    scenario: Scenario,
) {
    let checked = Checked::new(store, check, whole);
    let coverage = baton_testkit::crash::crash_at_every_write(checked.clone(), &scenario).await;
    let checks = checked.assert_agreed();
    assert!(
        coverage.crashes >= coverage.writes && checks > coverage.writes,
        "{}: {coverage:?}, {checks} checks",
        scenario.name
    );
}

/// A linear flow of `n` no-op tasks.
fn linear(n: usize) -> baton_core::CompiledFlow {
    let mut flow = Flow::linear("long");
    for i in 0..n {
        flow = flow.add(baton_core::Atom::from_fn(
            format!("t{i}"),
            move |_| async move { Ok(serde_json::json!(i)) },
        ));
    }
    flow.compile().unwrap()
}

/// A run of `atoms` tasks, its engine killed at write `crash_at`, is resumed by a fresh
/// engine and ends with every task done once, its result kept; the run loaded from its
/// checkpoint is what its whole log gives, before the resume and after. Returns the run.
pub async fn a_long_run_resumes<S: Store + Clone + 'static>(
    store: S,
    check: S,
    whole: S,
    atoms: usize,
    crash_at: u64,
) -> FlowId {
    let flow = linear(atoms);
    let checked = Checked::new(store.clone(), check, whole);
    let crashing = CrashStore::new(store.clone(), crash_at, CrashMode::AfterWrite);
    let engine = Engine::new(crashing.clone());
    let id = engine.create(&flow, Default::default()).await.unwrap();
    assert!(
        engine.run(&flow, id).await.is_err(),
        "the engine was killed"
    );
    assert!(crashing.crashed());
    checked.agree(id, "the crash").await;
    let before = store.load_flow(id).await.unwrap();
    let done = before
        .atoms
        .iter()
        .filter(|a| a.state == AtomState::Success)
        .count();
    assert!(
        done > 0 && done < atoms,
        "the crash came mid-run: {done} of {atoms} done"
    );

    let outcome = Engine::new(store.clone()).run(&flow, id).await.unwrap();
    assert!(outcome.is_success(), "{:?}", outcome.state);
    checked.agree(id, "the resume").await;
    checked.assert_agreed();
    let after = store.load_flow(id).await.unwrap();
    assert_eq!(after.flow.state, FlowState::Success);
    assert_eq!(after.atoms.len(), atoms);
    for (i, atom) in after.atoms.iter().enumerate() {
        assert_eq!(atom.state, AtomState::Success, "{}", atom.name);
        assert_eq!(atom.result, Some(serde_json::json!(i)), "{}", atom.name);
        // Done before the crash: not run again (one attempt); the one caught running: two.
        assert!(atom.attempt == 1 || atom.attempt == 2, "{atom:?}");
    }
    let again = after
        .atoms
        .iter()
        .filter(|a| a.attempt == 2)
        .map(|a| a.name.as_str())
        .collect::<Vec<_>>();
    assert!(again.len() <= 1, "run again: {again:?}");
    // The history keeps every step: each task's end among them.
    let history = store.history(id).await.unwrap();
    let ends = history
        .iter()
        .filter(|t| {
            matches!(
                t.change,
                baton_core::model::Change::Atom {
                    to: AtomState::Success,
                    ..
                }
            )
        })
        .count();
    assert_eq!(ends, atoms);
    assert!(history.len() >= 2 * atoms + 2, "{}", history.len());
    id
}

/// SQL for a run as the release before checkpoints wrote it, with three steps in its log (no
/// checkpoint: its row has the columns' defaults): `a` done with result `"made"`, `b` running
/// at progress 0.5. `sqlite`: the steps' keys are SQLite's (the run's row is number 1 there).
pub fn run_before_checkpoints(flow: FlowId, sqlite: bool) -> Vec<String> {
    let now = "2026-12-08T10:00:00.000000000Z";
    let ns = "1796724000000000000";
    let steps = [
        (
            1,
            Some("RUNNING"),
            format!(
                r#"[{{"o":"f","f":"PENDING","t":"RUNNING","i":"EXECUTE"}},{{"o":"a","f":"PENDING","e":0,"r":{{"n":"a","s":"RUNNING","a":1,"st":{ns}}}}}]"#
            ),
        ),
        (
            2,
            None,
            format!(
                r#"[{{"o":"a","f":"RUNNING","e":1,"r":{{"n":"a","s":"SUCCESS","a":1,"v":"made","p":1.0,"st":{ns},"ft":{ns}}}}},{{"o":"a","f":"PENDING","e":0,"r":{{"n":"b","s":"RUNNING","a":1,"st":{ns}}}}}]"#
            ),
        ),
        (
            3,
            None,
            format!(
                r#"[{{"o":"a","f":"RUNNING","e":1,"r":{{"n":"b","s":"RUNNING","a":1,"p":0.5,"st":{ns}}}}}]"#
            ),
        ),
    ];
    let (seq_column, seq_value) = if sqlite { ("seq, ", "1, ") } else { ("", "") };
    let mut sql = vec![
        format!(
            "INSERT INTO flows ({seq_column}id, name, state, intention, inputs, meta, created_at, \
             updated_at, model_version) VALUES ({seq_value}'{flow}', 'before', 'RUNNING', \
             'EXECUTE', '{{}}', '{{}}', '{now}', '{now}', 2)"
        ),
        format!(
            "INSERT INTO atoms (flow_id, name, position, kind, state, intention, attempt, round, \
             retry_history, progress, model_version) VALUES \
             ('{flow}', 'a', 0, 'task', 'PENDING', 'EXECUTE', 0, 0, '[]', 0.0, 2), \
             ('{flow}', 'b', 1, 'task', 'PENDING', 'EXECUTE', 0, 0, '[]', 0.0, 2)"
        ),
    ];
    for (seq, state, body) in steps {
        let (flow_state, flow_intention) = match state {
            Some(s) => (format!("'{s}'"), "'EXECUTE'"),
            None => ("NULL".to_owned(), "NULL"),
        };
        let (id_column, id_value) = if sqlite {
            ("id, ", format!("{}, ", (1_i64 << 32) + seq))
        } else {
            ("", String::new())
        };
        sql.push(format!(
            "INSERT INTO steps ({id_column}flow_id, seq, at, flow_state, flow_intention, body, \
             model_version) VALUES ({id_value}'{flow}', {seq}, '{now}', {flow_state}, \
             {flow_intention}, '{body}', 2)"
        ));
    }
    sql
}

/// The run of [`run_before_checkpoints`], in an upgraded database, loads from its whole log;
/// it goes on, and its next step, due for a checkpoint under `store`'s policy (a checkpoint
/// every step), writes one; it loads the same both ways, and its history has every step's
/// transitions.
pub async fn a_run_from_before_checkpoints_goes_on<S: Store>(store: &S, whole: &S, flow: FlowId) {
    use baton_core::model::Write;

    let snapshot = store.load_flow(flow).await.unwrap();
    let replayed = whole.load_flow(flow).await.unwrap();
    assert_eq!(differences(&snapshot, &replayed), None);
    assert_eq!(snapshot.flow.state, FlowState::Running);
    assert_eq!(snapshot.atoms[0].state, AtomState::Success);
    assert_eq!(snapshot.atoms[0].result, Some(serde_json::json!("made")));
    let b = snapshot.atoms[1].clone();
    assert_eq!(
        (b.state, b.attempt, b.progress),
        (AtomState::Running, 1, 0.5)
    );

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
        intention: baton_core::Intention::Execute,
    });
    store.commit(&batch).await.unwrap();

    let snapshot = store.load_flow(flow).await.unwrap();
    let replayed = whole.load_flow(flow).await.unwrap();
    assert_eq!(differences(&snapshot, &replayed), None);
    assert_eq!(snapshot.flow.state, FlowState::Success);
    assert_eq!(snapshot.atoms[0].result, Some(serde_json::json!("made")));
    assert_eq!(snapshot.atoms[1].result, Some(serde_json::json!(2)));
    let history = store.history(flow).await.unwrap();
    assert_eq!(history.len(), 6, "{history:?}");
}

/// A checkpointed run that ended is purged with everything of it: its row (with the
/// checkpoint's stamp), its atoms' rows (with the checkpoint's records) and its whole log.
pub async fn a_checkpointed_run_is_purged_whole<S: crate::support::Harness>(
    store: S,
    raw: &crate::support::Raw,
) {
    let flow = linear(6);
    let engine = Engine::new(store.clone());
    let id = engine.create(&flow, Default::default()).await.unwrap();
    assert!(engine.run(&flow, id).await.unwrap().is_success());
    let stamped = raw
        .count(&format!(
            "SELECT checkpoint_seq FROM flows WHERE id = '{id}'"
        ))
        .await;
    assert!(stamped > 0, "the run has a checkpoint");
    // Ended long ago, as far as the purge can tell.
    store
        .exec(&format!(
            "UPDATE flows SET updated_at = '2020-01-01T00:00:00.000000000Z' WHERE id = '{id}'"
        ))
        .await;
    assert_eq!(store.purge_flows(chrono::Utc::now(), 100).await.unwrap(), 1);
    assert!(matches!(
        store.load_flow(id).await,
        Err(store::Error::FlowNotFound(_))
    ));
    for table in [
        "flows WHERE id",
        "atoms WHERE flow_id",
        "steps WHERE flow_id",
    ] {
        let left = raw
            .count(&format!("SELECT count(*) FROM {table} = '{id}'"))
            .await;
        assert_eq!(left, 0, "{table}");
    }
}

/// The memory store keeps a run's current records and no log, so it has nothing to
/// checkpoint; a run of 10 000 atoms killed past the middle resumes there too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_of_10000_atoms_resumes_on_the_memory_store() {
    let store = baton_core::MemoryStore::new();
    a_long_run_resumes(store.clone(), store.clone(), store, 10_000, 6_543).await;
}
