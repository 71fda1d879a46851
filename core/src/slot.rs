//! Hash slots: how keys are spread over the key space in fixed, movable units.
//!
//! Every key belongs to one of [`SLOT_COUNT`] slots: the CRC16 (XMODEM, as Redis Cluster)
//! of the key, or of its hash tag, modulo the slot count. A hash tag is the part between the
//! first `{` and the first `}` after it, when non-empty: `{user42}.name` and `{user42}.mail`
//! share a slot, so one batch can write both once slots live on different groups.
//!
//! Rows are stored under their slot (see `storage::keys`), so one slot's rows form one
//! contiguous range of the disk: the unit a shard split or a migration moves.

use serde::{Deserialize, Serialize};

/// Number of hash slots.
pub const SLOT_COUNT: u16 = 1_024;

/// One hash slot, `0..SLOT_COUNT`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct Slot(u16);

const CRC16: crc::Crc<u16> = crc::Crc::<u16>::new(&crc::CRC_16_XMODEM);

impl Slot {
    /// The first slot.
    pub const FIRST: Slot = Slot(0);
    /// The last slot.
    pub const LAST: Slot = Slot(SLOT_COUNT - 1);

    /// The slot numbered `n`, if `n < SLOT_COUNT`.
    pub fn new(n: u16) -> Option<Slot> {
        (n < SLOT_COUNT).then_some(Slot(n))
    }

    /// The slot `key` belongs to.
    pub fn of(key: &[u8]) -> Slot {
        let slot = CRC16.checksum(hash_tag(key)) % SLOT_COUNT;
        debug_assert!(slot < SLOT_COUNT);
        Slot(slot)
    }

    /// The slot's number.
    pub fn get(self) -> u16 {
        self.0
    }

    /// Every slot, in order.
    pub fn all() -> impl Iterator<Item = Slot> {
        (0..SLOT_COUNT).map(Slot)
    }
}

impl std::fmt::Display for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "slot {}", self.0)
    }
}

/// The part of `key` that decides its slot: the hash tag if there is one, else the key.
pub fn hash_tag(key: &[u8]) -> &[u8] {
    let Some(open) = key.iter().position(|&b| b == b'{') else {
        return key;
    };
    let rest = &key[open + 1..];
    match rest.iter().position(|&b| b == b'}') {
        Some(close) if close > 0 => &rest[..close],
        _ => key,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc16_is_xmodem() {
        // The check value of CRC-16/XMODEM, the function Redis Cluster uses.
        assert_eq!(CRC16.checksum(b"123456789"), 0x31C3);
        assert_eq!(Slot::of(b"123456789").get(), 0x31C3 % SLOT_COUNT);
    }

    #[test]
    fn hash_tags_follow_redis_rules() {
        assert_eq!(hash_tag(b"{user1000}.following"), b"user1000");
        assert_eq!(
            hash_tag(b"foo{}{bar}"),
            b"foo{}{bar}",
            "an empty tag is no tag"
        );
        assert_eq!(hash_tag(b"foo{{bar}}zap"), b"{bar");
        assert_eq!(hash_tag(b"foo{bar}{zap}"), b"bar");
        assert_eq!(hash_tag(b"no-tag"), b"no-tag");
        assert_eq!(hash_tag(b"open{only"), b"open{only");
        assert_eq!(Slot::of(b"{a}x"), Slot::of(b"{a}y"));
        assert_eq!(Slot::of(b"{a}x"), Slot::of(b"a"));
    }

    #[test]
    fn slots_are_in_range_and_spread() {
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..20_000u32 {
            let slot = Slot::of(format!("key-{i}").as_bytes());
            assert!(slot.get() < SLOT_COUNT);
            seen.insert(slot);
        }
        assert_eq!(
            seen.len(),
            usize::from(SLOT_COUNT),
            "20,000 keys reach every slot"
        );
        assert_eq!(Slot::new(SLOT_COUNT), None);
        assert_eq!(Slot::all().count(), usize::from(SLOT_COUNT));
    }
}
