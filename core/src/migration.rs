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

use serde::{Deserialize, Serialize};

use crate::slot::Slot;
use crate::slot_map::Epoch;
use crate::types::GroupId;

/// Names one migration for its whole life; never reused (the meta group's log index of
/// its `Begin`).
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

/// What the driver sees of the two groups' applied states, read from their leaders.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Observed {
    /// The source has frozen the slot for this migration.
    pub source_frozen: bool,
    /// The source no longer holds the slot (released, or never frozen and unfrozen).
    pub source_released: bool,
    /// Chunks of the slot the destination has applied for this migration, and whether the
    /// last one was among them.
    pub ingested: Option<Ingested>,
    /// The epoch at which the destination owns the slot, if it does.
    pub destination_owns: Option<Epoch>,
}

/// How far the destination's copy has come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ingested {
    /// The sequence number of the next chunk it expects.
    pub next_seq: u64,
    /// The chunk marked last is applied: the copy is whole.
    pub complete: bool,
}

/// The next entry the driver proposes for a migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// In the source's log: stop serving the slot (`TRY_AGAIN` from then on).
    Freeze { group: GroupId },
    /// Read the next chunk from the source (frozen, so its rows no longer change) and
    /// propose it in the destination's log.
    Copy {
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
        Step::Planned if !seen.source_frozen => Action::Freeze { group: from },
        Step::Planned => match seen.ingested {
            Some(Ingested { complete: true, .. }) => Action::RecordCopied,
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
        Step::Aborted => {
            if seen.source_frozen {
                Action::Unfreeze { group: from }
            } else if seen.ingested.is_some() {
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
        let mut seen = Observed::default();
        assert_eq!(
            next_action(&migration(Step::Planned), &seen),
            Action::Freeze { group: GroupId(1) }
        );
        seen.source_frozen = true;
        assert_eq!(
            next_action(&migration(Step::Planned), &seen),
            Action::Copy {
                from: GroupId(1),
                to: GroupId(2),
                next_seq: 0
            }
        );
        seen.ingested = Some(Ingested {
            next_seq: 3,
            complete: false,
        });
        assert_eq!(
            next_action(&migration(Step::Planned), &seen),
            Action::Copy {
                from: GroupId(1),
                to: GroupId(2),
                next_seq: 3
            }
        );
        seen.ingested = Some(Ingested {
            next_seq: 4,
            complete: true,
        });
        assert_eq!(
            next_action(&migration(Step::Planned), &seen),
            Action::RecordCopied
        );
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
            Action::DropCopy { group: GroupId(2) }
        );
        seen.ingested = None;
        assert_eq!(next_action(&aborted, &seen), Action::Finish);
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
