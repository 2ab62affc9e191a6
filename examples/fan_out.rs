//! Fans out: boots eight servers in parallel, at most three at a time, then joins their results
//! in one step that builds a load-balancer pool from them.
//!
//! ```text
//! cargo run --example fan_out
//! ```
//!
//! The flow is a graph: every `boot-i` provides `server_i`, and `join` requires all of them, so
//! the compiler orders `join` after every boot while the boots stay unordered among
//! themselves. The engine's parallelism (3) bounds how many run at once; the timeline printed
//! at the end shows the waves, and the run takes about a third of the serial time.

// An example program: printing is its job.
#![allow(clippy::print_stdout)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use baton::{Atom, Engine, Flow, MemoryStore};
use serde_json::{json, Value};

const SERVERS: usize = 8;
const PARALLELISM: usize = 3;

/// What the boots record for the timeline: (server, started, finished), from the start of the
/// run.
type Timeline = Arc<Mutex<Vec<(usize, Duration, Duration)>>>;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let t0 = Instant::now();
    let timeline = Timeline::default();
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));

    let mut flow = Flow::graph("fan-out");
    for i in 0..SERVERS {
        let (timeline, running, peak) = (timeline.clone(), running.clone(), peak.clone());
        let boot = Atom::from_fn(format!("boot-{i}"), move |_ctx| {
            let (timeline, running, peak) = (timeline.clone(), running.clone(), peak.clone());
            async move {
                let started = t0.elapsed();
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                // Servers take 150 to 250 ms to boot.
                let ms = 150 + 50 * u64::try_from(i % 3).unwrap_or(0);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                running.fetch_sub(1, Ordering::SeqCst);
                timeline
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push((i, started, t0.elapsed()));
                Ok(json!({ "name": format!("web-{i}"), "ip": format!("10.0.0.{}", 10 + i) }))
            }
        })
        .provides(format!("server_{i}"));
        flow = flow.add(boot);
    }
    let symbols: Vec<String> = (0..SERVERS).map(|i| format!("server_{i}")).collect();
    let join = Atom::from_fn("join", |ctx| async move {
        // Read every server's result, in order.
        let mut members = Vec::new();
        for i in 0..SERVERS {
            let server: Value = ctx.input(&format!("server_{i}"))?;
            members.push(format!("{}:80", server["ip"].as_str().unwrap_or("?")));
        }
        Ok(json!({ "pool": "web", "members": members }))
    })
    .requires(symbols)
    .provides("pool");
    let flow = flow.add(join).compile()?;

    let engine = Engine::new(MemoryStore::new()).with_parallelism(PARALLELISM);
    let outcome = engine.start(&flow, Default::default()).await?;
    let elapsed = t0.elapsed();

    // The timeline: one row per server, one column per 25 ms.
    let mut rows = timeline
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    rows.sort_unstable();
    println!("boots (parallelism {PARALLELISM}), one column per 25 ms:");
    let col = |d: Duration| usize::try_from(d.as_millis() / 25).unwrap_or(usize::MAX);
    for (i, started, finished) in &rows {
        println!(
            "  boot-{i} {:>4}-{:>4} ms |{}{}",
            started.as_millis(),
            finished.as_millis(),
            " ".repeat(col(*started)),
            "#".repeat(col(*finished).saturating_sub(col(*started)).max(1)),
        );
    }
    let serial: Duration = rows.iter().map(|(_, s, f)| *f - *s).sum();
    let peak = peak.load(Ordering::SeqCst);
    println!(
        "flow ended {} in {} ms (the boots alone take {} ms one after the other); at most {peak} boots ran at once",
        outcome.state,
        elapsed.as_millis(),
        serial.as_millis()
    );
    let pool = outcome.symbol("pool").cloned().unwrap_or_default();
    println!("join result: {pool}");

    anyhow::ensure!(outcome.is_success(), "the fan-out should succeed");
    anyhow::ensure!(
        peak == PARALLELISM,
        "expected {PARALLELISM} boots at once, saw {peak}"
    );
    anyhow::ensure!(elapsed < serial * 2 / 3, "the boots should have overlapped");
    anyhow::ensure!(
        pool["members"].as_array().map(Vec::len) == Some(SERVERS),
        "the join should see every server"
    );
    Ok(())
}
