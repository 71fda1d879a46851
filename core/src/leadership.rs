//! Where each data group's leadership belongs, and when a leader offers it back.
//!
//! The placement names a preferred leader for every data group (the first of its
//! replicas, rotating over the nodes), so each node leads a fair share. Elections ignore
//! it: whoever times out first wins, and after a bootstrap or a restart one node can lead
//! nearly everything. A leader that is not its group's preferred leader offers the
//! leadership to it: it stops taking writes to the group, waits for the preferred replica
//! to hold its whole log, and asks it to campaign. Only the leader's vote is free to give
//! while the other followers' leases last (openraft refuses a candidate for the election
//! timeout after the leader's last append), so an offer can win only in a group of at most
//! three voters; larger groups keep whatever leader they elect.

use std::collections::BTreeSet;

use crate::NodeId;

/// Most voters a group may have for its leader to offer leadership: the candidate's vote
/// and the leader's must make a majority.
pub const MAX_VOTERS_TO_OFFER: usize = 3;

/// The node the leader `me` of a group should offer its leadership to, if any: the
/// group's `preferred` leader, when it is another voter and a majority can elect it
/// with the leader's vote alone.
pub fn offer_to(
    me: NodeId,
    preferred: Option<NodeId>,
    voters: &BTreeSet<NodeId>,
) -> Option<NodeId> {
    let preferred = preferred?;
    debug_assert!(voters.contains(&me), "a leader votes in its own group");
    let offer =
        preferred != me && voters.contains(&preferred) && voters.len() <= MAX_VOTERS_TO_OFFER;
    offer.then_some(preferred)
}

/// Most log entries the preferred replica may lag behind the leader for an offer to pause
/// the group's writes: one further behind (down, slow, cut off) is not offered the group
/// this time, and the writes flow on.
pub const MAX_OFFER_LAG_ENTRIES: u64 = 64;

/// Whether the candidate, which has `matched` the leader's log up to that index, is close
/// enough to `last_log` to be offered the group (see [`MAX_OFFER_LAG_ENTRIES`]).
pub fn close_enough(matched: Option<u64>, last_log: Option<u64>) -> bool {
    match (matched, last_log) {
        (_, None) => true,
        (None, Some(last)) => last < MAX_OFFER_LAG_ENTRIES,
        (Some(matched), Some(last)) => matched.saturating_add(MAX_OFFER_LAG_ENTRIES) > last,
    }
}

/// Whether the candidate, which has `matched` the leader's log up to that index, holds all
/// of it (`last_log`): only then does the leader's vote go to it.
pub fn caught_up(matched: Option<u64>, last_log: Option<u64>) -> bool {
    match (matched, last_log) {
        (_, None) => true,
        (None, Some(_)) => false,
        (Some(matched), Some(last)) => matched >= last,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn voters(ids: &[NodeId]) -> BTreeSet<NodeId> {
        ids.iter().copied().collect()
    }

    #[test]
    fn a_leader_offers_to_the_preferred_voter_only() {
        assert_eq!(offer_to(1, Some(2), &voters(&[1, 2, 3])), Some(2));
        assert_eq!(
            offer_to(2, Some(2), &voters(&[1, 2, 3])),
            None,
            "it leads already"
        );
        assert_eq!(
            offer_to(1, Some(4), &voters(&[1, 2, 3])),
            None,
            "not a voter"
        );
        assert_eq!(offer_to(1, None, &voters(&[1, 2, 3])), None, "no placement");
        assert_eq!(offer_to(1, Some(2), &voters(&[1, 2])), Some(2));
    }

    #[test]
    fn no_offer_where_the_leaders_vote_cannot_make_a_majority() {
        assert_eq!(offer_to(1, Some(2), &voters(&[1, 2, 3, 4])), None);
        assert_eq!(offer_to(1, Some(2), &voters(&[1, 2, 3, 4, 5])), None);
    }

    #[test]
    fn caught_up_means_holding_the_whole_log() {
        assert!(caught_up(Some(7), Some(7)));
        assert!(caught_up(Some(8), Some(7)));
        assert!(!caught_up(Some(6), Some(7)));
        assert!(!caught_up(None, Some(0)));
        assert!(caught_up(None, None));
    }

    #[test]
    fn only_a_replica_close_behind_is_offered_the_group() {
        assert!(close_enough(None, None));
        assert!(close_enough(Some(10), Some(10)));
        assert!(close_enough(Some(10), Some(10 + MAX_OFFER_LAG_ENTRIES - 1)));
        assert!(!close_enough(Some(10), Some(10 + MAX_OFFER_LAG_ENTRIES)));
        assert!(close_enough(None, Some(MAX_OFFER_LAG_ENTRIES - 1)));
        assert!(!close_enough(None, Some(MAX_OFFER_LAG_ENTRIES)));
    }
}
