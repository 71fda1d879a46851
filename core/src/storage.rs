//! Storage: the contract a disk must keep, and the Raft log and state machine built on it.
//!
//! The contract is one small trait, [`Disk`]: an ordered byte map with atomic write batches
//! and an explicit durability flag. The simulated disk (`io-sim`) and RocksDB (`io-real`)
//! implement it; everything Raft needs — log, vote, snapshots, applied state — is built here
//! on top of it, once, so both worlds run the same storage logic and differ only in bytes.
//!
//! Durability, stated once for everything below:
//! - the vote is durable before `save_vote` returns (a node must never vote twice in a term);
//! - appended entries are durable before openraft is told they are flushed (they are written
//!   at once and acknowledged after a group-commit fsync, see [`LogStore`]);
//! - a truncation is durable before `truncate` returns (a removed entry must not come back);
//! - a snapshot is durable before it is reported built or installed, and the purge that
//!   follows it is ordered after it, so a crash never leaves a purged log without its snapshot;
//! - the applied key-value state is *not* written per entry: on restart it is rebuilt from the
//!   latest snapshot plus the committed log that follows it.

// openraft's storage traits return its `StorageError`, large as it is.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::future::Future;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    AnyError, EntryPayload, OptionalSend, RaftLogReader, RaftSnapshotBuilder, StorageIOError,
};
use serde::{Deserialize, Serialize};

use crate::codec;
use crate::command::Response;
use crate::state::KvState;
use crate::types::{
    Entry, GroupId, LogId, SnapshotMeta, StorageError, StoredMembership, TypeConfig, Vote,
};

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

/// An ordered byte map with atomic batches and explicit durability: all the storage seedkv
/// needs from its environment. See the module docs for what is built on it.
///
/// Reads see every write whose future has resolved, durable or not.
pub trait Disk: Send + Sync + 'static {
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

    /// The value at `key`.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, DiskError>;

    /// Up to `limit` entries with keys in `[from, to)`, in key order; in reverse key order
    /// (the last ones first) when `reverse`.
    fn scan(&self, from: &[u8], to: &[u8], limit: usize, reverse: bool) -> Result<Rows, DiskError>;
}

/// Key-value rows in key order.
pub type Rows = Vec<(Vec<u8>, Vec<u8>)>;

/// Where each piece of a group's state lives in the disk's key space.
pub mod keys {
    use super::GroupId;

    const VOTE: u8 = b'v';
    const LOG: u8 = b'l';
    const PURGED: u8 = b'p';
    const SNAPSHOT: u8 = b's';

    fn group_key(group: GroupId, tag: u8) -> Vec<u8> {
        let mut key = Vec::with_capacity(14);
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
    /// The latest snapshot.
    pub fn snapshot(group: GroupId) -> Vec<u8> {
        group_key(group, SNAPSHOT)
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
    /// True if `key` is any group's vote: lets a test disk single votes out.
    pub fn is_vote(key: &[u8]) -> bool {
        key.len() == 6 && key[0] == b'g' && key[5] == VOTE
    }
    /// The index of a log key.
    pub fn log_index(key: &[u8]) -> Option<u64> {
        let tail: [u8; 8] = key.get(6..14)?.try_into().ok()?;
        Some(u64::from_be_bytes(tail))
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

fn decode_at<T: serde::de::DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Result<T, StorageError> {
    codec::decode(bytes).map_err(|err| {
        read_err(&DiskError::Corrupt {
            key: format!("{key:?}"),
            reason: err.to_string(),
        })
    })
}

/// Appends waiting for the fsync that makes them durable; more wait behind the queue.
pub const MAX_APPENDS_AWAITING_SYNC: usize = 4_096;

/// The Raft log and vote of one group, on a [`Disk`].
///
/// Appends are written at once (visible to reads, in order) and acknowledged to openraft only
/// after an fsync that started after them. One syncer task runs those fsyncs back to back, each
/// covering every append queued before it — group commit — so Raft keeps working while the disk
/// syncs and one fsync serves many entries.
pub struct LogStore<D> {
    disk: Arc<D>,
    group: GroupId,
    syncer: tokio::sync::mpsc::Sender<LogFlushed<TypeConfig>>,
}

impl<D> Clone for LogStore<D> {
    fn clone(&self) -> Self {
        LogStore {
            disk: self.disk.clone(),
            group: self.group,
            syncer: self.syncer.clone(),
        }
    }
}

impl<D: Disk> LogStore<D> {
    /// The log of `group` on `disk`; starts its syncer task on the current runtime.
    pub fn new(disk: Arc<D>, group: GroupId) -> Self {
        let (syncer, mut waiting) =
            tokio::sync::mpsc::channel::<LogFlushed<TypeConfig>>(MAX_APPENDS_AWAITING_SYNC);
        let sync_disk = disk.clone();
        tokio::spawn(async move {
            while let Some(first) = waiting.recv().await {
                let mut flushed = vec![first];
                // Bounded by the channel's capacity.
                while let Ok(next) = waiting.try_recv() {
                    flushed.push(next);
                }
                let result = sync_disk.sync().await;
                // In append order: openraft's flushed position only moves forward.
                for callback in flushed {
                    callback.log_io_completed(
                        result
                            .clone()
                            .map_err(|err| std::io::Error::other(err.to_string())),
                    );
                }
            }
        });
        LogStore {
            disk,
            group,
            syncer,
        }
    }

    fn read_purged(&self) -> Result<Option<LogId>, StorageError> {
        let key = keys::purged(self.group);
        match self.disk.get(&key).map_err(|e| read_err(&e))? {
            Some(bytes) => decode_at(&key, &bytes),
            None => Ok(None),
        }
    }

    fn last_entry(&self) -> Result<Option<Entry>, StorageError> {
        let from = keys::log(self.group, 0);
        let to = keys::log_end(self.group);
        let last = self
            .disk
            .scan(&from, &to, 1, true)
            .map_err(|e| read_err(&e))?;
        match last.first() {
            Some((key, bytes)) => decode_at(key, bytes).map(Some),
            None => Ok(None),
        }
    }
}

impl<D: Disk> RaftLogReader<TypeConfig> for LogStore<D> {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let to = match range.end_bound() {
            Bound::Included(i) => keys::log(self.group, i.saturating_add(1)),
            Bound::Excluded(i) => keys::log(self.group, *i),
            Bound::Unbounded => keys::log_end(self.group),
        };
        let from = keys::log(self.group, start);
        if from >= to {
            return Ok(Vec::new());
        }
        let rows = self
            .disk
            .scan(&from, &to, usize::MAX, false)
            .map_err(|e| read_err(&e))?;
        let mut entries = Vec::with_capacity(rows.len());
        for (key, bytes) in rows {
            let entry: Entry = decode_at(&key, &bytes)?;
            // The key and the entry it holds must agree, and entries must be contiguous.
            assert_eq!(keys::log_index(&key), Some(entry.log_id.index));
            if let Some(prev) = entries.last() {
                let prev: &Entry = prev;
                assert_eq!(prev.log_id.index + 1, entry.log_id.index, "log has a hole");
            }
            entries.push(entry);
        }
        Ok(entries)
    }
}

impl<D: Disk> RaftLogStorage<TypeConfig> for LogStore<D> {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id = self.read_purged()?;
        let last_log_id = match self.last_entry()? {
            Some(entry) => Some(entry.log_id),
            None => last_purged_log_id,
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let mut batch = WriteBatch::default();
        batch.put(keys::vote(self.group), codec::encode(vote));
        self.disk
            .write(batch, Durability::Sync)
            .await
            .map_err(|e| io_err(StorageIOError::write_vote, &e))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        let key = keys::vote(self.group);
        match self.disk.get(&key).map_err(|e| read_err(&e))? {
            Some(bytes) => decode_at(&key, &bytes).map(Some),
            None => Ok(None),
        }
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = WriteBatch::default();
        for entry in entries {
            batch.put(
                keys::log(self.group, entry.log_id.index),
                codec::encode(&entry),
            );
        }
        // Visible now, durable once the syncer's next fsync completes.
        if let Err(err) = self.disk.write(batch, Durability::Buffered).await {
            callback.log_io_completed(Err(std::io::Error::other(err.to_string())));
            return Err(io_err(StorageIOError::write_logs, &err));
        }
        if self.syncer.send(callback).await.is_err() {
            return Err(io_err(
                StorageIOError::write_logs,
                &DiskError::Io("the log syncer has stopped".into()),
            ));
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut batch = WriteBatch::default();
        batch.delete_range(
            keys::log(self.group, log_id.index),
            keys::log_end(self.group),
        );
        self.disk
            .write(batch, Durability::Sync)
            .await
            .map_err(|e| io_err(StorageIOError::write_logs, &e))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut batch = WriteBatch::default();
        batch.put(keys::purged(self.group), codec::encode(&Some(log_id)));
        batch.delete_range(
            keys::log(self.group, 0),
            keys::log(self.group, log_id.index.saturating_add(1)),
        );
        // Buffered is enough: a purge lost in a crash leaves entries the snapshot covers.
        self.disk
            .write(batch, Durability::Buffered)
            .await
            .map_err(|e| io_err(StorageIOError::write_logs, &e))
    }
}

/// What the state machine has applied: the map plus Raft's bookkeeping.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Applied {
    /// The key-value map.
    pub kv: KvState,
    /// The last log id applied.
    pub last_applied: Option<LogId>,
    /// The last membership applied.
    pub membership: StoredMembership,
}

/// A snapshot as stored on disk and shipped to followers.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    /// `codec::encode(&Applied)`.
    #[serde(with = "serde_bytes")]
    data: Vec<u8>,
}

/// The applied state, shared between Raft (which applies) and the read path (which reads).
#[derive(Debug, Default)]
pub struct SharedState(RwLock<Applied>);

impl SharedState {
    /// A read view of the applied state. Never held across an await.
    pub fn read(&self) -> RwLockReadGuard<'_, Applied> {
        self.0
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Applied> {
        self.0
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The state machine of one group: applies committed entries, builds and installs snapshots.
pub struct StateMachineStore<D> {
    disk: Arc<D>,
    group: GroupId,
    state: Arc<SharedState>,
    snapshots_built: u64,
}

impl<D: Disk> StateMachineStore<D> {
    /// Opens the state machine of `group`, starting from the latest durable snapshot.
    pub fn open(disk: Arc<D>, group: GroupId) -> Result<Self, StorageError> {
        let state = Arc::new(SharedState::default());
        let store = StateMachineStore {
            disk,
            group,
            state,
            snapshots_built: 0,
        };
        if let Some(snapshot) = store.read_snapshot()? {
            let applied: Applied = decode_at(&keys::snapshot(group), &snapshot.data)?;
            assert_eq!(applied.last_applied, snapshot.meta.last_log_id);
            tracing::debug!(group = %group, snapshot = ?snapshot.meta.last_log_id, "state machine opened from snapshot");
            *store.state.write() = applied;
        }
        Ok(store)
    }

    /// The applied state, for reads.
    pub fn state(&self) -> Arc<SharedState> {
        self.state.clone()
    }

    fn read_snapshot(&self) -> Result<Option<StoredSnapshot>, StorageError> {
        let key = keys::snapshot(self.group);
        match self.disk.get(&key).map_err(|e| read_err(&e))? {
            Some(bytes) => decode_at(&key, &bytes).map(Some),
            None => Ok(None),
        }
    }

    async fn save_snapshot(&self, snapshot: &StoredSnapshot) -> Result<(), StorageError> {
        let mut batch = WriteBatch::default();
        batch.put(keys::snapshot(self.group), codec::encode(snapshot));
        self.disk
            .write(batch, Durability::Sync)
            .await
            .map_err(|e| write_err(&e))
    }
}

impl<D: Disk> RaftSnapshotBuilder<TypeConfig> for StateMachineStore<D> {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let (data, last_log_id, membership) = {
            let applied = self.state.read();
            (
                codec::encode(&*applied),
                applied.last_applied,
                applied.membership.clone(),
            )
        };
        self.snapshots_built += 1;
        let snapshot_id = match last_log_id {
            Some(id) => format!("{}-{}-{}", id.leader_id, id.index, self.snapshots_built),
            None => format!("empty-{}", self.snapshots_built),
        };
        let meta = SnapshotMeta {
            last_log_id,
            last_membership: membership,
            snapshot_id,
        };
        let stored = StoredSnapshot { meta, data };
        self.save_snapshot(&stored).await?;
        tracing::debug!(snapshot = ?stored.meta.last_log_id, "snapshot built");
        Ok(Snapshot {
            meta: stored.meta,
            snapshot: Box::new(std::io::Cursor::new(stored.data)),
        })
    }
}

impl<D: Disk> RaftStateMachine<TypeConfig> for StateMachineStore<D> {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let applied = self.state.read();
        Ok((applied.last_applied, applied.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut applied = self.state.write();
        let mut responses = Vec::new();
        for entry in entries {
            // Entries arrive in order, each exactly once.
            let expected_index = applied.last_applied.map_or(0, |id| id.index) + 1;
            assert!(
                entry.log_id.index == expected_index || applied.last_applied.is_none(),
                "applying index {} after {:?}",
                entry.log_id.index,
                applied.last_applied
            );
            applied.last_applied = Some(entry.log_id);
            let response = match entry.payload {
                EntryPayload::Blank => Response::None,
                EntryPayload::Normal(command) => applied.kv.apply(entry.log_id.index, &command),
                EntryPayload::Membership(membership) => {
                    applied.membership = StoredMembership::new(Some(entry.log_id), membership);
                    Response::None
                }
            };
            responses.push(response);
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        StateMachineStore {
            disk: self.disk.clone(),
            group: self.group,
            state: self.state.clone(),
            snapshots_built: self.snapshots_built,
        }
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<std::io::Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(std::io::Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<std::io::Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let applied: Applied = decode_at(&keys::snapshot(self.group), &data)?;
        if applied.last_applied != meta.last_log_id {
            return Err(read_err(&DiskError::Corrupt {
                key: "snapshot".into(),
                reason: "snapshot data does not match its metadata".into(),
            }));
        }
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        self.save_snapshot(&stored).await?;
        tracing::debug!(snapshot = ?meta.last_log_id, previous = ?self.state.read().last_applied, "installing snapshot");
        *self.state.write() = applied;
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        Ok(self.read_snapshot()?.map(|stored| Snapshot {
            meta: stored.meta,
            snapshot: Box::new(std::io::Cursor::new(stored.data)),
        }))
    }
}
