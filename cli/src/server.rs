//! `seedkv server`: one seedkv node on TCP and RocksDB.
//!
//! Settings come from, lowest to highest precedence: built-in defaults, a TOML file
//! (`--config`), `SEEDKV_*` environment variables, and flags. With nothing set it runs a
//! single-node cluster on 127.0.0.1:7379 with data in ./seedkv-data.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use seedkv_core::Limits;
use seedkv_io_real::{Identity, RocksDisk};
use seedkv_proto::trace::discard;
use seedkv_proto::{Client, ClientConfig, Node, NodeConfig};
use serde::Deserialize;

/// Flags of `seedkv server`. Every one can also be set in the TOML file (same name, with
/// underscores) or as `SEEDKV_<NAME>`.
#[derive(Args, Debug, Default)]
pub struct ServerArgs {
    /// TOML file with any of the settings below.
    #[arg(long, env = "SEEDKV_CONFIG")]
    config: Option<PathBuf>,
    /// This node's id (1 or more) [default: 1].
    #[arg(long, env = "SEEDKV_NODE_ID")]
    node_id: Option<u64>,
    /// Address to listen on [default: 127.0.0.1:7379].
    #[arg(long, env = "SEEDKV_LISTEN")]
    listen: Option<String>,
    /// Address other nodes and clients reach this node at [default: the listen address].
    #[arg(long, env = "SEEDKV_ADVERTISE")]
    advertise: Option<String>,
    /// Data directory [default: ./seedkv-data].
    #[arg(long, env = "SEEDKV_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Bootstrap a new cluster of these members: `1=HOST:PORT,2=HOST:PORT,...`.
    #[arg(long, env = "SEEDKV_INITIAL_CLUSTER")]
    initial_cluster: Option<String>,
    /// Data groups a new cluster starts with, the 1,024 hash slots split evenly over them and
    /// their replicas (three, or every node when fewer) spread over the members; give every
    /// initial member the same number [default: one per initial member].
    #[arg(long, env = "SEEDKV_GROUPS")]
    groups: Option<u32>,
    /// Join the running cluster reachable at this address (as a learner, then a voter; as
    /// a learner of every group with `--role replica`).
    #[arg(long, env = "SEEDKV_JOIN", conflicts_with = "initial_cluster")]
    join: Option<String>,
    /// voter, or replica: a read replica never votes, serves serializable reads from its
    /// own state, and sends the rest to the leaders [default: voter].
    #[arg(long, env = "SEEDKV_ROLE")]
    role: Option<String>,
    /// Keep everything in memory and write nothing to disk (read replicas only): the
    /// replica catches up by snapshot at every start.
    #[arg(long, env = "SEEDKV_DISKLESS")]
    diskless: bool,
    /// Cluster name, recorded in the data directory [default: seedkv].
    #[arg(long, env = "SEEDKV_CLUSTER_NAME")]
    cluster_name: Option<String>,
    /// Take a snapshot (and purge the log behind it) every this many log entries
    /// [default: 5000].
    #[arg(long, env = "SEEDKV_SNAPSHOT_EVERY")]
    snapshot_every: Option<u64>,
    /// Longest key accepted, in bytes [default: 4096].
    #[arg(long, env = "SEEDKV_MAX_KEY_BYTES")]
    max_key_bytes: Option<usize>,
    /// Longest value accepted, in bytes [default: 1048576].
    #[arg(long, env = "SEEDKV_MAX_VALUE_BYTES")]
    max_value_bytes: Option<usize>,
    /// Largest request payload accepted, in bytes [default: 4194304].
    #[arg(long, env = "SEEDKV_MAX_REQUEST_BYTES")]
    max_request_bytes: Option<usize>,
    /// Most operations in one batch or keys in one multi-get [default: 1024].
    #[arg(long, env = "SEEDKV_MAX_BATCH_OPS")]
    max_batch_ops: Option<usize>,
    /// Serve linearizable reads from a leader lease, with no network round: on or off
    /// [default: on]. See docs/LEASES.md.
    #[arg(long, env = "SEEDKV_READ_LEASE")]
    read_lease: Option<String>,
    /// The bound on how far any node's clock rate may stray from true time, in parts per
    /// million; leases shrink by it [default: 50000, i.e. 5%].
    #[arg(long, env = "SEEDKV_MAX_CLOCK_DRIFT_PPM")]
    max_clock_drift_ppm: Option<u64>,
    /// Log level or filter (also RUST_LOG) [default: info,openraft=warn].
    #[arg(long, env = "SEEDKV_LOG_LEVEL")]
    log_level: Option<String>,
    /// Log format: text or json [default: text].
    #[arg(long, env = "SEEDKV_LOG_FORMAT")]
    log_format: Option<String>,
}

/// The same settings, as read from the TOML file.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    node_id: Option<u64>,
    listen: Option<String>,
    advertise: Option<String>,
    data_dir: Option<PathBuf>,
    initial_cluster: Option<String>,
    groups: Option<u32>,
    join: Option<String>,
    role: Option<String>,
    diskless: Option<bool>,
    cluster_name: Option<String>,
    snapshot_every: Option<u64>,
    max_key_bytes: Option<usize>,
    max_value_bytes: Option<usize>,
    max_request_bytes: Option<usize>,
    max_batch_ops: Option<usize>,
    read_lease: Option<String>,
    max_clock_drift_ppm: Option<u64>,
    log_level: Option<String>,
    log_format: Option<String>,
}

/// Settings after merging every source.
#[derive(Debug)]
pub struct Settings {
    pub node_id: u64,
    pub listen: String,
    pub advertise: String,
    pub data_dir: PathBuf,
    pub initial_cluster: Option<Vec<(u64, String)>>,
    /// Data groups to bootstrap (0: one per initial member).
    pub groups: u32,
    pub join: Option<String>,
    /// A read replica: a learner of every group, never a voter.
    pub replica: bool,
    /// Everything in memory, nothing on disk (replicas only).
    pub diskless: bool,
    pub cluster_name: String,
    pub snapshot_every: u64,
    pub limits: Limits,
    pub read_lease: bool,
    pub max_clock_drift_ppm: u64,
    pub log_level: String,
    pub log_json: bool,
}

/// Parses `1=HOST:PORT,2=HOST:PORT`.
pub fn parse_members(text: &str) -> Result<Vec<(u64, String)>> {
    let mut members = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, addr) = part
            .split_once('=')
            .with_context(|| format!("initial cluster entry {part:?} is not ID=HOST:PORT"))?;
        let id: u64 = id
            .trim()
            .parse()
            .with_context(|| format!("node id {id:?} is not a number"))?;
        if id == 0 {
            bail!("node id 0 is not allowed");
        }
        if members.iter().any(|(other, _)| *other == id) {
            bail!("node id {id} is listed twice");
        }
        members.push((id, addr.trim().to_string()));
    }
    if members.is_empty() {
        bail!("the initial cluster is empty");
    }
    Ok(members)
}

impl ServerArgs {
    /// Merges defaults, the file, the environment and flags.
    pub fn settings(self) -> Result<Settings> {
        let file = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read config file {}", path.display()))?;
                toml::from_str::<FileConfig>(&text)
                    .with_context(|| format!("bad config file {}", path.display()))?
            }
            None => FileConfig::default(),
        };
        let node_id = self.node_id.or(file.node_id).unwrap_or(1);
        if node_id == 0 {
            bail!("--node-id must be 1 or more");
        }
        let listen = self
            .listen
            .or(file.listen)
            .unwrap_or_else(|| "127.0.0.1:7379".into());
        let advertise = self
            .advertise
            .or(file.advertise)
            .unwrap_or_else(|| listen.clone());
        let initial_cluster = match self.initial_cluster.or(file.initial_cluster) {
            Some(text) => Some(parse_members(&text)?),
            None => None,
        };
        let join = self.join.or(file.join);
        let groups = self.groups.or(file.groups).unwrap_or(0);
        if let Some(given) = self.groups.or(file.groups) {
            let most = u32::from(seedkv_core::slot::SLOT_COUNT);
            if given == 0 || given > most {
                bail!("--groups must be between 1 and {most} (the hash slots to share out), not {given}");
            }
        }
        if initial_cluster.is_some() && join.is_some() {
            bail!("--initial-cluster and --join cannot both be set");
        }
        let replica = match self.role.or(file.role).as_deref() {
            None | Some("voter") => false,
            Some("replica") => true,
            Some(other) => bail!("--role must be voter or replica, not {other:?}"),
        };
        let diskless = self.diskless || file.diskless.unwrap_or(false);
        if replica && join.is_none() {
            bail!(
                "--role replica needs --join HOST:PORT: a read replica joins a running \
                 cluster as a learner of every group"
            );
        }
        if diskless && !replica {
            bail!(
                "--diskless is for read replicas (--role replica): a voter that forgot its \
                 vote and log at a restart could vote twice in one term and lose \
                 acknowledged writes"
            );
        }
        if let Some(members) = &initial_cluster {
            if !members.iter().any(|(id, _)| *id == node_id) {
                bail!("--initial-cluster does not list this node's id {node_id}");
            }
        }
        let log_format = self
            .log_format
            .or(file.log_format)
            .unwrap_or_else(|| "text".into());
        let log_json = match log_format.as_str() {
            "text" => false,
            "json" => true,
            other => bail!("--log-format must be text or json, not {other:?}"),
        };
        let snapshot_every = self.snapshot_every.or(file.snapshot_every).unwrap_or(5_000);
        if snapshot_every == 0 {
            bail!("--snapshot-every must be 1 or more");
        }
        let defaults = Limits::default();
        let limits = Limits {
            max_key_bytes: self
                .max_key_bytes
                .or(file.max_key_bytes)
                .unwrap_or(defaults.max_key_bytes),
            max_value_bytes: self
                .max_value_bytes
                .or(file.max_value_bytes)
                .unwrap_or(defaults.max_value_bytes),
            max_request_bytes: self
                .max_request_bytes
                .or(file.max_request_bytes)
                .unwrap_or(defaults.max_request_bytes),
            max_batch_ops: self
                .max_batch_ops
                .or(file.max_batch_ops)
                .unwrap_or(defaults.max_batch_ops),
            max_scan_limit: defaults.max_scan_limit,
        };
        if limits.max_key_bytes == 0 || limits.max_batch_ops == 0 || limits.max_request_bytes == 0 {
            bail!("--max-key-bytes, --max-batch-ops and --max-request-bytes must be 1 or more");
        }
        let read_lease = match self.read_lease.or(file.read_lease).as_deref() {
            None | Some("on") => true,
            Some("off") => false,
            Some(other) => bail!("--read-lease must be on or off, not {other:?}"),
        };
        let max_clock_drift_ppm = self
            .max_clock_drift_ppm
            .or(file.max_clock_drift_ppm)
            .unwrap_or(seedkv_core::lease::DEFAULT_MAX_DRIFT_PPM);
        Ok(Settings {
            snapshot_every,
            limits,
            read_lease,
            max_clock_drift_ppm,
            node_id,
            listen,
            advertise,
            data_dir: self
                .data_dir
                .or(file.data_dir)
                .unwrap_or_else(|| PathBuf::from("seedkv-data")),
            initial_cluster,
            groups,
            join,
            replica,
            diskless,
            cluster_name: self
                .cluster_name
                .or(file.cluster_name)
                .unwrap_or_else(|| "seedkv".into()),
            log_level: self
                .log_level
                .or(file.log_level)
                .or_else(|| std::env::var("RUST_LOG").ok())
                .unwrap_or_else(|| "info,openraft=warn".into()),
            log_json,
        })
    }
}

fn init_logging(settings: &Settings) -> Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(&settings.log_level)
        .with_context(|| format!("bad log level {:?}", settings.log_level))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if settings.log_json {
        builder.json().init();
    } else {
        builder.init();
    }
    Ok(())
}

/// Runs the server until SIGINT or SIGTERM.
pub async fn run(args: ServerArgs) -> Result<()> {
    let settings = args.settings()?;
    init_logging(&settings)?;
    let mut config = NodeConfig::new(settings.node_id, settings.advertise.clone());
    config.raft.cluster_name = settings.cluster_name.clone();
    config.limits = settings.limits;
    config.raft.snapshot_policy = openraft::SnapshotPolicy::LogsSinceLast(settings.snapshot_every);
    config.raft.max_in_snapshot_log_to_keep = settings.snapshot_every / 5;
    config.lease.read_lease = settings.read_lease;
    config.lease.max_drift_ppm = settings.max_clock_drift_ppm;
    config.lease.clock = seedkv_io_real::clock::boot_clock();
    config.replica = settings.replica;
    // Before anything is written: a drift bound that leaves no lease is a bad flag.
    config.lease_config()?;
    let listener = tokio::net::TcpListener::bind(&settings.listen)
        .await
        .with_context(|| format!("cannot listen on {}", settings.listen))?;
    if !settings.diskless && !settings.data_dir.join("db").exists() {
        refuse_if_member_before(&settings).await?;
    }
    let identity = Identity {
        node_id: settings.node_id,
        cluster: settings.cluster_name.clone(),
    };
    let disk = Arc::new(if settings.diskless {
        RocksDisk::open_in_memory(&identity)?
    } else {
        RocksDisk::open(&settings.data_dir, &identity)?
    });
    let node = Node::start(config, disk.clone(), discard()).await?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(seedkv_io_real::serve::serve(
        node.clone(),
        disk.clone(),
        listener,
        async {
            let _ = stop_rx.await;
        },
    ));
    tracing::info!(
        node = settings.node_id,
        listen = %settings.listen,
        data_dir = %if settings.diskless {
            "none (diskless)".to_string()
        } else {
            settings.data_dir.display().to_string()
        },
        role = if settings.replica { "replica" } else { "voter" },
        "seedkv server started"
    );
    bootstrap(&node, &settings).await?;

    wait_for_signal().await?;
    tracing::info!("shutting down");
    let graceful = async {
        // Every group this node leads at once: the stop budget is shared.
        let groups = node.group_ids();
        futures::future::join_all(groups.into_iter().map(|g| hand_over_leadership(&node, g))).await;
        node.shutdown().await;
        let _ = stop_tx.send(());
        let _ = serving.await;
    };
    if tokio::time::timeout(Duration::from_millis(GRACEFUL_STOP_MS), graceful)
        .await
        .is_err()
    {
        tracing::warn!("graceful shutdown took too long; stopping now");
    }
    disk.flush()?;
    tracing::info!("stopped");
    Ok(())
}

async fn wait_for_signal() -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    tokio::select! {
        biased;
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

/// Starts a new cluster, joins one, or does nothing if this node already belongs to one.
async fn bootstrap(node: &Arc<Node>, settings: &Settings) -> Result<()> {
    if let (Some(seed), true) = (&settings.join, settings.replica) {
        // At every start: a diskless replica comes back with a new incarnation, and the
        // cluster may have new groups.
        node.join_as_replica_in_background(seed.clone());
        return Ok(());
    }
    if let Some(seed) = &settings.join {
        let initialized = node.raft().is_initialized().await.unwrap_or(false);
        if initialized {
            return Ok(());
        }
        return join(settings, seed).await;
    }
    let members: BTreeMap<u64, String> = match &settings.initial_cluster {
        Some(members) => members.iter().cloned().collect(),
        None => BTreeMap::from([(settings.node_id, settings.advertise.clone())]),
    };
    // Every member bootstraps with the same membership, each member's incarnation asked
    // from it first, so the bootstrap waits until every member is up; in the background,
    // so the server answers (and stops on a signal) meanwhile. An initialized node only
    // keeps the plan: its meta group's leader proposes it as the first slot map if the
    // cluster stopped before one committed.
    let plan = Node::plan(&members, settings.groups, 0)
        .map_err(|status| anyhow::anyhow!("{}", status.message()))?;
    node.bootstrap_in_background(members, plan);
    Ok(())
}

/// On an empty data directory, refuses to bootstrap as an initial member that already ran:
/// a peer's membership records this node's incarnation once the node has answered as a
/// member, so a recorded incarnation means this directory lost the node's votes and log.
/// (A member that starts late for the first time has no incarnation recorded yet.) Peers
/// that do not answer are passed over, as etcd does.
async fn refuse_if_member_before(settings: &Settings) -> Result<()> {
    let Some(members) = &settings.initial_cluster else {
        return Ok(());
    };
    let mut config = ClientConfig::new(members.iter().map(|(_, a)| a.clone()).collect());
    config.request_timeout_ms = 1_000;
    config.max_attempts = 1;
    let client = Client::new(config);
    for (peer, addr) in members.iter().filter(|(id, _)| *id != settings.node_id) {
        let Ok(status) = client.status(addr).await else {
            continue;
        };
        let recorded = status
            .voters
            .iter()
            .chain(&status.learners)
            .find(|m| m.id == settings.node_id && m.incarnation != 0);
        if let Some(member) = recorded {
            bail!(
                "the data directory {} is empty, but node {} already ran as a member of this \
                 cluster (node {peer} at {addr} records its incarnation {:016x}); a node that lost \
                 its data cannot rejoin as itself. Remove it with `seedkv cluster remove-node {} \
                 --endpoints {addr}`, then start it on an empty directory with `--join {addr}` \
                 instead of --initial-cluster",
                settings.data_dir.display(),
                settings.node_id,
                member.incarnation,
                settings.node_id,
            );
        }
    }
    Ok(())
}

async fn join(settings: &Settings, seed: &str) -> Result<()> {
    let client = Client::new(ClientConfig::new(vec![seed.to_string()]));
    let id = settings.node_id;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let attempt = async {
            client.add_learner(0, id, &settings.advertise).await?;
            let status = client.status(seed).await?;
            let voters: Vec<u64> = status.voters.iter().map(|m| m.id).collect();
            if !voters.contains(&id) {
                // Based on the voters just read: a change that raced is refused and retried.
                client.change_membership(0, &[id], &[], &voters).await?;
            }
            Ok::<(), seedkv_proto::ClientError>(())
        };
        match attempt.await {
            Ok(()) => {
                tracing::info!(node = id, via = seed, "joined the cluster as a voter");
                return Ok(());
            }
            Err(err) if tokio::time::Instant::now() < deadline => {
                tracing::warn!("join via {seed} failed, retrying: {err}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(err) => bail!("could not join the cluster via {seed}: {err}"),
        }
    }
}

/// How long the whole graceful stop may take (hand-over, Raft shutdown, closing the
/// listener); past it the node stops anyway.
const GRACEFUL_STOP_MS: u64 = 4_000;

/// How long the hand-over waits for the chosen node to hold the leader's whole log.
const HAND_OVER_CATCH_UP_MS: u64 = 1_000;

/// How long the hand-over waits for the chosen node to take over once asked.
const HAND_OVER_ELECTION_MS: u64 = 700;

/// How many times the chosen node is asked to campaign.
const HAND_OVER_ELECTIONS: u32 = 3;

/// If this node leads, hands leadership to the most caught-up voter before stopping, so
/// the cluster does not wait out an election timeout. The order matters: the chosen node
/// must hold this node's whole log (so this node stops taking writes first), and this node
/// must still be running when it campaigns, since the other followers refuse any candidate
/// while the leader's lease holds (openraft's `leader_lease`) and only this node's vote is
/// free to give. Returns the node that took over, if one did.
async fn hand_over_leadership(node: &Arc<Node>, group: seedkv_core::GroupId) -> Option<u64> {
    let raft = node.raft_of(group)?;
    let metrics = raft.metrics().borrow().clone();
    if metrics.current_leader != Some(node.id()) {
        return None;
    }
    let replication = metrics.replication.as_ref()?;
    let voters: Vec<u64> = metrics.membership_config.membership().voter_ids().collect();
    let target = replication
        .iter()
        .filter(|(id, _)| **id != node.id() && voters.contains(id))
        .max_by_key(|(_, matched)| matched.map_or(0, |m| m.index))
        .map(|(id, _)| *id)?;
    let addr = metrics
        .membership_config
        .membership()
        .get_node(&target)
        .map(|n| n.addr.clone())?;
    // The target will stand at once, and with a follower that lost touch with this node
    // could win without this node's vote: no read lease from here on.
    node.revoke_lease(group);
    let term = metrics.vote.leader_id().get_term();
    // No new writes: the log stops growing, so the target can hold all of it.
    node.refuse_writes();
    let caught_up = raft
        .wait(Some(Duration::from_millis(HAND_OVER_CATCH_UP_MS)))
        .metrics(
            |m| {
                // Writes proposed before the refusal may still land: compare with the log
                // as it is now, each time.
                let last_log = m.last_log_index.unwrap_or(0);
                m.replication
                    .as_ref()
                    .and_then(|r| r.get(&target).copied().flatten())
                    .is_some_and(|matched| matched.index >= last_log)
            },
            "the hand-over target caught up",
        )
        .await;
    if let Err(err) = caught_up {
        tracing::warn!(
            to = target,
            "leadership hand-over: the target is behind: {err}"
        );
        return None;
    }
    let mut config = ClientConfig::new(vec![addr.clone()]);
    config.request_timeout_ms = 500;
    config.max_attempts = 1;
    let client = Client::new(config);
    let me = node.id();
    // An election can collide with another; ask again, within the budget.
    for attempt in 1..=HAND_OVER_ELECTIONS {
        if let Err(err) = client.elect(&addr, group.0, Some((me, term))).await {
            tracing::warn!(to = target, attempt, "leadership hand-over: {err}");
            continue;
        }
        let taken = raft
            .wait(Some(Duration::from_millis(HAND_OVER_ELECTION_MS)))
            .metrics(
                |m| m.current_leader.is_some_and(|leader| leader != me),
                "another node leads",
            )
            .await;
        match taken {
            Ok(m) => {
                let leader = m.current_leader;
                tracing::info!(to = target, new_leader = ?leader, "handed leadership over");
                return leader;
            }
            Err(err) => {
                tracing::warn!(
                    to = target,
                    attempt,
                    "leadership hand-over: no new leader yet: {err}"
                )
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_count_outside_the_slots_is_refused() {
        for bad in [0, 1_025] {
            let args = ServerArgs {
                groups: Some(bad),
                ..ServerArgs::default()
            };
            let err = match args.settings() {
                Ok(settings) => panic!("--groups {bad} accepted: {settings:?}"),
                Err(err) => err.to_string(),
            };
            assert!(err.contains("--groups must be between 1 and 1024"), "{err}");
        }
        let args = ServerArgs {
            groups: Some(32),
            ..ServerArgs::default()
        };
        assert_eq!(args.settings().map(|s| s.groups).ok(), Some(32));
    }
}
