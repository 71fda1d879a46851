//! The replicated key-value state: what every replica holds after applying the log.
//!
//! Pure data and pure functions: `apply` takes a command and the log index it was committed
//! at and returns the response; reads borrow. Determinism matters here more than anywhere —
//! every replica must reach the same bytes — so the map is a `BTreeMap` and nothing reads a
//! clock or a random source.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::command::{Command, Response, Revision, ScanRange, Versioned, WriteOp};
use crate::migration::{Chunk, Incoming, Migrations, MoveStep, SlotMoves};
use crate::ownership::{OwnedRange, Ownership};
use crate::session::{SessionCheck, Sessions};
use crate::slot::Slot;
use crate::slot_map::SlotMap;

/// What a group knows about sharding, decided by its own log: the slots it owns (a data
/// group) and the slot map (the meta group). Small, so it travels with the applied meta.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardState {
    /// The slots this group serves; a write to any other slot applies nothing.
    pub owned: Ownership,
    /// The cluster's slot map, in the meta group; `None` until the first one is set. Shared,
    /// as every request routes by it: readers take a pointer, not a copy of 1,024 owners.
    pub map: Option<Arc<SlotMap>>,
    /// The data group's part in slot moves: frozen slots, slots being copied in, and the
    /// epoch each released slot was given away at.
    pub moves: SlotMoves,
    /// The migrations the meta group records.
    pub migrations: Migrations,
}

impl ShardState {
    /// The version of the map held (0: none).
    pub fn map_version(&self) -> u64 {
        self.map.as_deref().map_or(0, SlotMap::version)
    }

    /// The invariants of both parts.
    pub fn check(&self) -> Result<(), String> {
        self.owned.check()?;
        self.migrations.check()?;
        if let Some(slot) = self.moves.frozen.keys().find(|&&s| !self.owned.owns(s)) {
            return Err(format!("{slot} is frozen but not owned"));
        }
        if let Some(slot) = self.moves.incoming.keys().find(|&&s| self.owned.owns(s)) {
            return Err(format!("{slot} is being copied in but owned already"));
        }
        match &self.map {
            Some(map) => map.check(),
            None => Ok(()),
        }
    }

    /// Whether a request for `slot` may be served now: owned at an epoch, and not frozen.
    pub fn serving(&self, slot: Slot) -> Serving {
        match self.owned.epoch_of(slot) {
            None => Serving::NotOwned,
            Some(_) if self.moves.is_frozen(slot) => Serving::Frozen,
            Some(epoch) => Serving::Owned { epoch },
        }
    }

    /// Mixes the state into a digest, the same way wherever it is held.
    pub fn digest_into(&self, hash: &mut Fnv64) {
        for range in self.owned.ranges() {
            hash.write(&range.first.get().to_le_bytes());
            hash.write(&range.last.get().to_le_bytes());
            hash.write(&range.epoch.to_le_bytes());
        }
        for (slot, migration) in &self.moves.frozen {
            hash.write(&slot.get().to_le_bytes());
            hash.write(&migration.to_le_bytes());
        }
        for (slot, incoming) in &self.moves.incoming {
            hash.write(&slot.get().to_le_bytes());
            hash.write(&incoming.migration.to_le_bytes());
            hash.write(&incoming.next_seq.to_le_bytes());
            hash.write(&[u8::from(incoming.complete)]);
            hash.write(&incoming.last_key);
        }
        for (slot, epoch) in &self.moves.released {
            hash.write(&slot.get().to_le_bytes());
            hash.write(&epoch.to_le_bytes());
        }
        for migration in self.migrations.iter() {
            hash.write(&migration.id.to_le_bytes());
            hash.write(format!("{migration:?}").as_bytes());
        }
        hash.write(&self.map_version().to_le_bytes());
        if let Some(map) = &self.map {
            for (slot, owner) in map.owners() {
                hash.write(&slot.get().to_le_bytes());
                hash.write(&owner.group.0.to_le_bytes());
                hash.write(&owner.epoch.to_le_bytes());
            }
            for (group, info) in map.groups() {
                hash.write(&group.0.to_le_bytes());
                hash.write(&info.weight.to_le_bytes());
                for replica in &info.replicas {
                    hash.write(&replica.to_le_bytes());
                }
            }
        }
    }
}

/// Whether a group serves a slot, by its applied state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Serving {
    /// Owned since `epoch`, not frozen: served.
    Owned { epoch: crate::slot_map::Epoch },
    /// Owned but frozen for a move: refused, retry soon.
    Frozen,
    /// Not owned: refused, the slot is served elsewhere.
    NotOwned,
}

/// Where [`apply`] reads and writes rows: the map of a [`KvState`] in memory, or writes
/// pending over a disk in the state machine (`storage::machine`).
pub trait RowStore {
    /// What a failed read reports (a disk's corruption or I/O error).
    type Error;
    /// The row of `key`, as last set.
    fn get(&self, key: &[u8]) -> Result<Option<Versioned>, Self::Error>;
    /// Sets the row of `key`; `None` removes it.
    fn set(&mut self, key: &[u8], row: Option<Versioned>) -> Result<(), Self::Error>;
    /// Removes every row of `slot`.
    fn clear_slot(&mut self, slot: Slot) -> Result<(), Self::Error>;
}

/// Applies `command`, committed at log index `revision`, to `rows` and `sessions`, and says
/// what happened. Deterministic: every replica applying the same log reaches the same rows.
///
/// A client write to a slot the group does not own applies nothing and answers
/// `NotOwned`. Sessions are checked before ownership: a resent write that applied while the
/// group owned its slot still gets its first answer, so a client never writes it again
/// elsewhere.
pub fn apply<S: RowStore>(
    rows: &mut S,
    sessions: &mut Sessions,
    shard: &mut ShardState,
    revision: Revision,
    command: &Command,
) -> Result<Response, S::Error> {
    assert!(revision > 0, "log indexes used as revisions start at 1");
    if let Command::Single(_) | Command::Batch(_) = command {
        for slot in command.ops().iter().map(|op| Slot::of(op.key())) {
            match shard.serving(slot) {
                Serving::Owned { .. } => {}
                Serving::NotOwned => return Ok(Response::NotOwned { slot }),
                #[cfg(madsim)]
                Serving::Frozen
                    if crate::faults::enabled(crate::faults::Fault::SourceServesFrozen) => {}
                Serving::Frozen => return Ok(Response::Frozen { slot }),
            }
        }
    }
    let write = |rows: &mut S, key: &[u8], value: Option<&Vec<u8>>| {
        let row = value.map(|value| Versioned {
            value: value.clone(),
            revision,
        });
        rows.set(key, row)
    };
    let matches = |rows: &S, key: &[u8], expect: Option<&[u8]>| -> Result<bool, S::Error> {
        Ok(rows.get(key)?.as_ref().map(|v| v.value.as_slice()) == expect)
    };
    Ok(match command {
        Command::Single(WriteOp::Put { key, value }) => {
            write(rows, key, Some(value))?;
            Response::Put { revision }
        }
        Command::Single(WriteOp::Delete { key }) => {
            let existed = rows.get(key)?.is_some();
            write(rows, key, None)?;
            Response::Delete { revision, existed }
        }
        Command::Single(WriteOp::Cas { key, expect, new }) => {
            if matches(rows, key, expect.as_deref())? {
                write(rows, key, new.as_ref())?;
                Response::Cas {
                    succeeded: true,
                    revision,
                }
            } else {
                let current = rows.get(key)?.map_or(0, |v| v.revision);
                Response::Cas {
                    succeeded: false,
                    revision: current,
                }
            }
        }
        Command::Batch(ops) => {
            for op in ops {
                if let WriteOp::Cas { key, expect, .. } = op {
                    if !matches(rows, key, expect.as_deref())? {
                        return Ok(Response::Batch {
                            succeeded: false,
                            revision: 0,
                        });
                    }
                }
            }
            for op in ops {
                match op {
                    WriteOp::Put { key, value } => write(rows, key, Some(value))?,
                    WriteOp::Delete { key } => write(rows, key, None)?,
                    WriteOp::Cas { key, new, .. } => write(rows, key, new.as_ref())?,
                }
            }
            Response::Batch {
                succeeded: true,
                revision,
            }
        }
        Command::Multi(commands) => {
            let mut responses = Vec::with_capacity(commands.len());
            for command in commands {
                responses.push(apply(rows, sessions, shard, revision, command)?);
            }
            Response::Multi(responses)
        }
        Command::Register => Response::Registered {
            client_id: sessions.register(revision),
        },
        Command::Tagged { session, command } => {
            let check = sessions.check(session, revision);
            #[cfg(madsim)]
            let check = match check {
                SessionCheck::Duplicate(_)
                    if crate::faults::enabled(crate::faults::Fault::DuplicateWrites) =>
                {
                    SessionCheck::Fresh
                }
                check => check,
            };
            match check {
                SessionCheck::Fresh => {
                    let response = apply(rows, sessions, shard, revision, command)?;
                    // A frozen slot's refusal is as if the write never arrived: the same
                    // number may be sent again once the move is over.
                    if !matches!(response, Response::Frozen { .. }) {
                        sessions.record(session, response.clone());
                    }
                    response
                }
                SessionCheck::Duplicate(response) => response,
                SessionCheck::Stale { acked_below } => Response::StaleWrite { acked_below },
                SessionCheck::Expired => Response::SessionExpired,
            }
        }
        Command::Own(ranges) => {
            let changed = take(shard, ranges);
            Response::Owned {
                changed: u32::try_from(changed).unwrap_or(u32::MAX),
            }
        }
        Command::Move(step) => Response::Stepped(apply_move(rows, shard, step)?),
        Command::Migrate(step) => {
            let outcome = shard
                .migrations
                .apply(revision, *step, shard.map.as_deref());
            Response::Migration(match outcome {
                Ok((migration, next_map)) => {
                    if let Some(map) = next_map {
                        shard.map = Some(Arc::new(map));
                    }
                    Ok(migration)
                }
                Err(err) => Err(err.to_string()),
            })
        }
        Command::SetMap {
            expect_version,
            map,
        } => {
            let current = shard.map_version();
            let succeeded =
                current == *expect_version && map.version() > current && map.check().is_ok();
            if succeeded {
                shard.map = Some(Arc::new((**map).clone()));
            }
            Response::MapSet {
                succeeded,
                version: shard.map_version(),
            }
        }
    })
}

/// Takes the slots of `ranges`, except those released at an epoch newer than the grant
/// (a grant from a map older than the move that took the slot away, arriving late). A
/// slot taken is no longer being copied in.
fn take(shard: &mut ShardState, ranges: &[OwnedRange]) -> usize {
    let released = &shard.moves.released;
    #[cfg(madsim)]
    let stale_epochs = crate::faults::enabled(crate::faults::Fault::StaleEpochAccepted);
    #[cfg(not(madsim))]
    let stale_epochs = false;
    let mut grants = Vec::with_capacity(ranges.len());
    for range in ranges.iter().filter(|range| range.is_valid()) {
        let mut first = None;
        for n in range.first.get()..=range.last.get() {
            let slot = Slot::new(n).unwrap_or(Slot::FIRST);
            let stale =
                !stale_epochs && released.get(&slot).is_some_and(|&gone| gone >= range.epoch);
            match (stale, first) {
                (false, None) => first = Some(slot),
                (true, Some(from)) => {
                    grants.push(OwnedRange {
                        first: from,
                        last: Slot::new(n - 1).unwrap_or(from),
                        epoch: range.epoch,
                    });
                    first = None;
                }
                _ => {}
            }
        }
        if let Some(from) = first {
            grants.push(OwnedRange {
                first: from,
                last: range.last,
                epoch: range.epoch,
            });
        }
    }
    let changed = shard.owned.take(&grants);
    let owned = &shard.owned;
    shard.moves.incoming.retain(|&slot, _| !owned.owns(slot));
    changed
}

/// Applies one step of a move to a data group (see [`crate::migration`]): every step is
/// idempotent, and a step that does not fit the state changes nothing and says why.
fn apply_move<S: RowStore>(
    rows: &mut S,
    shard: &mut ShardState,
    step: &MoveStep,
) -> Result<Result<(), String>, S::Error> {
    let slot = step.slot();
    Ok(match step {
        MoveStep::Freeze { migration, .. } => match shard.moves.frozen.get(&slot) {
            Some(by) if by == migration => Ok(()),
            Some(by) => Err(format!("{slot} is frozen by migration {by}")),
            None if !shard.owned.owns(slot) => Err(format!("{slot} is not owned here")),
            None => {
                shard.moves.frozen.insert(slot, *migration);
                Ok(())
            }
        },
        MoveStep::Unfreeze { migration, .. } => {
            if shard.moves.frozen.get(&slot) == Some(migration) {
                shard.moves.frozen.remove(&slot);
            }
            Ok(())
        }
        MoveStep::Ingest {
            migration,
            seq,
            chunk: part,
            rows: chunk,
            read_to,
            ..
        } => {
            if shard.owned.owns(slot) {
                return Ok(Err(format!("{slot} is owned here already")));
            }
            if let Some((key, _)) = chunk.iter().find(|(key, _)| Slot::of(key) != slot) {
                return Ok(Err(format!(
                    "a row of {} in a chunk of {slot}",
                    Slot::of(key)
                )));
            }
            let fresh = match shard.moves.incoming.get(&slot) {
                Some(incoming) if incoming.migration == *migration => {
                    if incoming.complete || incoming.next_seq != *seq {
                        return Ok(Err(format!(
                            "expects chunk {} (complete: {})",
                            incoming.next_seq, incoming.complete
                        )));
                    }
                    false
                }
                _ if *seq != 0 => {
                    return Ok(Err(format!(
                        "no copy of {slot} for migration {migration} under way"
                    )))
                }
                // A copy of an older migration (aborted, its drop lost): start afresh. Never
                // over a newer one: a first chunk of an old move, delayed, must not replace
                // (and empty) the copy a later move is making or has made whole.
                Some(incoming) if incoming.migration > *migration => {
                    return Ok(Err(format!(
                        "{slot} is being copied in for the newer migration {}",
                        incoming.migration
                    )))
                }
                Some(_) | None => true,
            };
            let mut incoming = match shard.moves.incoming.get(&slot) {
                Some(incoming) if !fresh => incoming.clone(),
                _ => Incoming::start(*migration),
            };
            match part {
                Chunk::Pass { .. } if incoming.passed => {
                    return Ok(Err(format!("the pass over {slot} is over")));
                }
                Chunk::Changes { .. } if !incoming.passed => {
                    return Ok(Err(format!("the pass over {slot} is not over")));
                }
                _ => {}
            }
            if fresh {
                rows.clear_slot(slot)?;
            }
            for (key, row) in chunk {
                if rows.get(key)?.is_none() {
                    incoming.held += 1;
                }
                rows.set(key, Some(row.clone()))?;
            }
            incoming.next_seq = seq + 1;
            if !read_to.is_empty() {
                incoming.last_key = read_to.clone();
            }
            let mut outcome = Ok(());
            match *part {
                Chunk::Pass { view_index, end } => {
                    incoming.base = incoming.base.min(view_index);
                    if end {
                        incoming.passed = true;
                        incoming.last_key.clear();
                    }
                }
                Chunk::Changes { end: None } => {}
                Chunk::Changes { end: Some(held) } if held == incoming.held => {
                    incoming.complete = true;
                }
                Chunk::Changes { end: Some(held) } => {
                    // A row deleted at the source during the pass is still here: start over.
                    outcome = Err(format!(
                        "the source holds {held} rows of {slot} and this copy {}: it starts over",
                        incoming.held
                    ));
                    rows.clear_slot(slot)?;
                    incoming = Incoming::start(*migration);
                    incoming.next_seq = seq + 1;
                }
            }
            shard.moves.incoming.insert(slot, incoming);
            outcome
        }
        MoveStep::DropCopy { migration, .. } => {
            if shard
                .moves
                .incoming
                .get(&slot)
                .is_some_and(|incoming| incoming.migration == *migration)
            {
                shard.moves.incoming.remove(&slot);
                rows.clear_slot(slot)?;
            }
            Ok(())
        }
        MoveStep::Release { epoch, .. } => {
            if shard.owned.release(slot, *epoch) {
                shard.moves.frozen.remove(&slot);
                rows.clear_slot(slot)?;
            }
            let gone = shard.moves.released.entry(slot).or_insert(*epoch);
            *gone = (*gone).max(*epoch);
            Ok(())
        }
    })
}

/// The rows of a [`KvState`]: a map in memory, which never fails.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct MemRows(BTreeMap<Vec<u8>, Versioned>);

impl RowStore for MemRows {
    type Error = std::convert::Infallible;

    fn get(&self, key: &[u8]) -> Result<Option<Versioned>, Self::Error> {
        Ok(self.0.get(key).cloned())
    }

    fn set(&mut self, key: &[u8], row: Option<Versioned>) -> Result<(), Self::Error> {
        match row {
            Some(row) => {
                // Revisions are a group's log indexes: a row copied in from another group
                // keeps its own, which may be above this group's next one.
                self.0.insert(key.to_vec(), row);
            }
            None => {
                self.0.remove(key);
            }
        }
        Ok(())
    }

    fn clear_slot(&mut self, slot: Slot) -> Result<(), Self::Error> {
        self.0.retain(|key, _| Slot::of(key) != slot);
        Ok(())
    }
}

/// The whole key-value state in memory: the reference the on-disk state machine is tested
/// against, and the model of property tests and fuzzers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvState {
    data: MemRows,
    sessions: Sessions,
    shard: ShardState,
}

impl KvState {
    /// Applies `command`, committed at log index `revision`, and says what happened.
    pub fn apply(&mut self, revision: Revision, command: &Command) -> Response {
        let response = match apply(
            &mut self.data,
            &mut self.sessions,
            &mut self.shard,
            revision,
            command,
        ) {
            Ok(response) => response,
            Err(never) => match never {},
        };
        // In memory there is nothing to write the sessions' changes to.
        self.sessions.take_effects();
        response
    }

    /// A state that owns every slot at epoch 1, as a group given the whole key space.
    pub fn owning_every_slot() -> KvState {
        let mut state = KvState::default();
        take(&mut state.shard, &[OwnedRange::EVERY_SLOT]);
        state
    }

    /// What the state knows about sharding.
    pub fn shard(&self) -> &ShardState {
        &self.shard
    }

    /// The client sessions (see [`crate::session`]).
    pub fn sessions(&self) -> &Sessions {
        &self.sessions
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &[u8]) -> Option<&Versioned> {
        self.data.0.get(key)
    }

    /// Up to `limit` entries of `range`, in key order (`limit` 0: no limit).
    pub fn scan(&self, range: &ScanRange, limit: usize) -> Vec<(Vec<u8>, Versioned)> {
        let limit = if limit == 0 { usize::MAX } else { limit };
        self.data
            .0
            .range::<[u8], _>((Bound::Included(range.start()), Bound::Unbounded))
            .take_while(|(key, _)| {
                key.starts_with(&range.prefix) || key.as_slice() < range.prefix.as_slice()
            })
            .filter(|(key, _)| range.contains(key))
            .take(limit)
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect()
    }

    /// Number of keys held.
    pub fn len(&self) -> usize {
        self.data.0.len()
    }

    /// True when no key is held.
    pub fn is_empty(&self) -> bool {
        self.data.0.is_empty()
    }

    /// Every entry in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&Vec<u8>, &Versioned)> {
        self.data.0.iter()
    }

    /// A 64-bit digest of the whole state (FNV-1a over keys, values and revisions, in storage
    /// order: by slot, then key). Equal states give equal digests on every platform and in
    /// every store: used to compare replicas.
    pub fn digest(&self) -> u64 {
        let mut hash = Fnv64::default();
        // In storage order: by slot, then by key.
        let mut rows: Vec<_> = self.data.0.iter().collect();
        rows.sort_by_key(|(key, _)| (Slot::of(key), *key));
        for (key, value) in rows {
            digest_row(&mut hash, key, value);
        }
        self.sessions.digest_into(&mut hash);
        self.shard.digest_into(&mut hash);
        hash.finish()
    }
}

/// Mixes one row into a state digest: the on-disk state machine digests its rows the same
/// way, so equal states give equal digests wherever they are held.
pub fn digest_row(hash: &mut Fnv64, key: &[u8], value: &Versioned) {
    hash.write(&(key.len() as u64).to_le_bytes());
    hash.write(key);
    hash.write(&(value.value.len() as u64).to_le_bytes());
    hash.write(&value.value);
    hash.write(&value.revision.to_le_bytes());
}

/// FNV-1a: a tiny, stable, seedless hash for digests and trace fingerprints.
#[derive(Debug, Clone, Copy)]
pub struct Fnv64(u64);

impl Default for Fnv64 {
    fn default() -> Self {
        Fnv64(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv64 {
    /// Mixes `bytes` into the hash.
    pub fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 ^= u64::from(*byte);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    /// The hash so far.
    pub fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn moved(step: MoveStep) -> Command {
        Command::Move(step)
    }

    fn slot_of(key: &str) -> Slot {
        Slot::of(key.as_bytes())
    }

    #[test]
    fn a_slot_moves_from_one_state_to_another_rows_and_revisions_intact() {
        let mut source = KvState::owning_every_slot();
        let mut dest = KvState::default();
        source.apply(3, &put("{k}a", "1"));
        source.apply(4, &put("{k}b", "2"));
        source.apply(5, &put("other", "x"));
        let slot = slot_of("{k}");
        assert_eq!(
            source.apply(6, &moved(MoveStep::Freeze { slot, migration: 9 })),
            Response::Stepped(Ok(()))
        );
        assert_eq!(
            source.apply(7, &put("{k}c", "3")),
            Response::Frozen { slot },
            "a frozen slot takes no write"
        );
        let rows: Vec<_> = source
            .iter()
            .filter(|(key, _)| Slot::of(key) == slot)
            .map(|(key, row)| (serde_bytes::ByteBuf::from(key.clone()), row.clone()))
            .collect();
        let ingest = |seq, chunk, rows: Vec<_>| {
            moved(MoveStep::Ingest {
                slot,
                migration: 9,
                seq,
                chunk,
                rows,
                read_to: Vec::new(),
            })
        };
        let pass = |end| Chunk::Pass { view_index: 5, end };
        assert_eq!(
            dest.apply(2, &ingest(0, pass(false), rows[..1].to_vec())),
            Response::Stepped(Ok(()))
        );
        assert!(
            matches!(
                dest.apply(3, &ingest(0, pass(false), rows[..1].to_vec())),
                Response::Stepped(Err(_))
            ),
            "a chunk applied twice is refused"
        );
        assert_eq!(
            dest.apply(4, &ingest(1, pass(true), rows[1..].to_vec())),
            Response::Stepped(Ok(()))
        );
        assert!(!dest.shard().moves.incoming[&slot].complete);
        assert_eq!(
            dest.apply(5, &ingest(2, Chunk::Changes { end: Some(2) }, Vec::new())),
            Response::Stepped(Ok(()))
        );
        assert!(dest.shard().moves.incoming[&slot].complete);
        assert_eq!(
            dest.apply(5, &get_put("{k}a")),
            Response::NotOwned { slot },
            "copied rows are invisible until the slot is taken"
        );
        dest.apply(
            6,
            &Command::Own(vec![OwnedRange {
                first: slot,
                last: slot,
                epoch: 2,
            }]),
        );
        assert_eq!(dest.get(b"{k}a").map(|v| v.revision), Some(3));
        assert_eq!(dest.get(b"{k}b").map(|v| v.revision), Some(4));
        assert!(dest.shard().moves.incoming.is_empty());
        assert_eq!(
            source.apply(8, &moved(MoveStep::Release { slot, epoch: 2 })),
            Response::Stepped(Ok(()))
        );
        assert!(source.get(b"{k}a").is_none() && source.get(b"other").is_some());
        assert!(!source.shard().owned.owns(slot));
        assert!(source.shard().moves.frozen.is_empty());
        // A grant from the map before the move, arriving late, is not taken back.
        source.apply(9, &Command::Own(vec![OwnedRange::EVERY_SLOT]));
        assert!(!source.shard().owned.owns(slot));
        assert_eq!(source.shard().check(), Ok(()));
        assert_eq!(dest.shard().check(), Ok(()));
    }

    fn get_put(key: &str) -> Command {
        put(key, "overwrite")
    }

    #[test]
    fn an_aborted_move_unfreezes_and_drops_the_copy() {
        let mut source = KvState::owning_every_slot();
        let mut dest = KvState::default();
        source.apply(3, &put("{k}a", "1"));
        let slot = slot_of("{k}");
        source.apply(4, &moved(MoveStep::Freeze { slot, migration: 9 }));
        assert!(matches!(
            source.apply(
                5,
                &moved(MoveStep::Freeze {
                    slot,
                    migration: 10
                })
            ),
            Response::Stepped(Err(_))
        ));
        dest.apply(
            2,
            &moved(MoveStep::Ingest {
                slot,
                migration: 9,
                seq: 0,
                chunk: Chunk::Pass {
                    view_index: 3,
                    end: false,
                },
                read_to: Vec::new(),
                rows: vec![(
                    serde_bytes::ByteBuf::from(b"{k}a".to_vec()),
                    Versioned {
                        value: b"1".to_vec(),
                        revision: 3,
                    },
                )],
            }),
        );
        assert_eq!(dest.len(), 1);
        source.apply(6, &moved(MoveStep::Unfreeze { slot, migration: 9 }));
        dest.apply(3, &moved(MoveStep::DropCopy { slot, migration: 9 }));
        assert_eq!(dest.len(), 0);
        assert!(dest.shard().moves.incoming.is_empty());
        assert_eq!(
            source.apply(7, &put("{k}a", "2")),
            Response::Put { revision: 7 }
        );
    }

    #[test]
    fn a_copy_holding_a_row_deleted_during_the_pass_starts_over() {
        let slot = slot_of("{k}");
        let row = |key: &str, revision| {
            (
                serde_bytes::ByteBuf::from(key.as_bytes().to_vec()),
                Versioned {
                    value: b"v".to_vec(),
                    revision,
                },
            )
        };
        let ingest = |seq, chunk, rows| {
            moved(MoveStep::Ingest {
                slot,
                migration: 9,
                seq,
                chunk,
                rows,
                read_to: Vec::new(),
            })
        };
        let mut dest = KvState::default();
        // The pass saw a and b; b was deleted and c written before the freeze.
        dest.apply(
            2,
            &ingest(
                0,
                Chunk::Pass {
                    view_index: 10,
                    end: true,
                },
                vec![row("{k}a", 4), row("{k}b", 5)],
            ),
        );
        let refused = dest.apply(
            3,
            &ingest(1, Chunk::Changes { end: Some(2) }, vec![row("{k}c", 12)]),
        );
        assert!(matches!(refused, Response::Stepped(Err(_))), "{refused:?}");
        let incoming = &dest.shard().moves.incoming[&slot];
        assert!(!incoming.passed && !incoming.complete && incoming.held == 0);
        assert_eq!(incoming.next_seq, 2, "the next chunk starts the pass again");
        assert_eq!(dest.len(), 0, "the copy so far is gone");
    }

    #[test]
    fn a_frozen_refusal_is_not_recorded_in_the_session() {
        let mut state = KvState::owning_every_slot();
        let Response::Registered { client_id } = state.apply(2, &Command::Register) else {
            panic!("register");
        };
        let slot = slot_of("{k}");
        state.apply(3, &moved(MoveStep::Freeze { slot, migration: 9 }));
        let tagged = Command::Tagged {
            session: crate::session::SessionTag {
                client_id,
                seq: 1,
                acked_below: 1,
            },
            command: Box::new(put("{k}a", "1")),
        };
        assert_eq!(state.apply(4, &tagged), Response::Frozen { slot });
        state.apply(5, &moved(MoveStep::Unfreeze { slot, migration: 9 }));
        assert_eq!(
            state.apply(6, &tagged),
            Response::Put { revision: 6 },
            "the same number applies once the slot thaws"
        );
    }

    fn put(key: &str, value: &str) -> Command {
        Command::Single(WriteOp::Put {
            key: key.into(),
            value: value.into(),
        })
    }

    #[test]
    fn put_get_delete_with_revisions() {
        let mut state = KvState::owning_every_slot();
        assert_eq!(
            state.apply(3, &put("a", "1")),
            Response::Put { revision: 3 }
        );
        assert_eq!(state.get(b"a").map(|v| v.revision), Some(3));
        let del = Command::Single(WriteOp::Delete { key: "a".into() });
        assert_eq!(
            state.apply(4, &del),
            Response::Delete {
                revision: 4,
                existed: true
            }
        );
        assert!(state.get(b"a").is_none());
        assert_eq!(
            state.apply(5, &del),
            Response::Delete {
                revision: 5,
                existed: false
            }
        );
    }

    #[test]
    fn cas_compares_value_or_absence() {
        let mut state = KvState::owning_every_slot();
        let cas = |expect: Option<&str>, new: Option<&str>| {
            Command::Single(WriteOp::Cas {
                key: "k".into(),
                expect: expect.map(Into::into),
                new: new.map(Into::into),
            })
        };
        assert_eq!(
            state.apply(1, &cas(Some("x"), Some("y"))),
            Response::Cas {
                succeeded: false,
                revision: 0
            }
        );
        assert_eq!(
            state.apply(2, &cas(None, Some("y"))),
            Response::Cas {
                succeeded: true,
                revision: 2
            }
        );
        assert_eq!(
            state.apply(3, &cas(Some("z"), None)),
            Response::Cas {
                succeeded: false,
                revision: 2
            }
        );
        assert_eq!(
            state.apply(4, &cas(Some("y"), None)),
            Response::Cas {
                succeeded: true,
                revision: 4
            }
        );
        assert!(state.is_empty());
    }

    #[test]
    fn batch_is_all_or_nothing() {
        let mut state = KvState::owning_every_slot();
        state.apply(1, &put("a", "1"));
        let failing = Command::Batch(vec![
            WriteOp::Put {
                key: "b".into(),
                value: "2".into(),
            },
            WriteOp::Cas {
                key: "a".into(),
                expect: Some("wrong".into()),
                new: None,
            },
        ]);
        assert_eq!(
            state.apply(2, &failing),
            Response::Batch {
                succeeded: false,
                revision: 0
            }
        );
        assert!(state.get(b"b").is_none());
        let passing = Command::Batch(vec![
            WriteOp::Put {
                key: "b".into(),
                value: "2".into(),
            },
            WriteOp::Cas {
                key: "a".into(),
                expect: Some("1".into()),
                new: None,
            },
        ]);
        assert_eq!(
            state.apply(3, &passing),
            Response::Batch {
                succeeded: true,
                revision: 3
            }
        );
        assert_eq!(state.get(b"b").map(|v| v.revision), Some(3));
        assert!(state.get(b"a").is_none());
    }

    #[test]
    fn a_group_applies_each_command_in_order_at_one_revision() {
        let mut state = KvState::owning_every_slot();
        let group = Command::Multi(vec![
            put("a", "1"),
            Command::Single(WriteOp::Cas {
                key: "a".into(),
                expect: Some("1".into()),
                new: Some("2".into()),
            }),
            put("b", "3"),
        ]);
        assert_eq!(
            state.apply(9, &group),
            Response::Multi(vec![
                Response::Put { revision: 9 },
                Response::Cas {
                    succeeded: true,
                    revision: 9
                },
                Response::Put { revision: 9 },
            ])
        );
        assert_eq!(
            state.get(b"a").map(|v| v.value.clone()),
            Some(b"2".to_vec())
        );
    }

    #[test]
    fn a_batch_may_write_one_key_twice() {
        // Found by the model property test: this tripped a debug assertion.
        let mut state = KvState::owning_every_slot();
        let batch = Command::Batch(vec![
            WriteOp::Put {
                key: "a".into(),
                value: "1".into(),
            },
            WriteOp::Put {
                key: "a".into(),
                value: "2".into(),
            },
        ]);
        assert_eq!(
            state.apply(1, &batch),
            Response::Batch {
                succeeded: true,
                revision: 1
            }
        );
        assert_eq!(
            state.get(b"a").map(|v| v.value.clone()),
            Some(b"2".to_vec())
        );
    }

    #[test]
    fn scan_prefix_range_and_limit() {
        let mut state = KvState::owning_every_slot();
        for (i, key) in ["a", "b1", "b2", "b3", "c"].iter().enumerate() {
            state.apply(i as u64 + 1, &put(key, "v"));
        }
        let keys = |range: ScanRange, limit| -> Vec<Vec<u8>> {
            state
                .scan(&range, limit)
                .into_iter()
                .map(|(k, _)| k)
                .collect()
        };
        let prefix = ScanRange {
            prefix: b"b".to_vec(),
            ..Default::default()
        };
        assert_eq!(
            keys(prefix.clone(), 0),
            vec![b"b1".to_vec(), b"b2".to_vec(), b"b3".to_vec()]
        );
        assert_eq!(keys(prefix, 2).len(), 2);
        let range = ScanRange {
            from: b"b2".to_vec(),
            to: b"c".to_vec(),
            ..Default::default()
        };
        assert_eq!(keys(range, 0), vec![b"b2".to_vec(), b"b3".to_vec()]);
        assert_eq!(keys(ScanRange::default(), 0).len(), 5);
    }

    #[test]
    fn digest_tells_states_apart() {
        let mut a = KvState::owning_every_slot();
        let mut b = KvState::owning_every_slot();
        a.apply(1, &put("k", "v"));
        b.apply(1, &put("k", "v"));
        assert_eq!(a.digest(), b.digest());
        b.apply(2, &put("k", "v"));
        assert_ne!(a.digest(), b.digest());
    }

    #[test]
    fn a_write_outside_the_owned_slots_applies_nothing() {
        let mut state = KvState::default();
        let slot = Slot::of(b"k");
        assert_eq!(state.apply(1, &put("k", "v")), Response::NotOwned { slot });
        assert!(state.get(b"k").is_none());
        let grant = OwnedRange {
            first: slot,
            last: slot,
            epoch: 1,
        };
        assert_eq!(
            state.apply(2, &Command::Own(vec![grant])),
            Response::Owned { changed: 1 }
        );
        assert_eq!(
            state.apply(3, &put("k", "v")),
            Response::Put { revision: 3 }
        );
        // A batch touching any slot not owned applies none of it.
        let batch = Command::Batch(vec![
            WriteOp::Put {
                key: "k".into(),
                value: "w".into(),
            },
            WriteOp::Put {
                key: "other".into(),
                value: "w".into(),
            },
        ]);
        assert_eq!(
            state.apply(4, &batch),
            Response::NotOwned {
                slot: Slot::of(b"other")
            }
        );
        assert_eq!(state.get(b"k").map(|v| v.revision), Some(3));
    }

    #[test]
    fn a_resent_write_keeps_its_first_answer_after_the_slot_is_gone() {
        use crate::session::SessionTag;
        let mut state = KvState::owning_every_slot();
        let Response::Registered { client_id } = state.apply(1, &Command::Register) else {
            panic!("register")
        };
        let tagged = Command::Tagged {
            session: SessionTag {
                client_id,
                seq: 1,
                acked_below: 1,
            },
            command: Box::new(put("k", "v")),
        };
        assert_eq!(state.apply(2, &tagged), Response::Put { revision: 2 });
        state.shard.owned = Ownership::default();
        assert_eq!(state.apply(3, &tagged), Response::Put { revision: 2 });
    }

    #[test]
    fn the_map_changes_only_by_compare_and_set_to_a_newer_valid_version() {
        let mut state = KvState::default();
        let first = SlotMap::initial(&[1, 2, 3], 3, 3).expect("map");
        let set = |expect_version, map: &SlotMap| Command::SetMap {
            expect_version,
            map: Box::new(map.clone()),
        };
        assert_eq!(
            state.apply(1, &set(1, &first)),
            Response::MapSet {
                succeeded: false,
                version: 0
            }
        );
        assert_eq!(
            state.apply(2, &set(0, &first)),
            Response::MapSet {
                succeeded: true,
                version: 1
            }
        );
        assert_eq!(
            state.apply(3, &set(1, &first)),
            Response::MapSet {
                succeeded: false,
                version: 1
            },
            "the same version again is not newer"
        );
        assert_eq!(state.shard().map.as_deref(), Some(&first));
    }
}
