//! A child process runs a 200-step flow and is killed with SIGKILL at random points, again and
//! again; a last child finishes it. The store must show that no step which had succeeded ran
//! again, the side-effect log that no step made its resource twice (a step run again finds it by
//! its idempotency key), and the flow must end exactly as an uninterrupted run.

// Test helpers panic on purpose: that is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use baton_cli::demo::SideEffects;
use baton_core::{AtomState, FlowId, FlowState};

const STEPS: u32 = 200;
const KILLS: usize = 6;

/// A small deterministic generator, seeded from the clock and printed, so a failure can be
/// replayed by setting BATON_CHAOS_SEED.
struct Rng(u64);

impl Rng {
    fn from_env_or_clock() -> Self {
        let seed = std::env::var("BATON_CHAOS_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| u64::from(d.subsec_nanos()) ^ d.as_secs())
            });
        eprintln!("chaos seed: {seed} (set BATON_CHAOS_SEED to replay)");
        Rng(seed | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn child(db: &str, schema: Option<&str>, flow: FlowId, effects: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_baton-chaos-child"));
    cmd.args([
        "--db",
        db,
        "--flow",
        &flow.to_string(),
        "--steps",
        &STEPS.to_string(),
    ])
    .args(["--step-ms", "10", "--effects"])
    .arg(effects)
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    if let Some(schema) = schema {
        cmd.args(["--schema", schema]);
    }
    cmd
}

async fn kill_and_resume(db: &str, schema: Option<&str>) {
    let dir = tempfile::tempdir().unwrap();
    let effects = dir.path().join("effects.jsonl");
    let flow = FlowId::new();
    let store = baton_chaos::open(db, schema).await.unwrap();
    let mut rng = Rng::from_env_or_clock();
    let mut caught_running: BTreeSet<String> = BTreeSet::new();
    let mut kills = 0;

    for _ in 0..KILLS {
        let mut c = child(db, schema, flow, &effects).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(150 + rng.below(450)));
        if c.try_wait().unwrap().is_some() {
            break; // it finished before we could kill it
        }
        c.kill().unwrap(); // SIGKILL
        c.wait().unwrap();
        kills += 1;
        // A statement the child had sent may still be finishing on the server (PostgreSQL
        // completes and commits it even though its client is gone): let it land before
        // reading what the store says was running.
        std::thread::sleep(Duration::from_millis(200));
        if let Ok(snap) = store.load_flow(flow).await {
            caught_running.extend(
                snap.atoms
                    .iter()
                    .filter(|a| a.state == AtomState::Running)
                    .map(|a| a.name.clone()),
            );
        }
    }

    let started = Instant::now();
    let out = child(db, schema, flow, &effects).output().unwrap();
    assert!(
        out.status.success(),
        "the last child failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "SUCCESS");
    assert!(started.elapsed() < Duration::from_secs(120));
    assert!(kills >= 3, "only {kills} kills landed mid-flow");

    // The store: every step succeeded; only steps caught running were attempted more than once.
    let snap = store.load_flow(flow).await.unwrap();
    assert_eq!(snap.flow.state, FlowState::Success);
    assert_eq!(snap.atoms.len(), STEPS as usize);
    for atom in &snap.atoms {
        assert_eq!(atom.state, AtomState::Success, "{}", atom.name);
        if atom.attempt > 1 {
            assert!(
                caught_running.contains(&atom.name),
                "{} re-ran but was never caught running",
                atom.name
            );
        }
    }

    // The side effects: each step created its resource exactly once. A step caught mid-call
    // runs again, with the same idempotency key, and finds the resource it had made.
    let mut creates: BTreeMap<String, usize> = BTreeMap::new();
    for e in SideEffects::read_file(&effects).unwrap() {
        if !e.is_call() {
            continue;
        }
        assert_eq!(e.action, "create");
        *creates.entry(e.atom).or_default() += 1;
    }
    assert_eq!(creates.len(), STEPS as usize, "some step never ran");
    for (atom, n) in &creates {
        assert_eq!(*n, 1, "{atom} created {n} resources");
    }
    eprintln!(
        "{kills} kills, {} steps caught running",
        caught_running.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_flow_survives_sigkill_at_random_points() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("chaos.db").display());
    kill_and_resume(&db, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_flow_survives_sigkill_at_random_points() {
    let schema = format!("chaos_{}", uuid::Uuid::now_v7().simple());
    let Some(url) = postgres_url(&schema).await else {
        return;
    };
    kill_and_resume(&url, Some(&schema)).await;
    drop_schema(&url, &schema).await;
}

/// The PostgreSQL server for tests: required when CI=true, skipped (loudly) otherwise.
async fn postgres_url(schema: &str) -> Option<String> {
    let ci = std::env::var("CI").as_deref() == Ok("true");
    let Ok(url) = std::env::var("BATON_TEST_POSTGRES_URL") else {
        assert!(!ci, "BATON_TEST_POSTGRES_URL must be set when CI=true");
        eprintln!("skipped: BATON_TEST_POSTGRES_URL is not set");
        return None;
    };
    match baton_chaos::open(&url, Some(schema)).await {
        Ok(_) => Some(url),
        Err(e) if !ci => {
            eprintln!("skipped: PostgreSQL at {url} is unreachable: {e}");
            None
        }
        Err(e) => panic!("PostgreSQL at {url} is unreachable (CI=true): {e}"),
    }
}

/// Removes a test's schema (only after it passed: a failed test leaves its data to look at).
async fn drop_schema(url: &str, schema: &str) {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .execute(&mut conn)
        .await
        .unwrap();
}
