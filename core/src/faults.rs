//! Switches that break safety on purpose, compiled only into simulation builds.
//!
//! Each one removes a guarantee the design depends on. A simulation sweep with a switch on
//! must fail; that is how we know the harness would notice the real bug.

use std::cell::Cell;

/// A deliberate safety bug.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The disk drops the vote on a crash: a restarted node may vote twice in one term.
    VoteNotPersisted,
    /// The leader acknowledges a write as soon as it is proposed, before it commits.
    AckBeforeCommit,
    /// A linearizable read is served from the local state of whichever node receives it.
    StaleLinearizableRead,
    /// Sessions forget answers: a resent write is applied again.
    DuplicateWrites,
    /// A membership change sets the voters it computed from what its caller read, without
    /// comparing with the membership now (a read-modify-write).
    MembershipWithoutCompare,
    /// A node ignores the incarnation a Raft request names: back on a blank disk, it votes
    /// and acknowledges as the member that had its log.
    BlankDiskVotes,
    /// A write refused after its log entry was truncated is marked as never proposed, and
    /// the client resends it as a new write (a new sequence number), so the session cannot
    /// recognise it: if the truncated copy commits elsewhere, the write applies twice.
    TruncatedWriteResentAsNew,
    /// A leader's read lease is the followers' whole refusal window, with no allowance for
    /// clock drift: a leader whose clock runs slow serves reads after another was elected.
    LeaseWithoutDriftMargin,
    /// A leader keeps its read lease when a vote request above its own vote arrives.
    LeaseKeptOnHigherVote,
    /// A leader restarted in place (openraft resumes its term with no election) takes read
    /// leases in that term, although its state may be behind what it committed.
    LeaseInResumedTerm,
    /// A read replica serves serializable reads as soon as it starts, before it caught up
    /// with what the leaders held: after a restart a client may read older data than before.
    ReplicaReadsBeforeCaughtUp,
    /// A learner back as another incarnation (a diskless replica restarted) is updated in
    /// place rather than removed and added again.
    LearnerReplacedInPlace,
    /// A source group keeps serving a slot after freezing it for a move.
    SourceServesFrozen,
    /// The migration driver records a copy as whole once the source froze the slot, before
    /// the destination applied it: the destination activates the slot without its rows.
    ActivateBeforeCopied,
    /// A group takes a grant older than the epoch it released the slot at (a late grant
    /// from a map before the move).
    StaleEpochAccepted,
}

impl Fault {
    /// Every switch, with its command-line name.
    pub const ALL: [(Fault, &'static str); 15] = [
        (Fault::VoteNotPersisted, "vote-not-persisted"),
        (Fault::AckBeforeCommit, "ack-before-commit"),
        (Fault::StaleLinearizableRead, "stale-linearizable-read"),
        (Fault::DuplicateWrites, "duplicate-writes"),
        (
            Fault::MembershipWithoutCompare,
            "membership-without-compare",
        ),
        (Fault::BlankDiskVotes, "blank-disk-votes"),
        (
            Fault::TruncatedWriteResentAsNew,
            "truncated-write-resent-as-new",
        ),
        (Fault::LeaseWithoutDriftMargin, "lease-without-drift-margin"),
        (Fault::LeaseKeptOnHigherVote, "lease-kept-on-higher-vote"),
        (Fault::LeaseInResumedTerm, "lease-in-resumed-term"),
        (
            Fault::ReplicaReadsBeforeCaughtUp,
            "replica-reads-before-caught-up",
        ),
        (Fault::LearnerReplacedInPlace, "learner-replaced-in-place"),
        (Fault::SourceServesFrozen, "source-serves-frozen"),
        (Fault::ActivateBeforeCopied, "activate-before-copied"),
        (Fault::StaleEpochAccepted, "stale-epoch-accepted"),
    ];

    /// The switch named `name`.
    pub fn from_name(name: &str) -> Option<Fault> {
        Fault::ALL.iter().find(|(_, n)| *n == name).map(|(f, _)| *f)
    }

    fn bit(self) -> u16 {
        match self {
            Fault::VoteNotPersisted => 1,
            Fault::AckBeforeCommit => 2,
            Fault::StaleLinearizableRead => 4,
            Fault::DuplicateWrites => 8,
            Fault::MembershipWithoutCompare => 16,
            Fault::BlankDiskVotes => 32,
            Fault::TruncatedWriteResentAsNew => 64,
            Fault::LeaseWithoutDriftMargin => 128,
            Fault::LeaseKeptOnHigherVote => 256,
            Fault::LeaseInResumedTerm => 512,
            Fault::ReplicaReadsBeforeCaughtUp => 1024,
            Fault::LearnerReplacedInPlace => 2048,
            Fault::SourceServesFrozen => 4096,
            Fault::ActivateBeforeCopied => 8192,
            Fault::StaleEpochAccepted => 16384,
        }
    }
}

thread_local! {
    // The simulator runs every node on one thread, so a thread-local is the whole world.
    static ENABLED: Cell<u16> = const { Cell::new(0) };
}

/// Turns `fault` on for this simulation.
pub fn enable(fault: Fault) {
    ENABLED.with(|bits| bits.set(bits.get() | fault.bit()));
}

/// True if `fault` is on.
pub fn enabled(fault: Fault) -> bool {
    ENABLED.with(|bits| bits.get() & fault.bit() != 0)
}
