//! The named scenarios a sweep can run, and what each one does to the cluster.

use std::fmt;
use std::str::FromStr;

/// A fault scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// No faults: the baseline.
    Basic,
    /// Symmetric and one-way partitions, leader isolation, minority/majority splits.
    Partition,
    /// Nodes (the leader included) crash, losing unsynced writes, and restart.
    CrashRestart,
    /// Packet loss and latency spikes.
    LossyNet,
    /// All of the above, interleaved, with membership changes, disk faults and nodes
    /// coming back on blank disks.
    Mixed,
    /// Only membership changes (voters removed and added back, sometimes two at once).
    Membership,
    /// Disk faults: failed writes and fsyncs, fsync stalls, and every node losing power at
    /// once.
    Disk,
    /// Clocks and read leases: processes that stop and resume, leaders cut off while an
    /// impatient operator makes other replicas stand, partitions; every node's clock runs
    /// at its own rate (as in every scenario).
    Clock,
    /// The `mixed` faults while slots move between data groups continuously, the slots of
    /// the workload's keys most of all.
    Migration,
}

/// A kind of fault the nemesis can inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    Partition,
    Crash,
    Lossy,
    /// A write or fsync fails on one node, or one node's fsyncs stall for seconds.
    Disk,
    /// Every node loses power at once and restarts.
    PowerLoss,
    /// A node comes back on a blank disk, with its votes and log gone, while another
    /// follower is cut off and the leader then crashes.
    Amnesia,
    /// Raft's figure 8 (5 nodes or more): the leader's latest entries are truncated on the
    /// leader itself while a copy on a follower can still commit.
    Figure8,
    /// A node stops for a while (SIGSTOP, a long GC) and resumes: its clock ran meanwhile.
    Pause,
    /// A group's leader is cut off from its peers (clients still reach it) while an
    /// operator asks other replicas to stand, again and again, until one does.
    Depose,
}

impl Scenario {
    /// Every scenario with its name.
    pub const ALL: [(Scenario, &'static str); 9] = [
        (Scenario::Basic, "basic"),
        (Scenario::Partition, "partition"),
        (Scenario::CrashRestart, "crash-restart"),
        (Scenario::LossyNet, "lossy-net"),
        (Scenario::Mixed, "mixed"),
        (Scenario::Membership, "membership"),
        (Scenario::Disk, "disk"),
        (Scenario::Clock, "clock"),
        (Scenario::Migration, "migration"),
    ];

    /// The faults this scenario draws from.
    pub fn faults(self) -> &'static [FaultKind] {
        match self {
            Scenario::Basic | Scenario::Membership => &[],
            Scenario::Partition => &[FaultKind::Partition],
            Scenario::CrashRestart => &[FaultKind::Crash],
            Scenario::LossyNet => &[FaultKind::Lossy],
            Scenario::Mixed | Scenario::Migration => &[
                FaultKind::Partition,
                FaultKind::Crash,
                FaultKind::Lossy,
                FaultKind::Disk,
                FaultKind::PowerLoss,
                FaultKind::Amnesia,
                FaultKind::Figure8,
                FaultKind::Pause,
                FaultKind::Depose,
            ],
            Scenario::Disk => &[FaultKind::Disk, FaultKind::PowerLoss],
            Scenario::Clock => &[FaultKind::Pause, FaultKind::Depose, FaultKind::Partition],
        }
    }

    /// Whether an operator changes the membership during the run.
    pub fn changes_membership(self) -> bool {
        matches!(
            self,
            Scenario::Mixed | Scenario::Membership | Scenario::Migration
        )
    }

    /// Whether slots move between data groups during the run.
    pub fn moves_slots(self) -> bool {
        self == Scenario::Migration
    }

    /// Whether faults overlap (two at once, sometimes).
    pub fn overlaps_faults(self) -> bool {
        matches!(self, Scenario::Mixed | Scenario::Migration)
    }

    /// The scenario's name.
    pub fn name(self) -> &'static str {
        Scenario::ALL
            .iter()
            .find(|(s, _)| *s == self)
            .map_or("?", |(_, n)| n)
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Scenario {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Scenario::ALL
            .iter()
            .find(|(_, n)| *n == s)
            .map(|(sc, _)| *sc)
            .ok_or_else(|| {
                let names: Vec<&str> = Scenario::ALL.iter().map(|(_, n)| *n).collect();
                format!(
                    "unknown scenario {s:?}; expected one of {}",
                    names.join(", ")
                )
            })
    }
}
