//! A cluster of simulated seedkv nodes, each on its own simulated host and disk.
//!
//! Killing a node drops its tasks and crashes its disk; restarting it runs the same start-up
//! path a real process runs: open the disk (replaying what survived), start Raft, serve.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use madsim::runtime::{Handle, NodeHandle};
use seedkv_core::slot_map::{SlotMap, META_GROUP};
use seedkv_core::storage::SharedState;
use seedkv_core::GroupId;
use seedkv_io_sim::{DiskConfig, DiskFault, NetFaults, SimDisk};
use seedkv_proto::trace::Tracer;
use seedkv_proto::{Node, NodeConfig};

/// The port every simulated node listens on.
pub const PORT: u16 = 7379;

type Slot = Arc<Mutex<Option<Arc<Node>>>>;

struct SimNode {
    id: u64,
    addr: String,
    host: NodeHandle,
    disk: SimDisk,
    /// The running incarnation, set by the node itself once started.
    running: Slot,
    alive: bool,
    /// The incarnation the node last ran, kept while it is down; `None` once its disk is
    /// wiped (until it runs again).
    last_incarnation: Option<u64>,
}

/// One member as a membership records it.
#[derive(Debug, Clone, Copy)]
pub struct MemberView {
    /// The node's index (its id minus one).
    pub index: usize,
    /// The incarnation recorded for it (0: not yet known).
    pub incarnation: u64,
    pub voter: bool,
}

/// A membership as some node holds it.
#[derive(Debug, Clone)]
pub struct MembershipView {
    pub members: Vec<MemberView>,
    /// True while a change is half done (old and new voters both count).
    pub changing: bool,
}

impl MembershipView {
    /// The voters' node indexes.
    pub fn voters(&self) -> Vec<usize> {
        self.members
            .iter()
            .filter(|m| m.voter)
            .map(|m| m.index)
            .collect()
    }
}

/// A simulated cluster of `n` nodes with ids `1..=n`.
pub struct SimCluster {
    handle: Handle,
    nodes: Vec<SimNode>,
    /// Membership changes the operator is making right now.
    pub operator_changes: usize,
    /// Nodes some operator's change is working on now, in whatever group: changes racing
    /// pick different nodes, so no operator gives a node a blank disk while another one is
    /// adding it back as the node it was.
    pub operator_busy: std::collections::BTreeSet<u64>,
    /// True while the nemesis stages a fault that needs the membership to stay put (a
    /// node losing its disk, figure 8).
    pub staged_fault_under_way: bool,
    /// True while the nemesis waits for every node to be a voter (figure 8 needs five): the
    /// operator then adds voters and removes none.
    pub wants_every_voter: bool,
    /// Network fault controller over the nodes, in index order.
    pub net: NetFaults,
    /// The slot map the cluster bootstraps with.
    pub plan: SlotMap,
    /// The bootstrap members: nodes `0..initial`; the rest are read replicas.
    initial: usize,
}

/// The data group the staged faults (amnesia from bootstrap, figure 8) and the liveness
/// check aim at: the one holding the first slots. Plain faults hit every group.
pub const FOCUS_GROUP: GroupId = GroupId(1);

/// Every Raft group of `plan`: the meta group, then the data groups.
pub fn raft_groups(plan: &SlotMap) -> Vec<GroupId> {
    std::iter::once(META_GROUP)
        .chain(plan.groups().keys().copied())
        .collect()
}

fn lock(slot: &Slot) -> std::sync::MutexGuard<'_, Option<Arc<Node>>> {
    slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl SimCluster {
    /// Starts `n` nodes that bootstrap a cluster of `groups` data groups of `replicas`
    /// replicas each (0: every node), and `read_replicas` more nodes that join it as read
    /// replicas (`--role replica`: learners of every group) at every start. They serve at
    /// once but form no cluster until initialized.
    pub fn start(
        n: usize,
        read_replicas: usize,
        groups: u32,
        replicas: u32,
        tracer: Tracer,
        disk: DiskConfig,
    ) -> SimCluster {
        let handle = Handle::current();
        let mut nodes = Vec::with_capacity(n);
        // Every node bootstraps this membership at each start, as `seedkv server
        // --initial-cluster` does: until it holds a membership, or learns the cluster exists.
        let members: std::collections::BTreeMap<u64, String> = (0..n)
            .map(|index| {
                let id = index as u64 + 1;
                let ip = IpAddr::V4(Ipv4Addr::new(10, 0, 0, id as u8));
                (id, SocketAddr::new(ip, PORT).to_string())
            })
            .collect();
        let replicas = match replicas {
            0 => u32::try_from(n).unwrap_or(u32::MAX),
            r => r,
        };
        let plan = match Node::plan(&members, groups, replicas) {
            Ok(plan) => plan,
            Err(err) => panic!(
                "no plan for {n} nodes and {groups} groups: {}",
                err.message()
            ),
        };
        let seed = members.values().next().cloned().unwrap_or_default();
        for index in 0..n + read_replicas {
            let id = index as u64 + 1;
            let replica = index >= n;
            let ip = IpAddr::V4(Ipv4Addr::new(10, 0, 0, id as u8));
            let addr = SocketAddr::new(ip, PORT);
            let seed = seed.clone();
            let disk = SimDisk::new(disk.clone());
            let running: Slot = Arc::new(Mutex::new(None));
            let host = {
                let disk = disk.clone();
                let running = running.clone();
                let tracer = tracer.clone();
                let members = members.clone();
                let plan = plan.clone();
                handle
                    .create_node()
                    .name(format!("node{id}"))
                    .ip(ip)
                    .init(move || {
                        let disk = disk.open();
                        let running = running.clone();
                        let mut config = sim_node_config(id, addr.to_string());
                        config.replica = replica;
                        let seed = seed.clone();
                        // Each start, a clock rate of its own within the drift bound.
                        config.lease.clock = seedkv_proto::lease::Clock::skewed(clock_skew_ppm(
                            config.lease.max_drift_ppm,
                        ));
                        let tracer = tracer.clone();
                        let members = members.clone();
                        let plan = plan.clone();
                        async move {
                            let node = match Node::start(config, disk, tracer).await {
                                Ok(node) => node,
                                Err(err) => panic!("node {id} failed to start: {err}"),
                            };
                            *lock(&running) = Some(node.clone());
                            if replica {
                                node.join_as_replica_in_background(seed);
                            } else {
                                node.bootstrap_in_background(members, plan.clone());
                            }
                            if let Err(err) = node.serve(addr).await {
                                panic!("node {id} stopped serving: {err}");
                            }
                        }
                    })
                    .build()
            };
            nodes.push(SimNode {
                id,
                addr: addr.to_string(),
                host,
                disk,
                running,
                alive: true,
                last_incarnation: None,
            });
        }
        let net = NetFaults::new(nodes.iter().map(|n| n.host.id()).collect());
        SimCluster {
            initial: n,
            plan,
            handle,
            nodes,
            operator_changes: 0,
            operator_busy: Default::default(),
            staged_fault_under_way: false,
            wants_every_voter: false,
            net,
        }
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// True if the cluster has no nodes.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// `(id, address)` of every node.
    pub fn members(&self) -> Vec<(u64, String)> {
        self.nodes[..self.initial]
            .iter()
            .map(|n| (n.id, n.addr.clone()))
            .collect()
    }

    /// Every bootstrap member's address (read replicas excluded).
    pub fn addrs(&self) -> Vec<String> {
        self.nodes[..self.initial]
            .iter()
            .map(|n| n.addr.clone())
            .collect()
    }

    /// How many bootstrap members there are (nodes `0..initial`).
    pub fn initial(&self) -> usize {
        self.initial
    }

    /// The read replicas' addresses.
    pub fn replica_addrs(&self) -> Vec<String> {
        self.nodes[self.initial..]
            .iter()
            .map(|n| n.addr.clone())
            .collect()
    }

    /// The running node at `index`, if it is up and started.
    pub fn node(&self, index: usize) -> Option<Arc<Node>> {
        let node = self.nodes.get(index)?;
        if !node.alive {
            return None;
        }
        lock(&node.running).clone()
    }

    /// True if the node at `index` is up.
    pub fn is_alive(&self, index: usize) -> bool {
        self.nodes.get(index).is_some_and(|n| n.alive)
    }

    /// Nodes that are down.
    pub fn down_count(&self) -> usize {
        self.nodes.iter().filter(|n| !n.alive).count()
    }

    /// The index of the node that believes it leads the focus group, with the highest term
    /// among those.
    pub fn leader(&self) -> Option<usize> {
        self.leader_of(FOCUS_GROUP)
    }

    /// The Raft handle of `group` on the running node at `index`.
    pub fn raft(&self, index: usize, group: GroupId) -> Option<seedkv_core::Raft> {
        self.node(index)?.raft_of(group)
    }

    /// The index of the node that believes it leads `group`, with the highest term among
    /// those.
    pub fn leader_of(&self, group: GroupId) -> Option<usize> {
        (0..self.nodes.len())
            .filter_map(|i| {
                let metrics = self.raft(i, group)?.metrics().borrow().clone();
                (metrics.state == openraft::ServerState::Leader)
                    .then_some((metrics.current_term, i))
            })
            .max()
            .map(|(_, i)| i)
    }

    /// Kills the node at `index` and crashes its disk: unsynced writes are lost or torn.
    pub fn kill(&mut self, index: usize) {
        let Some(node) = self.nodes.get_mut(index) else {
            return;
        };
        if !node.alive {
            return;
        }
        self.handle.kill(node.host.id());
        if let Some(running) = lock(&node.running).take() {
            node.last_incarnation = Some(running.incarnation());
        }
        node.disk.crash();
        node.alive = false;
    }

    /// Kills the node at `index`, gives it a blank disk, and starts it again: it comes back
    /// with a new incarnation and none of its votes or log.
    pub fn wipe(&mut self, index: usize) {
        self.kill(index);
        if let Some(node) = self.nodes.get_mut(index) {
            node.disk.wipe();
            node.last_incarnation = None;
        }
        self.restart(index);
    }

    /// The newest membership of the focus group any running node holds.
    pub fn newest_membership(&self) -> Option<MembershipView> {
        self.newest_membership_of(FOCUS_GROUP)
    }

    /// The newest membership of `group` any running node holds (appended, perhaps not yet
    /// committed).
    pub fn newest_membership_of(&self, group: GroupId) -> Option<MembershipView> {
        let metrics = (0..self.nodes.len())
            .filter_map(|i| Some(self.raft(i, group)?.metrics().borrow().clone()))
            .max_by_key(|m| {
                m.membership_config
                    .log_id()
                    .map(|id| (id.leader_id.term, id.index))
            })?;
        let membership = metrics.membership_config.membership();
        let voters: Vec<u64> = membership.voter_ids().collect();
        let members = membership
            .nodes()
            .map(|(id, member)| MemberView {
                index: *id as usize - 1,
                incarnation: member.incarnation,
                voter: voters.contains(id),
            })
            .collect();
        Some(MembershipView {
            members,
            changing: membership.get_joint_config().len() > 1,
        })
    }

    /// The incarnation node `index` runs, or last ran if it is down; `None` if its disk was
    /// wiped and it has not run since.
    fn incarnation_of(&self, index: usize) -> Option<u64> {
        match self.node(index) {
            Some(node) => Some(node.incarnation()),
            None => self.nodes.get(index)?.last_incarnation,
        }
    }

    /// Members whose incarnation is not the one the newest membership records, with
    /// whether each is a voter: nodes back on a blank disk, refused until replaced. Read
    /// replicas are left out: a diskless replica is blank at every start and joins again
    /// by itself.
    pub fn lost_data(&self, group: GroupId) -> Vec<MemberView> {
        let Some(view) = self.newest_membership_of(group) else {
            return Vec::new();
        };
        view.members
            .into_iter()
            .filter(|m| m.index < self.initial)
            .filter(|m| m.incarnation != 0 && self.incarnation_of(m.index) != Some(m.incarnation))
            .collect()
    }

    /// Every Raft group of the cluster now: the meta group, the bootstrap's data groups, and
    /// any group added since, as any running node's slot map names it.
    pub fn live_groups(&self) -> Vec<GroupId> {
        let mut groups: std::collections::BTreeSet<GroupId> =
            raft_groups(&self.plan).into_iter().collect();
        for index in 0..self.len() {
            if let Some(map) = self.node(index).and_then(|node| node.slot_map()) {
                groups.extend(map.groups().keys().copied());
            }
        }
        groups.into_iter().collect()
    }

    /// True if any group's membership records a node that lost its data since.
    pub fn lost_data_anywhere(&self) -> bool {
        raft_groups(&self.plan)
            .into_iter()
            .any(|group| !self.lost_data(group).is_empty())
    }

    /// Makes the next write or fsync of node `index`'s disk fail.
    pub fn fail_disk(&self, index: usize, fault: DiskFault) {
        if let Some(node) = self.nodes.get(index) {
            node.disk.inject(fault);
        }
    }

    /// Holds every fsync of node `index`'s disk until `until`.
    pub fn stall_disk(&self, index: usize, until: tokio::time::Instant) {
        if let Some(node) = self.nodes.get(index) {
            node.disk.stall_until(until);
        }
    }

    /// Drops disk faults not yet triggered, ends stalls, and restarts every node whose disk
    /// failed (as an operator restarts a process that stopped on a disk error); returns the
    /// nodes restarted.
    pub fn reboot_failed(&mut self) -> Vec<usize> {
        for node in &self.nodes {
            node.disk.heal();
        }
        let failed: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].alive && self.nodes[i].disk.failed().is_some())
            .collect();
        for &index in &failed {
            self.kill(index);
            self.restart(index);
        }
        failed
    }

    /// Nodes receiving a snapshot right now.
    pub fn receiving_snapshot(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.node(i).is_some_and(|node| node.receiving_snapshot()))
            .collect()
    }

    /// Stops every task of the node at `index` (a stopped process, a long GC pause): its
    /// clock goes on, its work does not.
    pub fn pause(&self, index: usize) {
        if let Some(node) = self.nodes.get(index).filter(|node| node.alive) {
            self.handle.pause(node.host.id());
        }
    }

    /// Lets the node at `index` run again after [`SimCluster::pause`].
    pub fn resume(&self, index: usize) {
        if let Some(node) = self.nodes.get(index) {
            self.handle.resume(node.host.id());
        }
    }

    /// Restarts a killed node from what its disk kept.
    pub fn restart(&mut self, index: usize) {
        let Some(node) = self.nodes.get_mut(index) else {
            return;
        };
        if node.alive {
            return;
        }
        // Read replicas run diskless: each start begins blank, with a new incarnation.
        if index >= self.initial {
            node.disk.wipe();
            node.last_incarnation = None;
        }
        self.handle.restart(node.host.id());
        node.alive = true;
    }

    /// The applied index of `group` on every running node hosting it, from memory (cheap):
    /// `(index, applied)`.
    pub fn applied_indexes(&self, group: GroupId) -> Vec<(usize, u64)> {
        self.members_of(group)
            .into_iter()
            .filter_map(|i| {
                let state = self.node(i)?.state_of(group)?;
                let applied = state.last_applied().map_or(0, |id| id.index);
                Some((i, applied))
            })
            .collect()
    }

    /// The applied state of `group` on every running node hosting it: `(index, applied
    /// index, digest)`. Reads every row of the group on every node.
    pub fn applied(&self, group: GroupId) -> Vec<(usize, u64, u64)> {
        self.members_of(group)
            .into_iter()
            .filter_map(|i| {
                let state: Arc<SharedState> = self.node(i)?.state_of(group)?;
                // Index and digest read from one view: a consistent pair.
                let summary = match state.summary() {
                    Ok(summary) => summary,
                    Err(err) => panic!("node {i} cannot read its own state: {err}"),
                };
                Some((i, summary.applied_index, summary.digest))
            })
            .collect()
    }

    /// The nodes `group`'s newest membership names (voters and learners); a node removed
    /// from a group keeps its stale replica, which is not expected to converge.
    pub fn members_of(&self, group: GroupId) -> Vec<usize> {
        self.newest_membership_of(group)
            .map(|view| view.members.iter().map(|m| m.index).collect())
            .unwrap_or_default()
    }

    /// The last log index of `group`'s leader, if there is one.
    pub fn leader_last_log(&self, group: GroupId) -> Option<u64> {
        let raft = self.raft(self.leader_of(group)?, group)?;
        let last = raft.metrics().borrow().last_log_index;
        last
    }
}

/// Raft settings for simulation: normal timings, frequent snapshots so that snapshot
/// install and log purge are exercised in every run.
pub fn sim_node_config(id: u64, addr: String) -> NodeConfig {
    let mut config = NodeConfig::new(id, addr);
    config.raft.snapshot_policy = openraft::SnapshotPolicy::LogsSinceLast(100);
    config.raft.max_in_snapshot_log_to_keep = 20;
    config
}

/// A clock rate error within `bound_ppm`, drawn from the seed: a third of the nodes run at
/// the slowest rate the bound allows, a third at the fastest, the rest in between.
fn clock_skew_ppm(bound_ppm: u64) -> i64 {
    let bound = i64::try_from(bound_ppm).unwrap_or(0);
    match seedkv_core::runtime::random_below(3) {
        0 => -bound,
        1 => bound,
        _ => {
            let span = u64::try_from(2 * bound + 1).unwrap_or(1);
            i64::try_from(seedkv_core::runtime::random_below(span)).unwrap_or(0) - bound
        }
    }
}

/// Whether an `Init` call left the cluster bootstrapped: it did, or the cluster already was
/// (the nodes bootstrap themselves too, and whoever is second is told so).
pub fn initialized(result: Result<(), seedkv_proto::ClientError>) -> bool {
    match result {
        Ok(()) => true,
        Err(seedkv_proto::ClientError::Server(message)) => message.contains("already"),
        Err(_) => false,
    }
}
