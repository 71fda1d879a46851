//! The running node's identity, and the check every incoming Raft RPC passes.
//!
//! See `seedkv_core::storage::identity` for why a node has an incarnation and a cluster id.
//! Here they are enforced: a Raft request is handled only if it names this node's cluster,
//! this node's id and (once the membership knows it) this node's incarnation. Anything else
//! is refused before openraft sees it, and logged: a peer of another cluster, an address now
//! used by another node, a node that came back on a blank disk.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use seedkv_core::storage::{DynDisk, NodeIdentity};
use seedkv_core::NodeId;
use tonic::Status;

use crate::pb::RaftMessage;

/// The identity of a running node; the cluster id is learned once if the node has none.
pub struct Identity {
    node_id: NodeId,
    incarnation: u64,
    /// 0 until the node bootstraps or joins a cluster.
    cluster_id: AtomicU64,
    disk: Arc<dyn DynDisk>,
    /// Serializes learning the cluster id (it is written to the disk once).
    learning: tokio::sync::Mutex<()>,
    /// When a refusal was last logged: at most one line per [`REFUSAL_LOG_EVERY_MS`], since
    /// a refused peer retries every heartbeat.
    last_logged: std::sync::Mutex<Option<tokio::time::Instant>>,
}

/// Least time between two logged refusals.
const REFUSAL_LOG_EVERY_MS: u64 = 5_000;

/// What kind of Raft request is being admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inbound {
    AppendEntries,
    Vote,
    Snapshot,
}

impl Identity {
    /// The identity read from (or just written to) `disk`.
    pub fn new(record: NodeIdentity, disk: Arc<dyn DynDisk>) -> Identity {
        Identity {
            node_id: record.node_id,
            incarnation: record.incarnation,
            cluster_id: AtomicU64::new(record.cluster_id),
            disk,
            learning: tokio::sync::Mutex::new(()),
            last_logged: std::sync::Mutex::new(None),
        }
    }

    /// This node's data directory incarnation.
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// This node's cluster id; 0 if it has none yet.
    pub fn cluster_id(&self) -> u64 {
        self.cluster_id.load(Ordering::Acquire)
    }

    /// Makes `cluster_id` this node's cluster, durably, if it has none; refuses a different
    /// one (the node belongs to another cluster).
    pub async fn settle_cluster(&self, cluster_id: u64) -> Result<(), Status> {
        assert!(cluster_id != 0, "a cluster id is never 0");
        let _held = self.learning.lock().await;
        match self.cluster_id() {
            0 => {}
            mine if mine == cluster_id => return Ok(()),
            mine => {
                return Err(Status::failed_precondition(format!(
                    "node {} belongs to cluster {mine:016x}, not {cluster_id:016x}",
                    self.node_id
                )))
            }
        }
        let record = NodeIdentity {
            node_id: self.node_id,
            incarnation: self.incarnation,
            cluster_id,
        };
        record
            .save(&*self.disk)
            .await
            .map_err(|err| Status::unavailable(format!("cannot record the cluster id: {err}")))?;
        self.cluster_id.store(cluster_id, Ordering::Release);
        tracing::info!(
            node = self.node_id,
            cluster = format!("{cluster_id:016x}"),
            "joined cluster"
        );
        Ok(())
    }

    /// Admits a Raft request, or refuses it (doing nothing) with the reason. `from_recorded`
    /// is the incarnation this node's membership records for the sender, if any.
    pub async fn admit(
        &self,
        message: &RaftMessage,
        kind: Inbound,
        from_recorded: Option<u64>,
    ) -> Result<(), Status> {
        let refuse = |why: String| {
            if self.time_to_log() {
                tracing::warn!(
                    node = self.node_id,
                    from = message.from,
                    ?kind,
                    "refused a Raft request: {why}"
                );
            }
            Err(Status::failed_precondition(why))
        };
        if message.to != self.node_id {
            return refuse(format!(
                "this address is node {}, not node {}",
                self.node_id, message.to
            ));
        }
        let mine = self.cluster_id();
        if message.cluster_id == 0 {
            if mine != 0 {
                return refuse(format!(
                    "node {} sent no cluster id; this node belongs to cluster {mine:016x}",
                    message.from
                ));
            }
        } else if mine == 0 {
            // A node that has never been part of a cluster joins the one that reaches it
            // first (it was just added to it).
            self.settle_cluster(message.cluster_id).await?;
        } else if message.cluster_id != mine {
            return refuse(format!(
                "node {} is in cluster {:016x}, this node in cluster {mine:016x}",
                message.from, message.cluster_id
            ));
        }
        #[cfg(madsim)]
        if seedkv_core::faults::enabled(seedkv_core::faults::Fault::BlankDiskVotes) {
            return Ok(());
        }
        if message.to_incarnation != 0 && message.to_incarnation != self.incarnation {
            return refuse(format!(
                "node {} runs incarnation {:016x} of its data directory, but the membership \
                 names incarnation {:016x}: the node lost its data; remove it from the \
                 cluster and join it again as a new member",
                self.node_id, self.incarnation, message.to_incarnation
            ));
        }
        if kind == Inbound::Vote {
            if let Some(recorded) = from_recorded.filter(|r| *r != 0) {
                if recorded != message.from_incarnation {
                    return refuse(format!(
                        "candidate node {} runs incarnation {:016x}, but the membership names \
                         {recorded:016x}",
                        message.from, message.from_incarnation
                    ));
                }
            }
        }
        Ok(())
    }

    fn time_to_log(&self) -> bool {
        let now = tokio::time::Instant::now();
        let mut last = self
            .last_logged
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let due = last.is_none_or(|at| {
            now.duration_since(at) >= std::time::Duration::from_millis(REFUSAL_LOG_EVERY_MS)
        });
        if due {
            *last = Some(now);
        }
        due
    }
}
