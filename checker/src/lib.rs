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
//!    configurations and an explicit backtracking stack (`search`);
//! 3. run those searches interleaved in bounded slices, so the first partition
//!    that fails ends the check, within a time and memory [`Budget`] past which
//!    the verdict is [`Verdict::Unknown`] (`schedule`).
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
mod schedule;
mod search;

use std::fmt;
use std::path::Path;

pub use brute::{check_brute_force, BRUTE_FORCE_MAX_OPS};
pub use error::{CheckError, Error, ParseError, ParseModelError};
pub use model::Model;
pub use parse::{detect_format, parse_history, parse_history_as, Format, JEPSEN_KEY};
pub use record::{validate_record, Op, OpResult, ReadValue, Record};
pub use schedule::{Budget, Limit, DEFAULT_MAX_SEARCH_BYTES};

/// The answer for a whole history.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Some real-time-respecting order of the operations explains every result.
    Linearizable,
    /// No such order exists.
    NotLinearizable,
    /// The budget ran out with some partition undecided and none failed.
    Unknown,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Linearizable => "linearizable",
            Verdict::NotLinearizable => "not linearizable",
            Verdict::Unknown => "unknown",
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
    /// For a non-linearizable history: the key(s) of the partition found not
    /// linearizable, joined by ", ".
    pub failing_partition: Option<String>,
    /// The partitions (keys joined by ", ") left undecided: for an unknown verdict, those
    /// that made it unknown; for a non-linearizable one, any given up before the failure
    /// was found.
    pub undecided: Vec<String>,
    /// The part of the budget that ran out first, if any did.
    pub limit: Option<Limit>,
}

/// Checks `records` for linearizability against `model`, within the default
/// [`Budget`] (no time limit; [`DEFAULT_MAX_SEARCH_BYTES`] of search memory).
pub fn check_records(records: &[Record], model: Model) -> Result<CheckReport, CheckError> {
    check_records_within(records, model, &Budget::default())
}

/// Checks `records` for linearizability against `model`, within `budget`.
///
/// Partitions are searched interleaved; the first one found not linearizable
/// ends the check, wherever it stands in the history. Errors only if a record
/// breaks the format's rules (see [`validate_record`]).
pub fn check_records_within(
    records: &[Record],
    model: Model,
    budget: &Budget,
) -> Result<CheckReport, CheckError> {
    let mut partitions = partition::split(records, model)?;
    let outcome = schedule::decide(&mut partitions, budget);
    let verdict = if outcome.failing.is_some() {
        Verdict::NotLinearizable
    } else if outcome.undecided.is_empty() {
        Verdict::Linearizable
    } else {
        Verdict::Unknown
    };
    Ok(CheckReport {
        verdict,
        operations: records.len(),
        partitions: partitions.len(),
        failing_partition: outcome.failing.map(|index| partitions[index].name()),
        undecided: outcome
            .undecided
            .iter()
            .map(|&index| partitions[index].name())
            .collect(),
        limit: outcome.limit,
    })
}

/// Reads, parses (detecting the format) and checks a history file within the
/// default [`Budget`]. `model: None` uses the format's default model
/// ([`Format::default_model`]).
pub fn check_file(path: &Path, model: Option<Model>) -> Result<CheckReport, Error> {
    check_file_within(path, model, &Budget::default())
}

/// [`check_file`] within `budget`.
pub fn check_file_within(
    path: &Path,
    model: Option<Model>,
    budget: &Budget,
) -> Result<CheckReport, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let (records, format) = parse_history(&text).map_err(|source| Error::Parse {
        path: path.to_path_buf(),
        source,
    })?;
    check_records_within(&records, model.unwrap_or(format.default_model()), budget).map_err(
        |source| Error::Check {
            path: path.to_path_buf(),
            source,
        },
    )
}
