//! Who a node is: its id, the incarnation of its data directory, and its cluster.
//!
//! Raft's safety rests on a voter remembering its vote and its log. A node restarted on an
//! empty directory (a replaced disk, an unmounted volume, a typo in the path) remembers
//! neither, so it must not count as the member it was. The incarnation tells the two
//! apart: a random number drawn when the directory is created and written before anything
//! else, recorded in the group's membership, and carried by every Raft RPC (see
//! `seedkv_proto::network`). The cluster id keeps clusters apart: it is fixed when a cluster
//! is bootstrapped and learned by a node that joins one, so a reused address or a foreign
//! data directory is refused instead of accepted as a peer.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{keys, DiskError, Durability, DynDisk, WriteBatch};
use crate::codec;
use crate::types::{GroupId, NodeId};

/// Where the record lives: outside every group's key range (those start with `g`).
pub const IDENTITY_KEY: &[u8] = b"node";

/// The identity record of a data directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeIdentity {
    /// The node id the directory was created for.
    pub node_id: NodeId,
    /// Drawn at random when the directory was created; never 0.
    pub incarnation: u64,
    /// The cluster the node belongs to; 0 until it bootstraps one or joins one.
    pub cluster_id: u64,
}

/// The identity record could not be read, or does not fit.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error(
        "this data directory belongs to node {found}, not node {expected}; refusing to touch it"
    )]
    WrongNode { found: NodeId, expected: NodeId },
    #[error(
        "this data directory holds Raft state but no node identity: it was written by an older \
         seedkv; start the node on an empty directory (after removing it from the cluster) and \
         join it again"
    )]
    NoIdentity,
    #[error("{0}")]
    Disk(#[from] DiskError),
}

impl NodeIdentity {
    /// Reads the record of `disk`, or creates it for `node_id` with `incarnation` (which
    /// must be non-zero) if the disk is blank. Returns the record and whether it was created.
    /// A created record is durable before this returns.
    pub async fn load_or_create(
        disk: &dyn DynDisk,
        node_id: NodeId,
        incarnation: u64,
    ) -> Result<(NodeIdentity, bool), IdentityError> {
        assert!(incarnation != 0, "an incarnation is never 0");
        if let Some(bytes) = disk.get(IDENTITY_KEY)? {
            let found: NodeIdentity = codec::decode(&bytes).map_err(|err| DiskError::Corrupt {
                key: "node identity".into(),
                reason: err.to_string(),
            })?;
            if found.node_id != node_id {
                return Err(IdentityError::WrongNode {
                    found: found.node_id,
                    expected: node_id,
                });
            }
            return Ok((found, false));
        }
        // Raft state without a record: an older format, or a record lost. Either way this
        // directory's votes cannot be tied to an incarnation.
        let group = GroupId::default();
        let has_state = disk.get(&keys::vote(group))?.is_some()
            || disk.get(&keys::applied(group))?.is_some()
            || !disk
                .scan(&keys::log(group, 0), &keys::log_end(group), 1, false)?
                .is_empty();
        if has_state {
            return Err(IdentityError::NoIdentity);
        }
        let created = NodeIdentity {
            node_id,
            incarnation,
            cluster_id: 0,
        };
        created.save(disk).await?;
        Ok((created, true))
    }

    /// Writes the record, durably.
    pub async fn save(&self, disk: &dyn DynDisk) -> Result<(), DiskError> {
        let mut batch = WriteBatch::default();
        batch.put(IDENTITY_KEY.to_vec(), codec::encode(self));
        disk.write_dyn(batch, Durability::Sync).await
    }
}

/// The id of the cluster bootstrapped under `name` with `members` (id to address) and the
/// placement `plan` (the encoded initial slot map): the same on every initial member, since
/// each derives it from the same flags, and different for a different name, member list or
/// plan (as etcd derives its cluster id from `--initial-cluster-token` and the members).
/// Initial members given different flags thus form different clusters, which refuse each
/// other's messages, instead of one cluster bootstrapped from two different plans. Never 0.
pub fn cluster_id(name: &str, members: &BTreeMap<NodeId, String>, plan: &[u8]) -> u64 {
    let crc = crc::Crc::<u64>::new(&crc::CRC_64_XZ);
    let mut digest = crc.digest();
    digest.update(&(plan.len() as u64).to_be_bytes());
    digest.update(plan);
    digest.update(&(name.len() as u64).to_be_bytes());
    digest.update(name.as_bytes());
    for (id, addr) in members {
        digest.update(&id.to_be_bytes());
        digest.update(&(addr.len() as u64).to_be_bytes());
        digest.update(addr.as_bytes());
    }
    digest.finalize().max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_id_depends_on_name_members_and_plan_only() {
        let members = |list: &[(u64, &str)]| -> BTreeMap<NodeId, String> {
            list.iter().map(|(id, a)| (*id, a.to_string())).collect()
        };
        let a = members(&[(1, "10.0.0.1:7379"), (2, "10.0.0.2:7379")]);
        let b = members(&[(2, "10.0.0.2:7379"), (1, "10.0.0.1:7379")]);
        assert_eq!(cluster_id("prod", &a, b"3"), cluster_id("prod", &b, b"3"));
        assert_ne!(cluster_id("prod", &a, b"3"), cluster_id("test", &a, b"3"));
        let c = members(&[(1, "10.0.0.1:7379"), (3, "10.0.0.2:7379")]);
        assert_ne!(cluster_id("prod", &a, b"3"), cluster_id("prod", &c, b"3"));
        // The name and an address cannot trade bytes.
        let d = members(&[(1, "x")]);
        let e = members(&[(1, "")]);
        assert_ne!(cluster_id("ab", &d, b"3"), cluster_id("abx", &e, b"3"));
        assert_ne!(cluster_id("prod", &a, b"3"), 0);
        assert_ne!(cluster_id("prod", &a, b"3"), cluster_id("prod", &a, b"4"));
    }
}
