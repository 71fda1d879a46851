//! The judge of read leases: while a node's lease clock says it holds a lease of some term
//! in a group, no other node may lead that group at a later term.
//!
//! A lease is the leader's claim that no other leader can be elected before it ends. Stale
//! reads are only the symptom, and only when a read happens to fall in the gap; this checks
//! the claim itself, every few milliseconds of simulated time, from each node's own clock
//! (which runs at its own rate) and each node's Raft metrics.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::cluster::{raft_groups, SimCluster};
use crate::nemesis::SharedCluster;

/// How often the leases are checked, in simulated time.
const SAMPLE_MS: u64 = 5;

/// A watch over every group's leases, running beside the workload.
pub struct LeaseWatch {
    violation: Arc<Mutex<Option<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl LeaseWatch {
    /// Starts watching `cluster`.
    pub fn start(cluster: SharedCluster) -> LeaseWatch {
        let violation = Arc::new(Mutex::new(None));
        let task = tokio::spawn({
            let violation = violation.clone();
            async move {
                let started = tokio::time::Instant::now();
                loop {
                    tokio::time::sleep(Duration::from_millis(SAMPLE_MS)).await;
                    let found = {
                        let c = cluster.lock().unwrap_or_else(|p| p.into_inner());
                        check(&c)
                    };
                    if let Some(why) = found {
                        let at_s = started.elapsed().as_secs_f64();
                        *violation.lock().unwrap_or_else(|p| p.into_inner()) =
                            Some(format!("{why} ({at_s:.3} s into the run)"));
                        return;
                    }
                }
            }
        });
        LeaseWatch { violation, task }
    }

    /// Stops watching; the first violation seen, if any.
    pub fn finish(self) -> Option<String> {
        self.task.abort();
        self.violation
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }
}

/// The first group in which a node holds a lease while another leads a later term.
fn check(c: &SimCluster) -> Option<String> {
    for group in raft_groups(&c.plan) {
        let mut held = Vec::new();
        let mut leading = Vec::new();
        for index in 0..c.len() {
            let Some(node) = c.node(index) else {
                continue;
            };
            if let Some(term) = node.lease_term(group) {
                held.push((index, term));
            }
            if let Some(raft) = node.raft_of(group) {
                let metrics = raft.metrics();
                let metrics = metrics.borrow();
                if metrics.state == openraft::ServerState::Leader {
                    leading.push((index, metrics.vote.leader_id().get_term()));
                }
            }
        }
        for (holder, term) in held {
            if let Some((leader, later)) = leading
                .iter()
                .find(|(leader, later)| *leader != holder && *later > term)
            {
                let state = c
                    .node(holder)
                    .and_then(|node| node.describe_lease(group))
                    .unwrap_or_default();
                return Some(format!(
                    "group {}: node {holder} holds a read lease of term {term} while node \
                     {leader} leads term {later} (its lease clock: {state})",
                    group.0
                ));
            }
        }
    }
    None
}
