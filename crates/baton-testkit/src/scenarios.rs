//! The flows the crash and conformance tests run. Every result is deterministic (it depends only
//! on persisted data), so a resumed run can be compared with an uninterrupted one.

use baton_core::retry::{Backoff, RetryPolicy, Times};
use baton_core::{Atom, CompiledFlow, Flow, FnTask, Inputs, TaskError};
use serde_json::json;

use crate::{inputs, Log, Probe};

/// A flow to run, with its inputs and parallelism.
#[derive(Debug)]
pub struct Scenario {
    /// A short name for messages.
    pub name: &'static str,
    /// Builds the flow with probes recording into the given log.
    pub build: fn(&Log) -> CompiledFlow,
    /// The flow's inputs.
    pub inputs: Inputs,
    /// The engine's parallelism.
    pub parallelism: usize,
}

fn linear_flow(log: &Log, n: usize) -> CompiledFlow {
    let mut flow = Flow::linear("linear");
    for i in 0..n {
        let input = if i == 0 {
            "seed".to_owned()
        } else {
            format!("v{}", i - 1)
        };
        flow = flow.add(
            Atom::task(format!("t{i}"), Probe::new(log))
                .requires([input])
                .provides(format!("v{i}")),
        );
    }
    flow.compile().expect("linear flow compiles")
}

/// Five tasks in a line, each consuming the previous one's result.
#[must_use]
pub fn linear() -> Scenario {
    Scenario {
        name: "linear",
        build: |log| linear_flow(log, 5),
        inputs: inputs([("seed", json!(1))]),
        parallelism: 1,
    }
}

/// `n` tasks in a line (for load and crash tests of long flows).
#[must_use]
pub fn long_linear(log: &Log, n: usize) -> CompiledFlow {
    linear_flow(log, n)
}

/// A graph: `a` fans out to `b`, `c`, `d`, which join into `e`; `f` runs beside them.
#[must_use]
pub fn parallel_graph() -> Scenario {
    Scenario {
        name: "parallel graph",
        build: |log| {
            Flow::graph("diamond")
                .add(Atom::task("a", Probe::new(log)).provides("a"))
                .add(
                    Atom::task("b", Probe::new(log))
                        .requires(["a"])
                        .provides("b"),
                )
                .add(
                    Atom::task("c", Probe::new(log))
                        .requires(["a"])
                        .provides("c"),
                )
                .add(
                    Atom::task("d", Probe::new(log))
                        .requires(["a"])
                        .provides("d"),
                )
                .add(Atom::task("e", Probe::new(log)).requires(["b", "c", "d"]))
                .add(Atom::task("f", Probe::new(log)).provides("f"))
                .compile()
                .expect("graph compiles")
        },
        inputs: Inputs::new(),
        parallelism: 4,
    }
}

/// `a`, then `b` and `c` in parallel, then `d`, which fails: everything is reverted.
#[must_use]
pub fn failing() -> Scenario {
    Scenario {
        name: "failing",
        build: |log| {
            Flow::linear("failing")
                .add(Atom::task("a", Probe::new(log)).provides("a"))
                .add(
                    Flow::unordered("mid")
                        .add(Atom::task("b", Probe::new(log)).requires(["a"]))
                        .add(Atom::task("c", Probe::new(log)).requires(["a"])),
                )
                .add(Atom::task("d", Probe::new(log).fails()))
                .compile()
                .expect("failing flow compiles")
        },
        inputs: Inputs::new(),
        parallelism: 2,
    }
}

/// `a`, then a subflow under `Times(3)` whose task `c` fails while the controller's attempt
/// number is below 3, then `d`: the subflow is reverted and retried twice, then succeeds.
#[must_use]
pub fn retrying() -> Scenario {
    Scenario {
        name: "retrying",
        build: |log| {
            Flow::linear("retrying")
                .add(Atom::task("a", Probe::new(log)).provides("a"))
                .add(
                    Flow::linear("attempt")
                        .retry(Atom::retry("r", Times::new(3)).provides("try"))
                        .add(Atom::task("b", Probe::new(log)).requires(["a", "try"]))
                        .add(
                            Atom::task(
                                "c",
                                Probe::new(log)
                                    .fails_when(|ctx| ctx.input::<u64>("try").unwrap_or(0) < 3),
                            )
                            .requires(["try"]),
                        ),
                )
                .add(Atom::task("d", Probe::new(log)).requires(["a"]))
                .compile()
                .expect("retrying flow compiles")
        },
        inputs: Inputs::new(),
        parallelism: 1,
    }
}

/// `a`, then `b` and `c` in parallel: `b` fails every call, transiently, and its retry policy
/// calls it three times before the flow reverts; `c` succeeds, but its `revert` fails every
/// call, transiently, and its revert policy calls it twice before giving up: `c` ends
/// `REVERT_FAILURE`, `a` is left as it is, and the run ends `FAILURE`.
#[must_use]
pub fn atom_retries() -> Scenario {
    Scenario {
        name: "atom retries",
        build: |log| {
            let at_once = |n| RetryPolicy::attempts(n).backoff(Backoff::none());
            Flow::linear("atom-retries")
                .add(Atom::task("a", Probe::new(log)).provides("a"))
                .add(
                    Flow::unordered("mid")
                        .add(
                            Atom::task("b", Probe::new(log).fails())
                                .requires(["a"])
                                .retries(at_once(3)),
                        )
                        .add(
                            Atom::task("c", Probe::new(log).revert_fails_transiently())
                                .requires(["a"])
                                .revert_retries(at_once(2)),
                        ),
                )
                .compile()
                .expect("atom retries flow compiles")
        },
        inputs: Inputs::new(),
        parallelism: 2,
    }
}

/// A task `x` whose `execute` fails with a 10 MB message and ten causes of 100 KB, and whose
/// `revert` fails with a 10 MB message: far over any store's limit on one value. (Not one of
/// [`all`]: no crash test runs it.) Each message starts with `"{what} starts"` and ends with
/// `"{what} ends"`, `what` being `message` or `revert`.
#[must_use]
pub fn huge_failures() -> CompiledFlow {
    let huge = |what: &str| format!("{what} starts {} {what} ends", "x".repeat(10 << 20));
    let task = FnTask::new(move |_| {
        let mut err = TaskError::msg(huge("message"));
        for i in 0..10 {
            err = err.with_cause(format!("cause {i} {}", "c".repeat(100_000)));
        }
        async move { Err(err) }
    })
    .on_revert(move |_| {
        let err = TaskError::msg(huge("revert"));
        async move { Err(err) }
    });
    Flow::linear("huge")
        .add(Atom::task("x", task))
        .compile()
        .expect("huge failures flow compiles")
}

/// Every scenario of the crash tests.
#[must_use]
pub fn all() -> Vec<Scenario> {
    vec![
        linear(),
        parallel_graph(),
        failing(),
        retrying(),
        atom_retries(),
    ]
}
