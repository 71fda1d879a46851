//! Error types.
//!
//! Kept in one module so that every input-fed path (parsing a file, validating
//! records, reading from disk) reports malformed input as a value naming where and
//! what, instead of panicking.

use std::path::PathBuf;

/// A history text could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// A line is malformed. `line` is 1-based.
    #[error("line {line}: {message}")]
    Line {
        /// 1-based line number in the input.
        line: usize,
        /// What is wrong with it.
        message: String,
    },
    /// No line looks like any accepted format.
    #[error("unrecognised history format: no line looks like a seedkv JSON record, a Jepsen etcd log line or a Porcupine kv event (first non-blank line {line}: {snippet:?})")]
    UnknownFormat {
        /// 1-based line number of the first non-blank line.
        line: usize,
        /// The start of that line.
        snippet: String,
    },
}

impl ParseError {
    pub(crate) fn at(line: usize, message: impl Into<String>) -> Self {
        ParseError::Line {
            line,
            message: message.into(),
        }
    }
}

/// A list of records cannot be checked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckError {
    /// Record number `index` (0-based) breaks a rule of the format.
    #[error("record {index}: {message}")]
    InvalidRecord {
        /// 0-based index into the slice of records.
        index: usize,
        /// What is wrong with it.
        message: String,
    },
    /// The brute-force checker was given more operations than it can enumerate.
    #[error("brute-force checking is limited to {max} operations, got {count}")]
    TooManyOperations {
        /// Number of operations given.
        count: usize,
        /// The limit.
        max: usize,
    },
}

/// The model name given to [`crate::Model::from_str`](std::str::FromStr) is unknown.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown model {0:?}: expected \"kv\" or \"register\"")]
pub struct ParseModelError(pub String);

/// Anything that can go wrong in [`crate::check_file`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file could not be parsed.
    #[error("{}: {source}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The underlying error (names the line).
        #[source]
        source: ParseError,
    },
    /// The parsed records could not be checked.
    #[error("{}: {source}", path.display())]
    Check {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: CheckError,
    },
}
