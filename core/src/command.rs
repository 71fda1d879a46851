//! What clients ask of the store, and the limits every request must respect.
//!
//! Writes are [`Command`]s: they go through the Raft log and are applied by every replica in
//! the same order, so they carry plain data only. Reads never touch the log. Validation lives
//! here, beside the types, so the server, the client and the fuzzers enforce one set of rules.

use serde::{Deserialize, Serialize};

use crate::migration::{MetaStep, Migration, MoveStep};
use crate::ownership::OwnedRange;
use crate::session::SessionTag;
use crate::slot::Slot;
use crate::slot_map::SlotMap;

/// A key's revision: the Raft log index of the entry that last wrote it. `0` means absent.
pub type Revision = u64;

/// One write inside a [`Command::Batch`], or on its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
// Byte strings are encoded as one block (`serde_bytes`), not byte by byte: the same bincode
// layout, many times faster for large values.
pub enum WriteOp {
    /// Set `key` to `value`.
    Put {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    /// Remove `key` (a no-op on an absent key, still a new revision for the log).
    Delete {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
    /// If the current value equals `expect` (`None`: the key is absent), write `new`
    /// (`None`: delete the key). Otherwise change nothing.
    Cas {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        expect: Option<Vec<u8>>,
        #[serde(with = "serde_bytes")]
        new: Option<Vec<u8>>,
    },
}

impl WriteOp {
    /// The key this operation writes.
    pub fn key(&self) -> &[u8] {
        match self {
            WriteOp::Put { key, .. } | WriteOp::Delete { key } | WriteOp::Cas { key, .. } => key,
        }
    }

    fn payload_bytes(&self) -> usize {
        match self {
            WriteOp::Put { key, value } => key.len() + value.len(),
            WriteOp::Delete { key } => key.len(),
            WriteOp::Cas { key, expect, new } => {
                key.len() + expect.as_ref().map_or(0, Vec::len) + new.as_ref().map_or(0, Vec::len)
            }
        }
    }
}

/// A write replicated through the Raft log: the `D` of the Raft type config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// A single write.
    Single(WriteOp),
    /// Several writes applied atomically at one revision: if any `Cas` in it fails its
    /// comparison, nothing is applied.
    Batch(Vec<WriteOp>),
    /// Independent client commands proposed together as one log entry (group proposal): each
    /// is applied in order, with its own response, all at the entry's revision.
    Multi(Vec<Command>),
    /// Opens a client session (see [`crate::session`]).
    Register,
    /// A `Single` or `Batch` write of a client session: applied at most once, however often
    /// it is resent.
    Tagged {
        session: SessionTag,
        command: Box<Command>,
    },
    /// A data group takes these slots (see [`crate::ownership`]); proposed by nodes, never
    /// by clients.
    Own(Vec<OwnedRange>),
    /// The meta group's slot map becomes `map` if the one held has `expect_version` (0:
    /// none) and `map` is newer and valid; proposed by nodes, never by clients.
    SetMap {
        expect_version: u64,
        map: Box<SlotMap>,
    },
    /// One step of a slot's move in a data group (see [`crate::migration`]); proposed by
    /// the migration driver, never by clients.
    Move(MoveStep),
    /// A change to the meta group's record of migrations; proposed by nodes, never by
    /// clients.
    Migrate(MetaStep),
}

impl Command {
    /// The writes this command carries (for `Multi`: none of its own; see its commands).
    pub fn ops(&self) -> &[WriteOp] {
        match self {
            Command::Single(op) => std::slice::from_ref(op),
            Command::Batch(ops) => ops,
            Command::Multi(_)
            | Command::Register
            | Command::Own(_)
            | Command::SetMap { .. }
            | Command::Move(_)
            | Command::Migrate(_) => &[],
            Command::Tagged { command, .. } => command.ops(),
        }
    }
}

impl Command {
    /// Whether applying this command may change what the group knows about sharding
    /// (ownership, moves, the slot map, migrations).
    pub fn changes_shard(&self) -> bool {
        match self {
            Command::Own(_) | Command::SetMap { .. } | Command::Move(_) | Command::Migrate(_) => {
                true
            }
            Command::Multi(commands) => commands.iter().any(Command::changes_shard),
            Command::Tagged { command, .. } => command.changes_shard(),
            Command::Single(_) | Command::Batch(_) | Command::Register => false,
        }
    }

    /// Bytes of keys and values this command carries (what the size limits count).
    pub fn payload_bytes(&self) -> usize {
        match self {
            Command::Multi(commands) => commands.iter().map(Command::payload_bytes).sum(),
            Command::Register
            | Command::Own(_)
            | Command::SetMap { .. }
            | Command::Move(_)
            | Command::Migrate(_) => 0,
            Command::Tagged { command, .. } => command.payload_bytes(),
            Command::Single(_) | Command::Batch(_) => {
                self.ops().iter().map(WriteOp::payload_bytes).sum()
            }
        }
    }
}

impl std::fmt::Display for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Single(op) => write!(f, "{op:?}"),
            Command::Batch(ops) => write!(f, "batch of {}", ops.len()),
            Command::Multi(commands) => write!(f, "{} commands", commands.len()),
            Command::Register => f.write_str("register a session"),
            Command::Tagged { session, command } => write!(
                f,
                "{command} (client {} seq {})",
                session.client_id, session.seq
            ),
            Command::Own(ranges) => write!(f, "own {} slot ranges", ranges.len()),
            Command::SetMap {
                expect_version,
                map,
            } => write!(
                f,
                "set slot map version {} over {expect_version}",
                map.version()
            ),
            Command::Move(MoveStep::Ingest {
                slot,
                migration,
                seq,
                rows,
                ..
            }) => write!(
                f,
                "ingest chunk {seq} of {slot} ({} rows) for migration {migration}",
                rows.len()
            ),
            Command::Move(step) => write!(f, "{step:?}"),
            Command::Migrate(step) => write!(f, "{step:?}"),
        }
    }
}

/// The result of applying a [`Command`]: the `R` of the Raft type config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// `Put` applied at `revision`.
    Put { revision: Revision },
    /// `Delete` applied at `revision`; `existed` tells whether the key was there.
    Delete { revision: Revision, existed: bool },
    /// `Cas` applied (`succeeded`, at the new `revision`) or refused (`revision` is then the
    /// key's current revision, 0 if absent).
    Cas { succeeded: bool, revision: Revision },
    /// `Batch` applied as a whole at `revision`, or refused as a whole (`revision` 0).
    Batch { succeeded: bool, revision: Revision },
    /// The responses to a `Multi`, in order.
    Multi(Vec<Response>),
    /// Entries without a command (Raft's blank and membership entries) answer this.
    None,
    /// A session was opened for `client_id`.
    Registered { client_id: u64 },
    /// A tagged write of a session that does not exist (never opened, or expired): nothing
    /// was applied, and whether an earlier copy of it was cannot be told.
    SessionExpired,
    /// A tagged write below its client's acknowledged mark: nothing was applied.
    StaleWrite { acked_below: u64 },
    /// A write to `slot`, which the group does not own: nothing was applied.
    NotOwned { slot: Slot },
    /// `Own` applied: `changed` slots were taken (0: every one was already held).
    Owned { changed: u32 },
    /// `SetMap` applied (`succeeded`) or refused; `version` is the map's version after it.
    MapSet { succeeded: bool, version: u64 },
    /// A write to `slot`, which the group froze to move it: nothing was applied, and the
    /// session (if any) recorded nothing; retry once the move is over.
    Frozen { slot: Slot },
    /// A `Move` step applied, or refused with the reason (nothing changed).
    Stepped(Result<(), String>),
    /// A `Migrate` step applied (the record as it now is), or refused with the reason.
    Migration(Result<Migration, String>),
}

/// A key and its value, as stored and as read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Versioned {
    /// The value bytes.
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    /// The log index of the write that set it.
    pub revision: Revision,
}

/// The size limits of a request. Every one is enforced before a request reaches Raft.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Longest key, in bytes. Keys must also be non-empty.
    pub max_key_bytes: usize,
    /// Longest value, in bytes.
    pub max_value_bytes: usize,
    /// Most operations in one batch, and most keys in one multi-get.
    pub max_batch_ops: usize,
    /// Largest total payload (keys and values) of one request, in bytes.
    pub max_request_bytes: usize,
    /// Most entries one scan returns; a larger requested limit is refused.
    pub max_scan_limit: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_key_bytes: 4 * 1024,
            max_value_bytes: 1024 * 1024,
            max_batch_ops: 1024,
            max_request_bytes: 4 * 1024 * 1024,
            max_scan_limit: 10_000,
        }
    }
}

/// Why a request was refused before it reached the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidRequest {
    #[error("key is empty")]
    EmptyKey,
    #[error("key is {len} bytes, the limit is {limit}")]
    KeyTooLarge { len: usize, limit: usize },
    #[error("value is {len} bytes, the limit is {limit}")]
    ValueTooLarge { len: usize, limit: usize },
    #[error("batch has {len} operations, the limit is {limit}")]
    BatchTooLarge { len: usize, limit: usize },
    #[error("batch is empty")]
    EmptyBatch,
    #[error("request carries {len} bytes, the limit is {limit}")]
    RequestTooLarge { len: usize, limit: usize },
    #[error("scan limit {requested} is over the maximum {limit}")]
    ScanLimitTooLarge { requested: usize, limit: usize },
    #[error("scan range is inverted: from is after to")]
    InvertedRange,
    #[error("a group of commands is assembled by the node, not sent by clients")]
    NotAClientCommand,
    #[error("CROSS_SLOT: the keys of one batch must share a hash slot, and these fall in slots {first} and {other}; give keys written together one {{hash tag}}")]
    CrossSlot { first: u16, other: u16 },
    #[error("session sequence numbers start at 1 and seq ({seq}) must not be below acked_below ({acked_below})")]
    BadSequence { seq: u64, acked_below: u64 },
}

impl Limits {
    /// Checks one key.
    pub fn check_key(&self, key: &[u8]) -> Result<(), InvalidRequest> {
        if key.is_empty() {
            return Err(InvalidRequest::EmptyKey);
        }
        if key.len() > self.max_key_bytes {
            return Err(InvalidRequest::KeyTooLarge {
                len: key.len(),
                limit: self.max_key_bytes,
            });
        }
        Ok(())
    }

    /// Checks one value.
    pub fn check_value(&self, value: &[u8]) -> Result<(), InvalidRequest> {
        if value.len() > self.max_value_bytes {
            return Err(InvalidRequest::ValueTooLarge {
                len: value.len(),
                limit: self.max_value_bytes,
            });
        }
        Ok(())
    }

    /// Checks a write command: keys, values, batch size and total size.
    pub fn check_command(&self, command: &Command) -> Result<(), InvalidRequest> {
        match command {
            Command::Multi(_)
            | Command::Own(_)
            | Command::SetMap { .. }
            | Command::Move(_)
            | Command::Migrate(_) => return Err(InvalidRequest::NotAClientCommand),
            Command::Register => return Ok(()),
            Command::Tagged { session, command } => {
                if !matches!(**command, Command::Single(_) | Command::Batch(_)) {
                    return Err(InvalidRequest::NotAClientCommand);
                }
                if session.acked_below == 0 || session.seq < session.acked_below {
                    return Err(InvalidRequest::BadSequence {
                        seq: session.seq,
                        acked_below: session.acked_below,
                    });
                }
            }
            Command::Single(_) | Command::Batch(_) => {}
        }
        let ops = command.ops();
        if ops.is_empty() {
            return Err(InvalidRequest::EmptyBatch);
        }
        if ops.len() > self.max_batch_ops {
            return Err(InvalidRequest::BatchTooLarge {
                len: ops.len(),
                limit: self.max_batch_ops,
            });
        }
        let mut total_bytes = 0usize;
        for op in ops {
            self.check_key(op.key())?;
            match op {
                WriteOp::Put { value, .. } => self.check_value(value)?,
                WriteOp::Delete { .. } => {}
                WriteOp::Cas { expect, new, .. } => {
                    for value in expect.iter().chain(new.iter()) {
                        self.check_value(value)?;
                    }
                }
            }
            total_bytes = total_bytes.saturating_add(op.payload_bytes());
        }
        self.check_request_bytes(total_bytes)?;
        one_slot(ops).map(|_| ())
    }

    /// Checks the keys of a multi-get.
    pub fn check_keys(&self, keys: &[Vec<u8>]) -> Result<(), InvalidRequest> {
        if keys.len() > self.max_batch_ops {
            return Err(InvalidRequest::BatchTooLarge {
                len: keys.len(),
                limit: self.max_batch_ops,
            });
        }
        let mut total_bytes = 0usize;
        for key in keys {
            self.check_key(key)?;
            total_bytes = total_bytes.saturating_add(key.len());
        }
        self.check_request_bytes(total_bytes)
    }

    /// Checks a scan's bounds (each may be empty: unbounded) and its limit.
    pub fn check_scan(&self, range: &ScanRange, limit: usize) -> Result<(), InvalidRequest> {
        if limit > self.max_scan_limit {
            return Err(InvalidRequest::ScanLimitTooLarge {
                requested: limit,
                limit: self.max_scan_limit,
            });
        }
        let bounds: [&[u8]; 3] = [&range.prefix, &range.from, &range.to];
        for bound in bounds {
            if bound.len() > self.max_key_bytes {
                return Err(InvalidRequest::KeyTooLarge {
                    len: bound.len(),
                    limit: self.max_key_bytes,
                });
            }
        }
        if !range.to.is_empty() && range.from > range.to {
            return Err(InvalidRequest::InvertedRange);
        }
        Ok(())
    }

    fn check_request_bytes(&self, total_bytes: usize) -> Result<(), InvalidRequest> {
        if total_bytes > self.max_request_bytes {
            return Err(InvalidRequest::RequestTooLarge {
                len: total_bytes,
                limit: self.max_request_bytes,
            });
        }
        Ok(())
    }
}

/// The one hash slot every key of `ops` falls in: a batch is applied by one group, so its
/// keys must share a slot (keys with the same `{hash tag}` do). `None` for no ops.
pub fn one_slot(ops: &[WriteOp]) -> Result<Option<Slot>, InvalidRequest> {
    let mut slots = ops.iter().map(|op| Slot::of(op.key()));
    let Some(first) = slots.next() else {
        return Ok(None);
    };
    match slots.find(|&slot| slot != first) {
        Some(other) => Err(InvalidRequest::CrossSlot {
            first: first.get(),
            other: other.get(),
        }),
        None => Ok(Some(first)),
    }
}

/// Which keys a scan covers: keys that start with `prefix`, are `>= from` and `< to`.
/// An empty bound is no bound.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanRange {
    pub prefix: Vec<u8>,
    pub from: Vec<u8>,
    pub to: Vec<u8>,
}

impl ScanRange {
    /// True if `key` lies in the range.
    pub fn contains(&self, key: &[u8]) -> bool {
        key.starts_with(&self.prefix)
            && key >= self.from.as_slice()
            && (self.to.is_empty() || key < self.to.as_slice())
    }

    /// The smallest key the range can hold: where a sorted walk starts.
    pub fn start(&self) -> &[u8] {
        if self.prefix.as_slice() > self.from.as_slice() {
            &self.prefix
        } else {
            &self.from
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_refuse_bad_keys_and_values() {
        let limits = Limits::default();
        assert_eq!(limits.check_key(b""), Err(InvalidRequest::EmptyKey));
        assert!(limits.check_key(&vec![b'k'; 4096]).is_ok());
        assert!(matches!(
            limits.check_key(&vec![b'k'; 4097]),
            Err(InvalidRequest::KeyTooLarge { len: 4097, .. })
        ));
        let put = |v: usize| {
            Command::Single(WriteOp::Put {
                key: b"k".to_vec(),
                value: vec![0; v],
            })
        };
        assert!(limits.check_command(&put(1024 * 1024)).is_ok());
        assert!(matches!(
            limits.check_command(&put(1024 * 1024 + 1)),
            Err(InvalidRequest::ValueTooLarge { .. })
        ));
        assert_eq!(
            limits.check_command(&Command::Batch(vec![])),
            Err(InvalidRequest::EmptyBatch)
        );
    }

    #[test]
    fn total_request_size_is_bounded() {
        let limits = Limits::default();
        let ops = (0..5)
            .map(|i| WriteOp::Put {
                key: vec![b'a' + i],
                value: vec![0; 1024 * 1024],
            })
            .collect();
        assert!(matches!(
            limits.check_command(&Command::Batch(ops)),
            Err(InvalidRequest::RequestTooLarge { .. })
        ));
    }

    #[test]
    fn a_batch_stays_in_one_slot() {
        let limits = Limits::default();
        let put = |key: &str| WriteOp::Put {
            key: key.as_bytes().to_vec(),
            value: b"v".to_vec(),
        };
        let tagged = Command::Batch(vec![put("{u1}.a"), put("{u1}.b"), put("u1")]);
        assert_eq!(limits.check_command(&tagged), Ok(()));
        let (a, b) = (Slot::of(b"a"), Slot::of(b"b"));
        assert_ne!(a, b);
        let spread = Command::Batch(vec![put("a"), put("a"), put("b")]);
        assert_eq!(
            limits.check_command(&spread),
            Err(InvalidRequest::CrossSlot {
                first: a.get(),
                other: b.get()
            })
        );
        let message = InvalidRequest::CrossSlot { first: 1, other: 2 }.to_string();
        assert!(message.starts_with("CROSS_SLOT:"), "{message}");
        assert!(message.contains("{hash tag}"), "{message}");
        assert_eq!(one_slot(&[]), Ok(None));
    }

    #[test]
    fn scan_range_bounds() {
        let range = ScanRange {
            prefix: b"a".to_vec(),
            from: b"ab".to_vec(),
            to: b"ad".to_vec(),
        };
        assert!(!range.contains(b"aa"));
        assert!(range.contains(b"ab"));
        assert!(range.contains(b"acz"));
        assert!(!range.contains(b"ad"));
        assert!(!range.contains(b"b"));
        assert_eq!(range.start(), b"ab");
        let inverted = ScanRange {
            prefix: vec![],
            from: b"z".to_vec(),
            to: b"a".to_vec(),
        };
        assert_eq!(
            Limits::default().check_scan(&inverted, 10),
            Err(InvalidRequest::InvertedRange)
        );
    }
}
