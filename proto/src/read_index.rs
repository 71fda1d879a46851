//! Linearizable reads share leadership confirmations.
//!
//! A read index costs a heartbeat round to a quorum. Instead of one round per read, reads
//! queue here and one task confirms for all of them at once: it takes every read waiting,
//! fixes the read index *after* they arrived (so it covers every write acknowledged before
//! any of them began), confirms leadership, waits for that index to be applied, and releases
//! them together. Reads arriving meanwhile form the next round. The queue is bounded.

use std::sync::Arc;
use std::time::Duration;

use openraft::error::{CheckIsLeaderError, RaftError};
use seedkv_core::storage::SharedState;
use seedkv_core::Raft;
use tokio::sync::{mpsc, oneshot};
use tonic::Status;

use crate::status::not_leader;

/// Most linearizable reads waiting for a confirmation; more are refused with
/// `RESOURCE_EXHAUSTED`.
pub const MAX_WAITING_READS: usize = 65_536;

/// How long a round waits for its read index to be applied.
pub const READ_INDEX_WAIT_MS: u64 = 2_000;

type Waiter = oneshot::Sender<Result<(), Status>>;

/// The read-index queue of one Raft group.
pub struct ReadIndex {
    queue: mpsc::Sender<Waiter>,
}

impl ReadIndex {
    /// Reads waiting for a read index now; at most [`MAX_WAITING_READS`].
    pub fn depth(&self) -> usize {
        self.queue.max_capacity() - self.queue.capacity()
    }

    /// Starts the confirming task for `raft`, whose applied state is `state`.
    pub fn start(raft: Raft, state: Arc<SharedState>) -> ReadIndex {
        let (queue, mut waiting) = mpsc::channel::<Waiter>(MAX_WAITING_READS);
        tokio::spawn(async move {
            while let Some(first) = waiting.recv().await {
                let mut round = vec![first];
                // Bounded by the queue's capacity.
                while let Ok(next) = waiting.try_recv() {
                    round.push(next);
                }
                let outcome = confirm(&raft, &state).await;
                for waiter in round {
                    let _ = waiter.send(outcome.clone());
                }
            }
        });
        ReadIndex { queue }
    }

    /// Returns once a read that arrived now may be served from the local state.
    pub async fn wait(&self) -> Result<(), Status> {
        let (tx, rx) = oneshot::channel();
        self.queue.try_send(tx).map_err(|_| {
            Status::resource_exhausted(format!(
                "more than {MAX_WAITING_READS} linearizable reads are waiting"
            ))
        })?;
        rx.await
            .map_err(|_| Status::unavailable("the node is shutting down"))?
    }
}

/// One round: read index, leadership confirmation, wait for apply.
async fn confirm(raft: &Raft, state: &SharedState) -> Result<(), Status> {
    // The read index: everything in the leader's log now. openraft's own read index is its
    // commit index, which a leader restarted in place (openraft resumes leadership without a
    // new term) has forgotten: reading there served stale data. Every acknowledged write is
    // in the leader's log, so its last index is safe.
    let read_index = {
        let last_log = raft.metrics().borrow().last_log_index.unwrap_or(0);
        let applied = state.last_applied().map_or(0, |id| id.index);
        last_log.max(applied)
    };
    match raft.ensure_linearizable().await {
        Ok(_) => {}
        Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(forward))) => {
            return Err(not_leader(&forward))
        }
        Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(err))) => {
            return Err(Status::unavailable(format!(
                "leadership not confirmed: {err}"
            )))
        }
        Err(RaftError::Fatal(fatal)) => {
            return Err(Status::unavailable(format!("raft stopped: {fatal}")))
        }
    }
    raft.wait(Some(Duration::from_millis(READ_INDEX_WAIT_MS)))
        .applied_index_at_least(Some(read_index), "read index")
        .await
        .map(|_| ())
        .map_err(|err| Status::unavailable(format!("read index {read_index} not applied: {err}")))
}
