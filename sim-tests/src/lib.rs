//! Deterministic simulation of a seedkv cluster, replayable from a seed.
//!
//! A run starts real seedkv nodes (the same `Node` and `Client` code that runs on TCP) inside
//! madsim, drives concurrent clients against a small key space while a nemesis injects the
//! scenario's faults, then heals everything and checks two things: the replicas converge to
//! identical state, and the recorded history is linearizable. Everything random is drawn from
//! the simulator's seeded generator, so a seed replays exactly, in a fresh process.
//!
//! - [`scenario`]: the scenarios and their fault menus;
//! - `cluster`: simulated nodes with simulated disks, crash and restart;
//! - `workload`: clients that record a history;
//! - `nemesis`: the fault schedule;
//! - `lease_watch`: no lease held while another node leads a later term;
//! - `operator`: membership changes, checked against the changes acknowledged;
//! - `mover`: slot moves between data groups, all finished once the faults heal;
//! - `run`: one seed end to end, with its fingerprint.

pub mod scenario;

#[cfg(madsim)]
pub mod cluster;
#[cfg(madsim)]
pub mod lease_watch;
#[cfg(madsim)]
pub mod mover;
#[cfg(madsim)]
pub mod nemesis;
#[cfg(madsim)]
pub mod operator;
#[cfg(madsim)]
pub mod run;
#[cfg(madsim)]
pub mod workload;
