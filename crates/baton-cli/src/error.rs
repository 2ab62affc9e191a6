//! The command's error: one line of message, an optional cause, and an exit code.

use std::fmt;

use baton_core::{board, engine, store};

use crate::exit;

/// An error the command reports and exits with.
#[derive(Debug)]
pub struct CliError {
    /// The exit code.
    pub code: i32,
    /// What went wrong, in one line.
    pub message: String,
    /// The underlying cause, if any.
    pub cause: Option<String>,
}

impl CliError {
    /// An error with a code and a message.
    pub fn new(code: i32, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            cause: None,
        }
    }

    /// Adds the chain of causes of `err`.
    #[must_use]
    pub fn caused_by(mut self, err: &(dyn std::error::Error + 'static)) -> Self {
        let mut causes = Vec::new();
        let mut source = Some(err);
        while let Some(e) = source {
            let text = e.to_string();
            // Many errors repeat their source's text in their own: keep each fact once.
            let known =
                self.message.contains(&text) || causes.iter().any(|c: &String| c.contains(&text));
            if !known {
                causes.push(text);
            }
            source = e.source();
        }
        self.cause = (!causes.is_empty()).then(|| causes.join(": "));
        self
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "error: {}", shown(&self.message))?;
        if let Some(cause) = &self.cause {
            write!(f, "\n  caused by: {}", shown(cause))?;
        }
        Ok(())
    }
}

/// The most characters of a message (or of its cause) shown.
const MAX_SHOWN: usize = 1000;

/// `text` as one line of reasonable length, whatever the input it quotes: control characters
/// (a newline, a terminal escape sequence) are shown escaped, and the middle of a text longer
/// than [`MAX_SHOWN`] characters (a 100 KB value echoed back) is cut, keeping its head and its
/// tail, which usually says what was wrong.
fn shown(text: &str) -> String {
    let mut line = String::with_capacity(text.len().min(4 * MAX_SHOWN));
    for c in text.chars() {
        if c.is_control() {
            line.extend(c.escape_default());
        } else {
            line.push(c);
        }
    }
    let count = line.chars().count();
    if count <= MAX_SHOWN {
        return line;
    }
    let (head, tail) = (MAX_SHOWN * 2 / 3, MAX_SHOWN / 4);
    let cut = count - head - tail;
    let mut chars = line.chars();
    let start: String = chars.by_ref().take(head).collect();
    let end: String = chars.skip(cut).collect();
    format!("{start} [… {cut} characters cut …] {end}")
}

/// The exit code for a store error.
pub(crate) fn store_code(e: &store::Error) -> i32 {
    match e {
        store::Error::FlowNotFound(_)
        | store::Error::AtomNotFound { .. }
        | store::Error::UnknownCursor(_) => exit::NOT_FOUND,
        store::Error::Unavailable(_) => exit::UNAVAILABLE,
        store::Error::Conflict { .. }
        | store::Error::IllegalTransition { .. }
        | store::Error::Fenced { .. }
        | store::Error::FlowExists(_) => exit::CONFLICT,
        store::Error::TooLarge { .. } => exit::BAD_INPUT,
        _ => exit::INTERNAL,
    }
}

impl From<store::Error> for CliError {
    fn from(e: store::Error) -> Self {
        let code = store_code(&e);
        let message = match &e {
            store::Error::Unavailable(_) => "the database cannot be reached".to_owned(),
            other => other.to_string(),
        };
        CliError::new(code, message).caused_by(&e)
    }
}

impl From<board::Error> for CliError {
    fn from(e: board::Error) -> Self {
        let code = match &e {
            board::Error::JobNotFound(_) | board::Error::UnknownCursor(_) => exit::NOT_FOUND,
            board::Error::InvalidJob(_) | board::Error::TooLarge { .. } => exit::BAD_INPUT,
            board::Error::InvalidState { .. }
            | board::Error::ClaimLost { .. }
            | board::Error::Ended { .. } => exit::CONFLICT,
            board::Error::Unavailable(_) => exit::UNAVAILABLE,
            _ => exit::INTERNAL,
        };
        let message = match &e {
            board::Error::Unavailable(_) => "the database cannot be reached".to_owned(),
            other => other.to_string(),
        };
        CliError::new(code, message).caused_by(&e)
    }
}

impl From<baton_core::handle::Error> for CliError {
    fn from(e: baton_core::handle::Error) -> Self {
        match e {
            baton_core::handle::Error::Board(b) => b.into(),
            // An outcome baton cannot read.
            other => CliError::new(exit::INTERNAL, other.to_string()).caused_by(&other),
        }
    }
}

impl From<engine::Error> for CliError {
    fn from(e: engine::Error) -> Self {
        match e {
            engine::Error::Store(s) => s.into(),
            other => {
                let code = match &other {
                    engine::Error::MissingInput { .. } => exit::BAD_INPUT,
                    _ => exit::INTERNAL,
                };
                CliError::new(code, other.to_string())
            }
        }
    }
}

impl From<baton_core::recovery::Error> for CliError {
    fn from(e: baton_core::recovery::Error) -> Self {
        use baton_core::recovery::Error as R;
        match e {
            R::Store(s) => s.into(),
            R::Board(b) => b.into(),
            R::NoJob { .. } => CliError::new(exit::NOT_FOUND, e.to_string()),
            other => CliError::new(exit::CONFLICT, other.to_string()),
        }
    }
}

impl From<baton_sql::Error> for CliError {
    fn from(e: baton_sql::Error) -> Self {
        match e {
            baton_sql::Error::Store(s) => s.into(),
            baton_sql::Error::UnknownScheme { .. }
            | baton_sql::Error::Config { .. }
            | baton_sql::Error::InvalidSchema { .. }
            | baton_sql::Error::BackendDisabled { .. } => {
                CliError::new(exit::BAD_INPUT, e.to_string())
            }
            other => CliError::new(exit::INTERNAL, other.to_string()).caused_by(&other),
        }
    }
}

/// The result type of commands.
pub(crate) type Result<T, E = CliError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_one_line_whatever_they_quote() {
        let e = CliError::new(exit::BAD_INPUT, "bad \"a\nb\x1b[2J\"");
        assert_eq!(e.to_string(), "error: bad \"a\\nb\\u{1b}[2J\"");
        let long = format!("--fail-at {:?} names no atom", "x".repeat(100_000));
        let shown = CliError::new(exit::BAD_INPUT, long).to_string();
        assert!(shown.len() < 1100, "{}", shown.len());
        assert!(shown.starts_with("error: --fail-at \"xxx"), "{shown}");
        assert!(shown.ends_with("xxx\" names no atom"), "{shown}");
        assert!(shown.contains("[… 99110 characters cut …]"), "{shown}");
    }
}
