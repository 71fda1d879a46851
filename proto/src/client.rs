//! The seedkv client library: talks to any node, finds the leader, and says honestly what
//! happened.
//!
//! Writes are retried only when nothing can have happened: the connection was never made, or
//! a node refused because it is not the leader (then the hint it gives is followed). When a
//! write was sent and the answer is lost, the client does not guess and does not resend —
//! resending a compare-and-swap could apply it twice — it returns
//! [`ClientError::Unknown`]. Reads change nothing, so they are retried on any failure.
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

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use seedkv_core::command::{Revision, ScanRange, Versioned, WriteOp};
use seedkv_core::runtime::timeout;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::network::connect;
use crate::pb;
use crate::pb::admin_client::AdminClient;
use crate::pb::kv_client::KvClient;
use crate::status::leader_hint;

pub use crate::pb::Consistency;

/// The longest pause between two attempts.
pub const MAX_BACKOFF_MS: u64 = 1_000;

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
}

/// A seedkv client. Cheap to share by reference across tasks.
pub struct Client {
    config: ClientConfig,
    route: Mutex<Route>,
}

/// Whether a call may be resent after its answer was lost.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// Reads: resending changes nothing.
    Always,
    /// Writes: resend only if the request certainly was not applied.
    OnlyIfNotApplied,
}

impl Client {
    /// A client for `config.endpoints`; connects lazily.
    pub fn new(config: ClientConfig) -> Client {
        let route = Route {
            endpoints: config.endpoints.clone(),
            current: 0,
            channels: HashMap::new(),
        };
        Client {
            config,
            route: Mutex::new(route),
        }
    }

    fn route(&self) -> std::sync::MutexGuard<'_, Route> {
        self.route
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn target(&self) -> Option<(String, Option<Channel>)> {
        let route = self.route();
        let addr = route.endpoints.get(route.current)?.clone();
        let channel = route.channels.get(&addr).cloned();
        Some((addr, channel))
    }

    fn rotate(&self, failed: &str) {
        let mut route = self.route();
        route.channels.remove(failed);
        if route
            .endpoints
            .get(route.current)
            .is_some_and(|addr| addr == failed)
        {
            route.current = (route.current + 1) % route.endpoints.len().max(1);
        }
    }

    fn follow(&self, leader: &str) {
        let mut route = self.route();
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

    async fn call<T, F, Fut>(&self, retry: Retry, mut send: F) -> Result<T, ClientError>
    where
        F: FnMut(Channel) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let per_attempt = Duration::from_millis(self.config.request_timeout_ms);
        // Back-off doubles per attempt up to 1 s, so the attempts span a leader election.
        let mut backoff = Duration::from_millis(self.config.retry_backoff_ms);
        let mut last_error = String::from("no endpoints configured");
        for attempt in 0..self.config.max_attempts {
            if attempt > 0 {
                backoff = (backoff * 2).min(Duration::from_millis(MAX_BACKOFF_MS));
            }
            let Some((addr, cached)) = self.target() else {
                break;
            };
            let channel = match self.channel(&addr, cached).await {
                Ok(channel) => channel,
                Err(err) => {
                    // Nothing was sent: safe to try elsewhere.
                    last_error = err;
                    self.rotate(&addr);
                    tokio::time::sleep(backoff).await;
                    continue;
                }
            };
            let status = match timeout(per_attempt, send(channel)).await {
                Ok(Ok(response)) => return Ok(response.into_inner()),
                Ok(Err(status)) => status,
                Err(elapsed) => Status::deadline_exceeded(format!("{addr}: {elapsed}")),
            };
            if let Some(hint) = leader_hint(&status) {
                last_error = format!("{addr}: {}", status.message());
                match hint {
                    Some(leader) if leader != addr => self.follow(&leader),
                    _ => {
                        self.rotate(&addr);
                        tokio::time::sleep(backoff).await;
                    }
                }
                continue;
            }
            match status.code() {
                Code::InvalidArgument | Code::OutOfRange => {
                    return Err(ClientError::InvalidArgument(status.message().to_string()))
                }
                Code::AlreadyExists | Code::NotFound | Code::FailedPrecondition => {
                    return Err(ClientError::Server(status.message().to_string()))
                }
                _ => {}
            }
            self.rotate(&addr);
            if retry == Retry::OnlyIfNotApplied && !never_sent(&status) {
                return Err(ClientError::Unknown(format!(
                    "{addr}: {}",
                    status.message()
                )));
            }
            last_error = format!("{addr}: {}", status.message());
            tokio::time::sleep(backoff).await;
        }
        Err(ClientError::Unavailable(format!(
            "gave up after {} attempts; last error: {last_error}",
            self.config.max_attempts
        )))
    }

    /// Sets `key` to `value`; returns the revision it was written at.
    pub async fn put(&self, key: &[u8], value: &[u8]) -> Result<Revision, ClientError> {
        let request = pb::PutRequest {
            key: key.to_vec(),
            value: value.to_vec(),
        };
        let reply = self
            .call(Retry::OnlyIfNotApplied, |ch| {
                let request = request.clone();
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
            .call(Retry::Always, |ch| {
                let request = request.clone();
                async move { kv(ch).get(request).await }
            })
            .await?;
        Ok(versioned(reply))
    }

    /// Removes `key`; returns the revision and whether the key existed.
    pub async fn delete(&self, key: &[u8]) -> Result<(Revision, bool), ClientError> {
        let request = pb::DeleteRequest { key: key.to_vec() };
        let reply = self
            .call(Retry::OnlyIfNotApplied, |ch| {
                let request = request.clone();
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
        };
        let reply = self
            .call(Retry::OnlyIfNotApplied, |ch| {
                let request = request.clone();
                async move { kv(ch).cas(request).await }
            })
            .await?;
        Ok((reply.succeeded, reply.revision))
    }

    /// Applies `ops` atomically. Returns whether every comparison held (and so everything
    /// applied) and the revision.
    pub async fn batch(&self, ops: &[WriteOp]) -> Result<(bool, Revision), ClientError> {
        let request = pb::BatchRequest {
            ops: ops.iter().map(write_op).collect(),
        };
        let reply = self
            .call(Retry::OnlyIfNotApplied, |ch| {
                let request = request.clone();
                async move { kv(ch).batch(request).await }
            })
            .await?;
        Ok((reply.succeeded, reply.revision))
    }

    /// The values of `keys`, in order, all read at one point in time.
    pub async fn multi_get(
        &self,
        keys: &[Vec<u8>],
        consistency: Consistency,
    ) -> Result<Vec<Option<Versioned>>, ClientError> {
        let request = pb::MultiGetRequest {
            keys: keys.to_vec(),
            consistency: consistency as i32,
        };
        let reply = self
            .call(Retry::Always, |ch| {
                let request = request.clone();
                async move { kv(ch).multi_get(request).await }
            })
            .await?;
        Ok(reply.values.into_iter().map(versioned).collect())
    }

    /// Up to `limit` entries of `range` in key order (`limit` 0: the server's maximum), and
    /// whether more remain.
    pub async fn scan(
        &self,
        range: &ScanRange,
        limit: u32,
        consistency: Consistency,
    ) -> Result<(Vec<(Vec<u8>, Versioned)>, bool), ClientError> {
        let request = pb::ScanRequest {
            prefix: range.prefix.clone(),
            from: range.from.clone(),
            to: range.to.clone(),
            limit,
            consistency: consistency as i32,
        };
        let reply = self
            .call(Retry::Always, |ch| {
                let request = request.clone();
                async move { kv(ch).scan(request).await }
            })
            .await?;
        let entries = reply
            .entries
            .into_iter()
            .map(|kv| {
                (
                    kv.key,
                    Versioned {
                        value: kv.value,
                        revision: kv.revision,
                    },
                )
            })
            .collect();
        Ok((entries, reply.more))
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

    /// Status of the node at `addr` (one attempt, no leader following).
    pub async fn status(&self, addr: &str) -> Result<pb::StatusResponse, ClientError> {
        match self
            .admin_once(addr, |mut admin| async move {
                admin.status(pb::StatusRequest {}).await
            })
            .await
        {
            Ok(Ok(status)) => Ok(status),
            Ok(Err(status)) => Err(ClientError::Unavailable(format!(
                "{addr}: {}",
                status.message()
            ))),
            // Reading a status changes nothing: a lost answer is just unavailability.
            Err(ClientError::Unknown(message)) => Err(ClientError::Unavailable(message)),
            Err(err) => Err(err),
        }
    }

    /// Asks the node at `addr` to start an election now.
    pub async fn elect(&self, addr: &str) -> Result<(), ClientError> {
        match self
            .admin_once(addr, |mut admin| async move {
                admin.elect(pb::ElectRequest {}).await
            })
            .await?
        {
            Ok(_) => Ok(()),
            Err(status) => Err(ClientError::Server(status.message().to_string())),
        }
    }

    /// Bootstraps a new cluster of `members` (`(id, address)`) through the node at `addr`.
    pub async fn init(&self, addr: &str, members: &[(u64, String)]) -> Result<(), ClientError> {
        let request = pb::InitRequest {
            members: members
                .iter()
                .map(|(id, addr)| pb::Member {
                    id: *id,
                    addr: addr.clone(),
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
    pub async fn add_learner(&self, id: u64, addr: &str) -> Result<u64, ClientError> {
        let request = pb::AddLearnerRequest {
            member: Some(pb::Member {
                id,
                addr: addr.to_string(),
            }),
        };
        let reply = self
            .call(Retry::OnlyIfNotApplied, |ch| {
                let request = request.clone();
                async move { AdminClient::new(ch).add_learner(request).await }
            })
            .await?;
        Ok(reply.log_index)
    }

    /// Makes `voters` the voting members; other members become learners.
    pub async fn change_membership(&self, voters: &[u64]) -> Result<u64, ClientError> {
        let request = pb::ChangeMembershipRequest {
            voters: voters.to_vec(),
        };
        let reply = self
            .call(Retry::OnlyIfNotApplied, |ch| {
                let request = request.clone();
                async move { AdminClient::new(ch).change_membership(request).await }
            })
            .await?;
        Ok(reply.log_index)
    }
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
        }),
        WriteOp::Delete { key } => pb::write_op::Op::Delete(pb::DeleteRequest { key: key.clone() }),
        WriteOp::Cas { key, expect, new } => pb::write_op::Op::Cas(pb::CasRequest {
            key: key.clone(),
            expect: expect.clone(),
            new_value: new.clone(),
        }),
    };
    pb::WriteOp { op: Some(op) }
}
