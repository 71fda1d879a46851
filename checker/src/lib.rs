//! seedkv-checker: is a recorded history of client operations linearizable?
//!
//! seedkv is a Raft-replicated key-value store; this crate is the judge of its
//! tests. It takes a history — every client operation with its invocation and
//! completion time and what it returned ([`Record`]) — and decides whether some
//! total order of the operations, consistent with real time, explains every result
//! under a sequential model of the store ([`Model`]).
//!
//! The method is Porcupine's:
//! 1. split the history into independent partitions by key; an operation touching
//!    several keys (a `Batch`) joins them into one partition, so atomic multi-key
//!    operations are still checked precisely (`partition`);
//! 2. check each partition with the Wing–Gong/Lowe search over a linked list of
//!    call/return entries, with a memo of explored (linearized set, state)
//!    configurations and an explicit backtracking stack (`search`).
//!
//! Operations whose outcome is unknown (time-outs, `:info`, still pending at the
//! end) return at +infinity and may take effect at any point after their call, or
//! never. Reads with unknown outcome are dropped.
//!
//! Besides seedkv's own JSON-lines format ([`Format::Seedkv`], see [`Record`] and
//! `docs/HISTORY_FORMAT.md`), [`parse_history`] reads Jepsen etcd logs and
//! Porcupine kv files, the reference histories the tests use to prove the checker.
//!
//! ```
//! use seedkv_checker::{check_records, parse_history, Verdict};
//! let text = r#"
//! {"client":1,"call_ns":0,"return_ns":10,"op":{"type":"put","key":"a","value":"1"},"result":{"type":"put","revision":1}}
//! {"client":2,"call_ns":20,"return_ns":30,"op":{"type":"get","key":"a"},"result":{"type":"get","value":null,"revision":0}}
//! "#;
//! let (records, format) = parse_history(text).unwrap();
//! let report = check_records(&records, format.default_model()).unwrap();
//! assert_eq!(report.verdict, Verdict::NotLinearizable); // stale read
//! ```

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]
#![warn(missing_docs)]

mod brute;
mod error;
mod fxhash;
mod model;
mod parse;
mod partition;
mod record;
mod search;

use std::fmt;
use std::path::Path;

pub use brute::{check_brute_force, BRUTE_FORCE_MAX_OPS};
pub use error::{CheckError, Error, ParseError, ParseModelError};
pub use model::Model;
pub use parse::{detect_format, parse_history, parse_history_as, Format, JEPSEN_KEY};
pub use record::{validate_record, Op, OpResult, Record};

/// The answer for a whole history.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Some real-time-respecting order of the operations explains every result.
    Linearizable,
    /// No such order exists.
    NotLinearizable,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Linearizable => "linearizable",
            Verdict::NotLinearizable => "not linearizable",
        })
    }
}

/// What [`check_records`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckReport {
    /// The verdict for the whole history.
    pub verdict: Verdict,
    /// Number of records in the history (including dropped unknown-outcome reads).
    pub operations: usize,
    /// Number of independent partitions the history was split into.
    pub partitions: usize,
    /// For a non-linearizable history: the key(s) of the first partition (in order
    /// of first appearance) that is not linearizable, joined by ", ".
    pub failing_partition: Option<String>,
}

/// Checks `records` for linearizability against `model`.
///
/// Partitions are checked in order of first appearance; checking stops at the
/// first one that is not linearizable. Errors only if a record breaks the format's
/// rules (see [`validate_record`]).
pub fn check_records(records: &[Record], model: Model) -> Result<CheckReport, CheckError> {
    let mut partitions = partition::split(records, model)?;
    let count = partitions.len();
    for part in partitions.iter_mut() {
        if !search::check_partition(part) {
            return Ok(CheckReport {
                verdict: Verdict::NotLinearizable,
                operations: records.len(),
                partitions: count,
                failing_partition: Some(part.name()),
            });
        }
    }
    Ok(CheckReport {
        verdict: Verdict::Linearizable,
        operations: records.len(),
        partitions: count,
        failing_partition: None,
    })
}

/// Reads, parses (detecting the format) and checks a history file. `model: None`
/// uses the format's default model ([`Format::default_model`]).
pub fn check_file(path: &Path, model: Option<Model>) -> Result<CheckReport, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let (records, format) = parse_history(&text).map_err(|source| Error::Parse {
        path: path.to_path_buf(),
        source,
    })?;
    check_records(&records, model.unwrap_or(format.default_model())).map_err(|source| {
        Error::Check {
            path: path.to_path_buf(),
            source,
        }
    })
}
