//! Whether a node can serve: the decision behind `GET /health` and `grpc.health.v1`.
//!
//! A node is healthy when every group it hosts knows a leader and runs, and its disk
//! answers: a read returns and no fsync has failed or run past [`MAX_FSYNC_MS`]. The node
//! gathers these views; the verdict is this plain function, so the simulator judges the
//! same words a load balancer reads.

use crate::types::GroupId;
use crate::NodeId;

/// An fsync still running after this long marks the disk stalled (a healthy one takes
/// milliseconds; the Raft log's appends wait behind it).
pub const MAX_FSYNC_MS: u64 = 1_000;

/// What the node sees of one group it hosts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupView {
    pub group: GroupId,
    /// The leader this replica knows of, itself included.
    pub leader: Option<NodeId>,
    /// Why the group's Raft stopped, if it did.
    pub stopped: Option<String>,
}

/// What the node sees of its disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskView {
    /// A read of a known row: `Err` saying what went wrong (it failed, or did not return).
    pub read: Result<(), String>,
    /// How long the fsync now running has run, if one is.
    pub fsync_running_ms: Option<u64>,
    /// fsyncs that failed since the node started (one is enough: fsyncs are never retried).
    pub fsync_failures: u64,
}

/// Every reason the node cannot serve, in a stable order; none means healthy.
pub fn problems(groups: &[GroupView], disk: &DiskView) -> Vec<String> {
    let mut problems = Vec::new();
    if let Err(reason) = &disk.read {
        problems.push(format!("disk: {reason}"));
    }
    if disk.fsync_failures > 0 {
        problems.push(format!(
            "disk: {} fsync(s) failed since the node started",
            disk.fsync_failures
        ));
    }
    if let Some(ms) = disk.fsync_running_ms.filter(|ms| *ms > MAX_FSYNC_MS) {
        problems.push(format!(
            "disk: an fsync has run for {ms} ms (stalled past {MAX_FSYNC_MS} ms)"
        ));
    }
    for group in groups {
        match (&group.stopped, group.leader) {
            (Some(reason), _) => {
                problems.push(format!("group {}: stopped: {reason}", group.group.0))
            }
            (None, None) => problems.push(format!("group {}: no leader known", group.group.0)),
            (None, Some(_)) => {}
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk_ok() -> DiskView {
        DiskView {
            read: Ok(()),
            fsync_running_ms: None,
            fsync_failures: 0,
        }
    }

    fn led(group: u32, leader: Option<NodeId>) -> GroupView {
        GroupView {
            group: GroupId(group),
            leader,
            stopped: None,
        }
    }

    #[test]
    fn every_group_led_and_a_disk_that_answers_is_healthy() {
        let groups = [led(0, Some(1)), led(1, Some(2))];
        assert!(problems(&groups, &disk_ok()).is_empty());
        // A node hosting nothing but answering is healthy too (nothing to lead).
        assert!(problems(&[], &disk_ok()).is_empty());
    }

    #[test]
    fn a_group_without_a_leader_or_stopped_is_named() {
        let mut stopped = led(2, Some(1));
        stopped.stopped = Some("storage error".into());
        let found = problems(&[led(0, Some(1)), led(1, None), stopped], &disk_ok());
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[0].contains("group 1") && found[0].contains("no leader"));
        assert!(found[1].contains("group 2") && found[1].contains("storage error"));
    }

    #[test]
    fn a_disk_that_fails_or_stalls_is_unhealthy_but_a_short_fsync_is_not() {
        let groups = [led(0, Some(1))];
        let mut disk = disk_ok();
        disk.fsync_running_ms = Some(MAX_FSYNC_MS);
        assert!(problems(&groups, &disk).is_empty(), "at the bound: healthy");
        disk.fsync_running_ms = Some(MAX_FSYNC_MS + 1);
        assert_eq!(problems(&groups, &disk).len(), 1);
        let disk = DiskView {
            read: Err("i/o error".into()),
            fsync_running_ms: None,
            fsync_failures: 1,
        };
        let found = problems(&groups, &disk);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found.iter().all(|p| p.starts_with("disk: ")));
    }
}
