//! Snapshots: views of the applied rows, streamed in bounded chunks, received into staging.
//!
//! A snapshot is never serialized whole. Sending one walks a point-in-time [`SnapshotView`]
//! of the live generation in key order, [`SNAPSHOT_CHUNK_BYTES`] at a time, checking every
//! row's checksum on the way out. Receiving one ([`Staging`]) writes the chunks into the
//! generation after the live one, cleared first, checking each row again; the last chunk
//! yields a [`StagedSnapshot`] for `Raft::install_full_snapshot`, whose install switches the
//! applied meta to the staged generation in one synced write. Memory for building, sending
//! and installing is one chunk, whatever the data size.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::machine::{AppliedMeta, SharedState, STATE_FORMAT};
use super::{corrupt, keys, DiskError, DiskRead, Durability, WriteBatch};
use crate::codec;
use crate::command::{Response, Versioned};
use crate::session::SessionHeader;
use crate::slot::Slot;
use crate::state::ShardState;
use crate::types::{GroupId, NodeId, SnapshotMeta, Vote};

/// Most bytes of rows in one snapshot chunk (one row larger than this travels alone).
pub const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;
/// Most rows in one snapshot chunk.
pub const SNAPSHOT_CHUNK_ROWS: usize = 4_096;

/// A snapshot as openraft holds it.
pub enum SnapshotData {
    /// A view of this node's applied state: what a leader streams.
    View(SnapshotView),
    /// A snapshot received into a staging generation, ready to switch to.
    Staged(StagedSnapshot),
}

impl std::fmt::Debug for SnapshotData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SnapshotData::View(view) => write!(f, "View({:?})", view.meta.last_applied),
            SnapshotData::Staged(staged) => write!(f, "{staged:?}"),
        }
    }
}

/// What a receiver needs besides the rows and Raft's snapshot metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotHeader {
    /// The sender's [`STATE_FORMAT`].
    pub format: u32,
    /// The id the next session registration gets.
    pub next_client_id: u64,
    /// The slots the group owns, and the slot map (meta group).
    pub shard: ShardState,
}

/// One row of a snapshot: its key inside the generation (without the generation prefix)
/// and its stored bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRow {
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
}

/// One message of a snapshot transfer, leader to follower.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum SnapshotFrame {
    /// Starts transfer `transfer` (any earlier one is abandoned).
    Begin {
        transfer: u64,
        vote: Vote,
        meta: SnapshotMeta,
        header: Box<SnapshotHeader>,
    },
    /// The chunk numbered `seq` (from 0).
    Rows {
        transfer: u64,
        seq: u64,
        rows: Vec<SnapshotRow>,
    },
    /// Every chunk was sent: `rows` in all, `keys` of them key rows (the rest sessions).
    Finish { transfer: u64, rows: u64, keys: u64 },
}

/// Where a snapshot walk stands.
#[derive(Debug, Clone)]
pub struct SnapshotCursor {
    from: Vec<u8>,
    to: Vec<u8>,
    rows: u64,
    keys: u64,
}

impl SnapshotCursor {
    /// Rows returned so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Key rows (not sessions) returned so far.
    pub fn keys(&self) -> u64 {
        self.keys
    }
}

/// A point-in-time view of one group's applied state.
pub struct SnapshotView {
    group: GroupId,
    meta: AppliedMeta,
    view: Box<dyn DiskRead>,
}

impl SnapshotView {
    pub(super) fn new(group: GroupId, meta: AppliedMeta, view: Box<dyn DiskRead>) -> Self {
        SnapshotView { group, meta, view }
    }

    /// The applied meta the view holds.
    pub fn meta(&self) -> &AppliedMeta {
        &self.meta
    }

    /// What the receiver needs besides the rows.
    pub fn header(&self) -> SnapshotHeader {
        SnapshotHeader {
            format: STATE_FORMAT,
            next_client_id: self.meta.next_client_id,
            shard: self.meta.shard.clone(),
        }
    }

    /// A walk over every row of the live generation.
    pub fn cursor(&self) -> SnapshotCursor {
        SnapshotCursor {
            from: keys::generation(self.group, self.meta.generation),
            to: keys::generation_end(self.group, self.meta.generation),
            rows: 0,
            keys: 0,
        }
    }

    /// The next chunk of rows, or `None` when the walk is over. Every row is checked: a
    /// corrupt one is an error, never shipped.
    pub fn next_chunk(
        &self,
        cursor: &mut SnapshotCursor,
    ) -> Result<Option<Vec<SnapshotRow>>, DiskError> {
        if cursor.from >= cursor.to {
            return Ok(None);
        }
        let rows = self.view.scan_bytes(
            &cursor.from,
            &cursor.to,
            SNAPSHOT_CHUNK_ROWS,
            SNAPSHOT_CHUNK_BYTES,
        )?;
        let Some((last, _)) = rows.last() else {
            cursor.from = cursor.to.clone();
            return Ok(None);
        };
        cursor.from = last.clone();
        cursor.from.push(0);
        cursor.rows += rows.len() as u64;
        let mut chunk = Vec::with_capacity(rows.len());
        for (key, value) in rows {
            let inner = key[keys::GENERATION_PREFIX_LEN..].to_vec();
            let is_key = check_row(&inner, &value).map_err(|reason| corrupt(&key, reason))?;
            cursor.keys += u64::from(is_key);
            chunk.push(SnapshotRow { key: inner, value });
        }
        Ok(Some(chunk))
    }
}

/// Checks one snapshot row; says whether it is a key's row (not a session's).
fn check_row(inner: &[u8], value: &[u8]) -> Result<bool, String> {
    match inner.first() {
        Some(&keys::ROW) => {
            let slot = inner
                .get(1..3)
                .map(|b| u16::from_be_bytes([b[0], b[1]]))
                .ok_or("row key too short")?;
            let key = &inner[3..];
            if key.is_empty() || Slot::of(key).get() != slot {
                return Err(format!("row of slot {slot} holds a key of another slot"));
            }
            codec::decode::<Versioned>(value).map_err(|err| err.to_string())?;
            Ok(true)
        }
        Some(&keys::SESSION) => {
            // Parse as a full key: prefix bytes are not looked at.
            let mut full = vec![0; keys::GENERATION_PREFIX_LEN];
            full.extend_from_slice(inner);
            match keys::parse_session(&full) {
                Some((_, None)) => codec::decode::<SessionHeader>(value).map(|_| ()),
                Some((_, Some(_))) => codec::decode::<Response>(value).map(|_| ()),
                None => return Err("malformed session key".into()),
            }
            .map_err(|err| err.to_string())?;
            Ok(false)
        }
        _ => Err("neither a row nor a session".into()),
    }
}

/// A snapshot received into a staging generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagedSnapshot {
    pub group: GroupId,
    pub generation: u32,
    pub header: SnapshotHeader,
}

/// A snapshot transfer went wrong; the leader starts over.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("no snapshot transfer {0} is in progress here")]
    UnknownTransfer(u64),
    #[error("snapshot chunk {got} arrived where {expected} was due")]
    OutOfOrder { expected: u64, got: u64 },
    #[error("snapshot format {0} (this build reads {STATE_FORMAT})")]
    Format(u32),
    #[error("snapshot sharding state: {0}")]
    Shard(String),
    #[error("snapshot row {index}: {reason}")]
    BadRow { index: u64, reason: String },
    #[error("snapshot ended with {got} rows and {keys} keys, expected {expected} rows and {expected_keys} keys")]
    Count {
        expected: u64,
        got: u64,
        expected_keys: u64,
        keys: u64,
    },
    #[error("disk: {0}")]
    Disk(#[from] DiskError),
}

#[derive(Debug)]
struct Receiving {
    transfer: u64,
    vote: Vote,
    meta: SnapshotMeta,
    header: SnapshotHeader,
    generation: u32,
    next_seq: u64,
    rows: u64,
    keys: u64,
}

/// The receiving end of snapshot transfers for one group: at most one at a time, the
/// newest winning. The caller serializes calls (one `Staging` behind a lock).
pub struct Staging {
    shared: Arc<SharedState>,
    receiving: Option<Receiving>,
}

impl Staging {
    /// The staging area of the group whose state is `shared`.
    pub fn new(shared: Arc<SharedState>) -> Self {
        Staging {
            shared,
            receiving: None,
        }
    }

    /// The sender of the transfer in progress, if any (for logs).
    pub fn receiving(&self) -> Option<NodeId> {
        self.receiving.as_ref().map(|r| r.vote.leader_id().node_id)
    }

    /// Starts a transfer: clears the generation after the live one.
    pub async fn begin(
        &mut self,
        transfer: u64,
        vote: Vote,
        meta: SnapshotMeta,
        header: SnapshotHeader,
    ) -> Result<(), SnapshotError> {
        self.receiving = None;
        if header.format != STATE_FORMAT {
            return Err(SnapshotError::Format(header.format));
        }
        header.shard.check().map_err(SnapshotError::Shard)?;
        let group = self.shared.group();
        let generation = self.shared.meta().generation.wrapping_add(1);
        let mut clear = WriteBatch::default();
        clear.delete_range(
            keys::generation(group, generation),
            keys::generation_end(group, generation),
        );
        self.shared
            .disk
            .write_dyn(clear, Durability::Buffered)
            .await?;
        self.receiving = Some(Receiving {
            transfer,
            vote,
            meta,
            header,
            generation,
            next_seq: 0,
            rows: 0,
            keys: 0,
        });
        Ok(())
    }

    /// Writes chunk `seq` of `transfer` into staging.
    pub async fn rows(
        &mut self,
        transfer: u64,
        seq: u64,
        rows: Vec<SnapshotRow>,
    ) -> Result<(), SnapshotError> {
        let group = self.shared.group();
        let receiving = match &mut self.receiving {
            Some(r) if r.transfer == transfer => r,
            _ => return Err(SnapshotError::UnknownTransfer(transfer)),
        };
        if seq != receiving.next_seq {
            let expected = receiving.next_seq;
            self.receiving = None;
            return Err(SnapshotError::OutOfOrder { expected, got: seq });
        }
        let prefix = keys::generation(group, receiving.generation);
        let mut batch = WriteBatch::default();
        let mut keys = 0;
        for (i, row) in rows.into_iter().enumerate() {
            match check_row(&row.key, &row.value) {
                Ok(is_key) => keys += u64::from(is_key),
                Err(reason) => {
                    let index = receiving.rows + i as u64;
                    self.receiving = None;
                    return Err(SnapshotError::BadRow { index, reason });
                }
            }
            let mut key = prefix.clone();
            key.extend_from_slice(&row.key);
            batch.put(key, row.value);
        }
        let count = batch.ops.len() as u64;
        tracing::debug!(
            transfer,
            seq,
            rows = count,
            generation = receiving.generation,
            "snapshot rows staged"
        );
        self.shared
            .disk
            .write_dyn(batch, Durability::Buffered)
            .await?;
        // The disk write may have failed after `self.receiving` was checked: re-borrow.
        if let Some(receiving) = &mut self.receiving {
            receiving.next_seq += 1;
            receiving.rows += count;
            receiving.keys += keys;
        }
        Ok(())
    }

    /// Ends `transfer`: every row arrived (`rows` in all, `keys` of them key rows). Returns
    /// the leader's vote, the snapshot's metadata and the staged snapshot to install.
    pub fn finish(
        &mut self,
        transfer: u64,
        rows: u64,
        keys: u64,
    ) -> Result<(Vote, SnapshotMeta, StagedSnapshot), SnapshotError> {
        let receiving = match self.receiving.take() {
            Some(r) if r.transfer == transfer => r,
            other => {
                self.receiving = other;
                return Err(SnapshotError::UnknownTransfer(transfer));
            }
        };
        if receiving.rows != rows || receiving.keys != keys {
            return Err(SnapshotError::Count {
                expected: rows,
                got: receiving.rows,
                expected_keys: keys,
                keys: receiving.keys,
            });
        }
        Ok((
            receiving.vote,
            receiving.meta,
            StagedSnapshot {
                group: self.shared.group(),
                generation: receiving.generation,
                header: receiving.header,
            },
        ))
    }
}

/// A follower's answer to one [`SnapshotFrame`].
#[derive(Debug, Serialize, Deserialize)]
pub enum SnapshotReply {
    /// Send the next frame.
    Continue,
    /// The transfer is over: installed, or refused for a newer vote (in `vote`).
    Done(openraft::raft::SnapshotResponse<NodeId>),
}

/// A follower refused a snapshot frame; the leader starts the transfer over.
#[derive(Debug, Clone, Serialize, Deserialize, thiserror::Error)]
#[error("snapshot refused: {0}")]
pub struct SnapshotRefused(pub String);

impl From<SnapshotError> for SnapshotRefused {
    fn from(err: SnapshotError) -> Self {
        SnapshotRefused(err.to_string())
    }
}
