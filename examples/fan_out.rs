//! Fans out: boots eight servers in parallel, at most three at a time, then joins their results
//! in one step that builds a load-balancer pool from them.
//!
//! ```text
//! cargo run --example fan_out
//! ```
//!
//! The flow is written on the typed API: `each` fans out, one `boot-i` atom per server in an
//! unordered subflow, and returns the handles to their outputs; `join` is given them all, as a
//! `Vec<Server>`, so it runs after every boot, while the boots stay unordered among
//! themselves. The engine's parallelism (3) bounds how many run at once; the timeline printed
//! at the end shows the waves, and the run takes about a third of the serial time.

// An example program: printing is its job.
#![allow(clippy::print_stdout)]

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use baton::typed::{atom, from_fn, Const, TypedFlow, TypedTask};
use baton::{Engine, MemoryStore, TaskContext};
use serde::{Deserialize, Serialize};

const SERVERS: usize = 8;
const PARALLELISM: usize = 3;

/// A booted server.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Server {
    name: String,
    ip: String,
}

/// A load balancer's pool of servers.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Pool {
    name: String,
    members: Vec<String>,
}

/// What the boots record: when the run started, how many boots run now and the most that ran
/// at once, and for the timeline (server, started, finished), from the start of the run.
struct Watch {
    t0: Instant,
    running: AtomicUsize,
    peak: AtomicUsize,
    timeline: Mutex<Vec<(usize, Duration, Duration)>>,
}

/// Boots server number `i` (its input), taking 150 to 250 ms.
struct Boot(Arc<Watch>);

#[async_trait::async_trait]
impl TypedTask for Boot {
    type Input = usize;
    type Output = Server;
    type Error = Infallible;

    async fn execute(&self, i: usize, _ctx: &TaskContext) -> Result<Server, Infallible> {
        let watch = &self.0;
        let started = watch.t0.elapsed();
        let now = watch.running.fetch_add(1, Ordering::SeqCst) + 1;
        watch.peak.fetch_max(now, Ordering::SeqCst);
        let ms = 150 + 50 * u64::try_from(i % 3).unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        watch.running.fetch_sub(1, Ordering::SeqCst);
        watch
            .timeline
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((i, started, watch.t0.elapsed()));
        Ok(Server {
            name: format!("web-{i}"),
            ip: format!("10.0.0.{}", 10 + i),
        })
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let t0 = Instant::now();
    let watch = Arc::new(Watch {
        t0,
        running: AtomicUsize::new(0),
        peak: AtomicUsize::new(0),
        timeline: Mutex::default(),
    });

    let mut flow = TypedFlow::linear("fan-out");
    let servers = flow.each("boots", 0..SERVERS, |i| {
        (atom(format!("boot-{i}"), Boot(watch.clone())), Const(i))
    });
    let join = from_fn(|servers: Vec<Server>, _ctx| async move {
        let members = servers.iter().map(|s| format!("{}:80", s.ip)).collect();
        Ok::<_, Infallible>(Pool {
            name: "web".into(),
            members,
        })
    });
    let pool = flow.add(atom("join", join), &servers);
    let flow = flow.compile()?;

    let engine = Engine::new(MemoryStore::new()).with_parallelism(PARALLELISM);
    let outcome = engine.start(&flow, Default::default()).await?;
    let elapsed = t0.elapsed();

    // The timeline: one row per server, one column per 25 ms.
    let mut rows = watch
        .timeline
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
    let peak = watch.peak.load(Ordering::SeqCst);
    println!(
        "flow ended {} in {} ms (the boots alone take {} ms one after the other); at most {peak} boots ran at once",
        outcome.state,
        elapsed.as_millis(),
        serial.as_millis()
    );
    let members = pool.get(&outcome)?.map(|p| p.members).unwrap_or_default();
    println!("join: the pool's members are {}", members.join(", "));

    anyhow::ensure!(outcome.is_success(), "the fan-out should succeed");
    anyhow::ensure!(
        peak == PARALLELISM,
        "expected {PARALLELISM} boots at once, saw {peak}"
    );
    anyhow::ensure!(elapsed < serial * 2 / 3, "the boots should have overlapped");
    anyhow::ensure!(members.len() == SERVERS, "the join should see every server");
    Ok(())
}
