//! The Raft log and vote of one group, on a [`Disk`].

// openraft's storage traits return its `StorageError`, large as it is.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;
use std::time::Duration;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader, StorageIOError};

use super::{decode_at, io_err, keys, read_err, Disk, DiskError, Durability, WriteBatch};
use crate::codec;
use crate::metrics::NodeMetrics;
use crate::types::{Entry, GroupId, LogId, StorageError, TypeConfig, Vote};

/// Appends waiting for the fsync that makes them durable; more wait behind the queue.
pub const MAX_APPENDS_AWAITING_SYNC: usize = 4_096;

/// The fsyncs of one disk, shared by the logs of every group on it: appends are written at
/// once and queued here, and one task runs fsyncs back to back, each covering every append
/// queued before it began, whatever its group (group commit across groups). One fsync on a
/// node then serves every group that appended meanwhile.
#[derive(Clone)]
pub struct LogSyncer {
    /// Each append's callback with the number of entries it wrote.
    queue: tokio::sync::mpsc::Sender<(LogFlushed<TypeConfig>, u64)>,
    /// When the fsync now running began, if one is.
    running_since: Arc<std::sync::Mutex<Option<tokio::time::Instant>>>,
}

impl LogSyncer {
    /// Starts the syncing task for `disk` on the current runtime, counting into `metrics`;
    /// it ends when every handle is dropped.
    pub fn start<D: Disk>(disk: Arc<D>, metrics: Arc<NodeMetrics>) -> LogSyncer {
        let (queue, mut waiting) =
            tokio::sync::mpsc::channel::<(LogFlushed<TypeConfig>, u64)>(MAX_APPENDS_AWAITING_SYNC);
        let running_since = Arc::new(std::sync::Mutex::new(None));
        let running = running_since.clone();
        tokio::spawn(async move {
            while let Some(first) = waiting.recv().await {
                let mut flushed = vec![first];
                // Bounded by the channel's capacity.
                while let Ok(next) = waiting.try_recv() {
                    flushed.push(next);
                }
                let started = tokio::time::Instant::now();
                set(&running, Some(started));
                let result = disk.sync().await;
                set(&running, None);
                let entries: u64 = flushed.iter().map(|(_, entries)| entries).sum();
                if result.is_ok() {
                    metrics.fsyncs.inc();
                    metrics
                        .fsync_seconds
                        .observe(started.elapsed().as_secs_f64());
                    metrics.entries_synced.inc_by(entries);
                    metrics.entries_per_fsync.observe(entries as f64);
                } else {
                    metrics.fsync_failures.inc();
                }
                // In append order: each group's flushed position only moves forward.
                for (callback, _) in flushed {
                    callback.log_io_completed(
                        result
                            .clone()
                            .map_err(|err| std::io::Error::other(err.to_string())),
                    );
                }
            }
        });
        LogSyncer {
            queue,
            running_since,
        }
    }

    /// How long the fsync now running has run, if one is: a stalled disk shows here.
    pub fn fsync_running_for(&self) -> Option<Duration> {
        let since = *self
            .running_since
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        since.map(|since| since.elapsed())
    }

    /// Appends waiting for an fsync now; at most [`MAX_APPENDS_AWAITING_SYNC`].
    pub fn depth(&self) -> usize {
        self.queue.max_capacity() - self.queue.capacity()
    }
}

fn set(slot: &std::sync::Mutex<Option<tokio::time::Instant>>, value: Option<tokio::time::Instant>) {
    *slot
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = value;
}

/// The Raft log and vote of one group, on a [`Disk`].
///
/// Appends are written at once (visible to reads, in order) and acknowledged to openraft only
/// after an fsync that started after them, run by the disk's [`LogSyncer`]: Raft keeps
/// working while the disk syncs, and one fsync serves many entries of many groups.
pub struct LogStore<D> {
    disk: Arc<D>,
    group: GroupId,
    syncer: LogSyncer,
    /// The applied index the state machine has made durable: a purge waits for it.
    durable_applied: tokio::sync::watch::Receiver<u64>,
    /// Set once the start-up repair of the log's head has run (see `repair_head`).
    repaired_head: Arc<std::sync::atomic::AtomicBool>,
}

/// How long a purge waits for the state machine to make the state covering it durable
/// before it fails (and the node stops) rather than purge entries nothing else holds.
pub const PURGE_WAIT_MS: u64 = 60_000;

impl<D> Clone for LogStore<D> {
    fn clone(&self) -> Self {
        LogStore {
            disk: self.disk.clone(),
            group: self.group,
            syncer: self.syncer.clone(),
            durable_applied: self.durable_applied.clone(),
            repaired_head: self.repaired_head.clone(),
        }
    }
}

impl<D: Disk> LogStore<D> {
    /// The log of `group` on `disk`, synced by the disk's `syncer`. `durable_applied` is the
    /// state machine's [`super::StateMachineStore::durable_applied`].
    pub fn new(
        disk: Arc<D>,
        group: GroupId,
        durable_applied: tokio::sync::watch::Receiver<u64>,
        syncer: LogSyncer,
    ) -> Self {
        LogStore {
            disk,
            group,
            syncer,
            durable_applied,
            repaired_head: Arc::default(),
        }
    }

    fn read_purged(&self) -> Result<Option<LogId>, StorageError> {
        let key = keys::purged(self.group);
        match self.disk.get(&key).map_err(|e| read_err(&e))? {
            Some(bytes) => decode_at(&key, &bytes),
            None => Ok(None),
        }
    }

    /// At start (openraft reads the log state first), records as purged what the applied
    /// state covers at the head of the log. A snapshot installed on a node whose log held
    /// nothing below it leaves the entries after it with nothing before them until openraft's
    /// purge writes the purged mark; a crash in between restarted the node believing the
    /// entries below the snapshot were still there, and as leader it sent a follower entries
    /// with a hole before them (the simulator found it). Entries the durable applied state
    /// covers may always be purged; a hole the state does not cover is a refusal to start.
    async fn repair_head(&self) -> Result<(), StorageError> {
        let from = keys::log(self.group, 0);
        let to = keys::log_end(self.group);
        let head = self
            .disk
            .scan(&from, &to, 1, false)
            .map_err(|e| read_err(&e))?;
        let Some((key, bytes)) = head.first() else {
            return Ok(());
        };
        let first: Entry = decode_at(key, bytes)?;
        let first_index = first.log_id.index;
        let purged = self.read_purged()?;
        if purged.map_or(0, |id| id.index + 1) >= first_index {
            return Ok(());
        }
        let applied = super::AppliedMeta::read(&*self.disk, self.group)
            .map_err(|e| read_err(&e))?
            .last_applied;
        let mark = match applied {
            // The state ends right before the log: it stands for everything below.
            Some(applied) if applied.index + 1 == first_index => applied,
            // The state covers the first entry too: purge it, its id is known.
            Some(applied) if applied.index >= first_index => first.log_id,
            _ => {
                return Err(io_err(
                    StorageIOError::read_logs,
                    &DiskError::Corrupt {
                        key: format!("group {} log", self.group.0),
                        reason: format!(
                            "the log starts at {first_index} but the applied state ends at \
                             {:?} and nothing is purged: entries are missing",
                            applied.map(|id| id.index)
                        ),
                    },
                ))
            }
        };
        tracing::info!(
            group = self.group.0,
            first_index,
            purged = mark.index,
            "recording the purge a snapshot install left unwritten"
        );
        let mut batch = WriteBatch::default();
        batch.put(keys::purged(self.group), codec::encode(&Some(mark)));
        batch.delete_range(
            keys::log(self.group, 0),
            keys::log(self.group, mark.index.saturating_add(1)),
        );
        self.disk
            .write(batch, Durability::Sync)
            .await
            .map_err(|e| io_err(StorageIOError::write_logs, &e))
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
        // The entries asked for start at `start` or are not there: never hand out a run
        // with a hole before it (a leader would send it as if it followed `start - 1`).
        if entries
            .first()
            .is_some_and(|entry| entry.log_id.index != start)
        {
            tracing::warn!(
                group = self.group.0,
                start,
                first = entries.first().map(|entry| entry.log_id.index),
                "log entries asked for are not in the log"
            );
            return Ok(Vec::new());
        }
        Ok(entries)
    }
}

impl<D: Disk> RaftLogStorage<TypeConfig> for LogStore<D> {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        if !self
            .repaired_head
            .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            self.repair_head().await?;
        }
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
        let mut count: u64 = 0;
        for entry in entries {
            count += 1;
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
        if self.syncer.queue.send((callback, count)).await.is_err() {
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
        // openraft issues a purge right after it hands a snapshot to the state machine,
        // without waiting for the install: wait here until the applied state covering the
        // purged entries is durable, or a crash between the two would leave neither.
        let wait = self
            .durable_applied
            .wait_for(|durable| *durable >= log_id.index);
        match tokio::time::timeout(Duration::from_millis(PURGE_WAIT_MS), wait).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => {
                return Err(io_err(
                    StorageIOError::write_logs,
                    &DiskError::Io("the state machine has stopped".into()),
                ))
            }
            Err(_) => {
                return Err(io_err(
                    StorageIOError::write_logs,
                    &DiskError::Io(format!(
                        "purge to {} waited {PURGE_WAIT_MS} ms for the applied state to be durable",
                        log_id.index
                    )),
                ))
            }
        }
        let mut batch = WriteBatch::default();
        batch.put(keys::purged(self.group), codec::encode(&Some(log_id)));
        batch.delete_range(
            keys::log(self.group, 0),
            keys::log(self.group, log_id.index.saturating_add(1)),
        );
        // Buffered is enough: a purge lost in a crash leaves entries the durable applied
        // state covers.
        self.disk
            .write(batch, Durability::Buffered)
            .await
            .map_err(|e| io_err(StorageIOError::write_logs, &e))
    }
}
