//! One seed, end to end: start, load, break, heal, check, fingerprint.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use seedkv_checker::{check_records, Model, Record, Verdict};
use seedkv_core::state::Fnv64;
use seedkv_io_sim::DiskConfig;
use seedkv_proto::trace::{TraceEvent, Tracer};
use seedkv_proto::{Client, ClientConfig};
use tokio::time::Instant;

use crate::cluster::{initialized, raft_groups, SimCluster, FOCUS_GROUP};
use crate::lease_watch::LeaseWatch;
use crate::nemesis::{self, PlannedFault, SharedCluster};
use crate::operator;
use crate::scenario::Scenario;
use crate::workload::{self, History, WorkloadConfig};
use seedkv_core::slot::Slot;
use seedkv_core::GroupId;

/// What to run.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub scenario: Scenario,
    pub nodes: usize,
    /// Data groups besides the meta group.
    pub groups: u32,
    /// Replicas per data group (0: every node).
    pub replicas: u32,
    /// Read replicas (learners of every group) beside the `nodes` members.
    pub read_replicas: usize,
    pub workload: WorkloadConfig,
    /// Bound on reaching convergence after the faults end (virtual time).
    pub converge_timeout: Duration,
    /// Print every nemesis action as it happens.
    pub verbose: bool,
    /// A fault schedule to follow instead of the scenario's random one.
    pub plan: Option<Vec<PlannedFault>>,
}

/// What a run found.
#[derive(Debug, Clone)]
pub struct RunReport {
    /// Operations in the history.
    pub ops: usize,
    /// Operations with an unknown outcome.
    pub unknown_ops: usize,
    /// Virtual seconds the run took.
    pub virtual_s: f64,
    /// Hash of the whole trace: every Raft message delivered or dropped, every fault, every
    /// client result, the final states.
    pub fingerprint: u64,
    /// Raft messages delivered and dropped.
    pub messages: (u64, u64),
    /// `None` if the run passed, else why it failed.
    pub failure: Option<String>,
    /// The recorded history.
    pub history: Vec<Record>,
}

#[derive(Default)]
struct Trace {
    hash: Fnv64,
    delivered: u64,
    dropped: u64,
}

impl Trace {
    fn record(&mut self, line: &str) {
        self.hash.write(line.as_bytes());
        self.hash.write(b"\n");
    }

    /// Records `event` as [`Trace::record`] records its `Debug` text, without building the
    /// text: the formatter writes straight into the hash.
    fn record_debug(&mut self, event: &impl std::fmt::Debug) {
        struct Into<'a>(&'a mut Fnv64);
        impl std::fmt::Write for Into<'_> {
            fn write_str(&mut self, s: &str) -> std::fmt::Result {
                self.0.write(s.as_bytes());
                Ok(())
            }
        }
        // Writing into a hash cannot fail.
        let _ = std::fmt::write(&mut Into(&mut self.hash), format_args!("{event:?}"));
        self.hash.write(b"\n");
    }
}

/// Runs one simulated scenario in the current madsim runtime.
pub async fn run(config: RunConfig) -> RunReport {
    let start = Instant::now();
    let trace = Arc::new(Mutex::new(Trace::default()));
    let tracer: Tracer = {
        let trace = trace.clone();
        Arc::new(move |event: TraceEvent| {
            let mut t = trace.lock().unwrap_or_else(|p| p.into_inner());
            let TraceEvent::Raft { delivered, .. } = &event;
            if *delivered {
                t.delivered += 1;
            } else {
                t.dropped += 1;
            }
            t.record_debug(&event);
        })
    };
    let mut note = {
        let trace = trace.clone();
        let verbose = config.verbose;
        move |line: String| {
            if verbose {
                eprintln!("[{:>8.3}s] {line}", start.elapsed().as_secs_f64());
            }
            trace
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .record(&line);
        }
    };

    let cluster = SimCluster::start(
        config.nodes,
        config.read_replicas,
        config.groups,
        config.replicas,
        tracer,
        DiskConfig::default(),
    );
    let members = cluster.members();
    let operator_members = members.clone();
    let groups = config.groups;
    let replicas = match config.replicas {
        0 => u32::try_from(config.nodes).unwrap_or(u32::MAX),
        r => r,
    };
    let endpoints = cluster.addrs();
    let replica_addrs = cluster.replica_addrs();
    let cluster: SharedCluster = Arc::new(Mutex::new(cluster));
    let lease_watch = LeaseWatch::start(cluster.clone());
    let handle = madsim::runtime::Handle::current();
    let client_host = extra_host(&handle, "clients", 1);

    // Bootstrap: initialize through node 1, retrying while the nodes come up.
    let init_ok = client_host
        .spawn({
            let endpoints = endpoints.clone();
            async move {
                let client = Client::new(ClientConfig::new(endpoints.clone()));
                for _ in 0..50 {
                    if initialized(client.init(&endpoints[0], &members, groups, replicas).await) {
                        return true;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                false
            }
        })
        .await
        .unwrap_or(false);
    if !init_ok {
        return failed(start, &trace, "cluster could not be initialized".into());
    }
    note("initialized".into());

    // Load and faults, side by side.
    let history: History = Arc::new(Mutex::new(Vec::new()));
    let deadline = Instant::now() + config.workload.duration;
    let mut clients = Vec::new();
    let mut shared = None;
    for client_id in 0..config.workload.clients as u64 {
        // Each pair of workload clients shares one client (one session); each pair starts at
        // a different node.
        let client = match shared.take() {
            Some(client) => client,
            None => {
                let mut endpoints = endpoints.clone();
                let first = (client_id / 2) as usize % endpoints.len();
                endpoints.rotate_left(first);
                let client = workload::client(endpoints);
                shared = Some(client.clone());
                client
            }
        };
        clients.push(client_host.spawn(workload::run_client(
            client_id,
            client,
            config.workload.clone(),
            start,
            deadline,
            history.clone(),
        )));
    }
    // One reader per read replica, beside the workload: a replica never goes back in time.
    let replica_readers: Vec<_> = replica_addrs
        .iter()
        .map(|addr| {
            client_host.spawn(workload::read_from_replica(
                addr.clone(),
                config.workload.keys,
                deadline,
            ))
        })
        .collect();
    // Membership changes come from an operator of their own (not with a fuzzer's plan).
    // One operator per Raft group, all on one host.
    let operator = (config.scenario.changes_membership() && config.plan.is_none()).then(|| {
        // Each group's operator works on its replicas: every node for the meta group.
        let groups: Vec<(GroupId, Vec<(u64, String)>)> = {
            let c = lock_cluster(&cluster);
            raft_groups(&c.plan)
                .into_iter()
                .map(|group| {
                    let members = match c.plan.groups().get(&group) {
                        Some(info) => operator_members
                            .iter()
                            .filter(|(id, _)| info.replicas.contains(id))
                            .cloned()
                            .collect(),
                        None => operator_members.clone(),
                    };
                    (group, members)
                })
                .collect()
        };
        let cluster = cluster.clone();
        extra_host(&handle, "operator", 2).spawn(async move {
            let runs = groups.into_iter().map(|(group, members)| {
                let min_voters = members.len() / 2 + 1;
                operator::run(
                    cluster.clone(),
                    group,
                    members,
                    deadline,
                    Duration::from_secs(60),
                    min_voters,
                )
            });
            let mut merged = operator::OperatorReport::default();
            for report in futures::future::join_all(runs).await {
                merged.actions.extend(report.actions);
                merged.failure = merged.failure.or(report.failure);
            }
            merged
        })
    });
    // Slots move from their own operator too, in the `migration` scenario.
    let mover = (config.scenario.moves_slots() && config.plan.is_none()).then(|| {
        extra_host(&handle, "mover", 3).spawn(crate::mover::run(
            cluster.clone(),
            endpoints.clone(),
            config.workload.keys,
            deadline,
        ))
    });
    match &config.plan {
        Some(plan) => nemesis::run_plan(plan, cluster.clone(), deadline, &mut note).await,
        None => nemesis::run(config.scenario, cluster.clone(), deadline, &mut note).await,
    }
    for client in clients {
        // A client that outlives its deadline by a whole retry budget is stuck: a bug.
        let budget = deadline.saturating_duration_since(Instant::now()) + Duration::from_secs(30);
        if tokio::time::timeout(budget, client).await.is_err() {
            return failed(
                start,
                &trace,
                "a client did not finish within 30 s of its deadline".into(),
            );
        }
    }
    if let Some(operator) = operator {
        let budget = deadline.saturating_duration_since(Instant::now()) + Duration::from_secs(120);
        match tokio::time::timeout(budget, operator).await {
            Ok(Ok(done)) => {
                for action in done.actions {
                    note(action);
                }
                if let Some(why) = done.failure {
                    return failed(start, &trace, format!("membership: {why}"));
                }
            }
            _ => {
                return failed(
                    start,
                    &trace,
                    "the operator did not finish within 120 s of the deadline".into(),
                )
            }
        }
    }
    if let Some(mover) = mover {
        // An added group's operator restores its membership after the deadline too.
        let budget = deadline.saturating_duration_since(Instant::now()) + Duration::from_secs(120);
        match tokio::time::timeout(budget, mover).await {
            Ok(Ok(done)) => {
                note(format!(
                    "slot mover: {} moves recorded, {} requests refused, groups added {:?}, \
                     {} rebalances",
                    done.started, done.refused, done.added, done.rebalances
                ));
                for action in done.operator.actions {
                    note(action);
                }
                if let Some(why) = done.operator.failure {
                    return failed(
                        start,
                        &trace,
                        format!("membership of an added group: {why}"),
                    );
                }
            }
            _ => {
                return failed(
                    start,
                    &trace,
                    "the slot mover did not finish within 120 s of the deadline".into(),
                )
            }
        }
    }
    for (reader, addr) in replica_readers.into_iter().zip(&replica_addrs) {
        let budget = deadline.saturating_duration_since(Instant::now()) + Duration::from_secs(30);
        match tokio::time::timeout(budget, reader).await {
            Ok(Ok(Ok(served))) => note(format!("read replica {addr} served {served} reads")),
            Ok(Ok(Err(why))) => return failed(start, &trace, why),
            _ => {
                return failed(
                    start,
                    &trace,
                    "a read replica's reader did not finish within 30 s of its deadline".into(),
                )
            }
        }
    }
    note("workload done; healed".into());

    // Every slot move finishes (or aborts) once the faults are healed.
    if config.scenario.moves_slots() {
        let settled = client_host
            .spawn(crate::mover::settle(
                endpoints.clone(),
                Duration::from_secs(120),
            ))
            .await;
        match settled {
            Ok(Ok(())) => note("every slot move finished".into()),
            Ok(Err(why)) => return failed(start, &trace, why),
            Err(_) => return failed(start, &trace, "the slot move check stopped".into()),
        }
    }
    // Convergence: every replica applies the leader's whole log and holds the same state.
    let mut converged = converge(&cluster, config.converge_timeout).await;
    if converged.is_ok() {
        let c = lock_cluster(&cluster);
        if let Err(why) = rows_only_where_owned(&c) {
            converged = Err(why);
        }
    }
    if converged.is_ok() {
        let reader = workload::client(endpoints.clone());
        let reads = client_host.spawn(workload::read_every_key(
            reader,
            config.workload.keys,
            start,
            history.clone(),
        ));
        if tokio::time::timeout(Duration::from_secs(120), reads)
            .await
            .is_err()
        {
            return failed(
                start,
                &trace,
                "the final reads did not finish within 120 s".into(),
            );
        }
        note("read every key".into());
        if let Err(why) = every_group_serves(&cluster, &endpoints, &client_host).await {
            let history = std::mem::take(&mut *history.lock().unwrap_or_else(|p| p.into_inner()));
            let mut report = finish(start, &trace, history);
            report.failure = Some(why);
            return report;
        }
        note("every group served a write".into());
        if let Err(why) = every_voter_leads(&cluster, &client_host).await {
            let history = std::mem::take(&mut *history.lock().unwrap_or_else(|p| p.into_inner()));
            let mut report = finish(start, &trace, history);
            report.failure = Some(why);
            return report;
        }
        note("every voter led and wrote".into());
        if let Err(why) = every_node_healthy(&cluster).await {
            let history = std::mem::take(&mut *history.lock().unwrap_or_else(|p| p.into_inner()));
            let mut report = finish(start, &trace, history);
            report.failure = Some(why);
            return report;
        }
        note("every node reported healthy".into());
        match quiet_failover(&cluster, &endpoints, &client_host).await {
            Ok(note_text) => note(note_text),
            Err(why) => {
                let history =
                    std::mem::take(&mut *history.lock().unwrap_or_else(|p| p.into_inner()));
                let mut report = finish(start, &trace, history);
                report.failure = Some(why);
                return report;
            }
        }
    }
    let history = std::mem::take(&mut *history.lock().unwrap_or_else(|p| p.into_inner()));
    let mut report = finish(start, &trace, history);
    match converged {
        Ok(states) => note(format!("converged {states:?}")),
        Err(why) => {
            report.failure = Some(why);
        }
    }
    if let Some(why) = lease_watch.finish() {
        report.failure = report.failure.or(Some(why));
    }
    if report.failure.is_none() {
        match check_records(&report.history, Model::Kv) {
            Ok(check) => match check.verdict {
                Verdict::Linearizable => {}
                Verdict::NotLinearizable => {
                    report.failure = Some(format!(
                        "history is not linearizable (keys {})",
                        check.failing_partition.unwrap_or_default()
                    ))
                }
                // Never a pass: a history too hard to decide is a run to look at.
                Verdict::Unknown => {
                    report.failure = Some(format!(
                        "history undecided: {} reached (keys {})",
                        check.limit.map(|l| l.to_string()).unwrap_or_default(),
                        check.undecided.join(" | ")
                    ))
                }
            },
            Err(err) => report.failure = Some(format!("history is malformed: {err}")),
        }
    }
    // Shut the nodes down so no task outlives the run.
    let running: Vec<_> = {
        let c = cluster.lock().unwrap_or_else(|p| p.into_inner());
        (0..c.len()).filter_map(|index| c.node(index)).collect()
    };
    for node in running {
        node.shutdown().await;
    }
    let mut t = trace.lock().unwrap_or_else(|p| p.into_inner());
    t.record(&format!("failure={:?}", report.failure));
    report.fingerprint = t.hash.finish();
    report
}

/// Each hash slot is owned by exactly one group, as the applied states of every replica say:
/// no node holds two groups owning one slot, and no two groups anywhere own it (a group's
/// grant lost in a snapshot, or taken twice, fails here).
fn one_owner_per_slot(cluster: &SimCluster) -> Result<(), String> {
    let mut owners: Vec<std::collections::BTreeSet<GroupId>> =
        vec![Default::default(); usize::from(seedkv_core::slot::SLOT_COUNT)];
    for index in 0..cluster.len() {
        let Some(node) = cluster.node(index) else {
            continue;
        };
        let states = node.group_states();
        for slot in Slot::all() {
            let here: Vec<GroupId> = states
                .iter()
                .filter(|(_, state)| state.owns(slot))
                .map(|(group, _)| *group)
                .collect();
            if here.len() > 1 {
                return Err(format!(
                    "node {}: {slot} is owned by groups {here:?}, not by one",
                    index + 1
                ));
            }
            owners[usize::from(slot.get())].extend(here);
        }
    }
    for (slot, groups) in Slot::all().zip(&owners) {
        if groups.len() != 1 {
            return Err(format!(
                "{slot} is owned by groups {groups:?} across the nodes, not by exactly one"
            ));
        }
    }
    Ok(())
}

/// After the moves: no replica holds rows of a slot its group does not own (a release or
/// a dropped copy left undone), nothing is half moved (frozen, copied in), and the meta
/// group records no move.
fn rows_only_where_owned(cluster: &SimCluster) -> Result<(), String> {
    for index in 0..cluster.len() {
        let Some(node) = cluster.node(index) else {
            continue;
        };
        for (group, state) in node.group_states() {
            let shard = state.shard();
            if group == seedkv_core::slot_map::META_GROUP {
                if let Some(moving) = shard.migrations.iter().next() {
                    return Err(format!(
                        "node {}: the meta group still records {moving:?}",
                        index + 1
                    ));
                }
                continue;
            }
            if !shard.moves.frozen.is_empty() || !shard.moves.incoming.is_empty() {
                return Err(format!(
                    "node {}: group {} is left mid-move: frozen {:?}, copying in {:?}",
                    index + 1,
                    group.0,
                    shard.moves.frozen.keys().collect::<Vec<_>>(),
                    shard.moves.incoming.keys().collect::<Vec<_>>()
                ));
            }
            let slots = state
                .row_slots()
                .map_err(|err| format!("node {}: reading rows: {err}", index + 1))?;
            if let Some(slot) = slots.iter().find(|&&slot| !shard.owned.owns(slot)) {
                return Err(format!(
                    "node {}: group {} holds rows of {slot}, which it does not own",
                    index + 1,
                    group.0
                ));
            }
        }
    }
    Ok(())
}

/// Every Raft group converges: each replica applies the leader's whole log, and replicas
/// at the same index hold the same state. Returns `(group, node, applied, digest)`.
async fn converge(
    cluster: &SharedCluster,
    bound: Duration,
) -> Result<Vec<(u32, usize, u64, u64)>, String> {
    let give_up = Instant::now() + bound;
    let groups = {
        let c = cluster.lock().unwrap_or_else(|p| p.into_inner());
        c.live_groups()
    };
    // A cluster healed just after it bootstrapped may still be setting its first slot map
    // and taking the grants (each one more entry): converge again until every slot has its
    // owner, within the same bound.
    let mut owner_error = None;
    loop {
        if let Some(why) = owner_error.take().filter(|_| Instant::now() >= give_up) {
            return Err(why);
        }
        let mut all = Vec::new();
        for group in &groups {
            let applied = converge_group(cluster, *group, give_up, bound).await?;
            all.extend(applied.into_iter().map(|(i, a, d)| (group.0, i, a, d)));
        }
        let owners = {
            let c = cluster.lock().unwrap_or_else(|p| p.into_inner());
            one_owner_per_slot(&c)
        };
        match owners {
            Ok(()) => return Ok(all),
            Err(why) if Instant::now() >= give_up => return Err(why),
            Err(why) => {
                owner_error = Some(why);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn converge_group(
    cluster: &SharedCluster,
    group: GroupId,
    give_up: Instant,
    bound: Duration,
) -> Result<Vec<(usize, u64, u64)>, String> {
    let mut last = Vec::new();
    while Instant::now() < give_up {
        {
            let c = cluster.lock().unwrap_or_else(|p| p.into_inner());
            let target = c.leader_last_log(group);
            // Digests read every row: only once every node has reached the leader's log.
            let indexes = c.applied_indexes(group);
            let expected = c.members_of(group).len();
            let ready = expected > 0
                && indexes.len() == expected
                && target.is_some_and(|t| indexes.iter().all(|(_, index)| *index == t));
            let applied = if ready {
                c.applied(group)
            } else {
                indexes
                    .into_iter()
                    .map(|(i, index)| (i, index, 0))
                    .collect()
            };
            if let Some(target) = target.filter(|_| ready) {
                let all_up = applied.len() == expected;
                let caught_up = applied.iter().all(|(_, index, _)| *index == target);
                let same = applied.windows(2).all(|w| w[0].2 == w[1].2);
                if all_up && caught_up && same {
                    return Ok(applied);
                }
                // Equal applied index with different digests is divergence, not lag.
                let first = applied.first().copied();
                if caught_up {
                    if let Some((_, _, digest)) = first {
                        if applied.iter().any(|(_, _, d)| *d != digest) {
                            return Err(format!(
                                "replicas of group {} diverged at the same index: {applied:?}",
                                group.0
                            ));
                        }
                    }
                }
            }
            last = applied;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!(
        "replicas of group {} did not converge within {} s: (node, applied, digest) = {last:?}",
        group.0,
        bound.as_secs()
    ))
}

/// How long one voter may take to win an election it was asked to start.
const ELECT_WAIT: Duration = Duration::from_secs(3);
/// How long a voter may take to catch up with the leader before it stands.
const CATCH_UP_WAIT: Duration = Duration::from_secs(10);
/// Elections one voter is asked to start before it is judged unable to lead.
const ELECT_TRIES: usize = 5;
/// How long the write through a new leader may take.
const LEADER_WRITE_WAIT: Duration = Duration::from_secs(30);

/// Liveness once the faults are over: every voter in turn is made leader and must commit a
/// write through its own `Kv` service, then serve a linearizable read of it. A node whose write path the faults left wedged (a
/// proposal never answered, a queue never drained) fails the run here, where a workload that
/// happened to find another leader would never notice.
async fn every_voter_leads(
    cluster: &SharedCluster,
    client_host: &madsim::runtime::NodeHandle,
) -> Result<(), String> {
    let (voters, addrs, tag) = {
        let c = cluster.lock().unwrap_or_else(|p| p.into_inner());
        let view = c
            .newest_membership()
            .ok_or_else(|| "no node holds a membership".to_string())?;
        let voters = view.voters();
        // A hash tag whose slot the focus group owns, so the writes go through its leader.
        let tag = (0u32..)
            .map(|n| format!("liveness{n}"))
            .take(100_000)
            .find(|tag| c.plan.owner(Slot::of(tag.as_bytes())).group == FOCUS_GROUP)
            .ok_or_else(|| "no hash tag falls in the focus group".to_string())?;
        (voters, c.addrs(), tag)
    };
    let raft = |node: &seedkv_proto::node::Node| node.raft_of(FOCUS_GROUP);
    let running = |cluster: &SharedCluster| -> Vec<Arc<seedkv_proto::node::Node>> {
        let c = cluster.lock().unwrap_or_else(|p| p.into_inner());
        (0..c.len()).filter_map(|i| c.node(i)).collect()
    };
    for index in voters {
        let node = {
            let c = cluster.lock().unwrap_or_else(|p| p.into_inner());
            c.node(index)
        }
        .ok_or_else(|| format!("voter {} is not running after the heal", index + 1))?;
        // A candidate needs a log as long as a majority's: let it catch up with the leader
        // (the previous write went through another node) before it stands.
        let caught_up = Instant::now() + CATCH_UP_WAIT;
        while Instant::now() < caught_up {
            let target = {
                let c = cluster.lock().unwrap_or_else(|p| p.into_inner());
                c.leader_last_log(FOCUS_GROUP)
            };
            let last = raft(&node).and_then(|r| r.metrics().borrow().last_log_index);
            if target.is_some() && last >= target {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Followers refuse votes while their leader's lease lasts: quiet every other node
        // (no heartbeats, no elections of their own) until the chosen one has won.
        let chosen = raft(&node)
            .ok_or_else(|| format!("voter {} does not host the focus group", index + 1))?;
        // The chosen node stands whatever it promised the leader: as in a hand-over, the
        // leader stops counting it in its read lease first.
        for other in running(cluster) {
            let quiet = other.id() != node.id();
            other.exclude_from_lease(FOCUS_GROUP, node.id());
            other.set_heartbeats(FOCUS_GROUP, !quiet);
            other.set_elections(FOCUS_GROUP, !quiet);
        }
        for _ in 0..ELECT_TRIES {
            if chosen.metrics().borrow().state == openraft::ServerState::Leader {
                break;
            }
            if let Err(err) = chosen.trigger().elect().await {
                return Err(format!("node {}: raft stopped: {err}", index + 1));
            }
            let _ = chosen
                .wait(Some(ELECT_WAIT))
                .state(openraft::ServerState::Leader, "elected")
                .await;
        }
        for other in running(cluster) {
            other.set_heartbeats(FOCUS_GROUP, true);
            other.set_elections(FOCUS_GROUP, true);
        }
        if chosen.metrics().borrow().state != openraft::ServerState::Leader {
            return Err(format!(
                "node {} did not win any of {ELECT_TRIES} elections it started after the heal",
                index + 1
            ));
        }
        let addr = addrs[index].clone();
        let key = format!("{{{tag}}}n{}", index + 1);
        let write = client_host.spawn(async move {
            let client = workload::client(vec![addr]);
            let revision = client.put(key.as_bytes(), b"led").await?;
            // And a linearizable read through the same leader sees it.
            match client
                .get(key.as_bytes(), seedkv_proto::Consistency::Linearizable)
                .await?
            {
                Some(found) if found.revision == revision => Ok(revision),
                other => Err(seedkv_proto::ClientError::Server(format!(
                    "a linearizable read after the write at revision {revision} found {other:?}"
                ))),
            }
        });
        match tokio::time::timeout(LEADER_WRITE_WAIT, write).await {
            Ok(Ok(Ok(_))) => {}
            Ok(Ok(Err(err))) => {
                return Err(format!(
                    "a write through node {} as leader after the heal failed: {err}",
                    index + 1
                ))
            }
            _ => {
                return Err(format!(
                    "a write through node {} as leader after the heal did not finish within {} s",
                    index + 1,
                    LEADER_WRITE_WAIT.as_secs()
                ))
            }
        }
    }
    Ok(())
}

/// How long every running node may take to report healthy once the cluster has healed
/// and served writes: a follower hears of a new leader within a heartbeat or two.
const HEALTHY_WITHIN: Duration = Duration::from_secs(10);

/// Every running node, voter or replica, says what its `/health` would say once healed:
/// every group it hosts knows a leader and runs, and its disk answers. A node stuck
/// without a leader for a group it hosts, or with a failed or stalled disk, fails the run.
async fn every_node_healthy(cluster: &SharedCluster) -> Result<(), String> {
    let give_up = Instant::now() + HEALTHY_WITHIN;
    loop {
        let running: Vec<(usize, Arc<seedkv_proto::node::Node>)> = {
            let c = cluster.lock().unwrap_or_else(|p| p.into_inner());
            (0..c.len())
                .filter_map(|i| c.node(i).map(|node| (i, node)))
                .collect()
        };
        let sick: Vec<String> = running
            .iter()
            .filter_map(|(index, node)| {
                let (_, _, problems) = seedkv_proto::metrics::health(node);
                (!problems.is_empty())
                    .then(|| format!("node {}: {}", index + 1, problems.join("; ")))
            })
            .collect();
        if sick.is_empty() {
            return Ok(());
        }
        if Instant::now() >= give_up {
            return Err(format!(
                "nodes not healthy {} s after the heal: {}",
                HEALTHY_WITHIN.as_secs(),
                sick.join(" | ")
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How long the write to each data group after the heal may take.
const GROUP_WRITE_WAIT: Duration = Duration::from_secs(30);

/// Liveness of every data group once the faults are over, idle ones included (the workload's
/// keys fall in a few groups only): a write to a key of each group, through the cluster's
/// routing, must commit and read back linearizably. A group left without a leader (its
/// replicas' elections kept off, a quiet lease never ending) fails the run here.
async fn every_group_serves(
    cluster: &SharedCluster,
    endpoints: &[String],
    client_host: &madsim::runtime::NodeHandle,
) -> Result<(), String> {
    let keys: Vec<(GroupId, String)> = {
        let c = lock_cluster(cluster);
        raft_groups(&c.plan)
            .into_iter()
            .filter(|group| *group != seedkv_core::slot_map::META_GROUP)
            .map(|group| {
                (0u32..)
                    .take(100_000)
                    .map(|n| format!("{{group{n}}}served"))
                    .find(|key| c.plan.owner(Slot::of(key.as_bytes())).group == group)
                    .map(|key| (group, key))
                    .ok_or_else(|| format!("no key falls in group {}", group.0))
            })
            .collect::<Result<_, _>>()?
    };
    let client = workload::client(endpoints.to_vec());
    for (group, key) in keys {
        let client = client.clone();
        let write = client_host.spawn(async move {
            let revision = client.put(key.as_bytes(), b"served").await?;
            match client
                .get(key.as_bytes(), seedkv_proto::Consistency::Linearizable)
                .await?
            {
                Some(found) if found.revision == revision => Ok(revision),
                other => Err(seedkv_proto::ClientError::Server(format!(
                    "a linearizable read after the write at revision {revision} found {other:?}"
                ))),
            }
        });
        match tokio::time::timeout(GROUP_WRITE_WAIT, write).await {
            Ok(Ok(Ok(_))) => {}
            Ok(Ok(Err(err))) => {
                return Err(format!(
                    "a write to group {} after the heal failed: {err}",
                    group.0
                ))
            }
            _ => {
                return Err(format!(
                    "a write to group {} after the heal did not finish within {} s",
                    group.0,
                    GROUP_WRITE_WAIT.as_secs()
                ))
            }
        }
    }
    Ok(())
}

/// Failover of quiet groups: once every group has been idle long enough to stop its
/// heartbeats (`seedkv_core::quiet`), the node leading the most groups crashes; every data
/// group must elect a leader and serve a write (so the followers' quiet leases ended and
/// their elections came back), then the node restarts.
async fn quiet_failover(
    cluster: &SharedCluster,
    endpoints: &[String],
    client_host: &madsim::runtime::NodeHandle,
) -> Result<String, String> {
    if lock_cluster(cluster).len() < 3 {
        return Ok("quiet failover skipped: fewer than 3 nodes".into());
    }
    tokio::time::sleep(Duration::from_millis(
        seedkv_core::quiet::QUIET_AFTER_MS + 1_500,
    ))
    .await;
    let (victim, led) = {
        let c = lock_cluster(cluster);
        let groups = raft_groups(&c.plan);
        let leads = |index: usize| {
            groups
                .iter()
                .filter(|group| c.leader_of(**group) == Some(index))
                .count()
        };
        let victim = (0..c.len()).max_by_key(|&index| leads(index)).unwrap_or(0);
        (victim, leads(victim))
    };
    lock_cluster(cluster).kill(victim);
    let served = every_group_serves(cluster, endpoints, client_host).await;
    lock_cluster(cluster).restart(victim);
    let id = victim + 1;
    served
        .map(|()| {
            format!(
                "quiet failover: node {id} led {led} idle groups, crashed, and every group served"
            )
        })
        .map_err(|why| format!("after node {id}, leading {led} idle groups, crashed: {why}"))
}

fn lock_cluster(cluster: &SharedCluster) -> std::sync::MutexGuard<'_, SimCluster> {
    cluster.lock().unwrap_or_else(|p| p.into_inner())
}

/// A simulated host beside the nodes (clients, operator), at 10.0.1.`last`.
fn extra_host(
    handle: &madsim::runtime::Handle,
    name: &str,
    last: u8,
) -> madsim::runtime::NodeHandle {
    handle
        .create_node()
        .name(name)
        .ip(std::net::IpAddr::from([10, 0, 1, last]))
        .build()
}

fn finish(start: Instant, trace: &Arc<Mutex<Trace>>, history: Vec<Record>) -> RunReport {
    let mut t = trace.lock().unwrap_or_else(|p| p.into_inner());
    for record in &history {
        if let Ok(line) = serde_json::to_string(record) {
            t.record(&line);
        }
    }
    RunReport {
        ops: history.len(),
        unknown_ops: history.iter().filter(|r| r.result.is_none()).count(),
        virtual_s: start.elapsed().as_secs_f64(),
        fingerprint: t.hash.finish(),
        messages: (t.delivered, t.dropped),
        failure: None,
        history,
    }
}

fn failed(start: Instant, trace: &Arc<Mutex<Trace>>, why: String) -> RunReport {
    let mut report = finish(start, trace, Vec::new());
    report.failure = Some(why);
    report
}
