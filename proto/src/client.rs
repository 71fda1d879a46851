//! The seedkv client library: talks to any node, finds the leader, and says honestly what
//! happened.
//!
//! Writes are exactly-once: the client registers a session, numbers its writes, and resends
//! a write whose answer was lost (a time-out, a crashed leader, a node that stopped being
//! leader); the cluster answers a resent write with its first answer instead of applying it
//! again. Only when every attempt failed after one may have applied the write does the call
//! return [`ClientError::Unknown`]. Reads change nothing, so they are retried on any failure.
//! Every call is bounded: at most `max_attempts` tries of at most `request_timeout_ms` each.
//!
//! ```no_run
//! # async fn demo() -> Result<(), seedkv_proto::ClientError> {
//! use seedkv_proto::{Client, ClientConfig, Consistency};
//! let client = Client::new(ClientConfig::new(vec!["127.0.0.1:7379".into()]));
//! let revision = client.put(b"foo", b"bar").await?;
//! let value = client.get(b"foo", Consistency::Linearizable).await?;
//! assert_eq!(value.map(|v| v.value), Some(b"bar".to_vec()));
//! # let _ = revision; Ok(()) }
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use seedkv_core::command::{Revision, ScanRange, Versioned, WriteOp};
use seedkv_core::runtime::timeout;
use seedkv_core::slot::{Slot, SLOT_COUNT};
use seedkv_core::slot_map::META_GROUP;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::network::connect;
use crate::pb;
use crate::pb::admin_client::AdminClient;
use crate::pb::kv_client::KvClient;
use crate::status::{
    leader_hint, moved_slot, never_proposed, session_refusal, try_again_slot, SessionRefusal,
};

pub use crate::pb::Consistency;

/// The longest pause between two attempts.
pub const MAX_BACKOFF_MS: u64 = 1_000;

/// How many `TRY_AGAIN` refusals (a slot frozen while it moves) one call waits out, each
/// after [`FROZEN_WAIT_MS`], besides its attempts: 10 s in all.
pub const MAX_FROZEN_WAITS: u32 = 1_000;

/// The pause after a `TRY_AGAIN` refusal: a move's freeze lasts tens of milliseconds.
pub const FROZEN_WAIT_MS: u64 = 10;

/// `TRY_AGAIN` refusals from one node before the call asks another.
const FROZEN_WAITS_PER_NODE: u32 = 50;

/// How a [`Client`] reaches the cluster.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Node addresses (`host:port`) to try; leaders named in hints are added as found.
    pub endpoints: Vec<String>,
    /// Deadline of one attempt, connection included.
    pub request_timeout_ms: u64,
    /// Most attempts per call.
    pub max_attempts: u32,
    /// First pause before retrying at another node when no leader is known; doubles per
    /// attempt up to [`MAX_BACKOFF_MS`].
    pub retry_backoff_ms: u64,
}

impl ClientConfig {
    /// Defaults: 2 s per attempt, 8 attempts, 50 ms back-off.
    pub fn new(endpoints: Vec<String>) -> Self {
        ClientConfig {
            endpoints,
            request_timeout_ms: 2_000,
            max_attempts: 8,
            retry_backoff_ms: 50,
        }
    }
}

/// Why a call did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The request is invalid (too large, empty key, ...). Nothing was done.
    #[error("invalid request: {0}")]
    InvalidArgument(String),
    /// No node could take the request within the attempts allowed. Nothing was done.
    #[error("cluster unavailable: {0}")]
    Unavailable(String),
    /// A write was sent but its answer was lost: it may or may not have been applied.
    #[error("outcome unknown: {0}")]
    Unknown(String),
    /// The server answered with an error that is none of the above.
    #[error("server error: {0}")]
    Server(String),
}

impl ClientError {
    /// True if the request certainly had no effect.
    pub fn is_definite(&self) -> bool {
        !matches!(self, ClientError::Unknown(_))
    }
}

struct Route {
    endpoints: Vec<String>,
    /// Index of the endpoint to try first: the last one that worked or was named leader.
    current: usize,
    channels: HashMap<String, Channel>,
    /// The slot map as last fetched (dropped when a node answers `MOVED`).
    map: Option<Arc<CachedMap>>,
    /// Per data group, the address to try first: the last one named its leader, or a replica.
    leaders: HashMap<u32, String>,
}

/// The slot map a client routes by: the data group of every slot and the addresses of every
/// group's replicas.
#[derive(Debug, Clone)]
pub struct CachedMap {
    pub version: u64,
    /// The owning data group of each slot, in slot order.
    owners: Vec<u32>,
    /// Each data group's replica addresses, the preferred leader first.
    replicas: BTreeMap<u32, Vec<String>>,
}

impl CachedMap {
    fn from_reply(reply: pb::SlotMapResponse) -> Result<CachedMap, String> {
        if reply.owners.len() != usize::from(SLOT_COUNT) {
            return Err(format!(
                "the slot map names {} owners, not one per slot ({SLOT_COUNT})",
                reply.owners.len()
            ));
        }
        let replicas = reply
            .groups
            .into_iter()
            .map(|group| {
                let addrs = group.replicas.into_iter().map(|m| m.addr);
                (group.group, addrs.filter(|a| !a.is_empty()).collect())
            })
            .collect();
        Ok(CachedMap {
            version: reply.version,
            owners: reply.owners,
            replicas,
        })
    }

    /// The data group serving `key`.
    pub fn group_of(&self, key: &[u8]) -> u32 {
        let slot = usize::from(Slot::of(key).get());
        debug_assert!(slot < self.owners.len());
        self.owners.get(slot).copied().unwrap_or(0)
    }

    /// The replica addresses of data group `group` (none for the meta group).
    pub fn replicas_of(&self, group: u32) -> &[String] {
        self.replicas.get(&group).map_or(&[], Vec::as_slice)
    }

    /// Every data group, in id order.
    pub fn groups(&self) -> impl Iterator<Item = u32> + '_ {
        self.replicas.keys().copied()
    }
}

/// A seedkv client. Cheap to share by reference across tasks.
///
/// Its writes belong to one client session, registered on the first write: each carries a
/// sequence number, so the client resends any write whose answer it lost, and the cluster
/// applies it once.
pub struct Client {
    config: ClientConfig,
    route: Mutex<Route>,
    /// One session per data group (client ids are numbered per group).
    sessions: tokio::sync::Mutex<BTreeMap<u32, u64>>,
    /// One registration at a time per group, none holding up another group's writes.
    registering: Mutex<BTreeMap<u32, Arc<tokio::sync::Mutex<()>>>>,
    /// The session's sequence numbers: the lowest still waiting is the acknowledged mark.
    sequence: Mutex<Sequence>,
}

/// Whether a call may be resent after its answer was lost.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// Reads: resending changes nothing.
    Always,
    /// Session writes: a resend is answered, not applied again; if every attempt fails
    /// after one may have applied, the outcome is unknown.
    Resend,
    /// Writes without a session (membership changes): resend only if the request certainly
    /// was not applied.
    OnlyIfNotApplied,
}

/// The sequence numbers a client has handed out and the writes still waiting on theirs.
#[derive(Default)]
struct Sequence {
    last: u64,
    waiting: BTreeSet<u64>,
}

/// One write in flight: holds its sequence number among the waiting until dropped, so a
/// cancelled call does not hold the client's acknowledged mark back.
struct InFlight<'a> {
    sequence: &'a Mutex<Sequence>,
    seq: u64,
    acked_below: u64,
}

impl<'a> InFlight<'a> {
    fn start(sequence: &'a Mutex<Sequence>) -> Self {
        // One lock for both, so no lower number is handed out after a mark above it.
        let mut guard = sequence.lock().unwrap_or_else(|p| p.into_inner());
        guard.last += 1;
        let seq = guard.last;
        guard.waiting.insert(seq);
        let acked_below = guard.waiting.first().copied().unwrap_or(seq);
        debug_assert!(acked_below <= seq);
        InFlight {
            sequence,
            seq,
            acked_below,
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.sequence
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .waiting
            .remove(&self.seq);
    }
}

/// Why [`Client::attempts`] stopped without an answer.
enum Failure {
    Client(ClientError),
    /// The session was refused as expired before any attempt could have applied the write.
    SessionExpired,
    /// The key's slot is not served where the write went (`MOVED`), and nothing was
    /// applied by any attempt: send it again, under a new number, once the slot is served.
    Moved,
    /// The `TruncatedWriteResentAsNew` fault: resend the write under a new number.
    #[cfg(madsim)]
    Renumber,
}

impl Client {
    /// A client for `config.endpoints`; connects lazily.
    pub fn new(config: ClientConfig) -> Client {
        let route = Route {
            endpoints: config.endpoints.clone(),
            current: 0,
            channels: HashMap::new(),
            map: None,
            leaders: HashMap::new(),
        };
        Client {
            config,
            route: Mutex::new(route),
            sessions: tokio::sync::Mutex::new(BTreeMap::new()),
            registering: Mutex::new(BTreeMap::new()),
            sequence: Mutex::new(Sequence::default()),
        }
    }

    fn route(&self) -> std::sync::MutexGuard<'_, Route> {
        self.route
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Where to send a call for `group` (`None`: any node) first.
    fn target(&self, group: Option<u32>) -> Option<(String, Option<Channel>)> {
        let route = self.route();
        let group_addr = group.and_then(|group| {
            if let Some(leader) = route.leaders.get(&group) {
                return Some(leader.clone());
            }
            route.map.as_ref()?.replicas.get(&group)?.first().cloned()
        });
        let addr = match group_addr {
            Some(addr) => addr,
            None => route.endpoints.get(route.current)?.clone(),
        };
        let channel = route.channels.get(&addr).cloned();
        Some((addr, channel))
    }

    fn rotate(&self, group: Option<u32>, failed: &str) {
        let mut route = self.route();
        route.channels.remove(failed);
        if let Some(group) = group {
            // The next replica of the group after the one that failed (the next endpoint
            // without a map): never back to a node that pointed at the one that failed.
            let next = {
                let candidates = route
                    .map
                    .as_ref()
                    .and_then(|map| map.replicas.get(&group))
                    .filter(|replicas| !replicas.is_empty())
                    .unwrap_or(&route.endpoints);
                let at = candidates.iter().position(|addr| addr == failed);
                let next = at.map_or(0, |at| (at + 1) % candidates.len().max(1));
                candidates.get(next).cloned()
            };
            match next {
                Some(next) => {
                    route.leaders.insert(group, next);
                    return;
                }
                None => {
                    route.leaders.remove(&group);
                }
            }
        }
        if route
            .endpoints
            .get(route.current)
            .is_some_and(|addr| addr == failed)
        {
            route.current = (route.current + 1) % route.endpoints.len().max(1);
        }
    }

    fn follow(&self, group: Option<u32>, leader: &str) {
        let mut route = self.route();
        if let Some(group) = group {
            route.leaders.insert(group, leader.to_string());
            return;
        }
        match route.endpoints.iter().position(|addr| addr == leader) {
            Some(index) => route.current = index,
            None => {
                route.endpoints.push(leader.to_string());
                route.current = route.endpoints.len() - 1;
            }
        }
    }

    async fn channel(&self, addr: &str, cached: Option<Channel>) -> Result<Channel, String> {
        if let Some(channel) = cached {
            return Ok(channel);
        }
        let channel = connect(addr, Duration::from_millis(self.config.request_timeout_ms)).await?;
        self.route()
            .channels
            .insert(addr.to_string(), channel.clone());
        Ok(channel)
    }

    async fn call<T, F, Fut>(
        &self,
        retry: Retry,
        group: Option<u32>,
        send: F,
    ) -> Result<T, ClientError>
    where
        F: FnMut(Channel) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.attempts(retry, group, send)
            .await
            .map_err(|failure| self.failure(failure))
    }

    /// Up to `max_attempts` tries of `send` for data group `group` (`None`: any node),
    /// following leader hints.
    async fn attempts<T, F, Fut>(
        &self,
        retry: Retry,
        group: Option<u32>,
        mut send: F,
    ) -> Result<T, Failure>
    where
        F: FnMut(Channel) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let per_attempt = Duration::from_millis(self.config.request_timeout_ms);
        // Back-off doubles per attempt up to 1 s, so the attempts span a leader election.
        let mut backoff = Duration::from_millis(self.config.retry_backoff_ms);
        let mut last_error = String::from("no endpoints configured");
        // Whether an attempt so far may have applied the write.
        let mut maybe_applied = false;
        let unknown = |message: String| Failure::Client(ClientError::Unknown(message));
        // Nodes this call failed to reach: following a hint to one of them at once (a leader
        // that just died, still named by its followers) would spend every attempt in a few
        // milliseconds, long before an election ends.
        let mut unreachable: Vec<String> = Vec::new();
        let mut attempt = 0;
        // Refusals of a frozen slot wait apart from the attempts, up to their own bound.
        let mut frozen_waits = 0;
        while attempt < self.config.max_attempts {
            if attempt > 0 {
                backoff = (backoff * 2).min(Duration::from_millis(MAX_BACKOFF_MS));
            }
            attempt += 1;
            let Some((addr, cached)) = self.target(group) else {
                break;
            };
            let channel = match self.channel(&addr, cached).await {
                Ok(channel) => channel,
                Err(err) => {
                    // Nothing was sent: safe to try elsewhere.
                    last_error = err;
                    unreachable.push(addr.clone());
                    self.rotate(group, &addr);
                    tokio::time::sleep(backoff).await;
                    continue;
                }
            };
            let status = match timeout(per_attempt, send(channel)).await {
                Ok(Ok(response)) => return Ok(response.into_inner()),
                Ok(Err(status)) => status,
                Err(elapsed) => Status::deadline_exceeded(format!("{addr}: {elapsed}")),
            };
            last_error = format!("{addr}: {}", status.message());
            tracing::debug!(?group, attempt, %addr, code = ?status.code(), "refused: {}", status.message());
            if try_again_slot(&status).is_some() {
                // The slot is frozen while it moves: nothing was done. Ask again shortly
                // (the answer becomes MOVED once the move commits).
                if frozen_waits < MAX_FROZEN_WAITS {
                    frozen_waits += 1;
                    attempt -= 1;
                    backoff = Duration::from_millis(self.config.retry_backoff_ms);
                }
                // A node whose move long ended elsewhere (cut off before it applied the
                // release) keeps answering TRY_AGAIN: look elsewhere now and then.
                if frozen_waits % FROZEN_WAITS_PER_NODE == 0 {
                    self.rotate(group, &addr);
                    self.forget_map();
                }
                tokio::time::sleep(Duration::from_millis(FROZEN_WAIT_MS)).await;
                continue;
            }
            if let Some(hint) = leader_hint(&status) {
                // A node also says "not the leader" when it truncated a write it had
                // proposed, which may still commit elsewhere; only a refusal marked as
                // given before proposing says nothing happened.
                if !never_proposed(&status) {
                    match retry {
                        Retry::Always => {}
                        Retry::Resend => maybe_applied = true,
                        Retry::OnlyIfNotApplied => return Err(unknown(last_error)),
                    }
                }
                match hint {
                    Some(leader) if leader != addr => {
                        // A hint naming a node this call could not reach (a leader that
                        // just died, still named by its followers, or that restarted and
                        // resumed) is followed after a pause, not at once.
                        let paced = unreachable.contains(&leader);
                        self.follow(group, &leader);
                        if paced {
                            tokio::time::sleep(backoff).await;
                        }
                    }
                    _ => {
                        self.rotate(group, &addr);
                        tokio::time::sleep(backoff).await;
                    }
                }
                // Deliberately wrong: a write no attempt of which was proposed could take a
                // new number, but one refused after its entry was truncated may still commit.
                #[cfg(madsim)]
                if retry == Retry::Resend
                    && !maybe_applied
                    && never_proposed(&status)
                    && seedkv_core::faults::enabled(
                        seedkv_core::faults::Fault::TruncatedWriteResentAsNew,
                    )
                {
                    // Only after following the hint, as the honest path does.
                    return Err(Failure::Renumber);
                }
                continue;
            }
            match (retry, session_refusal(&status)) {
                (Retry::Resend, Some(SessionRefusal::Expired)) if !maybe_applied => {
                    return Err(Failure::SessionExpired)
                }
                (Retry::Resend, Some(_)) if maybe_applied => {
                    return Err(unknown(format!(
                        "{last_error} (an earlier attempt may have applied the write)"
                    )))
                }
                _ => {}
            }
            if maybe_applied && definite_refusal(&status) {
                // The refusal speaks for this copy only; an earlier one may have applied.
                return Err(unknown(format!(
                    "{last_error} (an earlier attempt may have applied the write)"
                )));
            }
            if moved_slot(&status).is_some() && retry != Retry::OnlyIfNotApplied {
                // Nothing was done: the caller refreshes its map and routes again.
                self.forget_map();
                return Err(Failure::Moved);
            }
            match status.code() {
                Code::InvalidArgument | Code::OutOfRange => {
                    return Err(Failure::Client(ClientError::InvalidArgument(
                        status.message().to_string(),
                    )))
                }
                Code::AlreadyExists | Code::NotFound | Code::FailedPrecondition | Code::Aborted => {
                    return Err(Failure::Client(ClientError::Server(
                        status.message().to_string(),
                    )))
                }
                _ => {}
            }
            if status.code() == Code::Unavailable {
                unreachable.push(addr.clone());
            }
            self.rotate(group, &addr);
            if !never_sent(&status) {
                match retry {
                    Retry::Always => {}
                    Retry::Resend => maybe_applied = true,
                    Retry::OnlyIfNotApplied => return Err(unknown(last_error)),
                }
            }
            tokio::time::sleep(backoff).await;
        }
        let message = format!(
            "gave up after {} attempts; last error: {last_error}",
            self.config.max_attempts
        );
        Err(Failure::Client(if maybe_applied {
            ClientError::Unknown(message)
        } else {
            ClientError::Unavailable(message)
        }))
    }

    /// This client's session id in data group `group`, registering one first if it has none.
    async fn session(&self, group: u32) -> Result<u64, ClientError> {
        if let Some(client_id) = self.sessions.lock().await.get(&group) {
            return Ok(*client_id);
        }
        // Under the group's own lock, not the sessions' lock: a group without a leader must
        // not hold up writes to others, and concurrent first writes register once.
        let lock = self
            .registering
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(group)
            .or_default()
            .clone();
        let _registering = lock.lock().await;
        if let Some(client_id) = self.sessions.lock().await.get(&group) {
            return Ok(*client_id);
        }
        // Registering twice only leaves an unused session behind: resend freely.
        let reply = self
            .call(Retry::Always, Some(group), |ch| async move {
                kv(ch).register(pb::RegisterRequest { group }).await
            })
            .await?;
        if reply.group != group {
            return Err(ClientError::Server(format!(
                "asked for a session of group {group}, got one of group {}",
                reply.group
            )));
        }
        // Of two registered side by side, the first one kept serves both.
        let mut sessions = self.sessions.lock().await;
        Ok(*sessions.entry(group).or_insert(reply.client_id))
    }

    /// The slot map, fetched from any node if none is cached.
    pub async fn slot_map(&self) -> Result<Arc<CachedMap>, ClientError> {
        if let Some(map) = self.route().map.clone() {
            return Ok(map);
        }
        let reply = self
            .call(Retry::Always, None, |ch| async move {
                AdminClient::new(ch).slot_map(pb::SlotMapRequest {}).await
            })
            .await?;
        let map = Arc::new(CachedMap::from_reply(reply).map_err(ClientError::Server)?);
        let mut route = self.route();
        // Keep the newer of two maps fetched side by side.
        if route
            .map
            .as_ref()
            .is_none_or(|held| held.version < map.version)
        {
            route.map = Some(map.clone());
        }
        Ok(route.map.clone().unwrap_or(map))
    }

    /// Drops the cached slot map: the next call that routes fetches it again.
    pub fn forget_map(&self) {
        self.route().map = None;
    }

    /// A read of `key`'s group, routed by the slot map and routed again after `MOVED`. A
    /// serializable read goes to the configured endpoints first (any replica may serve it
    /// from its own state), and by the map only if they do not serve the key.
    async fn read<T, F, Fut>(
        &self,
        key: &[u8],
        consistency: Consistency,
        mut send: F,
    ) -> Result<T, ClientError>
    where
        F: FnMut(Channel) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        if consistency == Consistency::Serializable {
            match self.attempts(Retry::Always, None, &mut send).await {
                Ok(reply) => return Ok(reply),
                Err(Failure::Moved) => {}
                Err(failure) => return Err(self.failure(failure)),
            }
        }
        let mut last = String::new();
        let mut moved_once = false;
        for _ in 0..self.config.max_attempts {
            let group = self.slot_map().await?.group_of(key);
            match self.attempts(Retry::Always, Some(group), &mut send).await {
                Ok(reply) => return Ok(reply),
                Err(Failure::Moved) => {
                    last = format!("group {group} does not serve the key's slot (yet)");
                    // The map just fetched again names the new owner as soon as the move
                    // committed: go at once the first time, then pace.
                    if moved_once {
                        tokio::time::sleep(Duration::from_millis(self.config.retry_backoff_ms))
                            .await;
                    }
                    moved_once = true;
                }
                Err(failure) => return Err(self.failure(failure)),
            }
        }
        Err(ClientError::Unavailable(format!(
            "the key's slot was not served by any group the client reached: {last}"
        )))
    }

    fn failure(&self, failure: Failure) -> ClientError {
        match failure {
            Failure::Client(err) => err,
            Failure::SessionExpired => {
                ClientError::Server("the client session does not exist".to_string())
            }
            Failure::Moved => ClientError::Server(
                "MOVED: the key's slot is not served where the request went".to_string(),
            ),
            #[cfg(madsim)]
            Failure::Renumber => ClientError::Unavailable("renumbered".to_string()),
        }
    }

    /// A write of `key` within this client's session of the key's group: resent on any
    /// failure until it is answered or the attempts run out, and applied once however often
    /// it was sent. `send` gets the channel and the write's session tag.
    async fn write<T, F, Fut>(&self, key: &[u8], mut send: F) -> Result<T, ClientError>
    where
        F: FnMut(Channel, pb::Session) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        // A session that expired before this write was first sent costs one new session.
        #[cfg(madsim)]
        let mut renumbered = 0;
        let mut expired = 0;
        let mut moved = 0;
        while expired < 2 {
            let group = self.slot_map().await?.group_of(key);
            let client_id = self.session(group).await?;
            let in_flight = InFlight::start(&self.sequence);
            let tag = pb::Session {
                client_id,
                seq: in_flight.seq,
                acked_below: in_flight.acked_below,
                group,
            };
            let outcome = self
                .attempts(Retry::Resend, Some(group), |ch| send(ch, tag))
                .await;
            #[cfg(madsim)]
            let in_flight_seq = in_flight.seq;
            drop(in_flight);
            match outcome {
                Ok(reply) => return Ok(reply),
                Err(Failure::Client(err)) => return Err(err),
                Err(Failure::Moved) => {
                    // The number was answered (nothing applied); the next try takes a new one.
                    moved += 1;
                    if moved >= self.config.max_attempts {
                        return Err(ClientError::Unavailable(
                            "the key's slot was not served by any group the client reached".into(),
                        ));
                    }
                    // At once the first time: the map fetched again names the new owner
                    // as soon as the move committed.
                    if moved > 1 {
                        tokio::time::sleep(Duration::from_millis(self.config.retry_backoff_ms))
                            .await;
                    }
                }
                Err(Failure::SessionExpired) => {
                    expired += 1;
                    let mut sessions = self.sessions.lock().await;
                    if sessions.get(&group) == Some(&client_id) {
                        sessions.remove(&group);
                    }
                }
                #[cfg(madsim)]
                Err(Failure::Renumber) => {
                    tracing::debug!(client_id, seq = in_flight_seq, "write renumbered");
                    renumbered += 1;
                    if renumbered > self.config.max_attempts {
                        return Err(ClientError::Unavailable("renumbered too often".into()));
                    }
                }
            }
        }
        Err(ClientError::Unavailable(
            "the cluster expired two new client sessions in a row".to_string(),
        ))
    }

    /// Sets `key` to `value`; returns the revision it was written at.
    pub async fn put(&self, key: &[u8], value: &[u8]) -> Result<Revision, ClientError> {
        let request = pb::PutRequest {
            key: key.to_vec(),
            value: value.to_vec(),
            session: None,
        };
        let reply = self
            .write(key, |ch, session| {
                let request = pb::PutRequest {
                    session: Some(session),
                    ..request.clone()
                };
                async move { kv(ch).put(request).await }
            })
            .await?;
        Ok(reply.revision)
    }

    /// The value of `key`, if any.
    pub async fn get(
        &self,
        key: &[u8],
        consistency: Consistency,
    ) -> Result<Option<Versioned>, ClientError> {
        let request = pb::GetRequest {
            key: key.to_vec(),
            consistency: consistency as i32,
        };
        let reply = self
            .read(key, consistency, |ch| {
                let request = request.clone();
                async move { kv(ch).get(request).await }
            })
            .await?;
        Ok(versioned(reply))
    }

    /// Removes `key`; returns the revision and whether the key existed.
    pub async fn delete(&self, key: &[u8]) -> Result<(Revision, bool), ClientError> {
        let reply = self
            .write(key, |ch, session| {
                let request = pb::DeleteRequest {
                    key: key.to_vec(),
                    session: Some(session),
                };
                async move { kv(ch).delete(request).await }
            })
            .await?;
        Ok((reply.revision, reply.existed))
    }

    /// Writes `new` (`None`: delete) if the value is `expect` (`None`: absent). Returns
    /// whether it did, and the new revision or, on failure, the key's current one.
    pub async fn cas(
        &self,
        key: &[u8],
        expect: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<(bool, Revision), ClientError> {
        let request = pb::CasRequest {
            key: key.to_vec(),
            expect: expect.map(<[u8]>::to_vec),
            new_value: new.map(<[u8]>::to_vec),
            session: None,
        };
        let reply = self
            .write(key, |ch, session| {
                let request = pb::CasRequest {
                    session: Some(session),
                    ..request.clone()
                };
                async move { kv(ch).cas(request).await }
            })
            .await?;
        Ok((reply.succeeded, reply.revision))
    }

    /// Applies `ops` atomically. Returns whether every comparison held (and so everything
    /// applied) and the revision.
    pub async fn batch(&self, ops: &[WriteOp]) -> Result<(bool, Revision), ClientError> {
        // Refused here too, without a round trip: the node would refuse it the same way.
        seedkv_core::command::one_slot(ops)
            .map_err(|err| ClientError::InvalidArgument(err.to_string()))?;
        let Some(first) = ops.first() else {
            return Err(ClientError::InvalidArgument(
                "the batch is empty: it needs at least one operation".into(),
            ));
        };
        let request = pb::BatchRequest {
            ops: ops.iter().map(write_op).collect(),
            session: None,
        };
        let reply = self
            .write(first.key(), |ch, session| {
                let request = pb::BatchRequest {
                    session: Some(session),
                    ..request.clone()
                };
                async move { kv(ch).batch(request).await }
            })
            .await?;
        Ok((reply.succeeded, reply.revision))
    }

    /// The values of `keys`, in order. The keys of one data group are read at one point in
    /// time; keys of several groups are read from each group in turn.
    pub async fn multi_get(
        &self,
        keys: &[Vec<u8>],
        consistency: Consistency,
    ) -> Result<Vec<Option<Versioned>>, ClientError> {
        let mut values: Vec<Option<Versioned>> = vec![None; keys.len()];
        let map = self.slot_map().await?;
        let mut by_group: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
        for (index, key) in keys.iter().enumerate() {
            by_group.entry(map.group_of(key)).or_default().push(index);
        }
        for indexes in by_group.values() {
            let Some(&first) = indexes.first() else {
                continue;
            };
            let request = pb::MultiGetRequest {
                keys: indexes.iter().map(|&i| keys[i].clone()).collect(),
                consistency: consistency as i32,
            };
            // Routed by the first key: the others are of the same group in the same map,
            // and a node refuses (MOVED) any it does not serve.
            let reply = self
                .read(&keys[first], consistency, |ch| {
                    let request = request.clone();
                    async move { kv(ch).multi_get(request).await }
                })
                .await?;
            if reply.values.len() != indexes.len() {
                return Err(ClientError::Server(format!(
                    "asked for {} values, got {}",
                    indexes.len(),
                    reply.values.len()
                )));
            }
            for (&index, value) in indexes.iter().zip(reply.values) {
                values[index] = versioned(value);
            }
        }
        Ok(values)
    }

    /// Up to `limit` entries of `range` in key order (`limit` 0: the server's maximum), and
    /// whether more remain: every data group is asked for its first `limit`, and the answers
    /// merge in key order. Each group's part is read at one point in time.
    pub async fn scan(
        &self,
        range: &ScanRange,
        limit: u32,
        consistency: Consistency,
    ) -> Result<(Vec<(Vec<u8>, Versioned)>, bool), ClientError> {
        let mut uncovered = String::new();
        for _ in 0..self.config.max_attempts {
            match self.scan_groups(range, limit, consistency).await? {
                Ok(found) => return Ok(found),
                Err(why) => uncovered = why,
            }
            // A slot moved between two groups' answers: scan again with a fresh map.
            self.forget_map();
            tokio::time::sleep(Duration::from_millis(self.config.retry_backoff_ms)).await;
        }
        Err(ClientError::Unavailable(format!(
            "the scan's answers never covered every slot once ({uncovered}): slots kept moving"
        )))
    }

    /// One scan of every group; `Err(why)` inside if the answers did not cover every slot
    /// exactly once.
    #[allow(clippy::type_complexity)]
    async fn scan_groups(
        &self,
        range: &ScanRange,
        limit: u32,
        consistency: Consistency,
    ) -> Result<Result<(Vec<(Vec<u8>, Versioned)>, bool), String>, ClientError> {
        let map = self.slot_map().await?;
        let mut entries = Vec::new();
        let mut more = false;
        let mut cut_at: Option<usize> = None;
        let mut covered = vec![0u32; usize::from(seedkv_core::slot::SLOT_COUNT)];
        for group in map.groups() {
            let request = pb::ScanRequest {
                prefix: range.prefix.clone(),
                from: range.from.clone(),
                to: range.to.clone(),
                limit,
                consistency: consistency as i32,
                group,
            };
            let reply = self
                .call(Retry::Always, Some(group), |ch| {
                    let request = request.clone();
                    async move { kv(ch).scan(request).await }
                })
                .await?;
            for owned in &reply.covered {
                let last = (owned.last as usize).min(covered.len() - 1);
                for count in covered.iter_mut().take(last + 1).skip(owned.first as usize) {
                    *count += 1;
                }
            }
            if reply.more {
                // Cut short: this many is what the server gives at most.
                cut_at = Some(cut_at.unwrap_or(usize::MAX).min(reply.entries.len()));
                more = true;
            }
            entries.extend(reply.entries.into_iter().map(|kv| {
                (
                    kv.key,
                    Versioned {
                        value: kv.value,
                        revision: kv.revision,
                    },
                )
            }));
        }
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        // `limit` 0 asked each group for the server's maximum: a group cut short shows it.
        let keep = if limit == 0 {
            cut_at.unwrap_or(usize::MAX)
        } else {
            limit as usize
        };
        if entries.len() > keep {
            entries.truncate(keep);
            more = true;
        }
        if let Some(slot) = covered.iter().position(|&count| count != 1) {
            return Ok(Err(format!("slot {slot} was in {} answers", covered[slot])));
        }
        Ok(Ok((entries, more)))
    }

    /// One admin call to the node at `addr`: no retry, no leader following. The outer error
    /// is a connection failure or the deadline passing.
    async fn admin_once<T, F, Fut>(
        &self,
        addr: &str,
        call: F,
    ) -> Result<Result<T, Status>, ClientError>
    where
        F: FnOnce(AdminClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let channel = self
            .channel(addr, None)
            .await
            .map_err(ClientError::Unavailable)?;
        let per_attempt = Duration::from_millis(self.config.request_timeout_ms);
        match timeout(per_attempt, call(AdminClient::new(channel))).await {
            Ok(result) => Ok(result.map(tonic::Response::into_inner)),
            Err(elapsed) => Err(ClientError::Unknown(format!("{addr}: {elapsed}"))),
        }
    }

    /// The Raft groups the node at `addr` hosts, with the hash slots each owns.
    pub async fn slots(&self, addr: &str) -> Result<pb::SlotsResponse, ClientError> {
        self.admin_read(addr, |mut admin| async move {
            admin.slots(pb::SlotsRequest {}).await
        })
        .await
    }

    /// One read-only `Admin` call to the node at `addr`: it changes nothing, so a refusal or
    /// a lost answer is just unavailability.
    async fn admin_read<T, F, Fut>(&self, addr: &str, call: F) -> Result<T, ClientError>
    where
        F: FnOnce(AdminClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        match self.admin_once(addr, call).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(status)) => Err(ClientError::Unavailable(format!(
                "{addr}: {}",
                status.message()
            ))),
            Err(ClientError::Unknown(message)) => Err(ClientError::Unavailable(message)),
            Err(err) => Err(err),
        }
    }

    /// Status of the node at `addr` (one attempt, no leader following).
    pub async fn status(&self, addr: &str) -> Result<pb::StatusResponse, ClientError> {
        self.status_of(addr, 0, false).await
    }

    /// Status of Raft group `group` on the node at `addr`, with its state digest if asked.
    pub async fn group_status(
        &self,
        addr: &str,
        group: u32,
        with_digest: bool,
    ) -> Result<pb::StatusResponse, ClientError> {
        self.status_of(addr, group, with_digest).await
    }

    /// Status of the node at `addr` with its state digest, which reads every row of it.
    pub async fn status_with_digest(&self, addr: &str) -> Result<pb::StatusResponse, ClientError> {
        self.status_of(addr, 0, true).await
    }

    async fn status_of(
        &self,
        addr: &str,
        group: u32,
        with_digest: bool,
    ) -> Result<pb::StatusResponse, ClientError> {
        self.admin_read(addr, |mut admin| async move {
            admin
                .status(pb::StatusRequest {
                    with_digest,
                    group,
                    confirm: false,
                })
                .await
        })
        .await
    }

    /// Status of Raft group `group` from the node at `addr`, which must lead it: it confirms
    /// its leadership first, so `applied_index` is at or above every entry of the group
    /// committed before this call.
    pub async fn confirmed_group_status(
        &self,
        addr: &str,
        group: u32,
    ) -> Result<pb::StatusResponse, ClientError> {
        self.admin_read(addr, |mut admin| async move {
            admin
                .status(pb::StatusRequest {
                    with_digest: false,
                    group,
                    confirm: true,
                })
                .await
        })
        .await
    }

    /// Asks the node at `addr` to stand for election in Raft group `group` now. A leader
    /// handing the group over names itself and its term in `handed_by` (after excluding
    /// the node from its read lease); anyone else is refused while the node is within its
    /// leader's refusal window.
    pub async fn elect(
        &self,
        addr: &str,
        group: u32,
        handed_by: Option<(u64, u64)>,
    ) -> Result<(), ClientError> {
        let (leader, term) = handed_by.unwrap_or((0, 0));
        match self
            .admin_once(addr, |mut admin| async move {
                admin
                    .elect(pb::ElectRequest {
                        group,
                        leader,
                        term,
                    })
                    .await
            })
            .await?
        {
            Ok(_) => Ok(()),
            Err(status) => Err(ClientError::Server(status.message().to_string())),
        }
    }

    /// Bootstraps a new cluster of `members` (`(id, address)`) with `groups` data groups
    /// (0: one per member) of `replicas` replicas (0: three) through the node at `addr`.
    pub async fn init(
        &self,
        addr: &str,
        members: &[(u64, String)],
        groups: u32,
        replicas: u32,
    ) -> Result<(), ClientError> {
        let request = pb::InitRequest {
            groups,
            replicas,
            members: members
                .iter()
                .map(|(id, addr)| pb::Member {
                    id: *id,
                    addr: addr.clone(),
                    incarnation: 0,
                })
                .collect(),
        };
        match self
            .admin_once(addr, |mut admin| async move { admin.init(request).await })
            .await?
        {
            Ok(_) => Ok(()),
            Err(status) if status.code() == Code::InvalidArgument => {
                Err(ClientError::InvalidArgument(status.message().to_string()))
            }
            Err(status) => Err(ClientError::Server(status.message().to_string())),
        }
    }

    /// Adds node `id` at `addr` as a learner and waits until it has caught up.
    ///
    /// The node is asked who it is first: a node at `addr` with another id, or of another
    /// cluster, is refused; its incarnation goes into the membership. A node that does not
    /// answer is added with its incarnation unknown, which the leader records once it can
    /// reach the node.
    pub async fn add_learner(&self, group: u32, id: u64, addr: &str) -> Result<u64, ClientError> {
        let (incarnation, cluster_id) = match self.status(addr).await {
            Ok(status) if status.node_id != id => {
                return Err(ClientError::InvalidArgument(format!(
                    "the node at {addr} is node {}, not node {id}",
                    status.node_id
                )))
            }
            Ok(status) => (status.incarnation, status.cluster_id),
            Err(_) => (0, 0),
        };
        let request = pb::AddLearnerRequest {
            member: Some(pb::Member {
                id,
                addr: addr.to_string(),
                incarnation,
            }),
            cluster_id,
            group,
        };
        let reply = self
            .call(Retry::OnlyIfNotApplied, data_group(group), |ch| {
                let request = request.clone();
                async move { AdminClient::new(ch).add_learner(request).await }
            })
            .await?;
        Ok(reply.log_index)
    }

    /// Promotes the learners `add` to voters, or removes the voters `remove` from the cluster
    /// (one of the two, the other empty). With `expected` non-empty it is a compare-and-set:
    /// refused, nothing changed, unless the voters are exactly `expected` and no other change
    /// is in progress. Returns the log index of the change.
    pub async fn change_membership(
        &self,
        group: u32,
        add: &[u64],
        remove: &[u64],
        expected: &[u64],
    ) -> Result<u64, ClientError> {
        let request = pb::ChangeMembershipRequest {
            add_voters: add.to_vec(),
            remove_voters: remove.to_vec(),
            expected_voters: expected.to_vec(),
            group,
        };
        let reply = self
            .call(Retry::OnlyIfNotApplied, data_group(group), |ch| {
                let request = request.clone();
                async move { AdminClient::new(ch).change_membership(request).await }
            })
            .await?;
        Ok(reply.log_index)
    }
}

impl Client {
    /// Moves slots `first..=last` to data group `to` (recorded at the meta group's leader,
    /// which carries the moves out); the migrations started.
    pub async fn move_slots(
        &self,
        first: u32,
        last: u32,
        to: u32,
    ) -> Result<Vec<pb::Migration>, ClientError> {
        let request = pb::MoveSlotsRequest { first, last, to };
        let reply = self
            .call(Retry::OnlyIfNotApplied, None, |ch| async move {
                AdminClient::new(ch).move_slots(request).await
            })
            .await?;
        Ok(reply.started)
    }

    /// The slot moves in progress, as a node's replica of the meta group holds them.
    pub async fn migrations(&self) -> Result<pb::MigrationsResponse, ClientError> {
        self.call(Retry::Always, None, |ch| async move {
            AdminClient::new(ch)
                .migrations(pb::MigrationsRequest {})
                .await
        })
        .await
    }

    /// Data group `group`'s part in the move of `slot`, from its leader.
    pub async fn slot_state(
        &self,
        group: u32,
        slot: u32,
    ) -> Result<pb::SlotStateResponse, ClientError> {
        let request = pb::SlotStateRequest { group, slot };
        self.call(Retry::Always, Some(group), |ch| async move {
            AdminClient::new(ch).slot_state(request).await
        })
        .await
    }

    /// Rows of `slot` in group `group` for `migration`, after `after` (from the first with
    /// `None`), with revisions above `since`, from the group's leader: `live` reads a slot
    /// the group still serves (the copy's pass), otherwise the slot must be frozen for
    /// `migration`.
    pub async fn slot_rows(
        &self,
        group: u32,
        slot: u32,
        migration: u64,
        after: Option<&[u8]>,
        since: u64,
        live: bool,
    ) -> Result<pb::SlotRowsResponse, ClientError> {
        let request = pb::SlotRowsRequest {
            group,
            slot,
            migration,
            after: after.map(<[u8]>::to_vec).unwrap_or_default(),
            from_start: after.is_none(),
            since,
            live,
        };
        self.call(Retry::Always, Some(group), |ch| {
            let request = request.clone();
            async move {
                AdminClient::new(ch)
                    .max_decoding_message_size(usize::MAX)
                    .slot_rows(request)
                    .await
            }
        })
        .await
    }

    /// Adds a data group on `nodes` (the preferred leader first) at `weight`; its id and
    /// the map version that records it.
    pub async fn add_group(&self, nodes: &[u64], weight: u32) -> Result<(u32, u64), ClientError> {
        let request = pb::AddGroupRequest {
            nodes: nodes.to_vec(),
            weight,
        };
        let reply = self
            .call(Retry::OnlyIfNotApplied, None, |ch| {
                let request = request.clone();
                async move { AdminClient::new(ch).add_group(request).await }
            })
            .await?;
        Ok((reply.group, reply.map_version))
    }

    /// Sets data group `group`'s weight; the map version that records it.
    pub async fn set_weight(&self, group: u32, weight: u32) -> Result<u64, ClientError> {
        let request = pb::SetWeightRequest { group, weight };
        let reply = self
            .call(Retry::OnlyIfNotApplied, None, |ch| async move {
                AdminClient::new(ch).set_weight(request).await
            })
            .await?;
        Ok(reply.map_version)
    }

    /// Removes data group `group`, which must own no slot, from the slot map; the map
    /// version that records it.
    pub async fn remove_group(&self, group: u32) -> Result<u64, ClientError> {
        let request = pb::RemoveGroupRequest { group };
        let reply = self
            .call(Retry::OnlyIfNotApplied, None, |ch| async move {
                AdminClient::new(ch).remove_group(request).await
            })
            .await?;
        Ok(reply.map_version)
    }

    /// Moves the fewest slots that make every group's share follow its weight; the moves
    /// started.
    pub async fn rebalance(&self) -> Result<Vec<pb::Migration>, ClientError> {
        let reply = self
            .call(Retry::OnlyIfNotApplied, None, |ch| async move {
                AdminClient::new(ch)
                    .rebalance(pb::RebalanceRequest {})
                    .await
            })
            .await?;
        Ok(reply.started)
    }

    /// Every slot data group `group` froze or is copying in, from its leader.
    pub async fn group_moves(&self, group: u32) -> Result<pb::GroupMovesResponse, ClientError> {
        let request = pb::GroupMovesRequest { group };
        self.call(Retry::Always, Some(group), |ch| async move {
            AdminClient::new(ch).group_moves(request).await
        })
        .await
    }

    /// Proposes one step of a move (an encoded command) in `group`, at its leader. Every
    /// step is idempotent, so it is resent freely.
    pub async fn move_step(
        &self,
        group: u32,
        command: Vec<u8>,
    ) -> Result<pb::MoveStepResponse, ClientError> {
        let request = pb::MoveStepRequest { group, command };
        self.call(Retry::Always, Some(group), |ch| {
            let request = request.clone();
            async move {
                AdminClient::new(ch)
                    .max_encoding_message_size(usize::MAX)
                    .move_step(request)
                    .await
            }
        })
        .await
    }
}

/// The data group a call for Raft group `group` is routed by (`None` for the meta group,
/// which every node holds: any node, following leader hints).
fn data_group(group: u32) -> Option<u32> {
    (group != META_GROUP.0).then_some(group)
}

/// True if `status` ends a call at once (the request is wrong or refused for good).
fn definite_refusal(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::InvalidArgument
            | Code::OutOfRange
            | Code::AlreadyExists
            | Code::NotFound
            | Code::FailedPrecondition
            | Code::Aborted
    )
}

/// True if `status` says the request never left: the connection itself was refused.
fn never_sent(status: &Status) -> bool {
    status.code() == Code::Unavailable
        && status
            .message()
            .to_ascii_lowercase()
            .contains("connection refused")
}

fn kv(channel: Channel) -> KvClient<Channel> {
    KvClient::new(channel)
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX)
}

fn versioned(reply: pb::GetResponse) -> Option<Versioned> {
    reply.found.then_some(Versioned {
        value: reply.value,
        revision: reply.revision,
    })
}

fn write_op(op: &WriteOp) -> pb::WriteOp {
    let op = match op {
        WriteOp::Put { key, value } => pb::write_op::Op::Put(pb::PutRequest {
            key: key.clone(),
            value: value.clone(),
            session: None,
        }),
        WriteOp::Delete { key } => pb::write_op::Op::Delete(pb::DeleteRequest {
            key: key.clone(),
            session: None,
        }),
        WriteOp::Cas { key, expect, new } => pb::write_op::Op::Cas(pb::CasRequest {
            key: key.clone(),
            expect: expect.clone(),
            new_value: new.clone(),
            session: None,
        }),
    };
    pb::WriteOp { op: Some(op) }
}
