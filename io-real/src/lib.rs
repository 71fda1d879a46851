//! seedkv bound to the real world: tokio, TCP and RocksDB.
//!
//! This crate is where the RocksDB implementation of `seedkv_core::storage::Disk` and the
//! TCP server entry point live. It is empty for now: the node and client in `seedkv-proto`
//! already run on real tokio and TCP unchanged, and the durable real disk comes next.
