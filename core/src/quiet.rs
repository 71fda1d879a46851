//! Quiet groups: an idle group costs no heartbeats.
//!
//! A node hosts many groups, and most are idle most of the time; heartbeating each of them
//! costs every node CPU in proportion to the groups it hosts, though nothing changes. A
//! leader whose group has been idle for [`QUIET_AFTER_MS`], every replica holding its whole
//! log, stops heartbeating the group and instead names it, once per beat, in one message
//! per peer node ("I still lead these groups, at this term, with this log"). A follower that
//! agrees (it voted for that leader at that term and holds the same log) turns its own
//! elections for the group off until [`quiet_lease_ms`] after the last such message; one
//! that does not agree says so, and the leader heartbeats the group again. When the leader
//! stops naming the group (a write came, or it crashed), the followers' leases run out, their
//! elections come back, and an election follows only if no leader heartbeats them.
//!
//! Only liveness rests on this: a follower with its elections off still votes, and Raft's
//! safety never depends on an election firing. The decisions are plain functions here; the
//! node's heartbeat clock wires them (`seedkv_proto::heartbeat`).

use serde::{Deserialize, Serialize};

use crate::NodeId;

/// How long a group must be idle (no new log entry, every replica holding the whole log)
/// before its leader stops heartbeating it.
pub const QUIET_AFTER_MS: u64 = 2_000;

/// Most quiet groups named in one message (a node hosts at most the 1,024 data groups and
/// the meta group).
pub const MAX_QUIET_GROUPS: usize = 1_025;

/// How long after the last quiet message naming a group a follower keeps its elections for
/// the group off: the longest election timeout, so a leader that stops naming it is
/// replaced about as fast as one that stops heartbeating, plus `jitter_ms` (drawn below the
/// shortest election timeout), so the followers of a leader that died do not all stand at
/// once.
pub fn quiet_lease_ms(election_timeout_max_ms: u64, jitter_ms: u64) -> u64 {
    election_timeout_max_ms + jitter_ms
}

/// One group a leader announces quiet: it leads `group` at `term`, and its log ends at
/// `last_log_index`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuietGroup {
    pub group: u32,
    pub term: u64,
    pub last_log_index: Option<u64>,
}

/// What a leader knows of one group it leads, for [`may_go_quiet`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderView {
    /// How long the log has not grown.
    pub idle_ms: u64,
    pub last_log_index: Option<u64>,
    pub last_applied_index: Option<u64>,
    /// The last log index each replica (voters and learners) is known to hold.
    pub matched: Vec<Option<u64>>,
    /// The membership is one configuration, not a joint one.
    pub uniform: bool,
    /// The leader is a voter of that configuration (a leader that removed itself steps
    /// down on openraft's tick, which a quiet group stops).
    pub leader_votes: bool,
}

/// Whether the leader may stop heartbeating the group: idle long enough, everything
/// applied, every replica holding the whole log, and no membership change under way.
pub fn may_go_quiet(view: &LeaderView) -> bool {
    view.idle_ms >= QUIET_AFTER_MS
        && view.uniform
        && view.leader_votes
        && view.last_applied_index == view.last_log_index
        && view.matched.iter().all(|m| *m == view.last_log_index)
}

/// What a follower knows of one group it hosts, for [`follower_agrees`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FollowerView {
    /// The term of the vote it holds, whom the vote is for, and whether that leader was
    /// elected (the vote committed).
    pub vote_term: u64,
    pub voted_for: Option<NodeId>,
    pub vote_committed: bool,
    pub last_log_index: Option<u64>,
    pub last_applied_index: Option<u64>,
    /// It is a follower or a learner (not a leader or a candidate itself).
    pub following: bool,
}

/// Whether a follower agrees that `leader` leads the group as `announced`: it follows the
/// leader it elected at that term, holds the same log, and has applied all of it (so it
/// knows the whole log committed: a follower that restarted may hold entries whose commit
/// only a heartbeat would tell it). Otherwise the leader must heartbeat the group again
/// (the follower lags, restarted without knowing its leader or the commit, or moved on to
/// another term).
pub fn follower_agrees(leader: NodeId, announced: &QuietGroup, mine: &FollowerView) -> bool {
    mine.following
        && mine.vote_committed
        && mine.voted_for == Some(leader)
        && mine.vote_term == announced.term
        && mine.last_log_index == announced.last_log_index
        && mine.last_applied_index == mine.last_log_index
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idle_leader() -> LeaderView {
        LeaderView {
            idle_ms: QUIET_AFTER_MS,
            last_log_index: Some(9),
            last_applied_index: Some(9),
            matched: vec![Some(9), Some(9)],
            uniform: true,
            leader_votes: true,
        }
    }

    #[test]
    fn a_leader_goes_quiet_only_when_idle_and_everyone_holds_everything() {
        assert!(may_go_quiet(&idle_leader()));
        let not_long_enough = LeaderView {
            idle_ms: QUIET_AFTER_MS - 1,
            ..idle_leader()
        };
        assert!(!may_go_quiet(&not_long_enough));
        let lagging = LeaderView {
            matched: vec![Some(9), Some(8)],
            ..idle_leader()
        };
        assert!(!may_go_quiet(&lagging));
        let unknown = LeaderView {
            matched: vec![Some(9), None],
            ..idle_leader()
        };
        assert!(!may_go_quiet(&unknown));
        let unapplied = LeaderView {
            last_applied_index: Some(8),
            ..idle_leader()
        };
        assert!(!may_go_quiet(&unapplied));
        let joint = LeaderView {
            uniform: false,
            ..idle_leader()
        };
        assert!(!may_go_quiet(&joint));
        let removed = LeaderView {
            leader_votes: false,
            ..idle_leader()
        };
        assert!(!may_go_quiet(&removed), "it must step down on its tick");
        let alone = LeaderView {
            matched: Vec::new(),
            ..idle_leader()
        };
        assert!(
            may_go_quiet(&alone),
            "a group of one has no one to heartbeat"
        );
    }

    fn follower() -> FollowerView {
        FollowerView {
            vote_term: 4,
            voted_for: Some(2),
            vote_committed: true,
            last_log_index: Some(9),
            last_applied_index: Some(9),
            following: true,
        }
    }

    #[test]
    fn a_follower_agrees_only_with_the_leader_it_elected_and_the_same_log() {
        let announced = QuietGroup {
            group: 1,
            term: 4,
            last_log_index: Some(9),
        };
        assert!(follower_agrees(2, &announced, &follower()));
        assert!(
            !follower_agrees(3, &announced, &follower()),
            "another leader"
        );
        let newer_term = QuietGroup {
            term: 5,
            ..announced
        };
        assert!(!follower_agrees(2, &newer_term, &follower()));
        let longer_log = QuietGroup {
            last_log_index: Some(10),
            ..announced
        };
        assert!(!follower_agrees(2, &longer_log, &follower()), "it lags");
        let candidate = FollowerView {
            following: false,
            ..follower()
        };
        assert!(!follower_agrees(2, &announced, &candidate));
        let commit_unknown = FollowerView {
            last_applied_index: Some(8),
            ..follower()
        };
        assert!(
            !follower_agrees(2, &announced, &commit_unknown),
            "it holds an entry it does not know committed"
        );
        let uncommitted = FollowerView {
            vote_committed: false,
            ..follower()
        };
        assert!(!follower_agrees(2, &announced, &uncommitted));
    }
}
