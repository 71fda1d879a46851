//! The fault schedule: what goes wrong, when, drawn from the seed.
//!
//! The nemesis alternates calm and trouble: wait, inject one fault from the scenario's menu,
//! hold it, heal. Crashes never take down more than a minority at once, so the cluster can
//! make progress between faults; partitions and loss may cut anything.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use madsim::rand::{thread_rng, Rng};
use tokio::time::Instant;

use seedkv_io_sim::DiskFault;

use crate::cluster::{SimCluster, FOCUS_GROUP};
use crate::scenario::{FaultKind, Scenario};

/// Shared handle on the cluster for the nemesis and the checker.
pub type SharedCluster = Arc<Mutex<SimCluster>>;

fn lock(cluster: &SharedCluster) -> std::sync::MutexGuard<'_, SimCluster> {
    cluster
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn millis(range: std::ops::Range<u64>) -> Duration {
    Duration::from_millis(thread_rng().gen_range(range))
}

/// Injects faults until `deadline`, reporting each action to `log`; leaves the cluster healed
/// with every node running. In `mixed`, two faults may overlap (a partition with a crash
/// inside it, say), which is where the subtle bugs live.
pub async fn run(
    scenario: Scenario,
    cluster: SharedCluster,
    deadline: Instant,
    log: &mut dyn FnMut(String),
) {
    let menu = scenario.faults();
    if menu.is_empty() {
        return;
    }
    if menu.contains(&FaultKind::Amnesia) && thread_rng().gen_bool(0.3) {
        let down = amnesia_from_bootstrap(&cluster, deadline, log).await;
        let mut c = lock(&cluster);
        c.net.heal();
        for index in &down {
            c.restart(*index);
        }
        log(format!("heal, restart {down:?}"));
    }
    while Instant::now() < deadline {
        tokio::time::sleep(millis(500..2_500)).await;
        let overlap = scenario.overlaps_faults() && thread_rng().gen_bool(0.5);
        let count = if overlap { 2 } else { 1 };
        let mut down = Vec::new();
        for _ in 0..count {
            let kind = menu[thread_rng().gen_range(0..menu.len())];
            down.extend(inject(kind, &cluster, deadline, log).await);
            tokio::time::sleep(millis(0..1_000)).await;
        }
        tokio::time::sleep(millis(500..4_000)).await;
        let mut c = lock(&cluster);
        c.net.heal();
        for index in &down {
            c.restart(*index);
        }
        let rebooted = c.reboot_failed();
        log(format!(
            "heal, restart {down:?}, reboot after disk failure {rebooted:?}"
        ));
    }
    let mut c = lock(&cluster);
    c.net.heal();
    for index in 0..c.len() {
        c.restart(index);
    }
    c.reboot_failed();
}

/// Applies one fault; returns the nodes it left down.
async fn inject(
    kind: FaultKind,
    cluster: &SharedCluster,
    deadline: Instant,
    log: &mut dyn FnMut(String),
) -> Vec<usize> {
    match kind {
        FaultKind::Partition => {
            let action = partition(&mut lock(cluster));
            log(action);
            Vec::new()
        }
        FaultKind::Lossy => {
            let mut c = lock(cluster);
            let action = if thread_rng().gen_bool(0.5) {
                let rate = thread_rng().gen_range(0.05..0.3);
                c.net.set_packet_loss(rate);
                format!("packet loss {rate:.2}")
            } else {
                let spike = thread_rng().gen_range(50..500);
                c.net
                    .set_latency(Duration::from_millis(spike / 2)..Duration::from_millis(spike));
                format!("latency spike {spike} ms")
            };
            log(action);
            Vec::new()
        }
        FaultKind::Crash if thread_rng().gen_bool(0.3) => {
            // A storm: one node after another crashes and comes straight back, often in the
            // middle of an election.
            let until = Instant::now() + millis(1_000..4_000);
            let mut victims = Vec::new();
            while Instant::now() < until {
                let index = thread_rng().gen_range(0..lock(cluster).len());
                {
                    let mut c = lock(cluster);
                    c.kill(index);
                }
                tokio::time::sleep(millis(0..100)).await;
                lock(cluster).restart(index);
                victims.push(index);
                tokio::time::sleep(millis(20..300)).await;
            }
            log(format!("crash storm {victims:?}"));
            Vec::new()
        }
        FaultKind::Crash => {
            // Sometimes aim at a node in the middle of receiving a snapshot: a crash while
            // its staging area fills, or just before or after it switches.
            let receiving = lock(cluster).receiving_snapshot();
            if !receiving.is_empty() && thread_rng().gen_bool(0.5) {
                let index = receiving[thread_rng().gen_range(0..receiving.len())];
                lock(cluster).kill(index);
                log(format!("kill {index} (receiving a snapshot)"));
                return vec![index];
            }
            let victims = crash(&mut lock(cluster));
            log(format!("kill {victims:?}"));
            victims
        }
        FaultKind::Disk => {
            let c = lock(cluster);
            let index = thread_rng().gen_range(0..c.len());
            let action = match thread_rng().gen_range(0..3) {
                0 => {
                    c.fail_disk(index, DiskFault::Write);
                    format!("disk of {index}: next write fails")
                }
                1 => {
                    c.fail_disk(index, DiskFault::Sync);
                    format!("disk of {index}: next fsync fails")
                }
                _ => {
                    let stall = millis(500..3_000);
                    c.stall_disk(index, Instant::now() + stall);
                    format!("disk of {index}: fsyncs stall {} ms", stall.as_millis())
                }
            };
            log(action);
            Vec::new()
        }
        FaultKind::Amnesia => amnesia(cluster, deadline, log).await,
        FaultKind::Figure8 => figure8(cluster, deadline, log).await,
        FaultKind::Pause => {
            let target = {
                let c = lock(cluster);
                let n = c.len();
                // Most often a leader: its lease is what a pause puts to the test.
                match c.leader() {
                    Some(leader) if thread_rng().gen_bool(0.7) => leader,
                    _ => thread_rng().gen_range(0..n),
                }
            };
            let hold = millis(50..2_000);
            lock(cluster).pause(target);
            log(format!("pause {target} for {} ms", hold.as_millis()));
            tokio::time::sleep(hold).await;
            lock(cluster).resume(target);
            log(format!("resume {target}"));
            Vec::new()
        }
        FaultKind::Depose => {
            depose(cluster, log).await;
            Vec::new()
        }
        FaultKind::PowerLoss => {
            // Every node at once: only what each disk made durable survives anywhere.
            let n = lock(cluster).len();
            {
                let mut c = lock(cluster);
                for index in 0..n {
                    c.kill(index);
                }
            }
            tokio::time::sleep(millis(0..500)).await;
            let mut c = lock(cluster);
            for index in 0..n {
                c.restart(index);
            }
            log("power loss: every node".to_string());
            Vec::new()
        }
    }
}

/// A node loses its disk at the worst moment: a follower `cut` is isolated while writes
/// commit on the leader and the node `blank`, then `blank` comes back on an empty disk and
/// the leader crashes. If `blank` counted as the member it was, it would elect `cut`, which
/// lacks the latest acknowledged writes. Returns the crashed leader (restarted at the heal).
/// Staged (see [`stage`]) once every group can spare a voter and every incarnation is
/// recorded (right after bootstrap nothing can tell a blank node from the one it replaces);
/// skipped if that does not come in time, or a node already lost its data.
async fn amnesia(
    cluster: &SharedCluster,
    deadline: Instant,
    log: &mut dyn FnMut(String),
) -> Vec<usize> {
    // The operator replaces lost nodes until the deadline, and restores the cluster after
    // it: the loss must happen while it is still watching.
    let staged = stage(cluster, deadline, Duration::from_secs(5), amnesia_roles).await;
    let (leader, voters) = match staged {
        Ok(roles) => roles,
        Err(missing) => {
            log(format!("amnesia skipped: {missing}"));
            return Vec::new();
        }
    };
    let others: Vec<usize> = voters.into_iter().filter(|&i| i != leader).collect();
    let blank = others[thread_rng().gen_range(0..others.len())];
    let rest: Vec<usize> = others.into_iter().filter(|&i| i != blank).collect();
    let cut = rest[thread_rng().gen_range(0..rest.len())];
    lock(cluster).net.isolate(cut);
    // Writes must commit on the leader and `blank` alone for their loss to show.
    focus_log_moves(cluster, leader, LogWatch::Applied, Duration::from_secs(3)).await;
    tokio::time::sleep(millis(200..1_000)).await;
    lock(cluster).wipe(blank);
    kill_leader_and_heal(cluster, leader).await;
    log(format!(
        "amnesia: {cut} cut off, {blank} back on a blank disk, leader {leader} killed"
    ));
    vec![leader]
}

/// How long a staged fault waits for the cluster to be ready for it.
const STAGING_WAIT: Duration = Duration::from_secs(8);

/// Readies the cluster for a staged fault rather than hoping to find it ready: asks the
/// operators to make every node a voter of every group (they then only add), waits until
/// `ready` accepts the cluster (at most [`STAGING_WAIT`], and only while the fault, which
/// takes `takes`, can end before `deadline`), and holds the operators off from then on
/// (`staged_fault_under_way`, set under the same lock, so no change can start in between).
/// Err: what was still missing.
async fn stage<T>(
    cluster: &SharedCluster,
    deadline: Instant,
    takes: Duration,
    ready: impl Fn(&SimCluster) -> Result<T, &'static str>,
) -> Result<T, &'static str> {
    lock(cluster).wants_every_voter = true;
    let until = Instant::now() + STAGING_WAIT;
    let mut missing = "the end of the load near";
    let staged = loop {
        if Instant::now() + takes > deadline {
            break Err("the end of the load near");
        }
        if Instant::now() > until {
            break Err(missing);
        }
        {
            let mut c = lock(cluster);
            match ready(&c) {
                Ok(roles) => {
                    c.staged_fault_under_way = true;
                    break Ok(roles);
                }
                Err(why) => missing = why,
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    lock(cluster).wants_every_voter = false;
    staged
}

/// The leader and the voters, when a disk can be lost: 3 voters or more in every group (a
/// blank voter is lost for good until the operator replaces it, so the voters must spare
/// one), every incarnation recorded, no membership change under way, and no node already
/// lost; otherwise what is missing.
fn amnesia_roles(c: &SimCluster) -> Result<(usize, Vec<usize>), &'static str> {
    let leader = c.leader().ok_or("no leader")?;
    let view = c.newest_membership().ok_or("no membership")?;
    if c.operator_changes > 0 {
        return Err("a membership change under way");
    }
    if c.lost_data_anywhere() {
        return Err("a node already lost its data");
    }
    // Every group must spare the lost node, not only the one the fault aims at, and none may
    // be changing (a new configuration that needs the lost node could never commit).
    for group in crate::cluster::raft_groups(&c.plan) {
        let view = c
            .newest_membership_of(group)
            .ok_or("a group without a membership")?;
        if view.changing {
            return Err("a membership change under way");
        }
        if view.voters().len() < 3 {
            return Err("fewer than 3 voters");
        }
        if view.members.iter().any(|m| m.incarnation == 0) {
            return Err("an unrecorded incarnation");
        }
    }
    let voters = view.voters();
    if !voters.contains(&leader) {
        return Err("no leader");
    }
    Ok((leader, voters))
}

/// Waits (at most `within`) until `index`'s log of the focus group moves past `from`:
/// `Applied` its applied index (a write committed), `Appended` its last log index.
async fn focus_log_moves(
    cluster: &SharedCluster,
    index: usize,
    watch: LogWatch,
    within: Duration,
) -> bool {
    let read = || {
        let c = lock(cluster);
        let metrics = c.raft(index, FOCUS_GROUP)?.metrics().borrow().clone();
        match watch {
            LogWatch::Applied => metrics.last_applied.map(|id| id.index),
            LogWatch::Appended => metrics.last_log_index,
        }
    };
    let from = read();
    let until = Instant::now() + within;
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(5)).await;
        if read() > from {
            return true;
        }
    }
    false
}

/// Which index of a log [`focus_log_moves`] watches.
#[derive(Clone, Copy)]
enum LogWatch {
    Applied,
    Appended,
}

/// Turns the elections of the focus group on or off at `nodes` (a restarted node starts
/// with them on).
fn set_elections(cluster: &SharedCluster, nodes: &[usize], enabled: bool) {
    let c = lock(cluster);
    for &index in nodes {
        if let Some(node) = c.node(index) {
            node.set_elections(FOCUS_GROUP, enabled);
        }
    }
}

/// The end of an amnesia fault, once a node is back on a blank disk: a moment later the
/// leader crashes and the network heals, so the cut-off node stands for election.
async fn kill_leader_and_heal(cluster: &SharedCluster, leader: usize) {
    tokio::time::sleep(millis(0..1_000)).await;
    let mut c = lock(cluster);
    c.kill(leader);
    c.net.heal();
    c.staged_fault_under_way = false;
}

/// How long the first leader may take to be elected, for a fault that starts with it.
const FIRST_LEADER_WAIT: Duration = Duration::from_secs(5);

/// Amnesia from the first moment: a follower `cut` is isolated as soon as the cluster has
/// its first leader, holding the membership the cluster was bootstrapped with; writes
/// commit on the leader and `blank` meanwhile (and the leader records whatever it did not
/// know of the members), then `blank` comes back on an empty disk and the leader crashes.
/// If `cut`'s bootstrap membership could not tell `blank` from the node it replaces, `cut`
/// wins with `blank`'s vote, without the acknowledged writes. Returns the crashed leader.
async fn amnesia_from_bootstrap(
    cluster: &SharedCluster,
    deadline: Instant,
    log: &mut dyn FnMut(String),
) -> Vec<usize> {
    let elected_by = Instant::now() + FIRST_LEADER_WAIT;
    let leader = loop {
        if let Some(leader) = lock(cluster).leader() {
            break leader;
        }
        if Instant::now() >= elected_by {
            log("amnesia from bootstrap skipped: no leader yet".into());
            return Vec::new();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    // The bootstrap members: a read replica holds no vote to lose.
    let n = lock(cluster).initial();
    if n < 3 || Instant::now() + Duration::from_secs(5) > deadline {
        return Vec::new();
    }
    let others: Vec<usize> = (0..n).filter(|&i| i != leader).collect();
    let cut = others[thread_rng().gen_range(0..others.len())];
    let rest: Vec<usize> = others.into_iter().filter(|&i| i != cut).collect();
    let blank = rest[thread_rng().gen_range(0..rest.len())];
    {
        let mut c = lock(cluster);
        c.net.isolate(cut);
        c.staged_fault_under_way = true;
    }
    tokio::time::sleep(millis(1_500..3_000)).await;
    {
        let mut c = lock(cluster);
        // The harness's own rule for a disk loss: only once the newest membership knows
        // `blank`'s incarnation (the operator can then tell the loss), never across a
        // membership change.
        let settled = c.newest_membership().is_some_and(|view| {
            !view.changing
                && view
                    .members
                    .iter()
                    .any(|m| m.index == blank && m.incarnation != 0)
        });
        let why_not = if !settled {
            Some("its incarnation is not recorded")
        } else if c.operator_changes > 0 {
            Some("the operator is changing the membership")
        } else if c.lost_data_anywhere() {
            Some("a node already lost its data")
        } else if c.leader() != Some(leader) {
            Some("the leader changed")
        } else {
            None
        };
        if let Some(why_not) = why_not {
            c.staged_fault_under_way = false;
            log(format!(
                "amnesia from bootstrap: {cut} cut off; {blank} keeps its disk: {why_not}"
            ));
            return Vec::new();
        }
        c.wipe(blank);
    }
    kill_leader_and_heal(cluster, leader).await;
    log(format!(
        "amnesia from bootstrap: {cut} cut off from the first election, {blank} back on a blank disk, leader {leader} killed"
    ));
    vec![leader]
}

/// Raft's figure 8, aimed at the writes in flight: the leader `old` keeps appending writes
/// that reach one follower `keeper` only (its links to the rest are cut one way), the rest
/// elect a leader `brief` of their own, whose entries reach only `old` and truncate the
/// writes there (each is then refused to its client), then `brief` crashes and `old` is cut
/// off, so that `keeper`, which still holds the truncated writes, wins the next election and
/// commits them. A client told its write was refused must not then count it as never done.
///
/// The cuts follow the votes as they are cast: once a node of the rest votes for a candidate,
/// that candidate's messages to it are dropped, so the vote's answer still arrives but the
/// new leader's first entry (sent the moment it wins) never does. The rest's elections are
/// held until `old` has appended entries past the cuts, so there are writes to truncate.
/// Needs 5 voters or more, all running, and a membership that stays put (see [`stage`]);
/// returns the crashed node (restarted at the heal).
async fn figure8(
    cluster: &SharedCluster,
    deadline: Instant,
    log: &mut dyn FnMut(String),
) -> Vec<usize> {
    // The staging takes a few seconds and needs writes in flight: not when the load is
    // about to stop.
    let (old, old_term, voters) =
        match stage(cluster, deadline, Duration::from_secs(6), figure8_roles).await {
            Ok(roles) => roles,
            Err(missing) => {
                log(format!("figure 8 skipped: {missing}"));
                return Vec::new();
            }
        };
    let others: Vec<usize> = voters.into_iter().filter(|&i| i != old).collect();
    let keeper = others[thread_rng().gen_range(0..others.len())];
    let rest: Vec<usize> = others.into_iter().filter(|&i| i != keeper).collect();
    {
        let mut c = lock(cluster);
        for &r in &rest {
            c.net.cut_one_way(old, r);
            c.net.cut_one_way(r, keeper);
        }
    }
    // The writes to truncate: the rest stand for election only once `old` has appended
    // entries that reach `keeper` alone (writes whose clients wait for an answer).
    set_elections(cluster, &rest, false);
    let appended = focus_log_moves(cluster, old, LogWatch::Appended, Duration::from_secs(3)).await;
    set_elections(cluster, &rest, true);
    // Poll faster than a message crosses the network (1 ms at the least), so that a cut made
    // on seeing a vote lands before the winner's first entry leaves.
    let poll = Duration::from_micros(250);
    let until = Instant::now() + Duration::from_secs(8);
    let brief = loop {
        tokio::time::sleep(poll).await;
        let mut c = lock(cluster);
        let mut leader = None;
        for &voter in &rest {
            let Some(raft) = c.raft(voter, FOCUS_GROUP) else {
                continue;
            };
            let metrics = raft.metrics().borrow().clone();
            if metrics.current_term <= old_term {
                continue;
            }
            if metrics.state == openraft::ServerState::Leader {
                leader = Some(voter);
            }
            let candidate = metrics
                .vote
                .leader_id()
                .voted_for()
                .map(|id| id as usize - 1)
                .filter(|candidate| *candidate != voter && rest.contains(candidate));
            if let Some(candidate) = candidate {
                c.net.cut_one_way(candidate, voter);
            }
        }
        if leader.is_some() || Instant::now() > until {
            break leader;
        }
    };
    let Some(brief) = brief else {
        let mut c = lock(cluster);
        c.net.heal();
        c.staged_fault_under_way = false;
        log(format!(
            "figure 8: the nodes cut from {old} elected no leader"
        ));
        return Vec::new();
    };
    tokio::time::sleep(millis(200..600)).await;
    {
        let mut c = lock(cluster);
        c.kill(brief);
        c.net.heal();
        c.net.isolate(old);
    }
    tokio::time::sleep(millis(500..1_500)).await;
    {
        let mut c = lock(cluster);
        c.net.heal();
        c.staged_fault_under_way = false;
    }
    let writes = if appended {
        "writes"
    } else {
        "no writes (none came)"
    };
    log(format!(
        "figure 8: {old}'s {writes} reached only {keeper}; {brief} led briefly, truncated them on {old}, and was killed"
    ));
    vec![brief]
}

/// The leader, its term and the voters, when figure 8 can be staged: 5 voters or more, all
/// running, and no membership change under way; otherwise what is missing.
fn figure8_roles(c: &SimCluster) -> Result<(usize, u64, Vec<usize>), &'static str> {
    let old = c.leader().ok_or("no leader")?;
    let view = c.newest_membership().ok_or("no membership")?;
    let voters = view.voters();
    if view.changing || c.operator_changes > 0 {
        return Err("a membership change under way");
    }
    if voters.len() < 5 || !voters.contains(&old) {
        return Err("fewer than 5 voters");
    }
    if !voters.iter().all(|&i| c.is_alive(i)) {
        return Err("a voter down");
    }
    let old_term = c
        .raft(old, FOCUS_GROUP)
        .ok_or("no leader")?
        .metrics()
        .borrow()
        .current_term;
    Ok((old, old_term, voters))
}

/// One step of a fault schedule chosen from outside (by a fuzzer, say) instead of drawn from
/// the seed.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedFault {
    /// Wait this long after the previous step.
    pub after_ms: u64,
    /// Then do this.
    pub action: Action,
}

/// A fault the plan can inject. Node indexes are taken modulo the cluster size.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Isolate(usize),
    /// These nodes against the rest.
    Split(Vec<usize>),
    CutOneWay(usize, usize),
    PacketLoss(f64),
    LatencyMs(u64),
    Kill(usize),
    Restart(usize),
    /// Restore every link and restart every node.
    Heal,
}

/// Runs `plan` step by step until it ends or `deadline` passes; leaves the cluster healed with
/// every node running.
pub async fn run_plan(
    plan: &[PlannedFault],
    cluster: SharedCluster,
    deadline: Instant,
    log: &mut dyn FnMut(String),
) {
    for step in plan {
        tokio::time::sleep(Duration::from_millis(step.after_ms)).await;
        if Instant::now() >= deadline {
            break;
        }
        let mut c = lock(&cluster);
        let n = c.len();
        match &step.action {
            Action::Isolate(node) => c.net.isolate(node % n),
            Action::Split(side) => {
                let side: Vec<usize> = side.iter().map(|i| i % n).collect();
                c.net.partition(&side);
            }
            Action::CutOneWay(from, to) => c.net.cut_one_way(from % n, to % n),
            Action::PacketLoss(rate) => c.net.set_packet_loss(*rate),
            Action::LatencyMs(ms) => c
                .net
                .set_latency(Duration::from_millis(ms / 2)..Duration::from_millis(ms + 1)),
            Action::Kill(node) => c.kill(node % n),
            Action::Restart(node) => c.restart(node % n),
            Action::Heal => {
                c.net.heal();
                for index in 0..n {
                    c.restart(index);
                }
            }
        }
        log(format!("plan: {:?}", step.action));
    }
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut c = lock(&cluster);
    c.net.heal();
    for index in 0..c.len() {
        c.restart(index);
    }
}

/// How long the impatient operator of a depose keeps asking replicas to stand.
const DEPOSE_ASK_MS: u64 = 2_000;

/// Cuts a group's leader off from its peers (clients still reach it) and asks the other
/// replicas to stand every few milliseconds until one is elected or the time runs out: an
/// operator forcing a failover. Each replica must refuse while its leader's lease may count
/// on it; an election that comes too early shows up as a lease held by the old leader while
/// the new one leads.
async fn depose(cluster: &SharedCluster, log: &mut dyn FnMut(String)) {
    let picked = {
        let mut c = lock(cluster);
        let groups = crate::cluster::raft_groups(&c.plan);
        let group = groups[thread_rng().gen_range(0..groups.len())];
        let leader = c.leader_of(group);
        let voters = c
            .newest_membership_of(group)
            .map(|view| view.voters())
            .unwrap_or_default();
        if let Some(leader) = leader {
            c.net.isolate(leader);
        }
        leader.map(|leader| (group, leader, voters))
    };
    let Some((group, leader, voters)) = picked else {
        log("depose: no leader".into());
        return;
    };
    let others: Vec<usize> = voters.into_iter().filter(|v| *v != leader).collect();
    if others.is_empty() {
        log(format!("depose group {}: no other voter", group.0));
        return;
    }
    if thread_rng().gen_bool(0.5) {
        hand_over_under_partition(cluster, group, leader, &others, log).await;
        return;
    }
    log(format!("depose group {}: isolate leader {leader}", group.0));
    let until = Instant::now() + Duration::from_millis(DEPOSE_ASK_MS);
    let mut refused = 0u32;
    while Instant::now() < until {
        let target = others[thread_rng().gen_range(0..others.len())];
        let node = lock(cluster).node(target);
        if let Some(node) = node {
            match node.elect(group.0, None).await {
                Ok(()) => {
                    log(format!(
                        "depose group {}: {target} stands after {refused} refusals",
                        group.0
                    ));
                    return;
                }
                Err(_) => refused += 1,
            }
        }
        tokio::time::sleep(millis(2..15)).await;
    }
    log(format!(
        "depose group {}: every request refused ({refused})",
        group.0
    ));
}

/// The leader hands the group over while it has lost touch with every other voter but the
/// target: the others' refusal windows run out (650 ms), the leader excludes the target
/// from its lease and asks it to stand (as the keeper's offer and the shutdown hand-over
/// do), and the leader is then cut off from the target too. The target may win with the
/// others' votes at once: the leader's lease must not count on any of them.
async fn hand_over_under_partition(
    cluster: &SharedCluster,
    group: seedkv_core::GroupId,
    leader: usize,
    others: &[usize],
    log: &mut dyn FnMut(String),
) {
    let target = others[thread_rng().gen_range(0..others.len())];
    {
        let mut c = lock(cluster);
        // The leader was isolated by `depose`: give it back its link to the target only.
        c.net.heal();
        for &other in others {
            if other != target {
                c.net.cut(leader, other);
            }
        }
    }
    log(format!(
        "hand-over under partition, group {}: leader {leader} reaches only {target}",
        group.0
    ));
    tokio::time::sleep(millis(650..900)).await;
    let (old, new) = {
        let c = lock(cluster);
        (c.node(leader), c.node(target))
    };
    let (Some(old), Some(new)) = (old, new) else {
        return;
    };
    let Some(raft) = old.raft_of(group) else {
        return;
    };
    let vote = raft.metrics().borrow().vote;
    if raft.metrics().borrow().state != openraft::ServerState::Leader {
        log(format!(
            "hand-over under partition, group {}: {leader} no longer leads",
            group.0
        ));
        return;
    }
    old.exclude_from_lease(group, new.id());
    let asked = new
        .elect(group.0, Some((old.id(), vote.leader_id().get_term())))
        .await;
    lock(cluster).net.isolate(leader);
    log(format!(
        "hand-over under partition, group {}: {target} asked to stand: {}",
        group.0,
        match asked {
            Ok(()) => "standing".to_string(),
            Err(status) => status.message().to_string(),
        }
    ));
}

fn partition(c: &mut SimCluster) -> String {
    let n = c.len();
    let mut rng = thread_rng();
    let leader = c.leader();
    match rng.gen_range(0..4) {
        0 => {
            let target = leader.unwrap_or_else(|| rng.gen_range(0..n));
            c.net.isolate(target);
            format!("isolate {target} (leader {leader:?})")
        }
        1 => {
            // A minority with the leader, if known, against the majority.
            let minority = (n - 1) / 2;
            let mut side: Vec<usize> = leader.into_iter().collect();
            while side.len() < minority.max(1) {
                let pick = rng.gen_range(0..n);
                if !side.contains(&pick) {
                    side.push(pick);
                }
            }
            c.net.partition(&side);
            format!("split {side:?} | rest")
        }
        2 => {
            let from = rng.gen_range(0..n);
            let to = (from + rng.gen_range(1..n)) % n;
            c.net.cut_one_way(from, to);
            format!("cut one-way {from} -> {to}")
        }
        _ => {
            // Leader loses its outbound links only: it hears others but cannot reach them.
            let from = leader.unwrap_or_else(|| rng.gen_range(0..n));
            for to in 0..n {
                c.net.cut_one_way(from, to);
            }
            format!("mute outbound of {from}")
        }
    }
}

fn crash(c: &mut SimCluster) -> Vec<usize> {
    let n = c.len();
    let max_down = (n - 1) / 2;
    let mut rng = thread_rng();
    let count = rng.gen_range(1..=max_down.max(1));
    let mut victims = Vec::new();
    if rng.gen_bool(0.5) {
        if let Some(leader) = c.leader() {
            victims.push(leader);
        }
    }
    while victims.len() < count {
        let pick = rng.gen_range(0..n);
        if !victims.contains(&pick) {
            victims.push(pick);
        }
    }
    for &index in &victims {
        c.kill(index);
    }
    victims
}
