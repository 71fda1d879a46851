//! What a node's storage and replication count about themselves: fsyncs, proposals and
//! snapshots.
//!
//! The values are prometheus-client counters and histograms: atomics with no registry of
//! their own, no threads and no I/O, so they are plain data here and cost the simulator
//! nothing. The node registers them once in its own registry (`register`), and a scrape
//! reads them; nothing is global, so two nodes in one process (the simulator) keep
//! separate figures.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

/// Durations from 0.1 ms to ~3.3 s, doubling: fsyncs, snapshot frames, requests.
pub fn latency_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.000_1, 2.0, 16)
}

/// Counts from 1 to 4,096, doubling: appends or entries covered by one fsync.
fn count_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(1.0, 2.0, 13)
}

/// Durations from 1 ms to ~9 min, quadrupling: snapshot builds, sends and installs.
fn long_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.001, 4.0, 11)
}

/// The storage and replication figures of one node (every group on it).
#[derive(Debug)]
pub struct NodeMetrics {
    /// Client writes handed to Raft (each may share a log entry with others).
    pub proposals: Counter,
    /// Log entries made durable, over every group on the node's disk.
    pub entries_synced: Counter,
    /// fsyncs of the Raft log that succeeded (one covers every group's appends queued
    /// before it).
    pub fsyncs: Counter,
    /// fsyncs that failed (after one, the groups stop: an fsync is never retried).
    pub fsync_failures: Counter,
    pub fsync_seconds: Histogram,
    /// Log entries of every group made durable by one fsync.
    pub entries_per_fsync: Histogram,
    pub snapshot_builds: Counter,
    pub snapshot_build_seconds: Histogram,
    /// Snapshots streamed to a follower to the end (installed or refused by it).
    pub snapshot_sends: Counter,
    /// Snapshot transfers abandoned on the way (network, cancel, a newer one).
    pub snapshot_send_failures: Counter,
    pub snapshot_sent_bytes: Counter,
    pub snapshot_send_seconds: Histogram,
    /// Snapshots switched to by the state machine.
    pub snapshot_installs: Counter,
    pub snapshot_received_bytes: Counter,
    /// The state machine's switch to a received snapshot, its synced write included.
    pub snapshot_install_seconds: Histogram,
}

impl Default for NodeMetrics {
    fn default() -> Self {
        NodeMetrics {
            proposals: Counter::default(),
            entries_synced: Counter::default(),
            fsyncs: Counter::default(),
            fsync_failures: Counter::default(),
            fsync_seconds: Histogram::new(latency_buckets()),
            entries_per_fsync: Histogram::new(count_buckets()),
            snapshot_builds: Counter::default(),
            snapshot_build_seconds: Histogram::new(long_buckets()),
            snapshot_sends: Counter::default(),
            snapshot_send_failures: Counter::default(),
            snapshot_sent_bytes: Counter::default(),
            snapshot_send_seconds: Histogram::new(long_buckets()),
            snapshot_installs: Counter::default(),
            snapshot_received_bytes: Counter::default(),
            snapshot_install_seconds: Histogram::new(long_buckets()),
        }
    }
}

impl NodeMetrics {
    /// Registers every figure in `registry` (prefixed there, e.g. `seedkv_`). The metrics
    /// are shared, not copied: a scrape of `registry` reads their current values.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "proposals",
            "Client writes handed to a leader's proposer",
            self.proposals.clone(),
        );
        registry.register(
            "log_entries_synced",
            "Raft log entries made durable, every group on this node",
            self.entries_synced.clone(),
        );
        registry.register(
            "fsyncs",
            "Successful fsyncs of the Raft log, each covering every group's queued appends",
            self.fsyncs.clone(),
        );
        registry.register(
            "fsync_failures",
            "fsyncs that failed (never retried: the groups stop)",
            self.fsync_failures.clone(),
        );
        registry.register_with_unit(
            "fsync_duration",
            "Duration of one fsync of the Raft log",
            Unit::Seconds,
            self.fsync_seconds.clone(),
        );
        registry.register(
            "log_entries_per_fsync",
            "Raft log entries of every group made durable by one fsync",
            self.entries_per_fsync.clone(),
        );
        registry.register(
            "snapshot_builds",
            "Snapshots built (a point-in-time view made durable)",
            self.snapshot_builds.clone(),
        );
        registry.register_with_unit(
            "snapshot_build_duration",
            "Duration of one snapshot build",
            Unit::Seconds,
            self.snapshot_build_seconds.clone(),
        );
        registry.register(
            "snapshot_sends",
            "Snapshots streamed to a follower to the end",
            self.snapshot_sends.clone(),
        );
        registry.register(
            "snapshot_send_failures",
            "Snapshot transfers abandoned before the end",
            self.snapshot_send_failures.clone(),
        );
        registry.register_with_unit(
            "snapshot_sent",
            "Snapshot rows sent, keys and values",
            Unit::Bytes,
            self.snapshot_sent_bytes.clone(),
        );
        registry.register_with_unit(
            "snapshot_send_duration",
            "Duration of one snapshot transfer, first frame to last",
            Unit::Seconds,
            self.snapshot_send_seconds.clone(),
        );
        registry.register(
            "snapshot_installs",
            "Snapshots the state machine switched to",
            self.snapshot_installs.clone(),
        );
        registry.register_with_unit(
            "snapshot_received",
            "Snapshot frames received",
            Unit::Bytes,
            self.snapshot_received_bytes.clone(),
        );
        registry.register_with_unit(
            "snapshot_install_duration",
            "Duration of the switch to a received snapshot",
            Unit::Seconds,
            self.snapshot_install_seconds.clone(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(registry: &Registry) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, registry).expect("encodes");
        out
    }

    #[test]
    fn registered_figures_follow_their_metrics() {
        let metrics = NodeMetrics::default();
        let mut registry = Registry::with_prefix("seedkv");
        metrics.register(&mut registry);
        metrics.fsyncs.inc_by(3);
        metrics.fsync_seconds.observe(0.002);
        let out = text(&registry);
        assert!(out.contains("seedkv_fsyncs_total 3\n"), "{out}");
        assert!(
            out.contains("seedkv_fsync_duration_seconds_count 1\n"),
            "{out}"
        );
        assert!(
            out.contains("# TYPE seedkv_snapshot_sent_bytes counter"),
            "{out}"
        );
        assert!(!out.contains("seedkv_proposals_total 1"), "{out}");
    }

    #[test]
    fn two_nodes_count_apart() {
        let (a, b) = (NodeMetrics::default(), NodeMetrics::default());
        a.proposals.inc();
        assert_eq!(a.proposals.get(), 1);
        assert_eq!(b.proposals.get(), 0);
    }
}
