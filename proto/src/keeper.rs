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

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use openraft::ServerState;
use seedkv_core::ownership::{OwnedRange, Ownership};
use seedkv_core::runtime::timeout;
use seedkv_core::slot_map::META_GROUP;
use seedkv_core::{Command, GroupId, Raft};

use crate::node::Node;

/// How often each leader checks that its group holds what the map gives it.
pub const KEEP_EVERY_MS: u64 = 100;

/// How long a proposal may take to commit before it is proposed again.
const GRANT_COMMIT_MS: u64 = 10_000;

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
    loop {
        tokio::time::sleep(Duration::from_millis(KEEP_EVERY_MS)).await;
        let Some(node) = node.upgrade() else {
            return;
        };
        if node.raft().metrics().borrow().state == ServerState::Shutdown {
            return;
        }
        let map = node.slot_map();
        for group in node.groups() {
            if group.raft.metrics().borrow().state != ServerState::Leader {
                continue;
            }
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
                let lacking = missing(&map.grants_of(group.id), &group.state.ownership());
                if lacking.is_empty() {
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
