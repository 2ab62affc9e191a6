//! Human and machine output: aligned tables (coloured on a terminal), JSON for scripts.
//!
//! Only this module and the command modules write to stdout.

use std::io::{IsTerminal, Write};

use chrono::{DateTime, Utc};
use comfy_table::{presets, Cell, Color, ContentArrangement, Table};
use serde::Serialize;

/// How output is styled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Style {
    /// Whether to use colour.
    pub(crate) color: bool,
}

impl Style {
    /// Colour on a terminal (unless `NO_COLOR` is set), plain when piped; `choice` overrides.
    #[must_use]
    pub(crate) fn detect(choice: ColorChoice) -> Self {
        let color = match choice {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => {
                std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
            }
        };
        Self { color }
    }
}

/// The `--color` option.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum ColorChoice {
    /// Colour on a terminal.
    #[default]
    Auto,
    /// Always colour.
    Always,
    /// Never colour.
    Never,
}

/// A table with the project's look: no borders, aligned columns, a header.
#[must_use]
pub(crate) fn table(style: Style, header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled);
    if style.color {
        t.enforce_styling();
    } else {
        t.force_no_tty();
    }
    t.set_header(header.iter().map(|h| Cell::new(h.to_uppercase())));
    t
}

/// A cell for a state word, coloured by what it means.
#[must_use]
pub(crate) fn state_cell(style: Style, state: &str) -> Cell {
    let cell = Cell::new(state);
    if !style.color {
        return cell;
    }
    match state {
        "SUCCESS" | "COMPLETE" => cell.fg(Color::Green),
        "FAILURE" | "REVERT_FAILURE" | "TRASHED" => cell.fg(Color::Red),
        "REVERTING" | "REVERTED" | "RETRYING" | "SUSPENDED" | "SUSPENDING" => {
            cell.fg(Color::Yellow)
        }
        "RUNNING" | "CLAIMED" | "RESUMING" => cell.fg(Color::Cyan),
        _ => cell,
    }
}

/// Prints a table (no left margin, two spaces between columns, trailing spaces trimmed, so
/// output diffs cleanly).
pub(crate) fn print_table(t: &Table) {
    let mut t = t.clone();
    for column in t.column_iter_mut() {
        column.set_padding((0, 2));
    }
    let text = t.to_string();
    let mut out = std::io::stdout().lock();
    for line in text.lines() {
        let _ = writeln!(out, "{}", line.trim_end());
    }
}

/// Prints a value as pretty JSON.
pub(crate) fn print_json<T: Serialize>(value: &T) -> crate::error::Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| {
        crate::error::CliError::new(crate::exit::INTERNAL, format!("cannot render JSON: {e}"))
    })?;
    outln!("{text}");
    Ok(())
}

/// A timestamp for humans: UTC, to the second.
#[must_use]
pub(crate) fn time(t: Option<DateTime<Utc>>) -> String {
    t.map_or_else(
        || "-".to_owned(),
        |t| t.format("%Y-%m-%d %H:%M:%S").to_string(),
    )
}

/// A duration between two times, for humans.
#[must_use]
pub(crate) fn duration(from: Option<DateTime<Utc>>, to: Option<DateTime<Utc>>) -> String {
    match (from, to) {
        (Some(a), Some(b)) if b >= a => {
            let ms = (b - a).num_milliseconds();
            if ms < 1000 {
                format!("{ms}ms")
            } else {
                format!("{:.1}s", ms as f64 / 1000.0)
            }
        }
        _ => "-".to_owned(),
    }
}

/// Text shortened to `max` characters (on a character boundary), with an ellipsis.
#[must_use]
pub(crate) fn truncate_text(text: &str, max: usize) -> String {
    if text.chars().count() > max {
        let cut: String = text.chars().take(max.saturating_sub(1)).collect();
        format!("{cut}…")
    } else {
        text.to_owned()
    }
}

/// JSON shortened to `max` characters (on a character boundary), with an ellipsis.
#[must_use]
pub(crate) fn truncate(value: &serde_json::Value, max: Option<usize>) -> String {
    let text = value.to_string();
    match max {
        Some(max) if text.chars().count() > max => {
            let cut: String = text.chars().take(max.saturating_sub(1)).collect();
            format!("{cut}…")
        }
        _ => text,
    }
}

/// After a page of `shown` rows printed with `--limit limit`: when the page is full, says on
/// stderr how to ask for the next one (`--after` with the page's last row, `last`). stdout
/// keeps only the rows (a plain JSON array with `--json`), so a script pages with the last
/// id it read.
pub(crate) fn page_hint(shown: usize, limit: usize, last: Option<impl std::fmt::Display>) {
    if let Some(last) = last.filter(|_| shown >= limit) {
        eprintln!("more may follow: the next page is --after {last}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn truncation_keeps_short_values_and_cuts_long_ones() {
        assert_eq!(truncate(&json!("abc"), Some(10)), "\"abc\"");
        assert_eq!(truncate(&json!("abcdefghij"), Some(6)), "\"abcd…");
        assert_eq!(truncate(&json!("abcdefghij"), None), "\"abcdefghij\"");
        assert_eq!(truncate(&json!("ééééé"), Some(4)).chars().count(), 4);
    }

    #[test]
    fn durations_read_naturally() {
        let t = Utc::now();
        assert_eq!(
            duration(Some(t), Some(t + chrono::Duration::milliseconds(250))),
            "250ms"
        );
        assert_eq!(
            duration(Some(t), Some(t + chrono::Duration::milliseconds(2500))),
            "2.5s"
        );
        assert_eq!(duration(None, Some(t)), "-");
    }
}
