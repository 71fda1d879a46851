//! The slot map: which Raft group owns each of the 1,024 hash slots.
//!
//! A sharded cluster is one meta group, which holds this map in its log, and data groups,
//! each owning a set of slots. The map is the routing table clients cache (by `version`) and
//! the plan the nodes start groups from; it is *not* what decides whether a group may serve
//! a key: each data group records the slots it owns in its own applied state, so ownership
//! moves only through that group's log and a stale map can only cause a refusal (`MOVED`),
//! never a write in the wrong place.
//!
//! Everything here is plain data and functions: the node and the client wire them up.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::slot::{Slot, SLOT_COUNT};
use crate::types::{GroupId, NodeId};

/// The group that holds the slot map itself; data groups are numbered from 1.
pub const META_GROUP: GroupId = GroupId(0);

/// Replicas per data group when the cluster has that many nodes (else every node).
pub const DEFAULT_REPLICAS: usize = 3;

/// When a group took a slot: the slot map version at which the assignment was made. A
/// group's claim on a slot is only as good as the newest epoch anyone has seen for it.
pub type Epoch = u64;

/// Who owns one slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotOwner {
    /// The data group serving the slot.
    pub group: GroupId,
    /// The map version at which the group took the slot.
    pub epoch: Epoch,
}

/// One data group as the map records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupInfo {
    /// The nodes holding a replica, the preferred leader first.
    pub replicas: Vec<NodeId>,
    /// The group's share of the slots relative to the other groups' weights.
    pub weight: u32,
}

/// Why a slot map cannot be built as asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    #[error("a cluster needs at least one data group")]
    NoGroups,
    #[error("{groups} data groups are more than the {SLOT_COUNT} slots to share out")]
    TooManyGroups { groups: u32 },
    #[error("a cluster needs at least one node")]
    NoNodes,
    #[error("node id 0 is not allowed")]
    ZeroNode,
    #[error("node {0} is listed twice")]
    DuplicateNode(NodeId),
    #[error("a data group needs at least one replica")]
    NoReplicas,
    #[error("every group needs a weight of at least 1")]
    ZeroWeight,
    #[error("no data group {0} in the slot map")]
    UnknownGroup(GroupId),
    #[error("data group {0} is in the slot map already")]
    GroupExists(GroupId),
    #[error("group 0 is the meta group; data groups count from 1")]
    MetaGroup,
    #[error("group {group} still owns {slots} slots: move them away first (set its weight to 1 and rebalance, or move-slots)")]
    StillOwns { group: GroupId, slots: usize },
}

/// The slot map: an owner for every slot, the data groups, and a version that grows with
/// every change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotMap {
    version: u64,
    /// `owners[s]` owns slot `s`; always `SLOT_COUNT` entries.
    owners: Vec<SlotOwner>,
    groups: BTreeMap<GroupId, GroupInfo>,
}

/// Where one key goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub slot: Slot,
    pub owner: SlotOwner,
}

impl SlotMap {
    /// The map a cluster of `nodes` starts with: `data_groups` groups numbered from 1 of
    /// `replicas` replicas each (all nodes when fewer), equal weights, the slots split into
    /// contiguous ranges as evenly as they go, version 1. Replica sets rotate over the nodes,
    /// the first replica being the preferred leader, so each node holds and leads a fair
    /// share of the groups.
    pub fn initial(
        nodes: &[NodeId],
        data_groups: u32,
        replicas: usize,
    ) -> Result<SlotMap, PlacementError> {
        if data_groups == 0 {
            return Err(PlacementError::NoGroups);
        }
        if data_groups > u32::from(SLOT_COUNT) {
            return Err(PlacementError::TooManyGroups {
                groups: data_groups,
            });
        }
        if nodes.is_empty() {
            return Err(PlacementError::NoNodes);
        }
        if replicas == 0 {
            return Err(PlacementError::NoReplicas);
        }
        let mut sorted = nodes.to_vec();
        sorted.sort_unstable();
        if sorted[0] == 0 {
            return Err(PlacementError::ZeroNode);
        }
        if let Some(pair) = sorted.windows(2).find(|pair| pair[0] == pair[1]) {
            return Err(PlacementError::DuplicateNode(pair[0]));
        }
        let replicas = replicas.min(sorted.len());
        let ids: Vec<GroupId> = (1..=data_groups).map(GroupId).collect();
        let groups: BTreeMap<GroupId, GroupInfo> = ids
            .iter()
            .enumerate()
            .map(|(i, &id)| {
                let replicas = (0..replicas).map(|j| sorted[(i + j) % sorted.len()]);
                let info = GroupInfo {
                    replicas: replicas.collect(),
                    weight: 1,
                };
                (id, info)
            })
            .collect();
        let weights: Vec<u32> = groups.values().map(|info| info.weight).collect();
        let shares = slot_shares(&weights)?;
        let version = 1;
        let mut owners = Vec::with_capacity(usize::from(SLOT_COUNT));
        for (&group, &share) in ids.iter().zip(&shares) {
            let owner = SlotOwner {
                group,
                epoch: version,
            };
            owners.extend(std::iter::repeat_n(owner, usize::from(share)));
        }
        let map = SlotMap {
            version,
            owners,
            groups,
        };
        debug_assert_eq!(map.check(), Ok(()));
        Ok(map)
    }

    /// The map's version: grows with every change, so a cached copy can be told stale.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Who owns `slot`.
    pub fn owner(&self, slot: Slot) -> SlotOwner {
        self.owners[usize::from(slot.get())]
    }

    /// Where `key` goes.
    pub fn route(&self, key: &[u8]) -> Route {
        let slot = Slot::of(key);
        Route {
            slot,
            owner: self.owner(slot),
        }
    }

    /// Every slot with its owner, in slot order.
    pub fn owners(&self) -> impl Iterator<Item = (Slot, SlotOwner)> + '_ {
        Slot::all().zip(self.owners.iter().copied())
    }

    /// What `group` owns, as ranges of one epoch each: what the group takes
    /// (`Command::Own`) to serve what this map gives it.
    pub fn grants_of(&self, group: GroupId) -> Vec<crate::ownership::OwnedRange> {
        let mut ranges: Vec<crate::ownership::OwnedRange> = Vec::new();
        for (slot, owner) in self.owners().filter(|(_, owner)| owner.group == group) {
            match ranges.last_mut() {
                Some(last) if last.epoch == owner.epoch && last.last.get() + 1 == slot.get() => {
                    last.last = slot;
                }
                _ => ranges.push(crate::ownership::OwnedRange {
                    first: slot,
                    last: slot,
                    epoch: owner.epoch,
                }),
            }
        }
        ranges
    }

    /// The node that should lead `group`: the first of its replicas.
    pub fn preferred_leader(&self, group: GroupId) -> Option<NodeId> {
        self.groups.get(&group)?.replicas.first().copied()
    }

    /// The data groups, by id.
    pub fn groups(&self) -> &BTreeMap<GroupId, GroupInfo> {
        &self.groups
    }

    /// The data groups `node` holds a replica of.
    pub fn groups_on(&self, node: NodeId) -> impl Iterator<Item = GroupId> + '_ {
        self.groups
            .iter()
            .filter(move |(_, info)| info.replicas.contains(&node))
            .map(|(&id, _)| id)
    }

    /// The slots `group` owns, as inclusive ranges in order.
    pub fn ranges_of(&self, group: GroupId) -> Vec<(Slot, Slot)> {
        let mut ranges: Vec<(Slot, Slot)> = Vec::new();
        for slot in Slot::all().filter(|&slot| self.owner(slot).group == group) {
            match ranges.last_mut() {
                Some((_, end)) if end.get() + 1 == slot.get() => *end = slot,
                _ => ranges.push((slot, slot)),
            }
        }
        ranges
    }

    /// How many slots `group` owns.
    pub fn slot_count_of(&self, group: GroupId) -> usize {
        self.owners
            .iter()
            .filter(|owner| owner.group == group)
            .count()
    }

    /// Splits `keys` by the group that owns each: for every group, the positions in `keys`
    /// of its keys, in order. A multi-get fans out along this.
    pub fn fan_out<K: AsRef<[u8]>>(&self, keys: &[K]) -> BTreeMap<GroupId, Vec<usize>> {
        let mut plan: BTreeMap<GroupId, Vec<usize>> = BTreeMap::new();
        for (i, key) in keys.iter().enumerate() {
            plan.entry(self.route(key.as_ref()).owner.group)
                .or_default()
                .push(i);
        }
        plan
    }

    /// The next version of the map with data group `group` added on `replicas` (the
    /// preferred leader first) at `weight`, owning no slot yet.
    pub fn with_group(
        &self,
        group: GroupId,
        replicas: Vec<NodeId>,
        weight: u32,
    ) -> Result<SlotMap, PlacementError> {
        if group == META_GROUP {
            return Err(PlacementError::MetaGroup);
        }
        if self.groups.contains_key(&group) {
            return Err(PlacementError::GroupExists(group));
        }
        if replicas.is_empty() {
            return Err(PlacementError::NoReplicas);
        }
        if replicas.contains(&0) {
            return Err(PlacementError::ZeroNode);
        }
        let mut sorted = replicas.clone();
        sorted.sort_unstable();
        if let Some(pair) = sorted.windows(2).find(|pair| pair[0] == pair[1]) {
            return Err(PlacementError::DuplicateNode(pair[0]));
        }
        if weight == 0 {
            return Err(PlacementError::ZeroWeight);
        }
        if self.groups.len() >= usize::from(SLOT_COUNT) {
            return Err(PlacementError::TooManyGroups {
                groups: u32::try_from(self.groups.len() + 1).unwrap_or(u32::MAX),
            });
        }
        let mut next = self.next_version();
        next.groups.insert(group, GroupInfo { replicas, weight });
        debug_assert_eq!(next.check(), Ok(()));
        Ok(next)
    }

    /// The next version of the map without data group `group`, which must own no slot.
    pub fn without_group(&self, group: GroupId) -> Result<SlotMap, PlacementError> {
        if !self.groups.contains_key(&group) {
            return Err(PlacementError::UnknownGroup(group));
        }
        let owned = self.slot_count_of(group);
        if owned > 0 {
            return Err(PlacementError::StillOwns {
                group,
                slots: owned,
            });
        }
        let mut next = self.next_version();
        next.groups.remove(&group);
        debug_assert_eq!(next.check(), Ok(()));
        Ok(next)
    }

    /// The next version of the map with `group` weighted `weight`.
    pub fn with_weight(&self, group: GroupId, weight: u32) -> Result<SlotMap, PlacementError> {
        if weight == 0 {
            return Err(PlacementError::ZeroWeight);
        }
        let mut next = self.next_version();
        next.groups
            .get_mut(&group)
            .ok_or(PlacementError::UnknownGroup(group))?
            .weight = weight;
        Ok(next)
    }

    /// The next version of the map with `slot` owned by `group`, taken at the new version:
    /// the epoch that outranks every claim on the slot before it.
    pub fn with_owner(&self, slot: Slot, group: GroupId) -> Result<SlotMap, PlacementError> {
        if !self.groups.contains_key(&group) {
            return Err(PlacementError::UnknownGroup(group));
        }
        let mut next = self.next_version();
        next.owners[usize::from(slot.get())] = SlotOwner {
            group,
            epoch: next.version,
        };
        debug_assert_eq!(next.check(), Ok(()));
        Ok(next)
    }

    fn next_version(&self) -> SlotMap {
        let mut next = self.clone();
        next.version += 1;
        next
    }

    /// Owners drawn from `seed` among the groups, every slot at the map's version: an
    /// arbitrary, unbalanced map for property tests.
    #[cfg(test)]
    pub(crate) fn scrambled(&self, seed: u64) -> SlotMap {
        let groups: Vec<GroupId> = self.groups.keys().copied().collect();
        let mut state = seed | 1;
        let mut next = self.clone();
        for owner in &mut next.owners {
            // xorshift64: enough spread for a test's arbitrary map.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let pick = usize::try_from(state % groups.len() as u64).unwrap_or(0);
            *owner = SlotOwner {
                group: groups[pick],
                epoch: next.version,
            };
        }
        next
    }

    /// The map's invariants: one owner per slot, every owner a known group that is not the
    /// meta group, every group with at least one replica, no node twice in a group, epochs
    /// no newer than the map.
    pub fn check(&self) -> Result<(), String> {
        if self.owners.len() != usize::from(SLOT_COUNT) {
            return Err(format!(
                "{} slot owners, expected {SLOT_COUNT}",
                self.owners.len()
            ));
        }
        if self.groups.contains_key(&META_GROUP) {
            return Err("the meta group is listed as a data group".into());
        }
        for (i, owner) in self.owners.iter().enumerate() {
            if !self.groups.contains_key(&owner.group) {
                return Err(format!(
                    "slot {i} is owned by unknown group {}",
                    owner.group
                ));
            }
            if owner.epoch == 0 || owner.epoch > self.version {
                return Err(format!(
                    "slot {i} has epoch {} outside 1..={}",
                    owner.epoch, self.version
                ));
            }
        }
        for (id, info) in &self.groups {
            if info.replicas.is_empty() {
                return Err(format!("group {id} has no replica"));
            }
            let mut replicas = info.replicas.clone();
            replicas.sort_unstable();
            replicas.dedup();
            if replicas.len() != info.replicas.len() {
                return Err(format!("group {id} lists a replica twice"));
            }
            if info.weight == 0 {
                return Err(format!("group {id} has weight 0"));
            }
        }
        Ok(())
    }
}

/// How many of the `SLOT_COUNT` slots each of the groups weighted `weights` gets: shares
/// proportional to the weights, rounded by largest remainder (ties to the earlier group),
/// every group at least one slot. Sums to `SLOT_COUNT`.
pub fn slot_shares(weights: &[u32]) -> Result<Vec<u16>, PlacementError> {
    if weights.is_empty() {
        return Err(PlacementError::NoGroups);
    }
    if weights.len() > usize::from(SLOT_COUNT) {
        return Err(PlacementError::TooManyGroups {
            groups: u32::try_from(weights.len()).unwrap_or(u32::MAX),
        });
    }
    if weights.contains(&0) {
        return Err(PlacementError::ZeroWeight);
    }
    let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
    let slots = u64::from(SLOT_COUNT);
    // Every group gets one slot first; the rest is shared by weight.
    let spare = slots - weights.len() as u64;
    let mut shares: Vec<u64> = weights
        .iter()
        .map(|&w| 1 + spare * u64::from(w) / total)
        .collect();
    let mut left = slots - shares.iter().sum::<u64>();
    let mut by_remainder: Vec<(u64, usize)> = weights
        .iter()
        .enumerate()
        .map(|(i, &w)| (spare * u64::from(w) % total, i))
        .collect();
    by_remainder.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for &(_, i) in &by_remainder {
        if left == 0 {
            break;
        }
        shares[i] += 1;
        left -= 1;
    }
    debug_assert_eq!(left, 0, "fewer remainders than slots left over");
    debug_assert_eq!(shares.iter().sum::<u64>(), slots);
    Ok(shares
        .into_iter()
        .map(|share| u16::try_from(share).unwrap_or(SLOT_COUNT))
        .collect())
}

/// `ranges` written the way operators read them: `0-340,512,600-700`.
pub fn format_ranges(ranges: &[(Slot, Slot)]) -> String {
    let parts: Vec<String> = ranges
        .iter()
        .map(|(start, end)| {
            if start == end {
                start.get().to_string()
            } else {
                format!("{}-{}", start.get(), end.get())
            }
        })
        .collect();
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn changes_make_a_new_version_and_keep_the_invariants() {
        let map = SlotMap::initial(&[1, 2, 3], 2, DEFAULT_REPLICAS).expect("map");
        let added = map.with_group(GroupId(3), vec![2, 3, 1], 2).expect("add");
        assert_eq!(added.version(), map.version() + 1);
        assert_eq!(added.slot_count_of(GroupId(3)), 0);
        assert_eq!(added.preferred_leader(GroupId(3)), Some(2));
        assert_eq!(
            map.without_group(GroupId(1)),
            Err(PlacementError::StillOwns {
                group: GroupId(1),
                slots: 512
            })
        );
        assert_eq!(
            map.without_group(GroupId(9)),
            Err(PlacementError::UnknownGroup(GroupId(9)))
        );
        let removed = added
            .without_group(GroupId(3))
            .expect("an empty group goes");
        assert!(!removed.groups().contains_key(&GroupId(3)));
        assert_eq!(removed.version(), added.version() + 1);
        let slot = Slot::new(7).expect("slot");
        let moved = added.with_owner(slot, GroupId(3)).expect("move");
        assert_eq!(
            moved.owner(slot),
            SlotOwner {
                group: GroupId(3),
                epoch: moved.version()
            }
        );
        assert_eq!(moved.check(), Ok(()));
        let weighed = moved.with_weight(GroupId(1), 5).expect("weight");
        assert_eq!(weighed.groups()[&GroupId(1)].weight, 5);
        assert_eq!(weighed.version(), moved.version() + 1);
        // Refused, the map unchanged.
        assert_eq!(
            map.with_group(GroupId(1), vec![1], 1),
            Err(PlacementError::GroupExists(GroupId(1)))
        );
        assert_eq!(
            map.with_group(META_GROUP, vec![1], 1),
            Err(PlacementError::MetaGroup)
        );
        assert_eq!(
            map.with_group(GroupId(9), vec![], 1),
            Err(PlacementError::NoReplicas)
        );
        assert_eq!(
            map.with_group(GroupId(9), vec![1, 1], 1),
            Err(PlacementError::DuplicateNode(1))
        );
        assert_eq!(
            map.with_group(GroupId(9), vec![1], 0),
            Err(PlacementError::ZeroWeight)
        );
        assert_eq!(
            map.with_weight(GroupId(9), 1),
            Err(PlacementError::UnknownGroup(GroupId(9)))
        );
        assert_eq!(
            map.with_weight(GroupId(1), 0),
            Err(PlacementError::ZeroWeight)
        );
        assert_eq!(
            map.with_owner(slot, GroupId(9)),
            Err(PlacementError::UnknownGroup(GroupId(9)))
        );
    }

    #[test]
    fn initial_map_splits_slots_evenly_in_ranges() {
        let map = SlotMap::initial(&[1, 2, 3], 3, DEFAULT_REPLICAS).expect("map");
        assert_eq!(map.version(), 1);
        assert_eq!(map.check(), Ok(()));
        let counts: Vec<usize> = (1..=3).map(|g| map.slot_count_of(GroupId(g))).collect();
        assert_eq!(counts, vec![342, 341, 341]);
        assert_eq!(format_ranges(&map.ranges_of(GroupId(1))), "0-341");
        assert_eq!(format_ranges(&map.ranges_of(GroupId(2))), "342-682");
        assert_eq!(format_ranges(&map.ranges_of(GroupId(3))), "683-1023");
        assert!(map.ranges_of(META_GROUP).is_empty());
    }

    #[test]
    fn replicas_rotate_so_every_node_leads_a_fair_share() {
        let map = SlotMap::initial(&[3, 1, 2, 4, 5], 10, 3).expect("map");
        let mut leads: BTreeMap<NodeId, usize> = BTreeMap::new();
        let mut holds: BTreeMap<NodeId, usize> = BTreeMap::new();
        for info in map.groups().values() {
            assert_eq!(info.replicas.len(), 3);
            *leads.entry(info.replicas[0]).or_default() += 1;
            for &node in &info.replicas {
                *holds.entry(node).or_default() += 1;
            }
        }
        assert!(leads.values().all(|&n| n == 2), "{leads:?}");
        assert!(holds.values().all(|&n| n == 6), "{holds:?}");
        assert_eq!(map.groups_on(1).count(), 6);
    }

    #[test]
    fn fewer_nodes_than_replicas_means_every_node() {
        let map = SlotMap::initial(&[7], 4, 3).expect("map");
        assert!(map.groups().values().all(|info| info.replicas == vec![7]));
        assert_eq!(map.groups_on(7).count(), 4);
        assert_eq!(map.groups_on(8).count(), 0);
    }

    #[test]
    fn bad_placements_are_refused() {
        assert_eq!(SlotMap::initial(&[1], 0, 3), Err(PlacementError::NoGroups));
        assert_eq!(
            SlotMap::initial(&[1], 1_025, 3),
            Err(PlacementError::TooManyGroups { groups: 1_025 })
        );
        assert!(SlotMap::initial(&[1], 1_024, 3).is_ok());
        assert_eq!(SlotMap::initial(&[], 1, 3), Err(PlacementError::NoNodes));
        assert_eq!(
            SlotMap::initial(&[0, 1], 1, 3),
            Err(PlacementError::ZeroNode)
        );
        assert_eq!(
            SlotMap::initial(&[2, 1, 2], 1, 3),
            Err(PlacementError::DuplicateNode(2))
        );
        assert_eq!(
            SlotMap::initial(&[1], 1, 0),
            Err(PlacementError::NoReplicas)
        );
        assert_eq!(slot_shares(&[1, 0]), Err(PlacementError::ZeroWeight));
    }

    #[test]
    fn shares_follow_weights() {
        assert_eq!(slot_shares(&[1]), Ok(vec![1_024]));
        // 256.5 and 767.5: the tie goes to the earlier group.
        assert_eq!(slot_shares(&[1, 3]), Ok(vec![257, 767]));
        assert_eq!(slot_shares(&[1, 1, 2]), Ok(vec![256, 256, 512]));
        assert_eq!(slot_shares(&[1, 1, 1]), Ok(vec![342, 341, 341]));
        // A tiny weight still gets a slot.
        let shares = slot_shares(&[1, 1_000_000]).expect("shares");
        assert_eq!(shares, vec![1, 1_023]);
    }

    #[test]
    fn routing_follows_the_hash_tag_and_fans_out_by_group() {
        let map = SlotMap::initial(&[1, 2, 3], 3, 3).expect("map");
        let a = map.route(b"{user1}.name");
        assert_eq!(a, map.route(b"{user1}.mail"));
        assert_eq!(a.slot, Slot::of(b"user1"));
        let keys: Vec<Vec<u8>> = (0..100).map(|i| format!("key-{i}").into_bytes()).collect();
        let plan = map.fan_out(&keys);
        let mut seen: Vec<usize> = plan.values().flatten().copied().collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..100).collect::<Vec<_>>(), "every key exactly once");
        for (group, positions) in &plan {
            assert!(positions.windows(2).all(|w| w[0] < w[1]), "in order");
            for &i in positions {
                assert_eq!(map.route(&keys[i]).owner.group, *group);
            }
        }
        assert_eq!(plan.len(), 3, "100 keys reach all three groups");
    }

    #[test]
    fn check_catches_broken_maps() {
        let good = SlotMap::initial(&[1, 2, 3], 2, 3).expect("map");
        let mut orphan = good.clone();
        orphan.owners[5].group = GroupId(9);
        assert!(orphan.check().is_err());
        let mut future = good.clone();
        future.owners[0].epoch = 2;
        assert!(future.check().is_err());
        let mut short = good.clone();
        short.owners.pop();
        assert!(short.check().is_err());
        let mut meta = good.clone();
        meta.groups.insert(
            META_GROUP,
            GroupInfo {
                replicas: vec![1],
                weight: 1,
            },
        );
        assert!(meta.check().is_err());
        let mut twice = good;
        if let Some(info) = twice.groups.get_mut(&GroupId(1)) {
            info.replicas = vec![1, 1];
        }
        assert!(twice.check().is_err());
    }

    proptest! {
        #[test]
        fn shares_always_sum_to_every_slot(weights in proptest::collection::vec(1u32..10_000, 1..200)) {
            let shares = slot_shares(&weights).expect("valid weights");
            prop_assert_eq!(shares.iter().map(|&s| usize::from(s)).sum::<usize>(), usize::from(SLOT_COUNT));
            prop_assert!(shares.iter().all(|&s| s >= 1));
            // No group is more than one slot (plus its guaranteed one) off its exact share.
            let total: f64 = weights.iter().map(|&w| f64::from(w)).sum();
            let spare = f64::from(SLOT_COUNT) - weights.len() as f64;
            for (&w, &s) in weights.iter().zip(&shares) {
                let exact = 1.0 + spare * f64::from(w) / total;
                prop_assert!((f64::from(s) - exact).abs() < 1.0 + 1e-9, "weight {} share {} exact {}", w, s, exact);
            }
        }

        #[test]
        fn initial_maps_hold_their_invariants(nodes in 1u64..9, groups in 1u32..64, replicas in 1usize..5) {
            let ids: Vec<NodeId> = (1..=nodes).collect();
            let map = SlotMap::initial(&ids, groups, replicas).expect("valid");
            prop_assert_eq!(map.check(), Ok(()));
            prop_assert_eq!(map.groups().len(), groups as usize);
            for group in map.groups().keys() {
                prop_assert!(map.slot_count_of(*group) >= 1024 / groups as usize);
                prop_assert!(map.ranges_of(*group).len() == 1, "one contiguous range");
            }
        }
    }
}
