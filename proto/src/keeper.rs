//! Leaders make their groups' logs hold what the slot map gives them.
//!
//! The meta group's leader proposes the bootstrap plan as the first slot map if the meta
//! group holds none (`SetMap` expecting version 0: of two leaders proposing it, one wins).
//! A data group owns a slot only once an `Own` entry in its own log says so (see
//! `seedkv_core::ownership`): a bootstrap writes nothing but the first membership, so the
//! first leader of each data group proposes the grant the map gives it, and any later
//! leader that finds it missing (the first one crashed before it committed) proposes it
//! again. Taking is idempotent and never goes back in epoch, so two leaders proposing the
//! same grant do no harm. Until the grant applies, requests for the group's slots are
//! refused `MOVED` (nothing done) and clients retry.
//!
//! Leaders also give their groups back to the preferred leader the placement names, so
//! each node leads a fair share (`seedkv_core::leadership`): at most one offer per group
//! every [`OFFER_EVERY_MS`], and none before the leader has led that long.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use openraft::ServerState;
use seedkv_core::ownership::{OwnedRange, Ownership};
use seedkv_core::runtime::timeout;
use seedkv_core::slot_map::META_GROUP;
use seedkv_core::{leadership, Command, GroupId, NodeId, Raft};
use tokio::time::Instant;

use crate::client::{Client, ClientConfig};
use crate::node::{Group, Node};

/// How often each leader checks that its group holds what the map gives it.
pub const KEEP_EVERY_MS: u64 = 100;

/// How long a proposal may take to commit before it is proposed again.
const GRANT_COMMIT_MS: u64 = 10_000;

/// How long a leader leads a group before it offers the leadership to the preferred
/// leader, and waits between two offers. Far above the election timeout: a new leader's
/// vote goes to no candidate for that long, and a node that keeps failing to take over
/// costs one short write pause per period.
pub const OFFER_EVERY_MS: u64 = 5_000;

/// How long an offer waits for the preferred replica to hold the leader's whole log.
const OFFER_CATCH_UP_MS: u64 = 1_000;

/// How long an offer waits for the preferred replica to win once asked to campaign.
const OFFER_ELECTION_MS: u64 = 700;

/// What the group must own that `owned` lacks, if anything.
pub fn missing(grant: &[OwnedRange], owned: &Ownership) -> Vec<OwnedRange> {
    grant
        .iter()
        .filter(|range| {
            (range.first.get()..=range.last.get()).any(|n| {
                seedkv_core::slot::Slot::new(n)
                    .and_then(|slot| owned.epoch_of(slot))
                    .is_none_or(|epoch| epoch < range.epoch)
            })
        })
        .copied()
        .collect()
}

/// Runs until the node is dropped or its Raft stops.
pub(crate) async fn keep_grants(node: Weak<Node>) {
    // Groups with a proposal in flight: one at a time per group, none blocking the others.
    let proposing: Arc<Mutex<BTreeSet<GroupId>>> = Arc::default();
    // Per group led here: the term, and when this node took it or last offered it.
    let mut led_since: BTreeMap<GroupId, (u64, Instant)> = BTreeMap::new();
    // Per group led here: the map version and term at which it was found to hold its
    // whole grant (it keeps it until the map changes: ownership never goes back).
    let mut holds_grant: BTreeMap<GroupId, (u64, u64)> = BTreeMap::new();
    loop {
        tokio::time::sleep(Duration::from_millis(KEEP_EVERY_MS)).await;
        let Some(node) = node.upgrade() else {
            return;
        };
        if node.raft().metrics().borrow().state == ServerState::Shutdown {
            return;
        }
        let map = node.slot_map();
        // Groups added after the bootstrap are started by their first replica.
        for (&group, info) in map.iter().flat_map(|map| map.groups()) {
            if info.replicas.first() != Some(&node.id()) || node.hosted(group).is_some() {
                continue;
            }
            if !lock(&proposing).insert(group) {
                continue;
            }
            let (weak, proposing, replicas) = (
                Arc::downgrade(&node),
                proposing.clone(),
                info.replicas.clone(),
            );
            tokio::spawn(async move {
                if let Some(node) = weak.upgrade() {
                    if let Err(err) = node.start_added_group(group, &replicas).await {
                        tracing::debug!(
                            group = group.0,
                            "starting an added group: {}",
                            err.message()
                        );
                    }
                }
                lock(&proposing).remove(&group);
            });
        }
        for group in node.groups() {
            let (state, term) = {
                let metrics = group.raft.metrics();
                let metrics = metrics.borrow();
                (metrics.state, metrics.current_term)
            };
            if state != ServerState::Leader {
                led_since.remove(&group.id);
                holds_grant.remove(&group.id);
                continue;
            }
            let since = led_since
                .entry(group.id)
                .and_modify(|since| {
                    if since.0 != term {
                        *since = (term, Instant::now());
                    }
                })
                .or_insert((term, Instant::now()));
            let command = if group.id == META_GROUP {
                match (&map, node.bootstrap_plan()) {
                    (None, Some(plan)) => Command::SetMap {
                        expect_version: 0,
                        map: Box::new(plan),
                    },
                    _ => continue,
                }
            } else {
                let Some(map) = &map else {
                    continue;
                };
                let held = holds_grant.get(&group.id) == Some(&(map.version(), term));
                let lacking = if held {
                    Vec::new()
                } else {
                    missing(&map.grants_of(group.id), &group.state.ownership())
                };
                if lacking.is_empty() {
                    holds_grant.insert(group.id, (map.version(), term));
                    if since.1.elapsed() < Duration::from_millis(OFFER_EVERY_MS) {
                        continue;
                    }
                    let offer = {
                        let metrics = group.raft.metrics();
                        let metrics = metrics.borrow();
                        let membership = metrics.membership_config.membership();
                        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
                        // Never across a membership change: a joint configuration's voters
                        // are two majorities, not one.
                        let uniform = membership.get_joint_config().len() == 1;
                        leadership::offer_to(node.id(), map.preferred_leader(group.id), &voters)
                            .filter(|_| uniform)
                    };
                    if let Some(to) = offer {
                        since.1 = Instant::now();
                        if lock(&proposing).insert(group.id) {
                            let (proposing, id) = (proposing.clone(), node.id());
                            tokio::spawn(async move {
                                offer_leadership(id, &group, to).await;
                                lock(&proposing).remove(&group.id);
                            });
                        }
                    }
                    continue;
                }
                Command::Own(lacking)
            };
            if !lock(&proposing).insert(group.id) {
                continue;
            }
            let (raft, proposing, id) = (group.raft.clone(), proposing.clone(), node.id());
            tokio::spawn(async move {
                propose(id, group.id, &raft, command).await;
                lock(&proposing).remove(&group.id);
            });
        }
    }
}

fn lock(set: &Mutex<BTreeSet<GroupId>>) -> std::sync::MutexGuard<'_, BTreeSet<GroupId>> {
    set.lock().unwrap_or_else(|p| p.into_inner())
}

/// Offers the leadership of `group`, led by `me`, to `to`: refuses writes to the group
/// until `to` holds the whole log, asks it to campaign, and waits for it to win. Any
/// failure leaves `me` leading (or a new election under way) and writes flowing again.
async fn offer_leadership(me: NodeId, group: &Group, to: NodeId) {
    // A replica far behind (down, slow, cut off) would not catch up in time: offering
    // would only pause the writes.
    let lag = {
        let metrics = group.raft.metrics().borrow().clone();
        let matched = matched_by(&metrics, to);
        (!leadership::close_enough(matched, metrics.last_log_index))
            .then_some((matched, metrics.last_log_index))
    };
    if let Some((matched, last_log)) = lag {
        tracing::debug!(
            node = me,
            group = group.id.0,
            to,
            ?matched,
            ?last_log,
            "no leadership offer: the preferred leader lags"
        );
        return;
    }
    group.handing_over.store(true, Ordering::Release);
    let result = hand_over(me, group, to).await;
    group.handing_over.store(false, Ordering::Release);
    match result {
        Ok(()) => tracing::info!(
            node = me,
            group = group.id.0,
            to,
            "gave the group to its preferred leader"
        ),
        Err(err) => tracing::debug!(node = me, group = group.id.0, to, "leadership offer: {err}"),
    }
}

async fn hand_over(me: NodeId, group: &Group, to: NodeId) -> Result<(), String> {
    let addr = group
        .raft
        .metrics()
        .borrow()
        .membership_config
        .membership()
        .get_node(&to)
        .map(|member| member.addr.clone())
        .ok_or("not a member")?;
    let leads =
        |m: &openraft::RaftMetrics<NodeId, seedkv_core::Member>| m.current_leader == Some(me);
    // Writes proposed before the refusal may still land: compare with the log as it is.
    let ready = group
        .raft
        .wait(Some(Duration::from_millis(OFFER_CATCH_UP_MS)))
        .metrics(
            |m| !leads(m) || leadership::caught_up(matched_by(m, to), m.last_log_index),
            "the preferred leader caught up",
        )
        .await
        .map_err(|err| format!("not caught up: {err}"))?;
    if !leads(&ready) {
        return Err("no longer leads".into());
    }
    // The target stands at once, whatever it promised: nothing it accepted may count in a
    // read lease from now on.
    let term = ready.vote.leader_id().get_term();
    group.lease.exclude(to, term);
    let mut config = ClientConfig::new(vec![addr.clone()]);
    config.request_timeout_ms = 500;
    config.max_attempts = 1;
    Client::new(config)
        .elect(&addr, group.id.0, Some((me, term)))
        .await
        .map_err(|err| format!("asking it to campaign: {err}"))?;
    group
        .raft
        .wait(Some(Duration::from_millis(OFFER_ELECTION_MS)))
        .metrics(|m| !leads(m), "another node leads")
        .await
        .map_err(|err| format!("it did not take over: {err}"))?;
    Ok(())
}

/// The last log index the leader knows `to` holds, from the leader's `metrics`.
fn matched_by(
    metrics: &openraft::RaftMetrics<NodeId, seedkv_core::Member>,
    to: NodeId,
) -> Option<u64> {
    metrics
        .replication
        .as_ref()
        .and_then(|r| r.get(&to).copied().flatten())
        .map(|log_id| log_id.index)
}

async fn propose(node: u64, group: GroupId, raft: &Raft, command: Command) {
    match timeout(
        Duration::from_millis(GRANT_COMMIT_MS),
        raft.client_write(command),
    )
    .await
    {
        Ok(Ok(written)) => tracing::info!(
            node,
            group = group.0,
            index = written.log_id.index,
            response = ?written.data,
            "group took what the slot map gives it"
        ),
        Ok(Err(err)) => tracing::debug!(node, group = group.0, "taking slots: {err}"),
        Err(_) => tracing::debug!(node, group = group.0, "taking slots did not commit in time"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_is_not_held_at_the_granted_epoch_is_missing() {
        let mut owned = Ownership::default();
        let grant = [OwnedRange::EVERY_SLOT];
        assert_eq!(missing(&grant, &owned), grant.to_vec());
        owned.take(&grant);
        assert!(missing(&grant, &owned).is_empty());
    }
}
