//! Errors as gRPC statuses, and leader hints in status metadata.
//!
//! The code says what a client may do next: `INVALID_ARGUMENT` — fix the request;
//! `FAILED_PRECONDITION` with a leader hint — nothing was done, retry at the leader;
//! `FAILED_PRECONDITION` with a `MOVED` slot — nothing was done, the key's slot is served
//! elsewhere; `ABORTED` with a session mark — this request applied nothing, but its session can no
//! longer tell whether an earlier copy did; anything else on a write — the outcome is unknown.

use openraft::error::ForwardToLeader;
use seedkv_core::slot::Slot;
use seedkv_core::slot_map::SlotOwner;
use seedkv_core::Member;
use seedkv_core::NodeId;
use tonic::{Code, Status};

/// Metadata key naming the leader's id.
pub const LEADER_ID: &str = "seedkv-leader-id";
/// Metadata key naming the leader's address.
pub const LEADER_ADDR: &str = "seedkv-leader-addr";
/// Metadata key marking a refusal by a node that is not the leader.
pub const NOT_LEADER: &str = "seedkv-not-leader";
/// Metadata key marking a not-leader refusal given before anything was proposed: resending
/// the request is always safe. Without it, a not-leader refusal may come from a node that
/// proposed the write and then truncated it, and the write may still commit elsewhere.
pub const NOT_PROPOSED: &str = "seedkv-not-proposed";
/// Metadata key marking a write refused because its session does not exist.
pub const SESSION_EXPIRED: &str = "seedkv-session-expired";
/// Metadata key marking a write refused as below its client's acknowledged mark.
pub const STALE_WRITE: &str = "seedkv-stale-write";

/// Metadata key of a `MOVED` refusal: the slot the request's key belongs to.
pub const MOVED_SLOT: &str = "seedkv-moved-slot";
/// Metadata key of a `MOVED` refusal: the group owning the slot in the answering node's map.
pub const MOVED_GROUP: &str = "seedkv-moved-group";
/// Metadata key of a `MOVED` refusal: the epoch at which that group took the slot.
pub const MOVED_EPOCH: &str = "seedkv-moved-epoch";

/// The refusal of a request for a slot that no group on this node serves (yet, or any
/// more), naming the owner this node's slot map gives, if it has one: nothing was done.
/// The client refreshes its slot map and goes to the owner.
pub fn moved(slot: Slot, owner: Option<SlotOwner>) -> Status {
    let owner_text = match owner {
        Some(owner) => format!(
            "its owner is group {} since epoch {}",
            owner.group.0, owner.epoch
        ),
        None => "this node holds no slot map yet".to_string(),
    };
    let mut status = Status::failed_precondition(format!(
        "MOVED: {slot} is not served here ({owner_text}); nothing was done; refresh the slot \
         map and retry at the owner"
    ));
    let metadata = status.metadata_mut();
    if let Ok(value) = slot.get().to_string().parse() {
        metadata.insert(MOVED_SLOT, value);
    }
    if let Some(owner) = owner {
        if let Ok(value) = owner.group.0.to_string().parse() {
            metadata.insert(MOVED_GROUP, value);
        }
        if let Ok(value) = owner.epoch.to_string().parse() {
            metadata.insert(MOVED_EPOCH, value);
        }
    }
    status
}

/// If `status` is a `MOVED` refusal: the slot it names.
pub fn moved_slot(status: &Status) -> Option<Slot> {
    if status.code() != Code::FailedPrecondition {
        return None;
    }
    let value = status.metadata().get(MOVED_SLOT)?.to_str().ok()?;
    Slot::new(value.parse().ok()?)
}

/// Metadata key of a `TRY_AGAIN` refusal: the slot, frozen while it moves.
pub const TRY_AGAIN_SLOT: &str = "seedkv-try-again-slot";

/// The refusal of a request for a slot its group froze to move it: nothing was done, and
/// the same request may be sent again (to the same group, or to the new owner once the
/// move commits, which a later `MOVED` names).
pub fn try_again(slot: Slot) -> Status {
    let mut status = Status::unavailable(format!(
        "TRY_AGAIN: {slot} is moving to another group; nothing was done; retry shortly"
    ));
    if let Ok(value) = slot.get().to_string().parse() {
        status.metadata_mut().insert(TRY_AGAIN_SLOT, value);
    }
    status
}

/// If `status` is a `TRY_AGAIN` refusal: the slot it names.
pub fn try_again_slot(status: &Status) -> Option<Slot> {
    if status.code() != Code::Unavailable {
        return None;
    }
    let value = status.metadata().get(TRY_AGAIN_SLOT)?.to_str().ok()?;
    Slot::new(value.parse().ok()?)
}

/// Why a session write was refused (see [`session_refusal`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionRefusal {
    /// The session does not exist: never registered, or expired.
    Expired,
    /// The write is below the client's acknowledged mark.
    Stale,
}

/// The refusal of a write whose session does not exist.
pub fn session_expired() -> Status {
    let mut status = Status::aborted(
        "the client session does not exist (never registered, or expired): nothing was \
         applied by this request; register again",
    );
    status.metadata_mut().insert(
        SESSION_EXPIRED,
        tonic::metadata::MetadataValue::from_static("1"),
    );
    status
}

/// The refusal of a write below its client's acknowledged mark.
pub fn stale_write(acked_below: u64) -> Status {
    let mut status = Status::aborted(format!(
        "the write's sequence number is below its client's acknowledged mark {acked_below}: \
         the client no longer waits on it; nothing was applied by this request"
    ));
    status.metadata_mut().insert(
        STALE_WRITE,
        tonic::metadata::MetadataValue::from_static("1"),
    );
    status
}

/// If `status` refuses a session write: why.
pub fn session_refusal(status: &Status) -> Option<SessionRefusal> {
    if status.code() != Code::Aborted {
        return None;
    }
    if status.metadata().get(SESSION_EXPIRED).is_some() {
        Some(SessionRefusal::Expired)
    } else if status.metadata().get(STALE_WRITE).is_some() {
        Some(SessionRefusal::Stale)
    } else {
        None
    }
}

/// A refusal from a node that is not the leader, carrying the leader if known.
pub fn not_leader(forward: &ForwardToLeader<NodeId, Member>) -> Status {
    let leader = match (&forward.leader_id, &forward.leader_node) {
        (Some(id), Some(node)) => format!("node {id} at {}", node.addr),
        (Some(id), None) => format!("node {id}"),
        _ => "unknown".to_string(),
    };
    let mut status = Status::failed_precondition(format!("not the leader; the leader is {leader}"));
    let metadata = status.metadata_mut();
    metadata.insert(NOT_LEADER, tonic::metadata::MetadataValue::from_static("1"));
    if let Some(id) = forward.leader_id {
        if let Ok(value) = id.to_string().parse() {
            metadata.insert(LEADER_ID, value);
        }
    }
    if let Some(node) = &forward.leader_node {
        if let Ok(value) = node.addr.parse() {
            metadata.insert(LEADER_ADDR, value);
        }
    }
    status
}

/// A not-leader refusal given before anything was proposed (see [`NOT_PROPOSED`]).
pub fn not_proposed(forward: &ForwardToLeader<NodeId, Member>) -> Status {
    let mut status = not_leader(forward);
    status.metadata_mut().insert(
        NOT_PROPOSED,
        tonic::metadata::MetadataValue::from_static("1"),
    );
    status
}

/// True if `status` says nothing was proposed (see [`NOT_PROPOSED`]).
pub fn never_proposed(status: &Status) -> bool {
    status.metadata().get(NOT_PROPOSED).is_some()
}

/// If `status` is a not-leader refusal: `Some(leader address if known)`.
pub fn leader_hint(status: &Status) -> Option<Option<String>> {
    if status.code() != Code::FailedPrecondition || status.metadata().get(NOT_LEADER).is_none() {
        return None;
    }
    let addr = status
        .metadata()
        .get(LEADER_ADDR)
        .and_then(|value| value.to_str().ok())
        .map(str::to_string);
    Some(addr)
}
