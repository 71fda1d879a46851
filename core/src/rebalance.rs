//! Which slots to move so that every data group's share of the 1,024 slots follows its
//! weight, moving as few as possible.
//!
//! A group's target is its weighted share rounded by largest remainder (every group at
//! least one slot, as in `slot_map::slot_shares`), except that among groups whose
//! remainders tie, the spare slots go to those holding more already: a rounding choice
//! should never cost a move. Every group above its target gives away its surplus and
//! every group below receives its deficit; since one move lowers the total surplus by
//! exactly one, `surplus` moves is the fewest any plan could make. Surplus groups give their
//! highest slots first and deficit groups take them in slot order, so ranges stay few.
//!
//! Pure: the meta group's leader (the migration driver) asks this for a plan and carries
//! out each [`SlotMove`] as a migration.

use std::collections::BTreeMap;

use crate::slot::{Slot, SLOT_COUNT};
use crate::slot_map::{PlacementError, SlotMap};
use crate::types::GroupId;

/// One slot to move from one data group to another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct SlotMove {
    pub slot: Slot,
    pub from: GroupId,
    pub to: GroupId,
}

/// Each group's target slot count for `weights`, breaking ties in the rounding towards the
/// groups that hold more in `held` (groups absent from `held` hold none).
pub fn targets(
    weights: &BTreeMap<GroupId, u32>,
    held: &BTreeMap<GroupId, usize>,
) -> Result<BTreeMap<GroupId, usize>, PlacementError> {
    if weights.is_empty() {
        return Err(PlacementError::NoGroups);
    }
    if weights.len() > usize::from(SLOT_COUNT) {
        return Err(PlacementError::TooManyGroups {
            groups: u32::try_from(weights.len()).unwrap_or(u32::MAX),
        });
    }
    if weights.values().any(|&w| w == 0) {
        return Err(PlacementError::ZeroWeight);
    }
    let total: u64 = weights.values().map(|&w| u64::from(w)).sum();
    let slots = u64::from(SLOT_COUNT);
    let spare = slots - weights.len() as u64;
    let mut shares: BTreeMap<GroupId, u64> = weights
        .iter()
        .map(|(&group, &w)| (group, 1 + spare * u64::from(w) / total))
        .collect();
    let mut left = slots - shares.values().sum::<u64>();
    // Largest remainder first; among equal remainders, the group holding more; then by id.
    let mut order: Vec<(u64, usize, GroupId)> = weights
        .iter()
        .map(|(&group, &w)| {
            let holds = held.get(&group).copied().unwrap_or(0);
            (spare * u64::from(w) % total, holds, group)
        })
        .collect();
    order.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.cmp(&a.1)).then(a.2.cmp(&b.2)));
    for &(_, _, group) in &order {
        if left == 0 {
            break;
        }
        if let Some(share) = shares.get_mut(&group) {
            *share += 1;
            left -= 1;
        }
    }
    assert_eq!(left, 0, "the remainders cover the slots left over");
    Ok(shares
        .into_iter()
        .map(|(group, share)| (group, usize::try_from(share).unwrap_or(usize::MAX)))
        .collect())
}

/// The fewest slot moves that bring `map`'s groups to the shares their weights give.
/// Empty when the map is balanced already.
pub fn plan(map: &SlotMap) -> Result<Vec<SlotMove>, PlacementError> {
    let weights: BTreeMap<GroupId, u32> = map
        .groups()
        .iter()
        .map(|(&group, info)| (group, info.weight))
        .collect();
    let mut held: BTreeMap<GroupId, Vec<Slot>> =
        weights.keys().map(|&group| (group, Vec::new())).collect();
    for (slot, owner) in map.owners() {
        held.entry(owner.group).or_default().push(slot);
    }
    let counts: BTreeMap<GroupId, usize> = held.iter().map(|(&g, s)| (g, s.len())).collect();
    let targets = targets(&weights, &counts)?;
    // Highest slots of every surplus group, given away in slot order.
    let mut given: Vec<(Slot, GroupId)> = Vec::new();
    for (&group, slots) in &held {
        let target = targets.get(&group).copied().unwrap_or(0);
        if slots.len() > target {
            given.extend(slots[target..].iter().map(|&slot| (slot, group)));
        }
    }
    given.sort_unstable();
    let mut receivers = targets.iter().flat_map(|(&group, &target)| {
        let has = counts.get(&group).copied().unwrap_or(0);
        std::iter::repeat_n(group, target.saturating_sub(has))
    });
    let moves: Vec<SlotMove> = given
        .into_iter()
        .map(|(slot, from)| {
            let to = receivers
                .next()
                .expect("deficits sum to the surplus: both are the slots misplaced");
            SlotMove { slot, from, to }
        })
        .collect();
    assert!(receivers.next().is_none(), "every deficit is filled");
    Ok(moves)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn counts_after(map: &SlotMap, moves: &[SlotMove]) -> BTreeMap<GroupId, usize> {
        let mut owner: Vec<GroupId> = map.owners().map(|(_, o)| o.group).collect();
        for m in moves {
            assert_eq!(
                owner[usize::from(m.slot.get())],
                m.from,
                "{m:?} moves a slot its source does not own"
            );
            owner[usize::from(m.slot.get())] = m.to;
        }
        let mut counts: BTreeMap<GroupId, usize> = map.groups().keys().map(|&g| (g, 0)).collect();
        for group in owner {
            *counts.entry(group).or_default() += 1;
        }
        counts
    }

    #[test]
    fn a_balanced_map_moves_nothing() {
        let map = SlotMap::initial(&[1, 2, 3], 3, 3).expect("map");
        assert_eq!(plan(&map), Ok(Vec::new()));
    }

    #[test]
    fn a_new_group_takes_its_share_from_the_others() {
        let map = SlotMap::initial(&[1, 2, 3], 2, 3)
            .and_then(|map| map.with_group(GroupId(3), vec![3, 1, 2], 1))
            .expect("map");
        let moves = plan(&map).expect("plan");
        // 1,024 / 3: 342, 341, 341; the new group takes 341, from both others.
        assert_eq!(moves.len(), 341);
        assert!(moves
            .iter()
            .all(|m| m.to == GroupId(3) && m.from != GroupId(3)));
        let counts = counts_after(&map, &moves);
        assert_eq!(counts[&GroupId(3)], 341);
        assert_eq!(counts.values().sum::<usize>(), usize::from(SLOT_COUNT));
    }

    #[test]
    fn zero_weights_and_no_groups_are_refused() {
        let weights: BTreeMap<GroupId, u32> = [(GroupId(1), 0)].into();
        assert_eq!(
            targets(&weights, &BTreeMap::new()),
            Err(PlacementError::ZeroWeight)
        );
        assert_eq!(
            targets(&BTreeMap::new(), &BTreeMap::new()),
            Err(PlacementError::NoGroups)
        );
    }

    #[test]
    fn ties_in_rounding_favour_the_groups_holding_more() {
        // Three equal weights: one group gets the spare slot; it should be the one that
        // has it already, not group 1 by id.
        let weights: BTreeMap<GroupId, u32> = (1..=3).map(|g| (GroupId(g), 1)).collect();
        let held: BTreeMap<GroupId, usize> =
            [(GroupId(1), 341), (GroupId(2), 341), (GroupId(3), 342)].into();
        let targets = targets(&weights, &held).expect("targets");
        assert_eq!(targets, held);
    }

    proptest! {
        /// Any weights, any starting map: the plan reaches the targets exactly, never moves
        /// a slot within a group or twice, and moves no more slots than the total surplus.
        #[test]
        fn plans_reach_the_weights_with_the_fewest_moves(
            weights in proptest::collection::vec(1u32..20, 1..12),
            seed in any::<u64>(),
        ) {
            let nodes = [1, 2, 3];
            let groups = u32::try_from(weights.len()).expect("few");
            // Scramble the owners, then set the weights: an arbitrary unbalanced start.
            let mut map = SlotMap::initial(&nodes, groups, 3).expect("map").scrambled(seed);
            for (i, &w) in weights.iter().enumerate() {
                let group = GroupId(u32::try_from(i).expect("few") + 1);
                map = map.with_weight(group, w).expect("known group");
            }
            let moves = plan(&map).expect("plan");
            let weight_map: BTreeMap<GroupId, u32> = map.groups().iter().map(|(&g, i)| (g, i.weight)).collect();
            let before: BTreeMap<GroupId, usize> = map.groups().keys().map(|&g| (g, map.slot_count_of(g))).collect();
            let wanted = targets(&weight_map, &before).expect("targets");
            prop_assert_eq!(counts_after(&map, &moves), wanted.clone());
            let surplus: usize = wanted.iter().map(|(g, &t)| before[g].saturating_sub(t)).sum();
            prop_assert_eq!(moves.len(), surplus);
            prop_assert!(moves.iter().all(|m| m.from != m.to));
            let mut slots: Vec<Slot> = moves.iter().map(|m| m.slot).collect();
            slots.dedup();
            prop_assert_eq!(slots.len(), moves.len());
        }
    }
}
