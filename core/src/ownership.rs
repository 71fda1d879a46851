//! Which slots a data group owns, as its own log decided.
//!
//! The slot map (in the meta group) says where clients should go; a data group serves a key
//! only if its own applied state says it owns the key's slot. Ownership changes only by
//! entries of the group's log (`Command::Own`), so every replica of the group agrees on it
//! at every log index, and a request routed by a stale map is refused (`MOVED`), never
//! applied in the wrong place.
//!
//! Held as ranges of slots with the epoch each was taken at: a group owns a few contiguous
//! ranges, so this stays small enough to travel in every applied meta write.

use serde::{Deserialize, Serialize};

use crate::slot::{Slot, SLOT_COUNT};
use crate::slot_map::Epoch;

/// Slots `first..=last`, taken at `epoch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnedRange {
    pub first: Slot,
    pub last: Slot,
    pub epoch: Epoch,
}

impl OwnedRange {
    /// Every slot, at epoch 1: a group given the whole key space.
    pub const EVERY_SLOT: OwnedRange = OwnedRange {
        first: Slot::FIRST,
        last: Slot::LAST,
        epoch: 1,
    };

    /// Whether the range names slots in order and a real epoch (epochs start at 1).
    pub fn is_valid(&self) -> bool {
        self.first <= self.last && self.epoch > 0
    }

    /// Slots in the range.
    pub fn len(&self) -> usize {
        usize::from(self.last.get() - self.first.get()) + 1
    }

    /// Never true: a range holds at least one slot (see [`OwnedRange::is_valid`]).
    pub fn is_empty(&self) -> bool {
        false
    }
}

/// The slots one group owns. Ranges are sorted, disjoint, and adjacent ranges of one epoch
/// are merged, so equal ownership has one representation (replicas compare digests).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ownership {
    ranges: Vec<OwnedRange>,
}

impl Ownership {
    /// The epoch at which `slot` was taken, if the group owns it.
    pub fn epoch_of(&self, slot: Slot) -> Option<Epoch> {
        let at = self.ranges.partition_point(|range| range.last < slot);
        self.ranges
            .get(at)
            .filter(|range| range.first <= slot)
            .map(|range| range.epoch)
    }

    /// Whether the group owns `slot`.
    pub fn owns(&self, slot: Slot) -> bool {
        self.epoch_of(slot).is_some()
    }

    /// The owned ranges, in slot order.
    pub fn ranges(&self) -> &[OwnedRange] {
        &self.ranges
    }

    /// Slots owned.
    pub fn slot_count(&self) -> usize {
        self.ranges.iter().map(OwnedRange::len).sum()
    }

    /// Takes the slots of `ranges` at their epochs, except slots already owned at the same
    /// or a newer epoch: taking is idempotent, and an old assignment arriving late never
    /// undoes a newer one. Invalid ranges are skipped. Returns how many slots changed.
    pub fn take(&mut self, ranges: &[OwnedRange]) -> usize {
        let mut slots = self.per_slot();
        let mut changed = 0;
        for range in ranges.iter().filter(|range| range.is_valid()) {
            for n in range.first.get()..=range.last.get() {
                let held = &mut slots[usize::from(n)];
                if held.is_none_or(|epoch| epoch < range.epoch) {
                    *held = Some(range.epoch);
                    changed += 1;
                }
            }
        }
        if changed > 0 {
            *self = Ownership::from_slots(&slots);
        }
        debug_assert_eq!(self.check(), Ok(()));
        changed
    }

    /// Gives up `slot` if it is owned at an epoch older than `epoch` (the epoch at which
    /// another group took it): a release for an older epoch, arriving late, never drops a
    /// slot taken back since. Returns whether the slot was dropped.
    pub fn release(&mut self, slot: Slot, epoch: Epoch) -> bool {
        if self.epoch_of(slot).is_none_or(|held| held >= epoch) {
            return false;
        }
        let mut slots = self.per_slot();
        slots[usize::from(slot.get())] = None;
        *self = Ownership::from_slots(&slots);
        debug_assert!(!self.owns(slot));
        debug_assert_eq!(self.check(), Ok(()));
        true
    }

    /// Every slot's epoch, `None` where not owned.
    fn per_slot(&self) -> Vec<Option<Epoch>> {
        let mut slots = vec![None; usize::from(SLOT_COUNT)];
        for range in &self.ranges {
            for n in range.first.get()..=range.last.get() {
                slots[usize::from(n)] = Some(range.epoch);
            }
        }
        slots
    }

    fn from_slots(slots: &[Option<Epoch>]) -> Ownership {
        let mut ranges: Vec<OwnedRange> = Vec::new();
        for (slot, epoch) in Slot::all().zip(slots) {
            let Some(epoch) = *epoch else { continue };
            match ranges.last_mut() {
                Some(last) if last.epoch == epoch && last.last.get() + 1 == slot.get() => {
                    last.last = slot;
                }
                _ => ranges.push(OwnedRange {
                    first: slot,
                    last: slot,
                    epoch,
                }),
            }
        }
        Ownership { ranges }
    }

    /// The invariants: valid ranges, sorted and disjoint, adjacent ranges of one epoch
    /// merged. Checked after every change and after decoding.
    pub fn check(&self) -> Result<(), String> {
        for range in &self.ranges {
            if !range.is_valid() {
                return Err(format!("invalid owned range {range:?}"));
            }
        }
        for pair in self.ranges.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            if a.last >= b.first {
                return Err(format!(
                    "owned ranges {a:?} and {b:?} overlap or are unsorted"
                ));
            }
            if a.epoch == b.epoch && a.last.get() + 1 == b.first.get() {
                return Err(format!("owned ranges {a:?} and {b:?} are not merged"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn slot(n: u16) -> Slot {
        Slot::new(n).expect("slot in range")
    }

    fn range(first: u16, last: u16, epoch: Epoch) -> OwnedRange {
        OwnedRange {
            first: slot(first),
            last: slot(last),
            epoch,
        }
    }

    #[test]
    fn a_fresh_group_owns_nothing() {
        let owned = Ownership::default();
        assert!(!owned.owns(slot(0)));
        assert_eq!(owned.slot_count(), 0);
    }

    #[test]
    fn taking_is_idempotent_and_never_goes_back_in_epoch() {
        let mut owned = Ownership::default();
        assert_eq!(owned.take(&[range(0, 9, 1)]), 10);
        assert_eq!(owned.take(&[range(0, 9, 1)]), 0, "the same grant again");
        assert_eq!(owned.take(&[range(5, 6, 3)]), 2);
        assert_eq!(
            owned.take(&[range(0, 9, 2)]),
            8,
            "older than 3 where held at 3"
        );
        assert_eq!(owned.epoch_of(slot(5)), Some(3));
        assert_eq!(owned.epoch_of(slot(4)), Some(2));
        assert_eq!(owned.epoch_of(slot(10)), None);
        assert_eq!(owned.slot_count(), 10);
        assert_eq!(owned.check(), Ok(()));
    }

    #[test]
    fn invalid_ranges_take_nothing() {
        let mut owned = Ownership::default();
        assert_eq!(owned.take(&[range(9, 0, 1), range(0, 0, 0)]), 0);
        assert_eq!(owned, Ownership::default());
    }

    #[test]
    fn adjacent_ranges_of_one_epoch_merge() {
        let mut owned = Ownership::default();
        owned.take(&[range(0, 3, 1)]);
        owned.take(&[range(4, 7, 1)]);
        assert_eq!(owned.ranges(), &[range(0, 7, 1)]);
    }

    #[test]
    fn a_release_drops_only_an_older_claim() {
        let mut owned = Ownership::default();
        owned.take(&[range(0, 9, 2)]);
        assert!(!owned.release(slot(3), 2), "the same epoch is not newer");
        assert!(
            !owned.release(slot(3), 1),
            "a late release of an older move"
        );
        assert!(owned.release(slot(3), 5));
        assert!(!owned.owns(slot(3)));
        assert_eq!(owned.ranges(), &[range(0, 2, 2), range(4, 9, 2)]);
        assert!(!owned.release(slot(3), 6), "not owned any more");
        assert!(!owned.release(slot(20), 6), "never owned");
    }

    proptest! {
        #[test]
        fn ownership_matches_a_per_slot_model(
            grants in prop::collection::vec((0u16..1024, 0u16..1024, 0u64..5), 0..12),
            probes in prop::collection::vec(0u16..1024, 1..32),
        ) {
            let mut owned = Ownership::default();
            let mut model: Vec<Option<Epoch>> = vec![None; 1024];
            for (a, b, epoch) in grants {
                let grant = range(a.min(b), a.max(b), epoch);
                owned.take(&[grant]);
                if grant.is_valid() {
                    for n in grant.first.get()..=grant.last.get() {
                        let held = &mut model[usize::from(n)];
                        if held.is_none_or(|e| e < epoch) {
                            *held = Some(epoch);
                        }
                    }
                }
                prop_assert_eq!(owned.check(), Ok(()));
            }
            for n in probes {
                prop_assert_eq!(owned.epoch_of(slot(n)), model[usize::from(n)]);
            }
            prop_assert_eq!(owned.slot_count(), model.iter().flatten().count());
        }
    }
}
