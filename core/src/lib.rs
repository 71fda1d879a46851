//! seedkv's core: everything that decides, nothing that waits on the outside world.
//!
//! - [`command`]: the writes clients ask for, and the limits they must respect;
//! - [`state`]: the key-value state every replica applies the log to;
//! - [`session`]: client sessions, which make a resent write apply once;
//! - [`slot`]: the 1,024 hash slots keys are stored and sharded by;
//! - [`slot_map`]: which group owns each slot, how a cluster starts, where a key goes;
//! - [`ownership`]: the slots a data group owns, as its own log decided;
//! - [`leadership`]: which node should lead each data group, and when a leader offers it;
//! - [`lease`]: leader leases, when a leader may read without a network round;
//! - [`storage`]: the [`storage::Disk`] contract, and the Raft log and state machine on it;
//! - [`types`]: the openraft type config, node and group ids;
//! - [`runtime`]: the async runtime binding that runs the same code on tokio and on madsim;
//! - [`codec`]: checksummed frames for everything stored or shipped;
//! - [`conformance`]: the storage checks every `Disk` implementation must pass;
//! - [`faults`] (simulation builds only): switches that break safety on purpose, to prove
//!   the simulation catches it.
//!
//! The core performs no I/O: disks and networks are traits implemented by `io-sim` and
//! `io-real`, and time comes from the runtime.

pub mod codec;
pub mod command;
pub mod conformance;
#[cfg(madsim)]
pub mod faults;
pub mod health;
pub mod leadership;
pub mod lease;
pub mod metrics;
pub mod migration;
pub mod ownership;
pub mod quiet;
pub mod rebalance;
pub mod routing;
pub mod runtime;
pub mod session;
pub mod slot;
pub mod slot_map;
pub mod state;
pub mod storage;
pub mod types;

pub use command::{
    Command, InvalidRequest, Limits, Response, Revision, ScanRange, Versioned, WriteOp,
};
pub use state::{KvState, ShardState};
pub use types::{GroupId, Member, NodeId, Raft, TypeConfig};
