//! The operator: membership changes while the cluster is under load and under faults.
//!
//! Every few seconds the operator removes a voter, or adds a removed node back (as a learner
//! first, then as a voter), as `seedkv cluster remove-node` / `add-node` would: it reads the
//! voters from whichever node answers (possibly a stale follower, or a node that was just
//! removed) and makes the change a compare-and-set on what it read. Sometimes two changes run
//! at once, on different nodes, so they race.
//!
//! It keeps a model of the voters from the changes that were acknowledged. When the load
//! ends, the voters the leader holds must equal the model (unless a change's outcome is
//! unknown): a change reported done must have happened, a change refused must not have. Then
//! the operator adds every removed node back, so that every replica can converge.
//!
//! One operator runs per Raft group (the meta group and every data group), each with its own
//! model, so the groups' memberships change independently and race one another.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use madsim::rand::{thread_rng, Rng};
use seedkv_proto::{Client, ClientConfig, ClientError};
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::nemesis::SharedCluster;
use seedkv_core::GroupId;

fn lock(cluster: &SharedCluster) -> std::sync::MutexGuard<'_, crate::cluster::SimCluster> {
    cluster
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What the operator did and found.
#[derive(Debug, Default)]
pub struct OperatorReport {
    /// Every change, in the order they ended, with its outcome.
    pub actions: Vec<String>,
    /// `Some(why)` if the voters disagreed with the acknowledged changes, or the cluster
    /// could not be restored to every node.
    pub failure: Option<String>,
}

/// The voters the acknowledged changes imply. Each change adds or removes one node, so a
/// change whose outcome is unknown leaves only that node's membership unknown, until a later
/// acknowledged change of that node settles it.
struct Model {
    /// The Raft group this operator changes.
    group: GroupId,
    voters: BTreeSet<u64>,
    unknown: BTreeSet<u64>,
    report: OperatorReport,
}

fn client(members: &[(u64, String)]) -> Client {
    let mut config = ClientConfig::new(members.iter().map(|(_, a)| a.clone()).collect());
    config.request_timeout_ms = 2_000;
    config.max_attempts = 4;
    Client::new(config)
}

/// Changes membership until `deadline`, then checks the model and restores every node as a
/// voter (within `restore_within`). `min_voters` bounds removals.
pub async fn run(
    cluster: SharedCluster,
    group: GroupId,
    members: Vec<(u64, String)>,
    deadline: Instant,
    restore_within: Duration,
    min_voters: usize,
) -> OperatorReport {
    let model = Arc::new(Mutex::new(Model {
        group,
        voters: members.iter().map(|(id, _)| *id).collect(),
        unknown: BTreeSet::new(),
        report: OperatorReport::default(),
    }));
    let client = Arc::new(client(&members));
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(thread_rng().gen_range(500..2_500))).await;
        let racing = if thread_rng().gen_bool(0.5) { 2 } else { 1 };
        let mut changes = Vec::new();
        for _ in 0..racing {
            changes.push(tokio::spawn(change(
                client.clone(),
                cluster.clone(),
                members.clone(),
                model.clone(),
                min_voters,
            )));
        }
        for change in changes {
            let _ = change.await;
        }
    }
    let mut model = model.lock().await;
    if let Some(voters) = settled_voters(&client, group, &members, Duration::from_secs(20)).await {
        let unknown = &model.unknown;
        let known = |set: &BTreeSet<u64>| -> BTreeSet<u64> {
            set.iter()
                .filter(|id| !unknown.contains(id))
                .copied()
                .collect()
        };
        if known(&voters) != known(&model.voters) {
            model.report.failure = Some(format!(
                "group {}: voters are {voters:?}, but the acknowledged changes make them {:?} \
                 (unknown for {:?})",
                group.0, model.voters, model.unknown
            ));
        }
    }
    if model.report.failure.is_none() {
        let mut restored = Vec::new();
        if let Err(why) = restore(
            &client,
            group,
            &cluster,
            &members,
            restore_within,
            &mut restored,
        )
        .await
        {
            model.report.failure = Some(why);
        }
        model.report.actions.extend(restored);
    }
    std::mem::take(&mut model.report)
}

/// One change: remove a voter, or add back a node that is not one. Sometimes a removed voter
/// gets a new, blank disk and is added straight back, as the new incarnation it now is (the
/// procedure for replacing a disk; a disk lost while its node is a member is the nemesis's
/// `Amnesia`).
async fn change(
    client: Arc<Client>,
    cluster: SharedCluster,
    members: Vec<(u64, String)>,
    model: Arc<Mutex<Model>>,
    min_voters: usize,
) {
    // As an operator watching `cluster status` would: a node that lost its data is replaced
    // before anything else changes (removing another voter meanwhile could leave a
    // configuration that needs the lost node, which then nothing could change).
    let group = model.lock().await.group;
    let lost = {
        let mut c = lock(&cluster);
        if c.staged_fault_under_way {
            return;
        }
        let lost = c.lost_data(group);
        if lost.is_empty() {
            c.operator_changes += 1;
        }
        lost
    };
    if let Some(lost) = lost.first() {
        replace_lost(
            &client,
            &cluster,
            group,
            &members,
            &model,
            lost.index as u64 + 1,
            lost.voter,
        )
        .await;
        return;
    }
    change_voters(client, cluster.clone(), members, model, min_voters).await;
    lock(&cluster).operator_changes -= 1;
}

/// Replaces node `id`, back on a blank disk: removes it (if a voter), then adds it again as
/// the incarnation it now runs.
async fn replace_lost(
    client: &Client,
    cluster: &SharedCluster,
    group: GroupId,
    members: &[(u64, String)],
    model: &Mutex<Model>,
    id: u64,
    voter: bool,
) {
    if !lock(cluster).operator_busy.insert(id) {
        return;
    }
    let addr = address(members, id);
    let removed = if voter {
        let outcome = client.change_membership(group.0, &[], &[id], &[]).await;
        let removed = outcome.is_ok();
        record(model, "remove (lost its data)", id, &[], 0, outcome).await;
        removed
    } else {
        true
    };
    if removed {
        let outcome = add(client, group, id, &addr, &[]).await;
        record(model, "add (blank disk)", id, &[], 0, outcome).await;
    }
    lock(cluster).operator_busy.remove(&id);
}

/// A change of the voters (see [`change`]).
async fn change_voters(
    client: Arc<Client>,
    cluster: SharedCluster,
    members: Vec<(u64, String)>,
    model: Arc<Mutex<Model>>,
    min_voters: usize,
) {
    // The voters as some node sees them: the basis of the compare-and-set.
    let group = model.lock().await.group;
    let (reader, reader_addr) = &members[thread_rng().gen_range(0..members.len())];
    let Ok(status) = client.group_status(reader_addr, group.0, false).await else {
        return;
    };
    let read: Vec<u64> = status.voters.iter().map(|m| m.id).collect();
    let target = {
        // While the nemesis wants every node a voter, only the others are worth a change.
        let mut c = lock(&cluster);
        let adding_only = c.wants_every_voter;
        let candidates: Vec<u64> = members
            .iter()
            .map(|(id, _)| *id)
            .filter(|id| !c.operator_busy.contains(id))
            .filter(|id| !adding_only || !read.contains(id))
            .collect();
        if candidates.is_empty() {
            return;
        }
        let target = candidates[thread_rng().gen_range(0..candidates.len())];
        c.operator_busy.insert(target);
        target
    };
    let addr = address(&members, target);
    if !read.contains(&target) {
        let outcome = add(&client, group, target, &addr, &read).await;
        record(&model, "add", target, &read, *reader, outcome).await;
    } else if read.len() > min_voters && !lock(&cluster).wants_every_voter {
        let outcome = client
            .change_membership(group.0, &[], &[target], &read)
            .await;
        let removed = outcome.is_ok();
        record(&model, "remove", target, &read, *reader, outcome).await;
        // A disk is replaced only on a node no other group counts as a voter.
        let voter_elsewhere = {
            let c = lock(&cluster);
            crate::cluster::raft_groups(&c.plan)
                .into_iter()
                .filter(|other| *other != group)
                .any(|other| {
                    c.newest_membership_of(other)
                        .is_some_and(|view| view.voters().contains(&(target as usize - 1)))
                })
        };
        if removed && !voter_elsewhere && thread_rng().gen_bool(0.3) {
            // Its disk is replaced, and it joins again, blank, as a new incarnation.
            lock(&cluster).wipe(target as usize - 1);
            let basis: Vec<u64> = read.iter().copied().filter(|v| *v != target).collect();
            let outcome = add(&client, group, target, &addr, &basis).await;
            record(&model, "add (blank disk)", target, &basis, *reader, outcome).await;
        }
    }
    lock(&cluster).operator_busy.remove(&target);
}

/// Adds `target` as a learner, then as a voter, based on the voters `read`.
async fn add(
    client: &Client,
    group: GroupId,
    target: u64,
    addr: &str,
    read: &[u64],
) -> Result<u64, ClientError> {
    client
        .add_learner(group.0, target, addr)
        .await
        .map_err(|err| match err {
            // A learner is not a voter: whatever became of this step, the voters are as they were.
            ClientError::Unknown(message) => ClientError::Unavailable(message),
            other => other,
        })?;
    client
        .change_membership(group.0, &[target], &[], read)
        .await
}

/// Folds the outcome of one change into the model.
async fn record(
    model: &Mutex<Model>,
    verb: &str,
    target: u64,
    read: &[u64],
    reader: u64,
    outcome: Result<u64, ClientError>,
) {
    let mut m = model.lock().await;
    let line = format!(
        "operator of group {}: {verb} {target} based on {read:?} read from {reader}: {outcome:?}",
        m.group.0
    );
    m.report.actions.push(line);
    match outcome {
        Ok(_) => {
            if verb.starts_with("add") {
                m.voters.insert(target);
            } else {
                m.voters.remove(&target);
            }
            m.unknown.remove(&target);
        }
        // The change may or may not have happened.
        Err(ClientError::Unknown(_)) => {
            m.unknown.insert(target);
        }
        Err(_) => {}
    }
}

fn address(members: &[(u64, String)], id: u64) -> String {
    members
        .iter()
        .find(|(member, _)| *member == id)
        .map(|(_, addr)| addr.clone())
        .unwrap_or_default()
}

/// The voters the leader holds once no membership change is half done (within `within`). A
/// change left half done (its leader crashed between its two entries) is finished, as an
/// operator would, by asking for no change.
async fn settled_voters(
    client: &Client,
    group: GroupId,
    members: &[(u64, String)],
    within: Duration,
) -> Option<BTreeSet<u64>> {
    let until = Instant::now() + within;
    while Instant::now() < until {
        let (voters, changing) = leader_voters(client, group, members, within).await?;
        if !changing {
            return Some(voters);
        }
        let _ = client.change_membership(group.0, &[], &[], &[]).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// The voters the leader holds and whether a change is half done, once a leader answers
/// (within `within`).
async fn leader_voters(
    client: &Client,
    group: GroupId,
    members: &[(u64, String)],
    within: Duration,
) -> Option<(BTreeSet<u64>, bool)> {
    let until = Instant::now() + within;
    while Instant::now() < until {
        // Ask every node: a node that was removed, or restarted, may still call itself the
        // leader of an older term (seed 244 read a removed node's stale voters this way).
        // A leader cut off from the rest keeps its role until it hears a higher term: trust
        // only a leader none of whose voters reports a higher term. (A removed node may
        // campaign on at ever higher terms; it is not a voter, so it does not count.)
        let mut statuses = Vec::new();
        for (id, addr) in members {
            if let Ok(status) = client.group_status(addr, group.0, false).await {
                statuses.push((*id, status));
            }
        }
        let trusted = statuses
            .iter()
            .filter(|(_, s)| s.role == "leader")
            .filter(|(_, leader)| {
                statuses.iter().all(|(id, other)| {
                    other.term <= leader.term || !leader.voters.iter().any(|m| m.id == *id)
                })
            })
            .max_by_key(|(_, leader)| leader.term);
        if let Some((_, leader)) = trusted {
            let voters = leader.voters.iter().map(|m| m.id).collect();
            return Some((voters, leader.membership_changing));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    None
}

/// One line per node: its role, term, identity and membership, as its status reports them.
async fn describe_nodes(client: &Client, group: GroupId, members: &[(u64, String)]) -> Vec<String> {
    let mut seen = Vec::new();
    for (id, addr) in members {
        seen.push(match client.group_status(addr, group.0, false).await {
            Ok(s) => format!(
                "{id}: {} term {} leader {} cluster {:x} incarnation {:x} voters {:?} learners {:?} changing {} last {} applied {}",
                s.role,
                s.term,
                s.leader_id,
                s.cluster_id,
                s.incarnation,
                s.voters.iter().map(|m| (m.id, m.incarnation)).collect::<Vec<_>>(),
                s.learners.iter().map(|m| m.id).collect::<Vec<_>>(),
                s.membership_changing,
                s.last_log_index,
                s.applied_index
            ),
            Err(err) => format!("{id}: {err}"),
        });
    }
    seen
}

/// Makes every node a voter again.
async fn restore(
    client: &Client,
    group: GroupId,
    cluster: &SharedCluster,
    members: &[(u64, String)],
    within: Duration,
    log: &mut Vec<String>,
) -> Result<(), String> {
    let all: BTreeSet<u64> = members.iter().map(|(id, _)| *id).collect();
    let until = Instant::now() + within;
    loop {
        let Some(voters) = settled_voters(client, group, members, within).await else {
            let seen = describe_nodes(client, group, members).await;
            return Err(format!(
                "group {}: no leader without a change half done while restoring the membership: {}",
                group.0,
                seen.join("; ")
            ));
        };
        // A voter back on a blank disk is refused by the others until it is removed and
        // added again as the new incarnation it is (a learner is just added again).
        let lost = lock(cluster).lost_data(group);
        if let Some(lost) = lost.first() {
            let id = lost.index as u64 + 1;
            let removed = if lost.voter {
                client.change_membership(group.0, &[], &[id], &[]).await
            } else {
                client.add_learner(group.0, id, &address(members, id)).await
            };
            log.push(format!(
                "operator of group {}: replace {id}, back on a blank disk: {removed:?}",
                group.0
            ));
            tokio::time::sleep(Duration::from_millis(100)).await;
            if Instant::now() > until {
                return Err(format!(
                    "could not replace node {id}, which lost its data, within {} s",
                    within.as_secs()
                ));
            }
            continue;
        }
        let missing: Vec<u64> = all.difference(&voters).copied().collect();
        let Some(&id) = missing.first() else {
            log.push(format!("operator: restored, voters {voters:?}"));
            return Ok(());
        };
        if Instant::now() > until {
            let seen = describe_nodes(client, group, members).await;
            return Err(format!(
                "group {}: could not restore the membership within {} s: voters {voters:?}; {}",
                group.0,
                within.as_secs(),
                seen.join("; ")
            ));
        }
        let addr = address(members, id);
        let learner = client.add_learner(group.0, id, &addr).await;
        let voter = match learner {
            Ok(_) => Some(client.change_membership(group.0, &[id], &[], &[]).await),
            Err(_) => None,
        };
        log.push(format!(
            "operator of group {}: restore {id} (voters {voters:?}): learner {learner:?}, voter {voter:?}",
            group.0
        ));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
