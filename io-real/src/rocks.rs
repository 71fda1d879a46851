//! The real disk: RocksDB behind the core's [`Disk`] contract.
//!
//! A write batch is one RocksDB `WriteBatch`, atomic by construction; `Durability::Sync` sets
//! `sync` on the write, so the WAL is fsynced before the future resolves (`sync()` fsyncs the
//! WAL for every write before it), and RocksDB's WAL is
//! ordered, which gives the contract's prefix guarantee for buffered writes. Writes that fsync
//! run on the blocking pool so an fsync never stalls the async workers; buffered writes (a
//! memtable insert and a WAL append) run inline.
//!
//! The data directory is owned by exactly one server: RocksDB's `LOCK` file refuses a second
//! opener, and an identity record (node id and cluster name) written at first start refuses a
//! directory that belongs to another node or cluster. Neither case ever writes to the
//! directory.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rocksdb::{
    BlockBasedOptions, Cache, DBIteratorWithThreadMode, Direction, Env, IteratorMode, Options,
    ReadOptions, SnapshotWithThreadMode, WriteBatch as RocksBatch, WriteOptions, DB,
};
use seedkv_core::codec;
use seedkv_core::storage::{Disk, DiskError, DiskOp, DiskRead, Durability, Rows, WriteBatch};
use serde::{Deserialize, Serialize};

/// The block cache: the bound on RocksDB's read-side memory.
pub const BLOCK_CACHE_BYTES: usize = 64 << 20;

/// Where the identity record lives; outside every group's key range.
const IDENTITY_KEY: &[u8] = b"meta/identity";

/// Who a data directory belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// The node id the directory was created for.
    pub node_id: u64,
    /// The cluster name it was created for.
    pub cluster: String,
}

/// A data directory could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("data directory {dir} is in use by another seedkv process (its LOCK is held)")]
    Locked { dir: PathBuf },
    #[error("data directory {dir} belongs to node {found} of cluster {found_cluster:?}, not node {expected} of cluster {expected_cluster:?}; refusing to touch it")]
    WrongOwner {
        dir: PathBuf,
        found: u64,
        found_cluster: String,
        expected: u64,
        expected_cluster: String,
    },
    #[error("data directory {dir} is not a seedkv data directory or is corrupt: {reason}")]
    Corrupt { dir: PathBuf, reason: String },
    #[error("cannot create data directory {dir}: {reason}")]
    Create { dir: PathBuf, reason: String },
}

/// RocksDB as a seedkv [`Disk`].
pub struct RocksDisk {
    db: Arc<DB>,
    dir: PathBuf,
    /// In memory only: no write-ahead log, and nothing to make durable.
    diskless: bool,
}

impl RocksDisk {
    /// What RocksDB holds, in bytes: its live SST files (on disk) and its memtables (in
    /// memory, and in the write-ahead log until flushed).
    pub fn size_bytes(&self) -> Result<(u64, u64), DiskError> {
        let property = |name: &str| -> Result<u64, DiskError> {
            self.db
                .property_int_value(name)
                .map_err(io)
                .map(|value| value.unwrap_or(0))
        };
        Ok((
            property("rocksdb.total-sst-files-size")?,
            property("rocksdb.cur-size-all-mem-tables")?,
        ))
    }

    /// Opens (creating if empty) the data directory `dir` for `identity`. Refuses a directory
    /// that is locked, corrupt, or created for another node or cluster.
    pub fn open(dir: &Path, identity: &Identity) -> Result<RocksDisk, OpenError> {
        let db_dir = dir.join("db");
        let fresh = !db_dir.exists();
        if fresh {
            // A non-empty directory without our layout is someone else's: do not write into it.
            let foreign = std::fs::read_dir(dir)
                .map(|mut entries| entries.next().is_some())
                .unwrap_or(false);
            if foreign {
                return Err(OpenError::Corrupt {
                    dir: dir.to_path_buf(),
                    reason: "it holds files but no seedkv database (db/)".into(),
                });
            }
            std::fs::create_dir_all(&db_dir).map_err(|err| OpenError::Create {
                dir: dir.to_path_buf(),
                reason: err.to_string(),
            })?;
        }
        let mut options = tuned_options(dir)?;
        options.create_if_missing(fresh);
        let db = DB::open(&options, &db_dir).map_err(|err| {
            let reason = err.to_string();
            if reason.contains("lock") || reason.contains("Lock") {
                OpenError::Locked {
                    dir: dir.to_path_buf(),
                }
            } else {
                OpenError::Corrupt {
                    dir: dir.to_path_buf(),
                    reason,
                }
            }
        })?;
        let corrupt = |reason: String| OpenError::Corrupt {
            dir: dir.to_path_buf(),
            reason,
        };
        match db.get(IDENTITY_KEY).map_err(|e| corrupt(e.to_string()))? {
            Some(bytes) => {
                let found: Identity =
                    codec::decode(&bytes).map_err(|e| corrupt(format!("identity record: {e}")))?;
                if &found != identity {
                    return Err(OpenError::WrongOwner {
                        dir: dir.to_path_buf(),
                        found: found.node_id,
                        found_cluster: found.cluster,
                        expected: identity.node_id,
                        expected_cluster: identity.cluster.clone(),
                    });
                }
            }
            None if fresh => {
                let mut sync = WriteOptions::default();
                sync.set_sync(true);
                db.put_opt(IDENTITY_KEY, codec::encode(identity), &sync)
                    .map_err(|e| corrupt(e.to_string()))?;
            }
            None => {
                return Err(corrupt("the database has no identity record".into()));
            }
        }
        Ok(RocksDisk {
            db: Arc::new(db),
            dir: dir.to_path_buf(),
            diskless: false,
        })
    }

    /// A database whose files live in RocksDB's in-memory environment: nothing reaches the
    /// machine's disks, and everything is gone when the process stops (`--diskless` read
    /// replicas, which catch up by snapshot at every start). Same code, same views.
    pub fn open_in_memory(identity: &Identity) -> Result<RocksDisk, OpenError> {
        // The database's files are names in the in-memory environment; the wrapper creates
        // the directory on the real file system first, so name one that always exists.
        let dir = std::env::temp_dir();
        let corrupt = |reason: String| OpenError::Corrupt {
            dir: dir.clone(),
            reason,
        };
        let env = Env::mem_env().map_err(|err| corrupt(format!("in-memory environment: {err}")))?;
        let mut options = tuned_options(&dir)?;
        options.set_env(&env);
        options.create_if_missing(true);
        let db = DB::open(&options, &dir).map_err(|err| corrupt(err.to_string()))?;
        db.put(IDENTITY_KEY, codec::encode(identity))
            .map_err(|err| corrupt(err.to_string()))?;
        Ok(RocksDisk {
            db: Arc::new(db),
            dir,
            diskless: true,
        })
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Flushes memtables to SST files (used at clean shutdown, so restart replays less WAL).
    pub fn flush(&self) -> Result<(), DiskError> {
        self.db.flush().map_err(|e| DiskError::Io(e.to_string()))
    }
}

/// The options every seedkv database opens with.
fn tuned_options(dir: &Path) -> Result<Options, OpenError> {
    let mut options = Options::default();
    options.set_paranoid_checks(true);
    // Reads are point lookups (applying a write reads its key's row) and short ordered
    // walks: bloom filters spare a lookup of an absent key the disk reads, and the block
    // cache is bounded so memory does not grow with the data. Filter and index blocks
    // stay outside the cache, held by each open table (about 1.3 bytes per key): in a
    // sharded LRU cache a filter block larger than its shard is evicted at once and
    // reread from the file on every lookup.
    let mut table = BlockBasedOptions::default();
    let cache = Cache::new_lru_cache(BLOCK_CACHE_BYTES).map_err(|err| OpenError::Corrupt {
        dir: dir.to_path_buf(),
        reason: format!("block cache: {err}"),
    })?;
    table.set_block_cache(&cache);
    table.set_bloom_filter(10.0, false);
    table.set_cache_index_and_filter_blocks(false);
    options.set_block_based_table_factory(&table);
    options.set_max_background_jobs(2);
    options.set_bytes_per_sync(1 << 20);
    Ok(options)
}

fn io(err: impl std::fmt::Display) -> DiskError {
    DiskError::Io(err.to_string())
}

impl Disk for RocksDisk {
    async fn write(&self, batch: WriteBatch, durability: Durability) -> Result<(), DiskError> {
        // Nothing survives a diskless process, so nothing is logged or synced.
        let (durability, log) = if self.diskless {
            (Durability::Buffered, false)
        } else {
            (durability, true)
        };
        let db = self.db.clone();
        let write = move || {
            let mut rocks = RocksBatch::default();
            for op in batch.ops {
                match op {
                    DiskOp::Put(key, value) => rocks.put(key, value),
                    DiskOp::Delete(key) => rocks.delete(key),
                    DiskOp::DeleteRange(from, to) => rocks.delete_range(from, to),
                }
            }
            let mut options = WriteOptions::default();
            options.set_sync(durability == Durability::Sync);
            options.disable_wal(!log);
            db.write_opt(rocks, &options).map_err(io)
        };
        if durability == Durability::Buffered {
            // A memtable insert and a WAL append without fsync: microseconds, done inline
            // rather than paying two thread hand-offs per Raft append.
            return write();
        }
        tokio::task::spawn_blocking(write)
            .await
            .map_err(|err| DiskError::Io(format!("write task failed: {err}")))?
    }

    async fn sync(&self) -> Result<(), DiskError> {
        if self.diskless {
            return Ok(());
        }
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || db.flush_wal(true).map_err(io))
            .await
            .map_err(|err| DiskError::Io(format!("sync task failed: {err}")))?
    }
}

/// Read options confining an iterator to `[from, to)`.
fn bounded(from: &[u8], to: &[u8]) -> ReadOptions {
    let mut options = ReadOptions::default();
    options.set_iterate_lower_bound(from.to_vec());
    options.set_iterate_upper_bound(to.to_vec());
    options
}

/// Where an iterator over `[from, ..)` starts: at `from`, or at the end when `reverse`.
fn start(from: &[u8], reverse: bool) -> IteratorMode<'_> {
    if reverse {
        IteratorMode::End
    } else {
        IteratorMode::From(from, Direction::Forward)
    }
}

/// Takes rows from `rows`, stopping after `max_rows` or once `max_bytes` of keys and
/// values are read.
fn take_rows(
    rows: DBIteratorWithThreadMode<'_, DB>,
    max_rows: usize,
    max_bytes: usize,
) -> Result<Rows, DiskError> {
    let mut taken = Vec::new();
    let mut bytes = 0;
    if max_rows == 0 {
        return Ok(taken);
    }
    for item in rows {
        let (key, value) = item.map_err(io)?;
        bytes += key.len() + value.len();
        taken.push((key.into_vec(), value.into_vec()));
        if taken.len() >= max_rows || bytes >= max_bytes {
            break;
        }
    }
    Ok(taken)
}

impl DiskRead for RocksDisk {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, DiskError> {
        self.db.get(key).map_err(io)
    }

    fn scan(&self, from: &[u8], to: &[u8], limit: usize, reverse: bool) -> Result<Rows, DiskError> {
        if from >= to {
            return Ok(Vec::new());
        }
        let rows = self
            .db
            .iterator_opt(start(from, reverse), bounded(from, to));
        take_rows(rows, limit, usize::MAX)
    }

    fn scan_bytes(
        &self,
        from: &[u8],
        to: &[u8],
        max_rows: usize,
        max_bytes: usize,
    ) -> Result<Rows, DiskError> {
        if from >= to {
            return Ok(Vec::new());
        }
        let rows = self.db.iterator_opt(start(from, false), bounded(from, to));
        take_rows(rows, max_rows, max_bytes)
    }

    fn view(&self) -> Result<Box<dyn DiskRead>, DiskError> {
        let view = RocksSnapshot::new(self.db.clone(), |db| db.snapshot());
        Ok(Box::new(RocksView(Arc::new(view))))
    }
}

type Snapshot<'a> = SnapshotWithThreadMode<'a, DB>;

self_cell::self_cell!(
    /// A RocksDB snapshot together with the database it reads, so it can outlive the call
    /// that took it.
    struct RocksSnapshot {
        owner: Arc<DB>,
        #[covariant]
        dependent: Snapshot,
    }
);

/// A point-in-time view of a [`RocksDisk`]: a RocksDB snapshot. Views of it share it.
struct RocksView(Arc<RocksSnapshot>);

impl DiskRead for RocksView {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, DiskError> {
        self.0.borrow_dependent().get(key).map_err(io)
    }

    fn scan(&self, from: &[u8], to: &[u8], limit: usize, reverse: bool) -> Result<Rows, DiskError> {
        if from >= to {
            return Ok(Vec::new());
        }
        let snapshot = self.0.borrow_dependent();
        let rows = snapshot.iterator_opt(start(from, reverse), bounded(from, to));
        take_rows(rows, limit, usize::MAX)
    }

    fn scan_bytes(
        &self,
        from: &[u8],
        to: &[u8],
        max_rows: usize,
        max_bytes: usize,
    ) -> Result<Rows, DiskError> {
        if from >= to {
            return Ok(Vec::new());
        }
        let snapshot = self.0.borrow_dependent();
        let rows = snapshot.iterator_opt(start(from, false), bounded(from, to));
        take_rows(rows, max_rows, max_bytes)
    }

    fn view(&self) -> Result<Box<dyn DiskRead>, DiskError> {
        Ok(Box::new(RocksView(self.0.clone())))
    }
}
