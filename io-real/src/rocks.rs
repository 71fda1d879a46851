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

use rocksdb::{Direction, IteratorMode, Options, WriteBatch as RocksBatch, WriteOptions, DB};
use seedkv_core::codec;
use seedkv_core::storage::{Disk, DiskError, DiskOp, Durability, Rows, WriteBatch};
use serde::{Deserialize, Serialize};

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
}

impl RocksDisk {
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
        let mut options = Options::default();
        options.create_if_missing(fresh);
        options.set_paranoid_checks(true);
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

fn io(err: impl std::fmt::Display) -> DiskError {
    DiskError::Io(err.to_string())
}

impl Disk for RocksDisk {
    async fn write(&self, batch: WriteBatch, durability: Durability) -> Result<(), DiskError> {
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
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || db.flush_wal(true).map_err(io))
            .await
            .map_err(|err| DiskError::Io(format!("sync task failed: {err}")))?
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, DiskError> {
        self.db.get(key).map_err(io)
    }

    fn scan(&self, from: &[u8], to: &[u8], limit: usize, reverse: bool) -> Result<Rows, DiskError> {
        if from >= to || limit == 0 {
            return Ok(Vec::new());
        }
        let mode = if reverse {
            IteratorMode::From(to, Direction::Reverse)
        } else {
            IteratorMode::From(from, Direction::Forward)
        };
        let mut rows = Vec::new();
        for item in self.db.iterator(mode) {
            let (key, value) = item.map_err(io)?;
            if reverse {
                // A reverse seek lands on the last key <= `to`; `to` itself is excluded.
                if key.as_ref() >= to {
                    continue;
                }
                if key.as_ref() < from {
                    break;
                }
            } else if key.as_ref() >= to {
                break;
            }
            rows.push((key.into_vec(), value.into_vec()));
            if rows.len() >= limit {
                break;
            }
        }
        Ok(rows)
    }
}
