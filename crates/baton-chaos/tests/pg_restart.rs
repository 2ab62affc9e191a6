//! PostgreSQL is restarted under a running flow: the engine waits, retries and finishes, and
//! nothing is lost or done twice.
//!
//! This restarts the machine's PostgreSQL server, so it lives in its own test binary (cargo
//! runs test binaries one after another) and needs the right to run `pg_ctlcluster` (CI runs as
//! root). Outside CI it is skipped when the server or the command is not available.

// Test helpers panic on purpose: that is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use baton_cli::demo::{registry, SideEffects};
use baton_core::{AtomState, Engine, FlowState};
use serde_json::json;

fn cluster_version() -> Option<String> {
    let entries = std::fs::read_dir("/etc/postgresql").ok()?;
    entries
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .next()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flow_rides_out_a_postgres_restart() {
    let ci = std::env::var("CI").as_deref() == Ok("true");
    let (Ok(url), Some(version)) = (std::env::var("BATON_TEST_POSTGRES_URL"), cluster_version())
    else {
        assert!(
            !ci,
            "CI=true needs BATON_TEST_POSTGRES_URL and a local PostgreSQL cluster"
        );
        eprintln!("skipped: no BATON_TEST_POSTGRES_URL or no local cluster to restart");
        return;
    };
    let schema = format!("restart_{}", uuid::Uuid::now_v7().simple());
    let store = match baton_chaos::open(&url, Some(&schema)).await {
        Ok(s) => s,
        Err(e) if !ci => {
            eprintln!("skipped: PostgreSQL unreachable: {e}");
            return;
        }
        Err(e) => panic!("PostgreSQL unreachable (CI=true): {e}"),
    };

    let effects = SideEffects::memory();
    let (flow, inputs) = registry(effects.clone())
        .expect("the demo registry")
        .build_newest("steps", &json!({ "steps": 300, "step_ms": 10 }))
        .unwrap();
    let engine = Engine::from_arc(store.clone());
    let id = engine.create(&flow, inputs).await.unwrap();
    let run = tokio::spawn({
        let engine = engine.clone();
        let flow = flow.clone();
        async move { engine.run(&flow, id).await }
    });

    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(!run.is_finished(), "the flow ended before the restart");
    let restarted = Instant::now();
    let status = Command::new("pg_ctlcluster")
        .args(["--skip-systemctl-redirect", &version, "main", "restart"])
        .status()
        .expect("pg_ctlcluster runs");
    assert!(status.success(), "restarting PostgreSQL failed");
    eprintln!("PostgreSQL restarted in {:?}", restarted.elapsed());

    let outcome = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the flow finished after the restart")
        .unwrap()
        .expect("the engine rode out the restart");
    assert_eq!(outcome.state, FlowState::Success);

    let snap = store.load_flow(id).await.unwrap();
    assert!(snap.atoms.iter().all(|a| a.state == AtomState::Success));
    let mut creates: BTreeMap<String, usize> = BTreeMap::new();
    for e in effects.recorded().into_iter().filter(|e| e.is_call()) {
        assert_eq!(e.action, "create", "nothing is deleted: {e:?}");
        *creates.entry(e.atom).or_default() += 1;
    }
    assert_eq!(creates.len(), 300);
    // The engine never died: no step had to run twice.
    assert!(creates.values().all(|&n| n == 1), "{creates:?}");

    // Passed: remove the test's schema (a failed test leaves its data to look at).
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .execute(&mut conn)
        .await
        .unwrap();
}
