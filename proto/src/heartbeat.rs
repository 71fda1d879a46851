//! One clock for every group's heartbeats.
//!
//! openraft times each group's heartbeats on its own, so a node leading many groups sends
//! them at scattered moments, one call per group per follower, and an idle cluster spends
//! its CPU on waking threads for them. Here the node fires the heartbeats of every group it
//! leads at the same moment, once per heartbeat interval, and the network coalesces the
//! empty appends bound for one peer into one call (`network::Peers`): an idle group costs a
//! message inside a batch, not a call of its own. openraft's own heartbeat timer is off
//! (`Node::start`); its election timers and everything else are unchanged.

use std::sync::atomic::Ordering;
use std::sync::Weak;
use std::time::Duration;

use openraft::ServerState;

use crate::node::Node;

/// Runs until the node is dropped or its meta group stops.
pub(crate) async fn beat(node: Weak<Node>, interval_ms: u64) {
    assert!(interval_ms > 0, "a heartbeat interval of 0 would spin");
    loop {
        tokio::time::sleep(Duration::from_millis(interval_ms)).await;
        let Some(node) = node.upgrade() else {
            return;
        };
        if node.raft().metrics().borrow().state == ServerState::Shutdown {
            return;
        }
        for group in node.groups() {
            if !group.heartbeats.load(Ordering::Relaxed)
                || group.raft.metrics().borrow().state != ServerState::Leader
            {
                continue;
            }
            // Only queues a message to the group's Raft core; an error means it stopped.
            if let Err(fatal) = group.raft.trigger().heartbeat().await {
                tracing::debug!(group = group.id.0, "no heartbeat: {fatal}");
            }
        }
    }
}
