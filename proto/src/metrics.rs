//! A node's figures for Prometheus, and its health.
//!
//! Storage and replication count into `seedkv_core::metrics::NodeMetrics` as they work;
//! what Raft knows of each group (term, leader, indexes) and the depth of every queue are
//! read at scrape time by [`GroupCollector`], so an idle node does no work for its metrics.
//! One registry per node (`registry`): nothing global, so simulated nodes in one process
//! keep their own.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use openraft::ServerState;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use seedkv_core::health::{self, DiskView, GroupView};
use seedkv_core::slot_map::META_GROUP;
use seedkv_core::storage::identity::IDENTITY_KEY;
use seedkv_core::storage::MAX_APPENDS_AWAITING_SYNC;
use seedkv_core::{NodeId, Raft};

use crate::node::{Group, Node};
use crate::proposer::MAX_WAITING_WRITES;
use crate::read_index::MAX_WAITING_READS;

/// The prefix of every metric name.
pub const PREFIX: &str = "seedkv";

/// A registry holding `node`'s figures, prefixed `seedkv_`; the caller may add its own
/// (requests served, the disk's size) before encoding it.
pub fn registry(node: &Arc<Node>) -> Registry {
    let mut registry = Registry::with_prefix(PREFIX);
    node.metrics.register(&mut registry);
    registry.register_collector(Box::new(GroupCollector(Arc::downgrade(node))));
    registry
}

/// Counts the leaders `raft` changes to, until it stops: one per new leader, as etcd's
/// `leader_changes_seen` (an election's leaderless moment is not a change). Watches
/// openraft's server metrics, which change with votes, leaders and memberships only, not
/// with every append.
pub(crate) async fn count_leader_changes(raft: Raft, changes: Arc<AtomicU64>) {
    let mut metrics = raft.server_metrics();
    let mut leader = metrics.borrow().current_leader;
    while metrics.changed().await.is_ok() {
        let (now, state) = {
            let m = metrics.borrow();
            (m.current_leader, m.state)
        };
        if state == ServerState::Shutdown {
            return;
        }
        if now.is_some() && now != leader {
            changes.fetch_add(1, Ordering::Relaxed);
        }
        if now.is_some() {
            leader = now;
        }
    }
}

/// What Raft knows of every group hosted here, and the queues' depths, read at scrape time.
#[derive(Debug)]
pub struct GroupCollector(Weak<Node>);

/// One metric family: its name (without prefix), help, type, and a value per group.
struct Rows {
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    values: Vec<(u32, u64)>,
}

impl Collector for GroupCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(node) = self.0.upgrade() else {
            return Ok(());
        };
        let groups = node.groups();
        let mut families = [
            rows("raft_term", "Raft term", MetricType::Gauge),
            rows(
                "raft_leader",
                "The leader's node id as this replica knows it (0: none)",
                MetricType::Gauge,
            ),
            rows(
                "raft_is_leader",
                "1 if this replica leads the group",
                MetricType::Gauge,
            ),
            rows(
                "raft_leader_changes",
                "Leader changes this replica has seen",
                MetricType::Counter,
            ),
            rows(
                "raft_last_log_index",
                "Index of the last entry in the log",
                MetricType::Gauge,
            ),
            rows(
                "raft_commit_index",
                "Index a quorum of every configuration holds (leaders only)",
                MetricType::Gauge,
            ),
            rows(
                "raft_applied_index",
                "Index of the last entry applied",
                MetricType::Gauge,
            ),
            rows(
                "raft_snapshot_index",
                "Index the last snapshot covers",
                MetricType::Gauge,
            ),
            rows(
                "proposal_queue_depth",
                "Writes waiting to be proposed",
                MetricType::Gauge,
            ),
            rows(
                "read_index_queue_depth",
                "Linearizable reads waiting for a read index",
                MetricType::Gauge,
            ),
        ];
        for group in &groups {
            let id = group.id.0;
            let m = group.raft.metrics().borrow().clone();
            let commit = commit_index(node.id(), &m);
            let leader = m.current_leader.unwrap_or(0);
            let mut values = [
                Some(m.current_term),
                Some(leader),
                Some(u64::from(m.state == ServerState::Leader)),
                Some(group.leader_changes.load(Ordering::Relaxed)),
                Some(m.last_log_index.unwrap_or(0)),
                commit,
                Some(m.last_applied.map_or(0, |id| id.index)),
                Some(m.snapshot.map_or(0, |id| id.index)),
                Some(group.proposer.depth() as u64),
                Some(group.read_index.depth() as u64),
            ]
            .into_iter();
            for family in &mut families {
                if let Some(Some(value)) = values.next() {
                    family.values.push((id, value));
                }
            }
        }
        for family in &families {
            encode_per_group(&mut encoder, family)?;
        }
        let singles = [
            (
                "groups",
                "Raft groups hosted on this node, the meta group included",
                groups.len() as u64,
            ),
            (
                "proposal_queue_limit",
                "Writes a group's proposal queue holds before refusing more",
                MAX_WAITING_WRITES as u64,
            ),
            (
                "read_index_queue_limit",
                "Reads a group's read-index queue holds before refusing more",
                MAX_WAITING_READS as u64,
            ),
            (
                "fsync_queue_depth",
                "Appends of every group waiting for an fsync",
                node.syncer.depth() as u64,
            ),
            (
                "fsync_queue_limit",
                "Appends the fsync queue holds before appends wait",
                MAX_APPENDS_AWAITING_SYNC as u64,
            ),
        ];
        for (name, help, value) in singles {
            let help = format!("{help}.");
            let metric = encoder.encode_descriptor(name, &help, None, MetricType::Gauge)?;
            ConstGauge::new(value as i64).encode(metric)?;
        }
        Ok(())
    }
}

fn rows(name: &'static str, help: &'static str, kind: MetricType) -> Rows {
    Rows {
        name,
        help,
        kind,
        values: Vec::new(),
    }
}

fn encode_per_group(encoder: &mut DescriptorEncoder, rows: &Rows) -> Result<(), std::fmt::Error> {
    if rows.values.is_empty() {
        return Ok(());
    }
    let help = format!("{}.", rows.help);
    let mut metric = encoder.encode_descriptor(rows.name, &help, None, rows.kind)?;
    for &(group, value) in &rows.values {
        let labels = [("group", group)];
        let family = metric.encode_family(&labels)?;
        match rows.kind {
            MetricType::Counter => ConstCounter::new(value).encode(family)?,
            _ => ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX)).encode(family)?,
        }
    }
    Ok(())
}

/// The commit index as the leader `me` knows it; `None` on a node that does not lead.
///
/// A leader commits an index a quorum of every configuration holds once an entry of its
/// own term is committed (Raft never commits an older term's entry by counting replicas).
/// So: until an entry of its term is applied, the applied index (a lower bound, exact but
/// for the instant between commit and apply); after, the highest index held by a quorum
/// of every configuration (each such index holds an entry of its term, or lies below one
/// already committed), never below the applied index.
fn commit_index(me: NodeId, m: &openraft::RaftMetrics<NodeId, seedkv_core::Member>) -> Option<u64> {
    if m.state != ServerState::Leader {
        return None;
    }
    let applied = m.last_applied.map_or(0, |id| id.index);
    let own_term_applied = m
        .last_applied
        .is_some_and(|id| id.leader_id.get_term() == m.current_term);
    if !own_term_applied {
        return Some(applied);
    }
    let Some(replication) = m.replication.as_ref() else {
        return Some(applied);
    };
    let matched = |node: NodeId| -> u64 {
        if node == me {
            return m.last_log_index.unwrap_or(0);
        }
        replication
            .get(&node)
            .copied()
            .flatten()
            .map_or(0, |id| id.index)
    };
    let quorum_held = m
        .membership_config
        .membership()
        .get_joint_config()
        .iter()
        .map(|voters| {
            let mut held: Vec<u64> = voters.iter().map(|&v| matched(v)).collect();
            held.sort_unstable_by(|a, b| b.cmp(a));
            // The majority-th highest: every index up to it is held by a majority.
            held.get(voters.len() / 2).copied().unwrap_or(0)
        })
        .min()
        .unwrap_or(0);
    Some(quorum_held.max(applied))
}

/// What the node sees of each group it is a member of: the meta group, and every data
/// group whose membership, as this replica knows it, names the node (as voter or learner).
/// A group opened here by a stale message but never joined, or one the node learned it
/// was removed from, is not the node's to judge.
pub fn group_views(node: &Node) -> Vec<GroupView> {
    let me = node.id();
    node.groups()
        .iter()
        .filter_map(|group: &Arc<Group>| {
            let m = group.raft.metrics().borrow().clone();
            let member = {
                let membership = m.membership_config.membership();
                membership.voter_ids().any(|id| id == me)
                    || membership.learner_ids().any(|id| id == me)
            };
            if group.id != META_GROUP && !member {
                return None;
            }
            Some(GroupView {
                group: group.id,
                leader: m.current_leader,
                stopped: match (&m.running_state, m.state) {
                    (Err(fatal), _) => Some(fatal.to_string()),
                    (Ok(()), ServerState::Shutdown) => Some("shut down".to_string()),
                    _ => None,
                },
            })
        })
        .collect()
}

/// Reads the node's identity row: `Err` says what failed. Blocks on a stalled disk, so a
/// caller that must not block runs it apart.
pub fn read_disk(node: &Node) -> Result<(), String> {
    match node.disk.get(IDENTITY_KEY) {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err("the node's identity row is missing".to_string()),
        Err(err) => Err(format!("a read failed: {err}")),
    }
}

/// The disk as the node sees it, given the outcome of a read.
pub fn disk_view(node: &Node, read: Result<(), String>) -> DiskView {
    DiskView {
        read,
        fsync_running_ms: node
            .syncer
            .fsync_running_for()
            .map(|running| u64::try_from(running.as_millis()).unwrap_or(u64::MAX)),
        fsync_failures: node.metrics.fsync_failures.get(),
    }
}

/// Everything the node sees of its groups and disk, and the problems they add up to (none:
/// healthy). Reads the disk on the calling thread (the simulator's disk never blocks one).
pub fn health(node: &Node) -> (Vec<GroupView>, DiskView, Vec<String>) {
    let groups = group_views(node);
    let disk = disk_view(node, read_disk(node));
    let problems = health::problems(&groups, &disk);
    (groups, disk, problems)
}
