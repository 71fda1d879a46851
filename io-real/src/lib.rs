//! seedkv bound to the real world: tokio, TCP and RocksDB.
//!
//! - [`rocks`]: RocksDB as the core's `Disk`, and ownership of the data directory;
//! - [`clock`]: the clock read leases run on;
//! - [`serve`]: a node's gRPC services on a TCP listener, with graceful shutdown, beside
//!   gRPC health and reflection and the HTTP routes;
//! - [`gateway`]: the HTTP side: the JSON key-value gateway, `/metrics` and `/health`;
//! - [`observe`]: requests counted by method and status for `/metrics`.
//!
//! Nothing here is part of the simulation build.

pub mod clock;
pub mod gateway;
pub mod observe;
pub mod rocks;
pub mod serve;

pub use rocks::{Identity, OpenError, RocksDisk};
