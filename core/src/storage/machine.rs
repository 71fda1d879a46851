//! The applied state of one group, as rows on the disk.
//!
//! Each key is one row (`keys::row`: generation, slot, key → `Versioned`), each client
//! session a header row plus one row per kept answer. One applied meta row names the live
//! generation and carries the last applied log id, the membership, the next client id and
//! the key count. Applying a run of entries reads the rows it needs (point lookups, with the
//! run's own writes layered on top) and writes every changed row together with the new meta
//! in one atomic batch, without an fsync: the Raft log is the durable record, and a restart
//! resumes from whatever applied point the disk kept and replays the log after it.
//!
//! Memory holds only the meta and the sessions (both bounded), never the rows: reads go to
//! the disk, multi-key reads through one point-in-time view, so they see one applied point.

// openraft's storage traits return its `StorageError`, large as it is.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use serde::{Deserialize, Serialize};

use super::snapshot::{SnapshotData, SnapshotView, StagedSnapshot};
use super::{
    corrupt, keys, read_err, write_err, DiskError, DiskRead, Durability, DynDisk, WriteBatch,
};
use crate::codec;
use crate::command::{Command, Response, Revision, ScanRange, Versioned};
use crate::metrics::NodeMetrics;
use crate::session::{
    SessionEffect, SessionHeader, Sessions, MAX_ANSWERS, MAX_ANSWERS_PER_SESSION, MAX_SESSIONS,
};
use crate::slot::Slot;
use crate::state::{self, digest_row, Fnv64, RowStore, ShardState};
use crate::types::{
    Entry, GroupId, LogId, SnapshotMeta, StorageError, StoredMembership, TypeConfig,
};

/// The layout version of the applied state; a directory of another version is refused.
pub const STATE_FORMAT: u32 = 3;

/// What the applied meta row holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedMeta {
    /// [`STATE_FORMAT`] when written.
    pub format: u32,
    /// The generation whose rows are live.
    pub generation: u32,
    /// The last log id applied.
    pub last_applied: Option<LogId>,
    /// The last membership applied.
    pub membership: StoredMembership,
    /// The id the next session registration gets.
    pub next_client_id: u64,
    /// The slots the group owns, and the slot map (meta group).
    pub shard: ShardState,
}

impl Default for AppliedMeta {
    fn default() -> Self {
        AppliedMeta {
            format: STATE_FORMAT,
            generation: 0,
            last_applied: None,
            membership: StoredMembership::default(),
            next_client_id: 0,
            shard: ShardState::default(),
        }
    }
}

impl AppliedMeta {
    /// The applied meta a view of the disk holds (the default on a blank disk).
    pub fn read(disk: &dyn DiskRead, group: GroupId) -> Result<AppliedMeta, DiskError> {
        let key = keys::applied(group);
        let meta: AppliedMeta = match disk.get(&key)? {
            Some(bytes) => codec::decode(&bytes).map_err(|err| corrupt(&key, err))?,
            None => return Ok(AppliedMeta::default()),
        };
        if meta.format != STATE_FORMAT {
            return Err(corrupt(
                &key,
                format!(
                    "applied state format {} (this build reads {STATE_FORMAT})",
                    meta.format
                ),
            ));
        }
        meta.shard.check().map_err(|reason| corrupt(&key, reason))?;
        Ok(meta)
    }

    /// The snapshot metadata of the state this meta describes.
    pub fn snapshot_meta(&self) -> SnapshotMeta {
        let snapshot_id = match self.last_applied {
            Some(id) => format!("{}-{}", id.leader_id, id.index),
            None => "empty".into(),
        };
        SnapshotMeta {
            last_log_id: self.last_applied,
            last_membership: self.membership.clone(),
            snapshot_id,
        }
    }
}

/// The in-memory part of the applied state.
#[derive(Debug, Default)]
struct Applied {
    /// Runs ahead of the disk while an entry run is being written.
    meta: AppliedMeta,
    sessions: Sessions,
    /// What readers see of ownership: published once the rows it covers are on the disk,
    /// so a slot taken in a run is never served before the rows copied in with it.
    visible: Arc<ShardState>,
}

impl Applied {
    fn new(meta: AppliedMeta, sessions: Sessions) -> Applied {
        let visible = Arc::new(meta.shard.clone());
        Applied {
            meta,
            sessions,
            visible,
        }
    }
}

/// What [`SharedState::summary`] reads off the whole state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateSummary {
    /// The last log index applied.
    pub applied_index: u64,
    /// The state digest.
    pub digest: u64,
    /// Keys held.
    pub key_count: u64,
}

/// What readers see while a run that changes `old` into `new` is being written: `old`, with
/// every slot whose serving differs between the two frozen (refused, retried).
fn in_transition(old: &ShardState, new: &ShardState) -> ShardState {
    let mut interim = old.clone();
    for slot in Slot::all() {
        if old.owned.owns(slot) && old.serving(slot) != new.serving(slot) {
            interim.moves.frozen.entry(slot).or_insert(0);
        }
    }
    interim
}

/// A chunk of one slot's rows, read from one view of the disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotRows {
    /// The rows asked for, in key order.
    pub rows: Vec<(Vec<u8>, Versioned)>,
    /// The last key read (a filter may have left it out of `rows`): the next chunk starts
    /// after it.
    pub last_key: Option<Vec<u8>>,
    /// No row of the slot follows.
    pub done: bool,
    /// The applied index of the view read.
    pub view_index: u64,
    /// Once `done`: the rows the slot holds in all, in that view.
    pub total: Option<u64>,
}

/// The applied state of one group, shared by Raft (which applies) and the read path.
pub struct SharedState {
    group: GroupId,
    pub(super) disk: Arc<dyn DynDisk>,
    applied: RwLock<Applied>,
}

/// Reads one row.
fn read_row(
    disk: &dyn DiskRead,
    group: GroupId,
    generation: u32,
    key: &[u8],
) -> Result<Option<Versioned>, DiskError> {
    let row = keys::row(group, generation, key);
    match disk.get(&row)? {
        Some(bytes) => codec::decode(&bytes)
            .map(Some)
            .map_err(|err| corrupt(&row, err)),
        None => Ok(None),
    }
}

/// The smallest key greater than every key that starts with `prefix` (none if the prefix
/// is empty or all 0xff).
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// Rows per disk read while walking a whole generation.
const WALK_ROWS: usize = 1_024;
/// Bytes per disk read while walking a whole generation.
const WALK_BYTES: usize = 1 << 20;

impl SharedState {
    fn read(&self) -> RwLockReadGuard<'_, Applied> {
        self.applied
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Applied> {
        self.applied
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The group this state belongs to.
    pub fn group(&self) -> GroupId {
        self.group
    }

    /// The applied meta (a copy).
    pub fn meta(&self) -> AppliedMeta {
        self.read().meta.clone()
    }

    /// The last log id applied.
    pub fn last_applied(&self) -> Option<LogId> {
        self.read().meta.last_applied
    }

    /// Whether the group owns `slot` at the applied state.
    pub fn owns(&self, slot: Slot) -> bool {
        self.read().visible.owned.owns(slot)
    }

    /// The slots the group owns at the applied state.
    pub fn ownership(&self) -> crate::ownership::Ownership {
        self.read().visible.owned.clone()
    }

    /// The sharding state readers go by (ownership, moves, the map): a pointer, replaced
    /// whenever it changes, so a reader can tell whether it changed while it read.
    pub fn shard(&self) -> Arc<ShardState> {
        self.read().visible.clone()
    }

    /// The slot map the group holds (the meta group), if any.
    pub fn slot_map(&self) -> Option<Arc<crate::slot_map::SlotMap>> {
        self.read().visible.map.clone()
    }

    /// Sessions held.
    pub fn session_count(&self) -> usize {
        self.read().sessions.len()
    }

    /// The row of `key`.
    pub fn get(&self, key: &[u8]) -> Result<Option<Versioned>, DiskError> {
        let applied = self.read();
        read_row(&*self.disk, self.group, applied.meta.generation, key)
    }

    /// The rows of `keys`, all at one applied point.
    pub fn multi_get(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Versioned>>, DiskError> {
        let (view, generation) = self.view()?;
        keys.iter()
            .map(|key| read_row(&*view, self.group, generation, key))
            .collect()
    }

    /// A point-in-time view of the disk and the live generation in it.
    fn view(&self) -> Result<(Box<dyn DiskRead>, u32), DiskError> {
        let applied = self.read();
        Ok((self.disk.view()?, applied.meta.generation))
    }

    /// Up to `limit` rows of `range` in key order (`limit` 0: no limit), all at one applied
    /// point, from the slots the group owns. Rows are stored by slot, so this walks every
    /// owned slot's part of the range and keeps the smallest keys: memory stays within about
    /// `limit` rows, whatever the data size.
    pub fn scan(
        &self,
        range: &ScanRange,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Versioned)>, DiskError> {
        let limit = if limit == 0 { usize::MAX } else { limit };
        let owned = self.ownership();
        let (view, generation) = self.view()?;
        let start = range.start().to_vec();
        let mut end = prefix_end(&range.prefix);
        if !range.to.is_empty() && end.as_ref().is_none_or(|end| range.to < *end) {
            end = Some(range.to.clone());
        }
        let mut best: BTreeMap<Vec<u8>, Versioned> = BTreeMap::new();
        for slot in Slot::all().filter(|&slot| owned.owns(slot)) {
            let slot_start = keys::slot_start(self.group, generation, slot);
            let mut from = slot_start.clone();
            from.extend_from_slice(&start);
            // Keys at or past the largest kept cannot enter a full result.
            let bound = match (best.len() >= limit, best.last_key_value(), &end) {
                (true, Some((last, _)), Some(end)) => Some(last.min(end).clone()),
                (true, Some((last, _)), None) => Some(last.clone()),
                (_, _, end) => end.clone(),
            };
            let to = match bound {
                Some(bound) => {
                    let mut to = slot_start;
                    to.extend_from_slice(&bound);
                    to
                }
                None => keys::slot_end(self.group, generation, slot),
            };
            if from >= to {
                continue;
            }
            for (row, bytes) in view.scan(&from, &to, limit, false)? {
                let Some(key) = keys::row_user_key(&row) else {
                    return Err(corrupt(&row, "not a row key"));
                };
                if !range.contains(key) {
                    continue;
                }
                let value: Versioned = codec::decode(&bytes).map_err(|err| corrupt(&row, err))?;
                best.insert(key.to_vec(), value);
                if best.len() > limit {
                    best.pop_last();
                }
            }
        }
        Ok(best.into_iter().collect())
    }

    /// Rows of `slot` in key order after `after` (from the first with `None`) whose
    /// revision is above `since` (0: every row), about `max_bytes` of rows read at most (at
    /// least one row if any is left), from one view of the disk. See [`SlotRows`].
    pub fn slot_rows(
        &self,
        slot: Slot,
        after: Option<&[u8]>,
        since: u64,
        max_bytes: usize,
    ) -> Result<SlotRows, DiskError> {
        let view = self.disk.view()?;
        let meta = AppliedMeta::read(&*view, self.group)?;
        let generation = meta.generation;
        let mut from = keys::slot_start(self.group, generation, slot);
        if let Some(after) = after {
            from.extend_from_slice(after);
            from.push(0);
        }
        let to = keys::slot_end(self.group, generation, slot);
        // Pages of the slot until the rows kept reach `max_bytes` or the slot ends: rows
        // filtered out (unchanged since `since`) cost a read, not a chunk.
        let mut rows = Vec::new();
        let mut kept_bytes = 0;
        let mut last_key = None;
        let done = loop {
            let found = view.scan_bytes(&from, &to, WALK_ROWS, max_bytes)?;
            let read: usize = found
                .iter()
                .map(|(key, value)| key.len() + value.len())
                .sum();
            let end = found.len() < WALK_ROWS && read < max_bytes;
            if let Some((last, _)) = found.last() {
                from = last.clone();
                from.push(0);
            }
            for (row, bytes) in found {
                let key = keys::row_user_key(&row).ok_or_else(|| corrupt(&row, "not a row key"))?;
                let value: Versioned = codec::decode(&bytes).map_err(|err| corrupt(&row, err))?;
                last_key = Some(key.to_vec());
                if value.revision > since {
                    kept_bytes += row.len() + bytes.len();
                    rows.push((key.to_vec(), value));
                }
            }
            if end {
                break true;
            }
            if kept_bytes >= max_bytes || since == 0 {
                break false;
            }
        };
        let total = if done {
            let mut count = 0u64;
            let mut from = keys::slot_start(self.group, generation, slot);
            loop {
                let page = view.scan_bytes(&from, &to, WALK_ROWS, WALK_BYTES)?;
                let Some((last, _)) = page.last() else { break };
                count += page.len() as u64;
                from = last.clone();
                from.push(0);
            }
            Some(count)
        } else {
            None
        };
        Ok(SlotRows {
            rows,
            last_key,
            done,
            view_index: meta.last_applied.map_or(0, |id| id.index),
            total,
        })
    }

    /// The slots that hold at least one row, from one view (one short read per slot): for
    /// checks that rows live only where their slot is owned.
    pub fn row_slots(&self) -> Result<Vec<Slot>, DiskError> {
        let (view, generation) = self.view()?;
        let mut slots = Vec::new();
        for slot in Slot::all() {
            let from = keys::slot_start(self.group, generation, slot);
            let to = keys::slot_end(self.group, generation, slot);
            if !view.scan(&from, &to, 1, false)?.is_empty() {
                slots.push(slot);
            }
        }
        Ok(slots)
    }

    /// A 64-bit digest of every row and session (see [`crate::KvState::digest`], which
    /// gives the same digest for the same state). Reads every row: for tests and checks.
    pub fn digest(&self) -> Result<u64, DiskError> {
        self.summary().map(|summary| summary.digest)
    }

    /// The applied index, digest and key count of the state, read from one view. Reads
    /// every row.
    pub fn summary(&self) -> Result<StateSummary, DiskError> {
        // Meta, sessions and rows all from one view: memory runs ahead of the disk while an
        // entry run is being written or a snapshot switched to.
        let view = self.disk.view()?;
        let meta = AppliedMeta::read(&*view, self.group)?;
        let sessions = load_sessions(&*view, self.group, meta.generation, meta.next_client_id)?;
        let mut hash = Fnv64::default();
        let mut key_count = 0;
        let (mut from, to) = keys::rows(self.group, meta.generation);
        loop {
            let rows = view.scan_bytes(&from, &to, WALK_ROWS, WALK_BYTES)?;
            let Some((last, _)) = rows.last() else { break };
            let mut next = last.clone();
            next.push(0);
            for (row, bytes) in &rows {
                let key = keys::row_user_key(row).ok_or_else(|| corrupt(row, "not a row key"))?;
                let value: Versioned = codec::decode(bytes).map_err(|err| corrupt(row, err))?;
                digest_row(&mut hash, key, &value);
                key_count += 1;
            }
            from = next;
        }
        sessions.digest_into(&mut hash);
        meta.shard.digest_into(&mut hash);
        Ok(StateSummary {
            applied_index: meta.last_applied.map_or(0, |id| id.index),
            digest: hash.finish(),
            key_count,
        })
    }

    /// What applying `command` at `revision` would answer now, changing nothing. Only the
    /// simulator's deliberately wrong write path uses it.
    pub fn preview(&self, revision: Revision, command: &Command) -> Result<Response, DiskError> {
        let applied = self.read();
        let mut rows = PendingRows::new(&*self.disk, self.group, applied.meta.generation);
        let mut sessions = applied.sessions.clone();
        let mut shard = applied.meta.shard.clone();
        state::apply(&mut rows, &mut sessions, &mut shard, revision, command)
    }
}

/// Rows as an entry run sees them: its own writes over the disk.
struct PendingRows<'a> {
    disk: &'a dyn DiskRead,
    group: GroupId,
    generation: u32,
    /// Slots whose rows on the disk are all gone (written first, as range deletes).
    cleared: std::collections::BTreeSet<Slot>,
    pending: BTreeMap<Vec<u8>, Option<Versioned>>,
}

impl<'a> PendingRows<'a> {
    fn new(disk: &'a dyn DiskRead, group: GroupId, generation: u32) -> Self {
        PendingRows {
            disk,
            group,
            generation,
            cleared: std::collections::BTreeSet::new(),
            pending: BTreeMap::new(),
        }
    }

    /// The run's writes as one batch: cleared slots first, then the rows written since.
    fn into_batch(self, batch: &mut WriteBatch) {
        for slot in self.cleared {
            batch.delete_range(
                keys::slot_start(self.group, self.generation, slot),
                keys::slot_end(self.group, self.generation, slot),
            );
        }
        for (key, row) in self.pending {
            let row_key = keys::row(self.group, self.generation, &key);
            match row {
                Some(row) => batch.put(row_key, codec::encode(&row)),
                None => batch.delete(row_key),
            }
        }
    }
}

impl RowStore for PendingRows<'_> {
    type Error = DiskError;

    fn get(&self, key: &[u8]) -> Result<Option<Versioned>, DiskError> {
        match self.pending.get(key) {
            Some(row) => Ok(row.clone()),
            None if self.cleared.contains(&Slot::of(key)) => Ok(None),
            None => read_row(self.disk, self.group, self.generation, key),
        }
    }

    fn clear_slot(&mut self, slot: Slot) -> Result<(), DiskError> {
        self.pending.retain(|key, _| Slot::of(key) != slot);
        self.cleared.insert(slot);
        Ok(())
    }

    /// A blind write: a put never reads what it replaces, so its cost does not depend on
    /// whether the old row is cached.
    fn set(&mut self, key: &[u8], row: Option<Versioned>) -> Result<(), DiskError> {
        self.pending.insert(key.to_vec(), row);
        Ok(())
    }
}

/// Writes session changes as row operations of `generation`.
fn session_ops(
    batch: &mut WriteBatch,
    group: GroupId,
    generation: u32,
    effects: Vec<SessionEffect>,
) {
    for effect in effects {
        match effect {
            SessionEffect::Header { client_id, header } => batch.put(
                keys::session(group, generation, client_id),
                codec::encode(&header),
            ),
            SessionEffect::Answer {
                client_id,
                seq,
                answer,
            } => batch.put(
                keys::session_answer(group, generation, client_id, seq),
                codec::encode(&answer),
            ),
            // Point deletes, never range deletes: every read of a memtable walks its range
            // tombstones, and a write path that made one per write slowed reads to a crawl.
            SessionEffect::Forget { client_id, seq } => {
                batch.delete(keys::session_answer(group, generation, client_id, seq))
            }
            SessionEffect::Expire { client_id, answers } => {
                batch.delete(keys::session(group, generation, client_id));
                for seq in answers {
                    batch.delete(keys::session_answer(group, generation, client_id, seq));
                }
            }
        }
    }
}

/// Reads the sessions of `generation` back from their rows.
pub(super) fn load_sessions(
    disk: &dyn DiskRead,
    group: GroupId,
    generation: u32,
    next_client_id: u64,
) -> Result<Sessions, DiskError> {
    let (from, to) = keys::sessions(group, generation);
    let most = MAX_SESSIONS + MAX_ANSWERS.max(MAX_ANSWERS_PER_SESSION);
    let rows = disk.scan(&from, &to, most + 1, false)?;
    if rows.len() > most {
        return Err(corrupt(&from, format!("more than {most} session rows")));
    }
    let mut headers = Vec::new();
    let mut answers = Vec::new();
    for (key, bytes) in rows {
        match keys::parse_session(&key) {
            Some((client_id, None)) => {
                let header: SessionHeader = codec::decode(&bytes).map_err(|e| corrupt(&key, e))?;
                headers.push((client_id, header));
            }
            Some((client_id, Some(seq))) => {
                let answer: Response = codec::decode(&bytes).map_err(|e| corrupt(&key, e))?;
                answers.push((client_id, seq, answer));
            }
            None => return Err(corrupt(&key, "not a session key")),
        }
    }
    Sessions::restore(next_client_id, headers, answers).map_err(|reason| corrupt(&from, reason))
}

/// The state machine of one group: applies committed entries, builds and installs snapshots.
pub struct StateMachineStore {
    shared: Arc<SharedState>,
    /// The highest applied index known durable (see [`super::LogStore`]'s purge).
    durable: Arc<tokio::sync::watch::Sender<u64>>,
    metrics: Arc<NodeMetrics>,
}

impl StateMachineStore {
    /// Opens the state machine of `group`: reads the applied meta and sessions, removes
    /// what a crash left of other generations, and makes the applied point durable (a
    /// purge may rely on it). Snapshot builds count into `metrics`.
    pub async fn open(
        disk: Arc<dyn DynDisk>,
        group: GroupId,
        metrics: Arc<NodeMetrics>,
    ) -> Result<Self, StorageError> {
        if disk
            .get(&keys::legacy_snapshot(group))
            .map_err(|e| read_err(&e))?
            .is_some()
        {
            return Err(read_err(&corrupt(
                &keys::legacy_snapshot(group),
                "this data directory was written by an older seedkv whose snapshot format this \
                 build cannot read; start the node on an empty directory and let it catch up",
            )));
        }
        let meta = AppliedMeta::read(&*disk, group).map_err(|e| read_err(&e))?;
        let sessions = load_sessions(&*disk, group, meta.generation, meta.next_client_id)
            .map_err(|e| read_err(&e))?;
        let (all_from, all_to) = keys::all_generations(group);
        let mut cleanup = WriteBatch::default();
        cleanup.delete_range(all_from, keys::generation(group, meta.generation));
        cleanup.delete_range(keys::generation_end(group, meta.generation), all_to);
        disk.write_dyn(cleanup, Durability::Buffered)
            .await
            .map_err(|e| write_err(&e))?;
        disk.sync_dyn().await.map_err(|e| write_err(&e))?;
        let applied_index = meta.last_applied.map_or(0, |id| id.index);
        tracing::debug!(group = %group, applied = ?meta.last_applied, generation = meta.generation, "state machine opened");
        let (durable, _) = tokio::sync::watch::channel(applied_index);
        Ok(StateMachineStore {
            shared: Arc::new(SharedState {
                group,
                disk,
                applied: RwLock::new(Applied::new(meta, sessions)),
            }),
            durable: Arc::new(durable),
            metrics,
        })
    }

    /// The applied state, for reads.
    pub fn state(&self) -> Arc<SharedState> {
        self.shared.clone()
    }

    /// The highest applied index known to be durable.
    pub fn durable_applied(&self) -> tokio::sync::watch::Receiver<u64> {
        self.durable.subscribe()
    }

    fn mark_durable(&self, index: u64) {
        self.durable.send_if_modified(|durable| {
            let raised = index > *durable;
            *durable = (*durable).max(index);
            raised
        });
    }

    /// A view of the applied state as it is now, with the meta it holds.
    fn current_view(&self) -> Result<SnapshotView, StorageError> {
        let view = self.shared.disk.view().map_err(|e| read_err(&e))?;
        let meta = AppliedMeta::read(&*view, self.shared.group).map_err(|e| read_err(&e))?;
        Ok(SnapshotView::new(self.shared.group, meta, view))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    /// A snapshot is the applied state itself: take a view, then make everything in it
    /// durable with one fsync. Nothing is copied.
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let started = tokio::time::Instant::now();
        let view = self.current_view()?;
        self.shared
            .disk
            .sync_dyn()
            .await
            .map_err(|e| write_err(&e))?;
        let index = view.meta().last_applied.map_or(0, |id| id.index);
        self.mark_durable(index);
        self.metrics.snapshot_builds.inc();
        self.metrics
            .snapshot_build_seconds
            .observe(started.elapsed().as_secs_f64());
        tracing::debug!(group = %self.shared.group, snapshot = ?view.meta().last_applied, "snapshot built");
        Ok(Snapshot {
            meta: view.meta().snapshot_meta(),
            snapshot: Box::new(SnapshotData::View(view)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let applied = self.shared.read();
        Ok((applied.meta.last_applied, applied.meta.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let group = self.shared.group;
        let (batch, responses, shard) = {
            let mut applied = self.shared.write();
            let applied = &mut *applied;
            let generation = applied.meta.generation;
            let mut rows = PendingRows::new(&*self.shared.disk, group, generation);
            let mut responses = Vec::new();
            let mut batch = WriteBatch::default();
            let mut shard_changed = false;
            for entry in entries {
                // Entries arrive in order, each exactly once.
                let expected_index = applied.meta.last_applied.map_or(0, |id| id.index) + 1;
                assert!(
                    entry.log_id.index == expected_index || applied.meta.last_applied.is_none(),
                    "applying index {} after {:?}",
                    entry.log_id.index,
                    applied.meta.last_applied
                );
                applied.meta.last_applied = Some(entry.log_id);
                let response = match entry.payload {
                    EntryPayload::Blank => Response::None,
                    EntryPayload::Normal(command) => {
                        let changes_shard = command.changes_shard();
                        shard_changed |= changes_shard;
                        let response = state::apply(
                            &mut rows,
                            &mut applied.sessions,
                            &mut applied.meta.shard,
                            entry.log_id.index,
                            &command,
                        )
                        .map_err(|e| read_err(&e))?;
                        if changes_shard {
                            tracing::debug!(group = %group, index = entry.log_id.index, %command, ?response, "applied a sharding entry");
                        }
                        response
                    }
                    EntryPayload::Membership(membership) => {
                        applied.meta.membership =
                            StoredMembership::new(Some(entry.log_id), membership);
                        Response::None
                    }
                };
                responses.push(response);
            }
            rows.into_batch(&mut batch);
            session_ops(
                &mut batch,
                group,
                generation,
                applied.sessions.take_effects(),
            );
            applied.meta.next_client_id = applied.sessions.next_client_id();
            debug_assert_eq!(applied.meta.shard.check(), Ok(()));
            batch.put(keys::applied(group), codec::encode(&applied.meta));
            let shard = shard_changed.then(|| {
                // Until the batch is on the disk, readers must not see the rows of a slot
                // whose serving changed in this run (released, its rows deleted; taken, its
                // copy not written yet): such slots read as frozen meanwhile.
                applied.visible = Arc::new(in_transition(&applied.visible, &applied.meta.shard));
                Arc::new(applied.meta.shard.clone())
            });
            (batch, responses, shard)
        };
        // Buffered: a crash may lose a suffix of applied runs, which the log replays.
        self.shared
            .disk
            .write_dyn(batch, Durability::Buffered)
            .await
            .map_err(|e| write_err(&e))?;
        if let Some(shard) = shard {
            self.shared.write().visible = shard;
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        StateMachineStore {
            shared: self.shared.clone(),
            durable: self.durable.clone(),
            metrics: self.metrics.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotData>, StorageError> {
        // Snapshots arrive through `snapshot::Staging` and `Raft::install_full_snapshot`.
        Err(write_err(&DiskError::Io(
            "chunked snapshot install is not supported; snapshots stream into staging".into(),
        )))
    }

    /// Switches to a snapshot received into a staging generation: one synced write of the
    /// meta naming it, then the old generation is removed. A crash before the write keeps
    /// the old state (the staging rows are removed at the next start); after it, the new.
    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<SnapshotData>,
    ) -> Result<(), StorageError> {
        let group = self.shared.group;
        let started = tokio::time::Instant::now();
        let staged: StagedSnapshot = match *snapshot {
            SnapshotData::Staged(staged) => staged,
            SnapshotData::View(_) => {
                return Err(write_err(&DiskError::Io(
                    "a snapshot view of this node cannot be installed on it".into(),
                )))
            }
        };
        let old_generation = self.shared.read().meta.generation;
        if staged.group != group || staged.generation != old_generation.wrapping_add(1) {
            return Err(write_err(&DiskError::Io(format!(
                "staged snapshot of {} generation {} does not follow {group} generation {old_generation}",
                staged.group, staged.generation
            ))));
        }
        let sessions = load_sessions(
            &*self.shared.disk,
            group,
            staged.generation,
            staged.header.next_client_id,
        )
        .map_err(|e| read_err(&e))?;
        let new_meta = AppliedMeta {
            format: STATE_FORMAT,
            generation: staged.generation,
            last_applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
            next_client_id: staged.header.next_client_id,
            shard: staged.header.shard.clone(),
        };
        tracing::debug!(group = %group, snapshot = ?meta.last_log_id, previous = ?self.shared.read().meta.last_applied, generation = staged.generation, "installing snapshot");
        // Readers switch first (the staged rows are complete), then the disk: a crash before
        // the synced write restarts on the old generation, which is still whole.
        *self.shared.write() = Applied::new(new_meta.clone(), sessions);
        let mut switch = WriteBatch::default();
        switch.put(keys::applied(group), codec::encode(&new_meta));
        self.shared
            .disk
            .write_dyn(switch, Durability::Sync)
            .await
            .map_err(|e| write_err(&e))?;
        self.mark_durable(meta.last_log_id.map_or(0, |id| id.index));
        self.metrics.snapshot_installs.inc();
        self.metrics
            .snapshot_install_seconds
            .observe(started.elapsed().as_secs_f64());
        // Readers now use the new generation; the old one can go (a crash before this
        // write leaves it to the next start's clean-up).
        let mut cleanup = WriteBatch::default();
        cleanup.delete_range(
            keys::generation(group, old_generation),
            keys::generation_end(group, old_generation),
        );
        self.shared
            .disk
            .write_dyn(cleanup, Durability::Buffered)
            .await
            .map_err(|e| write_err(&e))
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let view = self.current_view()?;
        if view.meta().last_applied.is_none() {
            return Ok(None);
        }
        Ok(Some(Snapshot {
            meta: view.meta().snapshot_meta(),
            snapshot: Box::new(SnapshotData::View(view)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_whose_serving_changes_reads_as_frozen_until_the_run_is_written() {
        use crate::ownership::OwnedRange;
        let slot = |n| Slot::new(n).expect("slot");
        let mut old = ShardState::default();
        old.owned.take(&[OwnedRange {
            first: slot(0),
            last: slot(9),
            epoch: 1,
        }]);
        let mut new = old.clone();
        assert!(new.owned.release(slot(3), 2));
        new.owned.take(&[OwnedRange {
            first: slot(20),
            last: slot(20),
            epoch: 2,
        }]);
        let interim = in_transition(&old, &new);
        assert_eq!(interim.serving(slot(3)), state::Serving::Frozen);
        assert_eq!(interim.serving(slot(4)), state::Serving::Owned { epoch: 1 });
        assert_eq!(
            interim.serving(slot(20)),
            state::Serving::NotOwned,
            "taken, but its rows may not be written yet"
        );
    }

    #[test]
    fn prefix_end_is_the_next_prefix() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
        assert_eq!(prefix_end(b""), None);
    }
}
