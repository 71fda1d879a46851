//! openraft's network, carried by the `Raft` gRPC service.
//!
//! Each openraft request travels as a checksummed seedkv frame inside a `RaftMessage`,
//! tagged with its group, so one node can host many groups behind one service. Replies carry
//! `Result<reply, RaftError>` so a remote refusal arrives as openraft's own error.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use openraft::error::{
    Fatal, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError, ReplicationClosed,
    StreamingError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{OptionalSend, Snapshot, StorageIOError};
use seedkv_core::codec;
use seedkv_core::metrics::NodeMetrics;
use seedkv_core::runtime::timeout;
use seedkv_core::storage::snapshot::{SnapshotFrame, SnapshotRefused, SnapshotReply};
use seedkv_core::storage::SnapshotData;
use seedkv_core::types::Vote;
use seedkv_core::{GroupId, Member, NodeId, TypeConfig};
use serde::de::DeserializeOwned;
use tonic::transport::{Channel, Endpoint};

use crate::identity::Identity;
use crate::lease::{vote_accepted, GroupLease};
use crate::pb::raft_client::RaftClient;
use crate::pb::{RaftBatch, RaftMessage};
use crate::trace::{RaftRpc, TraceEvent, Tracer};

/// How long to wait for a connection to a peer.
pub const CONNECT_TIMEOUT_MS: u64 = 500;

/// Most bytes of log entries in one AppendEntries (one entry larger than this still goes
/// alone). openraft gives an AppendEntries one heartbeat interval (100 ms); 1 MiB takes a
/// fraction of that on any network a cluster runs on, so a catch-up never times out forever.
pub const MAX_APPEND_BYTES: usize = 1 << 20;

/// Most bytes of client payload (keys and values) the proposer puts into one log entry;
/// one write larger than this (up to `--max-request-bytes`) still goes alone.
pub const MAX_ENTRY_BYTES: usize = 4 << 20;

/// Snapshot transfers started by this process: with the sender's id, a transfer's name.
static TRANSFERS: AtomicU64 = AtomicU64::new(0);

/// The channels from one node to its peers, shared by every group it hosts: groups on the
/// same pair of nodes share one connection (gRPC multiplexes their calls). A channel that
/// failed a call is dropped, and the next call to that peer, from any group, connects again.
///
/// AppendEntries without entries (heartbeats and commit updates) to one peer are coalesced:
/// while one batch is on its way, those that come are queued, and go together in the next
/// call. The node fires every group's heartbeat at once (see `crate::heartbeat`), so an idle
/// node sends one or two calls per peer per beat whatever the number of groups. Appends that
/// carry entries go alone, at once.
#[derive(Default)]
pub struct Peers {
    /// By peer address: the channel and the generation it was opened at.
    channels: std::sync::Mutex<std::collections::HashMap<String, (u64, Channel)>>,
    opened: AtomicU64,
    /// By peer address: the empty appends waiting for the next batch.
    lanes: std::sync::Mutex<std::collections::HashMap<String, Lane>>,
}

/// Most requests in one `AppendEntriesBatch` (a node hosts at most one replica of each of
/// the 1,024 data groups and the meta group); the receiver refuses a larger batch.
pub const MAX_BATCH_MESSAGES: usize = 1_025;

/// The coalesced requests bound for one peer.
#[derive(Default)]
struct Lane {
    /// A batch is on its way; requests that come meanwhile wait in `queue`.
    sending: bool,
    queue: Vec<(RaftMessage, Replier)>,
}

/// Where one coalesced request's reply goes: the peer's reply, or why there is none.
type Replier = tokio::sync::oneshot::Sender<Result<RaftMessage, String>>;

impl Peers {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, (u64, Channel)>> {
        self.channels
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The channel to `addr` and its generation, connecting if there is none.
    async fn channel(&self, addr: &str) -> Result<(u64, Channel), String> {
        if let Some(found) = self.lock().get(addr) {
            return Ok(found.clone());
        }
        let channel = connect(addr, Duration::from_millis(CONNECT_TIMEOUT_MS)).await?;
        let generation = self.opened.fetch_add(1, Ordering::Relaxed) + 1;
        // Two groups may have connected at once: keep the first, drop the other.
        let mut channels = self.lock();
        let kept = channels
            .entry(addr.to_string())
            .or_insert((generation, channel));
        Ok(kept.clone())
    }

    fn lanes(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Lane>> {
        self.lanes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Sends `message` (an AppendEntries without entries) to `addr` in the next batch, and
    /// returns the peer's reply to it.
    async fn coalesce(
        self: &Arc<Self>,
        addr: &str,
        client: RaftClient<Channel>,
        message: RaftMessage,
        ttl: Duration,
    ) -> Result<RaftMessage, String> {
        let (reply, replied) = tokio::sync::oneshot::channel();
        let start = {
            let mut lanes = self.lanes();
            let lane = lanes.entry(addr.to_string()).or_default();
            lane.queue.push((message, reply));
            !std::mem::replace(&mut lane.sending, true)
        };
        if start {
            tokio::spawn(self.clone().send_batches(addr.to_string(), client, ttl));
        }
        replied
            .await
            .unwrap_or_else(|_| Err("the batch was dropped".into()))
    }

    /// Sends the queue for `addr`, batch after batch, until it is empty.
    async fn send_batches(
        self: Arc<Self>,
        addr: String,
        mut client: RaftClient<Channel>,
        ttl: Duration,
    ) {
        loop {
            let batch = {
                let mut lanes = self.lanes();
                let Some(lane) = lanes.get_mut(&addr) else {
                    return;
                };
                if lane.queue.is_empty() {
                    lane.sending = false;
                    return;
                }
                let take = lane.queue.len().min(MAX_BATCH_MESSAGES);
                lane.queue.drain(..take).collect::<Vec<_>>()
            };
            // A request whose caller gave up while it waited is stale: a newer one follows.
            let batch: Vec<_> = batch
                .into_iter()
                .filter(|(_, replier)| !replier.is_closed())
                .collect();
            if batch.is_empty() {
                continue;
            }
            let (messages, repliers): (Vec<RaftMessage>, Vec<Replier>) = batch.into_iter().unzip();
            let sent = messages.len();
            let answer =
                match timeout(ttl, client.append_entries_batch(RaftBatch { messages })).await {
                    Ok(Ok(reply)) => {
                        let replies = reply.into_inner().messages;
                        if replies.len() == sent {
                            Ok(replies)
                        } else {
                            Err(format!("a batch of {sent} got {} replies", replies.len()))
                        }
                    }
                    Ok(Err(status)) => Err(format!("AppendEntriesBatch to {addr}: {status}")),
                    Err(elapsed) => Err(format!("AppendEntriesBatch to {addr}: {elapsed}")),
                };
            match answer {
                Ok(replies) => {
                    for (replier, reply) in repliers.into_iter().zip(replies) {
                        let result = if reply.refused.is_empty() {
                            Ok(reply)
                        } else {
                            Err(reply.refused)
                        };
                        let _ = replier.send(result);
                    }
                }
                Err(err) => {
                    for replier in repliers {
                        let _ = replier.send(Err(err.clone()));
                    }
                }
            }
        }
    }

    /// Drops the channel to `addr` of `generation` after it failed a call (a newer one,
    /// opened since by another group, stays).
    fn forget(&self, addr: &str, generation: u64) {
        let mut channels = self.lock();
        if channels.get(addr).is_some_and(|(g, _)| *g == generation) {
            channels.remove(addr);
        }
    }
}

/// Names `groups` quiet to the peer `to` at `addr` (see `seedkv_core::quiet`), in one call
/// within `ttl`; returns the groups the peer refused (it will not keep their elections off,
/// so they need heartbeats again).
pub(crate) async fn send_quiet(
    peers: &Peers,
    identity: &Identity,
    (from, to, to_incarnation): (NodeId, NodeId, u64),
    addr: &str,
    groups: &[seedkv_core::quiet::QuietGroup],
    ttl: Duration,
) -> Result<Vec<u32>, String> {
    let message = RaftMessage {
        group: 0,
        payload: codec::encode(&groups),
        cluster_id: identity.cluster_id(),
        from,
        from_incarnation: identity.incarnation(),
        to,
        to_incarnation,
        refused: String::new(),
    };
    let call = async {
        let (generation, channel) = peers.channel(addr).await?;
        RaftClient::new(channel)
            .quiet(message)
            .await
            .map_err(|status| {
                // A channel that failed a call is dropped (as for any Raft call); a slow
                // answer keeps it.
                peers.forget(addr, generation);
                status.to_string()
            })
    };
    match timeout(ttl, call).await {
        Ok(Ok(reply)) => codec::decode(&reply.into_inner().payload).map_err(|err| err.to_string()),
        Ok(Err(why)) => Err(format!("Quiet to node {to}: {why}")),
        Err(elapsed) => Err(format!("Quiet to node {to}: {elapsed}")),
    }
}

/// Opens [`PeerConnection`]s for one group of one node.
pub struct GrpcNetwork {
    pub(crate) group: GroupId,
    pub(crate) from: NodeId,
    pub(crate) identity: Arc<Identity>,
    pub(crate) tracer: Tracer,
    /// The node's channels, shared with its other groups.
    pub(crate) peers: Arc<Peers>,
    /// The group's read lease, fed with the appends each voter accepted.
    pub(crate) lease: Arc<GroupLease>,
    /// The node's figures: snapshot transfers count there.
    pub(crate) metrics: Arc<NodeMetrics>,
}

impl RaftNetworkFactory<TypeConfig> for GrpcNetwork {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> PeerConnection {
        PeerConnection {
            group: self.group,
            from: self.from,
            identity: self.identity.clone(),
            target,
            target_incarnation: node.incarnation,
            addr: node.addr.clone(),
            client: None,
            peers: self.peers.clone(),
            tracer: self.tracer.clone(),
            lease: self.lease.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

/// The Raft RPC link from this node to one peer; reconnects after a failure.
pub struct PeerConnection {
    group: GroupId,
    from: NodeId,
    identity: Arc<Identity>,
    target: NodeId,
    /// The incarnation the membership records for the target (0: not yet known).
    target_incarnation: u64,
    addr: String,
    /// The client over the shared channel, and that channel's generation.
    client: Option<(u64, RaftClient<Channel>)>,
    peers: Arc<Peers>,
    tracer: Tracer,
    lease: Arc<GroupLease>,
    metrics: Arc<NodeMetrics>,
}

/// Opens a gRPC channel to `addr` (`host:port`), waiting at most `connect_timeout`.
pub async fn connect(addr: &str, connect_timeout: Duration) -> Result<Channel, String> {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|err| format!("bad address {addr:?}: {err}"))?
        .connect_timeout(connect_timeout);
    match timeout(connect_timeout, endpoint.connect()).await {
        Ok(Ok(channel)) => Ok(channel),
        Ok(Err(err)) => Err(format!("cannot connect to {addr}: {err}")),
        Err(_) => Err(format!("cannot connect to {addr}: timed out")),
    }
}

impl PeerConnection {
    /// Sends `payload` (an encoded openraft request) and decodes the reply.
    async fn call<Resp, E>(
        &mut self,
        rpc: RaftRpc,
        payload: Vec<u8>,
        ttl: Duration,
    ) -> Result<Resp, RPCError<NodeId, Member, E>>
    where
        Result<Resp, E>: DeserializeOwned,
        E: std::error::Error,
    {
        let result = self.call_inner(rpc, payload, ttl).await;
        (self.tracer)(TraceEvent::Raft {
            group: self.group,
            from: self.from,
            to: self.target,
            rpc,
            delivered: result.is_ok(),
        });
        if result.is_err() {
            if let Some((generation, _)) = self.client.take() {
                self.peers.forget(&self.addr, generation);
            }
        }
        match result {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(remote)) => Err(RPCError::RemoteError(RemoteError::new_with_node(
                self.target,
                Member::new(&self.addr, self.target_incarnation),
                remote,
            ))),
            Err(err) => Err(err),
        }
    }

    async fn call_inner<Resp, E>(
        &mut self,
        rpc: RaftRpc,
        payload: Vec<u8>,
        ttl: Duration,
    ) -> Result<Result<Resp, E>, RPCError<NodeId, Member, E>>
    where
        Result<Resp, E>: DeserializeOwned,
        E: std::error::Error,
    {
        let mut client = match &self.client {
            Some((_, client)) => client.clone(),
            None => {
                let (generation, channel) =
                    self.peers.channel(&self.addr).await.map_err(|err| {
                        RPCError::Unreachable(Unreachable::new(&StringError(err)))
                    })?;
                let client = RaftClient::new(channel)
                    .max_decoding_message_size(usize::MAX)
                    .max_encoding_message_size(usize::MAX);
                self.client = Some((generation, client.clone()));
                client
            }
        };
        let message = RaftMessage {
            group: self.group.0,
            payload,
            cluster_id: self.identity.cluster_id(),
            from: self.from,
            from_incarnation: self.identity.incarnation(),
            to: self.target,
            to_incarnation: self.target_incarnation,
            refused: String::new(),
        };
        let call = async {
            match rpc {
                RaftRpc::AppendEntries => client
                    .append_entries(message)
                    .await
                    .map(|reply| reply.into_inner())
                    .map_err(|status| status.to_string()),
                RaftRpc::Heartbeat => self.peers.coalesce(&self.addr, client, message, ttl).await,
                RaftRpc::Vote => client
                    .vote(message)
                    .await
                    .map(|reply| reply.into_inner())
                    .map_err(|status| status.to_string()),
                RaftRpc::InstallSnapshot => client
                    .install_snapshot(message)
                    .await
                    .map(|reply| reply.into_inner())
                    .map_err(|status| status.to_string()),
            }
        };
        let reply = match timeout(ttl, call).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(status)) => {
                return Err(RPCError::Network(NetworkError::new(&StringError(format!(
                    "{rpc:?} to node {}: {status}",
                    self.target
                )))))
            }
            Err(elapsed) => {
                return Err(RPCError::Network(NetworkError::new(&StringError(format!(
                    "{rpc:?} to node {}: {elapsed}",
                    self.target
                )))))
            }
        };
        codec::decode(&reply.payload).map_err(|err| RPCError::Network(NetworkError::new(&err)))
    }

    /// Streams a snapshot view in chunks of at most `SNAPSHOT_CHUNK_BYTES`, one RPC each,
    /// so memory on both ends is one chunk whatever the data size. Any failure abandons the
    /// transfer; openraft starts a new one.
    async fn stream_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot<TypeConfig>,
        cancel: impl std::future::Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<NodeId>, StreamingError<TypeConfig, Fatal<NodeId>>> {
        let SnapshotData::View(view) = *snapshot.snapshot else {
            return Err(StreamingError::Network(NetworkError::new(&StringError(
                "only a view of the local state can be sent".into(),
            ))));
        };
        let mut cancel = Box::pin(cancel);
        let serial = TRANSFERS.fetch_add(1, Ordering::Relaxed) & ((1 << 40) - 1);
        let transfer = (self.from << 40) | serial;
        let ttl = option.hard_ttl();
        let begin = SnapshotFrame::Begin {
            transfer,
            vote,
            meta: snapshot.meta.clone(),
            header: Box::new(view.header()),
        };
        if let SnapshotReply::Done(response) = self.send_frame(&begin, ttl).await? {
            return Ok(response);
        }
        let mut cursor = view.cursor();
        let mut seq = 0;
        loop {
            if let Some(closed) = (&mut cancel).now_or_never() {
                return Err(StreamingError::Closed(closed));
            }
            let chunk = view.next_chunk(&mut cursor).map_err(|err| {
                StreamingError::StorageError(StorageIOError::read_snapshot(None, &err).into())
            })?;
            let Some(rows) = chunk else { break };
            let frame = SnapshotFrame::Rows {
                transfer,
                seq,
                rows,
            };
            if let SnapshotReply::Done(response) = self.send_frame(&frame, ttl).await? {
                return Ok(response);
            }
            seq += 1;
        }
        let finish = SnapshotFrame::Finish {
            transfer,
            rows: cursor.rows(),
            keys: cursor.keys(),
        };
        tracing::debug!(from = self.from, to = self.target, transfer, rows = cursor.rows(), keys = cursor.keys(), generation = view.meta().generation, applied = ?view.meta().last_applied, "snapshot sent");
        match self.send_frame(&finish, ttl).await? {
            SnapshotReply::Done(response) => Ok(response),
            SnapshotReply::Continue => Err(StreamingError::Network(NetworkError::new(
                &StringError("the follower did not install the finished snapshot".into()),
            ))),
        }
    }

    async fn send_frame(
        &mut self,
        frame: &SnapshotFrame,
        ttl: Duration,
    ) -> Result<SnapshotReply, StreamingError<TypeConfig, Fatal<NodeId>>> {
        let payload = codec::encode(frame);
        self.metrics
            .snapshot_sent_bytes
            .inc_by(payload.len() as u64);
        let result: Result<SnapshotReply, RPCError<NodeId, Member, SnapshotRefused>> =
            self.call(RaftRpc::InstallSnapshot, payload, ttl).await;
        result.map_err(|err| match err {
            RPCError::Unreachable(err) => StreamingError::Unreachable(err),
            RPCError::Timeout(err) => StreamingError::Timeout(err),
            RPCError::Network(err) => StreamingError::Network(err),
            other => StreamingError::Network(NetworkError::new(&other)),
        })
    }
}

/// A plain message as an error, for openraft's error wrappers.
#[derive(Debug)]
struct StringError(String);

impl std::fmt::Display for StringError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StringError {}

impl RaftNetwork<TypeConfig> for PeerConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        let payload = codec::encode(&rpc);
        if payload.len() > MAX_APPEND_BYTES && rpc.entries.len() > 1 {
            // openraft resends at once with at most this many entries (a single entry is
            // always sent: entries are capped on their own, see `MAX_ENTRY_BYTES`).
            let fit = rpc.entries.len() * MAX_APPEND_BYTES / payload.len();
            return Err(PayloadTooLarge::new_entries_hint(fit.max(1) as u64).into());
        }
        let rpc_kind = if rpc.entries.is_empty() {
            RaftRpc::Heartbeat
        } else {
            RaftRpc::AppendEntries
        };
        // Stamped before the send: the follower's refusal window starts later than this.
        let sent_at_ms = self.lease.now_ms();
        let result: Result<AppendEntriesResponse<NodeId>, _> =
            self.call(rpc_kind, payload, option.hard_ttl()).await;
        if rpc.vote.is_committed() && result.as_ref().is_ok_and(vote_accepted) {
            self.lease
                .on_ack(rpc.vote.leader_id().get_term(), self.target, sent_at_ms);
        }
        result
    }

    /// Streams a snapshot view (see [`PeerConnection::stream_snapshot`]), counting it.
    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot<TypeConfig>,
        cancel: impl std::future::Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<NodeId>, StreamingError<TypeConfig, Fatal<NodeId>>> {
        let started = tokio::time::Instant::now();
        let result = self.stream_snapshot(vote, snapshot, cancel, option).await;
        if result.is_ok() {
            self.metrics.snapshot_sends.inc();
            self.metrics
                .snapshot_send_seconds
                .observe(started.elapsed().as_secs_f64());
        } else {
            self.metrics.snapshot_send_failures.inc();
        }
        result
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        self.call(RaftRpc::Vote, codec::encode(&rpc), option.hard_ttl())
            .await
    }
}
