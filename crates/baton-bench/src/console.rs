//! The `console` scenario: how fast the console answers its listings on a database holding
//! many ended runs while conductors run jobs beside it.
//!
//! The database is filled as the `history` scenario fills it (one job run for real, its rows
//! copied N times). The console is then served on a loopback port over a store and a board
//! of its own, as `baton serve` opens them, while four conductors run batches of one-task
//! jobs, one batch after another, until the requests are done. One client asks for pages of
//! `/api/flows` (and of `/api/jobs`, for comparison) one after the other, reading each answer
//! whole, and the latencies' percentiles are reported.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::fleet::{self, Fleet};
use crate::Target;

/// The shape of a `console` run.
pub(crate) struct Shape {
    /// Ended runs the database is filled with.
    pub(crate) runs: usize,
    /// Requests timed (after a warm-up of 20).
    pub(crate) requests: usize,
    /// Conductors running jobs during the requests.
    pub(crate) conductors: usize,
    /// One-task jobs in each batch the conductors run.
    pub(crate) batch: usize,
}

/// `console`: fills the database, serves the console, and times listings while conductors
/// work; prints one JSON line.
pub(crate) async fn console(target: &Target, shape: Shape) -> Result<()> {
    let fleet = Fleet::open(target).await?;
    let (_, ran) = fleet::timed_jobs(&fleet, 1, 1).await?;
    let template = ran.first().copied().context("no job was run")?;
    let filling = Instant::now();
    let middle = crate::history::fill(&fleet, template, shape.runs).await?;
    let fill_secs = filling.elapsed().as_secs_f64();

    // The console over connections of its own, as `baton serve` opens the database.
    let (store, board) = fleet.member().await?;
    let bound = baton_console::Console::new(store, board)
        .bind("127.0.0.1:0".parse()?)
        .await?;
    let base = format!("http://{}", bound.local_addr()?);
    let stop_server = CancellationToken::new();
    let server = tokio::spawn(bound.run(stop_server.clone()));

    // What is asked for, in turn: the flows list's first page, a filter, a page from the
    // middle of a million, the unfinished runs (few among many), and the jobs list.
    let kinds: Vec<(&str, String)> = vec![
        ("flows_first", "/api/flows".to_owned()),
        ("flows_success", "/api/flows?state=SUCCESS".to_owned()),
        ("flows_middle", format!("/api/flows?after={middle}")),
        ("flows_unfinished", "/api/flows?unfinished=true".to_owned()),
        ("flows_factory", "/api/flows?factory=one".to_owned()),
        ("jobs_first", "/api/jobs".to_owned()),
    ];
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()?;

    let working = CancellationToken::new();
    let work = async {
        let mut jobs = 0usize;
        let start = Instant::now();
        while !working.is_cancelled() {
            let (_, ids) = fleet::timed_jobs(&fleet, shape.batch, shape.conductors).await?;
            jobs += ids.len();
        }
        anyhow::Ok((jobs, start.elapsed().as_secs_f64()))
    };
    let ask = async {
        // The conductors start first.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut latencies: Vec<Vec<f64>> = vec![Vec::new(); kinds.len()];
        for i in 0..(20 + shape.requests) {
            let (_, path) = &kinds[i % kinds.len()];
            let url = format!("{base}{path}");
            let start = Instant::now();
            let response = client.get(&url).send().await?;
            let status = response.status();
            let body = response.bytes().await?;
            let ms = start.elapsed().as_secs_f64() * 1000.0;
            anyhow::ensure!(status.is_success(), "GET {path}: {status}");
            let rows: Value =
                serde_json::from_slice(&body).with_context(|| format!("GET {path}: not JSON"))?;
            let rows = rows
                .as_array()
                .with_context(|| format!("GET {path}: not an array"))?;
            anyhow::ensure!(rows.len() <= 100, "GET {path}: {} rows", rows.len());
            if i >= 20 {
                latencies[i % kinds.len()].push(ms);
            }
        }
        working.cancel();
        anyhow::Ok(latencies)
    };
    let (worked, asked) = tokio::join!(work, ask);
    let (jobs, work_secs) = worked?;
    let latencies = asked?;
    stop_server.cancel();
    server.await??;
    fleet.clean_up().await?;

    let all: Vec<f64> = latencies.iter().flatten().copied().collect();
    let mut by_kind = serde_json::Map::new();
    for ((name, _), figures) in kinds.iter().zip(&latencies) {
        by_kind.insert(
            (*name).to_owned(),
            json!({ "p50_ms": percentile(figures, 50), "p95_ms": percentile(figures, 95) }),
        );
    }
    let flows: Vec<f64> = kinds
        .iter()
        .zip(&latencies)
        .filter(|((name, _), _)| name.starts_with("flows"))
        .flat_map(|(_, figures)| figures.iter().copied())
        .collect();
    println!(
        "{}",
        json!({
            "scenario": "console",
            "backend": target.backend.name(),
            "runs": shape.runs,
            "fill_seconds": fill_secs,
            "requests": all.len(),
            "conductors": shape.conductors,
            "jobs_run_meanwhile": jobs,
            "jobs_per_sec_meanwhile": jobs as f64 / work_secs,
            "flows_p50_ms": percentile(&flows, 50),
            "flows_p95_ms": percentile(&flows, 95),
            "flows_p99_ms": percentile(&flows, 99),
            "flows_max_ms": percentile(&flows, 100),
            "by_kind": by_kind,
        })
    );
    Ok(())
}

/// The `p`th percentile of `figures` (nearest rank), or 0 for none.
fn percentile(figures: &[f64], p: usize) -> f64 {
    let mut sorted = figures.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = (sorted.len() * p).div_ceil(100).max(1);
    sorted.get(rank - 1).copied().unwrap_or(0.0)
}
