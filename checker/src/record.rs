//! The operation record: seedkv's own history format.
//!
//! This module exists so that every producer of histories (the simulator, the
//! real-cluster test client, the Jepsen / Porcupine parsers in this crate) speaks
//! one format, and so that the rules a record must obey are written down and
//! checked in one place ([`validate_record`]).

use serde::{Deserialize, Serialize};

/// One client operation in a history.
///
/// A seedkv history file holds one `Record` per line, serialised as a JSON object
/// (blank lines and lines starting with `#` are ignored). Field by field:
///
/// * `client` — the id of the client (process) that issued the operation.
///   The checker does not use it for the verdict; it is kept for diagnostics.
/// * `call_ns` — when the client sent the request, in nanoseconds on a clock that
///   all clients of the history share (any origin; only the order matters).
/// * `return_ns` — when the client received the answer, same clock, `>= call_ns`;
///   `null` when the outcome is unknown (see below).
/// * `op` — what was asked, an [`Op`] object tagged by `"type"`.
/// * `result` — what came back, an [`OpResult`] object tagged by `"type"`, whose
///   `"type"` must equal the op's (`get` op → `get` result, and so on);
///   `null` when the outcome is unknown.
///
/// **Unknown outcome.** `result: null` means the client does not know whether the
/// operation took effect (time-out, lost connection, still pending at the end of the
/// run). The checker then treats it as possibly taking effect at any moment after
/// `call_ns` — or never: its return time is +infinity and the model accepts it in
/// whatever way the state at that point dictates. A `get` with unknown outcome
/// constrains nothing and is dropped. `return_ns` should be `null` too; if it is set
/// while `result` is `null` it is ignored. A `result` without a `return_ns` is an
/// error.
///
/// **Revisions.** Every successful write gets a revision from the store; a `get`
/// reports the revision of the last write of the key (0 when the key is absent).
/// See [`OpResult`] for what each result reports.
///
/// Example (one line each):
///
/// ```json
/// {"client":1,"call_ns":1000,"return_ns":2000,"op":{"type":"put","key":"a","value":"1"},"result":{"type":"put","revision":7}}
/// {"client":2,"call_ns":1500,"return_ns":2600,"op":{"type":"get","key":"a"},"result":{"type":"get","value":"1","revision":7}}
/// {"client":3,"call_ns":3000,"return_ns":null,"op":{"type":"delete","key":"a"},"result":null}
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Client (process) id.
    pub client: u64,
    /// Invocation time in nanoseconds.
    pub call_ns: u64,
    /// Completion time in nanoseconds; `None` when the outcome is unknown.
    pub return_ns: Option<u64>,
    /// The request.
    pub op: Op,
    /// The response; `None` when the outcome is unknown.
    pub result: Option<OpResult>,
}

/// A request, serialised as a JSON object tagged by `"type"` (snake case).
///
/// ```json
/// {"type":"get","key":"a"}
/// {"type":"put","key":"a","value":"1"}
/// {"type":"delete","key":"a"}
/// {"type":"cas","key":"a","expect":"1","new":"2"}
/// {"type":"cas","key":"a","expect":null,"new":"1"}
/// {"type":"batch","ops":[{"type":"put","key":"a","value":"1"},{"type":"cas","key":"b","expect":"0","new":null}]}
/// {"type":"multi_get","keys":["a","b"]}
/// {"type":"append","key":"a","value":"x"}
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Op {
    /// Read a key.
    Get {
        /// The key.
        key: String,
    },
    /// Write a key.
    Put {
        /// The key.
        key: String,
        /// The new value.
        value: String,
    },
    /// Remove a key (removing an absent key is allowed and leaves it absent).
    Delete {
        /// The key.
        key: String,
    },
    /// Compare-and-set. The comparison holds iff the key's current value equals
    /// `expect` (`None`: the key must be absent). On success the key becomes `new`
    /// (`None`: the key is deleted).
    Cas {
        /// The key.
        key: String,
        /// Expected current value; `None` = must be absent.
        expect: Option<String>,
        /// Value written on success; `None` = delete on success.
        new: Option<String>,
    },
    /// Read several keys at one point (a multi-get, or a scan reported key by key).
    MultiGet {
        /// The keys, each at most once.
        keys: Vec<String>,
    },
    /// Atomic multi-key write. Contains only `Put`, `Delete` and `Cas`. All `Cas`
    /// comparisons are evaluated against the state *before* the batch; if all hold,
    /// every op is applied in list order (a later op on the same key wins) and every
    /// written key gets the batch's revision; if any fails, nothing is applied.
    Batch {
        /// The operations, applied in order.
        ops: Vec<Op>,
    },
    /// Append to a string value (absent reads as `""`). Only produced by the
    /// Porcupine kv parser; revisions are not tracked for appended keys.
    Append {
        /// The key.
        key: String,
        /// The suffix.
        value: String,
    },
}

/// A response, serialised as a JSON object tagged by `"type"`; its `"type"` must be
/// the one of the [`Op`] it answers.
///
/// ```json
/// {"type":"get","value":"1","revision":7}
/// {"type":"get","value":null,"revision":0}
/// {"type":"put","revision":8}
/// {"type":"delete","revision":9}
/// {"type":"delete","revision":9,"existed":true}
/// {"type":"cas","succeeded":true,"revision":10}
/// {"type":"cas","succeeded":false,"revision":10}
/// {"type":"batch","succeeded":true,"revision":11}
/// {"type":"batch","succeeded":false,"revision":0}
/// {"type":"multi_get","values":[{"value":"1","revision":7},{"value":null,"revision":0}]}
/// {"type":"append"}
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OpResult {
    /// The value read (`None`: absent) and the revision of the key's last write
    /// (0 when absent).
    Get {
        /// Value read; `None` when the key is absent.
        value: Option<String>,
        /// Revision of the last write of the key; 0 when absent.
        revision: u64,
    },
    /// The revision of this write.
    Put {
        /// Revision assigned to this write.
        revision: u64,
    },
    /// The revision of this delete (after it, the key reads as absent, revision 0).
    Delete {
        /// Revision assigned to this delete (not checked).
        revision: u64,
        /// Whether the key was present just before (checked when given).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        existed: Option<bool>,
    },
    /// Whether the comparison held. On success `revision` is the new revision; on
    /// failure it is the key's current revision (0 if absent).
    Cas {
        /// Whether the comparison held and the write was applied.
        succeeded: bool,
        /// New revision on success; the key's current revision on failure.
        revision: u64,
    },
    /// Whether all comparisons held. On success `revision` is the revision of every
    /// written key; on failure it is 0 and nothing was applied.
    Batch {
        /// Whether the batch was applied.
        succeeded: bool,
        /// Revision of all written keys on success; 0 on failure (not checked).
        revision: u64,
    },
    /// What a `MultiGet` read, one entry per key in the op's order.
    MultiGet {
        /// Value and revision per key.
        values: Vec<ReadValue>,
    },
    /// An append completed.
    Append,
}

/// One key's answer in a `MultiGet`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReadValue {
    /// Value read; `None` when the key is absent.
    pub value: Option<String>,
    /// Revision of the last write of the key; 0 when absent.
    pub revision: u64,
}

impl Op {
    /// Short lowercase name of the op kind, as in the JSON `"type"` tag.
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Get { .. } => "get",
            Op::Put { .. } => "put",
            Op::Delete { .. } => "delete",
            Op::Cas { .. } => "cas",
            Op::Batch { .. } => "batch",
            Op::MultiGet { .. } => "multi_get",
            Op::Append { .. } => "append",
        }
    }

    /// Calls `f` on every key the op touches (a batch: every key of its ops).
    pub fn for_each_key<'a>(&'a self, f: &mut impl FnMut(&'a str)) {
        match self {
            Op::Get { key }
            | Op::Put { key, .. }
            | Op::Delete { key }
            | Op::Cas { key, .. }
            | Op::Append { key, .. } => f(key),
            Op::Batch { ops } => {
                for op in ops {
                    op.for_each_key(f);
                }
            }
            Op::MultiGet { keys } => {
                for key in keys {
                    f(key);
                }
            }
        }
    }
}

impl OpResult {
    /// Short lowercase name of the result kind, as in the JSON `"type"` tag.
    pub fn kind(&self) -> &'static str {
        match self {
            OpResult::Get { .. } => "get",
            OpResult::Put { .. } => "put",
            OpResult::Delete { .. } => "delete",
            OpResult::Cas { .. } => "cas",
            OpResult::Batch { .. } => "batch",
            OpResult::MultiGet { .. } => "multi_get",
            OpResult::Append => "append",
        }
    }
}

impl Record {
    /// Whether the outcome of the operation is unknown (`result` is `None`).
    pub fn is_unknown(&self) -> bool {
        self.result.is_none()
    }
}

/// Checks the rules of the format that serde cannot express; returns what is wrong.
///
/// * a `result` needs a `return_ns`, and `return_ns >= call_ns`;
/// * the result's kind matches the op's kind;
/// * a batch contains only `put`, `delete` and `cas`.
pub fn validate_record(record: &Record) -> Result<(), String> {
    if let Some(ret) = record.return_ns {
        if record.result.is_some() && ret < record.call_ns {
            return Err(format!(
                "return_ns {} is before call_ns {}",
                ret, record.call_ns
            ));
        }
    }
    if let Some(result) = &record.result {
        if record.return_ns.is_none() {
            return Err("result is present but return_ns is null".to_string());
        }
        if result.kind() != record.op.kind() {
            return Err(format!(
                "result of type {:?} does not answer an op of type {:?}",
                result.kind(),
                record.op.kind()
            ));
        }
    }
    if let Op::MultiGet { keys } = &record.op {
        let mut seen = std::collections::BTreeSet::new();
        if let Some(key) = keys.iter().find(|key| !seen.insert(key.as_str())) {
            return Err(format!("multi_get names key {key:?} twice"));
        }
        if let Some(OpResult::MultiGet { values }) = &record.result {
            if values.len() != keys.len() {
                return Err(format!(
                    "multi_get of {} keys answered with {} values",
                    keys.len(),
                    values.len()
                ));
            }
        }
    }
    if let Op::Batch { ops } = &record.op {
        for (i, op) in ops.iter().enumerate() {
            match op {
                Op::Put { .. } | Op::Delete { .. } | Op::Cas { .. } => {}
                other => {
                    return Err(format!(
                    "batch op #{i} is of type {:?}; a batch may contain only put, delete and cas",
                    other.kind()
                ))
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_shape_round_trips() {
        let line = r#"{"client":1,"call_ns":10,"return_ns":20,"op":{"type":"cas","key":"a","expect":null,"new":"1"},"result":{"type":"cas","succeeded":true,"revision":3}}"#;
        let rec: Record = serde_json::from_str(line).expect("test json parses");
        assert_eq!(
            rec.op,
            Op::Cas {
                key: "a".into(),
                expect: None,
                new: Some("1".into())
            }
        );
        let back = serde_json::to_string(&rec).expect("serialises");
        assert_eq!(back, line);
        let unit: OpResult = serde_json::from_str(r#"{"type":"append"}"#).expect("append");
        assert_eq!(unit, OpResult::Append);
    }

    #[test]
    fn validation_catches_mismatches() {
        let mut rec = Record {
            client: 0,
            call_ns: 5,
            return_ns: Some(4),
            op: Op::Get { key: "a".into() },
            result: Some(OpResult::Get {
                value: None,
                revision: 0,
            }),
        };
        assert!(validate_record(&rec).is_err());
        rec.return_ns = Some(6);
        assert!(validate_record(&rec).is_ok());
        rec.result = Some(OpResult::Put { revision: 1 });
        assert!(validate_record(&rec).is_err());
        rec.return_ns = None;
        rec.result = Some(OpResult::Get {
            value: None,
            revision: 0,
        });
        assert!(validate_record(&rec).is_err());
        let batch = Record {
            client: 0,
            call_ns: 0,
            return_ns: None,
            op: Op::Batch {
                ops: vec![Op::Get { key: "a".into() }],
            },
            result: None,
        };
        assert!(validate_record(&batch).is_err());
    }
}
