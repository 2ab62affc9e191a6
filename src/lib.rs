//! baton: durable, distributed workflows.
//!
//! Flows are DAGs of tasks with `execute` and `revert`; an engine runs them and persists every
//! step before acting on it, so a flow interrupted at any point resumes where it stopped, in
//! the same process or another one. This facade re-exports [`baton_core`], and the SQL stores
//! of `baton-sql` as [`sql`] (features `sqlite`, on by default, and `postgres`).
//!
//! Flows written in Rust are best built with [`typed`]: typed tasks, and flows whose wiring
//! the compiler checks. See the repository's `docs/` for the user guide.
//!
//! With the feature `testing` (for dev-dependencies), `testing` checks that a flow of yours
//! ends the same when its engine is killed at any write, and asserts on a run's history;
//! [`Clock::tokio`] lets tests skip backoff and time limits under tokio's paused time.
//!
//! With the feature `otlp`, `otlp` exports baton's tracing spans (a trace per job: its
//! flow and each atom run) to an OpenTelemetry collector over OTLP/HTTP, configured by the
//! standard `OTEL_*` environment variables.

#![forbid(unsafe_code)]

pub use baton_core::*;

/// Testing your flows: a crash test, history assertions (feature `testing`).
#[cfg(feature = "testing")]
pub use baton_core::testing;

#[cfg(feature = "otlp")]
pub mod otlp;

/// Durable stores on SQLite and PostgreSQL (`baton-sql`): [`sql::connect`] opens one by URL.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub use baton_sql as sql;

/// The guides in `docs/`, whose Rust examples are compiled (and those that need no database
/// or network, run) as this crate's doctests, so that they cannot drift from the code.
#[cfg(all(doctest, feature = "sqlite"))]
mod guides {
    #[doc = include_str!("../docs/concepts.md")]
    struct Concepts;
    #[doc = include_str!("../docs/getting-started.md")]
    struct GettingStarted;
    #[doc = include_str!("../docs/guide.md")]
    struct Guide;
    #[doc = include_str!("../docs/operations.md")]
    struct Operations;
    #[doc = include_str!("../docs/performance.md")]
    struct Performance;
    #[doc = include_str!("../docs/stores.md")]
    struct Stores;
    #[doc = include_str!("../docs/taskflow.md")]
    struct Taskflow;
    #[doc = include_str!("../docs/cli.md")]
    struct Cli;
}

#[cfg(test)]
mod tests {
    /// The getting-started guide shows the summary a conductor prints as the code prints it,
    /// every field included.
    #[test]
    fn the_getting_started_guide_shows_a_summary_as_it_prints() {
        let guide = include_str!("../docs/getting-started.md");
        let shown = guide
            .lines()
            .find(|l| l.starts_with("Summary {"))
            .expect("the guide shows a summary");
        let mut summary = crate::conductor::Summary::default();
        summary.claimed = 3;
        summary.consumed = 2;
        summary.parked = 1;
        assert_eq!(shown, format!("{summary:?}"));
    }

    /// The code blocks of a markdown text whose language is `lang`.
    fn blocks<'a>(markdown: &'a str, lang: &str) -> Vec<&'a str> {
        let mut blocks = Vec::new();
        let mut rest = markdown;
        while let Some(start) = rest.find("\n```") {
            let after = &rest[start + 4..];
            let (info, body) = after.split_once('\n').unwrap_or((after, ""));
            let end = body.find("\n```").unwrap_or(body.len());
            if info.split([' ', ',']).next() == Some(lang) {
                blocks.push(&body[..end]);
            }
            rest = &body[end..];
            // Past the closing fence.
            rest = rest.get(4..).unwrap_or("");
        }
        blocks
    }

    /// The crates a piece of Rust code names by path (`serde_json::json`, `#[tokio::main]`).
    fn crates_named(code: &str) -> std::collections::BTreeSet<String> {
        let mut named = std::collections::BTreeSet::new();
        for (at, _) in code.match_indices("::") {
            let before = &code[..at];
            let start = before
                .rfind(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
                .map_or(0, |i| i + 1);
            let ident = &before[start..];
            let preceded = before[..start].chars().next_back();
            let joined = preceded.is_some_and(|c| c.is_alphanumeric() || "_:.".contains(c));
            if !ident.is_empty() && !joined {
                named.insert(ident.to_owned());
            }
        }
        named
    }

    /// The dependency list of the getting-started guide has every crate that its examples and
    /// the user guide's name.
    #[test]
    fn the_getting_started_dependencies_cover_the_guides_examples() {
        let start = include_str!("../docs/getting-started.md");
        let guide = include_str!("../docs/guide.md");
        let listed: Vec<String> = blocks(start, "toml")
            .concat()
            .lines()
            .filter_map(|l| {
                l.split_once(" = ")
                    .map(|(name, _)| name.trim().replace('-', "_"))
            })
            .collect();
        assert!(listed.contains(&"baton".to_owned()), "{listed:?}");
        let mut needed = std::collections::BTreeSet::new();
        for code in blocks(start, "rust")
            .into_iter()
            .chain(blocks(guide, "rust"))
        {
            needed.extend(crates_named(code));
        }
        for builtin in ["std", "core", "alloc", "crate", "self", "super"] {
            needed.remove(builtin);
        }
        let missing: Vec<&String> = needed.iter().filter(|c| !listed.contains(c)).collect();
        assert!(
            missing.is_empty(),
            "not in the guide's [dependencies]: {missing:?}"
        );
        assert!(
            needed.contains("async_trait") && needed.contains("tokio"),
            "{needed:?}"
        );
    }
}
