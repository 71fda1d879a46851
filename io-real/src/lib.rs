//! seedkv bound to the real world: tokio, TCP and RocksDB.
//!
//! - [`rocks`]: RocksDB as the core's `Disk`, and ownership of the data directory;
//! - [`clock`]: the clock read leases run on;
//! - [`serve`]: a node's gRPC services on a TCP listener, with graceful shutdown.
//!
//! Nothing here is part of the simulation build.

pub mod clock;
pub mod rocks;
pub mod serve;

pub use rocks::{Identity, OpenError, RocksDisk};
