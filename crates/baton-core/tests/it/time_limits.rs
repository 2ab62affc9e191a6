//! Time limits, deadlines and cancellation on the memory store, and what the engine alone
//! decides: bad limits refused at compile time, and a task's view of its claim.

mod conformance {
    baton_testkit::limits_conformance!(baton_core::MemoryStore::new());
}

use std::sync::Arc;
use std::time::Duration;

use baton_core::compile::{Error as CompileError, TimeoutError};
use baton_core::retry::Times;
use baton_core::{
    Atom, ClaimCheck, ClaimError, ClaimHeld, CreateOptions, Engine, Fence, FencingToken, Flow,
    FlowId, FlowState, JobId, MemoryStore, RunOptions,
};
use serde_json::json;

fn noop(name: &str) -> Atom {
    Atom::from_fn(name, |_| async { Ok(json!(null)) })
}

#[test]
fn bad_time_limits_are_refused_naming_the_atom_or_flow() {
    let zero = Flow::linear("f")
        .add(noop("a").timeout(Duration::ZERO))
        .compile();
    assert!(
        matches!(&zero, Err(CompileError::BadTimeout { what: "atom", name, problem: TimeoutError::Zero }) if name == "a"),
        "{zero:?}"
    );
    let zero_revert = Flow::linear("f")
        .add(noop("a").revert_timeout(Duration::ZERO))
        .compile();
    assert!(matches!(
        zero_revert,
        Err(CompileError::BadTimeout {
            problem: TimeoutError::Zero,
            ..
        })
    ));
    let zero_default = Flow::linear("outer")
        .add(
            Flow::linear("inner")
                .default_timeout(Duration::ZERO)
                .add(noop("a")),
        )
        .compile();
    assert!(
        matches!(&zero_default, Err(CompileError::BadTimeout { what: "flow", name, .. }) if name == "inner"),
        "{zero_default:?}"
    );
    let on_controller = Flow::linear("f")
        .retry(Atom::retry("r", Times::new(2)).timeout(Duration::from_secs(1)))
        .add(noop("a"))
        .compile();
    assert!(
        matches!(&on_controller, Err(CompileError::BadTimeout { name, problem: TimeoutError::OnController, .. }) if name == "r"),
        "{on_controller:?}"
    );
    let message = on_controller.unwrap_err().to_string();
    assert!(message.contains("\"r\""), "{message}");
}

#[tokio::test]
async fn a_flows_default_limit_reaches_its_subflows_unless_nearer_ones_say_otherwise() {
    // `outer` gives 200 ms to everything; `inner` gives its tasks 10 s; `own` sets its own.
    let sleeper = |name: &str| {
        Atom::from_fn(name, |_| async {
            tokio::time::sleep(Duration::from_millis(600)).await;
            Ok(json!("slept"))
        })
    };
    let flow = Flow::unordered("outer")
        .default_timeout(Duration::from_millis(200))
        .add(sleeper("cut"))
        .add(
            Flow::linear("inner")
                .default_timeout(Duration::from_secs(10))
                .add(sleeper("spared")),
        )
        .add(sleeper("own").timeout(Duration::from_secs(10)))
        .compile()
        .unwrap();
    let outcome = Engine::new(MemoryStore::new())
        .start(&flow, Default::default())
        .await
        .unwrap();
    assert_eq!(outcome.state, FlowState::Reverted);
    let timed_out: Vec<&str> = outcome.failures.iter().map(|f| f.atom.as_str()).collect();
    assert_eq!(timed_out, ["cut"]);
}

#[derive(Debug)]
struct Answer(Result<(), ClaimError>);

#[async_trait::async_trait]
impl ClaimCheck for Answer {
    async fn confirm(&self, _fence: Fence) -> Result<ClaimHeld, ClaimError> {
        self.0
            .clone()
            .map(|()| ClaimHeld::until(tokio::time::Instant::now() + Duration::from_secs(5)))
    }
}

/// What `confirm_claim` and `fence` tell a task: a run under no claim is always confirmed; a
/// fenced run without a check cannot be; with one, its answer (and the fence) reach the task.
#[tokio::test]
async fn a_task_sees_its_fence_and_confirms_its_claim() {
    let flow = Flow::linear("claims")
        .add(Atom::from_fn("ask", |ctx| async move {
            let answer = match ctx.confirm_claim().await {
                Ok(held) => json!({ "held_secs": held.remaining().map(|d| d.as_secs().min(5)) }),
                Err(ClaimError::Lost { .. }) => json!("lost"),
                Err(ClaimError::Unconfirmed { .. }) => json!("unconfirmed"),
                Err(e) => json!(e.to_string()),
            };
            Ok(json!({ "answer": answer, "token": ctx.fence().map(|f| f.token.0) }))
        }))
        .compile()
        .unwrap();
    let fence = Fence {
        job: JobId::new(),
        token: FencingToken(7),
    };
    let ask = |options: RunOptions| {
        let flow = flow.clone();
        async move {
            let store = MemoryStore::new();
            store.set_fence(fence.job, fence.token);
            Engine::new(store)
                .create_and_run(
                    &flow,
                    Default::default(),
                    CreateOptions::new().id(FlowId::for_job(fence.job)),
                    options,
                )
                .await
                .unwrap()
                .results["ask"]
                .clone()
        }
    };
    assert_eq!(
        ask(RunOptions::new()).await,
        json!({ "answer": { "held_secs": null }, "token": null })
    );
    assert_eq!(
        ask(RunOptions::new().fence(fence)).await,
        json!({ "answer": "unconfirmed", "token": 7 })
    );
    let held = ask(RunOptions::new()
        .fence(fence)
        .claim_check(Arc::new(Answer(Ok(())))))
    .await;
    assert_eq!(held["token"], json!(7));
    assert!(
        matches!(held["answer"]["held_secs"].as_u64(), Some(4 | 5)),
        "{held}"
    );
    let lost = ClaimError::Lost {
        job: fence.job,
        reason: "claimed by another".into(),
    };
    assert_eq!(
        ask(RunOptions::new()
            .fence(fence)
            .claim_check(Arc::new(Answer(Err(lost)))))
        .await,
        json!({ "answer": "lost", "token": 7 })
    );
}
