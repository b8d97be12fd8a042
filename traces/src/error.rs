//! The one error type of this crate: every failure names the source (file or built-in name),
//! and where it can, the line and the field.

use std::fmt;

/// Where in an input a problem was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// File path, or `builtin:NAME` for embedded data.
    pub source: String,
    /// 1-based line number, when the problem belongs to one line.
    pub line: Option<u64>,
    /// Column or field name, when the problem belongs to one field.
    pub field: Option<String>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.source)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(field) = &self.field {
            write!(f, " field `{field}`")?;
        }
        Ok(())
    }
}

/// A malformed or unusable input.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{location}: cannot read: {cause}")]
    Io { location: Location, cause: std::io::Error },
    #[error("{location}: {problem}")]
    Malformed { location: Location, problem: String },
}

impl DataError {
    pub fn malformed(source: &str, line: Option<u64>, field: Option<&str>, problem: impl Into<String>) -> Self {
        DataError::Malformed {
            location: Location { source: source.to_string(), line, field: field.map(str::to_string) },
            problem: problem.into(),
        }
    }

    pub fn io(source: &str, cause: std::io::Error) -> Self {
        DataError::Io { location: Location { source: source.to_string(), line: None, field: None }, cause }
    }
}

pub type Result<T> = std::result::Result<T, DataError>;
