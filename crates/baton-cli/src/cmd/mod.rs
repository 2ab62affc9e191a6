//! The commands.

pub(crate) mod conductors;
pub(crate) mod demo;
pub(crate) mod flows;
pub(crate) mod jobs;
pub(crate) mod recover;
pub(crate) mod serve;

use std::borrow::Cow;
use std::io::Read;
use std::str::FromStr;

use serde_json::Value;

use crate::error::{CliError, Result};
use crate::exit;

/// The database a command works on. A command opens it once it has checked what it can
/// without it, so that bad input is refused before anything is touched (or a SQLite file
/// created).
#[derive(Debug)]
pub(crate) struct Database {
    /// `--db`.
    pub(crate) url: String,
    /// `--schema`.
    pub(crate) schema: Option<String>,
    /// Whether `--db` was given on the command line (rather than by the environment or the
    /// default), so that a hint must repeat it.
    pub(crate) url_given: bool,
    /// Whether `--schema` was given on the command line.
    pub(crate) schema_given: bool,
}

impl Database {
    /// Opens the store and its job board, applying any pending migrations, with the default
    /// call timeout.
    pub(crate) async fn open(&self) -> Result<baton_sql::Backends> {
        self.open_with(baton_sql::OpenOptions::new()).await
    }

    /// [`Database::open`] with options (the schema is the command line's).
    pub(crate) async fn open_with(
        &self,
        mut options: baton_sql::OpenOptions,
    ) -> Result<baton_sql::Backends> {
        if let Some(schema) = &self.schema {
            options = options.schema(schema);
        }
        Ok(baton_sql::open_with(&self.url, options).await?)
    }

    /// The URL as the command shows it: without its password.
    pub(crate) fn shown(&self) -> Cow<'_, str> {
        baton_sql::redact_url(&self.url)
    }

    /// The global options a suggested command needs to reach this database again: those given
    /// on the command line (the environment still holds the others), the password hidden;
    /// and whether a password was hidden (the hint then needs the URL from elsewhere).
    pub(crate) fn hint_args(&self) -> (String, bool) {
        let mut args = String::new();
        let shown = self.shown();
        let hidden = self.url_given && shown != self.url;
        if self.url_given {
            args.push_str(&format!("--db {} ", crate::hint::quote(&shown)));
        }
        if let (true, Some(schema)) = (self.schema_given, &self.schema) {
            args.push_str(&format!("--schema {} ", crate::hint::quote(schema)));
        }
        (args, hidden)
    }
}

/// Returns when the process is asked to stop (SIGINT or SIGTERM), or when `shutdown` is
/// cancelled; `true` for a signal.
pub(crate) async fn signalled(shutdown: &tokio_util::sync::CancellationToken) -> bool {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => true,
        () = term => true,
        () = shutdown.cancelled() => false,
    }
}

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

/// A listing's `--after`: the id of the last row of the previous page.
pub(crate) fn parse_after<T>(text: &str) -> Result<T>
where
    T: FromStr,
    T::Err: std::fmt::Display,
{
    T::from_str(text).map_err(|e| {
        CliError::new(
            exit::BAD_INPUT,
            format!("--after takes the id of the last row of a page: {e}"),
        )
    })
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

/// The time a `--deadline` names: `within` from now, which must be positive and within the
/// clock's range.
pub(crate) fn deadline_from_now(
    within: std::time::Duration,
) -> Result<chrono::DateTime<chrono::Utc>> {
    let shown = humantime::format_duration(within);
    if within.is_zero() {
        return Err(CliError::new(
            exit::BAD_INPUT,
            format!("--deadline {shown} is not in the future: give a positive duration, e.g. 30m"),
        ));
    }
    chrono::Duration::from_std(within)
        .ok()
        .and_then(|d| chrono::Utc::now().checked_add_signed(d))
        .ok_or_else(|| {
            CliError::new(
                exit::BAD_INPUT,
                format!("--deadline {shown} reaches past any time the clock can hold"),
            )
        })
}

/// Runs a purge: `once(before, n)` deletes up to `n` `what`s (runs or jobs) that ended before
/// `before`, and is called until a call deletes fewer than the batch; then reports the total
/// and the cutoff (for runs, give the one the store applies: `store::purge_cutoff`).
pub(crate) async fn purge<F, Fut>(
    what: &str,
    args: &crate::args::PurgeArgs,
    before: chrono::DateTime<chrono::Utc>,
    mut once: F,
) -> Result<()>
where
    F: FnMut(chrono::DateTime<chrono::Utc>, u32) -> Fut,
    Fut: std::future::Future<Output = Result<u64>>,
{
    let batch = args.batch;
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

/// The most a JSON document given as `@FILE` or `-` may hold: the command refuses more rather
/// than read without bound. (A job board has its own limit on a job's parameters.)
pub(crate) const MAX_JSON_BYTES: usize = 8 << 20;

/// What a JSON argument must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Json {
    /// Any JSON value.
    Any,
    /// A JSON object.
    Object,
}

/// The JSON document the option `what` (e.g. `--params`) gives: `text` itself, or the
/// contents of the file `@PATH`, or of standard input for `-`, at most [`MAX_JSON_BYTES`].
pub(crate) fn json_arg(what: &str, text: &str, want: Json) -> Result<Value> {
    let (from, bytes) = if text == "-" {
        let bytes = read_bounded(what, "standard input", std::io::stdin().lock())?;
        (" from standard input".to_owned(), Cow::Owned(bytes))
    } else if let Some(path) = text.strip_prefix('@') {
        if path.is_empty() {
            return Err(CliError::new(
                exit::BAD_INPUT,
                format!("{what} @ names no file: give @PATH, or - for standard input"),
            ));
        }
        let file = std::fs::File::open(path).map_err(|e| {
            CliError::new(exit::BAD_INPUT, format!("cannot open {what} file {path:?}"))
                .caused_by(&e)
        })?;
        let bytes = read_bounded(what, &format!("file {path:?}"), file)?;
        (format!(" in {path:?}"), Cow::Owned(bytes))
    } else {
        (String::new(), Cow::Borrowed(text.as_bytes()))
    };
    // Editors on some systems start UTF-8 files with a byte-order mark; JSON has none.
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&bytes);
    let value: Value = serde_json::from_slice(bytes).map_err(|e| {
        CliError::new(
            exit::BAD_INPUT,
            format!("{what}{from} is not valid JSON: {e}"),
        )
    })?;
    if want == Json::Object && !value.is_object() {
        let found = match &value {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Number(_) => "a number",
            Value::String(_) => "a string",
            Value::Array(_) => "an array",
            Value::Object(_) => "an object",
        };
        return Err(CliError::new(
            exit::BAD_INPUT,
            format!("{what}{from} must be a JSON object, not {found}"),
        ));
    }
    Ok(value)
}

/// All of `source`, the `from` of the option `what`, unless it holds more than
/// [`MAX_JSON_BYTES`].
fn read_bounded(what: &str, from: &str, source: impl Read) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    let limit = u64::try_from(MAX_JSON_BYTES).unwrap_or(u64::MAX);
    source
        .take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| {
            CliError::new(exit::BAD_INPUT, format!("cannot read {what} from {from}")).caused_by(&e)
        })?;
    if bytes.len() > MAX_JSON_BYTES {
        return Err(CliError::new(
            exit::BAD_INPUT,
            format!(
                "{what} from {from} holds more than {} MiB, the most the command reads",
                MAX_JSON_BYTES >> 20
            ),
        ));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db(url: &str, schema: Option<&str>, url_given: bool, schema_given: bool) -> Database {
        Database {
            url: url.into(),
            schema: schema.map(Into::into),
            url_given,
            schema_given,
        }
    }

    /// A hint repeats what the command line gave, quoted and without a password, and leaves
    /// out what the environment or the defaults gave.
    #[test]
    fn hints_repeat_the_database_the_command_line_named() {
        assert_eq!(
            db("sqlite://baton.db", None, false, false).hint_args(),
            (String::new(), false)
        );
        assert_eq!(
            db("postgres://u:pw@h/db", Some("ops"), false, true).hint_args(),
            ("--schema ops ".into(), false)
        );
        assert_eq!(
            db("postgres://u:pw@h/db", Some("ops"), true, false).hint_args(),
            ("--db 'postgres://u:***@h/db' ".into(), true)
        );
        assert_eq!(
            db("sqlite:///tmp/a b.db", None, true, false).hint_args(),
            ("--db 'sqlite:///tmp/a b.db' ".into(), false)
        );
    }
}
