//! Crash at every write, on the memory store.

use baton_core::MemoryStore;
use baton_testkit::crash::crash_at_every_write;
use baton_testkit::scenarios;

async fn check(scenario: scenarios::Scenario) {
    let coverage = crash_at_every_write(MemoryStore::new(), &scenario).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linear_flow_survives_a_crash_at_every_write() {
    check(scenarios::linear()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_graph_survives_a_crash_at_every_write() {
    check(scenarios::parallel_graph()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_flow_survives_a_crash_at_every_write() {
    check(scenarios::failing()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retrying_flow_survives_a_crash_at_every_write() {
    check(scenarios::retrying()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn atom_retries_survive_a_crash_at_every_write() {
    check(scenarios::atom_retries()).await;
}
