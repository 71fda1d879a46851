//! Routing on a node: which of the groups it hosts serves a request, or why none does.
//!
//! A node serves a key only through a hosted data group whose own applied state owns the
//! key's slot; the slot map only names the owner in the refusal, so a client with a stale
//! map is told where to go and never served by the wrong group. A session belongs to the
//! group that registered it (client ids are numbered per group), so a write tagged with
//! another group's session is refused too: proposed there, its tag would name another client.

use crate::slot::Slot;
use crate::slot_map::{SlotMap, SlotOwner, META_GROUP};
use crate::types::GroupId;

/// Where a request for one slot goes on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The hosted data group that owns the slot serves it.
    Serve(GroupId),
    /// No hosted group serves it (or the session belongs elsewhere): refuse, nothing done,
    /// naming the owner the local map gives, if any.
    Moved {
        slot: Slot,
        owner: Option<SlotOwner>,
    },
}

/// Decides where a request for `slot` goes. `owning` lists the hosted groups whose applied
/// state owns the slot (at most one data group, if ownership is sound; the meta group never
/// serves keys); `session_group` is the group of the request's session, if it has one.
pub fn route(
    slot: Slot,
    owning: &[GroupId],
    session_group: Option<GroupId>,
    map: Option<&SlotMap>,
) -> Decision {
    let moved = Decision::Moved {
        slot,
        owner: map.map(|map| map.owner(slot)),
    };
    let mut serving = owning.iter().copied().filter(|&group| group != META_GROUP);
    let Some(group) = serving.next() else {
        return moved;
    };
    // Two hosted groups owning one slot would be a broken ownership invariant: serve neither.
    if serving.next().is_some() {
        return moved;
    }
    match session_group {
        Some(session) if session != group => moved,
        _ => Decision::Serve(group),
    }
}

/// The data group a request naming `group` (0: unspecified) is for: a named one as is; an
/// unnamed one the cluster's only data group, if `data_groups` has exactly one.
pub fn named_or_only(group: u32, data_groups: &[GroupId]) -> Result<GroupId, String> {
    if group != META_GROUP.0 {
        return Ok(GroupId(group));
    }
    match data_groups {
        [only] => Ok(*only),
        [] => Err("the cluster has no data group yet (its slot map is not set); retry".into()),
        several => Err(format!(
            "the cluster has {} data groups: name one in `group` (the slot map, from \
             Admin.SlotMap, gives each slot's group)",
            several.len()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map() -> SlotMap {
        match SlotMap::initial(&[1, 2, 3], 3, 3) {
            Ok(map) => map,
            Err(err) => panic!("{err}"),
        }
    }

    #[test]
    fn the_owning_data_group_serves() {
        let slot = Slot::FIRST;
        let decision = route(slot, &[GroupId(1)], None, Some(&map()));
        assert_eq!(decision, Decision::Serve(GroupId(1)));
        let decision = route(slot, &[GroupId(1)], Some(GroupId(1)), None);
        assert_eq!(decision, Decision::Serve(GroupId(1)));
    }

    #[test]
    fn no_owner_here_is_moved_to_the_map_owner() {
        let map = map();
        let slot = Slot::LAST;
        let owner = map.owner(slot);
        assert_eq!(owner.group, GroupId(3));
        let decision = route(slot, &[], None, Some(&map));
        assert_eq!(
            decision,
            Decision::Moved {
                slot,
                owner: Some(owner)
            }
        );
        // Without a map the refusal names no owner.
        let decision = route(slot, &[], None, None);
        assert_eq!(decision, Decision::Moved { slot, owner: None });
    }

    #[test]
    fn the_meta_group_never_serves_keys() {
        let decision = route(Slot::FIRST, &[META_GROUP], None, None);
        assert!(matches!(decision, Decision::Moved { .. }));
    }

    #[test]
    fn a_session_of_another_group_is_moved() {
        let decision = route(Slot::FIRST, &[GroupId(1)], Some(GroupId(2)), Some(&map()));
        assert!(matches!(decision, Decision::Moved { .. }));
    }

    #[test]
    fn two_owners_serve_nothing() {
        let decision = route(Slot::FIRST, &[GroupId(1), GroupId(2)], None, None);
        assert!(matches!(decision, Decision::Moved { .. }));
    }

    #[test]
    fn an_unnamed_group_is_the_only_one_or_refused() {
        assert_eq!(named_or_only(2, &[GroupId(1)]), Ok(GroupId(2)));
        assert_eq!(named_or_only(0, &[GroupId(1)]), Ok(GroupId(1)));
        assert!(named_or_only(0, &[]).is_err());
        let several = named_or_only(0, &[GroupId(1), GroupId(2)]);
        assert!(several.is_err_and(|err| err.contains("2 data groups")));
    }
}
