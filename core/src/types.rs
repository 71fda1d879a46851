//! The Raft type config and the identifiers every layer shares.

use serde::{Deserialize, Serialize};

use crate::command::{Command, Response};
use crate::runtime::SeedRuntime;

/// A node's id in the cluster. Never 0: 0 is kept for "unknown".
pub type NodeId = u64;

/// A Raft group hosted by a node. One process can host several groups; every Raft RPC and
/// every storage key carries one. Group 0 is the whole key space until sharding splits it.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct GroupId(pub u32);

impl std::fmt::Display for GroupId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "g{}", self.0)
    }
}

openraft::declare_raft_types!(
    /// seedkv's Raft types: commands in, responses out, nodes addressed by `host:port`.
    pub TypeConfig:
        D = Command,
        R = Response,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = crate::storage::SnapshotData,
        AsyncRuntime = SeedRuntime,
        Responder = openraft::impls::OneshotResponder<TypeConfig>,
);

/// A Raft handle of seedkv's type config.
pub type Raft = openraft::Raft<TypeConfig>;
/// A log entry.
pub type Entry = openraft::Entry<TypeConfig>;
/// A log id.
pub type LogId = openraft::LogId<NodeId>;
/// A vote.
pub type Vote = openraft::Vote<NodeId>;
/// Membership as stored with the log id that set it.
pub type StoredMembership = openraft::StoredMembership<NodeId, openraft::BasicNode>;
/// Snapshot metadata.
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, openraft::BasicNode>;
/// A storage error as openraft wants it.
pub type StorageError = openraft::StorageError<NodeId>;
