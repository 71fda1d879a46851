//! One group's leader lease, fed by the node (see `seedkv_core::lease` and docs/LEASES.md).
//!
//! The network layer reports each append a voter accepted, with the time it was sent; the
//! vote service revokes the lease before a higher vote reaches openraft; a leadership offer
//! excludes its target first. A read asks [`GroupLease::check`] for the term of a lease
//! that holds now, reads, and asks [`GroupLease::holds_in`] again before answering. The
//! follower side keeps when it last accepted a leader's append, so that a request to stand
//! (`Admin.Elect`) cannot make it break the refusal it promised.

use std::sync::{Arc, Mutex, MutexGuard};

use openraft::raft::AppendEntriesResponse;
use openraft::{RaftMetrics, ServerState};
use seedkv_core::lease::{LeaseClock, LeaseConfig};
use seedkv_core::{Member, NodeId};

/// Milliseconds of a monotonic clock, counted from some start. The real server reads
/// `CLOCK_BOOTTIME` (which keeps counting while the machine is suspended); the simulator
/// gives each node a clock of its own rate.
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> u64 + Send + Sync>);

impl Clock {
    /// A clock that reads `read_ms`, which must never go back.
    pub fn new(read_ms: impl Fn() -> u64 + Send + Sync + 'static) -> Clock {
        Clock(Arc::new(read_ms))
    }

    /// The runtime's monotonic clock (the simulator's under `cfg(madsim)`), from now.
    pub fn runtime() -> Clock {
        Clock::skewed(0)
    }

    /// The runtime's clock running `skew_ppm` parts per million fast (slow if negative):
    /// how the simulator gives each node a clock rate of its own.
    pub fn skewed(skew_ppm: i64) -> Clock {
        assert!(
            skew_ppm.unsigned_abs() < seedkv_core::lease::PPM,
            "a clock rate of {skew_ppm} ppm off stands still or runs backwards"
        );
        let origin = tokio::time::Instant::now();
        let rate_ppm = (seedkv_core::lease::PPM as i64 + skew_ppm) as u128;
        Clock::new(move || {
            let elapsed_us = origin.elapsed().as_micros();
            let scaled_ms = elapsed_us * rate_ppm / u128::from(seedkv_core::lease::PPM) / 1_000;
            u64::try_from(scaled_ms).unwrap_or(u64::MAX)
        })
    }

    /// The time now, in milliseconds.
    pub fn now_ms(&self) -> u64 {
        (self.0)()
    }
}

/// How a node takes its read leases.
#[derive(Clone)]
pub struct LeaseSettings {
    /// Whether linearizable reads may be served from a lease (`--read-lease`).
    pub read_lease: bool,
    /// The bound on any node's clock rate error (`--max-clock-drift-ppm`).
    pub max_drift_ppm: u64,
    /// Taken off every lease for clock granularity and the time a check takes.
    pub margin_ms: u64,
    /// The node's clock.
    pub clock: Clock,
}

impl Default for LeaseSettings {
    fn default() -> Self {
        LeaseSettings {
            read_lease: true,
            max_drift_ppm: seedkv_core::lease::DEFAULT_MAX_DRIFT_PPM,
            margin_ms: seedkv_core::lease::DEFAULT_LEASE_MARGIN_MS,
            clock: Clock::runtime(),
        }
    }
}

/// The lease of one group on one node, on both sides: as its leader and as a follower.
pub(crate) struct GroupLease {
    me: NodeId,
    clock: Clock,
    /// `None` when read leases are off: nothing is recorded and no read skips its round.
    leader: Option<Mutex<LeaseClock>>,
    /// How long a follower refuses votes after an append it accepted (openraft's
    /// `election_timeout_max`).
    refusal_ms: u64,
    /// When this replica last accepted an append of a leader, on `clock`.
    heard_leader_at_ms: Mutex<Option<u64>>,
}

impl GroupLease {
    pub(crate) fn new(
        me: NodeId,
        clock: Clock,
        config: Option<LeaseConfig>,
        refusal_ms: u64,
    ) -> GroupLease {
        let now_ms = clock.now_ms();
        GroupLease {
            me,
            clock,
            leader: config.map(|config| Mutex::new(LeaseClock::new(config, me))),
            refusal_ms,
            // openraft restores its own refusal window at start (it takes the start as the
            // time of the leader's last word): a replica restarted within a leader's lease
            // may have promised it.
            heard_leader_at_ms: Mutex::new(Some(now_ms)),
        }
    }

    fn leader(&self) -> Option<MutexGuard<'_, LeaseClock>> {
        self.leader.as_ref().map(|clock| {
            clock
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
        })
    }

    pub(crate) fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// `peer` accepted an append of `term` this node sent at `sent_at_ms`.
    pub(crate) fn on_ack(&self, term: u64, peer: NodeId, sent_at_ms: u64) {
        if let Some(mut clock) = self.leader() {
            clock.on_ack(term, peer, sent_at_ms);
        }
    }

    /// A vote request for `candidate` at `term` is about to reach openraft, whose own vote
    /// on this node is of `vote_term`.
    pub(crate) fn on_vote_request(&self, term: u64, candidate: NodeId, vote_term: u64) {
        #[cfg(madsim)]
        if seedkv_core::faults::enabled(seedkv_core::faults::Fault::LeaseKeptOnHigherVote) {
            return;
        }
        if let Some(mut clock) = self.leader() {
            clock.on_vote_request(term, candidate, vote_term);
        }
    }

    /// openraft granted a vote at `term`: whatever this node led meanwhile, no lease
    /// through that term.
    pub(crate) fn on_vote_granted(&self, term: u64) {
        #[cfg(madsim)]
        if seedkv_core::faults::enabled(seedkv_core::faults::Fault::LeaseKeptOnHigherVote) {
            return;
        }
        self.revoke_through(term);
    }

    /// The leadership of `term` is about to be offered to `peer`.
    pub(crate) fn exclude(&self, peer: NodeId, term: u64) {
        if let Some(mut clock) = self.leader() {
            clock.exclude(peer, term);
        }
    }

    /// No lease in `term` or before: another node is about to be asked to take over, or
    /// the node resumed the term at start rather than won it.
    pub(crate) fn revoke_through(&self, term: u64) {
        if let Some(mut clock) = self.leader() {
            clock.revoke_through(term);
        }
    }

    /// The term of a lease this node holds now as the leader `metrics` describe, if it may
    /// serve a read from its applied state: it leads with a committed vote, it applied an
    /// entry of its own term (so every write committed before the term, and every write it
    /// acknowledged, is in its state), and a quorum of each current configuration accepted
    /// an append sent within the lease.
    pub(crate) fn check(&self, metrics: &RaftMetrics<NodeId, Member>) -> Option<u64> {
        let mut clock = self.leader()?;
        let vote = metrics.vote;
        let term = vote.leader_id().get_term();
        let leads = metrics.state == ServerState::Leader
            && vote.is_committed()
            && vote.leader_id().voted_for() == Some(self.me);
        let applied_own_term = metrics
            .last_applied
            .is_some_and(|applied| applied.leader_id.get_term() == term);
        // Two reads may check at once with metrics of different ages: an older term
        // never takes a lease back.
        if !leads || !applied_own_term || term < clock.term() {
            return None;
        }
        let configs = metrics.membership_config.membership().get_joint_config();
        clock.lead(term, configs.clone());
        clock.holds(self.now_ms()).then_some(term)
    }

    /// Whether the lease of `term` still holds now.
    pub(crate) fn holds_in(&self, term: u64) -> bool {
        let now_ms = self.now_ms();
        self.leader()
            .is_some_and(|clock| clock.holds_in(term, now_ms))
    }

    /// The term of a lease that holds now by this node's lease clock alone, whatever its
    /// Raft believes, under the configurations of `metrics` while it still has the vote it
    /// led with: the simulator checks that no other node leads a later term meanwhile.
    pub(crate) fn held_term(&self, metrics: &RaftMetrics<NodeId, Member>) -> Option<u64> {
        let mut clock = self.leader()?;
        let leader_id = metrics.vote.leader_id();
        if leader_id.get_term() == clock.term() && leader_id.voted_for() == Some(self.me) {
            let configs = metrics.membership_config.membership().get_joint_config();
            clock.set_configs(configs.clone());
        }
        clock.holds(self.now_ms()).then(|| clock.term())
    }

    /// The lease clock's state and the time now, for a failure report.
    pub(crate) fn describe(&self) -> String {
        format!(
            "now {} ms: {:?}",
            self.now_ms(),
            self.leader().map(|clock| clock.clone())
        )
    }

    /// This replica accepted an append of its leader now.
    pub(crate) fn heard_leader(&self) {
        let now_ms = self.now_ms();
        let mut heard = self
            .heard_leader_at_ms
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *heard = Some(heard.map_or(now_ms, |at| at.max(now_ms)));
    }

    /// For how many more milliseconds this replica refuses to stand, if it heard a leader
    /// within the refusal window: a leader may count its acknowledgement in a lease.
    pub(crate) fn refusing_for_ms(&self) -> Option<u64> {
        let heard = *self
            .heard_leader_at_ms
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let since_ms = self.now_ms().saturating_sub(heard?);
        (since_ms < self.refusal_ms).then(|| self.refusal_ms - since_ms)
    }
}

/// Whether a follower that answered `response` accepted the leader's vote: then it refuses
/// other candidates for its refusal window (a log conflict is found after the vote is taken).
pub(crate) fn vote_accepted(response: &AppendEntriesResponse<NodeId>) -> bool {
    match response {
        AppendEntriesResponse::Success
        | AppendEntriesResponse::PartialSuccess(_)
        | AppendEntriesResponse::Conflict => true,
        AppendEntriesResponse::HigherVote(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_follower_counts_its_refusal_window_from_the_last_append_or_its_start() {
        let now_ms = Arc::new(std::sync::atomic::AtomicU64::new(5_000));
        let clock = {
            let now_ms = now_ms.clone();
            Clock::new(move || now_ms.load(std::sync::atomic::Ordering::Relaxed))
        };
        let lease = GroupLease::new(7, clock, None, 600);
        assert_eq!(
            lease.refusing_for_ms(),
            Some(600),
            "as openraft, from the start"
        );
        now_ms.store(5_600, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(lease.refusing_for_ms(), None);
        now_ms.store(6_000, std::sync::atomic::Ordering::Relaxed);
        lease.heard_leader();
        now_ms.store(6_100, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(lease.refusing_for_ms(), Some(500));
        assert!(!lease.holds_in(1), "leases off");
    }
}
