//! Property tests over random DAGs: executions respect every edge, reverts go in reverse.

use std::collections::HashMap;

use baton_core::{Atom, Flow, FlowState, Inputs};
use baton_testkit::{Action, Log, Phase, Probe};
use proptest::prelude::*;

/// A random DAG on `n` nodes: an edge i -> j (i < j) for each chosen pair.
fn dag() -> impl Strategy<Value = (usize, Vec<(usize, usize)>)> {
    (2usize..12).prop_flat_map(|n| {
        let pairs: Vec<(usize, usize)> = (0..n)
            .flat_map(|i| (i + 1..n).map(move |j| (i, j)))
            .collect();
        let len = pairs.len();
        (
            Just(n),
            proptest::sample::subsequence(pairs, 0..=len.min(20)),
        )
    })
}

fn build(
    n: usize,
    edges: &[(usize, usize)],
    log: &Log,
    fail: Option<usize>,
) -> baton_core::CompiledFlow {
    let mut flow = Flow::graph("random");
    for i in 0..n {
        let probe = if Some(i) == fail {
            Probe::new(log).fails()
        } else {
            Probe::new(log)
        };
        flow = flow.add(Atom::task(format!("n{i}"), probe));
    }
    for (a, b) in edges {
        flow = flow.link(format!("n{a}"), format!("n{b}"));
    }
    flow.compile().unwrap()
}

fn positions(seq: &[String]) -> HashMap<String, usize> {
    seq.iter()
        .enumerate()
        .map(|(i, a)| (a.clone(), i))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn executions_respect_edges_and_reverts_go_backwards((n, edges) in dag(), fail_pick in 0usize..100, parallelism in 1usize..4) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let fail = (fail_pick < 50).then_some(fail_pick % n);
        let log = Log::new();
        let flow = build(n, &edges, &log, fail);
        let outcome = rt.block_on(
            baton_core::Engine::new(baton_core::MemoryStore::new())
                .with_parallelism(parallelism)
                .start(&flow, Inputs::new()),
        ).unwrap();

        // Every edge: the source finished before the target started.
        let calls = log.calls();
        let end: HashMap<String, usize> = calls.iter().enumerate()
            .filter(|(_, c)| c.action == Action::Execute && c.phase != Phase::Start)
            .map(|(i, c)| (c.atom.clone(), i)).collect();
        let start: HashMap<String, usize> = calls.iter().enumerate()
            .filter(|(_, c)| c.action == Action::Execute && c.phase == Phase::Start)
            .map(|(i, c)| (c.atom.clone(), i)).collect();
        for (a, b) in &edges {
            let (a, b) = (format!("n{a}"), format!("n{b}"));
            if let Some(sb) = start.get(&b) {
                prop_assert!(end.get(&a).is_some_and(|ea| ea < sb), "{b} started before {a} ended");
            }
        }

        match fail {
            None => prop_assert_eq!(outcome.state, FlowState::Success),
            Some(_) => {
                prop_assert_eq!(outcome.state, FlowState::Reverted);
                // Every edge: the target was reverted before the source started reverting.
                let rev_start = positions(&log.sequence(Action::Revert, Phase::Start));
                let rev_end = positions(&log.sequence(Action::Revert, Phase::Ok));
                for (a, b) in &edges {
                    let (a, b) = (format!("n{a}"), format!("n{b}"));
                    if let (Some(sa), Some(eb)) = (rev_start.get(&a), rev_end.get(&b)) {
                        // Compare positions in the combined log.
                        let pos = |atom: &str, phase: Phase| calls.iter().position(|c| c.action == Action::Revert && c.phase == phase && c.atom == atom);
                        prop_assert!(pos(&b, Phase::Ok) < pos(&a, Phase::Start), "{a} reverted before {b} ({sa} {eb})");
                    }
                    // Whatever executed was reverted.
                    if start.contains_key(&a) { prop_assert!(rev_start.contains_key(&a), "{a} ran but was not reverted"); }
                }
            }
        }
    }
}
