//! The leader records each member's incarnation as soon as it can learn it.
//!
//! A bootstrap records every initial member's incarnation in the first entry (see
//! `Node::initialize`), but a node added while it was down is added with its incarnation
//! unknown. Until its incarnation is recorded, a member that
//! comes back on a blank disk cannot be told from the one that had the data, so the leader
//! asks every such member who it is and records the answer through a membership entry that
//! changes nothing else. A member that answers with another node id or cluster is left
//! unrecorded (and keeps being refused by nobody); one that does not answer is asked again.

use std::collections::BTreeMap;
use std::sync::Weak;
use std::time::Duration;

use openraft::{ChangeMembers, ServerState};
use seedkv_core::runtime::timeout;
use seedkv_core::{Member, NodeId};
use tonic::Status;

use crate::node::{Group, Node};
use crate::{Client, ClientConfig};

/// How often the leader looks for members whose incarnation is unknown.
pub const PIN_EVERY_MS: u64 = 500;

/// How long asking one member who it is may take.
const ASK_TIMEOUT_MS: u64 = 1_000;

/// How long the recording entry may take to commit.
const PIN_COMMIT_MS: u64 = 10_000;

/// Runs until the node is dropped or its Raft stops.
pub(crate) async fn pin_incarnations(node: Weak<Node>) {
    loop {
        tokio::time::sleep(Duration::from_millis(PIN_EVERY_MS)).await;
        let Some(node) = node.upgrade() else {
            return;
        };
        if node.raft().metrics().borrow().state == ServerState::Shutdown {
            return;
        }
        for group in node.groups() {
            if let Err(err) = pin_once(&node, &group).await {
                tracing::debug!(
                    node = node.id(),
                    group = group.id.0,
                    "recording incarnations: {}",
                    err.message()
                );
            }
        }
    }
}

/// Members of a uniform membership of `group` led here whose incarnation is unknown.
fn unknown_members(group: &Group) -> Vec<(NodeId, String)> {
    let metrics = group.raft.metrics().borrow().clone();
    if metrics.state != ServerState::Leader {
        return Vec::new();
    }
    let membership = metrics.membership_config.membership();
    if membership.get_joint_config().len() > 1 {
        return Vec::new();
    }
    membership
        .nodes()
        .filter(|(_, member)| member.incarnation == 0)
        .map(|(id, member)| (*id, member.addr.clone()))
        .collect()
}

async fn pin_once(node: &Node, group: &Group) -> Result<(), Status> {
    let unknown = unknown_members(group);
    if unknown.is_empty() {
        return Ok(());
    }
    let mut learned = BTreeMap::new();
    for (id, addr) in unknown {
        let incarnation = if id == node.id() {
            node.incarnation()
        } else {
            match ask(&addr).await {
                Some((said_id, incarnation, cluster_id))
                    if said_id == id && cluster_id == node.cluster_id() && incarnation != 0 =>
                {
                    incarnation
                }
                Some((said_id, _, cluster_id)) => {
                    tracing::warn!(
                        node = node.id(),
                        member = id,
                        %addr,
                        "the member's address answers as node {said_id} of cluster {cluster_id:016x}"
                    );
                    continue;
                }
                None => continue,
            }
        };
        learned.insert(id, Member::new(addr, incarnation));
    }
    if learned.is_empty() {
        return Ok(());
    }
    let mut last_change = Node::membership_lock(group).await?;
    // The membership may have moved while the members were asked: record only what is
    // still unknown at the same address.
    let still_unknown: BTreeMap<NodeId, String> = unknown_members(group).into_iter().collect();
    learned.retain(|id, member| still_unknown.get(id) == Some(&member.addr));
    if learned.is_empty() {
        return Ok(());
    }
    let change = group
        .raft
        .change_membership(ChangeMembers::SetNodes(learned.clone()), true);
    let written = timeout(Duration::from_millis(PIN_COMMIT_MS), change)
        .await
        .map_err(|_| Status::unavailable("recording incarnations did not commit in time"))?
        .map_err(|err| Status::unavailable(err.to_string()))?;
    *last_change = (*last_change).max(written.log_id.index);
    tracing::info!(node = node.id(), group = group.id.0, members = ?learned.keys().collect::<Vec<_>>(), "recorded member incarnations");
    Ok(())
}

/// `(node id, incarnation, cluster id)` of the node at `addr`, if it answers.
pub(crate) async fn ask(addr: &str) -> Option<(NodeId, u64, u64)> {
    let status = status_of(addr).await?;
    Some((status.node_id, status.incarnation, status.cluster_id))
}

/// The meta group's status at `addr`, if the node answers within [`ASK_TIMEOUT_MS`].
pub(crate) async fn status_of(addr: &str) -> Option<crate::pb::StatusResponse> {
    let mut config = ClientConfig::new(vec![addr.to_string()]);
    config.request_timeout_ms = ASK_TIMEOUT_MS;
    config.max_attempts = 1;
    Client::new(config).status(addr).await.ok()
}
