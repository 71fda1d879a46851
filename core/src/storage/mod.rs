//! Storage: the contract a disk must keep, and the Raft log and state machine built on it.
//!
//! The contract is small: [`DiskRead`] (point reads, ordered scans, point-in-time views) and
//! [`Disk`] (atomic write batches with an explicit durability flag). The simulated disk
//! (`io-sim`) and RocksDB (`io-real`) implement it; everything Raft needs — log, vote,
//! applied rows, snapshots — is built here on top of it, once, so both worlds run the same
//! storage logic and differ only in bytes.
//!
//! - [`log`]: the Raft log and vote ([`LogStore`]);
//! - [`machine`]: the applied state as rows on the disk ([`StateMachineStore`], read through
//!   [`SharedState`]);
//! - [`snapshot`]: a snapshot is a view of those rows, streamed in bounded chunks and
//!   received into a staging generation that one write switches to.
//!
//! Durability, stated once for everything below:
//! - the vote is durable before `save_vote` returns (a node must never vote twice in a term);
//! - appended entries are durable before openraft is told they are flushed (they are written
//!   at once and acknowledged after a group-commit fsync, see [`LogStore`]);
//! - a truncation is durable before `truncate` returns (a removed entry must not come back);
//! - applied rows are written with the applied log id and membership in one atomic batch,
//!   without waiting for an fsync: the log is the durable record, and a restart replays
//!   what a crash lost of the applied state;
//! - a snapshot is the applied state itself: building one fsyncs it, installing one switches
//!   to the received rows in one synced write, and a purge waits until the state covering
//!   the purged entries is durable, so a crash never leaves a purged log without its state.

// openraft's storage traits return its `StorageError`, large as it is.
#![allow(clippy::result_large_err)]

use std::future::Future;

use futures::future::BoxFuture;
use openraft::{AnyError, StorageIOError};
use serde::{Deserialize, Serialize};

use crate::codec;
use crate::types::{GroupId, StorageError};

pub mod identity;
pub mod log;
pub mod machine;
pub mod snapshot;

pub use identity::{IdentityError, NodeIdentity};
pub use log::{LogStore, LogSyncer, MAX_APPENDS_AWAITING_SYNC};
pub use machine::{AppliedMeta, SharedState, StateMachineStore, StateSummary};
pub use snapshot::SnapshotData;

/// One change inside a [`WriteBatch`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DiskOp {
    /// Set `key` to `value`.
    Put(
        #[serde(with = "serde_bytes")] Vec<u8>,
        #[serde(with = "serde_bytes")] Vec<u8>,
    ),
    /// Remove `key`.
    Delete(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Remove every key in `[from, to)`.
    DeleteRange(
        #[serde(with = "serde_bytes")] Vec<u8>,
        #[serde(with = "serde_bytes")] Vec<u8>,
    ),
}

/// Changes applied atomically: after a crash, all of a batch is there or none of it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteBatch {
    pub ops: Vec<DiskOp>,
}

impl WriteBatch {
    pub fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.ops.push(DiskOp::Put(key, value));
    }
    pub fn delete(&mut self, key: Vec<u8>) {
        self.ops.push(DiskOp::Delete(key));
    }
    pub fn delete_range(&mut self, from: Vec<u8>, to: Vec<u8>) {
        self.ops.push(DiskOp::DeleteRange(from, to));
    }
}

/// How durable a write must be when its future resolves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// On stable storage: survives a crash or power loss. Every batch written before it is
    /// then durable too.
    Sync,
    /// Visible to reads at once, but may be lost in a crash — only as a suffix: if a batch
    /// survives, every batch written before it survives.
    Buffered,
}

/// A disk failed or refused an operation.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum DiskError {
    #[error("disk I/O failed: {0}")]
    Io(String),
    #[error("disk handle is stale: the node crashed and the disk was reopened")]
    Stale,
    #[error("corrupt data at key {key}: {reason}")]
    Corrupt { key: String, reason: String },
}

/// Reading an ordered byte map: the disk itself, or a point-in-time view of it.
///
/// Object safe, so the read path and the snapshot machinery hold any disk as
/// `Arc<dyn DynDisk>` without being generic over it.
pub trait DiskRead: Send + Sync + 'static {
    /// The value at `key`.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, DiskError>;

    /// Up to `limit` entries with keys in `[from, to)`, in key order; in reverse key order
    /// (the last ones first) when `reverse`.
    fn scan(&self, from: &[u8], to: &[u8], limit: usize, reverse: bool) -> Result<Rows, DiskError>;

    /// Entries with keys in `[from, to)` in key order, stopping after `max_rows` or once
    /// the keys and values returned hold `max_bytes` (at least one entry if there is one).
    fn scan_bytes(
        &self,
        from: &[u8],
        to: &[u8],
        max_rows: usize,
        max_bytes: usize,
    ) -> Result<Rows, DiskError>;

    /// A point-in-time view: it reads what this disk held when `view` was called, whatever
    /// is written afterwards. Holding one may keep old data on disk; drop it when done.
    fn view(&self) -> Result<Box<dyn DiskRead>, DiskError>;
}

/// An ordered byte map with atomic batches and explicit durability: all the storage seedkv
/// needs from its environment. See the module docs for what is built on it.
///
/// Reads see every write whose future has resolved, durable or not.
pub trait Disk: DiskRead {
    /// Applies `batch` atomically. When the future resolves with `Ok`, the batch is visible,
    /// and if `durability` is [`Durability::Sync`] it (and all before it) survives a crash.
    fn write(
        &self,
        batch: WriteBatch,
        durability: Durability,
    ) -> impl Future<Output = Result<(), DiskError>> + Send;

    /// Makes every write that resolved before this call durable, as a `Sync` write would
    /// have (one fsync of the write-ahead log covers them all).
    fn sync(&self) -> impl Future<Output = Result<(), DiskError>> + Send;
}

/// A [`Disk`] behind a pointer: the same contract with boxed futures. Every `Disk` is one.
pub trait DynDisk: DiskRead {
    /// [`Disk::write`].
    fn write_dyn(
        &self,
        batch: WriteBatch,
        durability: Durability,
    ) -> BoxFuture<'_, Result<(), DiskError>>;
    /// [`Disk::sync`].
    fn sync_dyn(&self) -> BoxFuture<'_, Result<(), DiskError>>;
}

impl<D: Disk> DynDisk for D {
    fn write_dyn(
        &self,
        batch: WriteBatch,
        durability: Durability,
    ) -> BoxFuture<'_, Result<(), DiskError>> {
        Box::pin(self.write(batch, durability))
    }
    fn sync_dyn(&self) -> BoxFuture<'_, Result<(), DiskError>> {
        Box::pin(self.sync())
    }
}

/// Key-value rows in key order.
pub type Rows = Vec<(Vec<u8>, Vec<u8>)>;

/// Where each piece of a group's state lives in the disk's key space.
///
/// ```text
/// node                                         the node's identity (see [`identity`])
/// g{group:4}v                                  vote
/// g{group:4}p                                  last purged log id
/// g{group:4}l{index:8}                         log entry
/// g{group:4}a                                  applied meta (generation, log id, membership)
/// g{group:4}k{gen:4}d{slot:2}{key}             row of `key`
/// g{group:4}k{gen:4}c{client:8}                session header
/// g{group:4}k{gen:4}c{client:8}{seq:8}         session answer
/// ```
///
/// Integers are big-endian so key order is numeric order. The applied rows live under a
/// generation: the applied meta names the live one, and a snapshot is received into the
/// next before one write switches to it. Within a generation, rows are ordered by hash slot,
/// so one slot's rows are one contiguous range.
pub mod keys {
    use super::GroupId;
    use crate::slot::Slot;

    const VOTE: u8 = b'v';
    const LOG: u8 = b'l';
    const PURGED: u8 = b'p';
    /// Where snapshots lived before the applied state moved onto the disk.
    const LEGACY_SNAPSHOT: u8 = b's';
    const APPLIED: u8 = b'a';
    const STATE: u8 = b'k';
    /// Row keys start with this inside a generation.
    pub const ROW: u8 = b'd';
    /// Session keys start with this inside a generation.
    pub const SESSION: u8 = b'c';
    /// Bytes of a generation's prefix: `g{group:4}k{gen:4}`.
    pub const GENERATION_PREFIX_LEN: usize = 10;

    fn group_key(group: GroupId, tag: u8) -> Vec<u8> {
        let mut key = Vec::with_capacity(32);
        key.push(b'g');
        key.extend_from_slice(&group.0.to_be_bytes());
        key.push(tag);
        key
    }

    /// The group's vote.
    pub fn vote(group: GroupId) -> Vec<u8> {
        group_key(group, VOTE)
    }
    /// The log id of the last purged entry.
    pub fn purged(group: GroupId) -> Vec<u8> {
        group_key(group, PURGED)
    }
    /// Where an older format kept its snapshot: its presence means an unreadable directory.
    pub fn legacy_snapshot(group: GroupId) -> Vec<u8> {
        group_key(group, LEGACY_SNAPSHOT)
    }
    /// The applied meta.
    pub fn applied(group: GroupId) -> Vec<u8> {
        group_key(group, APPLIED)
    }
    /// The log entry at `index`; big-endian so key order is index order.
    pub fn log(group: GroupId, index: u64) -> Vec<u8> {
        let mut key = group_key(group, LOG);
        key.extend_from_slice(&index.to_be_bytes());
        key
    }
    /// The end of the group's log key range (exclusive).
    pub fn log_end(group: GroupId) -> Vec<u8> {
        group_key(group, LOG + 1)
    }
    /// The start of every key of `group`.
    pub fn group_start(group: GroupId) -> Vec<u8> {
        let mut key = Vec::with_capacity(5);
        key.push(b'g');
        key.extend_from_slice(&group.0.to_be_bytes());
        key
    }
    /// The end of every group's keys (exclusive).
    pub const GROUPS_END: &[u8] = b"h";
    /// The group a key of some group belongs to.
    pub fn group_of(key: &[u8]) -> Option<GroupId> {
        if key.first() != Some(&b'g') {
            return None;
        }
        let id: [u8; 4] = key.get(1..5)?.try_into().ok()?;
        Some(GroupId(u32::from_be_bytes(id)))
    }
    /// True if `key` is any group's vote: lets a test disk single votes out.
    pub fn is_vote(key: &[u8]) -> bool {
        key.len() == 6 && key[0] == b'g' && key[5] == VOTE
    }
    /// The index of a log key.
    pub fn log_index(key: &[u8]) -> Option<u64> {
        let tail: [u8; 8] = key.get(6..14)?.try_into().ok()?;
        Some(u64::from_be_bytes(tail))
    }

    /// The start of generation `generation`'s range: every key of it starts with this.
    pub fn generation(group: GroupId, generation: u32) -> Vec<u8> {
        let mut key = group_key(group, STATE);
        key.extend_from_slice(&generation.to_be_bytes());
        key
    }
    /// The end of generation `generation`'s range (exclusive).
    pub fn generation_end(group: GroupId, generation: u32) -> Vec<u8> {
        match generation.checked_add(1) {
            Some(next) => self::generation(group, next),
            None => group_key(group, STATE + 1),
        }
    }
    /// The start and end of every generation's range together.
    pub fn all_generations(group: GroupId) -> (Vec<u8>, Vec<u8>) {
        (group_key(group, STATE), group_key(group, STATE + 1))
    }

    /// The row of `key` in `generation`.
    pub fn row(group: GroupId, generation: u32, key: &[u8]) -> Vec<u8> {
        let mut row = self::generation(group, generation);
        row.push(ROW);
        row.extend_from_slice(&Slot::of(key).get().to_be_bytes());
        row.extend_from_slice(key);
        row
    }
    /// The start of `slot`'s rows in `generation`.
    pub fn slot_start(group: GroupId, generation: u32, slot: Slot) -> Vec<u8> {
        let mut row = self::generation(group, generation);
        row.push(ROW);
        row.extend_from_slice(&slot.get().to_be_bytes());
        row
    }
    /// The end of `slot`'s rows in `generation` (exclusive).
    pub fn slot_end(group: GroupId, generation: u32, slot: Slot) -> Vec<u8> {
        let mut row = self::generation(group, generation);
        row.push(ROW);
        // Slots are below SLOT_COUNT, so the next number fits the same two bytes.
        row.extend_from_slice(&(slot.get() + 1).to_be_bytes());
        row
    }
    /// The start and end of every row of `generation`.
    pub fn rows(group: GroupId, generation: u32) -> (Vec<u8>, Vec<u8>) {
        let mut from = self::generation(group, generation);
        let mut to = from.clone();
        from.push(ROW);
        to.push(ROW + 1);
        (from, to)
    }
    /// The user key a row key holds, if `row` is a row key of any generation.
    pub fn row_user_key(row: &[u8]) -> Option<&[u8]> {
        match row.get(GENERATION_PREFIX_LEN) {
            Some(&ROW) => row.get(GENERATION_PREFIX_LEN + 3..),
            _ => None,
        }
    }

    /// The header of `client_id`'s session in `generation`.
    pub fn session(group: GroupId, generation: u32, client_id: u64) -> Vec<u8> {
        let mut key = self::generation(group, generation);
        key.push(SESSION);
        key.extend_from_slice(&client_id.to_be_bytes());
        key
    }
    /// The answer to `client_id`'s write `seq` in `generation`.
    pub fn session_answer(group: GroupId, generation: u32, client_id: u64, seq: u64) -> Vec<u8> {
        let mut key = session(group, generation, client_id);
        key.extend_from_slice(&seq.to_be_bytes());
        key
    }
    /// The start and end of every session key of `generation`.
    pub fn sessions(group: GroupId, generation: u32) -> (Vec<u8>, Vec<u8>) {
        let mut from = self::generation(group, generation);
        let mut to = from.clone();
        from.push(SESSION);
        to.push(SESSION + 1);
        (from, to)
    }
    /// A session key split into its client id and, for an answer, its sequence number.
    pub fn parse_session(key: &[u8]) -> Option<(u64, Option<u64>)> {
        if key.get(GENERATION_PREFIX_LEN) != Some(&SESSION) {
            return None;
        }
        let rest = &key[GENERATION_PREFIX_LEN + 1..];
        let client = u64::from_be_bytes(rest.get(..8)?.try_into().ok()?);
        match rest.len() {
            8 => Some((client, None)),
            16 => Some((client, Some(u64::from_be_bytes(rest[8..].try_into().ok()?)))),
            _ => None,
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn slot_ranges_tile_the_rows_in_order() {
            let group = GroupId(3);
            let (from, to) = rows(group, 7);
            let mut previous_end = from.clone();
            for slot in Slot::all() {
                let start = slot_start(group, 7, slot);
                let end = slot_end(group, 7, slot);
                assert!(start >= previous_end && start < end);
                previous_end = end;
            }
            assert!(previous_end <= to);
            let row = row(group, 7, b"{t}key");
            let slot = Slot::of(b"t");
            assert!(row >= slot_start(group, 7, slot) && row < slot_end(group, 7, slot));
            assert_eq!(row_user_key(&row), Some(&b"{t}key"[..]));
            assert!(row < generation_end(group, 7) && row >= generation(group, 7));
            assert!(generation_end(group, 7) <= generation(group, 8));
            let (sessions_from, sessions_to) = sessions(group, 7);
            let answer = session_answer(group, 7, 9, 4);
            assert!(answer > session(group, 7, 9) && answer < sessions_to);
            assert!(session(group, 7, 9) >= sessions_from);
            assert_eq!(parse_session(&answer), Some((9, Some(4))));
            assert_eq!(parse_session(&session(group, 7, 9)), Some((9, None)));
            assert_eq!(parse_session(&row), None);
        }
    }
}

fn io_err(
    verb: fn(AnyError) -> StorageIOError<u64>,
    err: &(impl std::error::Error + 'static),
) -> StorageError {
    verb(AnyError::new(err)).into()
}

fn read_err(err: &(impl std::error::Error + 'static)) -> StorageError {
    io_err(StorageIOError::read, err)
}

fn write_err(err: &(impl std::error::Error + 'static)) -> StorageError {
    io_err(StorageIOError::write, err)
}

/// Every group with anything on `disk`, in id order: the groups a node hosts when it starts.
/// Reads one key per group.
pub fn groups_on(disk: &dyn DiskRead) -> Result<Vec<GroupId>, DiskError> {
    let mut found = Vec::new();
    let mut from = keys::group_start(GroupId(0));
    // Bounded: every turn finds a greater group id or ends.
    loop {
        let rows = disk.scan(&from, keys::GROUPS_END, 1, false)?;
        let Some((key, _)) = rows.first() else {
            return Ok(found);
        };
        let Some(group) = keys::group_of(key) else {
            return Err(corrupt(key, "a key among the groups' keys names no group"));
        };
        debug_assert!(found.last().is_none_or(|last: &GroupId| last.0 < group.0));
        found.push(group);
        match group.0.checked_add(1) {
            Some(next) => from = keys::group_start(GroupId(next)),
            None => return Ok(found),
        }
    }
}

fn corrupt(key: &[u8], reason: impl std::fmt::Display) -> DiskError {
    DiskError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        reason: reason.to_string(),
    }
}

fn decode_at<T: serde::de::DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Result<T, StorageError> {
    codec::decode(bytes).map_err(|err| read_err(&corrupt(key, err)))
}
