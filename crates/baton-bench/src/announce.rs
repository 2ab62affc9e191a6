//! `baton-bench announce`: what announcing steps costs on PostgreSQL
//! (`PostgresOptions::announce_steps`, which the console listens to): a linear flow run in
//! turns by a store that announces each step and one that does not, in the same schema, with
//! a listener draining the announcements as the console would.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use baton_core::store::Store;
use baton_core::Engine;
use serde_json::json;

use crate::{linear_flow, median, postgres_url, Target};

/// Runs the comparison and prints one JSON line: the median speed of each store, and the
/// median of each pair's ratio (announcing over not, the rounds taken in turn).
pub(crate) async fn announce(target: &Target, tasks: usize, rounds: usize) -> Result<()> {
    let url = postgres_url(target);
    let schema = format!("bench_{}", uuid::Uuid::now_v7().simple());
    let plain = baton_sql::PostgresStore::connect_with(
        &url,
        target.postgres_options(&schema).announce_steps(false),
    )
    .await
    .with_context(|| format!("connecting to {url}"))?;
    let announcing = baton_sql::PostgresStore::connect_with(
        &url,
        target.postgres_options(&schema).announce_steps(true),
    )
    .await?;
    let mut news = baton_sql::Announcements::connect(&url, &schema).await?;
    let heard = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = Arc::clone(&heard);
    let listener = tokio::spawn(async move {
        while news.next().await.is_ok() {
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    });
    let flow = linear_flow(tasks).compile()?;
    let engines = [
        Engine::from_arc(Arc::new(plain.clone()) as Arc<dyn Store>),
        Engine::from_arc(Arc::new(announcing.clone()) as Arc<dyn Store>),
    ];
    // Once each, untimed: the first runs grow the new schema's tables.
    for engine in &engines {
        let id = engine.create(&flow, Default::default()).await?;
        engine.run(&flow, id).await?;
    }
    let mut speeds = [Vec::new(), Vec::new()];
    let mut ratios = Vec::new();
    for round in 0..rounds.max(1) {
        // Which goes first alternates, so neither always meets the other's leftovers.
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        let mut pair = [0.0; 2];
        for which in order {
            let engine = &engines[which];
            let id = engine.create(&flow, Default::default()).await?;
            let start = Instant::now();
            let outcome = engine.run(&flow, id).await?;
            let speed = tasks as f64 / start.elapsed().as_secs_f64();
            anyhow::ensure!(outcome.is_success(), "flow ended {}", outcome.state);
            speeds[which].push(speed);
            pair[which] = speed;
        }
        ratios.push(pair[1] / pair[0]);
    }
    listener.abort();
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&url).await?;
    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(&mut conn)
        .await?;
    println!(
        "{}",
        json!({
            "scenario": "announce",
            "backend": "postgres",
            "tasks": tasks,
            "rounds": rounds,
            "plain_steps_per_sec": median(&speeds[0]),
            "announcing_steps_per_sec": median(&speeds[1]),
            "ratio": median(&ratios),
            "ratio_rounds": ratios,
            "announcements_heard": heard.load(std::sync::atomic::Ordering::Relaxed),
        })
    );
    Ok(())
}
