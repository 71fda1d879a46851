//! One clock for every group's heartbeats, and none for an idle group.
//!
//! openraft times each group's heartbeats on its own, so a node leading many groups sends
//! them at scattered moments, one call per group per follower, and an idle cluster spends
//! its CPU on waking threads for them. Here the node fires the heartbeats of every group it
//! leads at the same moment, once per heartbeat interval, and the network coalesces the
//! empty appends bound for one peer into one call (`network::Peers`). A group idle long
//! enough goes quiet (`seedkv_core::quiet`): instead of its heartbeats, one `Quiet` call per
//! peer per beat names every such group, and the followers keep their elections for it off
//! while those calls come. openraft's own heartbeat timer is off (`Node::start`); its
//! election timers and everything else are unchanged.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use openraft::ServerState;
use seedkv_core::quiet::{may_go_quiet, LeaderView, QuietGroup, MAX_QUIET_GROUPS};
use seedkv_core::{GroupId, NodeId};
use tokio::time::Instant;

use crate::node::{Group, Node};

/// Every how many beats a leader asks each quiet group's Raft core itself whether it runs,
/// rather than trusting its last published metrics: a core that stopped or hangs must not
/// keep its group quiet (its followers would never elect), and the check costs the core a
/// wakeup, which quiet groups exist to spare. Five beats (500 ms at the default interval)
/// is less than one quiet lease.
const CONFIRM_EVERY_BEATS: u64 = 5;

/// Every how many beats the quiet groups are named to each peer (a group that just went
/// quiet is named at once): a lease lasts six beats and more, so two calls in a row may be
/// lost before a follower's lease runs out, and an idle node makes half the calls.
const QUIET_EVERY_BEATS: u64 = 2;

/// Runs until the node is dropped or every group it hosts has stopped. When it ends, every
/// quiet lease on the node ends with it (nothing else would end them) and the node refuses
/// to keep groups quiet from then on.
pub(crate) async fn beat(node: Weak<Node>, interval_ms: u64) {
    assert!(interval_ms > 0, "a heartbeat interval of 0 would spin");
    let _leases = EndLeasesOnExit(node.clone());
    let interval = Duration::from_millis(interval_ms);
    // Per group led here: its last log index, and since when it has not changed.
    let mut idle: BTreeMap<GroupId, (Option<u64>, Instant)> = BTreeMap::new();
    // Groups a follower refused to keep quiet (or that a failed call could not name):
    // heartbeat them again.
    let refused: Arc<Mutex<BTreeSet<GroupId>>> = Arc::default();
    // Peers a Quiet call is on its way to: no second one meanwhile.
    let calling: Arc<Mutex<BTreeSet<NodeId>>> = Arc::default();
    // The groups led here that were quiet at the last beat.
    let mut was_quiet: BTreeSet<GroupId> = BTreeSet::new();
    for beat_number in 0u64.. {
        tokio::time::sleep(interval).await;
        let Some(node) = node.upgrade() else {
            return;
        };
        let groups = node.groups();
        if groups
            .iter()
            .all(|group| group.raft.metrics().borrow().state == ServerState::Shutdown)
        {
            return;
        }
        let now = Instant::now();
        let woken = std::mem::take(&mut *lock(&refused));
        let confirm = beat_number % CONFIRM_EVERY_BEATS == 0;
        let renew = beat_number % QUIET_EVERY_BEATS == 0;
        let mut quiet: BTreeMap<NodeId, Peer> = BTreeMap::new();
        let mut led = BTreeSet::new();
        let mut now_quiet = BTreeSet::new();
        for group in groups {
            // As a follower: a quiet lease its leader stopped renewing gives the group its
            // elections back.
            group.end_quiet_lease(now);
            let leads = group.heartbeats.load(Ordering::Relaxed)
                && group.raft.metrics().borrow().state == ServerState::Leader;
            let mut announced = leads
                .then(|| quiet_group(node.id(), &group, &mut idle, &woken, now))
                .flatten();
            if announced.is_some()
                && (confirm || !was_quiet.contains(&group.id))
                && !core_runs(&group, interval / 2).await
            {
                tracing::warn!(
                    group = group.id.0,
                    "the group's Raft core does not answer: heartbeating it"
                );
                announced = None;
            }
            // A quiet group's Raft needs no clock: its elections are off (a follower's
            // lease) or it leads without heartbeats.
            group
                .raft
                .runtime_config()
                .tick(announced.is_none() && !group.quiet());
            if !leads {
                continue;
            }
            led.insert(group.id);
            if let Some(announced) = announced {
                now_quiet.insert(group.id);
                let metrics = group.raft.metrics().borrow().clone();
                for (&peer, member) in metrics.membership_config.membership().nodes() {
                    if peer == node.id() {
                        continue;
                    }
                    let to = quiet.entry(peer).or_insert_with(|| Peer {
                        addr: member.addr.clone(),
                        incarnation: member.incarnation,
                        groups: Vec::new(),
                    });
                    to.groups.push(announced);
                }
                continue;
            }
            // Only queues a message to the group's Raft core; an error means it stopped.
            if let Err(fatal) = group.raft.trigger().heartbeat().await {
                tracing::debug!(group = group.id.0, "no heartbeat: {fatal}");
            }
        }
        idle.retain(|group, _| led.contains(group));
        for group in now_quiet.symmetric_difference(&was_quiet) {
            let quiet = now_quiet.contains(group);
            tracing::debug!(
                node = node.id(),
                group = group.0,
                quiet,
                "heartbeats {}",
                if quiet { "stopped: idle" } else { "resumed" }
            );
        }
        let previously_quiet = std::mem::replace(&mut was_quiet, now_quiet);
        // Half a lease: a slow answer is still an answer, and one lost call in a row does
        // not end the followers' leases.
        let ttl = Duration::from_millis(node.quiet_lease_ms / 2).max(interval);
        for (to, peer) in quiet {
            let news = peer
                .groups
                .iter()
                .any(|quiet| !previously_quiet.contains(&GroupId(quiet.group)));
            if !renew && !news {
                continue;
            }
            if !lock_peers(&calling).insert(to) {
                // The last call has not ended: the groups keep the lease it renews, or, if
                // it fails, are heartbeaten again.
                continue;
            }
            let (node, refused, calling) = (node.clone(), refused.clone(), calling.clone());
            tokio::spawn(async move {
                send_quiet(node, to, peer, ttl, refused).await;
                lock_peers(&calling).remove(&to);
            });
        }
    }
}

/// Whether `group`'s Raft core answers within `within`.
async fn core_runs(group: &Group, within: Duration) -> bool {
    matches!(
        seedkv_core::runtime::timeout(within, group.raft.with_raft_state(|_| ())).await,
        Ok(Ok(()))
    )
}

/// Ends every quiet lease on the node when the heartbeat clock stops.
struct EndLeasesOnExit(Weak<Node>);

impl Drop for EndLeasesOnExit {
    fn drop(&mut self) {
        if let Some(node) = self.0.upgrade() {
            node.stop_quiet();
        }
    }
}

/// A peer and the quiet groups to name to it.
struct Peer {
    addr: String,
    incarnation: u64,
    groups: Vec<QuietGroup>,
}

/// What to announce for `group`, led here, if it is quiet: idle (its log unchanged) since
/// [`seedkv_core::quiet::QUIET_AFTER_MS`] or more, every replica holding its whole log, and
/// not refused by a follower just now (`woken`).
fn quiet_group(
    me: NodeId,
    group: &Group,
    idle: &mut BTreeMap<GroupId, (Option<u64>, Instant)>,
    woken: &BTreeSet<GroupId>,
    now: Instant,
) -> Option<QuietGroup> {
    let metrics = group.raft.metrics().borrow().clone();
    let since = idle
        .entry(group.id)
        .or_insert((metrics.last_log_index, now));
    if since.0 != metrics.last_log_index || woken.contains(&group.id) {
        *since = (metrics.last_log_index, now);
    }
    let membership = metrics.membership_config.membership();
    let replication = metrics.replication.as_ref();
    let view = LeaderView {
        idle_ms: now.saturating_duration_since(since.1).as_millis() as u64,
        last_log_index: metrics.last_log_index,
        last_applied_index: metrics.last_applied.map(|id| id.index),
        matched: membership
            .nodes()
            .map(|(id, _)| *id)
            .filter(|id| *id != me)
            .map(|id| {
                replication
                    .and_then(|r| r.get(&id).copied().flatten())
                    .map(|log_id| log_id.index)
            })
            .collect(),
        uniform: membership.get_joint_config().len() == 1,
        leader_votes: membership.voter_ids().any(|id| id == me),
    };
    may_go_quiet(&view).then_some(QuietGroup {
        group: group.id.0,
        term: metrics.current_term,
        last_log_index: metrics.last_log_index,
    })
}

/// Names `peer.groups` quiet to node `to`; the groups it refuses (or all of them, if the
/// call fails) are heartbeaten again from the next beat.
async fn send_quiet(
    node: Arc<Node>,
    to: NodeId,
    mut peer: Peer,
    ttl: Duration,
    refused: Arc<Mutex<BTreeSet<GroupId>>>,
) {
    // More than one call can carry (never on a node within the group limit): those left
    // out are heartbeaten again.
    if peer.groups.len() > MAX_QUIET_GROUPS {
        let left_out = peer.groups.split_off(MAX_QUIET_GROUPS);
        lock(&refused).extend(left_out.iter().map(|quiet| GroupId(quiet.group)));
    }
    let result = crate::network::send_quiet(
        &node.peers,
        node.identity(),
        (node.id(), to, peer.incarnation),
        &peer.addr,
        &peer.groups,
        ttl,
    )
    .await;
    let again: Vec<GroupId> = match result {
        Ok(ids) => ids.into_iter().map(GroupId).collect(),
        Err(err) => {
            tracing::debug!(to, "quiet groups not named: {err}");
            peer.groups
                .iter()
                .map(|quiet| GroupId(quiet.group))
                .collect()
        }
    };
    lock(&refused).extend(again);
}

fn lock_peers(set: &Mutex<BTreeSet<NodeId>>) -> std::sync::MutexGuard<'_, BTreeSet<NodeId>> {
    set.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn lock(set: &Mutex<BTreeSet<GroupId>>) -> std::sync::MutexGuard<'_, BTreeSet<GroupId>> {
    set.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
