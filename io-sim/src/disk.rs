//! A simulated disk with the crash semantics of a real one.
//!
//! Writes append records to a byte file (see [`crate::recovery`]) and update an in-memory
//! table that reads see. `Durability::Sync` waits a simulated fsync latency and then marks
//! the file durable up to where it stood when the fsync began. A crash keeps the durable
//! bytes and a random prefix of the rest — a torn tail — and the next open replays the file,
//! so a node restarts with exactly what a real disk could have kept.
//!
//! Faults a nemesis injects: a write or an fsync that fails (the disk then refuses everything
//! until the node restarts: after a failed fsync nothing unsynced can be trusted, and a node
//! must not retry it, as PostgreSQL learned), and a stall that holds every fsync for a while.

use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use madsim::rand::Rng;
use seedkv_core::faults::{self, Fault};
use seedkv_core::storage::{keys, Disk, DiskError, DiskOp, DiskRead, Durability, Rows, WriteBatch};

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
            compact_bytes: 1 << 20,
        }
    }
}

/// An operation the disk will fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskFault {
    /// The next write fails.
    Write,
    /// The next fsync fails.
    Sync,
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
    /// Bumped by every compaction: an fsync that began before one covers nothing of the
    /// rewritten file (everything before the compaction was durable already).
    compactions: u64,
    /// The operation to fail next, if any.
    fault: Option<DiskFault>,
    /// Set by an injected failure: every operation fails until the next `open`.
    failed: Option<DiskFault>,
    /// Every fsync waits at least until then.
    stalled_until: Option<tokio::time::Instant>,
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
                compactions: 0,
                fault: None,
                failed: None,
                stalled_until: None,
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
        // A restart finds the device working again.
        medium.fault = None;
        medium.failed = None;
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

    /// Swaps the medium for a blank one (a replaced disk, an unmounted volume, a wrong path):
    /// everything is gone, durable or not, and every open handle is dead. Call it when the
    /// node is killed, before restarting it.
    pub fn wipe(&self) {
        let mut medium = self.lock();
        medium.file.clear();
        medium.durable_len = 0;
        medium.table = Table::new();
        medium.generation += 1;
        medium.fault = None;
        medium.failed = None;
        medium.stalled_until = None;
    }

    /// Makes the next write or fsync fail.
    pub fn inject(&self, fault: DiskFault) {
        self.lock().fault = Some(fault);
    }

    /// Holds every fsync until `until`.
    pub fn stall_until(&self, until: tokio::time::Instant) {
        self.lock().stalled_until = Some(until);
    }

    /// Drops a fault not yet triggered and ends a stall (a failure already suffered stays
    /// until the next open).
    pub fn heal(&self) {
        let mut medium = self.lock();
        medium.fault = None;
        medium.stalled_until = None;
    }

    /// The failure the disk has suffered since it was last opened, if any.
    pub fn failed(&self) -> Option<DiskFault> {
        self.lock().failed
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
        if let Some(fault) = medium.failed {
            return Err(DiskError::Io(format!(
                "the disk failed earlier ({fault:?}) and refuses every operation until restart"
            )));
        }
        Ok(medium)
    }

    /// Fails this operation if `kind` was injected.
    fn take_fault(medium: &mut Medium, kind: DiskFault) -> Result<(), DiskError> {
        if medium.fault == Some(kind) {
            medium.fault = None;
            medium.failed = Some(kind);
            return Err(DiskError::Io(format!("injected {kind:?} failure")));
        }
        Ok(())
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
            checkpoint
                .ops
                .push(DiskOp::Put(key.clone(), value.to_vec()));
        }
        let mut file = Vec::new();
        recovery::append_record(&mut file, &checkpoint);
        medium.durable_len = file.len();
        medium.file = file;
        medium.compactions += 1;
    }
}

impl SimDiskHandle {
    /// A simulated fsync: after the latency, the file is durable up to `sync_upto`, an
    /// offset into the file as it stood after `compactions` compactions.
    async fn sync_upto(&self, sync_upto: usize, compactions: u64) -> Result<(), DiskError> {
        let latency = {
            let range = &self.disk.config.fsync_latency;
            if range.is_empty() {
                range.start
            } else {
                madsim::rand::thread_rng().gen_range(range.clone())
            }
        };
        tokio::time::sleep(latency).await;
        let stalled_until = self.disk.lock().stalled_until;
        if let Some(until) = stalled_until {
            tokio::time::sleep_until(until).await;
        }
        let mut medium = self.live()?;
        Self::take_fault(&mut medium, DiskFault::Sync)?;
        // A compaction meanwhile rewrote the file from durable bytes only: the offset means
        // nothing in the new file, and what it covered is durable already.
        if medium.compactions == compactions {
            assert!(
                sync_upto <= medium.file.len(),
                "the file shrank without a compaction"
            );
            medium.durable_len = medium.durable_len.max(sync_upto);
        }
        self.compact(&mut medium);
        Ok(())
    }
}

impl Disk for SimDiskHandle {
    async fn write(&self, batch: WriteBatch, durability: Durability) -> Result<(), DiskError> {
        let (sync_upto, compactions) = {
            let mut medium = self.live()?;
            Self::take_fault(&mut medium, DiskFault::Write)?;
            recovery::apply_batch(&mut medium.table, &batch);
            let vote_only = batch
                .ops
                .iter()
                .all(|op| matches!(op, DiskOp::Put(key, _) if keys::is_vote(key)));
            if !(vote_only && faults::enabled(Fault::VoteNotPersisted)) {
                recovery::append_record(&mut medium.file, &batch);
            }
            (medium.file.len(), medium.compactions)
        };
        if durability == Durability::Buffered {
            return Ok(());
        }
        self.sync_upto(sync_upto, compactions).await
    }

    async fn sync(&self) -> Result<(), DiskError> {
        let (upto, compactions) = {
            let medium = self.live()?;
            (medium.file.len(), medium.compactions)
        };
        self.sync_upto(upto, compactions).await
    }
}

impl DiskRead for SimDiskHandle {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, DiskError> {
        Ok(self.live()?.table.get(key).map(|value| value.to_vec()))
    }

    fn scan(&self, from: &[u8], to: &[u8], limit: usize, reverse: bool) -> Result<Rows, DiskError> {
        Ok(scan_table(&self.live()?.table, from, to, limit, reverse))
    }

    fn scan_bytes(
        &self,
        from: &[u8],
        to: &[u8],
        max_rows: usize,
        max_bytes: usize,
    ) -> Result<Rows, DiskError> {
        Ok(scan_table_bytes(
            &self.live()?.table,
            from,
            to,
            max_rows,
            max_bytes,
        ))
    }

    fn view(&self) -> Result<Box<dyn DiskRead>, DiskError> {
        Ok(Box::new(SimView(Arc::new(self.live()?.table.clone()))))
    }
}

/// A point-in-time view of a simulated disk: a copy of its table.
struct SimView(Arc<Table>);

impl DiskRead for SimView {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, DiskError> {
        Ok(self.0.get(key).map(|value| value.to_vec()))
    }

    fn scan(&self, from: &[u8], to: &[u8], limit: usize, reverse: bool) -> Result<Rows, DiskError> {
        Ok(scan_table(&self.0, from, to, limit, reverse))
    }

    fn scan_bytes(
        &self,
        from: &[u8],
        to: &[u8],
        max_rows: usize,
        max_bytes: usize,
    ) -> Result<Rows, DiskError> {
        Ok(scan_table_bytes(&self.0, from, to, max_rows, max_bytes))
    }

    fn view(&self) -> Result<Box<dyn DiskRead>, DiskError> {
        Ok(Box::new(SimView(self.0.clone())))
    }
}

fn table_range<'a>(
    table: &'a Table,
    from: &[u8],
    to: &[u8],
) -> impl DoubleEndedIterator<Item = (&'a Vec<u8>, &'a std::sync::Arc<[u8]>)> {
    // An empty or inverted range reads nothing (BTreeMap::range would panic on it).
    let (from, to) = if from < to { (from, to) } else { (from, from) };
    table.range::<[u8], _>((
        std::ops::Bound::Included(from),
        std::ops::Bound::Excluded(to),
    ))
}

fn scan_table(table: &Table, from: &[u8], to: &[u8], limit: usize, reverse: bool) -> Rows {
    let clone = |(k, v): (&Vec<u8>, &std::sync::Arc<[u8]>)| (k.clone(), v.to_vec());
    let range = table_range(table, from, to);
    if reverse {
        range.rev().take(limit).map(clone).collect()
    } else {
        range.take(limit).map(clone).collect()
    }
}

fn scan_table_bytes(
    table: &Table,
    from: &[u8],
    to: &[u8],
    max_rows: usize,
    max_bytes: usize,
) -> Rows {
    let mut rows = Vec::new();
    let mut bytes = 0;
    for (key, value) in table_range(table, from, to).take(max_rows) {
        rows.push((key.clone(), value.to_vec()));
        bytes += key.len() + value.len();
        if bytes >= max_bytes {
            break;
        }
    }
    rows
}
