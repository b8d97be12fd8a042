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
    /// The input could not be read.
    #[error("{location}: cannot read: {cause}")]
    Io {
        /// Which input.
        location: Location,
        /// Why.
        cause: std::io::Error,
    },
    /// A file named by a request that it may not read: outside the data roots, not a regular
    /// file, too large, or missing (which of these is not said).
    #[error("{0}: not allowed: name builtin:NAME or a regular file of at most {max} MiB under the server's data roots", max = crate::source::MAX_CONFINED_BYTES >> 20)]
    NotAllowed(String),
    /// The input was read but is malformed or out of range.
    #[error("{location}: {problem}")]
    Malformed {
        /// Where: the input, and the line and field where known.
        location: Location,
        /// What is wrong, with the value.
        problem: String,
    },
}

impl DataError {
    /// A malformed input, at `line` and `field` of `source` where known.
    pub fn malformed(source: &str, line: Option<u64>, field: Option<&str>, problem: impl Into<String>) -> Self {
        DataError::Malformed {
            location: Location { source: source.to_string(), line, field: field.map(str::to_string) },
            problem: problem.into(),
        }
    }

    /// An unreadable input.
    pub fn io(source: &str, cause: std::io::Error) -> Self {
        DataError::Io { location: Location { source: source.to_string(), line: None, field: None }, cause }
    }
}

/// This crate's results.
pub type Result<T> = std::result::Result<T, DataError>;
