//! Events a node reports about its traffic.
//!
//! The simulator hashes every event into the run's fingerprint: two runs of one seed must
//! report the same events in the same order. Outside the simulator nobody listens.

use std::sync::Arc;

use seedkv_core::{GroupId, NodeId};

/// The kind of a Raft RPC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RaftRpc {
    AppendEntries,
    /// An AppendEntries without entries, sent in a batch with others to the same node.
    Heartbeat,
    Vote,
    InstallSnapshot,
}

/// Something observable that happened on the network.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TraceEvent {
    /// A Raft RPC from `from` to `to` was answered (`delivered`) or failed (dropped,
    /// unreachable or timed out).
    Raft {
        group: GroupId,
        from: NodeId,
        to: NodeId,
        rpc: RaftRpc,
        delivered: bool,
    },
}

/// Where trace events go.
pub type Tracer = Arc<dyn Fn(TraceEvent) + Send + Sync>;

/// A tracer that drops everything.
pub fn discard() -> Tracer {
    Arc::new(|_| {})
}
