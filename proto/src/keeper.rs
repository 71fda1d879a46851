//! The leader of a group has its log take the slots the group is given.
//!
//! A group owns a slot only once an `Own` entry in its own log says so (see
//! `seedkv_core::ownership`): a bootstrap writes nothing but the first membership, so the
//! first leader of each group proposes the grant, and any later leader that finds it missing
//! (the first one crashed before it committed) proposes it again. Taking is idempotent and
//! never goes back in epoch, so two leaders proposing the same grant do no harm. Until the
//! grant applies, requests for the group's slots are refused `MOVED` (nothing done) and
//! clients retry.

use std::sync::Weak;
use std::time::Duration;

use openraft::ServerState;
use seedkv_core::ownership::{OwnedRange, Ownership};
use seedkv_core::runtime::timeout;
use seedkv_core::Command;

use crate::node::Node;

/// How often the leader checks that its group holds its grant.
pub const KEEP_EVERY_MS: u64 = 100;

/// How long a grant may take to commit before it is proposed again.
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
    loop {
        tokio::time::sleep(Duration::from_millis(KEEP_EVERY_MS)).await;
        let Some(node) = node.upgrade() else {
            return;
        };
        let state = node.raft().metrics().borrow().state;
        if state == ServerState::Shutdown {
            return;
        }
        if state != ServerState::Leader {
            continue;
        }
        let lacking = missing(&node.grant(), &node.state().ownership());
        if lacking.is_empty() {
            continue;
        }
        let proposal = node.raft().client_write(Command::Own(lacking));
        match timeout(Duration::from_millis(GRANT_COMMIT_MS), proposal).await {
            Ok(Ok(written)) => tracing::info!(
                node = node.id(),
                index = written.log_id.index,
                response = ?written.data,
                "group took its slots"
            ),
            Ok(Err(err)) => tracing::debug!(node = node.id(), "taking slots: {err}"),
            Err(_) => tracing::debug!(node = node.id(), "taking slots did not commit in time"),
        }
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
