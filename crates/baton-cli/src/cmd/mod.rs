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

/// Parses a JSON argument.
pub(crate) fn parse_json(what: &str, text: &str) -> Result<serde_json::Value> {
    serde_json::from_str(text)
        .map_err(|e| CliError::new(exit::BAD_INPUT, format!("{what} is not valid JSON: {e}")))
}
