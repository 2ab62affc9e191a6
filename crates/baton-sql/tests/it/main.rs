//! The SQL stores against the store contract, the crash tests and their own features.
//!
//! PostgreSQL tests need a server: `BATON_TEST_POSTGRES_URL`, e.g.
//! `postgres://postgres@127.0.0.1:5432/postgres`. Without one (unset or unreachable) they print
//! `skipped: ...` and pass, unless `CI=true`, where they fail.

// Helpers outside `#[test]` functions panic on purpose: that is a failed test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stderr,
    unreachable_pub
)]

mod board;
mod cancel;
mod cases;
mod checkpoints;
mod connect;
mod deadlines;
mod engine_edges;
mod errors;
mod handle;
mod liveness;
mod postgres;
mod sqlite;
mod support;

/// Expands, for a backend, to the checkpoint tests (`checkpoints.rs`). `$make` is a closure
/// taking a `Checkpoints` policy to a future of `Option<Held<store>>` (`None`: no server,
/// skip); each store's `replaying_whole_log` handle is the checks' reference.
macro_rules! checkpoint_cases {
    ($make:expr) => {
        mod checkpoints {
            use baton_sql::Checkpoints;
            use baton_testkit::scenarios;

            #[allow(unused_imports)]
            use super::*;
            use crate::checkpoints::OFTEN;

            macro_rules! crash_case {
                ($name:ident, $scenario:expr) => {
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $name() {
                        if let Some(store) = ($make)(OFTEN).await {
                            let check = store.reopened().await;
                            let whole = store.reopened().await;
                            let whole = whole.with_store(whole.store.replaying_whole_log());
                            crate::checkpoints::checkpoints_agree_with_the_log_at_every_crash(
                                store, check, whole, $scenario,
                            )
                            .await;
                        }
                    }
                };
            }

            crash_case!(linear_flow_loads_alike_at_every_crash, scenarios::linear());
            crash_case!(
                parallel_graph_loads_alike_at_every_crash,
                scenarios::parallel_graph()
            );
            crash_case!(
                failing_flow_loads_alike_at_every_crash,
                scenarios::failing()
            );
            crash_case!(
                retrying_flow_loads_alike_at_every_crash,
                scenarios::retrying()
            );
            crash_case!(
                atom_retries_load_alike_at_every_crash,
                scenarios::atom_retries()
            );

            /// 10 000 atoms, a checkpoint every 1000 steps (each rewriting about 1000 atoms'
            /// rows, many statements' worth on SQLite), killed past the middle.
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_run_of_10000_atoms_resumes() {
                if let Some(store) = ($make)(Checkpoints::every(1000, 0)).await {
                    let check = store.reopened().await;
                    let whole = store.reopened().await;
                    let whole = whole.with_store(whole.store.replaying_whole_log());
                    crate::checkpoints::a_long_run_resumes(store, check, whole, 10_000, 6_543)
                        .await;
                }
            }

            /// The default policy: a run of few atoms and a long log is checkpointed.
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_checkpointed_run_resumes_with_the_default_policy() {
                if let Some(store) = ($make)(Checkpoints::DEFAULT).await {
                    let check = store.reopened().await;
                    let whole = store.reopened().await;
                    let whole = whole.with_store(whole.store.replaying_whole_log());
                    let raw = store.raw.clone();
                    let id = crate::checkpoints::a_long_run_resumes(
                        store.clone(),
                        check,
                        whole,
                        1_500,
                        1_250,
                    )
                    .await;
                    let at = raw
                        .count(&format!(
                            "SELECT checkpoint_seq FROM flows WHERE id = '{id}'"
                        ))
                        .await;
                    // 1 500 atoms: a checkpoint only after 6 000 steps; the log has about
                    // 1 500.
                    assert_eq!(at, 0);
                }
            }

            /// A run longer than the policy's interval is checkpointed, and resumes.
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_run_longer_than_the_policy_is_checkpointed() {
                if let Some(store) = ($make)(Checkpoints::every(100, 0)).await {
                    let check = store.reopened().await;
                    let whole = store.reopened().await;
                    let whole = whole.with_store(whole.store.replaying_whole_log());
                    let raw = store.raw.clone();
                    let id = crate::checkpoints::a_long_run_resumes(
                        store.clone(),
                        check,
                        whole,
                        250,
                        120,
                    )
                    .await;
                    let at = raw
                        .count(&format!(
                            "SELECT checkpoint_seq FROM flows WHERE id = '{id}'"
                        ))
                        .await;
                    assert!(at >= 100, "checkpoint at step {at}");
                }
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_checkpointed_run_is_purged_whole() {
                if let Some(store) = ($make)(Checkpoints::every(2, 0)).await {
                    let raw = store.raw.clone();
                    crate::checkpoints::a_checkpointed_run_is_purged_whole(store, &raw).await;
                }
            }
        }
    };
}

/// Expands, for a backend, to one test per generic case. `$make` is an async expression of
/// type `Option<store>` (`None`: no server, skip); `$limited` is the same with the value size
/// limit set to 1024 bytes.
macro_rules! generic_cases {
    ($make:expr, $limited:expr) => {
        #[tokio::test]
        async fn size_limit_refuses_the_whole_batch() {
            if let Some(store) = $limited {
                crate::cases::size_limit_refuses_the_whole_batch(store, 1024).await;
            }
        }

        #[tokio::test]
        async fn loading_a_run_leaves_its_meta_unread() {
            if let Some(store) = $make {
                crate::cases::loading_a_run_leaves_its_meta_unread(store).await;
            }
        }

        #[tokio::test]
        async fn full_records_round_trip() {
            if let Some(store) = $make {
                crate::cases::full_records_round_trip(store).await;
            }
        }

        #[tokio::test]
        async fn damaged_rows_are_corrupt_naming_flow_and_atom() {
            if let Some(store) = $make {
                crate::cases::damaged_rows_are_corrupt_naming_flow_and_atom(store).await;
            }
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn many_writers_on_different_flows_all_succeed() {
            if let Some(store) = $make {
                crate::cases::many_writers_on_different_flows_all_succeed(store).await;
            }
        }

        #[tokio::test]
        async fn batches_agree_with_the_memory_store() {
            if let Some(store) = $make {
                crate::cases::batches_agree_with_the_memory_store(store).await;
            }
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn racing_writers_one_wins_one_conflicts() {
            if let Some(store) = $make {
                crate::cases::racing_writers_one_wins_one_conflicts(store).await;
            }
        }

        #[tokio::test]
        async fn fences_refuse_stale_tokens() {
            if let Some(store) = $make {
                crate::cases::fences_refuse_stale_tokens(store).await;
            }
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn engine_runs_flows_end_to_end() {
            if let Some(store) = $make {
                crate::cases::engine_runs_flows_end_to_end(store).await;
            }
        }

        mod crash {
            use baton_testkit::scenarios;

            #[allow(unused_imports)]
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn linear_flow_survives_a_crash_at_every_write() {
                if let Some(store) = $make {
                    crate::cases::crash_at_every_write_resumes(store, scenarios::linear()).await;
                }
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn parallel_graph_survives_a_crash_at_every_write() {
                if let Some(store) = $make {
                    crate::cases::crash_at_every_write_resumes(store, scenarios::parallel_graph())
                        .await;
                }
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn failing_flow_survives_a_crash_at_every_write() {
                if let Some(store) = $make {
                    crate::cases::crash_at_every_write_resumes(store, scenarios::failing()).await;
                }
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn retrying_flow_survives_a_crash_at_every_write() {
                if let Some(store) = $make {
                    crate::cases::crash_at_every_write_resumes(store, scenarios::retrying()).await;
                }
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn atom_retries_survive_a_crash_at_every_write() {
                if let Some(store) = $make {
                    crate::cases::crash_at_every_write_resumes(store, scenarios::atom_retries())
                        .await;
                }
            }

            #[test]
            fn every_scenario_has_a_crash_test() {
                assert_eq!(
                    scenarios::all().len(),
                    5,
                    "add a crash test for the new scenario"
                );
            }
        }
    };
}
pub(crate) use checkpoint_cases;
pub(crate) use generic_cases;
