//! seedkv on the wire: the gRPC services, the node that serves them, and the client.
//!
//! Everything here is written against `madsim-tonic` and `madsim-tokio`, so the very same
//! node and client run on real TCP and inside the simulator's network.
//!
//! - [`pb`]: the generated protobuf types and gRPC stubs (`proto/seedkv.proto`);
//! - [`node`]: a seedkv node: Raft groups plus the `Kv`, `Raft` and `Admin` services;
//! - [`proposer`]: concurrent writes proposed together as one log entry;
//! - [`read_index`]: linearizable reads sharing one leadership confirmation per round;
//! - [`network`]: openraft's network over the `Raft` gRPC service;
//! - [`client`]: a client that follows leader hints and retries within a bound;
//! - [`convert`]: wire requests to core commands (shared with the fuzzers);
//! - [`status`]: how errors map onto gRPC statuses and back;
//! - [`metrics`]: the node's figures for Prometheus, and its health;
//! - [`trace`]: the events a node reports, which the simulator hashes into a fingerprint.

pub mod client;
pub mod convert;
mod heartbeat;
pub mod identity;
mod keeper;
pub mod lease;
pub mod metrics;
mod mover;
pub mod network;
pub mod node;
mod pinning;
pub mod proposer;
pub mod read_index;
pub mod replica;
pub mod status;
pub mod trace;

/// Generated protobuf and gRPC code.
#[allow(clippy::all, clippy::pedantic, clippy::unwrap_used, missing_docs)]
pub mod pb {
    tonic::include_proto!("seedkv.v1");

    /// The encoded descriptors of seedkv's services, for gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/seedkv.bin"));
}

/// etcd's v3 KV API (client side), for benchmarking etcd with the same client.
#[allow(clippy::all, clippy::pedantic, clippy::unwrap_used, missing_docs)]
pub mod etcd {
    tonic::include_proto!("etcdserverpb");
}

pub use client::{Client, ClientConfig, ClientError, Consistency};
pub use node::{Node, NodeConfig};
