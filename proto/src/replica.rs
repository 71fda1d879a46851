//! Read replicas: a node that is a learner of the meta group and of every data group.
//!
//! A replica never votes, so it adds nothing to any quorum and no lease counts on it. It
//! serves serializable reads from its own state, once it has applied what each group's
//! leader confirmed it held after the replica started ([`Node::open_reads_from`]): a client reading from
//! one replica never sees it go back in time, even when a diskless replica restarts empty.
//! Joining is idempotent and runs at every start: a diskless replica comes back with a new
//! incarnation, which replaces the one its learner entry recorded, and the cluster may
//! have new groups.

use std::sync::Arc;
use std::time::Duration;

use openraft::ServerState;
use seedkv_core::GroupId;

use crate::client::{Client, ClientConfig, ClientError};
use crate::node::Node;

/// How long a replica keeps trying to join every group before it gives up (and says so).
pub const REPLICA_JOIN_MS: u64 = 600_000;

/// Between two attempts to join.
const REPLICA_JOIN_RETRY_MS: u64 = 500;

impl Node {
    /// Joins the cluster reachable at `seed` as a read replica, in the background: a learner
    /// of the meta group and of every data group of the slot map, each group's reads opened
    /// once every entry committed before this start is applied. Retries until it has joined every group, the node
    /// stops, or [`REPLICA_JOIN_MS`] pass.
    pub fn join_as_replica_in_background(self: &Arc<Self>, seed: String) {
        let node = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut config = ClientConfig::new(vec![seed.clone()]);
            config.request_timeout_ms = 2_000;
            let client = Client::new(config);
            let deadline = tokio::time::Instant::now() + Duration::from_millis(REPLICA_JOIN_MS);
            loop {
                let Some(node) = node.upgrade() else {
                    return;
                };
                if node.raft().metrics().borrow().state == ServerState::Shutdown {
                    return;
                }
                match join_every_group(&node, &client, &seed).await {
                    Ok(groups) => {
                        tracing::info!(
                            node = node.id(),
                            via = seed,
                            groups,
                            "a read replica of the meta group and every data group"
                        );
                        return;
                    }
                    Err(err) if tokio::time::Instant::now() < deadline => {
                        tracing::warn!(node = node.id(), "replica join via {seed}: {err}");
                    }
                    Err(err) => {
                        tracing::error!(
                            node = node.id(),
                            "gave up joining as a replica via {seed} after {} s: {err}",
                            REPLICA_JOIN_MS / 1_000
                        );
                        return;
                    }
                }
                drop(node);
                tokio::time::sleep(Duration::from_millis(REPLICA_JOIN_RETRY_MS)).await;
            }
        });
    }
}

/// One attempt: every group, the meta group first; returns how many.
async fn join_every_group(node: &Node, client: &Client, seed: &str) -> Result<usize, ClientError> {
    let map = client.slot_map().await?;
    let groups: Vec<u32> = std::iter::once(0).chain(map.groups()).collect();
    for &group in &groups {
        // Asked of the group's replicas (the seed may have lost the group meanwhile).
        let mut addrs: Vec<&str> = vec![seed];
        if group != 0 {
            addrs.extend(map.replicas_of(group).iter().map(String::as_str));
        }
        // Already a learner as this incarnation: nothing to change (an add that changes
        // nothing still writes a membership entry, which a candidate would have to match).
        let seen = status_from_any(client, &addrs, group).await?;
        let recorded = seen.learners.iter().any(|m| {
            m.id == node.id() && m.addr == node.addr() && m.incarnation == node.incarnation()
        });
        if !recorded {
            client.add_learner(group, node.id(), node.addr()).await?;
        }
        // Every entry committed before now (so before this start): reads wait for it.
        let floor = committed_floor(client, &seen, group).await?;
        if !node.open_reads_from(GroupId(group), floor) {
            return Err(ClientError::Unavailable(format!(
                "group {group} has not reached this replica yet"
            )));
        }
    }
    Ok(groups.len())
}

/// `group`'s status from the first of `addrs` that answers.
async fn status_from_any(
    client: &Client,
    addrs: &[&str],
    group: u32,
) -> Result<crate::pb::StatusResponse, ClientError> {
    let mut last = None;
    for addr in addrs {
        match client.group_status(addr, group, false).await {
            Ok(status) => return Ok(status),
            Err(err) => last = Some(err),
        }
    }
    Err(last.unwrap_or_else(|| ClientError::Unavailable(format!("no replica of group {group}"))))
}

/// An index at or above every entry of `group` committed so far: the applied index of its
/// leader (named in `seen`, a replica's status) after it confirmed its leadership. A
/// leader's last log index would not do (one cut off from the others still calls itself
/// leader, and its uncommitted tail may never commit), nor would a majority of voters read
/// from a membership that may be stale or joint.
async fn committed_floor(
    client: &Client,
    seen: &crate::pb::StatusResponse,
    group: u32,
) -> Result<u64, ClientError> {
    let leader = seen
        .voters
        .iter()
        .find(|m| m.id == seen.leader_id)
        .ok_or_else(|| ClientError::Unavailable(format!("group {group} has no leader now")))?;
    let status = client.confirmed_group_status(&leader.addr, group).await?;
    Ok(status.applied_index)
}
