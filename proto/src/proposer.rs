//! Concurrent writes share log entries (group proposal).
//!
//! openraft appends every proposal as its own entry, with its own trip through the log, the
//! disk and the state machine. Here writes queue, and one task proposes whatever is waiting
//! as a single `Command::Multi` entry, with at most [`MAX_ENTRIES_IN_FLIGHT`] entries between
//! proposal and answer: under load one entry (and one fsync) carries many writes; alone, a
//! write is proposed at once, as is.
//! Each write still gets its own response, and all of an entry's writes share its revision.
//! A write whose caller has gone before its turn is dropped unproposed. An entry carries at
//! most [`MAX_WRITES_PER_ENTRY`] writes and [`MAX_ENTRY_BYTES`] of their payload.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use seedkv_core::command::{Command, Response};
use seedkv_core::{Raft, TypeConfig};
use tokio::sync::{mpsc, oneshot};
use tonic::Status;

use openraft::error::ClientWriteError;
use openraft::raft::ClientWriteResponse;

use crate::network::MAX_ENTRY_BYTES;
use crate::status::{not_leader, not_proposed};

/// Most writes waiting to be proposed; more are refused with `RESOURCE_EXHAUSTED`.
pub const MAX_WAITING_WRITES: usize = 65_536;

/// Most writes in one log entry.
pub const MAX_WRITES_PER_ENTRY: usize = 256;

/// Most group entries proposed and not yet answered. While they commit, new writes gather
/// into the next entry: this is what makes entries carry many writes under load.
pub const MAX_ENTRIES_IN_FLIGHT: usize = 2;

/// How long a proposed entry's answer may take before its writes are answered "outcome
/// unknown" and its place in the pipeline is freed. openraft answers an entry when it is
/// applied or truncated, but never one that a snapshot install covered on this node (the
/// entry is skipped, not applied): without a bound such an entry would hold its place for
/// good, and with every place held, no write on this node would ever be proposed again.
pub const MAX_ANSWER_WAIT_MS: u64 = 10_000;

type Reply = oneshot::Sender<Result<Response, Status>>;

/// The proposal queue of one Raft group.
pub struct Proposer {
    queue: mpsc::Sender<(Command, Reply)>,
}

impl Proposer {
    /// Writes waiting to be proposed now; at most [`MAX_WAITING_WRITES`].
    pub fn depth(&self) -> usize {
        self.queue.max_capacity() - self.queue.capacity()
    }

    /// Starts the proposing task for `raft`. While `paused` is set (the leader is handing the
    /// group over), writes are refused unproposed, so the log stops growing.
    pub fn start(raft: Raft, paused: Arc<AtomicBool>) -> Proposer {
        let (queue, mut waiting) = mpsc::channel::<(Command, Reply)>(MAX_WAITING_WRITES);
        let in_flight = Arc::new(tokio::sync::Semaphore::new(MAX_ENTRIES_IN_FLIGHT));
        tokio::spawn(async move {
            // A write that did not fit into the last entry opens the next one.
            let mut carried: Option<(Command, Reply)> = None;
            loop {
                let first = match carried.take() {
                    Some(first) => first,
                    None => match waiting.recv().await {
                        Some(first) => first,
                        None => break,
                    },
                };
                // Wait for room in the pipeline before gathering, so the entry takes everything
                // that arrived meanwhile.
                let Ok(permit) = in_flight.clone().acquire_owned().await else {
                    break;
                };
                let mut bytes = first.0.payload_bytes();
                let mut group = vec![first];
                while group.len() < MAX_WRITES_PER_ENTRY {
                    let Ok(next) = waiting.try_recv() else {
                        break;
                    };
                    let next_bytes = next.0.payload_bytes();
                    if bytes + next_bytes > MAX_ENTRY_BYTES {
                        carried = Some(next);
                        break;
                    }
                    bytes += next_bytes;
                    group.push(next);
                }
                // A write whose caller has gone (timed out, disconnected) is not proposed:
                // nobody would learn its outcome, and it must not apply long after.
                group.retain(|(_, reply)| !reply.is_closed());
                if group.is_empty() {
                    continue;
                }
                if paused.load(Ordering::Acquire) {
                    let nobody = openraft::error::ForwardToLeader {
                        leader_id: None,
                        leader_node: None,
                    };
                    for (_, reply) in group {
                        let _ = reply.send(Err(not_proposed(&nobody)));
                    }
                    continue;
                }
                let (commands, replies): (Vec<Command>, Vec<Reply>) = group.into_iter().unzip();
                let entry = if commands.len() == 1 {
                    commands
                        .into_iter()
                        .next()
                        .unwrap_or(Command::Multi(Vec::new()))
                } else {
                    Command::Multi(commands)
                };
                // Enqueued in order; the answer is awaited elsewhere so the next group can
                // be proposed while this one commits.
                match raft.client_write_ff(entry).await {
                    Ok(receiver) => {
                        tokio::spawn(async move {
                            let wait = std::time::Duration::from_millis(MAX_ANSWER_WAIT_MS);
                            let outcome = seedkv_core::runtime::timeout(wait, receiver).await;
                            drop(permit);
                            match outcome {
                                Ok(outcome) => answer(replies, outcome),
                                Err(_) => unanswered(replies),
                            }
                        });
                    }
                    Err(fatal) => {
                        for reply in replies {
                            let _ = reply
                                .send(Err(Status::unavailable(format!("raft stopped: {fatal}"))));
                        }
                    }
                }
            }
        });
        Proposer { queue }
    }

    /// Proposes `command` and waits for its response.
    pub async fn propose(&self, command: Command) -> Result<Response, Status> {
        let (tx, rx) = oneshot::channel();
        self.queue.try_send((command, tx)).map_err(|_| {
            Status::resource_exhausted(format!("more than {MAX_WAITING_WRITES} writes are waiting"))
        })?;
        rx.await
            .map_err(|_| Status::unavailable("the node stopped before the write was answered"))?
    }
}

type Outcome = Result<
    Result<ClientWriteResponse<TypeConfig>, ClientWriteError<u64, seedkv_core::Member>>,
    tokio::sync::oneshot::error::RecvError,
>;

/// Writes whose entry was never answered: it may have committed or not.
fn unanswered(replies: Vec<Reply>) {
    tracing::warn!(
        writes = replies.len(),
        "a proposed entry was not answered within {MAX_ANSWER_WAIT_MS} ms; its outcome is unknown"
    );
    for reply in replies {
        let _ = reply.send(Err(Status::unavailable(format!(
            "the write's outcome is unknown: its entry was not answered within {MAX_ANSWER_WAIT_MS} ms"
        ))));
    }
}

fn answer(replies: Vec<Reply>, outcome: Outcome) {
    match outcome {
        Ok(Ok(written)) => match written.data {
            Response::Multi(responses) if responses.len() == replies.len() && replies.len() > 1 => {
                for (reply, response) in replies.into_iter().zip(responses) {
                    let _ = reply.send(Ok(response));
                }
            }
            response => {
                // A single write was proposed as itself.
                let mut replies = replies.into_iter();
                if let Some(reply) = replies.next() {
                    let _ = reply.send(Ok(response));
                }
                for reply in replies {
                    let _ = reply.send(Err(Status::internal(
                        "group response does not match its writes",
                    )));
                }
            }
        },
        Ok(Err(ClientWriteError::ForwardToLeader(forward))) => {
            tracing::debug!(writes = replies.len(), leader = ?forward.leader_id, "proposed writes refused: not the leader");
            // Proposed, then refused: the entry was truncated here, and a copy elsewhere
            // may still commit. Never "not proposed".
            #[cfg(madsim)]
            if seedkv_core::faults::enabled(seedkv_core::faults::Fault::TruncatedWriteResentAsNew) {
                for reply in replies {
                    let _ = reply.send(Err(not_proposed(&forward)));
                }
                return;
            }
            for reply in replies {
                let _ = reply.send(Err(not_leader(&forward)));
            }
        }
        Ok(Err(ClientWriteError::ChangeMembershipError(err))) => {
            for reply in replies {
                let _ = reply.send(Err(Status::internal(err.to_string())));
            }
        }
        // The entry may or may not commit: the outcome is unknown to the client.
        Err(_) => {
            tracing::debug!(writes = replies.len(), "proposed writes dropped by raft");
            for reply in replies {
                let _ = reply.send(Err(Status::unavailable(
                    "the write's outcome is unknown: raft dropped it",
                )));
            }
        }
    }
}
