//! Leader leases: a linearizable read with no network round.
//!
//! A read index costs a heartbeat round to a quorum per batch of reads. A leader that knows
//! no other leader can be elected before some moment may instead serve a read from its own
//! applied state until then. The knowledge comes from Raft itself: a follower that accepted
//! an AppendEntries of the leader's vote refuses every vote request for the longest election
//! timeout after it (openraft's `leader_lease`), and does not stand itself for at least that
//! long. So once a quorum of every voting configuration accepted appends the leader *sent*
//! at time `t` (its own clock), no candidate can gather a quorum before `t` plus that
//! timeout, measured on the followers' clocks.
//!
//! Clocks are not trusted to agree, only to run at rates within `max_drift_ppm` of true
//! time: a timeout of `base` on a fast follower lasts at least `base / (1 + ρ)` of real
//! time, and `d` on a slow leader's clock may be `d / (1 - ρ)` of real time, so the leader
//! counts `base · (1 - ρ) / (1 + ρ)`, less a margin for clock granularity. Monotonic clocks
//! only; wall clocks play no part.
//!
//! What could let another leader be elected inside a lease ends it first (the node wires
//! each of these, see `docs/LEASES.md`):
//! - a vote request carrying a vote above the leader's ([`LeaseClock::on_vote_request`],
//!   and [`LeaseClock::revoke_through`] once a vote is granted): the
//!   leader's own vote is not refreshed by its heartbeats, so openraft grants it once old;
//! - a leadership offer, or the hand-over at shutdown ([`LeaseClock::exclude`] the target,
//!   or [`LeaseClock::revoke_through`]): the target elects itself at once, ignoring its own refusal
//!   window, so its acknowledgements stop counting for the rest of the term;
//! - a configuration of one voter other than the leader: openraft lets a lone voter elect
//!   itself on its next tick, so such a configuration never carries a lease;
//! - a change of membership ([`LeaseClock::set_configs`]): the configurations must be the
//!   group's current ones whenever the lease is checked.
//!
//! A process can stop between deciding and reading (a pause, a long GC): the caller checks
//! the lease again *after* reading its state ([`LeaseClock::holds`]), and serves only if it
//! still held then. Everything here is plain data: time comes in as milliseconds of the
//! caller's monotonic clock, nothing is read or awaited.

use std::collections::{BTreeMap, BTreeSet};

use crate::NodeId;

/// Parts per million: the unit of a clock rate bound.
pub const PPM: u64 = 1_000_000;

/// The default bound on how far any node's clock rate may stray from true time: 5%, far
/// beyond a quartz clock's 100 ppm, to cover virtual machines whose clocks are steered.
pub const DEFAULT_MAX_DRIFT_PPM: u64 = 50_000;

/// The default margin subtracted from every lease, for clock granularity and the time a
/// lease check takes.
pub const DEFAULT_LEASE_MARGIN_MS: u64 = 5;

/// Why a lease configuration leaves no usable lease.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseConfigError {
    #[error("a clock drift bound of {ppm} ppm is 100% or more: no clock could be trusted")]
    DriftTooLarge { ppm: u64 },
    #[error(
        "a clock drift bound of {ppm} ppm and a margin of {margin_ms} ms leave a lease of \
         {lease_ms} ms, not longer than the heartbeat interval of {heartbeat_interval_ms} ms: \
         every lease would lapse between two rounds (lower the drift bound or the margin, or \
         turn leases off)"
    )]
    NoLease {
        ppm: u64,
        margin_ms: u64,
        lease_ms: u64,
        heartbeat_interval_ms: u64,
    },
}

/// How long a lease lasts, from the Raft timing and the drift bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseConfig {
    lease_ms: u64,
}

impl LeaseConfig {
    /// The lease of a group whose followers refuse votes for `refusal_ms` after an accepted
    /// append (openraft: the longest election timeout), heartbeated every
    /// `heartbeat_interval_ms`, with clock rates within `max_drift_ppm` and `margin_ms` off.
    pub fn new(
        refusal_ms: u64,
        heartbeat_interval_ms: u64,
        max_drift_ppm: u64,
        margin_ms: u64,
    ) -> Result<LeaseConfig, LeaseConfigError> {
        if max_drift_ppm >= PPM {
            return Err(LeaseConfigError::DriftTooLarge { ppm: max_drift_ppm });
        }
        let shrunk = u128::from(refusal_ms) * u128::from(PPM - max_drift_ppm)
            / u128::from(PPM + max_drift_ppm);
        // Never above `refusal_ms`, so it fits.
        let lease_ms = u64::try_from(shrunk)
            .unwrap_or(refusal_ms)
            .saturating_sub(margin_ms);
        if lease_ms <= heartbeat_interval_ms {
            return Err(LeaseConfigError::NoLease {
                ppm: max_drift_ppm,
                margin_ms,
                lease_ms,
                heartbeat_interval_ms,
            });
        }
        assert!(lease_ms <= refusal_ms, "a lease outlasting the refusal");
        Ok(LeaseConfig { lease_ms })
    }

    /// How long a lease lasts after the send time of the round a quorum accepted.
    pub fn lease_ms(&self) -> u64 {
        self.lease_ms
    }
}

/// What a leader knows about its lease in one term. Fed by the node: the term it leads,
/// its voting configurations, and the send time of each append a voter accepted.
#[derive(Debug, Clone)]
pub struct LeaseClock {
    config: LeaseConfig,
    me: NodeId,
    /// The term led; acknowledgements of any other term are ignored.
    term: u64,
    /// The voting configurations (two while a membership change is joint); a lease needs a
    /// quorum of each.
    configs: Vec<BTreeSet<NodeId>>,
    /// Per voter, the latest send time of an append of `term` it accepted.
    acked_at_ms: BTreeMap<NodeId, u64>,
    /// Voters offered the leadership, with the term they were offered it in: their
    /// acknowledgements of that term or any before it never count.
    excluded: BTreeMap<NodeId, u64>,
    /// No lease for the rest of the term.
    revoked: bool,
    /// No lease in this term or any before it (terms this process resumed rather than won).
    no_lease_through: u64,
}

impl LeaseClock {
    /// A clock for node `me`, holding no lease.
    pub fn new(config: LeaseConfig, me: NodeId) -> LeaseClock {
        LeaseClock {
            config,
            me,
            term: 0,
            configs: Vec::new(),
            acked_at_ms: BTreeMap::new(),
            excluded: BTreeMap::new(),
            revoked: false,
            no_lease_through: 0,
        }
    }

    /// No lease in `term` or any term before it, whatever term this clock has followed so
    /// far: the caller names the term the node leads now, so a revocation made before
    /// the clock learned of that term (no read checked it yet) still holds once it does.
    /// Also how a term resumed at start is refused: a leader restarted in place resumes its
    /// term with no election, and the exclusions it made before the crash were lost with
    /// its memory.
    pub fn revoke_through(&mut self, term: u64) {
        self.no_lease_through = self.no_lease_through.max(term);
        if self.term <= self.no_lease_through {
            self.revoked = true;
            self.acked_at_ms.clear();
        }
    }

    /// The node leads at `term` with voting `configs`. A new term starts from nothing:
    /// acknowledgements, exclusions and revocations belong to one term.
    pub fn lead(&mut self, term: u64, configs: Vec<BTreeSet<NodeId>>) {
        assert!(
            term >= self.term,
            "term went back from {} to {term}",
            self.term
        );
        if term != self.term {
            self.term = term;
            self.acked_at_ms.clear();
            self.excluded.retain(|_, through| *through >= term);
            self.revoked = term <= self.no_lease_through;
        }
        self.set_configs(configs);
    }

    /// The voting configurations are now `configs`: acknowledgements gathered under other
    /// configurations are dropped.
    pub fn set_configs(&mut self, configs: Vec<BTreeSet<NodeId>>) {
        if configs != self.configs {
            self.configs = configs;
            self.acked_at_ms.clear();
        }
    }

    /// `peer` accepted an append of `term` that this node sent at `sent_at_ms`. Responses
    /// may arrive out of order: the latest send time is kept.
    pub fn on_ack(&mut self, term: u64, peer: NodeId, sent_at_ms: u64) {
        let excluded = self
            .excluded
            .get(&peer)
            .is_some_and(|through| *through >= term);
        if term != self.term || self.revoked || excluded {
            return;
        }
        if !self.configs.iter().any(|voters| voters.contains(&peer)) {
            return;
        }
        let at = self.acked_at_ms.entry(peer).or_insert(sent_at_ms);
        *at = (*at).max(sent_at_ms);
    }

    /// The leadership of `term` (the term the node leads now) is being offered to `peer`:
    /// it may stand at once, whatever it accepted, so nothing it accepted in that term
    /// counts, even if this clock has not followed that term yet.
    pub fn exclude(&mut self, peer: NodeId, term: u64) {
        let through = self.excluded.entry(peer).or_insert(term);
        *through = (*through).max(term);
        if self.term <= term {
            self.acked_at_ms.remove(&peer);
        }
    }

    /// A vote request for `candidate` at `term` reached this node, whose own vote is now of
    /// `vote_term` (openraft's). openraft's leader ids are ordered by term, then node: one
    /// above this node's own may be granted once the leader's own vote is old, so it ends
    /// the lease. openraft's vote may be ahead of the term this clock followed (no read
    /// checked the new term yet) or already moved to the candidate's (a higher vote seen
    /// in a reply), so the request is compared with the lower of the two, and ends every
    /// lease up to the higher.
    pub fn on_vote_request(&mut self, term: u64, candidate: NodeId, vote_term: u64) {
        if (term, candidate) > (vote_term.min(self.term), self.me) {
            self.revoke_through(vote_term.max(self.term));
        }
    }

    /// Whether a lease of `term` holds at `now_ms` (see [`LeaseClock::holds`]).
    pub fn holds_in(&self, term: u64, now_ms: u64) -> bool {
        self.term == term && self.holds(now_ms)
    }

    /// When the lease ends on this node's clock, if one is held at all: the send time a
    /// quorum of every configuration accepted, plus the lease.
    pub fn expires_at_ms(&self) -> Option<u64> {
        if self.revoked || self.configs.is_empty() {
            return None;
        }
        let mut earliest: Option<u64> = None;
        for voters in &self.configs {
            let quorum_at = self.quorum_at_ms(voters)?;
            earliest = Some(earliest.map_or(quorum_at, |at| at.min(quorum_at)));
        }
        let quorum_at = earliest?;
        Some(quorum_at.saturating_add(self.config.lease_ms))
    }

    /// Whether the lease holds at `now_ms`. Check it before serving a read locally, and
    /// again after reading the state: serve only if it held both times.
    pub fn holds(&self, now_ms: u64) -> bool {
        self.expires_at_ms().is_some_and(|end| now_ms < end)
    }

    /// The term this clock follows.
    pub fn term(&self) -> u64 {
        self.term
    }

    /// The latest time by which a quorum of `voters` accepted an append: the leader itself
    /// counts as accepting everything it sends.
    fn quorum_at_ms(&self, voters: &BTreeSet<NodeId>) -> Option<u64> {
        if voters.is_empty() {
            return None;
        }
        // A configuration of one voter other than the leader: openraft lets a lone voter
        // elect itself on its next tick, with no refusal window at all.
        if voters.len() == 1 && !voters.contains(&self.me) {
            return None;
        }
        let quorum = voters.len() / 2 + 1;
        let mut times: Vec<u64> = voters
            .iter()
            .filter_map(|id| {
                if *id == self.me {
                    Some(u64::MAX)
                } else {
                    self.acked_at_ms.get(id).copied()
                }
            })
            .collect();
        if times.len() < quorum {
            return None;
        }
        times.sort_unstable_by(|a, b| b.cmp(a));
        let at = times[quorum - 1];
        assert!(
            times.iter().filter(|t| **t >= at).count() >= quorum,
            "a quorum time not reached by a quorum"
        );
        Some(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn set(ids: &[NodeId]) -> BTreeSet<NodeId> {
        ids.iter().copied().collect()
    }

    fn clock(voters: &[NodeId]) -> LeaseClock {
        let config = LeaseConfig::new(600, 100, 0, 0).expect("a lease");
        let mut clock = LeaseClock::new(config, 1);
        clock.lead(3, vec![set(voters)]);
        clock
    }

    #[test]
    fn lease_shrinks_by_the_drift_bound_and_the_margin() {
        assert_eq!(
            LeaseConfig::new(600, 100, 0, 0)
                .expect("a lease")
                .lease_ms(),
            600
        );
        // 600 · 0.95 / 1.05 = 542.86
        assert_eq!(
            LeaseConfig::new(600, 100, 50_000, 5)
                .expect("a lease")
                .lease_ms(),
            537
        );
    }

    #[test]
    fn a_drift_bound_leaving_no_lease_is_refused() {
        assert_eq!(
            LeaseConfig::new(600, 100, PPM, 0),
            Err(LeaseConfigError::DriftTooLarge { ppm: PPM })
        );
        // 600 · 0.5 / 1.5 = 200, not above a 200 ms heartbeat.
        assert!(matches!(
            LeaseConfig::new(600, 200, 500_000, 0),
            Err(LeaseConfigError::NoLease { lease_ms: 200, .. })
        ));
        assert!(LeaseConfig::new(600, 100, 0, 600).is_err());
    }

    #[test]
    fn no_lease_without_a_quorum() {
        let mut clock = clock(&[1, 2, 3, 4, 5]);
        assert_eq!(clock.expires_at_ms(), None);
        clock.on_ack(3, 2, 100);
        assert_eq!(clock.expires_at_ms(), None, "two of five");
        clock.on_ack(3, 3, 80);
        assert_eq!(
            clock.expires_at_ms(),
            Some(680),
            "three of five, the older send"
        );
        assert!(clock.holds(679));
        assert!(!clock.holds(680));
    }

    #[test]
    fn the_latest_send_time_counts() {
        let mut clock = clock(&[1, 2, 3]);
        clock.on_ack(3, 2, 100);
        clock.on_ack(3, 2, 40);
        assert_eq!(clock.expires_at_ms(), Some(700));
        clock.on_ack(3, 3, 150);
        assert_eq!(clock.expires_at_ms(), Some(750));
    }

    #[test]
    fn other_terms_learners_excluded_and_revoked_do_not_count() {
        let mut clock = clock(&[1, 2, 3]);
        clock.on_ack(2, 2, 100);
        clock.on_ack(3, 9, 100);
        assert_eq!(clock.expires_at_ms(), None, "old term, learner");
        clock.on_ack(3, 2, 100);
        clock.exclude(2, 3);
        assert_eq!(clock.expires_at_ms(), None, "offered the leadership");
        clock.on_ack(3, 2, 200);
        assert_eq!(clock.expires_at_ms(), None, "excluded for the term");
        clock.on_ack(3, 3, 200);
        assert_eq!(clock.expires_at_ms(), Some(800));
        clock.revoke_through(3);
        clock.on_ack(3, 3, 300);
        assert_eq!(clock.expires_at_ms(), None, "revoked for the term");
        clock.lead(4, vec![set(&[1, 2, 3])]);
        clock.on_ack(4, 2, 400);
        assert_eq!(
            clock.expires_at_ms(),
            Some(1000),
            "a new term starts afresh"
        );
    }

    #[test]
    fn a_joint_membership_needs_both_quorums_and_a_change_drops_acks() {
        let mut clock = clock(&[1, 2, 3]);
        clock.on_ack(3, 2, 100);
        clock.set_configs(vec![set(&[1, 2, 3]), set(&[1, 4, 5])]);
        assert_eq!(
            clock.expires_at_ms(),
            None,
            "acks under the old configuration"
        );
        clock.on_ack(3, 2, 200);
        assert_eq!(
            clock.expires_at_ms(),
            None,
            "the new configuration has no quorum"
        );
        clock.on_ack(3, 5, 150);
        assert_eq!(clock.expires_at_ms(), Some(750));
    }

    #[test]
    fn a_leader_outside_the_configuration_needs_a_quorum_of_others() {
        let mut clock = clock(&[2, 3, 4]);
        clock.on_ack(3, 2, 100);
        assert_eq!(clock.expires_at_ms(), None);
        clock.on_ack(3, 4, 90);
        assert_eq!(clock.expires_at_ms(), Some(690));
    }

    #[test]
    fn a_higher_vote_revokes_and_a_lower_one_does_not() {
        let mut clock = clock(&[1, 2, 3]);
        clock.on_ack(3, 2, 100);
        clock.on_vote_request(2, 3, 3);
        clock.on_vote_request(3, 1, 3);
        assert!(clock.holds_in(3, 200));
        assert!(!clock.holds_in(4, 200));
        // Same term, a node id above the leader's: openraft orders it above.
        clock.on_vote_request(3, 2, 3);
        assert!(!clock.holds(200));
        clock.on_ack(3, 2, 300);
        assert!(!clock.holds(400), "revoked for the rest of the term");
        clock.lead(4, vec![set(&[1, 2, 3])]);
        clock.on_ack(4, 3, 500);
        assert!(clock.holds(600), "a new term starts afresh");
    }

    #[test]
    fn an_exclusion_or_revocation_made_before_the_clock_followed_the_term_still_holds() {
        // The clock followed term 3; the node now leads term 4, and no read checked it yet.
        let mut clock = clock(&[1, 2, 3]);
        clock.exclude(2, 4);
        clock.lead(4, vec![set(&[1, 2, 3])]);
        clock.on_ack(4, 2, 100);
        assert!(!clock.holds(200), "the target's acknowledgement counted");
        clock.on_ack(4, 3, 100);
        assert!(clock.holds(200), "the other voter's still counts");
        // Term 5 forgets an exclusion of term 4.
        clock.lead(5, vec![set(&[1, 2, 3])]);
        clock.on_ack(5, 2, 300);
        assert!(clock.holds(400));

        let mut clock = self::clock(&[1, 2, 3]);
        clock.revoke_through(4);
        clock.lead(4, vec![set(&[1, 2, 3])]);
        clock.on_ack(4, 2, 100);
        assert!(
            !clock.holds(200),
            "a revocation of term 4 made at term 3 was lost"
        );

        // A vote above openraft's current vote, which the clock has not followed yet.
        let mut clock = self::clock(&[1, 2, 3]);
        clock.on_vote_request(4, 2, 4);
        clock.lead(4, vec![set(&[1, 2, 3])]);
        clock.on_ack(4, 3, 100);
        assert!(!clock.holds(200), "a higher vote at term 4 was lost");
        clock.on_vote_request(4, 0, 4);
        clock.lead(5, vec![set(&[1, 2, 3])]);
        clock.on_ack(5, 3, 100);
        assert!(clock.holds(200), "a lower vote revokes nothing");

        // openraft's vote already moved to the candidate's (a higher vote in a reply) before
        // its request arrived: the lease of the clock's term ends all the same.
        let mut clock = self::clock(&[1, 2, 3]);
        clock.on_ack(3, 2, 100);
        clock.on_vote_request(4, 2, 4);
        assert!(
            !clock.holds(200),
            "a vote openraft already took revoked nothing"
        );
    }

    #[test]
    fn a_resumed_term_carries_no_lease() {
        let mut clock = clock(&[1, 2, 3]);
        clock.revoke_through(5);
        clock.on_ack(3, 2, 100);
        assert!(!clock.holds(200));
        clock.lead(5, vec![set(&[1, 2, 3])]);
        clock.on_ack(5, 2, 100);
        assert!(!clock.holds(200), "the term resumed at start");
        clock.lead(6, vec![set(&[1, 2, 3])]);
        clock.on_ack(6, 2, 100);
        assert!(clock.holds(200), "a term won after the start");
    }

    #[test]
    fn a_lone_voter_other_than_the_leader_gives_no_lease() {
        let mut clock = clock(&[2]);
        clock.on_ack(3, 2, 100);
        assert_eq!(clock.expires_at_ms(), None, "it may elect itself at once");
        clock.set_configs(vec![set(&[1, 2]), set(&[2])]);
        clock.on_ack(3, 2, 100);
        assert_eq!(clock.expires_at_ms(), None, "one side of a joint change");
    }

    proptest! {
        /// The lease starts at a time a quorum of every configuration reached (the leader
        /// counting as always reached), and is never held when some configuration has no
        /// such quorum.
        #[test]
        fn a_lease_rests_on_a_quorum(
            acks in proptest::collection::vec((1u64..8, 0u64..1_000), 0..20),
            voters in proptest::collection::btree_set(1u64..8, 1..6),
        ) {
            let mut clock = clock(&[]);
            clock.set_configs(vec![voters.clone()]);
            for (peer, at) in &acks {
                clock.on_ack(3, *peer, *at);
            }
            let latest = |id: u64| if id == 1 { Some(u64::MAX) } else {
                acks.iter().filter(|(p, _)| *p == id).map(|(_, at)| *at).max()
            };
            let quorum = voters.len() / 2 + 1;
            match clock.expires_at_ms() {
                Some(u64::MAX) => {
                    // Only the leader's own vote is needed: a one-voter group.
                    prop_assert!(voters.contains(&1) && quorum == 1);
                }
                Some(end) => {
                    let start = end - 600;
                    let reached = voters.iter().filter(|id| latest(**id) >= Some(start)).count();
                    prop_assert!(reached >= quorum);
                    let later = voters.iter().filter(|id| latest(**id) > Some(start)).count();
                    prop_assert!(later < quorum, "a later start was possible");
                }
                None => {
                    let heard = voters.iter().filter(|id| latest(**id).is_some()).count();
                    let lone_follower = voters.len() == 1 && !voters.contains(&1);
                    prop_assert!(heard < quorum || lone_follower);
                }
            }
        }
    }
}
