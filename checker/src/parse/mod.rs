//! Reading history files: format detection and the three accepted formats.
//!
//! The checker is only trustworthy once it reproduces known verdicts on other
//! people's histories, so besides seedkv's own JSON-lines format it reads the Jepsen
//! etcd logs and the Porcupine kv files of `shared/checker-data`, turning both into
//! [`Record`]s with the same meaning. Line order is time in those two formats, so
//! the 1-based line number is used as the timestamp.

mod jepsen;
mod porcupine;
mod seedkv;

use std::fmt;

use crate::error::ParseError;
use crate::model::Model;
use crate::record::Record;

pub use jepsen::JEPSEN_KEY;

/// A history file format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// seedkv's own: one JSON [`Record`] per line.
    Seedkv,
    /// A Jepsen etcd log (`INFO  jepsen.util - 3\t:invoke\t:write\t4`): one register.
    JepsenEtcd,
    /// Porcupine's kv test files (`{:process 0, :type :invoke, :f :get, ...}`).
    PorcupineKv,
}

impl Format {
    /// The model a file of this format is meant to be checked against:
    /// [`Model::Register`] for Jepsen etcd logs, [`Model::Kv`] otherwise.
    pub fn default_model(self) -> Model {
        match self {
            Format::JepsenEtcd => Model::Register,
            Format::Seedkv | Format::PorcupineKv => Model::Kv,
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Seedkv => "seedkv",
            Format::JepsenEtcd => "jepsen-etcd",
            Format::PorcupineKv => "porcupine-kv",
        })
    }
}

/// Lines that carry no event in any format.
fn is_blank(line: &str) -> bool {
    line.trim().is_empty()
}

/// Guesses the format of `text`; `Ok(None)` for a text with nothing in it.
///
/// * the first non-blank, non-`#` line starts with `{"` → seedkv;
/// * otherwise any line looks like a Jepsen op line (`jepsen.util - <n> :<type>`)
///   → Jepsen etcd (other lines of such logs are noise);
/// * otherwise the first non-blank line starts with `{:` → Porcupine kv, with `{`
///   → seedkv (so that a broken JSON line is reported as such).
pub fn detect_format(text: &str) -> Result<Option<Format>, ParseError> {
    let first = text
        .lines()
        .enumerate()
        .find(|(_, l)| !is_blank(l) && !l.trim_start().starts_with('#'));
    let Some((first_idx, first_line)) = first else {
        return Ok(None);
    };
    let compact: String = first_line.chars().filter(|c| !c.is_whitespace()).collect();
    if compact.starts_with("{\"") || compact == "{}" {
        return Ok(Some(Format::Seedkv));
    }
    if text.lines().any(jepsen::is_op_line) {
        return Ok(Some(Format::JepsenEtcd));
    }
    if compact.starts_with("{:") {
        return Ok(Some(Format::PorcupineKv));
    }
    if compact.starts_with('{') {
        return Ok(Some(Format::Seedkv));
    }
    Err(ParseError::UnknownFormat {
        line: first_idx + 1,
        snippet: first_line.chars().take(80).collect(),
    })
}

/// Parses a history, detecting its format (see [`detect_format`]). An empty text
/// (only blank lines) is an empty seedkv history.
pub fn parse_history(text: &str) -> Result<(Vec<Record>, Format), ParseError> {
    let format = detect_format(text)?.unwrap_or(Format::Seedkv);
    Ok((parse_history_as(text, format)?, format))
}

/// Parses a history known to be in `format`.
pub fn parse_history_as(text: &str, format: Format) -> Result<Vec<Record>, ParseError> {
    match format {
        Format::Seedkv => seedkv::parse(text),
        Format::JepsenEtcd => jepsen::parse(text),
        Format::PorcupineKv => porcupine::parse(text),
    }
}

/// How a completion line ends an operation.
pub(crate) enum Completion {
    /// Finished with this result.
    Done(crate::record::OpResult),
    /// Did not take effect (or constrains nothing): drop the operation.
    Drop,
    /// Outcome unknown: keep it with return +infinity.
    Unknown,
}

/// Pairs invocations with completions per process for the line-ordered formats.
pub(crate) struct Events {
    records: Vec<Option<Record>>,
    /// process -> (record index, invoke line, operation name)
    pending: crate::fxhash::FxMap<u64, (usize, usize, String)>,
}

impl Events {
    pub(crate) fn new() -> Self {
        Events {
            records: Vec::new(),
            pending: crate::fxhash::FxMap::default(),
        }
    }

    /// An invocation by `process` at `line` (used as the time) of operation `f`.
    pub(crate) fn invoke(
        &mut self,
        process: u64,
        line: usize,
        f: &str,
        op: crate::record::Op,
    ) -> Result<(), ParseError> {
        if let Some((_, at, g)) = self.pending.get(&process) {
            return Err(ParseError::at(
                line,
                format!(
                    "process {process} invokes :{f} while its :{g} from line {at} is still pending"
                ),
            ));
        }
        self.pending
            .insert(process, (self.records.len(), line, f.to_string()));
        self.records.push(Some(Record {
            client: process,
            call_ns: line as u64,
            return_ns: None,
            op,
            result: None,
        }));
        Ok(())
    }

    /// The completion by `process` at `line` of its pending operation `f`.
    pub(crate) fn complete(
        &mut self,
        process: u64,
        line: usize,
        f: &str,
        completion: Completion,
    ) -> Result<(), ParseError> {
        let Some((index, at, g)) = self.pending.remove(&process) else {
            return Err(ParseError::at(
                line,
                format!("process {process} completes :{f} but has no pending invocation"),
            ));
        };
        if g != f {
            return Err(ParseError::at(
                line,
                format!("process {process} completes :{f} but its pending invocation (line {at}) is :{g}"),
            ));
        }
        let slot = self.records.get_mut(index);
        match completion {
            Completion::Done(result) => {
                if let Some(Some(record)) = slot {
                    record.return_ns = Some(line as u64);
                    record.result = Some(result);
                }
            }
            Completion::Drop => {
                if let Some(slot) = slot {
                    *slot = None;
                }
            }
            Completion::Unknown => {}
        }
        Ok(())
    }

    /// Like [`Events::complete`] with a result, but a `Put` result answering an
    /// invocation recorded as `Delete` (Porcupine's put of `""`) becomes a `Delete`.
    pub(crate) fn complete_kv(
        &mut self,
        process: u64,
        line: usize,
        f: &str,
        result: crate::record::OpResult,
    ) -> Result<(), ParseError> {
        use crate::record::{Op, OpResult};
        let is_delete = self
            .pending
            .get(&process)
            .and_then(|(index, _, _)| self.records.get(*index))
            .is_some_and(|r| {
                matches!(
                    r,
                    Some(Record {
                        op: Op::Delete { .. },
                        ..
                    })
                )
            });
        let result = match result {
            OpResult::Put { revision } if is_delete => OpResult::Delete {
                revision,
                existed: None,
            },
            other => other,
        };
        self.complete(process, line, f, Completion::Done(result))
    }

    /// The records; invocations never completed keep an unknown outcome.
    pub(crate) fn finish(self) -> Vec<Record> {
        self.records.into_iter().flatten().collect()
    }
}
