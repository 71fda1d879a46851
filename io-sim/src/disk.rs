//! A simulated disk with the crash semantics of a real one.
//!
//! Writes append records to a byte file (see [`crate::recovery`]) and update an in-memory
//! table that reads see. `Durability::Sync` waits a simulated fsync latency and then marks
//! the file durable up to where it stood when the fsync began. A crash keeps the durable
//! bytes and a random prefix of the rest — a torn tail — and the next open replays the file,
//! so a node restarts with exactly what a real disk could have kept.

use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use madsim::rand::Rng;
use seedkv_core::faults::{self, Fault};
use seedkv_core::storage::{keys, Disk, DiskError, DiskOp, Durability, WriteBatch};

use crate::recovery::{self, Table};

/// How the simulated disk behaves.
#[derive(Debug, Clone)]
pub struct DiskConfig {
    /// Time one fsync takes, drawn uniformly from this range.
    pub fsync_latency: Range<Duration>,
    /// The file is rewritten as one checkpoint record once it exceeds this size and holds
    /// more than four times the live data.
    pub compact_bytes: usize,
}

impl Default for DiskConfig {
    fn default() -> Self {
        DiskConfig {
            fsync_latency: Duration::from_micros(200)..Duration::from_millis(2),
            compact_bytes: 4 << 20,
        }
    }
}

struct Medium {
    /// Every byte written, durable or not.
    file: Vec<u8>,
    /// `file[..durable_len]` survives any crash.
    durable_len: usize,
    /// What reads see: the table the file replays to.
    table: Table,
    /// Bumped by every crash; handles of an older generation are dead.
    generation: u64,
    crashes: u64,
}

/// The simulated disk of one node: it outlives the node's crashes and restarts.
#[derive(Clone)]
pub struct SimDisk {
    medium: Arc<Mutex<Medium>>,
    config: DiskConfig,
}

impl SimDisk {
    /// A blank disk.
    pub fn new(config: DiskConfig) -> SimDisk {
        SimDisk {
            medium: Arc::new(Mutex::new(Medium {
                file: Vec::new(),
                durable_len: 0,
                table: Table::new(),
                generation: 0,
                crashes: 0,
            })),
            config,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Medium> {
        self.medium
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Opens the disk after a (re)start: replays the file and truncates any torn tail.
    pub fn open(&self) -> Arc<SimDiskHandle> {
        let mut medium = self.lock();
        let recovered = recovery::recover(&medium.file);
        // Durable bytes were written whole, so recovery never stops inside them.
        assert!(recovered.valid_len >= medium.durable_len.min(recovered.valid_len));
        medium.file.truncate(recovered.valid_len);
        medium.durable_len = medium.durable_len.min(recovered.valid_len);
        medium.table = recovered.table;
        Arc::new(SimDiskHandle {
            disk: self.clone(),
            generation: medium.generation,
        })
    }

    /// Power loss: keeps the durable bytes plus a random prefix of the rest, and kills every
    /// open handle. Call it when the node is killed, before restarting it.
    pub fn crash(&self) {
        let mut medium = self.lock();
        let unsynced = medium.file.len() - medium.durable_len;
        let kept = if unsynced == 0 {
            0
        } else {
            madsim::rand::thread_rng().gen_range(0..=unsynced)
        };
        let cut = medium.durable_len + kept;
        medium.file.truncate(cut);
        medium.generation += 1;
        medium.crashes += 1;
    }

    /// Bytes in the file and bytes of it that are durable.
    pub fn sizes(&self) -> (usize, usize) {
        let medium = self.lock();
        (medium.file.len(), medium.durable_len)
    }
}

/// An open disk, used by one incarnation of a node.
pub struct SimDiskHandle {
    disk: SimDisk,
    generation: u64,
}

impl SimDiskHandle {
    fn live(&self) -> Result<MutexGuard<'_, Medium>, DiskError> {
        let medium = self.disk.lock();
        if medium.generation != self.generation {
            return Err(DiskError::Stale);
        }
        Ok(medium)
    }

    fn compact(&self, medium: &mut Medium) {
        let live_bytes: usize = medium
            .table
            .iter()
            .map(|(k, v)| k.len() + v.len() + 16)
            .sum();
        if medium.durable_len != medium.file.len()
            || medium.file.len() < self.disk.config.compact_bytes
            || medium.file.len() < live_bytes * 4
        {
            return;
        }
        // An atomic rewrite, as a write to a new file plus rename would be.
        let mut checkpoint = WriteBatch::default();
        for (key, value) in &medium.table {
            checkpoint.ops.push(DiskOp::Put(key.clone(), value.clone()));
        }
        let mut file = Vec::new();
        recovery::append_record(&mut file, &checkpoint);
        medium.durable_len = file.len();
        medium.file = file;
    }
}

impl SimDiskHandle {
    /// A simulated fsync: after the latency, the file is durable up to `sync_upto`.
    async fn sync_upto(&self, sync_upto: usize) -> Result<(), DiskError> {
        let latency = {
            let range = &self.disk.config.fsync_latency;
            if range.is_empty() {
                range.start
            } else {
                madsim::rand::thread_rng().gen_range(range.clone())
            }
        };
        tokio::time::sleep(latency).await;
        let mut medium = self.live()?;
        // A compaction meanwhile may have shrunk the file, all of it durable.
        let upto = sync_upto.min(medium.file.len());
        medium.durable_len = medium.durable_len.max(upto);
        self.compact(&mut medium);
        Ok(())
    }
}

impl Disk for SimDiskHandle {
    async fn write(&self, batch: WriteBatch, durability: Durability) -> Result<(), DiskError> {
        let sync_upto = {
            let mut medium = self.live()?;
            recovery::apply_batch(&mut medium.table, &batch);
            let vote_only = batch
                .ops
                .iter()
                .all(|op| matches!(op, DiskOp::Put(key, _) if keys::is_vote(key)));
            if !(vote_only && faults::enabled(Fault::VoteNotPersisted)) {
                recovery::append_record(&mut medium.file, &batch);
            }
            medium.file.len()
        };
        if durability == Durability::Buffered {
            return Ok(());
        }
        self.sync_upto(sync_upto).await
    }

    async fn sync(&self) -> Result<(), DiskError> {
        let upto = self.live()?.file.len();
        self.sync_upto(upto).await
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, DiskError> {
        Ok(self.live()?.table.get(key).cloned())
    }

    fn scan(
        &self,
        from: &[u8],
        to: &[u8],
        limit: usize,
        reverse: bool,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, DiskError> {
        let medium = self.live()?;
        if from >= to {
            return Ok(Vec::new());
        }
        let range = medium.table.range::<[u8], _>((
            std::ops::Bound::Included(from),
            std::ops::Bound::Excluded(to),
        ));
        let clone = |(k, v): (&Vec<u8>, &Vec<u8>)| (k.clone(), v.clone());
        Ok(if reverse {
            range.rev().take(limit).map(clone).collect()
        } else {
            range.take(limit).map(clone).collect()
        })
    }
}
