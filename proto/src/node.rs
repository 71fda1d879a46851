//! A seedkv node: its Raft groups and the gRPC services in front of them.
//!
//! Writes go through Raft on the leader; a follower refuses them with a leader hint and the
//! client follows it. Linearizable reads confirm leadership with a read index before reading
//! the local state; serializable reads read the local state of whichever node they reach.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;

use openraft::error::{ClientWriteError, InitializeError, RaftError};
use openraft::{ChangeMembers, ServerState};
use seedkv_core::codec;
use seedkv_core::command::{Command, Response, Versioned};
use seedkv_core::metrics::NodeMetrics;
use seedkv_core::routing::{self, Decision};
use seedkv_core::runtime::timeout;
use seedkv_core::slot::Slot;
use seedkv_core::slot_map::{SlotMap, DEFAULT_REPLICAS, META_GROUP};
use seedkv_core::state::{Serving, ShardState};
use seedkv_core::storage::snapshot::{SnapshotFrame, SnapshotRefused, SnapshotReply, Staging};
use seedkv_core::storage::{
    Disk, DiskError, DynDisk, LogStore, LogSyncer, NodeIdentity, SharedState, SnapshotData,
    StateMachineStore,
};
use seedkv_core::{GroupId, Limits, Member, NodeId, Raft};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::{Request, Response as GrpcResponse, Status};

use crate::convert;
use crate::identity::{Identity, Inbound};
use crate::lease::{GroupLease, LeaseSettings};
use crate::network::GrpcNetwork;
use crate::pb;
use crate::proposer::Proposer;
use crate::read_index::ReadIndex;
use crate::status::{moved, not_leader, not_proposed, session_expired, stale_write, try_again};
use crate::trace::Tracer;

/// What a node needs to start.
#[derive(Clone)]
pub struct NodeConfig {
    /// This node's id; never 0.
    pub id: NodeId,
    /// The address peers and clients reach this node at (`host:port`).
    pub addr: String,
    /// Raft timing and snapshot policy.
    pub raft: openraft::Config,
    /// Request limits.
    pub limits: Limits,
    /// Read leases and the clock they run on.
    pub lease: LeaseSettings,
    /// A read replica (`--role replica`): it serves a group's serializable reads only once
    /// it has applied every entry committed before this start (see
    /// [`Node::open_reads_from`]), so a client reading from it never goes back in time,
    /// even across a restart of a diskless replica.
    pub replica: bool,
}

impl NodeConfig {
    /// Defaults for a node `id` at `addr`: 100 ms heartbeats, 300–600 ms election timeout,
    /// a snapshot every 5,000 log entries.
    pub fn new(id: NodeId, addr: impl Into<String>) -> Self {
        NodeConfig {
            id,
            addr: addr.into(),
            raft: openraft::Config {
                cluster_name: "seedkv".into(),
                heartbeat_interval: 100,
                election_timeout_min: 300,
                election_timeout_max: 600,
                snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(5_000),
                max_in_snapshot_log_to_keep: 1_000,
                // Per snapshot chunk (at most 1 MiB) and for the final install.
                install_snapshot_timeout: 2_000,
                ..Default::default()
            },
            limits: Limits::default(),
            lease: LeaseSettings::default(),
            replica: false,
        }
    }
}

/// A node failed to start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("node id must not be 0")]
    ZeroId,
    #[error("invalid Raft configuration: {0}")]
    Config(String),
    #[error("storage: {0}")]
    Storage(String),
    #[error("raft: {0}")]
    Raft(String),
    #[error("{0}")]
    Identity(String),
}

/// One Raft group on this node and the state it applies to.
pub(crate) struct Group {
    pub(crate) id: GroupId,
    pub(crate) raft: Raft,
    pub(crate) state: Arc<SharedState>,
    pub(crate) read_index: ReadIndex,
    /// Leaders this node has seen the group change to (see `crate::metrics`).
    pub(crate) leader_changes: Arc<std::sync::atomic::AtomicU64>,
    /// The group's read lease as its leader, and its refusal window as a follower.
    pub(crate) lease: Arc<GroupLease>,
    pub(crate) proposer: Proposer,
    /// Where snapshots from the leader arrive; one transfer at a time.
    staging: Arc<tokio::sync::Mutex<Staging>>,
    /// Taken to write by a snapshot install until it is durable, and to read by every
    /// AppendEntries until openraft has taken its entries: openraft takes a snapshot at
    /// once and appends what follows while the state machine still installs it, so those
    /// entries could be durable and acknowledged before the state before them.
    install_gate: Arc<tokio::sync::RwLock<()>>,
    /// Held across each membership change of this group that this node leads, from its
    /// compare to its last entry: a change is a read-modify-write of the voters, and two
    /// interleaved on one leader could each pass the compare. Holds the log index of the
    /// last change made.
    membership: Arc<tokio::sync::Mutex<u64>>,
    /// Whether the node's heartbeat clock beats for this group while it leads it.
    pub(crate) heartbeats: std::sync::atomic::AtomicBool,
    /// Set while this node offers its leadership of the group to another replica: writes
    /// are refused (clients retry), so the log stops growing and the other can hold all of
    /// it (see `seedkv_core::leadership`).
    pub(crate) handing_over: Arc<std::sync::atomic::AtomicBool>,
    /// On a read replica: the applied index from which this group's serializable reads are
    /// served (`None`: not known yet, every read refused).
    read_floor: std::sync::Mutex<Option<u64>>,
    /// Whether this replica may stand for election in the group, as its operator (or the
    /// simulator) wants it; a quiet lease turns elections off meanwhile too.
    elections: std::sync::atomic::AtomicBool,
    /// Until when the group's leader has told this follower it leads the group, idle and
    /// quiet (see `seedkv_core::quiet`): elections stay off until then.
    quiet_until: std::sync::Mutex<Option<tokio::time::Instant>>,
    /// When this follower last gave its Raft the quiet leader's word.
    vote_refreshed: std::sync::Mutex<Option<tokio::time::Instant>>,
}

impl Group {
    fn quiet_lock(&self) -> std::sync::MutexGuard<'_, Option<tokio::time::Instant>> {
        self.quiet_until
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Sets openraft's election switch from the wanted state and the quiet lease.
    fn apply_elections(&self, quiet: bool) {
        let wanted = self.elections.load(std::sync::atomic::Ordering::Acquire);
        self.raft.runtime_config().elect(wanted && !quiet);
    }

    /// Keeps elections off until `until`: the leader named the group quiet. Its Raft needs
    /// no clock meanwhile (the node's heartbeat clock starts it again).
    pub(crate) fn quiet_until(&self, until: tokio::time::Instant) {
        let mut lease = self.quiet_lock();
        if lease.is_none_or(|held| held < until) {
            *lease = Some(until);
        }
        self.apply_elections(true);
        self.raft.runtime_config().tick(false);
    }

    /// Whether the follower's Raft should hear the quiet leader's word again (at most every
    /// `every_ms`); if so, notes that it does now.
    pub(crate) fn vote_refresh_due(&self, now: tokio::time::Instant, every_ms: u64) -> bool {
        let mut last = self
            .vote_refreshed
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let due = last.is_none_or(|at| {
            now.saturating_duration_since(at) >= std::time::Duration::from_millis(every_ms)
        });
        if due {
            *last = Some(now);
        }
        due
    }

    /// Whether this follower holds a quiet lease on the group.
    pub(crate) fn quiet(&self) -> bool {
        self.quiet_lock().is_some()
    }

    /// Gives the group its elections back once the quiet lease ran out (at `now`), and
    /// sets them again from the wanted state and the lease either way (whatever raced
    /// with it, the switch is right after every beat).
    pub(crate) fn end_quiet_lease(&self, now: tokio::time::Instant) {
        let mut lease = self.quiet_lock();
        if lease.is_some_and(|held| held <= now) {
            *lease = None;
        }
        self.apply_elections(lease.is_some());
    }

    /// Drops any quiet lease at once (the node's heartbeat clock stopped: nothing would end
    /// it), and lets the group's Raft tick and elect again.
    pub(crate) fn drop_quiet_lease(&self) {
        let mut lease = self.quiet_lock();
        *lease = None;
        self.apply_elections(false);
        self.raft.runtime_config().tick(true);
    }
}

/// Opens one group's storage and Raft on this node's disk.
type OpenGroup = Box<
    dyn Fn(
            GroupId,
        )
            -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Group, NodeError>> + Send>>
        + Send
        + Sync,
>;

/// A running seedkv node.
pub struct Node {
    id: NodeId,
    addr: String,
    /// The cluster name a bootstrap derives the cluster id from.
    cluster_name: String,
    identity: Arc<Identity>,
    limits: Limits,
    /// The groups hosted here: the meta group always, data groups as the node was given
    /// them. A group once opened stays open (its state is never deleted: a node that may
    /// still be named in an old membership of it must not come back blank).
    groups: std::sync::RwLock<BTreeMap<GroupId, Arc<Group>>>,
    /// The meta group, also in `groups`.
    meta: Arc<Group>,
    open_group: OpenGroup,
    /// Held while a group is opened, so two messages for a new group open it once.
    opening: tokio::sync::Mutex<()>,
    /// The slot map this node bootstraps the cluster with (set by `--initial-cluster`): the
    /// meta group's leader proposes it if the meta group holds no map yet.
    plan: std::sync::Mutex<Option<(SlotMap, u64)>>,
    /// How long a sender waits for one snapshot frame (openraft's
    /// `install_snapshot_timeout`); a frame handled longer is abandoned.
    snapshot_frame_timeout_ms: u64,
    /// How long a follower keeps a quiet group's elections off after the leader last named
    /// it, before its jitter (see `seedkv_core::quiet::quiet_lease_ms`).
    pub(crate) quiet_lease_ms: u64,
    /// The jitter a lease draws below.
    quiet_jitter_ms: u64,
    /// How often a follower of a quiet group tells its Raft the leader spoke (see
    /// `RaftService::quiet`): the shortest election timeout.
    quiet_refresh_ms: u64,
    /// Whether the node's heartbeat clock runs: only then can a quiet lease end, so only
    /// then does the node agree to keep a group quiet.
    beating: std::sync::atomic::AtomicBool,
    /// The channels to the peers, shared by every group (and the quiet messages).
    pub(crate) peers: Arc<crate::network::Peers>,
    /// Set when the node hands leadership over before stopping: writes are refused
    /// unproposed, so the leader's log stops growing and the chosen node can match it.
    handing_over: std::sync::atomic::AtomicBool,
    /// A read replica: serializable reads wait for each group's read floor.
    replica: bool,
    /// What storage and replication count (see `crate::metrics` for the rest).
    pub(crate) metrics: Arc<NodeMetrics>,
    /// The fsyncs of the node's disk, for their queue's depth.
    pub(crate) syncer: LogSyncer,
    /// The disk, for health probes.
    pub(crate) disk: Arc<dyn DynDisk>,
}

/// How often a bootstrap waiting for the other initial members tries again.
pub const BOOTSTRAP_RETRY_MS: u64 = 500;

impl Node {
    /// Opens the node's storage on `disk` and starts the meta group and every group that has
    /// state on the disk.
    pub async fn start<D: Disk>(
        config: NodeConfig,
        disk: Arc<D>,
        tracer: Tracer,
    ) -> Result<Arc<Node>, NodeError> {
        if config.id == 0 {
            return Err(NodeError::ZeroId);
        }
        // The node fires every group's heartbeats from one clock (`crate::heartbeat`).
        let heartbeat_interval_ms = config.raft.heartbeat_interval;
        let raft_config = Arc::new(
            openraft::Config {
                enable_heartbeat: false,
                ..config.raft.clone()
            }
            .validate()
            .map_err(|err| NodeError::Config(err.to_string()))?,
        );
        let lease_config = lease_config(&raft_config, &config.lease)?;
        let clock = config.lease.clock.clone();
        let dyn_disk: Arc<dyn DynDisk> = disk.clone();
        let (record, created) = NodeIdentity::load_or_create(
            &*dyn_disk,
            config.id,
            seedkv_core::runtime::random_nonzero_u64(),
        )
        .await
        .map_err(|err| NodeError::Identity(err.to_string()))?;
        if created {
            tracing::info!(
                node = config.id,
                incarnation = format!("{:016x}", record.incarnation),
                "new data directory"
            );
        }
        let identity = Arc::new(Identity::new(record, dyn_disk.clone()));
        let on_disk = seedkv_core::storage::groups_on(&*dyn_disk)
            .map_err(|err| NodeError::Storage(err.to_string()))?;
        // One syncer per disk: every group's appends share its fsyncs; one channel per peer.
        let metrics = Arc::new(NodeMetrics::default());
        let syncer = LogSyncer::start(disk.clone(), metrics.clone());
        let peers = Arc::new(crate::network::Peers::default());
        let open_group: OpenGroup = {
            let (peers, metrics, syncer) = (peers.clone(), metrics.clone(), syncer.clone());
            let (id, identity, raft_config) = (config.id, identity.clone(), raft_config.clone());
            Box::new(move |group| {
                let lease = Arc::new(GroupLease::new(
                    id,
                    clock.clone(),
                    lease_config,
                    raft_config.election_timeout_max,
                ));
                let network = GrpcNetwork {
                    group,
                    from: id,
                    identity: identity.clone(),
                    tracer: tracer.clone(),
                    peers: peers.clone(),
                    lease: lease.clone(),
                    metrics: metrics.clone(),
                };
                let (disk, syncer, raft_config) =
                    (disk.clone(), syncer.clone(), raft_config.clone());
                Box::pin(open(
                    id,
                    group,
                    disk,
                    syncer,
                    raft_config,
                    network,
                    lease,
                    metrics.clone(),
                ))
            })
        };
        let snapshot_frame_timeout_ms = raft_config.install_snapshot_timeout;
        let (quiet_lease_ms, quiet_jitter_ms) = (
            raft_config.election_timeout_max,
            raft_config.election_timeout_min.max(1),
        );
        let cluster_name = raft_config.cluster_name.clone();
        let mut groups = BTreeMap::new();
        for group in std::iter::once(META_GROUP).chain(on_disk) {
            if let std::collections::btree_map::Entry::Vacant(slot) = groups.entry(group) {
                slot.insert(Arc::new(open_group(group).await?));
            }
        }
        let meta = match groups.get(&META_GROUP) {
            Some(meta) => meta.clone(),
            None => unreachable!("the meta group was opened first"),
        };
        let node = Arc::new(Node {
            meta,
            id: config.id,
            addr: config.addr,
            cluster_name,
            identity,
            limits: config.limits,
            groups: std::sync::RwLock::new(groups),
            open_group,
            opening: tokio::sync::Mutex::new(()),
            plan: std::sync::Mutex::new(None),
            snapshot_frame_timeout_ms,
            quiet_lease_ms,
            quiet_jitter_ms,
            quiet_refresh_ms: quiet_jitter_ms,
            beating: std::sync::atomic::AtomicBool::new(true),
            peers,
            handing_over: std::sync::atomic::AtomicBool::new(false),
            replica: config.replica,
            metrics,
            syncer,
            disk: dyn_disk,
        });
        tokio::spawn(crate::pinning::pin_incarnations(Arc::downgrade(&node)));
        tokio::spawn(crate::keeper::keep_grants(Arc::downgrade(&node)));
        tokio::spawn(crate::mover::drive(Arc::downgrade(&node)));
        tokio::spawn(crate::mover::collect_leftovers(Arc::downgrade(&node)));
        tokio::spawn(crate::heartbeat::beat(
            Arc::downgrade(&node),
            heartbeat_interval_ms,
        ));
        Ok(node)
    }

    /// Stops taking writes (they are refused as not proposed, and clients retry elsewhere),
    /// for good: the node is about to stop, and hands leadership over first. A candidate
    /// wins a leader's vote only with a log at least as long as the leader's, which a
    /// leader still appending writes never lets a follower have.
    pub fn refuse_writes(&self) {
        self.handing_over
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// This node's data directory incarnation.
    pub fn incarnation(&self) -> u64 {
        self.identity.incarnation()
    }

    /// This node's cluster id (0: none yet).
    pub fn cluster_id(&self) -> u64 {
        self.identity.cluster_id()
    }

    /// The slot map a cluster of `members` with `data_groups` data groups (0: one per
    /// member) of `replicas` replicas each (0: [`DEFAULT_REPLICAS`]; all members when fewer)
    /// starts from.
    pub fn plan(
        members: &BTreeMap<NodeId, String>,
        data_groups: u32,
        replicas: u32,
    ) -> Result<SlotMap, Status> {
        let ids: Vec<NodeId> = members.keys().copied().collect();
        let data_groups = match data_groups {
            0 => u32::try_from(ids.len()).unwrap_or(u32::MAX),
            n => n,
        };
        let replicas = match replicas {
            0 => DEFAULT_REPLICAS,
            n => usize::try_from(n).unwrap_or(usize::MAX),
        };
        SlotMap::initial(&ids, data_groups, replicas)
            .map_err(|err| Status::invalid_argument(format!("cannot place the groups: {err}")))
    }

    /// Bootstraps a new cluster of `members` (id to address) with the data groups of `plan`
    /// (see [`Node::plan`]) on this node: asks every member who it is, fixes the cluster id
    /// (derived from the cluster name, the members and the group count, so every initial
    /// member derives the same one), then initializes each data group placed here and last
    /// the meta group, with each member's incarnation recorded from the first entry. A member
    /// back on a blank disk is then never taken for the one that had the data, not even by a
    /// member that saw nothing since the bootstrap. Every member must answer: until then
    /// nothing is done and the caller retries. Initial members that bootstrap side by side
    /// learn the same incarnations, so they write the same first entries.
    pub async fn initialize(
        &self,
        members: BTreeMap<NodeId, String>,
        plan: SlotMap,
    ) -> Result<(), Status> {
        if members.is_empty() {
            return Err(Status::invalid_argument("init needs at least one member"));
        }
        if members.contains_key(&0) {
            return Err(Status::invalid_argument("node id 0 is not allowed"));
        }
        if let Some(stray) = plan
            .groups()
            .values()
            .flat_map(|info| &info.replicas)
            .find(|id| !members.contains_key(id))
        {
            return Err(Status::invalid_argument(format!(
                "the slot map places a replica on node {stray}, which is not a member"
            )));
        }
        let cluster_id = self.derived_cluster_id(&members, &plan);
        let mut nodes: BTreeMap<NodeId, Member> = BTreeMap::new();
        for (&id, addr) in &members {
            let incarnation = if id == self.id {
                self.incarnation()
            } else {
                match crate::pinning::ask(addr).await {
                    Some((said_id, incarnation, 0)) if said_id == id && incarnation != 0 => {
                        incarnation
                    }
                    // A member already in the cluster: it was bootstrapped without this node,
                    // whose first entry could now differ from the one the cluster holds
                    // (another incarnation of a member that lost its disk since). Wait to be
                    // reached by the leader instead.
                    Some((said_id, _, said_cluster))
                        if said_id == id && said_cluster == cluster_id =>
                    {
                        self.initialize_late(addr, &plan, cluster_id).await?;
                        return Err(Status::already_exists(format!(
                            "member {id} at {addr} already belongs to the cluster: it was \
                             bootstrapped without this node, which waits for the leader to \
                             reach it; nothing was done"
                        )));
                    }
                    Some((said_id, _, said_cluster)) => {
                        return Err(Status::failed_precondition(format!(
                            "member {id} at {addr} answers as node {said_id} of cluster \
                             {said_cluster:016x}, not as node {id} of cluster {cluster_id:016x}; \
                             nothing was done"
                        )))
                    }
                    None => {
                        return Err(Status::unavailable(format!(
                            "member {id} at {addr} did not answer; every initial member must \
                             be running to bootstrap the cluster; nothing was done"
                        )))
                    }
                }
            };
            nodes.insert(id, Member::new(addr.clone(), incarnation));
        }
        self.identity.settle_cluster(cluster_id).await?;
        *self.plan.lock().unwrap_or_else(|p| p.into_inner()) = Some((plan.clone(), cluster_id));
        // Data groups first, the meta group last: a node whose meta group is initialized has
        // initialized every data group placed on it, so a restart never bootstraps again.
        self.initialize_placed(&plan, &nodes).await?;
        match self.raft().initialize(nodes).await {
            Ok(()) => Ok(()),
            Err(RaftError::APIError(InitializeError::NotAllowed(err))) => Err(
                Status::already_exists(format!("cluster is already initialized: {err}")),
            ),
            Err(err) => Err(membership_error(err)),
        }
    }

    /// An initial member finds the cluster bootstrapped by a member that asked it in time:
    /// it initializes the data groups `plan` places on it, which perhaps no other replica
    /// initialized either (their bootstraps stopped the same way), from the meta group's
    /// first entry as the member at `addr` holds it. See [`Node::initialize_placed`].
    async fn initialize_late(
        &self,
        addr: &str,
        plan: &SlotMap,
        cluster_id: u64,
    ) -> Result<(), Status> {
        let status = crate::pinning::status_of(addr)
            .await
            .ok_or_else(|| Status::unavailable(format!("member at {addr} did not answer")))?;
        // Only the first entry says which incarnations the first entries were written with.
        if status.membership_index != 0 {
            return Ok(());
        }
        let first: BTreeMap<NodeId, Member> = status
            .voters
            .iter()
            .chain(&status.learners)
            .map(|m| (m.id, Member::new(m.addr.clone(), m.incarnation)))
            .collect();
        if first.get(&self.id).map(|m| m.incarnation) != Some(self.incarnation()) {
            return Ok(());
        }
        self.identity.settle_cluster(cluster_id).await?;
        self.initialize_placed(plan, &first).await
    }

    /// Initializes every data group `plan` places on this node and it has not initialized,
    /// with the incarnations `first` (the meta group's first entry) records, the ones every
    /// replica bootstrapping in time used: so every replica writes the same first entry,
    /// whichever of them initializes the group. Only for a node `first` records as it is
    /// (one that lost its data initializes nothing: it must be replaced).
    async fn initialize_placed(
        &self,
        plan: &SlotMap,
        first: &BTreeMap<NodeId, Member>,
    ) -> Result<(), Status> {
        if first.get(&self.id).map(|m| m.incarnation) != Some(self.incarnation()) {
            return Ok(());
        }
        let recorded = first;
        for group in plan.groups_on(self.id).collect::<Vec<_>>() {
            let Some(info) = plan.groups().get(&group) else {
                continue;
            };
            let replicas: BTreeMap<NodeId, Member> = info
                .replicas
                .iter()
                .filter_map(|id| Some((*id, recorded.get(id)?.clone())))
                .filter(|(_, member)| member.incarnation != 0)
                .collect();
            if replicas.len() != info.replicas.len() {
                continue;
            }
            let raft = self.host(group).await?.raft.clone();
            match raft.initialize(replicas).await {
                Ok(()) => {
                    tracing::info!(node = self.id, group = group.0, "initialized a data group")
                }
                Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {}
                Err(err) => return Err(membership_error(err)),
            }
        }
        Ok(())
    }

    /// Bootstraps `members` with the data groups of `plan` in the background, as every
    /// initial member does at each start: until this node's meta group holds a membership,
    /// it tries [`Node::initialize`] every [`BOOTSTRAP_RETRY_MS`] (it waits for every member
    /// to answer), and stops once it has bootstrapped, once a member says the cluster exists
    /// without it (the leader will reach it), or once the node stops. The plan is kept
    /// either way, for the meta group's leader to propose as the first slot map.
    pub fn bootstrap_in_background(
        self: &Arc<Self>,
        members: BTreeMap<NodeId, String>,
        plan: SlotMap,
    ) {
        let cluster_id = self.derived_cluster_id(&members, &plan);
        *self.plan.lock().unwrap_or_else(|p| p.into_inner()) = Some((plan.clone(), cluster_id));
        let node = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut logged = false;
            loop {
                let Some(node) = node.upgrade() else {
                    return;
                };
                if node.raft().metrics().borrow().state == ServerState::Shutdown {
                    return;
                }
                if node.raft().is_initialized().await.unwrap_or(true) {
                    // The meta group reached this node by replication before its own
                    // bootstrap ran: its data groups may still need their first entries,
                    // written from this plan only if the cluster was bootstrapped from it.
                    if node.cluster_id() != cluster_id {
                        tracing::warn!(
                            node = node.id,
                            "the initial members and data groups given to this node are not \
                             the ones the cluster was bootstrapped with; they are ignored"
                        );
                        return;
                    }
                    let metrics = node.raft().metrics().borrow().clone();
                    if metrics.membership_config.log_id().map_or(0, |id| id.index) == 0 {
                        let first: BTreeMap<NodeId, Member> = metrics
                            .membership_config
                            .membership()
                            .nodes()
                            .map(|(id, member)| (*id, member.clone()))
                            .collect();
                        if let Err(err) = node.initialize_placed(&plan, &first).await {
                            tracing::info!(
                                node = node.id,
                                "initializing data groups, will retry: {}",
                                err.message()
                            );
                            drop(node);
                            tokio::time::sleep(std::time::Duration::from_millis(
                                BOOTSTRAP_RETRY_MS,
                            ))
                            .await;
                            continue;
                        }
                    }
                    return;
                }
                match node.initialize(members.clone(), plan.clone()).await {
                    Ok(()) => {
                        tracing::info!(node = node.id, "bootstrapped the cluster");
                        return;
                    }
                    Err(err) if err.code() == tonic::Code::AlreadyExists => {
                        tracing::info!(node = node.id, "not bootstrapping: {}", err.message());
                        return;
                    }
                    Err(err) => {
                        if !logged {
                            tracing::info!(node = node.id, "bootstrap waits: {}", err.message());
                            logged = true;
                        }
                    }
                }
                drop(node);
                tokio::time::sleep(std::time::Duration::from_millis(BOOTSTRAP_RETRY_MS)).await;
            }
        });
    }

    /// The slot map this node bootstraps with, if it was given one and the cluster was
    /// bootstrapped from it (a node started with other flags never proposes its own).
    pub(crate) fn bootstrap_plan(&self) -> Option<SlotMap> {
        let held = self.plan.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let (plan, cluster_id) = held?;
        (cluster_id == self.cluster_id()).then_some(plan)
    }

    /// The cluster id a bootstrap of `members` with `plan` under this node's cluster name
    /// derives.
    fn derived_cluster_id(&self, members: &BTreeMap<NodeId, String>, plan: &SlotMap) -> u64 {
        seedkv_core::storage::identity::cluster_id(
            &self.cluster_name,
            members,
            &codec::encode(plan),
        )
    }

    /// The address peers and clients reach this node at.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The Raft handle of the meta group.
    pub fn raft(&self) -> &Raft {
        &self.meta().raft
    }

    /// Starts or stops the heartbeats of `group` while this node leads it (openraft's
    /// `runtime_config().heartbeat()` does not reach them: the node drives them). False if
    /// the node does not host `group`.
    pub fn set_heartbeats(&self, group: GroupId, enabled: bool) -> bool {
        let Some(group) = self.hosted(group) else {
            return false;
        };
        group
            .heartbeats
            .store(enabled, std::sync::atomic::Ordering::Relaxed);
        true
    }

    /// The heartbeat clock stopped: every quiet lease ends, and no group is kept quiet from
    /// now on.
    pub(crate) fn stop_quiet(&self) {
        self.beating
            .store(false, std::sync::atomic::Ordering::Release);
        for group in self.groups() {
            group.drop_quiet_lease();
        }
    }

    pub(crate) fn identity(&self) -> &Identity {
        &self.identity
    }

    /// Lets this replica of `group` stand for election, or not (openraft's
    /// `runtime_config().elect()` would be undone by the quiet leases: the node drives it).
    /// False if the node does not host `group`.
    pub fn set_elections(&self, group: GroupId, enabled: bool) -> bool {
        let Some(group) = self.hosted(group) else {
            return false;
        };
        // Under the lease's lock, so a lease ending meanwhile cannot apply a stale wish.
        let lease = group.quiet_lock();
        group
            .elections
            .store(enabled, std::sync::atomic::Ordering::Release);
        group.apply_elections(lease.is_some());
        true
    }

    /// Makes this replica of `group` stand for election now (`Admin.Elect`). `handed_by`
    /// names the leader handing the group over and its term: if that is still this
    /// replica's view, the leader excluded it from its read lease first. Anyone else is
    /// refused while this replica is within its refusal window after its leader's last
    /// append, since a leader's lease may count on it not standing.
    pub async fn elect(&self, group: u32, handed_by: Option<(NodeId, u64)>) -> Result<(), Status> {
        let hosted = self.group(group)?;
        let offered = handed_by.is_some_and(|(leader, term)| {
            let vote = hosted.raft.metrics().borrow().vote;
            vote.leader_id().voted_for() == Some(leader) && vote.leader_id().get_term() == term
        });
        if !offered {
            if let Some(wait_ms) = hosted.lease.refusing_for_ms() {
                return Err(Status::failed_precondition(format!(
                    "group {group}: this replica heard its leader within the last election \
                     timeout, and the leader may serve reads from a lease that counts on it \
                     not standing; ask the leader to hand over, or retry in {wait_ms} ms"
                )));
            }
        }
        hosted
            .raft
            .trigger()
            .elect()
            .await
            .map_err(|fatal| Status::unavailable(format!("raft stopped: {fatal}")))
    }

    /// On a read replica: serve `group`'s serializable reads once its applied index reaches
    /// `floor`, the applied index its leader confirmed after this node started (every entry
    /// this node could have served before a restart is at or below it).
    pub fn open_reads_from(&self, group: GroupId, floor: u64) -> bool {
        let Some(group) = self.hosted(group) else {
            return false;
        };
        let mut held = group
            .read_floor
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // Once per start: a later, higher floor would refuse reads of a group already
        // serving while the replica's applied index trails the voters'.
        if held.is_none() {
            *held = Some(floor);
        }
        true
    }

    /// Refuses a replica's serializable read of `group` until it caught up once since start.
    fn caught_up_since_start(&self, group: &Group) -> Result<(), Status> {
        #[cfg(madsim)]
        if seedkv_core::faults::enabled(seedkv_core::faults::Fault::ReplicaReadsBeforeCaughtUp) {
            return Ok(());
        }
        let floor = *group
            .read_floor
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let applied = group.state.last_applied().map_or(0, |id| id.index);
        match floor {
            Some(floor) if applied >= floor => Ok(()),
            Some(floor) => Err(Status::unavailable(format!(
                "this read replica is catching up with group {} since it started (applied \
                 {applied} of {floor}): read from another node",
                group.id.0
            ))),
            None => Err(Status::unavailable(format!(
                "this read replica has not yet learned how far group {} got before it \
                 started: read from another node",
                group.id.0
            ))),
        }
    }

    /// Ends this node's read lease of `group` for the rest of the term (another node is
    /// about to be asked to stand); false if the node does not host the group.
    pub fn revoke_lease(&self, group: GroupId) -> bool {
        let Some(group) = self.hosted(group) else {
            return false;
        };
        let term = group.raft.metrics().borrow().vote.leader_id().get_term();
        group.lease.revoke_through(term);
        true
    }

    /// Stops counting `peer`'s acknowledgements in this node's read lease of `group` for
    /// the rest of the term: `peer` is about to be asked to stand.
    pub fn exclude_from_lease(&self, group: GroupId, peer: NodeId) {
        if let Some(group) = self.hosted(group) {
            let term = group.raft.metrics().borrow().vote.leader_id().get_term();
            group.lease.exclude(peer, term);
        }
    }

    /// The term of the read lease this node holds on `group` now, by its own lease clock
    /// (whatever its Raft believes): the simulator checks no other node leads a later term.
    pub fn lease_term(&self, group: GroupId) -> Option<u64> {
        let group = self.hosted(group)?;
        let metrics = group.raft.metrics().borrow().clone();
        group.lease.held_term(&metrics)
    }

    /// This node's read lease of `group`, described for a failure report.
    pub fn describe_lease(&self, group: GroupId) -> Option<String> {
        Some(self.hosted(group)?.lease.describe())
    }

    /// The Raft handle of `group`, if this node hosts it.
    pub fn raft_of(&self, group: GroupId) -> Option<Raft> {
        Some(self.hosted(group)?.raft.clone())
    }

    /// The applied state of the meta group.
    pub fn state(&self) -> &SharedState {
        &self.meta().state
    }

    /// The applied state of `group`, if this node hosts it.
    pub fn state_of(&self, group: GroupId) -> Option<Arc<SharedState>> {
        Some(self.hosted(group)?.state.clone())
    }

    /// The groups this node hosts, in id order (the meta group first).
    pub fn group_ids(&self) -> Vec<GroupId> {
        self.read_groups().keys().copied().collect()
    }

    /// The applied state of every group this node hosts, by group.
    pub fn group_states(&self) -> Vec<(GroupId, Arc<SharedState>)> {
        self.read_groups()
            .iter()
            .map(|(id, group)| (*id, group.state.clone()))
            .collect()
    }

    /// The slot map as this node's replica of the meta group applied it.
    pub fn slot_map(&self) -> Option<Arc<SlotMap>> {
        self.meta().state.slot_map()
    }

    fn read_groups(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<GroupId, Arc<Group>>> {
        self.groups.read().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn groups(&self) -> Vec<Arc<Group>> {
        self.read_groups().values().cloned().collect()
    }

    pub(crate) fn hosted(&self, group: GroupId) -> Option<Arc<Group>> {
        self.read_groups().get(&group).cloned()
    }

    /// `group`, opened here first if this node does not host it yet (a leader reaching a
    /// new replica, or a bootstrap placing the group here).
    async fn host(&self, group: GroupId) -> Result<Arc<Group>, Status> {
        if let Some(hosted) = self.hosted(group) {
            return Ok(hosted);
        }
        if group.0 > u32::from(seedkv_core::slot::SLOT_COUNT) {
            return Err(Status::not_found(format!(
                "raft group {} cannot exist: there are at most {} data groups",
                group.0,
                seedkv_core::slot::SLOT_COUNT
            )));
        }
        let _opening = self.opening.lock().await;
        if let Some(hosted) = self.hosted(group) {
            return Ok(hosted);
        }
        if self.raft().metrics().borrow().state == ServerState::Shutdown {
            return Err(Status::unavailable("the node is stopping"));
        }
        let opened = Arc::new(
            (self.open_group)(group)
                .await
                .map_err(|err| Status::unavailable(format!("opening group {}: {err}", group.0)))?,
        );
        tracing::info!(node = self.id, group = group.0, "hosting a new group");
        let mut groups = self.groups.write().unwrap_or_else(|p| p.into_inner());
        groups.insert(group, opened.clone());
        Ok(opened)
    }

    /// `group`'s membership lock, if it comes free within [`MEMBERSHIP_LOCK_WAIT_MS`];
    /// otherwise a refusal (nothing was done: another change is still running here).
    pub(crate) async fn membership_lock(
        group: &Group,
    ) -> Result<tokio::sync::OwnedMutexGuard<u64>, Status> {
        let wait = std::time::Duration::from_millis(MEMBERSHIP_LOCK_WAIT_MS);
        timeout(wait, group.membership.clone().lock_owned())
            .await
            .map_err(|_| {
                Status::unavailable(format!(
                    "another membership change of group {} on this node is still running after {MEMBERSHIP_LOCK_WAIT_MS} ms; nothing was changed",
                    group.id.0
                ))
            })
    }

    /// True while a snapshot transfer into this node is under way (for the simulator, which
    /// crashes nodes in the middle of one).
    pub fn receiving_snapshot(&self) -> bool {
        self.groups()
            .iter()
            .any(|group| match group.staging.try_lock() {
                Ok(staging) => staging.receiving().is_some(),
                Err(_) => true,
            })
    }

    pub(crate) fn meta(&self) -> &Arc<Group> {
        &self.meta
    }

    fn group(&self, id: u32) -> Result<Arc<Group>, Status> {
        self.hosted(GroupId(id))
            .ok_or_else(|| Status::not_found(format!("raft group {id} is not hosted here")))
    }

    /// `group` for a change its leader must make: one not hosted here is answered with a
    /// hint to another of its replicas, which the client follows to the leader.
    fn group_to_change(&self, id: u32) -> Result<Arc<Group>, Status> {
        match self.hosted(GroupId(id)) {
            Some(group) => Ok(group),
            None if id == META_GROUP.0 => Err(Status::internal("the meta group is always hosted")),
            None => Err(self.elsewhere(GroupId(id))),
        }
    }

    /// The data groups of the local slot map.
    fn data_groups(&self) -> Vec<GroupId> {
        self.slot_map()
            .map(|map| map.groups().keys().copied().collect())
            .unwrap_or_default()
    }

    /// The hosted data group that serves `slot`, for a request in `session_group`'s session
    /// if any; otherwise the `MOVED` refusal.
    fn serving(&self, slot: Slot, session_group: Option<GroupId>) -> Result<Arc<Group>, Status> {
        // While a slot moves, this node's replica of its old group may not have applied the
        // release yet when its replica of the new group took it: the newer epoch wins
        // (epochs are granted only by committed maps). Two owners at one epoch would be a
        // broken invariant, which routing refuses.
        let owned: Vec<(Arc<Group>, u64)> = self
            .groups()
            .into_iter()
            .filter_map(|group| {
                let epoch = group.state.shard().owned.epoch_of(slot)?;
                Some((group, epoch))
            })
            .collect();
        let newest = owned.iter().map(|(_, epoch)| *epoch).max();
        let owning: Vec<Arc<Group>> = owned
            .into_iter()
            .filter(|(_, epoch)| Some(*epoch) == newest)
            .map(|(group, _)| group)
            .collect();
        let ids: Vec<GroupId> = owning.iter().map(|group| group.id).collect();
        let map = self.slot_map();
        match routing::route(slot, &ids, session_group, map.as_deref()) {
            Decision::Serve(id) => {
                let group = owning
                    .into_iter()
                    .find(|group| group.id == id)
                    .ok_or_else(|| Status::internal("routing chose a group it was not given"))?;
                match refusal(self, &group.state.shard(), slot) {
                    // A replica that does not lead the group may be cut off, its freeze
                    // long since released elsewhere: send the client to the leader.
                    Some(status)
                        if crate::status::try_again_slot(&status).is_some()
                            && group.raft.metrics().borrow().state != ServerState::Leader =>
                    {
                        ensure_leader(&group.raft).and(Err(status))
                    }
                    Some(status) => Err(status),
                    None => Ok(group),
                }
            }
            Decision::Moved { slot, owner } => Err(moved(slot, owner)),
        }
    }

    /// The hosted data group a request naming `group` (0: the only one) is for; a group
    /// hosted elsewhere is answered with a hint to one of its replicas.
    /// The hosted group serving a read of `slot`. A read replica that does not serve the
    /// slot yet (it is joining, blank after a restart) refuses a serializable read as
    /// unavailable rather than sending the client elsewhere: a client that reads from one
    /// replica must not be handed to a node further behind than what it already read.
    fn serving_read(&self, slot: Slot, consistency: i32) -> Result<Arc<Group>, Status> {
        self.serving(slot, None).map_err(|status| {
            let serializable = consistency == pb::Consistency::Serializable as i32;
            if self.replica && serializable && crate::status::moved_slot(&status).is_some() {
                Status::unavailable(format!(
                    "this read replica does not serve {slot} yet (it is joining the cluster, \
                     or catching up since it started): read from another node"
                ))
            } else {
                status
            }
        })
    }

    fn named_group(&self, group: u32) -> Result<Arc<Group>, Status> {
        let id =
            routing::named_or_only(group, &self.data_groups()).map_err(Status::invalid_argument)?;
        if id == META_GROUP {
            return Err(Status::invalid_argument("the meta group holds no keys"));
        }
        if let Some(hosted) = self.hosted(id) {
            return Ok(hosted);
        }
        Err(self.elsewhere(id))
    }

    /// A not-leader refusal for a group this node does not host, naming a replica of it from
    /// the slot map (the client follows it, and that replica names the leader).
    fn elsewhere(&self, group: GroupId) -> Status {
        let meta = self.meta();
        let metrics = meta.raft.metrics().borrow().clone();
        let members = metrics.membership_config.membership();
        // The replica after this node in the group's list (the first if this node is not in
        // it): nodes that do not host the group name different replicas, so a client sent
        // round by stale replicas still reaches every one of them.
        let replica = self.slot_map().and_then(|map| {
            let replicas = &map.groups().get(&group)?.replicas;
            let after = replicas
                .iter()
                .position(|id| *id == self.id)
                .map_or(0, |at| at + 1);
            let n = replicas.len();
            (0..n)
                .map(|k| replicas[(after + k) % n])
                .filter(|id| *id != self.id)
                .find_map(|id| Some((id, members.get_node(&id)?.clone())))
        });
        let (leader_id, leader_node) = match replica {
            Some((id, member)) => (Some(id), Some(member)),
            None => (None, None),
        };
        not_proposed(&openraft::error::ForwardToLeader {
            leader_id,
            leader_node,
        })
    }

    /// Serves the `Kv`, `Raft` and `Admin` services on `addr` until the task is dropped.
    pub async fn serve(self: Arc<Self>, addr: SocketAddr) -> Result<(), tonic::transport::Error> {
        self.router().serve(addr).await
    }

    /// The three services, ready to serve.
    pub fn router(self: Arc<Self>) -> tonic::transport::server::Router {
        let max = self.limits.max_request_bytes + 64 * 1024;
        tonic::transport::Server::builder()
            .add_service(
                pb::kv_server::KvServer::new(KvService(self.clone()))
                    .max_decoding_message_size(max),
            )
            .add_service(
                pb::raft_server::RaftServer::new(RaftService(self.clone()))
                    .max_decoding_message_size(usize::MAX)
                    .max_encoding_message_size(usize::MAX),
            )
            .add_service(pb::admin_server::AdminServer::new(AdminService(self)))
    }

    /// The node's three gRPC services configured as [`Node::router`] serves them, for a
    /// real server that hosts more beside them (the simulator's server takes only these).
    #[cfg(not(madsim))]
    pub fn services(
        self: Arc<Self>,
    ) -> (
        pb::kv_server::KvServer<KvService>,
        pb::raft_server::RaftServer<RaftService>,
        pb::admin_server::AdminServer<AdminService>,
    ) {
        let max = self.limits.max_request_bytes + 64 * 1024;
        (
            pb::kv_server::KvServer::new(KvService(self.clone())).max_decoding_message_size(max),
            pb::raft_server::RaftServer::new(RaftService(self.clone()))
                .max_decoding_message_size(usize::MAX)
                .max_encoding_message_size(usize::MAX),
            pb::admin_server::AdminServer::new(AdminService(self)),
        )
    }

    /// The hosted group `group` and slot `slot` of a move step, at the group's leader (a
    /// node that does not lead it refuses with the leader hint).
    fn moving_group(&self, group: u32, slot: u32) -> Result<(Arc<Group>, Slot), Status> {
        let slot = u16::try_from(slot)
            .ok()
            .and_then(Slot::new)
            .ok_or_else(|| Status::invalid_argument(format!("slot {slot} is out of range")))?;
        if group == META_GROUP.0 {
            return Err(Status::invalid_argument("the meta group holds no slot"));
        }
        let group = self.group_to_change(group)?;
        ensure_leader(&group.raft)?;
        Ok((group, slot))
    }

    /// Records a move of every slot of `request` in the meta group, at its leader; nothing
    /// is recorded unless every slot can move.
    async fn begin_moves(
        &self,
        request: pb::MoveSlotsRequest,
    ) -> Result<Vec<seedkv_core::migration::Migration>, Status> {
        let slot = |n: u32| {
            u16::try_from(n).ok().and_then(Slot::new).ok_or_else(|| {
                Status::invalid_argument(format!("slot {n} is out of range 0..=1023"))
            })
        };
        let (first, last) = (slot(request.first)?, slot(request.last)?);
        if first > last {
            return Err(Status::invalid_argument(format!(
                "the slot range {}..{} is inverted",
                first.get(),
                last.get()
            )));
        }
        if request.to == META_GROUP.0 {
            return Err(Status::invalid_argument(
                "group 0 is the meta group, which holds no slot",
            ));
        }
        let to = GroupId(request.to);
        let meta = self.meta().clone();
        ensure_leader(&meta.raft)?;
        let shard = meta.state.shard();
        let map = shard.map.as_deref().ok_or_else(|| {
            Status::unavailable("the cluster has no slot map yet (it is starting); retry")
        })?;
        if !map.groups().contains_key(&to) {
            return Err(Status::invalid_argument(format!(
                "no data group {to} in the slot map"
            )));
        }
        let moves: Vec<(Slot, GroupId)> = (first.get()..=last.get())
            .filter_map(Slot::new)
            .map(|slot| (slot, to))
            .collect();
        self.record_moves(&meta, &moves).await
    }

    /// Records `moves` (slot, destination) in the meta group, whose leader this node is;
    /// nothing is recorded unless every slot can move.
    async fn record_moves(
        &self,
        meta: &Group,
        moves: &[(Slot, GroupId)],
    ) -> Result<Vec<seedkv_core::migration::Migration>, Status> {
        use seedkv_core::migration::MetaStep;
        let shard = meta.state.shard();
        let map = shard.map.as_deref().ok_or_else(|| {
            Status::unavailable("the cluster has no slot map yet (it is starting); retry")
        })?;
        for &(slot, to) in moves {
            if map.owner(slot).group == to {
                return Err(Status::invalid_argument(format!(
                    "group {to} owns {slot} already; nothing was moved"
                )));
            }
            if let Some(moving) = shard.migrations.of(slot) {
                return Err(Status::failed_precondition(format!(
                    "{slot} is already moving (migration {}, to group {}); nothing was moved",
                    moving.id, moving.to
                )));
            }
        }
        let steps = moves
            .iter()
            .map(|&(slot, to)| Command::Migrate(MetaStep::Begin { slot, to }))
            .collect();
        let written = timeout(
            std::time::Duration::from_millis(MOVE_STEP_COMMIT_MS),
            meta.raft.client_write(Command::Multi(steps)),
        )
        .await
        .map_err(|_| Status::unavailable("the moves were not recorded in time; they may still be"))?
        .map_err(client_write_error)?;
        let Response::Multi(responses) = written.data else {
            return Err(unexpected(&written.data));
        };
        let mut started = Vec::new();
        let mut refused = Vec::new();
        for response in responses {
            match response {
                Response::Migration(Ok(migration)) => started.push(migration),
                Response::Migration(Err(reason)) => refused.push(reason),
                other => return Err(unexpected(&other)),
            }
        }
        if let Some(reason) = refused.first() {
            // Another move recorded between the check and the entry: report it, with
            // those that did start (they go on).
            return Err(Status::failed_precondition(format!(
                "{} of {} slots could not move ({reason}); {} started",
                refused.len(),
                moves.len(),
                started.len()
            )));
        }
        Ok(started)
    }

    /// Proposes `next` as the slot map over `current` in the meta group, whose leader this
    /// node must be; refused (nothing changed) if the map changed meanwhile.
    async fn change_map(&self, current: &SlotMap, next: SlotMap) -> Result<u64, Status> {
        let meta = self.meta();
        ensure_leader(&meta.raft)?;
        let command = Command::SetMap {
            expect_version: current.version(),
            map: Box::new(next),
        };
        let written = timeout(
            std::time::Duration::from_millis(MOVE_STEP_COMMIT_MS),
            meta.raft.client_write(command),
        )
        .await
        .map_err(|_| Status::unavailable("the map change did not commit in time; it may still"))?
        .map_err(client_write_error)?;
        match written.data {
            Response::MapSet {
                succeeded: true,
                version,
            } => Ok(version),
            Response::MapSet { version, .. } => Err(Status::aborted(format!(
                "the slot map changed meanwhile (now version {version}); nothing was changed; \
                 retry"
            ))),
            other => Err(unexpected(&other)),
        }
    }

    /// The slot map as the meta group's leader (this node) holds it.
    fn leader_map(&self) -> Result<Arc<SlotMap>, Status> {
        ensure_leader(&self.meta().raft)?;
        self.slot_map().ok_or_else(|| {
            Status::unavailable("the cluster has no slot map yet (it is starting); retry")
        })
    }

    async fn add_group(&self, request: pb::AddGroupRequest) -> Result<(GroupId, u64), Status> {
        let map = self.leader_map()?;
        if request.nodes.is_empty() {
            return Err(Status::invalid_argument(
                "a data group needs at least one node (--nodes 1,2,3)",
            ));
        }
        let members: BTreeSet<NodeId> = self
            .meta()
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .collect();
        if let Some(stray) = request.nodes.iter().find(|id| !members.contains(id)) {
            return Err(Status::invalid_argument(format!(
                "node {stray} is not a voting member of the cluster (members: {members:?})"
            )));
        }
        let group = GroupId(map.groups().keys().map(|g| g.0).max().unwrap_or(0) + 1);
        let next = map
            .with_group(group, request.nodes.clone(), request.weight)
            .map_err(|err| Status::invalid_argument(err.to_string()))?;
        let version = self.change_map(&map, next).await?;
        Ok((group, version))
    }

    async fn set_weight(&self, request: pb::SetWeightRequest) -> Result<u64, Status> {
        let map = self.leader_map()?;
        let next = map
            .with_weight(GroupId(request.group), request.weight)
            .map_err(|err| Status::invalid_argument(err.to_string()))?;
        self.change_map(&map, next).await
    }

    async fn remove_group(&self, group: u32) -> Result<u64, Status> {
        let map = self.leader_map()?;
        let group = GroupId(group);
        if let Some(moving) = self
            .meta()
            .state
            .shard()
            .migrations
            .iter()
            .find(|m| m.from == group || m.to == group)
        {
            return Err(Status::failed_precondition(format!(
                "{} of group {group} is moving (migration {}); nothing was changed",
                moving.slot, moving.id
            )));
        }
        let next = map
            .without_group(group)
            .map_err(|err| Status::invalid_argument(err.to_string()))?;
        self.change_map(&map, next).await
    }

    async fn rebalance(&self) -> Result<Vec<seedkv_core::migration::Migration>, Status> {
        let map = self.leader_map()?;
        let meta = self.meta().clone();
        let moving = meta.state.shard().migrations.len();
        if moving > 0 {
            return Err(Status::failed_precondition(format!(
                "{moving} slot moves are in progress (seedkv cluster migrations); rebalance \
                 once they are done; nothing was moved"
            )));
        }
        let plan = seedkv_core::rebalance::plan(&map)
            .map_err(|err| Status::invalid_argument(err.to_string()))?;
        if plan.is_empty() {
            return Ok(Vec::new());
        }
        let moves: Vec<(Slot, GroupId)> = plan.iter().map(|m| (m.slot, m.to)).collect();
        self.record_moves(&meta, &moves).await
    }

    /// Starts data group `group`, added to the map on `replicas` after the bootstrap, if
    /// this node is its first replica and no replica started it: opens it here and writes
    /// its first membership, with the members' incarnations as the meta group records them
    /// (a node back on a blank disk, whose incarnation the meta group does not record,
    /// starts nothing).
    pub(crate) async fn start_added_group(
        &self,
        group: GroupId,
        replicas: &[NodeId],
    ) -> Result<(), Status> {
        let members: BTreeMap<NodeId, Member> = self
            .meta()
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .nodes()
            .map(|(id, member)| (*id, member.clone()))
            .collect();
        if members.get(&self.id).map(|m| m.incarnation) != Some(self.incarnation()) {
            return Ok(());
        }
        let chosen: BTreeMap<NodeId, Member> = replicas
            .iter()
            .filter_map(|id| Some((*id, members.get(id)?.clone())))
            .filter(|(_, member)| member.incarnation != 0)
            .collect();
        if chosen.len() != replicas.len() {
            return Err(Status::unavailable(format!(
                "not every replica of group {group} is a member with a known incarnation yet"
            )));
        }
        let raft = self.host(group).await?.raft.clone();
        if raft.is_initialized().await.unwrap_or(true) {
            return Ok(());
        }
        match raft.initialize(chosen).await {
            Ok(()) => {
                tracing::info!(
                    node = self.id,
                    group = group.0,
                    "started an added data group"
                );
                Ok(())
            }
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(()),
            Err(err) => Err(membership_error(err)),
        }
    }

    /// The limits every request is checked against.    /// The limits every request is checked against.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Stops Raft; the node answers nothing afterwards.
    pub async fn shutdown(&self) {
        // Held so no group opens while the others stop.
        let _opening = self.opening.lock().await;
        for group in self.groups() {
            if let Err(err) = group.raft.shutdown().await {
                tracing::warn!(node = self.id, group = group.id.0, "raft shutdown: {err}");
            }
        }
    }

    /// A client write, `session_group` being the group its session belongs to, if any.
    async fn write(
        &self,
        command: Command,
        session_group: Option<u32>,
    ) -> Result<Response, Status> {
        self.limits
            .check_command(&command)
            .map_err(|err| Status::invalid_argument(err.to_string()))?;
        let slot = seedkv_core::command::one_slot(command.ops())
            .map_err(|err| Status::invalid_argument(err.to_string()))?
            .ok_or_else(|| Status::invalid_argument("a write needs at least one key"))?;
        let group = self.serving(slot, session_group.map(GroupId))?;
        self.write_to(&group, command).await
    }

    /// Proposes `command` to `group`, whose leader this node must be.
    async fn write_to(&self, group: &Group, command: Command) -> Result<Response, Status> {
        if self.handing_over.load(std::sync::atomic::Ordering::Acquire)
            || group
                .handing_over
                .load(std::sync::atomic::Ordering::Acquire)
        {
            return Err(not_proposed(&openraft::error::ForwardToLeader {
                leader_id: None,
                leader_node: None,
            }));
        }
        #[cfg(madsim)]
        if seedkv_core::faults::enabled(seedkv_core::faults::Fault::AckBeforeCommit) {
            return self.write_acked_early(group, command).await;
        }
        ensure_leader(&group.raft)?;
        self.metrics.proposals.inc();
        match group.proposer.propose(command).await? {
            Response::SessionExpired => Err(session_expired()),
            Response::StaleWrite { acked_below } => Err(stale_write(acked_below)),
            Response::NotOwned { slot } => {
                Err(moved(slot, self.slot_map().map(|map| map.owner(slot))))
            }
            Response::Frozen { slot } => Err(try_again(slot)),
            response => Ok(response),
        }
    }

    /// The `AckBeforeCommit` fault: answer from the leader's own state and proposed index
    /// without waiting for a quorum. Deliberately wrong.
    #[cfg(madsim)]
    async fn write_acked_early(&self, group: &Group, command: Command) -> Result<Response, Status> {
        let metrics = group.raft.metrics().borrow().clone();
        if metrics.state != ServerState::Leader {
            return Err(not_leader(&openraft::error::ForwardToLeader {
                leader_id: metrics.current_leader,
                leader_node: None,
            }));
        }
        let revision = metrics.last_log_index.unwrap_or(0) + 1;
        let response = group
            .state
            .preview(revision, &command)
            .map_err(disk_error)?;
        group
            .raft
            .client_write_ff(command)
            .await
            .map_err(|fatal| Status::unavailable(fatal.to_string()))?;
        Ok(response)
    }

    /// Reads `group`'s state with `read` at the given consistency. A linearizable read
    /// is served from a lease when the leader holds one before and still after reading
    /// (a process may stop between the two); otherwise, or if the lease lapsed meanwhile,
    /// after a read-index round.
    async fn read<T>(
        &self,
        group: &Group,
        consistency: i32,
        read: impl Fn(&Group) -> Result<T, Status>,
    ) -> Result<T, Status> {
        let consistency = pb::Consistency::try_from(consistency)
            .map_err(|_| Status::invalid_argument(format!("unknown consistency {consistency}")))?;
        if consistency == pb::Consistency::Serializable {
            if self.replica {
                self.caught_up_since_start(group)?;
            }
            return read(group);
        }
        #[cfg(madsim)]
        if seedkv_core::faults::enabled(seedkv_core::faults::Fault::StaleLinearizableRead) {
            return read(group);
        }
        let leased = group.lease.check(&group.raft.metrics().borrow());
        if let Some(term) = leased {
            let value = read(group)?;
            if group.lease.holds_in(term) {
                return Ok(value);
            }
        }
        group.read_index.wait().await?;
        read(group)
    }
}

impl NodeConfig {
    /// The lease the node's groups take, if read leases are on; a drift bound that leaves
    /// no useful lease is refused with the reason.
    pub fn lease_config(&self) -> Result<Option<seedkv_core::lease::LeaseConfig>, NodeError> {
        lease_config(&self.raft, &self.lease)
    }
}

fn lease_config(
    raft: &openraft::Config,
    settings: &LeaseSettings,
) -> Result<Option<seedkv_core::lease::LeaseConfig>, NodeError> {
    if !settings.read_lease {
        return Ok(None);
    }
    let (drift_ppm, margin_ms) = (settings.max_drift_ppm, settings.margin_ms);
    #[cfg(madsim)]
    let (drift_ppm, margin_ms) =
        if seedkv_core::faults::enabled(seedkv_core::faults::Fault::LeaseWithoutDriftMargin) {
            (0, 0)
        } else {
            (drift_ppm, margin_ms)
        };
    seedkv_core::lease::LeaseConfig::new(
        raft.election_timeout_max,
        raft.heartbeat_interval,
        drift_ppm,
        margin_ms,
    )
    .map(Some)
    .map_err(|err| NodeError::Config(format!("read lease: {err}")))
}

/// Opens `group`'s state machine, log and Raft on `disk`.
#[allow(clippy::too_many_arguments)]
async fn open<D: Disk>(
    id: NodeId,
    group: GroupId,
    disk: Arc<D>,
    syncer: LogSyncer,
    raft_config: Arc<openraft::Config>,
    network: GrpcNetwork,
    lease: Arc<GroupLease>,
    metrics: Arc<NodeMetrics>,
) -> Result<Group, NodeError> {
    let dyn_disk: Arc<dyn DynDisk> = disk.clone();
    let state_machine = StateMachineStore::open(dyn_disk, group, metrics)
        .await
        .map_err(|err| NodeError::Storage(format!("group {}: {err}", group.0)))?;
    let mut log = LogStore::new(disk, group, state_machine.durable_applied(), syncer);
    // openraft resumes a leadership whose vote it finds on disk with no election: its
    // state may be behind what it committed before it stopped, and the exclusions it
    // made are gone. No lease in that term (read from the disk: openraft's metrics do not
    // hold the vote yet when `Raft::new` returns).
    let stored_vote = openraft::storage::RaftLogStorage::read_vote(&mut log)
        .await
        .map_err(|err| NodeError::Storage(format!("group {}: {err}", group.0)))?;
    let resumed = stored_vote.map_or(0, |vote| vote.leader_id().get_term());
    #[cfg(madsim)]
    let resumed = if seedkv_core::faults::enabled(seedkv_core::faults::Fault::LeaseInResumedTerm) {
        0
    } else {
        resumed
    };
    lease.revoke_through(resumed);
    let state = state_machine.state();
    let raft = Raft::new(id, raft_config, network, log, state_machine)
        .await
        .map_err(|err| NodeError::Raft(format!("group {}: {err}", group.0)))?;
    let handing_over = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let leader_changes = Arc::new(std::sync::atomic::AtomicU64::new(0));
    tokio::spawn(crate::metrics::count_leader_changes(
        raft.clone(),
        leader_changes.clone(),
    ));
    Ok(Group {
        id: group,
        read_index: ReadIndex::start(raft.clone(), state.clone()),
        leader_changes,
        lease,
        proposer: Proposer::start(raft.clone(), handing_over.clone()),
        staging: Arc::new(tokio::sync::Mutex::new(Staging::new(state.clone()))),
        install_gate: Arc::new(tokio::sync::RwLock::new(())),
        membership: Arc::new(tokio::sync::Mutex::new(0)),
        heartbeats: std::sync::atomic::AtomicBool::new(true),
        handing_over,
        elections: std::sync::atomic::AtomicBool::new(true),
        read_floor: std::sync::Mutex::new(None),
        quiet_until: std::sync::Mutex::new(None),
        vote_refreshed: std::sync::Mutex::new(None),
        raft,
        state,
    })
}

/// The `MembershipWithoutCompare` fault: the voters the caller read, changed as asked, set
/// as they are. Deliberately wrong.
#[cfg(madsim)]
fn without_compare(
    change: ChangeMembers<NodeId, Member>,
    mut voters: BTreeSet<NodeId>,
) -> ChangeMembers<NodeId, Member> {
    match change {
        ChangeMembers::AddVoterIds(add) => voters.extend(add),
        ChangeMembers::RemoveVoters(remove) => voters.retain(|v| !remove.contains(v)),
        other => return other,
    }
    ChangeMembers::ReplaceAllVoters(voters)
}

/// Runs both halves of a membership change in a task of its own, so that a caller that goes
/// away (a timed-out client) cannot leave it half done; returns the log index of its last entry.
/// How long one membership entry may take to commit before the change is reported with an
/// unknown outcome (and this node's membership lock released).
const MEMBERSHIP_STEP_MS: u64 = 10_000;

/// How long one step of a slot move (or the record of moves) may take to commit before it
/// is reported with an unknown outcome.
const MOVE_STEP_COMMIT_MS: u64 = 10_000;

/// How long a membership change waits for the previous one on this node to finish.
const MEMBERSHIP_LOCK_WAIT_MS: u64 = 1_000;

/// How long adding a learner waits for it to catch up before answering.
const LEARNER_CATCH_UP_MS: u64 = 600_000;

/// How long a membership change waits for the previous one to show in the metrics.
const MEMBERSHIP_WAIT_MS: u64 = 2_000;

/// Waits until `raft`'s metrics show the membership written at `index` or later.
async fn membership_visible(raft: &Raft, index: u64) -> Result<(), Status> {
    raft.wait(Some(std::time::Duration::from_millis(MEMBERSHIP_WAIT_MS)))
        .metrics(
            |m| m.membership_config.log_id().map_or(0, |id| id.index) >= index,
            "the last membership change in the metrics",
        )
        .await
        .map(|_| ())
        .map_err(|err| Status::unavailable(format!("membership not yet visible: {err}")))
}

async fn change_to_completion(
    raft: &Raft,
    change: ChangeMembers<NodeId, Member>,
) -> Result<u64, Status> {
    let raft = raft.clone();
    tracing::debug!(?change, "membership change: start");
    let task = tokio::spawn(async move { raft.change_membership(change, false).await });
    let wait = std::time::Duration::from_millis(MEMBERSHIP_STEP_MS);
    match timeout(wait, task).await {
        Ok(Ok(result)) => result
            .map(|written| written.log_id.index)
            .map_err(client_write_error),
        Ok(Err(err)) => Err(Status::unavailable(format!(
            "the membership change stopped: {err}"
        ))),
        Err(_) => Err(stuck_membership_step()),
    }
}

/// A membership entry not committed within [`MEMBERSHIP_STEP_MS`]: openraft may still
/// commit it, so the outcome is unknown; the node's membership lock is released so later
/// changes are not blocked behind it (openraft refuses them while a change is half done).
fn stuck_membership_step() -> Status {
    Status::unavailable(format!(
        "the membership change was not committed within {MEMBERSHIP_STEP_MS} ms; it may still be"
    ))
}

/// Refuses, marked as not proposed, unless this node leads `raft`'s group right now. A write
/// that passes may still be refused later (leadership lost before it was appended, or its
/// entry truncated): that refusal is unmarked, since the write may then commit elsewhere.
fn ensure_leader(raft: &Raft) -> Result<(), Status> {
    let metrics = raft.metrics();
    let metrics = metrics.borrow();
    if metrics.state == ServerState::Leader {
        return Ok(());
    }
    let leader_node = metrics.current_leader.and_then(|id| {
        metrics
            .membership_config
            .membership()
            .get_node(&id)
            .cloned()
    });
    Err(not_proposed(&openraft::error::ForwardToLeader {
        leader_id: metrics.current_leader,
        leader_node,
    }))
}

/// Why `shard` does not serve `slot`, if it does not: `MOVED` when the group does not own
/// it, `TRY_AGAIN` while it is frozen to move.
fn refusal(node: &Node, shard: &ShardState, slot: Slot) -> Option<Status> {
    match shard.serving(slot) {
        Serving::Owned { .. } => None,
        #[cfg(madsim)]
        Serving::Frozen
            if seedkv_core::faults::enabled(seedkv_core::faults::Fault::SourceServesFrozen) =>
        {
            None
        }
        Serving::Frozen => Some(try_again(slot)),
        Serving::NotOwned => Some(moved(slot, node.slot_map().map(|map| map.owner(slot)))),
    }
}

/// Reads rows of `slots` from `group` with `read`, refusing unless the group serves every
/// one of them both before and after the read at the same epoch. Slots leave a group: a
/// read must not answer from rows another group may have written since. The group serves
/// a slot unfrozen at one epoch only while no other group can (the destination activates
/// after the source froze, and a source never thaws after the commit), so rows read
/// between two such checks are the slot's true rows.
fn read_served<T>(
    node: &Node,
    group: &Group,
    slots: &[Slot],
    read: impl FnOnce() -> Result<T, Status>,
) -> Result<T, Status> {
    let before = group.state.shard();
    if let Some(status) = slots.iter().find_map(|&slot| refusal(node, &before, slot)) {
        return Err(status);
    }
    let value = read()?;
    let after = group.state.shard();
    if Arc::ptr_eq(&before, &after) {
        return Ok(value);
    }
    for &slot in slots {
        if let Some(status) = refusal(node, &after, slot) {
            return Err(status);
        }
        if after.serving(slot) != before.serving(slot) {
            return Err(try_again(slot));
        }
    }
    Ok(value)
}

/// The group a request's session names (0: the cluster's only data group).
fn session_group(node: &Node, session: Option<&pb::Session>) -> Result<Option<u32>, Status> {
    let Some(session) = session else {
        return Ok(None);
    };
    routing::named_or_only(session.group, &node.data_groups())
        .map(|group| Some(group.0))
        .map_err(Status::invalid_argument)
}

fn get_response(found: Option<&Versioned>) -> pb::GetResponse {
    match found {
        Some(v) => pb::GetResponse {
            found: true,
            value: v.value.clone(),
            revision: v.revision,
        },
        None => pb::GetResponse::default(),
    }
}

fn unexpected(response: &Response) -> Status {
    Status::internal(format!(
        "state machine answered {response:?} to a different command"
    ))
}

/// The `Kv` service.
pub struct KvService(Arc<Node>);

#[tonic::async_trait]
impl pb::kv_server::Kv for KvService {
    async fn put(
        &self,
        request: Request<pb::PutRequest>,
    ) -> Result<GrpcResponse<pb::PutResponse>, Status> {
        let request = request.into_inner();
        let session = session_group(&self.0, request.session.as_ref())?;
        let command = convert::put(request);
        match self.0.write(command, session).await? {
            Response::Put { revision } => Ok(GrpcResponse::new(pb::PutResponse { revision })),
            other => Err(unexpected(&other)),
        }
    }

    async fn get(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<GrpcResponse<pb::GetResponse>, Status> {
        let req = request.into_inner();
        self.0
            .limits
            .check_key(&req.key)
            .map_err(|err| Status::invalid_argument(err.to_string()))?;
        let group = self.0.serving_read(Slot::of(&req.key), req.consistency)?;
        let row = self
            .0
            .read(&group, req.consistency, |group| {
                read_served(&self.0, group, &[Slot::of(&req.key)], || {
                    group.state.get(&req.key).map_err(disk_error)
                })
            })
            .await?;
        tracing::debug!(
            node = self.0.id,
            key = %String::from_utf8_lossy(&req.key),
            found = ?row.as_ref().map(|v| v.revision),
            "get"
        );
        Ok(GrpcResponse::new(get_response(row.as_ref())))
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Result<GrpcResponse<pb::DeleteResponse>, Status> {
        let request = request.into_inner();
        let session = session_group(&self.0, request.session.as_ref())?;
        let command = convert::delete(request);
        match self.0.write(command, session).await? {
            Response::Delete { revision, existed } => {
                Ok(GrpcResponse::new(pb::DeleteResponse { revision, existed }))
            }
            other => Err(unexpected(&other)),
        }
    }

    async fn scan(
        &self,
        request: Request<pb::ScanRequest>,
    ) -> Result<GrpcResponse<pb::ScanResponse>, Status> {
        let req = request.into_inner();
        let limits = &self.0.limits;
        let (range, limit) = convert::scan(&req, limits);
        limits
            .check_scan(&range, limit)
            .map_err(|err| Status::invalid_argument(err.to_string()))?;
        let group = self.0.named_group(req.group)?;
        // One more than asked tells whether the result was cut short.
        let (mut rows, covered) = self
            .0
            .read(&group, req.consistency, |group| {
                // Any slot of the group may hold keys of the range: every one it owns must
                // be served, before and after.
                let before = group.state.shard();
                let frozen: Vec<Slot> = before.moves.frozen.keys().copied().collect();
                read_served(&self.0, group, &frozen, || {
                    let rows = group.state.scan(&range, limit + 1).map_err(disk_error)?;
                    let after = group.state.shard();
                    if let Some(&slot) = after.moves.frozen.keys().next() {
                        return Err(try_again(slot));
                    }
                    if after.owned != before.owned {
                        return Err(try_again(Slot::FIRST));
                    }
                    Ok((rows, after.owned.clone()))
                })
            })
            .await?;
        let more = rows.len() > limit;
        rows.truncate(limit);
        let entries = rows
            .into_iter()
            .map(|(key, v)| pb::KeyValue {
                key,
                value: v.value,
                revision: v.revision,
            })
            .collect();
        let covered = covered
            .ranges()
            .iter()
            .map(|range| pb::SlotRange {
                first: u32::from(range.first.get()),
                last: u32::from(range.last.get()),
                epoch: range.epoch,
            })
            .collect();
        Ok(GrpcResponse::new(pb::ScanResponse {
            entries,
            more,
            covered,
        }))
    }

    async fn multi_get(
        &self,
        request: Request<pb::MultiGetRequest>,
    ) -> Result<GrpcResponse<pb::MultiGetResponse>, Status> {
        let req = request.into_inner();
        self.0
            .limits
            .check_keys(&req.keys)
            .map_err(|err| Status::invalid_argument(err.to_string()))?;
        // The keys of each hosted group are read together, from one view of its state:
        // atomic within a group.
        let mut groups: Vec<(Arc<Group>, Vec<usize>)> = Vec::new();
        for (index, key) in req.keys.iter().enumerate() {
            let group = self.0.serving_read(Slot::of(key), req.consistency)?;
            match groups.iter_mut().find(|(g, _)| g.id == group.id) {
                Some((_, indexes)) => indexes.push(index),
                None => groups.push((group, vec![index])),
            }
        }
        let mut values = vec![pb::GetResponse::default(); req.keys.len()];
        for (group, indexes) in &groups {
            let keys: Vec<Vec<u8>> = indexes.iter().map(|&i| req.keys[i].clone()).collect();
            let rows = self
                .0
                .read(group, req.consistency, |group| {
                    let slots: Vec<Slot> = keys.iter().map(|key| Slot::of(key)).collect();
                    read_served(&self.0, group, &slots, || {
                        group.state.multi_get(&keys).map_err(disk_error)
                    })
                })
                .await?;
            tracing::debug!(
                node = self.0.id,
                group = %group.id,
                keys = ?keys.iter().map(|k| String::from_utf8_lossy(k).into_owned()).collect::<Vec<_>>(),
                found = ?rows.iter().map(|r| r.as_ref().map(|v| v.revision)).collect::<Vec<_>>(),
                "multi-get"
            );
            for (&index, row) in indexes.iter().zip(&rows) {
                values[index] = get_response(row.as_ref());
            }
        }
        Ok(GrpcResponse::new(pb::MultiGetResponse { values }))
    }

    async fn cas(
        &self,
        request: Request<pb::CasRequest>,
    ) -> Result<GrpcResponse<pb::CasResponse>, Status> {
        let request = request.into_inner();
        let session = session_group(&self.0, request.session.as_ref())?;
        let command = convert::cas(request);
        match self.0.write(command, session).await? {
            Response::Cas {
                succeeded,
                revision,
            } => Ok(GrpcResponse::new(pb::CasResponse {
                succeeded,
                revision,
            })),
            other => Err(unexpected(&other)),
        }
    }

    async fn batch(
        &self,
        request: Request<pb::BatchRequest>,
    ) -> Result<GrpcResponse<pb::BatchResponse>, Status> {
        let request = request.into_inner();
        let session = session_group(&self.0, request.session.as_ref())?;
        let command = convert::batch(request).map_err(Status::invalid_argument)?;
        match self.0.write(command, session).await? {
            Response::Batch {
                succeeded,
                revision,
            } => Ok(GrpcResponse::new(pb::BatchResponse {
                succeeded,
                revision,
            })),
            other => Err(unexpected(&other)),
        }
    }

    async fn register(
        &self,
        request: Request<pb::RegisterRequest>,
    ) -> Result<GrpcResponse<pb::RegisterResponse>, Status> {
        let group = self.0.named_group(request.into_inner().group)?;
        match self.0.write_to(&group, Command::Register).await? {
            Response::Registered { client_id } => Ok(GrpcResponse::new(pb::RegisterResponse {
                client_id,
                group: group.id.0,
            })),
            other => Err(unexpected(&other)),
        }
    }
}

/// The `Raft` service: peers' Raft RPCs, routed to the group they name.
pub struct RaftService(Arc<Node>);

fn decode_request<T: DeserializeOwned>(message: &pb::RaftMessage) -> Result<T, Status> {
    codec::decode(&message.payload)
        .map_err(|err| Status::invalid_argument(format!("undecodable raft message: {err}")))
}

fn reply<T: Serialize>(group: u32, result: &T) -> pb::RaftMessage {
    pb::RaftMessage {
        group,
        payload: codec::encode(result),
        ..Default::default()
    }
}

impl RaftService {
    /// One AppendEntries, alone or from a batch.
    async fn append(&self, message: pb::RaftMessage) -> Result<pb::RaftMessage, Status> {
        self.0
            .identity
            .admit(&message, Inbound::AppendEntries, None)
            .await?;
        // A leader reaching a replica new to this node: host the group.
        let group = self.0.host(GroupId(message.group)).await?;
        // Not while a received snapshot is being installed: openraft takes a snapshot at once
        // and appends what follows it while the state machine still installs it, so those
        // entries could be durable, and acknowledged, before the state before them; a crash
        // between the two left a log with a hole and nothing to cover it (a group that could
        // not start: the simulator found it, an fsync failing during an install). See
        // `Group::install_gate`.
        let gate = group.install_gate.read().await;
        let rpc = decode_request(&message)?;
        let result = group.raft.append_entries(rpc).await;
        drop(gate);
        // Before the answer leaves: a leader may count it in a lease from then on.
        if result.as_ref().is_ok_and(crate::lease::vote_accepted) {
            group.lease.heard_leader();
        }
        Ok(reply(message.group, &result))
    }
}

#[tonic::async_trait]
impl pb::raft_server::Raft for RaftService {
    async fn append_entries(
        &self,
        request: Request<pb::RaftMessage>,
    ) -> Result<GrpcResponse<pb::RaftMessage>, Status> {
        Ok(GrpcResponse::new(self.append(request.into_inner()).await?))
    }

    /// Every request of the batch at once (one group waiting on its disk or its lock
    /// holds up none of the others); a request refused says why in its own reply.
    async fn append_entries_batch(
        &self,
        request: Request<pb::RaftBatch>,
    ) -> Result<GrpcResponse<pb::RaftBatch>, Status> {
        let messages = request.into_inner().messages;
        if messages.len() > crate::network::MAX_BATCH_MESSAGES {
            return Err(Status::invalid_argument(format!(
                "a batch of {} raft messages exceeds the limit of {}",
                messages.len(),
                crate::network::MAX_BATCH_MESSAGES
            )));
        }
        let replies = futures::future::join_all(messages.into_iter().map(|message| async move {
            let group = message.group;
            self.append(message)
                .await
                .unwrap_or_else(|status| pb::RaftMessage {
                    group,
                    refused: format!("{}: {}", status.code(), status.message()),
                    ..Default::default()
                })
        }))
        .await;
        Ok(GrpcResponse::new(pb::RaftBatch { messages: replies }))
    }

    /// A peer names groups it leads that are idle: each one this replica agrees on (it
    /// elected that leader at that term and holds the same log) keeps its elections off for
    /// a lease; the others are refused, and the leader heartbeats them again.
    async fn quiet(
        &self,
        request: Request<pb::RaftMessage>,
    ) -> Result<GrpcResponse<pb::RaftMessage>, Status> {
        use seedkv_core::quiet::{follower_agrees, FollowerView, QuietGroup, MAX_QUIET_GROUPS};
        let message = request.into_inner();
        self.0
            .identity
            .admit(&message, Inbound::AppendEntries, None)
            .await?;
        let announced: Vec<QuietGroup> = decode_request(&message)?;
        if announced.len() > MAX_QUIET_GROUPS {
            return Err(Status::invalid_argument(format!(
                "{} quiet groups exceed the limit of {MAX_QUIET_GROUPS}",
                announced.len()
            )));
        }
        let lease_ms = seedkv_core::quiet::quiet_lease_ms(
            self.0.quiet_lease_ms,
            seedkv_core::runtime::random_below(self.0.quiet_jitter_ms),
        );
        let until = tokio::time::Instant::now() + std::time::Duration::from_millis(lease_ms);
        let now = tokio::time::Instant::now();
        let mut refused = Vec::new();
        let beating = self.0.beating.load(std::sync::atomic::Ordering::Acquire);
        for quiet in &announced {
            // The leader's word, as the append a heartbeat would have carried: its vote,
            // and this replica's own log and commit, which agreement makes the leader's.
            let mut heartbeat = None;
            let agreed = self.0.hosted(GroupId(quiet.group)).filter(|group| {
                if !beating {
                    return false;
                }
                let metrics = group.raft.metrics();
                let metrics = metrics.borrow();
                heartbeat = Some(
                    openraft::raft::AppendEntriesRequest::<seedkv_core::TypeConfig> {
                        vote: metrics.vote,
                        prev_log_id: metrics.last_applied,
                        entries: Vec::new(),
                        leader_commit: metrics.last_applied,
                    },
                );
                let mine = FollowerView {
                    vote_term: metrics.vote.leader_id().get_term(),
                    voted_for: metrics.vote.leader_id().voted_for(),
                    vote_committed: metrics.vote.is_committed(),
                    last_log_index: metrics.last_log_index,
                    last_applied_index: metrics.last_applied.map(|id| id.index),
                    following: matches!(
                        metrics.state,
                        ServerState::Follower | ServerState::Learner
                    ),
                };
                follower_agrees(message.from, quiet, &mine)
            });
            let (Some(group), Some(heartbeat)) = (agreed, heartbeat) else {
                refused.push(quiet.group);
                continue;
            };
            group.quiet_until(until);
            // openraft refuses a candidate only within an election timeout of the leader's
            // last append: now and then, give it that append (no entry, nothing changes
            // but the time of the leader's last word), so a follower whose lease lapsed
            // cannot depose a leader the others still hear.
            // Never beside a snapshot install (as any append: see `install_gate`).
            let gate = group.install_gate.try_read();
            if gate.is_ok() && group.vote_refresh_due(now, self.0.quiet_refresh_ms) {
                let wait = std::time::Duration::from_millis(self.0.quiet_refresh_ms);
                match seedkv_core::runtime::timeout(wait, group.raft.append_entries(heartbeat))
                    .await
                {
                    Ok(Ok(response)) if response.is_success() => group.lease.heard_leader(),
                    other => tracing::debug!(
                        group = quiet.group,
                        ?other,
                        "a quiet group's heartbeat was not taken"
                    ),
                }
            }
        }
        Ok(GrpcResponse::new(reply(0, &refused)))
    }

    async fn vote(
        &self,
        request: Request<pb::RaftMessage>,
    ) -> Result<GrpcResponse<pb::RaftMessage>, Status> {
        let message = request.into_inner();
        let hosted = self.0.hosted(GroupId(message.group));
        let recorded = hosted.as_ref().and_then(|group| {
            group
                .raft
                .metrics()
                .borrow()
                .membership_config
                .membership()
                .get_node(&message.from)
                .map(|member| member.incarnation)
        });
        self.0
            .identity
            .admit(&message, Inbound::Vote, recorded)
            .await?;
        // A replica of a group that never reached this node yet (its bootstrap ran on the
        // other replicas only): it votes from a blank log, as any new member does. A node
        // that lost its disk is refused above by its incarnation, whatever the group.
        let group = match hosted {
            Some(group) => group,
            None => self.0.host(GroupId(message.group)).await?,
        };
        let rpc: openraft::raft::VoteRequest<NodeId> = decode_request(&message)?;
        // Before openraft may grant it: a leader whose own vote is old grants a higher one.
        let candidate = *rpc.vote.leader_id();
        let vote_term = group.raft.metrics().borrow().vote.leader_id().get_term();
        group
            .lease
            .on_vote_request(candidate.get_term(), candidate.node_id, vote_term);
        let result = group.raft.vote(rpc).await;
        // And again once openraft granted it, before the answer leaves: the request may have
        // waited in openraft's queue while this node won the candidate's term itself.
        if result.as_ref().is_ok_and(|answer| answer.vote_granted) {
            group.lease.on_vote_granted(candidate.get_term());
        }
        Ok(GrpcResponse::new(reply(message.group, &result)))
    }

    /// One frame of a snapshot transfer (see `seedkv_core::storage::snapshot`).
    async fn install_snapshot(
        &self,
        request: Request<pb::RaftMessage>,
    ) -> Result<GrpcResponse<pb::RaftMessage>, Status> {
        let message = request.into_inner();
        self.0
            .identity
            .admit(&message, Inbound::Snapshot, None)
            .await?;
        let group = self.0.host(GroupId(message.group)).await?;
        self.0
            .metrics
            .snapshot_received_bytes
            .inc_by(message.payload.len() as u64);
        let frame: SnapshotFrame = decode_request(&message)?;
        // The sender gives each frame `install_snapshot_timeout`, then drops the call, and
        // a real server then drops this handler: do the same here, so the simulator (whose
        // server runs every handler to its end) meets that cancellation too.
        let deadline = std::time::Duration::from_millis(self.0.snapshot_frame_timeout_ms);
        let handled = timeout(deadline, self.handle_snapshot_frame(&group, frame)).await;
        let result = handled.unwrap_or_else(|_| {
            Err(SnapshotRefused(format!(
                "snapshot frame not handled within {} ms",
                deadline.as_millis()
            )))
        });
        Ok(GrpcResponse::new(reply(message.group, &result)))
    }
}

impl RaftService {
    async fn handle_snapshot_frame(
        &self,
        group: &Group,
        frame: SnapshotFrame,
    ) -> Result<SnapshotReply, SnapshotRefused> {
        let mut staging = group.staging.clone().lock_owned().await;
        match frame {
            SnapshotFrame::Begin {
                transfer,
                vote,
                meta,
                header,
            } => {
                let my_vote = group.raft.metrics().borrow().vote;
                if vote < my_vote {
                    Ok(SnapshotReply::Done(openraft::raft::SnapshotResponse {
                        vote: my_vote,
                    }))
                } else {
                    tracing::info!(node = self.0.id, snapshot = ?meta.last_log_id, from = vote.leader_id().node_id, "receiving a snapshot");
                    staging
                        .begin(transfer, vote, meta, *header)
                        .await
                        .map(|()| SnapshotReply::Continue)
                        .map_err(SnapshotRefused::from)
                }
            }
            SnapshotFrame::Rows {
                transfer,
                seq,
                rows,
            } => staging
                .rows(transfer, seq, rows)
                .await
                .map(|()| SnapshotReply::Continue)
                .map_err(SnapshotRefused::from),
            SnapshotFrame::Finish {
                transfer,
                rows,
                keys,
            } => match staging.finish(transfer, rows, keys) {
                Ok((vote, meta, staged)) => {
                    let snapshot = openraft::Snapshot {
                        meta,
                        snapshot: Box::new(SnapshotData::Staged(staged)),
                    };
                    // Once handed to Raft the install will run even if this handler is
                    // dropped (the sender timed out): the staging lock goes with it into a
                    // task of its own, so no new transfer clears the staged generation
                    // before the install has switched to it.
                    let raft = group.raft.clone();
                    let gate = group.install_gate.clone();
                    let install = tokio::spawn(async move {
                        let held = staging;
                        let appends_wait = gate.write_owned().await;
                        let result = raft.install_full_snapshot(vote, snapshot).await;
                        drop(appends_wait);
                        drop(held);
                        result
                    });
                    match install.await {
                        Ok(result) => result
                            .map(SnapshotReply::Done)
                            .map_err(|fatal| SnapshotRefused(format!("raft stopped: {fatal}"))),
                        Err(err) => Err(SnapshotRefused(format!("the install stopped: {err}"))),
                    }
                }
                Err(err) => Err(err.into()),
            },
        }
    }
}

/// A disk read failed: corrupt data is never served.
fn disk_error(err: DiskError) -> Status {
    match err {
        DiskError::Corrupt { .. } => Status::data_loss(err.to_string()),
        DiskError::Io(_) | DiskError::Stale => Status::unavailable(err.to_string()),
    }
}

/// The `Admin` service: status and membership.
pub struct AdminService(Arc<Node>);

fn role(state: ServerState) -> &'static str {
    match state {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
}

fn membership_error<E: std::error::Error>(err: RaftError<NodeId, E>) -> Status {
    match err {
        RaftError::APIError(api) => Status::failed_precondition(api.to_string()),
        RaftError::Fatal(fatal) => Status::unavailable(format!("raft stopped: {fatal}")),
    }
}

fn client_write_error(err: RaftError<NodeId, ClientWriteError<NodeId, Member>>) -> Status {
    match err {
        RaftError::APIError(ClientWriteError::ForwardToLeader(forward)) => not_leader(&forward),
        RaftError::APIError(ClientWriteError::ChangeMembershipError(err)) => {
            Status::invalid_argument(err.to_string())
        }
        RaftError::Fatal(fatal) => Status::unavailable(format!("raft stopped: {fatal}")),
    }
}

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminService {
    async fn add_group(
        &self,
        request: Request<pb::AddGroupRequest>,
    ) -> Result<GrpcResponse<pb::AddGroupResponse>, Status> {
        let (group, map_version) = self.0.add_group(request.into_inner()).await?;
        Ok(GrpcResponse::new(pb::AddGroupResponse {
            group: group.0,
            map_version,
        }))
    }

    async fn set_weight(
        &self,
        request: Request<pb::SetWeightRequest>,
    ) -> Result<GrpcResponse<pb::SetWeightResponse>, Status> {
        let map_version = self.0.set_weight(request.into_inner()).await?;
        Ok(GrpcResponse::new(pb::SetWeightResponse { map_version }))
    }

    async fn remove_group(
        &self,
        request: Request<pb::RemoveGroupRequest>,
    ) -> Result<GrpcResponse<pb::SetWeightResponse>, Status> {
        let map_version = self.0.remove_group(request.into_inner().group).await?;
        Ok(GrpcResponse::new(pb::SetWeightResponse { map_version }))
    }

    async fn rebalance(
        &self,
        _request: Request<pb::RebalanceRequest>,
    ) -> Result<GrpcResponse<pb::MoveSlotsResponse>, Status> {
        let started = self.0.rebalance().await?;
        Ok(GrpcResponse::new(pb::MoveSlotsResponse {
            started: started.iter().map(convert::migration).collect(),
        }))
    }

    async fn move_slots(
        &self,
        request: Request<pb::MoveSlotsRequest>,
    ) -> Result<GrpcResponse<pb::MoveSlotsResponse>, Status> {
        let request = request.into_inner();
        let started = self.0.begin_moves(request).await?;
        Ok(GrpcResponse::new(pb::MoveSlotsResponse {
            started: started.iter().map(convert::migration).collect(),
        }))
    }

    async fn migrations(
        &self,
        _request: Request<pb::MigrationsRequest>,
    ) -> Result<GrpcResponse<pb::MigrationsResponse>, Status> {
        let shard = self.0.meta().state.shard();
        Ok(GrpcResponse::new(pb::MigrationsResponse {
            migrations: shard.migrations.iter().map(convert::migration).collect(),
            map_version: shard.map_version(),
        }))
    }

    async fn slot_state(
        &self,
        request: Request<pb::SlotStateRequest>,
    ) -> Result<GrpcResponse<pb::SlotStateResponse>, Status> {
        let request = request.into_inner();
        let (group, slot) = self.0.moving_group(request.group, request.slot)?;
        let shard = group.state.shard();
        let incoming = shard.moves.incoming.get(&slot);
        Ok(GrpcResponse::new(pb::SlotStateResponse {
            frozen_by: shard.moves.frozen.get(&slot).copied().unwrap_or(0),
            owned_epoch: shard.owned.epoch_of(slot).unwrap_or(0),
            incoming: incoming.is_some(),
            incoming_migration: incoming.map_or(0, |i| i.migration),
            next_seq: incoming.map_or(0, |i| i.next_seq),
            complete: incoming.is_some_and(|i| i.complete),
            last_key: incoming.map(|i| i.last_key.clone()).unwrap_or_default(),
            passed: incoming.is_some_and(|i| i.passed),
            base: incoming.map_or(0, |i| i.base),
            applied_index: group.state.last_applied().map_or(0, |id| id.index),
            released_epoch: shard.moves.released.get(&slot).copied().unwrap_or(0),
        }))
    }

    async fn group_moves(
        &self,
        request: Request<pb::GroupMovesRequest>,
    ) -> Result<GrpcResponse<pb::GroupMovesResponse>, Status> {
        let request = request.into_inner();
        let (group, _) = self.0.moving_group(request.group, 0)?;
        let shard = group.state.shard();
        let entry = |(slot, migration): (&Slot, &u64)| pb::SlotMigration {
            slot: u32::from(slot.get()),
            migration: *migration,
        };
        Ok(GrpcResponse::new(pb::GroupMovesResponse {
            frozen: shard.moves.frozen.iter().map(entry).collect(),
            incoming: shard
                .moves
                .incoming
                .iter()
                .map(|(slot, incoming)| entry((slot, &incoming.migration)))
                .collect(),
        }))
    }

    async fn slot_rows(
        &self,
        request: Request<pb::SlotRowsRequest>,
    ) -> Result<GrpcResponse<pb::SlotRowsResponse>, Status> {
        let request = request.into_inner();
        let (group, slot) = self.0.moving_group(request.group, request.slot)?;
        let shard = group.state.shard();
        let frozen_here = shard.moves.frozen.get(&slot) == Some(&request.migration);
        let readable = frozen_here || (request.live && shard.owned.owns(slot));
        if !readable {
            return Err(Status::failed_precondition(format!(
                "{slot} is not {} for migration {} in group {} here (yet)",
                if request.live { "held" } else { "frozen" },
                request.migration,
                group.id
            )));
        }
        let after = (!request.from_start).then_some(request.after.as_slice());
        let chunk = group
            .state
            .slot_rows(
                slot,
                after,
                request.since,
                seedkv_core::migration::CHUNK_BYTES,
            )
            .map_err(disk_error)?;
        Ok(GrpcResponse::new(pb::SlotRowsResponse {
            rows: chunk
                .rows
                .into_iter()
                .map(|(key, v)| pb::KeyValue {
                    key,
                    value: v.value,
                    revision: v.revision,
                })
                .collect(),
            done: chunk.done,
            last_key: chunk.last_key.unwrap_or_default(),
            view_index: chunk.view_index,
            total: chunk.total.unwrap_or(0),
        }))
    }

    async fn move_step(
        &self,
        request: Request<pb::MoveStepRequest>,
    ) -> Result<GrpcResponse<pb::MoveStepResponse>, Status> {
        let request = request.into_inner();
        let command: Command = codec::decode(&request.command)
            .map_err(|err| Status::invalid_argument(format!("undecodable step: {err}")))?;
        if !matches!(command, Command::Move(_) | Command::Own(_)) {
            return Err(Status::invalid_argument(
                "a move step is a Move or an Own command",
            ));
        }
        if request.group == META_GROUP.0 {
            return Err(Status::invalid_argument("the meta group holds no slot"));
        }
        let group = self.0.group_to_change(request.group)?;
        ensure_leader(&group.raft)?;
        let written = timeout(
            std::time::Duration::from_millis(MOVE_STEP_COMMIT_MS),
            group.raft.client_write(command),
        )
        .await
        .map_err(|_| Status::unavailable("the step did not commit in time; it may still"))?
        .map_err(client_write_error)?;
        let (applied, refusal) = match written.data {
            Response::Stepped(Ok(())) | Response::Owned { .. } => (true, String::new()),
            Response::Stepped(Err(reason)) => (false, reason),
            other => return Err(unexpected(&other)),
        };
        Ok(GrpcResponse::new(pb::MoveStepResponse { applied, refusal }))
    }
    async fn status(
        &self,
        request: Request<pb::StatusRequest>,
    ) -> Result<GrpcResponse<pb::StatusResponse>, Status> {
        let request = request.into_inner();
        let group = self.0.group(request.group)?;
        if request.confirm {
            group.read_index.wait().await?;
        }
        let metrics = group.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let voter_ids: BTreeSet<NodeId> = membership.voter_ids().collect();
        let member = |(id, node): (&NodeId, &Member)| pb::Member {
            id: *id,
            addr: node.addr.clone(),
            incarnation: node.incarnation,
        };
        let voters = membership
            .nodes()
            .filter(|(id, _)| voter_ids.contains(id))
            .map(member)
            .collect();
        let learners = membership
            .nodes()
            .filter(|(id, _)| !voter_ids.contains(id))
            .map(member)
            .collect();
        let (key_count, state_digest) = if request.with_digest {
            let summary = group.state.summary().map_err(disk_error)?;
            (summary.key_count, summary.digest)
        } else {
            (0, 0)
        };
        Ok(GrpcResponse::new(pb::StatusResponse {
            node_id: self.0.id,
            addr: self.0.addr.clone(),
            role: role(metrics.state).to_string(),
            term: metrics.current_term,
            leader_id: metrics.current_leader.unwrap_or(0),
            last_log_index: metrics.last_log_index.unwrap_or(0),
            applied_index: metrics.last_applied.map_or(0, |id| id.index),
            voters,
            learners,
            key_count,
            state_digest,
            snapshot_index: metrics.snapshot.map_or(0, |id| id.index),
            purged_index: metrics.purged.map_or(0, |id| id.index),
            membership_changing: membership.get_joint_config().len() > 1,
            incarnation: self.0.incarnation(),
            cluster_id: self.0.cluster_id(),
            group: group.id.0,
            hosted_groups: self.0.group_ids().into_iter().map(|id| id.0).collect(),
            membership_index: metrics.membership_config.log_id().map_or(0, |id| id.index),
        }))
    }

    async fn init(
        &self,
        request: Request<pb::InitRequest>,
    ) -> Result<GrpcResponse<pb::InitResponse>, Status> {
        let request = request.into_inner();
        let mut nodes = BTreeMap::new();
        for member in request.members {
            if nodes.insert(member.id, member.addr).is_some() {
                return Err(Status::invalid_argument(format!(
                    "node id {} is listed twice",
                    member.id
                )));
            }
        }
        let plan = Node::plan(&nodes, request.groups, request.replicas)?;
        self.0.initialize(nodes, plan).await?;
        Ok(GrpcResponse::new(pb::InitResponse {}))
    }

    async fn add_learner(
        &self,
        request: Request<pb::AddLearnerRequest>,
    ) -> Result<GrpcResponse<pb::AddLearnerResponse>, Status> {
        let request = request.into_inner();
        let member = request
            .member
            .ok_or_else(|| Status::invalid_argument("add-learner needs a member"))?;
        if member.id == 0 {
            return Err(Status::invalid_argument("node id 0 is not allowed"));
        }
        let group = self.0.group_to_change(request.group)?;
        // Only the leader speaks for the cluster (a blank follower knows no cluster id yet).
        ensure_leader(&group.raft)?;
        let mine = self.0.cluster_id();
        if request.cluster_id != 0 && request.cluster_id != mine {
            return Err(Status::failed_precondition(format!(
                "node {} belongs to cluster {:016x}, not to this cluster ({mine:016x})",
                member.id, request.cluster_id
            )));
        }
        let raft = group.raft.clone();
        let lock = Node::membership_lock(&group).await?;
        // In a task of its own, so a caller that leaves does not cut it short.
        let id = member.id;
        let task = tokio::spawn(async move {
            let written = {
                let mut last_change = lock;
                membership_visible(&raft, *last_change).await?;
                let new = Member::new(member.addr, member.incarnation);
                let wait = std::time::Duration::from_millis(MEMBERSHIP_STEP_MS);
                // A learner back as another incarnation (a diskless replica restarted, a
                // replaced disk) holds none of the log the leader believes it has: updated
                // in place, the leader's replication to it would find its log gone back and
                // openraft stops the group. Removed first, it is added as a new node.
                if learner_came_back_blank(&raft, id, &new) {
                    let remove = raft
                        .change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), true);
                    let removed = timeout(wait, remove)
                        .await
                        .map_err(|_| stuck_membership_step())?
                        .map_err(client_write_error)?;
                    *last_change = removed.log_id.index;
                    membership_visible(&raft, removed.log_id.index).await?;
                }
                let change = learner_change(&raft, id, new)?;
                let add = raft.change_membership(change, true);
                let written = timeout(wait, add)
                    .await
                    .map_err(|_| stuck_membership_step())?
                    .map_err(client_write_error)?;
                *last_change = written.log_id.index;
                written
            };
            // Wait for the learner to catch up without the membership lock: a learner that
            // never does (it died) must not block removing it, or any other change.
            raft.wait(Some(std::time::Duration::from_millis(LEARNER_CATCH_UP_MS)))
                .metrics(
                    |m| {
                        m.state != ServerState::Leader
                            || m.replication
                                .as_ref()
                                .and_then(|r| r.get(&id).copied().flatten())
                                .is_some_and(|matched| matched >= written.log_id)
                    },
                    "the learner caught up",
                )
                .await
                .map_err(|err| {
                    Status::unavailable(format!(
                        "node {id} was added as a learner but has not caught up: {err}"
                    ))
                })?;
            ensure_leader(&raft)?;
            Ok::<u64, Status>(written.log_id.index)
        });
        let log_index = task
            .await
            .map_err(|err| Status::unavailable(format!("adding the learner stopped: {err}")))??;
        Ok(GrpcResponse::new(pb::AddLearnerResponse { log_index }))
    }

    async fn slots(
        &self,
        _request: Request<pb::SlotsRequest>,
    ) -> Result<GrpcResponse<pb::SlotsResponse>, Status> {
        let groups = self
            .0
            .groups()
            .iter()
            .map(|group| {
                let id = &group.id;
                let metrics = group.raft.metrics().borrow().clone();
                let owned = group.state.ownership();
                pb::GroupSlots {
                    group: id.0,
                    voters: metrics.membership_config.membership().voter_ids().collect(),
                    leader_id: metrics.current_leader.unwrap_or(0),
                    applied_index: metrics.last_applied.map_or(0, |id| id.index),
                    slot_count: u32::try_from(owned.slot_count()).unwrap_or(u32::MAX),
                    ranges: owned
                        .ranges()
                        .iter()
                        .map(|range| pb::SlotRange {
                            first: u32::from(range.first.get()),
                            last: u32::from(range.last.get()),
                            epoch: range.epoch,
                        })
                        .collect(),
                }
            })
            .collect();
        Ok(GrpcResponse::new(pb::SlotsResponse {
            node_id: self.0.id,
            groups,
        }))
    }

    async fn slot_map(
        &self,
        _request: Request<pb::SlotMapRequest>,
    ) -> Result<GrpcResponse<pb::SlotMapResponse>, Status> {
        let Some(map) = self.0.slot_map() else {
            return Err(Status::unavailable(
                "this node's meta group holds no slot map yet (the cluster is starting); retry",
            ));
        };
        let meta = self.0.meta();
        let metrics = meta.raft.metrics().borrow().clone();
        let members = metrics.membership_config.membership();
        let groups = map
            .groups()
            .iter()
            .map(|(id, info)| pb::GroupReplicas {
                group: id.0,
                replicas: info
                    .replicas
                    .iter()
                    .map(|replica| pb::Member {
                        id: *replica,
                        addr: members
                            .get_node(replica)
                            .map(|member| member.addr.clone())
                            .unwrap_or_default(),
                        incarnation: 0,
                    })
                    .collect(),
                weight: info.weight,
            })
            .collect();
        Ok(GrpcResponse::new(pb::SlotMapResponse {
            version: map.version(),
            owners: map.owners().map(|(_, owner)| owner.group.0).collect(),
            groups,
        }))
    }

    async fn elect(
        &self,
        request: Request<pb::ElectRequest>,
    ) -> Result<GrpcResponse<pb::ElectResponse>, Status> {
        let request = request.into_inner();
        let handed_by = (request.leader != 0).then_some((request.leader, request.term));
        self.0.elect(request.group, handed_by).await?;
        Ok(GrpcResponse::new(pb::ElectResponse {}))
    }

    async fn change_membership(
        &self,
        request: Request<pb::ChangeMembershipRequest>,
    ) -> Result<GrpcResponse<pb::ChangeMembershipResponse>, Status> {
        let request = request.into_inner();
        let add: BTreeSet<NodeId> = request.add_voters.into_iter().collect();
        let remove: BTreeSet<NodeId> = request.remove_voters.into_iter().collect();
        let expected: BTreeSet<NodeId> = request.expected_voters.into_iter().collect();
        let change = match (add.is_empty(), remove.is_empty()) {
            (false, true) => Some(ChangeMembers::AddVoterIds(add)),
            (true, false) => Some(ChangeMembers::RemoveVoters(remove)),
            // Nothing to change: only finish a change left half done.
            (true, true) => None,
            (false, false) => {
                return Err(Status::invalid_argument(
                    "a membership change either adds voters or removes voters",
                ))
            }
        };
        let group = self.0.group_to_change(request.group)?;
        ensure_leader(&group.raft)?;
        let raft = group.raft.clone();
        let lock = Node::membership_lock(&group).await?;
        // The whole change runs in a task of its own, holding the lock: a caller that leaves
        // cuts nothing short, and no other change on this node slips between the compare
        // and the entries.
        let task = tokio::spawn(async move {
            let mut last_change = lock;
            let log_index = change_membership_locked(&raft, *last_change, change, expected).await?;
            *last_change = (*last_change).max(log_index);
            Ok::<u64, Status>(log_index)
        });
        let log_index = task.await.map_err(|err| {
            Status::unavailable(format!("the membership change stopped: {err}"))
        })??;
        Ok(GrpcResponse::new(pb::ChangeMembershipResponse {
            log_index,
        }))
    }
}

/// Refuses to promote a member whose incarnation the membership does not record (a node
/// added while it was down): as a voter it could not be told from a blank disk taking its
/// place. The leader records the incarnation once the node answers (see `pinning`).
fn unrecorded_incarnation(raft: &Raft, add: &BTreeSet<NodeId>) -> Result<(), Status> {
    let metrics = raft.metrics();
    let metrics = metrics.borrow();
    let membership = metrics.membership_config.membership();
    for id in add {
        if membership.get_node(id).is_some_and(|m| m.incarnation == 0) {
            return Err(Status::failed_precondition(format!(
                "node {id} cannot become a voter yet: its incarnation is not recorded (it was \
                 added while it was down); the leader records it once the node answers; \
                 nothing was changed, retry"
            )));
        }
    }
    Ok(())
}

/// The change that makes node `id` a learner reached as `new`. A node not in the membership
/// is added; a learner is updated (a new address, or a new incarnation after it was given a
/// blank disk); a voter keeps its place, and learns its incarnation if it was unknown, but a
/// voter's recorded incarnation or address is never replaced: a node that lost its data
/// must be removed first, so that it never counts as the voter that had it.
fn learner_change(
    raft: &Raft,
    id: NodeId,
    mut new: Member,
) -> Result<ChangeMembers<NodeId, Member>, Status> {
    let metrics = raft.metrics();
    let metrics = metrics.borrow();
    let membership = metrics.membership_config.membership();
    let Some(recorded) = membership.get_node(&id) else {
        return Ok(ChangeMembers::AddNodes(BTreeMap::from([(id, new)])));
    };
    if new.incarnation == 0 && new.addr == recorded.addr {
        new.incarnation = recorded.incarnation;
    }
    if membership.voter_ids().any(|voter| voter == id) {
        let other_incarnation =
            recorded.incarnation != 0 && recorded.incarnation != new.incarnation;
        if other_incarnation || recorded.addr != new.addr {
            return Err(Status::failed_precondition(format!(
                "node {id} is a voter recorded as {recorded}, and the node to add is {new}: \
                 a voter is never replaced in place; remove node {id} first, then add it again"
            )));
        }
    }
    if *recorded == new {
        return Ok(ChangeMembers::AddNodes(BTreeMap::new()));
    }
    Ok(ChangeMembers::SetNodes(BTreeMap::from([(id, new)])))
}

/// Whether node `id` is a learner recorded with a known incarnation other than `new`'s.
fn learner_came_back_blank(raft: &Raft, id: NodeId, new: &Member) -> bool {
    #[cfg(madsim)]
    if seedkv_core::faults::enabled(seedkv_core::faults::Fault::LearnerReplacedInPlace) {
        return false;
    }
    let metrics = raft.metrics();
    let metrics = metrics.borrow();
    let membership = metrics.membership_config.membership();
    let learner = !membership.voter_ids().any(|voter| voter == id);
    membership.get_node(&id).is_some_and(|recorded| {
        learner
            && recorded.incarnation != 0
            && new.incarnation != 0
            && recorded.incarnation != new.incarnation
    })
}

/// One membership change on the leader `raft`, with this node's membership lock held;
/// `last_change` is the log index of the last change this node made.
async fn change_membership_locked(
    raft: &Raft,
    last_change: u64,
    change: Option<ChangeMembers<NodeId, Member>>,
    expected: BTreeSet<NodeId>,
) -> Result<u64, Status> {
    ensure_leader(raft)?;
    // Compare against the membership after this node's last change, not before it.
    membership_visible(raft, last_change).await?;
    // A change is two log entries (joint, then uniform); a leader that crashed between
    // them, or a caller that left, leaves it half done, refusing every later change.
    // Finish it first: its uniform half is what its caller asked for.
    let half_done = raft
        .metrics()
        .borrow()
        .membership_config
        .membership()
        .get_joint_config()
        .len()
        > 1;
    let mut written = None;
    if half_done {
        let index = change_to_completion(raft, ChangeMembers::AddVoterIds(BTreeSet::new())).await?;
        membership_visible(raft, index).await?;
        written = Some(index);
    }
    let Some(change) = change else {
        let log_index = match written {
            Some(index) => index,
            None => raft
                .metrics()
                .borrow()
                .membership_config
                .log_id()
                .map_or(0, |id| id.index),
        };
        return Ok(log_index);
    };
    if let ChangeMembers::AddVoterIds(add) = &change {
        // Under the lock: no add-learner can reset an incarnation between this and the entry.
        unrecorded_incarnation(raft, add)?;
    }
    // Removing nodes that are only learners (read replicas): out of the membership, the
    // voters untouched.
    let learners_only = {
        let metrics = raft.metrics();
        let metrics = metrics.borrow();
        let membership = metrics.membership_config.membership();
        match &change {
            ChangeMembers::RemoveVoters(remove) => remove.iter().all(|id| {
                membership.get_node(id).is_some() && !membership.voter_ids().any(|v| v == *id)
            }),
            _ => false,
        }
    };
    let change = match change {
        ChangeMembers::RemoveVoters(remove) if learners_only => ChangeMembers::RemoveNodes(remove),
        other => other,
    };
    {
        let metrics = raft.metrics();
        let metrics = metrics.borrow();
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        if let ChangeMembers::RemoveVoters(remove) = &change {
            if voters.is_subset(remove) {
                return Err(Status::invalid_argument(format!(
                    "removing {remove:?} would leave no voter (voters are {voters:?})"
                )));
            }
        }
        #[cfg(madsim)]
        let compare =
            !seedkv_core::faults::enabled(seedkv_core::faults::Fault::MembershipWithoutCompare);
        #[cfg(not(madsim))]
        let compare = true;
        if compare && !expected.is_empty() {
            if voters != expected {
                return Err(Status::aborted(format!(
                    "the membership changed: the voters are {voters:?}, the change was \
                     based on {expected:?}; this change was not made (a change an earlier \
                     leader left half done may have been finished first)"
                )));
            }
            if membership.get_joint_config().len() > 1 {
                return Err(Status::aborted(
                    "another membership change is in progress; nothing was changed",
                ));
            }
        }
    }
    #[cfg(madsim)]
    let change =
        if seedkv_core::faults::enabled(seedkv_core::faults::Fault::MembershipWithoutCompare)
            && !expected.is_empty()
        {
            without_compare(change, expected)
        } else {
            change
        };
    change_to_completion(raft, change).await
}
