//! The commands.

pub(crate) mod conductors;
pub(crate) mod demo;
pub(crate) mod flows;
pub(crate) mod jobs;

use std::str::FromStr;

use crate::error::{CliError, Result};
use crate::exit;

/// Parses a command-line value, naming what was expected on failure.
pub(crate) fn parse<T>(what: &str, text: &str) -> Result<T>
where
    T: FromStr,
    T::Err: std::fmt::Display,
{
    // The parse errors of ids and states already name what was expected and the input.
    let _ = what;
    T::from_str(text).map_err(|e| CliError::new(exit::BAD_INPUT, e.to_string()))
}

/// The time a purge's `--older-than` or `--ended-before` names.
pub(crate) fn cutoff(cutoff: &crate::args::Cutoff) -> Result<chrono::DateTime<chrono::Utc>> {
    match (&cutoff.older_than, &cutoff.ended_before) {
        (Some(age), None) => chrono::Duration::from_std(*age)
            .ok()
            .and_then(|age| chrono::Utc::now().checked_sub_signed(age))
            .ok_or_else(|| {
                CliError::new(
                    exit::BAD_INPUT,
                    format!(
                        "--older-than {} reaches before any time",
                        humantime::format_duration(*age)
                    ),
                )
            }),
        (None, Some(time)) => chrono::DateTime::parse_from_rfc3339(time)
            .map(|t| t.with_timezone(&chrono::Utc))
            .map_err(|e| {
                CliError::new(
                    exit::BAD_INPUT,
                    format!("--ended-before {time:?} is not an RFC 3339 time: {e}"),
                )
            }),
        // clap's group makes exactly one of them required.
        _ => Err(CliError::new(
            exit::BAD_INPUT,
            "give exactly one of --older-than and --ended-before",
        )),
    }
}

/// Runs a purge: `once(cutoff, n)` deletes up to `n` ended `what`s (runs or jobs), and is
/// called until a call deletes fewer than the batch; then reports the total.
///
/// Runs are kept for `PURGE_MIN_AGE` after they end whatever the cutoff (`runs`), so the cutoff
/// reported for them is the one the store applies.
pub(crate) async fn purge<F, Fut>(
    what: &str,
    args: &crate::args::PurgeArgs,
    runs: bool,
    mut once: F,
) -> Result<()>
where
    F: FnMut(chrono::DateTime<chrono::Utc>, u32) -> Fut,
    Fut: std::future::Future<Output = Result<u64>>,
{
    let mut before = cutoff(&args.cutoff)?;
    if runs {
        before = baton_core::store::purge_cutoff(before, chrono::Utc::now());
    }
    let batch = args.batch.max(1);
    let mut purged = 0;
    loop {
        let n = once(before, batch).await?;
        purged += n;
        if n < u64::from(batch) {
            break;
        }
    }
    if args.json {
        return crate::output::print_json(
            &serde_json::json!({ "purged": purged, "ended_before": before }),
        );
    }
    outln!(
        "purged {purged} {what}{} that ended before {}",
        if purged == 1 { "" } else { "s" },
        before.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
    Ok(())
}

/// Parses a JSON argument.
pub(crate) fn parse_json(what: &str, text: &str) -> Result<serde_json::Value> {
    serde_json::from_str(text)
        .map_err(|e| CliError::new(exit::BAD_INPUT, format!("{what} is not valid JSON: {e}")))
}
