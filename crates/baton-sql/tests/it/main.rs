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
mod connect;
mod deadlines;
mod engine_edges;
mod errors;
mod handle;
mod liveness;
mod postgres;
mod sqlite;
mod support;

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
pub(crate) use generic_cases;
