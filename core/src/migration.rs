//! Moving one slot between data groups: the record the meta group keeps, and what the
//! driver does next.
//!
//! See docs/SHARDING.md, *Slot migration*. A migration goes through steps that are each an
//! entry in some group's log; the driver (the meta group's leader) looks at the record and
//! at what the two groups' applied states show, and [`next_action`] says which entry to
//! propose next. Every action is idempotent, so a new driver after a crash, or two drivers
//! for a moment, only repeat what is already decided. The commit point is the meta group's
//! `Commit` (the map gives the slot to the destination at a new epoch); before it a
//! migration may abort, after it only finish.
//!
//! Plain data and functions: the node wires them to Raft and gRPC.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::command::Versioned;
use crate::slot::{Slot, SLOT_COUNT};
use crate::slot_map::{Epoch, SlotMap};
use crate::types::GroupId;

/// Names one migration for its whole life; never reused: the meta group's log index of its
/// `Begin` times [`SLOT_COUNT`], plus its slot (one entry may begin moves of many slots,
/// each slot at most once).
pub type MigrationId = u64;

/// Where a migration is, as the meta group records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Step {
    /// Recorded; the source still serves the slot.
    Planned,
    /// The destination has applied every row the source held at its freeze.
    Copied,
    /// The map gives the slot to the destination at `epoch`: the move is decided.
    Committed { epoch: Epoch },
    /// Given up before the commit: the source serves the slot again once it unfreezes.
    Aborted,
}

/// One slot's move, as the meta group records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Migration {
    pub id: MigrationId,
    pub slot: Slot,
    pub from: GroupId,
    pub to: GroupId,
    pub step: Step,
}

/// A row's key inside an `Ingest` chunk (encoded as one block of bytes).
pub use serde_bytes::ByteBuf;

/// Bytes of rows one `Ingest` chunk carries at most (one row over it travels alone).
pub const CHUNK_BYTES: usize = 512 * 1024;

/// One step of a move in a data group's log. Proposed by the driver, never by clients;
/// each is idempotent (see [`SlotMoves`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MoveStep {
    /// The source stops serving `slot` for `migration`: its rows no longer change.
    Freeze { slot: Slot, migration: MigrationId },
    /// The source serves `slot` again (the migration was aborted).
    Unfreeze { slot: Slot, migration: MigrationId },
    /// The destination stores chunk `seq` of `slot`'s rows, invisible until it owns the
    /// slot. Rows keep the revision they were written at.
    Ingest {
        slot: Slot,
        migration: MigrationId,
        seq: u64,
        chunk: Chunk,
        rows: Vec<(serde_bytes::ByteBuf, Versioned)>,
        /// The last key the source read for this chunk (the rows may leave it out): the
        /// next chunk starts after it. Empty: no key was read.
        #[serde(with = "serde_bytes")]
        read_to: Vec<u8>,
    },
    /// The destination deletes what it copied of `slot` (the migration was aborted).
    DropCopy { slot: Slot, migration: MigrationId },
    /// The source drops `slot` and its rows, if it owns it at an epoch older than `epoch`.
    Release { slot: Slot, epoch: Epoch },
}

impl MoveStep {
    /// The slot the step is about.
    pub fn slot(&self) -> Slot {
        match self {
            MoveStep::Freeze { slot, .. }
            | MoveStep::Unfreeze { slot, .. }
            | MoveStep::Ingest { slot, .. }
            | MoveStep::DropCopy { slot, .. }
            | MoveStep::Release { slot, .. } => *slot,
        }
    }
}

/// Which part of a copy an `Ingest` chunk carries.
///
/// The copy is made in two parts so that the slot is frozen only for the second, short
/// one. The *pass* walks the slot in key order while the source still serves it; each chunk
/// is read from a view of the source at some applied index. Then the source freezes the
/// slot, and the *changes* part sends every row written after the oldest of those views
/// (a write applied after a view has a revision above the view's index), and finally the
/// number of rows the frozen slot holds: the destination holds every row the source holds
/// (unchanged since the pass, or sent as a change), so it holds exactly those rows if and
/// only if it holds as many. More means a row deleted during the pass is still there: the
/// copy starts over, frozen this time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Chunk {
    /// Rows of the pass, read from a view of the source at applied index `view_index`;
    /// `end`: no row follows.
    Pass { view_index: u64, end: bool },
    /// Rows changed after the pass began, read from the frozen source; `end`: no change
    /// follows, and the frozen slot holds this many rows in all.
    Changes { end: Option<u64> },
}

/// A change to the migrations the meta group records. Proposed by nodes, never by clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaStep {
    /// Record a move of `slot` from its owner in the map to `to`.
    Begin { slot: Slot, to: GroupId },
    /// The destination holds the whole copy.
    Copied { slot: Slot, migration: MigrationId },
    /// The map gives the slot to the destination: the commit point.
    Commit { slot: Slot, migration: MigrationId },
    /// Give the move up (only before the commit).
    Abort { slot: Slot, migration: MigrationId },
    /// Forget a committed or aborted move whose groups are done with it.
    Finish { slot: Slot, migration: MigrationId },
}

/// Why the meta group refused a [`MetaStep`]: nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MigrationError {
    #[error("the cluster has no slot map yet")]
    NoMap,
    #[error("{slot} is already moving (migration {migration}); wait for it or abort it")]
    AlreadyMoving { slot: Slot, migration: MigrationId },
    #[error("group {group} owns {slot} already")]
    AlreadyOwner { slot: Slot, group: GroupId },
    #[error("no data group {0} in the slot map")]
    UnknownGroup(GroupId),
    #[error("no migration {migration} of {slot} is recorded")]
    Unknown { slot: Slot, migration: MigrationId },
    #[error("migration {migration} is at step {at:?}, which cannot go to {to}")]
    WrongStep {
        migration: MigrationId,
        at: Step,
        to: &'static str,
    },
    #[error("{slot} is no longer owned by group {from} in the map")]
    OwnerChanged { slot: Slot, from: GroupId },
}

/// The migrations the meta group records, one per slot at most.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Migrations {
    by_slot: BTreeMap<Slot, Migration>,
}

impl Migrations {
    /// Every recorded migration, in slot order.
    pub fn iter(&self) -> impl Iterator<Item = &Migration> {
        self.by_slot.values()
    }

    /// The migration of `slot`, if one is recorded.
    pub fn of(&self, slot: Slot) -> Option<&Migration> {
        self.by_slot.get(&slot)
    }

    /// Migrations recorded.
    pub fn len(&self) -> usize {
        self.by_slot.len()
    }

    /// True when no migration is recorded.
    pub fn is_empty(&self) -> bool {
        self.by_slot.is_empty()
    }

    /// Applies `step`, taken at log index `index` of the meta group, against `map`. A
    /// commit returns the next map, which the caller installs with the record.
    pub fn apply(
        &mut self,
        index: u64,
        step: MetaStep,
        map: Option<&SlotMap>,
    ) -> Result<(Migration, Option<SlotMap>), MigrationError> {
        let map = map.ok_or(MigrationError::NoMap)?;
        if let MetaStep::Begin { slot, to } = step {
            if let Some(moving) = self.by_slot.get(&slot) {
                return Err(MigrationError::AlreadyMoving {
                    slot,
                    migration: moving.id,
                });
            }
            if !map.groups().contains_key(&to) {
                return Err(MigrationError::UnknownGroup(to));
            }
            let from = map.owner(slot).group;
            if from == to {
                return Err(MigrationError::AlreadyOwner { slot, group: to });
            }
            let migration = Migration {
                id: index * u64::from(SLOT_COUNT) + u64::from(slot.get()),
                slot,
                from,
                to,
                step: Step::Planned,
            };
            self.by_slot.insert(slot, migration);
            return Ok((migration, None));
        }
        let (slot, id, next, name) = match step {
            MetaStep::Begin { .. } => unreachable!("handled above"),
            MetaStep::Copied { slot, migration } => (slot, migration, Some(Step::Copied), "copied"),
            MetaStep::Commit { slot, migration } => (slot, migration, None, "committed"),
            MetaStep::Abort { slot, migration } => {
                (slot, migration, Some(Step::Aborted), "aborted")
            }
            MetaStep::Finish { slot, migration } => (slot, migration, None, "finished"),
        };
        let record = match self.by_slot.get_mut(&slot) {
            Some(record) if record.id == id => record,
            _ => {
                return Err(MigrationError::Unknown {
                    slot,
                    migration: id,
                })
            }
        };
        let wrong = |record: &Migration| MigrationError::WrongStep {
            migration: id,
            at: record.step,
            to: name,
        };
        match step {
            MetaStep::Finish { .. } => {
                if !matches!(record.step, Step::Committed { .. } | Step::Aborted) {
                    return Err(wrong(record));
                }
                let done = *record;
                self.by_slot.remove(&slot);
                Ok((done, None))
            }
            MetaStep::Commit { .. } => {
                if record.step != Step::Copied {
                    return Err(wrong(record));
                }
                if map.owner(slot).group != record.from {
                    return Err(MigrationError::OwnerChanged {
                        slot,
                        from: record.from,
                    });
                }
                let next_map = map
                    .with_owner(slot, record.to)
                    .map_err(|_| MigrationError::UnknownGroup(record.to))?;
                let epoch = next_map.owner(slot).epoch;
                debug_assert!(may_advance(record.step, Step::Committed { epoch }));
                record.step = Step::Committed { epoch };
                Ok((*record, Some(next_map)))
            }
            _ => {
                let next = next.unwrap_or(record.step);
                if !may_advance(record.step, next) {
                    return Err(wrong(record));
                }
                record.step = next;
                Ok((*record, None))
            }
        }
    }

    /// The invariant: each record is filed under its own slot and moves between two
    /// different groups.
    pub fn check(&self) -> Result<(), String> {
        for (slot, migration) in &self.by_slot {
            if migration.slot != *slot || migration.from == migration.to {
                return Err(format!("malformed migration record {migration:?}"));
            }
        }
        Ok(())
    }
}

/// A slot being copied into a data group, as its log decided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Incoming {
    pub migration: MigrationId,
    /// The chunk expected next.
    pub next_seq: u64,
    /// The pass reached the slot's last row.
    pub passed: bool,
    /// The oldest applied index of the source any pass chunk was read at: every row
    /// written to the slot since has a higher revision.
    pub base: u64,
    /// The copy is whole: the changes are in, and the row count matched the source's.
    pub complete: bool,
    /// Rows of the slot the destination holds.
    pub held: u64,
    /// The largest key copied so far in the current part (empty at the start of the
    /// changes): the next chunk starts after it.
    #[serde(with = "serde_bytes")]
    pub last_key: Vec<u8>,
}

impl Incoming {
    /// A copy for `migration` about to start.
    pub fn start(migration: MigrationId) -> Incoming {
        Incoming {
            migration,
            next_seq: 0,
            passed: false,
            base: u64::MAX,
            complete: false,
            held: 0,
            last_key: Vec::new(),
        }
    }
}

/// A data group's part in moves, decided by its own log: the slots it froze (serves
/// nothing of), and the slots being copied into it (invisible until it owns them).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotMoves {
    pub frozen: BTreeMap<Slot, MigrationId>,
    pub incoming: BTreeMap<Slot, Incoming>,
    /// Per slot given away, the newest epoch it was released for: a grant of an epoch at
    /// or below it (from a map older than the move, arriving late) is never taken.
    pub released: BTreeMap<Slot, Epoch>,
}

impl SlotMoves {
    /// Whether `slot` is frozen (by any migration).
    pub fn is_frozen(&self, slot: Slot) -> bool {
        self.frozen.contains_key(&slot)
    }
}

/// What the driver knows of the two groups' applied states. Every field is a positive
/// fact: something a replica's applied state shows happened, or a step the driver saw
/// apply. A replica behind (a leader that has not applied all it committed, a node back on
/// a blank disk) can only hide facts, never show false ones; a fact not seen yet only makes
/// the driver propose an idempotent step again. "The source does not own the slot", read
/// from a replica behind, could be false: it is never used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Observed {
    /// The source has frozen the slot for this migration.
    pub source_frozen: bool,
    /// The source released the slot for an epoch at or after this migration's commit.
    pub source_released: bool,
    /// Chunks of the slot the destination has applied for this migration, and whether the
    /// last one was among them.
    pub ingested: Option<Ingested>,
    /// The epoch at which the destination owns the slot, if it does.
    pub destination_owns: Option<Epoch>,
    /// After an abort: the driver saw the source apply its `Unfreeze`.
    pub source_thawed: bool,
    /// After an abort: the driver saw the destination apply its `DropCopy`.
    pub copy_dropped: bool,
}

/// How far the destination's copy has come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ingested {
    /// The sequence number of the next chunk it expects.
    pub next_seq: u64,
    /// The pass reached the slot's last row.
    pub passed: bool,
    /// The copy is whole.
    pub complete: bool,
}

/// The next entry the driver proposes for a migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// In the source's log, once the pass is over: stop serving the slot (`TRY_AGAIN` from
    /// then on).
    Freeze { group: GroupId },
    /// Read the next chunk of the pass from the source (serving or frozen) and propose it
    /// in the destination's log.
    Copy {
        from: GroupId,
        to: GroupId,
        next_seq: u64,
    },
    /// Read the next rows changed since the pass began from the frozen source, and propose
    /// them in the destination's log.
    CopyChanges {
        from: GroupId,
        to: GroupId,
        next_seq: u64,
    },
    /// In the meta log: the copy is whole.
    RecordCopied,
    /// In the meta log: the map gives the slot to the destination. The commit point.
    Commit,
    /// Wait for the destination's leader to take the slot at `epoch` (it proposes the
    /// grants the map gives it on its own).
    AwaitActivation { epoch: Epoch },
    /// In the source's log: drop the slot and its rows, for an epoch newer than its own.
    Release { group: GroupId, epoch: Epoch },
    /// In the source's log after an abort: serve the slot again.
    Unfreeze { group: GroupId },
    /// In the destination's log after an abort: delete the rows copied so far.
    DropCopy { group: GroupId },
    /// In the meta log: the record goes; nothing is left to do.
    Finish,
}

/// What the driver does next for `migration`, given what it `seen` of the groups.
pub fn next_action(migration: &Migration, seen: &Observed) -> Action {
    let (from, to) = (migration.from, migration.to);
    match migration.step {
        Step::Planned => match seen.ingested {
            Some(Ingested { complete: true, .. }) => Action::RecordCopied,
            Some(Ingested {
                passed: true,
                next_seq,
                ..
            }) => {
                if seen.source_frozen {
                    Action::CopyChanges { from, to, next_seq }
                } else {
                    Action::Freeze { group: from }
                }
            }
            Some(Ingested { next_seq, .. }) => Action::Copy { from, to, next_seq },
            None => Action::Copy {
                from,
                to,
                next_seq: 0,
            },
        },
        Step::Copied => Action::Commit,
        Step::Committed { epoch } => {
            if seen.destination_owns.is_none_or(|owned| owned < epoch) {
                Action::AwaitActivation { epoch }
            } else if !seen.source_released {
                Action::Release { group: from, epoch }
            } else {
                Action::Finish
            }
        }
        // Both undo steps are proposed whatever the groups show (their absence could be a
        // replica behind): each applies only to this migration's freeze or copy.
        Step::Aborted => {
            if !seen.source_thawed {
                Action::Unfreeze { group: from }
            } else if !seen.copy_dropped {
                Action::DropCopy { group: to }
            } else {
                Action::Finish
            }
        }
    }
}

/// Whether the meta group may record `next` after `current`: steps only go forward, and
/// an abort is possible only before the commit.
pub fn may_advance(current: Step, next: Step) -> bool {
    matches!(
        (current, next),
        (Step::Planned, Step::Copied | Step::Aborted)
            | (Step::Copied, Step::Committed { .. } | Step::Aborted)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn migration(step: Step) -> Migration {
        Migration {
            id: 7,
            slot: Slot::new(42).expect("slot"),
            from: GroupId(1),
            to: GroupId(2),
            step,
        }
    }

    #[test]
    fn a_migration_walks_its_steps_in_order() {
        let planned = migration(Step::Planned);
        let copy = |next_seq| Action::Copy {
            from: GroupId(1),
            to: GroupId(2),
            next_seq,
        };
        let mut seen = Observed::default();
        assert_eq!(next_action(&planned, &seen), copy(0), "the pass runs first");
        seen.ingested = Some(Ingested {
            next_seq: 3,
            passed: false,
            complete: false,
        });
        assert_eq!(next_action(&planned, &seen), copy(3));
        seen.ingested = Some(Ingested {
            next_seq: 4,
            passed: true,
            complete: false,
        });
        assert_eq!(
            next_action(&planned, &seen),
            Action::Freeze { group: GroupId(1) },
            "frozen only once the pass is over"
        );
        seen.source_frozen = true;
        assert_eq!(
            next_action(&planned, &seen),
            Action::CopyChanges {
                from: GroupId(1),
                to: GroupId(2),
                next_seq: 4
            }
        );
        seen.ingested = Some(Ingested {
            next_seq: 6,
            passed: true,
            complete: true,
        });
        assert_eq!(next_action(&planned, &seen), Action::RecordCopied);
        assert_eq!(next_action(&migration(Step::Copied), &seen), Action::Commit);
        let committed = migration(Step::Committed { epoch: 9 });
        assert_eq!(
            next_action(&committed, &seen),
            Action::AwaitActivation { epoch: 9 }
        );
        seen.destination_owns = Some(9);
        assert_eq!(
            next_action(&committed, &seen),
            Action::Release {
                group: GroupId(1),
                epoch: 9
            }
        );
        seen.source_released = true;
        assert_eq!(next_action(&committed, &seen), Action::Finish);
    }

    #[test]
    fn no_release_before_the_destination_owns_at_the_new_epoch() {
        // Owning the slot at an older epoch (it had it before, and gave it away) is not
        // the activation of this move.
        let seen = Observed {
            source_frozen: true,
            destination_owns: Some(3),
            ..Observed::default()
        };
        assert_eq!(
            next_action(&migration(Step::Committed { epoch: 9 }), &seen),
            Action::AwaitActivation { epoch: 9 }
        );
    }

    #[test]
    fn an_abort_unfreezes_then_drops_the_copy() {
        let aborted = migration(Step::Aborted);
        let mut seen = Observed {
            source_frozen: true,
            ingested: Some(Ingested {
                next_seq: 2,
                passed: false,
                complete: false,
            }),
            ..Observed::default()
        };
        assert_eq!(
            next_action(&aborted, &seen),
            Action::Unfreeze { group: GroupId(1) }
        );
        seen.source_frozen = false;
        assert_eq!(
            next_action(&aborted, &seen),
            Action::Unfreeze { group: GroupId(1) },
            "a source that shows no freeze may be a replica behind: unfreeze anyway"
        );
        seen.source_thawed = true;
        assert_eq!(
            next_action(&aborted, &seen),
            Action::DropCopy { group: GroupId(2) }
        );
        seen.ingested = None;
        assert_eq!(
            next_action(&aborted, &seen),
            Action::DropCopy { group: GroupId(2) }
        );
        seen.copy_dropped = true;
        assert_eq!(next_action(&aborted, &seen), Action::Finish);
    }

    fn map() -> SlotMap {
        SlotMap::initial(&[1, 2, 3], 2, 3).expect("map")
    }

    #[test]
    fn the_meta_record_walks_to_a_commit_that_moves_the_slot_in_the_map() {
        let slot = Slot::new(0).expect("slot");
        let map = map();
        let from = map.owner(slot).group;
        let to = if from == GroupId(1) {
            GroupId(2)
        } else {
            GroupId(1)
        };
        let mut records = Migrations::default();
        let (begun, _) = records
            .apply(11, MetaStep::Begin { slot, to }, Some(&map))
            .expect("begin");
        assert_eq!(
            (begun.id, begun.from, begun.step),
            (11 * 1024, from, Step::Planned)
        );
        let id = begun.id;
        assert!(matches!(
            records.apply(12, MetaStep::Begin { slot, to }, Some(&map)),
            Err(MigrationError::AlreadyMoving { .. })
        ));
        assert!(
            matches!(
                records.apply(
                    12,
                    MetaStep::Commit {
                        slot,
                        migration: id
                    },
                    Some(&map)
                ),
                Err(MigrationError::WrongStep { .. })
            ),
            "no commit before the copy is recorded"
        );
        records
            .apply(
                13,
                MetaStep::Copied {
                    slot,
                    migration: id,
                },
                Some(&map),
            )
            .expect("copied");
        let (committed, next) = records
            .apply(
                14,
                MetaStep::Commit {
                    slot,
                    migration: id,
                },
                Some(&map),
            )
            .expect("commit");
        let next = next.expect("a commit changes the map");
        assert_eq!(next.owner(slot).group, to);
        assert_eq!(
            committed.step,
            Step::Committed {
                epoch: next.version()
            }
        );
        assert!(
            matches!(
                records.apply(
                    15,
                    MetaStep::Abort {
                        slot,
                        migration: id
                    },
                    Some(&next)
                ),
                Err(MigrationError::WrongStep { .. })
            ),
            "no abort after the commit"
        );
        records
            .apply(
                16,
                MetaStep::Finish {
                    slot,
                    migration: id,
                },
                Some(&next),
            )
            .expect("finish");
        assert!(records.is_empty());
    }

    #[test]
    fn bad_moves_are_refused() {
        let slot = Slot::new(0).expect("slot");
        let map = map();
        let owner = map.owner(slot).group;
        let mut records = Migrations::default();
        assert_eq!(
            records.apply(1, MetaStep::Begin { slot, to: owner }, Some(&map)),
            Err(MigrationError::AlreadyOwner { slot, group: owner })
        );
        assert_eq!(
            records.apply(
                1,
                MetaStep::Begin {
                    slot,
                    to: GroupId(7)
                },
                Some(&map)
            ),
            Err(MigrationError::UnknownGroup(GroupId(7)))
        );
        assert_eq!(
            records.apply(
                1,
                MetaStep::Begin {
                    slot,
                    to: GroupId(7)
                },
                None
            ),
            Err(MigrationError::NoMap)
        );
        assert!(matches!(
            records.apply(1, MetaStep::Copied { slot, migration: 3 }, Some(&map)),
            Err(MigrationError::Unknown { .. })
        ));
        assert!(records.is_empty());
    }

    #[test]
    fn steps_only_go_forward_and_never_abort_after_the_commit() {
        let committed = Step::Committed { epoch: 4 };
        assert!(may_advance(Step::Planned, Step::Copied));
        assert!(may_advance(Step::Copied, committed));
        assert!(may_advance(Step::Planned, Step::Aborted));
        assert!(may_advance(Step::Copied, Step::Aborted));
        assert!(!may_advance(committed, Step::Aborted));
        assert!(
            !may_advance(Step::Planned, committed),
            "no commit before the copy"
        );
        assert!(!may_advance(Step::Copied, Step::Planned));
        assert!(!may_advance(Step::Aborted, Step::Planned));
        assert!(!may_advance(committed, committed));
    }
}
