//! seedkv bound to madsim: a simulated disk and a network fault controller.
//!
//! Only simulation builds (`--cfg madsim`) compile this crate's contents. The disk keeps real
//! crash semantics — what was not fsynced is lost or torn — and the controller drives the
//! simulator's network: partitions, one-way links, packet loss and latency spikes.

#[cfg(madsim)]
pub mod disk;
#[cfg(madsim)]
pub mod net;
pub mod recovery;

#[cfg(madsim)]
pub use disk::{DiskConfig, DiskFault, SimDisk, SimDiskHandle};
#[cfg(madsim)]
pub use net::NetFaults;
