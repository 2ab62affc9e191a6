//! `baton_core::testing`, used as a user would: the crash test finds bugs planted in a user's
//! flow and passes their fixed versions; history assertions pass, and fail readably.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton_core::retry::{Backoff, RetryPolicy};
use baton_core::store::Store;
use baton_core::testing::{
    assert_history, CrashMode, CrashTest, Difference, Error, ExpectHistory, RunEnd,
};
use baton_core::typed::{atom, from_fn, Const, TypedFlow, TypedTask};
use baton_core::{
    compile, AtomState, CompiledFlow, Engine, FlowId, FlowState, Inputs, MemoryStore,
    RevertContext, TaskContext, TaskError,
};
use serde_json::json;

/// A fake cloud: the servers it holds, each with the request key it was created with.
#[derive(Debug, Clone, Default)]
struct Cloud(Arc<Mutex<BTreeMap<String, String>>>);

impl Cloud {
    /// Creates a server for request `key`, even if one exists for it: what a cloud API without
    /// idempotent requests does.
    fn create(&self, key: &str, name: &str) -> String {
        let mut servers = self.0.lock().unwrap();
        let id = format!("{name}-{}", servers.len());
        servers.insert(id.clone(), key.to_owned());
        id
    }

    /// The server made for request `key`, if there is one.
    fn find(&self, key: &str) -> Option<String> {
        let servers = self.0.lock().unwrap();
        servers
            .iter()
            .find(|(_, k)| *k == key)
            .map(|(id, _)| id.clone())
    }

    fn delete(&self, id: &str) {
        self.0.lock().unwrap().remove(id);
    }

    fn servers(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

/// Creates a server on the cloud, and deletes it on revert; the flags plant the bugs.
struct CreateServer {
    cloud: Cloud,
    /// Looks for the server made with this call's key before creating one (the fix of the
    /// first bug).
    idempotent: bool,
    /// When the revert has no result, finds the server by key (the fix of the second bug).
    revert_by_key: bool,
    /// How long the cloud takes to boot the server, after creating it.
    boot: Duration,
}

#[async_trait::async_trait]
impl TypedTask for CreateServer {
    type Input = String;
    type Output = String;
    type Error = TaskError;

    async fn execute(&self, name: String, ctx: &TaskContext) -> Result<String, TaskError> {
        let key = ctx.idempotency_key();
        let found = self.idempotent.then(|| self.cloud.find(&key)).flatten();
        let id = found.unwrap_or_else(|| self.cloud.create(&key, &name));
        tokio::time::sleep(self.boot).await;
        Ok(id)
    }

    async fn revert(
        &self,
        _name: String,
        id: Option<String>,
        ctx: &RevertContext,
    ) -> Result<(), TaskError> {
        let id = match id {
            Some(id) => id,
            None if self.revert_by_key => match self.cloud.find(&ctx.idempotency_key()) {
                Some(id) => id,
                None => return Ok(()),
            },
            None => return Err(TaskError::msg("no server id to delete")),
        };
        self.cloud.delete(&id);
        Ok(())
    }
}

/// `server`, then `dns` with the server's id.
fn linear_stack(cloud: &Cloud, idempotent: bool) -> Result<CompiledFlow, compile::Error> {
    let task = CreateServer {
        cloud: cloud.clone(),
        idempotent,
        revert_by_key: true,
        boot: Duration::ZERO,
    };
    let mut flow = TypedFlow::linear("stack");
    let server = flow.add(atom("server", task), Const("web".to_owned()));
    flow.add(
        atom(
            "dns",
            from_fn(|id: String, _| async move { Ok::<_, TaskError>(format!("www -> {id}")) }),
        ),
        &server,
    );
    flow.compile()
}

/// `server` (a minute to boot) beside `quota`, a check that fails at once.
fn parallel_stack(cloud: &Cloud, revert_by_key: bool) -> Result<CompiledFlow, compile::Error> {
    let task = CreateServer {
        cloud: cloud.clone(),
        idempotent: true,
        revert_by_key,
        boot: Duration::from_secs(60),
    };
    let mut flow = TypedFlow::unordered("stack");
    flow.add(atom("server", task), Const("web".to_owned()));
    flow.add(
        atom(
            "quota",
            from_fn(|(): (), _| async { Err::<(), _>(TaskError::msg("quota exceeded")) }),
        ),
        (),
    );
    flow.compile()
}

/// A check that the cloud holds exactly `n` servers: one for a stack created, none for one
/// reverted.
fn servers(n: usize) -> impl Fn(&RunEnd<'_, Cloud>) -> Result<(), String> {
    move |end| match end.world.servers() {
        found if found == n => Ok(()),
        found => Err(format!("expected {n} server(s), found {found}")),
    }
}

/// A task whose cloud call is not idempotent: killed after the call but before its result was
/// stored, the resumed run calls it again and the cloud makes a second server. The test's
/// check catches it, at that write, naming the task caught mid-call; the fixed task passes.
#[tokio::test(start_paused = true)]
async fn the_crash_test_finds_a_create_that_is_not_idempotent() {
    let err = CrashTest::new(|cloud: &Cloud| linear_stack(cloud, false))
        .check(servers(1))
        .run()
        .await
        .unwrap_err();
    let Error::Diverged(divergence) = &err else {
        panic!("not a divergence: {err}");
    };
    let crash = divergence.crash.as_ref().expect("a crashed run diverged");
    // Write 1 creates the run, 2 starts `server`, 3 stores its result: killed before that.
    assert_eq!(
        (crash.write, crash.mode),
        (3, CrashMode::BeforeWrite),
        "{err}"
    );
    assert_eq!(crash.running, ["server"]);
    // The second server has another id, which the run's results show, and the check sees
    // two servers.
    assert_eq!(
        divergence.differences,
        [
            Difference::Result {
                atom: "server".to_owned(),
                expected: json!("web-0"),
                actual: json!("web-1"),
            },
            Difference::Result {
                atom: "dns".to_owned(),
                expected: json!("www -> web-0"),
                actual: json!("www -> web-1"),
            },
            Difference::Check("expected 1 server(s), found 2".to_owned()),
        ]
    );
    assert_eq!(
        err.to_string(),
        "killed at write 3 of 4, before it was stored, with \"server\" running; resumed by a \
         fresh engine, the run ended otherwise than the uninterrupted run:
  - atom \"server\" returned \"web-1\"; uninterrupted, it returns \"web-0\"
  - atom \"dns\" returned \"www -> web-1\"; uninterrupted, it returns \"www -> web-0\"
  - the check failed: expected 1 server(s), found 2"
    );

    let report = CrashTest::new(|cloud: &Cloud| linear_stack(cloud, true))
        .check(servers(1))
        .run()
        .await
        .unwrap();
    assert_eq!(report.outcome.state, FlowState::Success);
    assert_eq!((report.writes, report.runs), (4, 8));
    assert_eq!(report.crashes, 8, "every run was killed: {report}");
}

/// A revert that needs the result of `execute`: killed once `quota`'s failure is stored but
/// while `server` is still booting, the resumed run reverts `server` without a result, the
/// revert fails, and the run ends `FAILURE` where the uninterrupted run ends `REVERTED`. The
/// crash test finds it by comparing the ends alone; the revert that finds the server by its
/// key passes, and leaves no server behind.
#[tokio::test(start_paused = true)]
async fn the_crash_test_finds_a_revert_that_needs_a_result() {
    let err = CrashTest::new(|cloud: &Cloud| parallel_stack(cloud, false))
        .run()
        .await
        .unwrap_err();
    let Error::Diverged(divergence) = &err else {
        panic!("not a divergence: {err}");
    };
    let crash = divergence.crash.as_ref().expect("a crashed run diverged");
    assert_eq!(crash.mode, CrashMode::AfterWrite, "{err}");
    assert_eq!(crash.running, ["server"], "{err}");
    let message = err.to_string();
    for expected in [
        "the flow ended FAILURE; uninterrupted, it ends REVERTED",
        "atom \"server\" ended REVERT_FAILURE; uninterrupted, it ends REVERTED",
        "atom \"server\" recorded the failures [revert: no server id to delete]; \
         uninterrupted, it records []",
    ] {
        assert!(
            message.contains(expected),
            "{expected:?} not in:\n{message}"
        );
    }

    let report = CrashTest::new(|cloud: &Cloud| parallel_stack(cloud, true))
        .check(servers(0))
        .run()
        .await
        .unwrap();
    assert_eq!(report.outcome.state, FlowState::Reverted);
    assert!(report.crashes >= report.writes, "{report}");
}

/// `fail_at` makes a task fail without calling it, so the crash test covers the way back of a
/// flow that never fails by itself; a name the flow has no task of is refused.
#[tokio::test(start_paused = true)]
async fn fail_at_covers_the_revert_path_and_refuses_unknown_atoms() {
    let report = CrashTest::new(|cloud: &Cloud| linear_stack(cloud, true))
        .fail_at("dns")
        .check(servers(0))
        .run()
        .await
        .unwrap();
    assert_eq!(report.outcome.state, FlowState::Reverted);
    let failures: Vec<_> = report.outcome.failures.iter().map(|f| &f.atom).collect();
    assert_eq!(failures, ["dns"]);

    let err = CrashTest::new(|cloud: &Cloud| linear_stack(cloud, true))
        .fail_at("volume")
        .run()
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::UnknownAtom(a) if a == "volume"),
        "{err}"
    );
}

/// The check runs after the uninterrupted run too; failing there, it says so.
#[tokio::test(start_paused = true)]
async fn a_check_failing_on_the_uninterrupted_run_says_so() {
    let err = CrashTest::new(|cloud: &Cloud| linear_stack(cloud, true))
        .check(servers(0))
        .run()
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "the uninterrupted run:\n  - the check failed: expected 0 server(s), found 1"
    );
}

/// A flow that waits an hour between two calls of a task passes the crash test under paused
/// time in moments: its engines read a clock that moves with tokio's.
#[tokio::test(start_paused = true)]
async fn the_crash_test_skips_backoff_under_paused_time() {
    let flow = {
        let hour = Duration::from_secs(3600);
        let mut flow = TypedFlow::linear("patient");
        flow.add(
            atom(
                "flaky",
                from_fn(|(): (), ctx: TaskContext| async move {
                    if ctx.attempt() == 1 {
                        return Err(TaskError::msg("busy").retryable());
                    }
                    Ok("done".to_owned())
                }),
            )
            .retries(RetryPolicy::attempts(2).backoff(Backoff::exponential(hour, hour))),
            (),
        );
        flow.compile().unwrap()
    };
    let real = std::time::Instant::now();
    let report = CrashTest::of(flow).run().await.unwrap();
    assert!(
        real.elapsed() < Duration::from_secs(10),
        "{:?}",
        real.elapsed()
    );
    assert_eq!(report.outcome.state, FlowState::Success);
    assert!(report.crashes >= report.writes, "{report}");
}

fn two_step_flow(fail: bool) -> CompiledFlow {
    let mut flow = TypedFlow::linear("stack");
    let network = flow.add(
        atom(
            "network",
            from_fn(|(): (), _| async { Ok::<_, TaskError>("net-1".to_owned()) }),
        ),
        (),
    );
    flow.add(
        atom(
            "server",
            from_fn(move |net: String, _| async move {
                if fail {
                    return Err(TaskError::msg("quota exceeded"));
                }
                Ok(format!("server on {net}"))
            }),
        ),
        &network,
    );
    flow.compile().unwrap()
}

async fn run(flow: &CompiledFlow) -> (MemoryStore, FlowId) {
    let store = MemoryStore::new();
    let outcome = Engine::new(store.clone())
        .start(flow, Inputs::new())
        .await
        .unwrap();
    (store, outcome.flow)
}

/// The assertions pass on a history that meets them.
#[tokio::test]
async fn history_assertions_pass_on_what_happened() {
    let (store, id) = run(&two_step_flow(true)).await;
    assert_history(&store, id)
        .ran(["network"])
        .failed(["server"])
        .reverted(["server", "network"])
        .ended(FlowState::Reverted)
        .state("server", AtomState::Reverted)
        .attempts("server", 1)
        .await;
    let history = assert_history(&store, id)
        .ended(FlowState::Reverted)
        .check()
        .await
        .unwrap();
    assert_eq!(history.reached(AtomState::Running), ["network", "server"]);
}

/// A history that does not meet them is printed under each unmet expectation, beside it.
#[tokio::test]
async fn history_assertions_print_expected_and_actual() {
    fn expect(store: &dyn Store, id: FlowId) -> ExpectHistory<'_> {
        assert_history(store, id)
            .ran(["network", "server"])
            .failed(["server"])
            .reverted(["network"])
            .ended(FlowState::Success)
            .attempts("dns", 1)
    }
    let (store, id) = run(&two_step_flow(true)).await;
    let err = expect(&store, id).check().await.unwrap_err();
    assert!(
        matches!(&err, Error::History(m) if m.unmet.len() == 4),
        "{err}"
    );
    let expected = "\
the history of flow ID (\"stack\") is not as expected:
  ran (went SUCCESS, in order):
    expected: [network, server]
    actual:   [network]
  reverted (went REVERTED, in order):
    expected: [network]
    actual:   [server, network]
  the flow's state:
    expected: SUCCESS
    actual:   REVERTED
  the attempts of \"dns\":
    expected: 1
    actual:   no such atom
history of flow ID (\"stack\"), now REVERTED:
     1  flow     PENDING -> RUNNING
     2  network  PENDING -> RUNNING (attempt 1)
     3  network  RUNNING -> SUCCESS
     4  server   PENDING -> RUNNING (attempt 1)
     5  server   RUNNING -> FAILURE
     6  flow     RUNNING -> REVERTING
     7  server   FAILURE -> REVERTING
     8  server   REVERTING -> REVERTED
     9  network  SUCCESS -> REVERTING
    10  network  REVERTING -> REVERTED
    11  flow     REVERTING -> REVERTED
failures (as stored now):
  quota exceeded (atom server, attempt 1)
";
    assert_eq!(err.to_string().replace(&id.to_string(), "ID"), expected);

    // Awaited, the same message is the panic's.
    let task = tokio::spawn(async move { expect(&store, id).await });
    let panic = task.await.unwrap_err().into_panic();
    let message = panic.downcast_ref::<String>().unwrap();
    assert_eq!(message.replace(&id.to_string(), "ID"), expected);
}
