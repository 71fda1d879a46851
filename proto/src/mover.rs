//! The migration driver: the meta group's leader carries every recorded slot move through
//! its steps.
//!
//! What to do next is decided in `seedkv_core::migration::next_action` from the meta
//! record and what the two groups' leaders report of their applied states; this module only
//! asks and proposes. Every step is an idempotent entry in some group's log, so a driver
//! that stops (the meta leader crashed or lost its term) leaves nothing half done: the next
//! meta leader reads the record and carries on, and two drivers for a moment only repeat
//! what is decided. A move that makes no progress for [`STALL_ABORT_MS`] before its commit
//! is aborted (its source or destination cannot be reached); after the commit a move only
//! finishes.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use openraft::ServerState;
use seedkv_core::codec;
use seedkv_core::migration::{
    next_action, Action, ByteBuf, Chunk, Ingested, MetaStep, Migration, MigrationId, MoveStep,
    Observed, Step,
};
use seedkv_core::ownership::OwnedRange;
use seedkv_core::runtime::timeout;
use seedkv_core::slot::Slot;
use seedkv_core::{Command, Response, Versioned};
use tokio::time::Instant;

use crate::client::{Client, ClientConfig};
use crate::node::{Group, Node};

/// How often the meta leader looks for moves to carry.
pub const DRIVE_EVERY_MS: u64 = 20;

/// Moves carried at once; the others wait, recorded but not yet frozen.
pub const MAX_MOVING: usize = 8;

/// A move before its commit with no step applied for this long is aborted.
pub const STALL_ABORT_MS: u64 = 30_000;

/// Pause after a step that failed or changed nothing, before looking again.
const STEP_RETRY_MS: u64 = 20;

/// How long a meta entry of the driver may take to commit.
const META_COMMIT_MS: u64 = 10_000;

/// What a periodic task of the meta leader finds after its pause.
enum Tick {
    /// The node is gone or stopping: the task ends.
    Stopped,
    /// Another node leads the meta group.
    NotLeader,
    /// This node leads the meta group.
    Leader(Arc<Node>),
}

/// Waits `every_ms`, then says whether this node (if still running) leads the meta group.
async fn tick_as_meta_leader(node: &Weak<Node>, every_ms: u64) -> Tick {
    tokio::time::sleep(Duration::from_millis(every_ms)).await;
    let Some(strong) = node.upgrade() else {
        return Tick::Stopped;
    };
    match strong.raft().metrics().borrow().state {
        ServerState::Shutdown => Tick::Stopped,
        ServerState::Leader => Tick::Leader(strong.clone()),
        _ => Tick::NotLeader,
    }
}

/// Runs until the node is dropped or its Raft stops.
pub(crate) async fn drive(node: Weak<Node>) {
    let moving: Arc<Mutex<BTreeSet<MigrationId>>> = Arc::default();
    loop {
        let strong = match tick_as_meta_leader(&node, DRIVE_EVERY_MS).await {
            Tick::Stopped => return,
            Tick::NotLeader => continue,
            Tick::Leader(strong) => strong,
        };
        let records = strong.meta().state.shard();
        for migration in records.migrations.iter() {
            let mut moving_now = lock(&moving);
            if moving_now.len() >= MAX_MOVING {
                break;
            }
            if moving_now.insert(migration.id) {
                let (node, moving, migration) = (node.clone(), moving.clone(), *migration);
                tokio::spawn(async move {
                    carry(node, migration).await;
                    lock(&moving).remove(&migration.id);
                });
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Carries one move until it is finished, or this node no longer leads the meta group.
async fn carry(node: Weak<Node>, migration: Migration) {
    let (slot, id) = (migration.slot, migration.id);
    let client = {
        let Some(node) = node.upgrade() else { return };
        internal_client(&node)
    };
    let mut progress_at = Instant::now();
    let mut undone = Undone::default();
    loop {
        let Some(strong) = node.upgrade() else { return };
        let meta = strong.meta().clone();
        let node_id = strong.id();
        drop(strong);
        if meta.raft.metrics().borrow().state != ServerState::Leader {
            return;
        }
        // A leader cut off from the meta group's other members still thinks it leads:
        // confirm with a quorum, and read the record as of then, before every step.
        if let Err(status) = meta.read_index.wait().await {
            tracing::debug!(
                node = node_id,
                migration = id,
                "not confirmed as the meta leader: {}",
                status.message()
            );
            tokio::time::sleep(Duration::from_millis(STEP_RETRY_MS)).await;
            continue;
        }
        let Some(record) = meta
            .state
            .shard()
            .migrations
            .of(slot)
            .copied()
            .filter(|record| record.id == id)
        else {
            return;
        };
        let stalled = progress_at.elapsed() > Duration::from_millis(STALL_ABORT_MS);
        let outcome = if stalled && matches!(record.step, Step::Planned | Step::Copied) {
            tracing::warn!(node = node_id, migration = id, %slot, to = %record.to, "move stalled: aborting it and every move to its destination not begun");
            let aborted = propose_meta(
                &meta,
                MetaStep::Abort {
                    slot,
                    migration: id,
                },
            )
            .await;
            abort_waiting_moves_to(&meta, record.to).await;
            aborted
        } else {
            step(&client, &meta, &record, &mut undone).await
        };
        match outcome {
            Ok(true) => progress_at = Instant::now(),
            Ok(false) => tokio::time::sleep(Duration::from_millis(STEP_RETRY_MS)).await,
            Err(err) => {
                tracing::debug!(node = node_id, migration = id, %slot, "move step: {err}");
                tokio::time::sleep(Duration::from_millis(STEP_RETRY_MS)).await;
            }
        }
    }
}

/// How often the meta leader looks for what moves no longer recorded left in the groups.
pub const LEFTOVERS_EVERY_MS: u64 = 1_000;

/// Runs until the node is dropped or its Raft stops: while this node leads the meta group,
/// undoes freezes and copies of moves the meta group no longer records. A driver that lost
/// the meta leadership may still have a step in flight (a `Freeze`, a first `Ingest`) that
/// applies after its move was aborted or finished; nothing else would ever undo it.
pub(crate) async fn collect_leftovers(node: Weak<Node>) {
    let mut client: Option<Arc<Client>> = None;
    loop {
        let strong = match tick_as_meta_leader(&node, LEFTOVERS_EVERY_MS).await {
            Tick::Stopped => return,
            Tick::NotLeader => continue,
            Tick::Leader(strong) => strong,
        };
        let meta = strong.meta().clone();
        let groups: Vec<u32> = strong
            .slot_map()
            .map(|map| map.groups().keys().map(|group| group.0).collect())
            .unwrap_or_default();
        let client = client
            .get_or_insert_with(|| Arc::new(internal_client(&strong)))
            .clone();
        drop(strong);
        for group in groups {
            if let Err(err) = undo_leftovers(&client, &meta, group).await {
                tracing::debug!(group, "looking for leftovers of moves: {err}");
            }
        }
    }
}

/// Undoes in `group` every freeze and copy of a move the meta group no longer records.
async fn undo_leftovers(client: &Client, meta: &Group, group: u32) -> Result<(), String> {
    let moves = client
        .group_moves(group)
        .await
        .map_err(|err| err.to_string())?;
    if moves.frozen.is_empty() && moves.incoming.is_empty() {
        return Ok(());
    }
    // The group's state first, then the records as of now: a move whose step the group
    // applied was recorded before, so it is among the records unless it is over.
    meta.read_index
        .wait()
        .await
        .map_err(|status| status.message().to_string())?;
    let records = meta.state.shard();
    let recorded = |migration: u64| records.migrations.iter().any(|m| m.id == migration);
    let frozen = moves.frozen.iter().map(|entry| (entry, true));
    let incoming = moves.incoming.iter().map(|entry| (entry, false));
    for (entry, is_freeze) in frozen.chain(incoming) {
        if recorded(entry.migration) {
            continue;
        }
        let Some(slot) = u16::try_from(entry.slot).ok().and_then(Slot::new) else {
            continue;
        };
        let migration = entry.migration;
        let step = if is_freeze {
            MoveStep::Unfreeze { slot, migration }
        } else {
            MoveStep::DropCopy { slot, migration }
        };
        tracing::info!(group, %slot, migration, "undoing what a move no longer recorded left");
        propose_in(client, group, Command::Move(step)).await?;
    }
    Ok(())
}

/// Aborts every move to `to` still at `Planned`: a destination that stalled one move for
/// [`STALL_ABORT_MS`] (no leader, out of reach) would stall each of them as long, one
/// batch of [`MAX_MOVING`] after another. Aborting a move before its commit is always safe;
/// the operator moves the slots again once the group serves.
async fn abort_waiting_moves_to(meta: &Group, to: seedkv_core::GroupId) {
    let steps: Vec<Command> = meta
        .state
        .shard()
        .migrations
        .iter()
        .filter(|m| m.to == to && m.step == Step::Planned)
        .map(|m| {
            Command::Migrate(MetaStep::Abort {
                slot: m.slot,
                migration: m.id,
            })
        })
        .collect();
    if steps.is_empty() {
        return;
    }
    let count = steps.len();
    match timeout(
        Duration::from_millis(META_COMMIT_MS),
        meta.raft.client_write(Command::Multi(steps)),
    )
    .await
    {
        Ok(Ok(_)) => {
            tracing::warn!(to = %to, count, "aborted the moves waiting for a stalled group")
        }
        Ok(Err(err)) => tracing::debug!(to = %to, "aborting the moves to a stalled group: {err}"),
        Err(_) => tracing::debug!(to = %to, "aborting the moves to a stalled group timed out"),
    }
}

/// A client of the cluster for the driver's calls, through the meta group's members.
fn internal_client(node: &Node) -> Client {
    let endpoints = node
        .meta()
        .raft
        .metrics()
        .borrow()
        .membership_config
        .membership()
        .nodes()
        .map(|(_, member)| member.addr.clone())
        .collect();
    Client::new(ClientConfig::new(endpoints))
}

/// The undo steps of an aborted move this driver saw apply.
#[derive(Debug, Default)]
struct Undone {
    thawed: bool,
    dropped: bool,
}

/// Looks at the two groups, takes the next step of `record`; whether a step applied.
async fn step(
    client: &Client,
    meta: &Group,
    record: &Migration,
    undone: &mut Undone,
) -> Result<bool, String> {
    let (slot, id) = (record.slot, record.id);
    let n = u32::from(slot.get());
    let source = client
        .slot_state(record.from.0, n)
        .await
        .map_err(|err| format!("asking source group {}: {err}", record.from))?;
    let dest = client
        .slot_state(record.to.0, n)
        .await
        .map_err(|err| format!("asking destination group {}: {err}", record.to))?;
    let copying = dest.incoming && dest.incoming_migration == id;
    let committed_at = match record.step {
        Step::Committed { epoch } => Some(epoch),
        _ => None,
    };
    let seen = Observed {
        source_frozen: source.frozen_by == id,
        source_released: committed_at.is_some_and(|epoch| source.released_epoch >= epoch),
        source_thawed: undone.thawed,
        copy_dropped: undone.dropped,
        ingested: copying.then_some(Ingested {
            next_seq: dest.next_seq,
            passed: dest.passed,
            complete: dest.complete,
        }),
        destination_owns: (dest.owned_epoch > 0).then_some(dest.owned_epoch),
    };
    let in_group = |group: seedkv_core::GroupId, step: MoveStep| {
        propose_in(client, group.0, Command::Move(step))
    };
    let mut action = next_action(record, &seen);
    if copy_counted_whole_at_once()
        && matches!(action, Action::Copy { .. } | Action::CopyChanges { .. })
    {
        action = Action::RecordCopied;
    }
    tracing::debug!(migration = id, %slot, ?seen, ?action, "next step");
    match action {
        Action::Freeze { group } => {
            let frozen = in_group(
                group,
                MoveStep::Freeze {
                    slot,
                    migration: id,
                },
            )
            .await?;
            if frozen && !copy_counted_whole_at_once() {
                // The slot is unavailable from now until the destination takes it: take the
                // steps in between at once, without looking at the groups again.
                if let Err(err) = switch_over(client, meta, record, dest).await {
                    tracing::debug!(migration = id, %slot, "switching over: {err}");
                }
            }
            Ok(frozen)
        }
        Action::Copy { from, to, next_seq } => {
            let read = Read {
                live: !seen.source_frozen,
                since: 0,
            };
            copy_chunk(client, record, from, to, next_seq, &dest, read).await
        }
        Action::CopyChanges { from, to, next_seq } => {
            let read = Read {
                live: false,
                since: dest.base,
            };
            copy_chunk(client, record, from, to, next_seq, &dest, read).await
        }
        Action::RecordCopied => {
            propose_meta(
                meta,
                MetaStep::Copied {
                    slot,
                    migration: id,
                },
            )
            .await
        }
        Action::Commit => {
            propose_meta(
                meta,
                MetaStep::Commit {
                    slot,
                    migration: id,
                },
            )
            .await
        }
        Action::AwaitActivation { epoch } => {
            // The destination's leader takes what the map gives it on its own; asking it
            // here only spares the wait for its next look.
            let grant = OwnedRange {
                first: slot,
                last: slot,
                epoch,
            };
            propose_in(client, record.to.0, Command::Own(vec![grant])).await
        }
        Action::Release { group, epoch } => {
            in_group(group, MoveStep::Release { slot, epoch }).await
        }
        Action::Unfreeze { group } => {
            let applied = in_group(
                group,
                MoveStep::Unfreeze {
                    slot,
                    migration: id,
                },
            )
            .await?;
            undone.thawed |= applied;
            Ok(applied)
        }
        Action::DropCopy { group } => {
            let applied = in_group(
                group,
                MoveStep::DropCopy {
                    slot,
                    migration: id,
                },
            )
            .await?;
            undone.dropped |= applied;
            Ok(applied)
        }
        Action::Finish => {
            propose_meta(
                meta,
                MetaStep::Finish {
                    slot,
                    migration: id,
                },
            )
            .await
        }
    }
}

/// Once the source froze the slot: copies the changes since the pass, records the copy,
/// commits the move and asks the destination to take the slot, one step right after the
/// other (each is a step the driver would take next anyway; any refusal or failure leaves
/// the rest to the usual loop, which looks at the groups first).
async fn switch_over(
    client: &Client,
    meta: &Group,
    record: &Migration,
    mut dest: crate::pb::SlotStateResponse,
) -> Result<(), String> {
    let (slot, id) = (record.slot, record.id);
    loop {
        let read = Read {
            live: false,
            since: dest.base,
        };
        let done = copy_changes(client, record, &mut dest, read).await?;
        if done {
            break;
        }
    }
    if !propose_meta(
        meta,
        MetaStep::Copied {
            slot,
            migration: id,
        },
    )
    .await?
    {
        return Err("the copy was not recorded".into());
    }
    if !propose_meta(
        meta,
        MetaStep::Commit {
            slot,
            migration: id,
        },
    )
    .await?
    {
        return Err("the move was not committed".into());
    }
    let epoch = match meta.state.shard().migrations.of(slot) {
        Some(Migration {
            id: recorded,
            step: Step::Committed { epoch },
            ..
        }) if *recorded == id => *epoch,
        _ => return Err("the commit is not in the record".into()),
    };
    let grant = OwnedRange {
        first: slot,
        last: slot,
        epoch,
    };
    propose_in(client, record.to.0, Command::Own(vec![grant])).await?;
    Ok(())
}

/// One chunk of the changes, tracked in `dest` as the destination will hold it; whether
/// it was the last (and the copy is whole).
async fn copy_changes(
    client: &Client,
    record: &Migration,
    dest: &mut crate::pb::SlotStateResponse,
    read: Read,
) -> Result<bool, String> {
    let (done, read_to) =
        read_and_ingest(client, record, record.from, record.to, dest, read).await?;
    dest.next_seq += 1;
    if !read_to.is_empty() {
        dest.last_key = read_to;
    }
    Ok(done)
}

/// How a chunk is read from the source.
struct Read {
    /// The source still serves the slot (the pass before the freeze).
    live: bool,
    /// Only rows with revisions above this (0: all).
    since: u64,
}

/// Reads chunk `next_seq` of the copy from the source's leader and proposes it at the
/// destination's; whether it applied.
async fn copy_chunk(
    client: &Client,
    record: &Migration,
    from: seedkv_core::GroupId,
    to: seedkv_core::GroupId,
    next_seq: u64,
    dest: &crate::pb::SlotStateResponse,
    read: Read,
) -> Result<bool, String> {
    debug_assert_eq!(next_seq, dest.next_seq);
    let mut dest = dest.clone();
    dest.next_seq = next_seq;
    read_and_ingest(client, record, from, to, &dest, read)
        .await
        .map(|_| true)
}

/// Reads the chunk the destination expects next (as `dest` reports it) from the source's
/// leader and proposes it at the destination's: whether it applied as the copy's last
/// chunk, and the last key read. A chunk refused is an error.
async fn read_and_ingest(
    client: &Client,
    record: &Migration,
    from: seedkv_core::GroupId,
    to: seedkv_core::GroupId,
    dest: &crate::pb::SlotStateResponse,
    read: Read,
) -> Result<(bool, Vec<u8>), String> {
    let (slot, id, next_seq) = (record.slot, record.id, dest.next_seq);
    // Keys are never empty: an empty last key means the part starts at the slot's start.
    let after = (!dest.last_key.is_empty()).then_some(dest.last_key.as_slice());
    let chunk = client
        .slot_rows(
            from.0,
            u32::from(slot.get()),
            id,
            after,
            read.since,
            read.live,
        )
        .await
        .map_err(|err| format!("reading rows from group {from}: {err}"))?;
    tracing::debug!(migration = id, %slot, next_seq, rows = chunk.rows.len(), done = chunk.done, live = read.live, since = read.since, "copying a chunk");
    let kind = if read.since == 0 && !dest.passed {
        Chunk::Pass {
            view_index: chunk.view_index,
            end: chunk.done,
        }
    } else {
        Chunk::Changes {
            end: chunk.done.then_some(chunk.total),
        }
    };
    let rows = chunk
        .rows
        .into_iter()
        .map(|kv| {
            (
                ByteBuf::from(kv.key),
                Versioned {
                    value: kv.value,
                    revision: kv.revision,
                },
            )
        })
        .collect();
    let read_to = chunk.last_key.clone();
    let ingest = MoveStep::Ingest {
        slot,
        migration: id,
        seq: next_seq,
        chunk: kind,
        rows,
        read_to: chunk.last_key,
    };
    if !propose_in(client, to.0, Command::Move(ingest)).await? {
        return Err(format!("chunk {next_seq} was refused"));
    }
    Ok((chunk.done, read_to))
}

/// The `ActivateBeforeCopied` fault: the copy counts as whole as soon as the source is
/// frozen, before the destination holds it. Deliberately wrong.
fn copy_counted_whole_at_once() -> bool {
    #[cfg(madsim)]
    {
        seedkv_core::faults::enabled(seedkv_core::faults::Fault::ActivateBeforeCopied)
    }
    #[cfg(not(madsim))]
    {
        false
    }
}

/// Proposes `command` in data group `group` at its leader; whether it applied.
async fn propose_in(client: &Client, group: u32, command: Command) -> Result<bool, String> {
    let reply = client
        .move_step(group, codec::encode(&command))
        .await
        .map_err(|err| format!("proposing {command} in group {group}: {err}"))?;
    if !reply.applied {
        tracing::debug!(group, "{command} changed nothing: {}", reply.refusal);
    }
    Ok(reply.applied)
}

/// Proposes `step` in the meta group, which this node leads; whether it applied.
async fn propose_meta(meta: &Group, step: MetaStep) -> Result<bool, String> {
    let written = timeout(
        Duration::from_millis(META_COMMIT_MS),
        meta.raft.client_write(Command::Migrate(step)),
    )
    .await
    .map_err(|_| format!("{step:?} did not commit in time"))?
    .map_err(|err| format!("{step:?}: {err}"))?;
    match written.data {
        Response::Migration(Ok(record)) => {
            tracing::info!(migration = record.id, slot = %record.slot, from = %record.from, to = %record.to, step = ?record.step, "move step recorded");
            Ok(true)
        }
        Response::Migration(Err(reason)) => {
            tracing::debug!("{step:?} refused: {reason}");
            Ok(false)
        }
        other => Err(format!("{step:?} answered {other:?}")),
    }
}
