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

/// A member of a Raft group as its membership records it: where to reach it, and which
/// data directory it runs on.
///
/// The incarnation is a random number a node draws when its data directory is created. A
/// node that lost its disk comes back with a new one, and the group refuses it until an
/// operator removes it and adds it again: a node that forgot its votes and its log must
/// not count as the member that had them. 0 means "not yet known": the group's leader
/// learns it from the node and records it (see `seedkv_proto`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// `host:port` peers and clients reach the node at.
    pub addr: String,
    /// The node's data directory incarnation; 0 while unknown.
    pub incarnation: u64,
}

impl Member {
    /// A member at `addr` running incarnation `incarnation` (0: not yet known).
    pub fn new(addr: impl Into<String>, incarnation: u64) -> Member {
        Member {
            addr: addr.into(),
            incarnation,
        }
    }
}

impl std::fmt::Display for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}#{:016x}", self.addr, self.incarnation)
    }
}

openraft::declare_raft_types!(
    /// seedkv's Raft types: commands in, responses out, members addressed by `host:port`
    /// and pinned to a data directory incarnation.
    pub TypeConfig:
        D = Command,
        R = Response,
        NodeId = NodeId,
        Node = Member,
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
pub type StoredMembership = openraft::StoredMembership<NodeId, Member>;
/// Snapshot metadata.
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, Member>;
/// A storage error as openraft wants it.
pub type StorageError = openraft::StorageError<NodeId>;
