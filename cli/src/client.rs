//! The client commands: `put`, `get`, `del`, `scan`, `mget`, `cas`, `batch` and `cluster …`.
//!
//! Each prints a readable line (or JSON with `--output json`) and exits non-zero on any
//! failure, with one line on stderr saying why.

use anyhow::{bail, Result};
use clap::{Args, Subcommand, ValueEnum};
use seedkv_core::command::{ScanRange, Versioned};
use seedkv_proto::{Client, ClientConfig, ClientError, Consistency};
use serde_json::json;

/// Options every client command shares.
#[derive(Args, Debug, Clone)]
pub struct Connection {
    /// Nodes to talk to, comma-separated.
    #[arg(
        long,
        env = "SEEDKV_ENDPOINTS",
        default_value = "127.0.0.1:7379",
        value_delimiter = ',',
        global = true
    )]
    pub endpoints: Vec<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Output::Text, global = true)]
    pub output: Output,
    /// Deadline of one attempt, in milliseconds (a call makes up to 8).
    #[arg(long, default_value_t = 2_000, global = true)]
    pub timeout_ms: u64,
}

/// How results are printed.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Text,
    Json,
}

/// Read consistency.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReadConsistency {
    /// Through the leader: sees every write acknowledged before the read.
    #[default]
    Linearizable,
    /// From the node that answers: possibly stale.
    Serializable,
}

impl From<ReadConsistency> for Consistency {
    fn from(c: ReadConsistency) -> Consistency {
        match c {
            ReadConsistency::Linearizable => Consistency::Linearizable,
            ReadConsistency::Serializable => Consistency::Serializable,
        }
    }
}

/// Key-value commands.
#[derive(Subcommand, Debug)]
pub enum KvCommand {
    /// Set KEY to VALUE.
    Put { key: String, value: String },
    /// Print the value of KEY (`not found` on stderr and exit 1 if absent).
    Get {
        key: String,
        #[arg(long, value_enum, default_value_t)]
        consistency: ReadConsistency,
    },
    /// Delete KEY.
    Del { key: String },
    /// Print `key => value` for keys in a range, in key order.
    Scan {
        /// Only keys starting with this.
        #[arg(long)]
        prefix: Option<String>,
        /// Only keys >= this.
        #[arg(long)]
        from: Option<String>,
        /// Only keys < this.
        #[arg(long)]
        to: Option<String>,
        /// At most this many (0: the server's maximum, 10,000).
        #[arg(long, default_value_t = 0)]
        limit: u32,
        #[arg(long, value_enum, default_value_t)]
        consistency: ReadConsistency,
    },
    /// Print `key => value` for each KEY.
    Mget {
        #[arg(required = true)]
        keys: Vec<String>,
        #[arg(long, value_enum, default_value_t)]
        consistency: ReadConsistency,
    },
    /// Set KEY to NEW if its value is OLD (or it is absent); exit 1 if the comparison fails.
    Cas {
        key: String,
        /// The value KEY must have.
        #[arg(
            long,
            conflicts_with = "expect_absent",
            required_unless_present = "expect_absent"
        )]
        expect: Option<String>,
        /// KEY must be absent.
        #[arg(long)]
        expect_absent: bool,
        new: String,
    },
    /// Apply several writes atomically, all or none: any sequence of `put KEY VALUE`,
    /// `del KEY`, `cas KEY OLD NEW` and `cas-absent KEY NEW` (NEW only if KEY is absent).
    /// The keys must share a hash slot: give them one `{hash tag}`, as in `{user1}.name` and
    /// `{user1}.mail`. Exits 1 if a comparison fails, and then nothing is written.
    Batch {
        #[arg(required = true, num_args = 1.., allow_hyphen_values = true, value_name = "OP")]
        ops: Vec<String>,
    },
}

/// Parses `seedkv batch`'s words into writes.
fn parse_batch(words: &[String]) -> Result<Vec<seedkv_core::WriteOp>> {
    use seedkv_core::WriteOp;
    let mut ops = Vec::new();
    let mut rest = words.iter().map(|w| w.as_bytes().to_vec());
    while let Some(word) = rest.next() {
        let mut arg = |what: &str| {
            rest.next().ok_or_else(|| {
                anyhow::anyhow!(
                    "batch: `{}` needs {what} (ops: put KEY VALUE, del KEY, cas KEY OLD NEW, cas-absent KEY NEW)",
                    text(&word)
                )
            })
        };
        let op = match word.as_slice() {
            b"put" => WriteOp::Put {
                key: arg("a key")?,
                value: arg("a value")?,
            },
            b"del" => WriteOp::Delete { key: arg("a key")? },
            b"cas" => WriteOp::Cas {
                key: arg("a key")?,
                expect: Some(arg("the old value")?),
                new: Some(arg("the new value")?),
            },
            b"cas-absent" => WriteOp::Cas {
                key: arg("a key")?,
                expect: None,
                new: Some(arg("the new value")?),
            },
            _ => bail!(
                "batch: unknown operation `{}` (ops: put KEY VALUE, del KEY, cas KEY OLD NEW, cas-absent KEY NEW)",
                text(&word)
            ),
        };
        ops.push(op);
    }
    Ok(ops)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn client(conn: &Connection) -> Client {
    let mut config = ClientConfig::new(conn.endpoints.clone());
    config.request_timeout_ms = conn.timeout_ms;
    Client::new(config)
}

fn fail(err: ClientError) -> anyhow::Error {
    anyhow::anyhow!("{err}")
}

/// Runs one key-value command; `Ok(false)` means "ran, but the answer is a failure" (exit 1).
pub async fn run(conn: &Connection, command: KvCommand) -> Result<bool> {
    let client = client(conn);
    let json = conn.output == Output::Json;
    match command {
        KvCommand::Put { key, value } => {
            let revision = client
                .put(key.as_bytes(), value.as_bytes())
                .await
                .map_err(fail)?;
            if json {
                out!("{}", json!({ "key": key, "revision": revision }));
            } else {
                out!("OK (revision {revision})");
            }
            Ok(true)
        }
        KvCommand::Get { key, consistency } => {
            let found = client
                .get(key.as_bytes(), consistency.into())
                .await
                .map_err(fail)?;
            match found {
                Some(v) => {
                    if json {
                        out!(
                            "{}",
                            json!({ "key": key, "value": text(&v.value), "revision": v.revision })
                        );
                    } else {
                        out!("{}", text(&v.value));
                    }
                    Ok(true)
                }
                None => {
                    if json {
                        out!("{}", json!({ "key": key, "found": false }));
                    }
                    eprintln!("not found");
                    Ok(false)
                }
            }
        }
        KvCommand::Del { key } => {
            let (revision, existed) = client.delete(key.as_bytes()).await.map_err(fail)?;
            if json {
                out!(
                    "{}",
                    json!({ "key": key, "revision": revision, "existed": existed })
                );
            } else if existed {
                out!("OK (revision {revision})");
            } else {
                out!("OK, was absent (revision {revision})");
            }
            Ok(true)
        }
        KvCommand::Scan {
            prefix,
            from,
            to,
            limit,
            consistency,
        } => {
            let range = ScanRange {
                prefix: prefix.unwrap_or_default().into_bytes(),
                from: from.unwrap_or_default().into_bytes(),
                to: to.unwrap_or_default().into_bytes(),
            };
            let (rows, more) = client
                .scan(&range, limit, consistency.into())
                .await
                .map_err(fail)?;
            print_rows(
                json,
                rows.iter().map(|(k, v)| (k.as_slice(), Some(v))),
                Some(more),
            );
            Ok(true)
        }
        KvCommand::Mget { keys, consistency } => {
            let raw: Vec<Vec<u8>> = keys.iter().map(|k| k.clone().into_bytes()).collect();
            let values = client
                .multi_get(&raw, consistency.into())
                .await
                .map_err(fail)?;
            print_rows(
                json,
                raw.iter()
                    .map(Vec::as_slice)
                    .zip(values.iter().map(Option::as_ref)),
                None,
            );
            Ok(true)
        }
        KvCommand::Cas {
            key,
            expect,
            expect_absent,
            new,
        } => {
            if expect.is_none() && !expect_absent {
                bail!("cas needs --expect OLD or --expect-absent");
            }
            let (succeeded, revision) = client
                .cas(
                    key.as_bytes(),
                    expect.as_deref().map(str::as_bytes),
                    Some(new.as_bytes()),
                )
                .await
                .map_err(fail)?;
            if json {
                out!(
                    "{}",
                    json!({ "key": key, "succeeded": succeeded, "revision": revision })
                );
            } else if succeeded {
                out!("OK (revision {revision})");
            } else {
                eprintln!("compare failed: the current value does not match (revision {revision})");
            }
            Ok(succeeded)
        }
        KvCommand::Batch { ops } => {
            let ops = parse_batch(&ops)?;
            let (succeeded, revision) = client.batch(&ops).await.map_err(fail)?;
            if json {
                out!(
                    "{}",
                    json!({ "ops": ops.len(), "succeeded": succeeded, "revision": revision })
                );
            } else if succeeded {
                out!("OK, {} writes (revision {revision})", ops.len());
            } else {
                eprintln!("compare failed: nothing was written");
            }
            Ok(succeeded)
        }
    }
}

fn print_rows<'a>(
    json: bool,
    rows: impl Iterator<Item = (&'a [u8], Option<&'a Versioned>)>,
    more: Option<bool>,
) {
    if json {
        let entries: Vec<serde_json::Value> = rows
            .map(|(key, value)| match value {
                Some(v) => {
                    json!({ "key": text(key), "value": text(&v.value), "revision": v.revision })
                }
                None => json!({ "key": text(key), "found": false }),
            })
            .collect();
        match more {
            Some(more) => out!("{}", json!({ "entries": entries, "more": more })),
            None => out!("{}", json!({ "entries": entries })),
        }
        return;
    }
    for (key, value) in rows {
        match value {
            Some(v) => out!("{} => {}", text(key), text(&v.value)),
            None => out!("{} => (not found)", text(key)),
        }
    }
    if more == Some(true) {
        eprintln!("(more keys in range: raise --limit or continue with --from)");
    }
}

/// Writes `keys` keys `PREFIX0000000000…` with values of `value_size` bytes, `batch` keys per
/// atomic batch, `concurrency` batches in flight. A batch must stay in one hash slot, so keys
/// are gathered per slot and a slot's keys go out together. For loading test data.
pub async fn load(conn: &Connection, args: LoadArgs) -> Result<bool> {
    if args.batch == 0 || args.concurrency == 0 {
        bail!("--batch and --concurrency must be 1 or more");
    }
    let client = std::sync::Arc::new(client(conn));
    let started = std::time::Instant::now();
    let value = vec![b'v'; args.value_size];
    let key = |prefix: &str, i: u64| format!("{prefix}{i:010}").into_bytes();
    let mut pending = batches_by_slot(args.keys, args.batch, |i| key(&args.prefix, i));
    let mut tasks = tokio::task::JoinSet::new();
    let spawn = |tasks: &mut tokio::task::JoinSet<Result<(), ClientError>>, batch: Vec<u64>| {
        let client = client.clone();
        let prefix = args.prefix.clone();
        let value = value.clone();
        tasks.spawn(async move {
            let ops: Vec<_> = batch
                .into_iter()
                .map(|i| seedkv_core::WriteOp::Put {
                    key: key(&prefix, i),
                    value: value.clone(),
                })
                .collect();
            client.batch(&ops).await.map(|_| ())
        });
    };
    for batch in pending.by_ref().take(args.concurrency) {
        spawn(&mut tasks, batch);
    }
    while let Some(joined) = tasks.join_next().await {
        joined
            .map_err(|err| anyhow::anyhow!("load task failed: {err}"))?
            .map_err(fail)?;
        if let Some(batch) = pending.next() {
            spawn(&mut tasks, batch);
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    if conn.output == Output::Json {
        out!("{}", json!({ "keys": args.keys, "seconds": seconds }));
    } else {
        out!(
            "loaded {} keys of {} bytes in {seconds:.1} s ({:.0} keys/s)",
            args.keys,
            args.value_size,
            args.keys as f64 / seconds.max(1e-9)
        );
    }
    Ok(true)
}

/// The numbers `0..keys` in batches of at most `batch` whose keys (`key(i)`) share a hash
/// slot: a slot's batch goes out when full, the partial ones at the end. Holds at most
/// `batch` numbers per slot, never a value.
fn batches_by_slot(
    keys: u64,
    batch: usize,
    key: impl Fn(u64) -> Vec<u8>,
) -> impl Iterator<Item = Vec<u64>> {
    let mut buckets: Vec<Vec<u64>> = vec![Vec::new(); usize::from(seedkv_core::slot::SLOT_COUNT)];
    let mut next = 0u64;
    let mut flushing = 0usize;
    std::iter::from_fn(move || {
        while next < keys {
            let i = next;
            next += 1;
            let bucket = &mut buckets[usize::from(seedkv_core::slot::Slot::of(&key(i)).get())];
            bucket.push(i);
            if bucket.len() >= batch {
                return Some(std::mem::take(bucket));
            }
        }
        while flushing < buckets.len() {
            let bucket = std::mem::take(&mut buckets[flushing]);
            flushing += 1;
            if !bucket.is_empty() {
                return Some(bucket);
            }
        }
        None
    })
}

/// Options of `seedkv load`.
#[derive(Args, Debug)]
pub struct LoadArgs {
    /// How many keys.
    #[arg(long, default_value_t = 100_000)]
    pub keys: u64,
    /// Bytes per value.
    #[arg(long, default_value_t = 16)]
    pub value_size: usize,
    /// Keys per atomic batch (at most 1,024); a batch holds keys of one hash slot.
    #[arg(long, default_value_t = 1_000)]
    pub batch: usize,
    /// Batches in flight.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Key prefix.
    #[arg(long, default_value = "load/")]
    pub prefix: String,
}

/// Cluster administration.
#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// Every member: id, address, role, term, last log index, applied index.
    Status,
    /// Every Raft group: id, voters, leader, and the hash slots its applied state owns
    /// (count and ranges), as the first node that answers sees them.
    Slots,
    /// Add node ID at HOST:PORT to a Raft group: as a learner until caught up, then as a
    /// voter.
    AddNode {
        id: u64,
        addr: String,
        /// The Raft group (0: the meta group, which every node holds).
        #[arg(long, default_value_t = 0)]
        group: u32,
    },
    /// Remove node ID from the cluster: from every data group it votes in, then from the
    /// meta group (stop it afterwards); or from one Raft group only.
    RemoveNode {
        id: u64,
        /// Only this Raft group (0: the meta group).
        #[arg(long)]
        group: Option<u32>,
    },
    /// Move hash slots to another data group while the cluster serves them (returns once
    /// the moves are recorded; `cluster migrations` follows them, `--wait` waits).
    MoveSlots {
        /// One slot (`17`) or a range (`0..63`, both ends included).
        #[arg(long, value_parser = parse_slot_range)]
        slots: (u32, u32),
        /// The data group to move them to.
        #[arg(long)]
        to: u32,
        /// Wait until every move started is finished (at most this many seconds).
        #[arg(long)]
        wait: Option<u64>,
    },
    /// The slot moves in progress, with their step.
    Migrations,
    /// The hash slot of KEY (CRC16 of the key, or of its `{hash tag}`) and the data group
    /// the slot map gives it to.
    Keyslot { key: String },
    /// Add a data group on some of the cluster's nodes (the first is its preferred
    /// leader); it owns no slot until `rebalance` or `move-slots` gives it some.
    AddGroup {
        /// Node ids, comma-separated: `--nodes 1,2,3`.
        #[arg(long, value_delimiter = ',', required = true)]
        nodes: Vec<u64>,
        /// Its share of the slots relative to the other groups' weights (at least 1).
        #[arg(long, default_value_t = 1)]
        weight: u32,
    },
    /// Remove a data group that owns no slot from the slot map (its replicas keep its
    /// Raft log on disk, idle).
    RemoveGroup { group: u32 },
    /// Set a data group's weight (takes effect at the next `rebalance`).
    SetWeight { group: u32, weight: u32 },
    /// Move the fewest slots that make every data group's share follow its weight.
    Rebalance {
        /// Wait until every move started is finished (at most this many seconds).
        #[arg(long)]
        wait: Option<u64>,
    },
}

/// `A` or `A..B` (both ends included) as a slot range.
fn parse_slot_range(text: &str) -> std::result::Result<(u32, u32), String> {
    let number = |part: &str| {
        part.trim()
            .parse::<u32>()
            .map_err(|_| format!("`{part}` is not a slot number"))
    };
    match text.split_once("..") {
        Some((first, last)) => {
            let last = last.strip_prefix('=').unwrap_or(last);
            Ok((number(first)?, number(last)?))
        }
        None => number(text).map(|slot| (slot, slot)),
    }
}

/// Waits, if asked (`wait` seconds at most), until none of the moves `started` is left.
async fn wait_for_moves(
    client: &seedkv_proto::Client,
    started: &[seedkv_proto::pb::Migration],
    wait: Option<u64>,
    json: bool,
) -> Result<bool> {
    let Some(wait_s) = wait else {
        return Ok(true);
    };
    let ids: std::collections::BTreeSet<u64> = started.iter().map(|m| m.id).collect();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(wait_s);
    loop {
        let left = client
            .migrations()
            .await
            .map_err(fail)?
            .migrations
            .iter()
            .filter(|m| ids.contains(&m.id))
            .count();
        if left == 0 {
            if !json {
                out!("every move finished");
            }
            return Ok(true);
        }
        if std::time::Instant::now() >= deadline {
            bail!(
                "{left} of {} moves still in progress after {wait_s} s",
                ids.len()
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

fn migration_json(m: &seedkv_proto::pb::Migration) -> serde_json::Value {
    json!({
        "id": m.id, "slot": m.slot, "from": m.from, "to": m.to, "step": m.step,
        "epoch": m.epoch,
    })
}

/// Runs a cluster command.
pub async fn cluster(conn: &Connection, command: ClusterCommand) -> Result<bool> {
    let client = client(conn);
    let json = conn.output == Output::Json;
    match command {
        ClusterCommand::Status => {
            let mut first = None;
            for endpoint in &conn.endpoints {
                if let Ok(status) = client.status(endpoint).await {
                    first = Some(status);
                    break;
                }
            }
            let Some(first) = first else {
                bail!("no endpoint answered: {}", conn.endpoints.join(", "));
            };
            let members: Vec<_> = first
                .voters
                .iter()
                .chain(first.learners.iter())
                .cloned()
                .collect();
            let mut rows = Vec::new();
            for member in &members {
                let status = client.status(&member.addr).await;
                rows.push((member.clone(), status));
            }
            // A member whose address answers with another incarnation than the membership
            // records came back on a blank disk: the cluster refuses it until it is removed
            // and added again.
            let lost_data = |m: &seedkv_proto::pb::Member, s: &seedkv_proto::pb::StatusResponse| {
                m.incarnation != 0 && s.incarnation != m.incarnation
            };
            // Every data group: its voters and leader, as the first replica answering says.
            let mut groups = Vec::new();
            if let Ok(map) = client.slot_map().await {
                for group in map.groups() {
                    let mut seen = None;
                    for addr in map.replicas_of(group) {
                        if let Ok(status) = client.group_status(addr, group, false).await {
                            seen = Some(status);
                            break;
                        }
                    }
                    // Each learner's (a read replica's) lag: entries in the leader's log it
                    // has not applied yet.
                    let mut lags: Vec<(u64, Option<u64>)> = Vec::new();
                    if let Some(s) = &seen {
                        let leader_addr = s
                            .voters
                            .iter()
                            .find(|m| m.id == s.leader_id)
                            .map(|m| m.addr.clone());
                        let leader_last = match leader_addr {
                            Some(addr) => client
                                .group_status(&addr, group, false)
                                .await
                                .ok()
                                .map(|l| l.last_log_index),
                            None => None,
                        };
                        for learner in &s.learners {
                            let applied = client
                                .group_status(&learner.addr, group, false)
                                .await
                                .ok()
                                .map(|l| l.applied_index);
                            let lag = leader_last
                                .zip(applied)
                                .map(|(last, applied)| last.saturating_sub(applied));
                            lags.push((learner.id, lag));
                        }
                    }
                    groups.push((group, map.replicas_of(group).to_vec(), seen, lags));
                }
            }
            let lag_text = |lags: &[(u64, Option<u64>)]| -> String {
                if lags.is_empty() {
                    return "-".to_string();
                }
                let parts: Vec<String> = lags
                    .iter()
                    .map(|(id, lag)| match lag {
                        Some(lag) => format!("{id}:{lag}"),
                        None => format!("{id}:?"),
                    })
                    .collect();
                parts.join(",")
            };
            if json {
                let out: Vec<serde_json::Value> = rows
                    .iter()
                    .map(|(m, s)| match s {
                        Ok(s) => json!({
                            "id": m.id, "addr": m.addr, "role": s.role, "term": s.term,
                            "last_log": s.last_log_index, "applied": s.applied_index,
                            "leader": s.leader_id,
                            "membership_changing": s.membership_changing,
                            "incarnation": format!("{:016x}", s.incarnation),
                            "lost_data": lost_data(m, s),
                        }),
                        Err(err) => json!({ "id": m.id, "addr": m.addr, "error": err.to_string() }),
                    })
                    .collect();
                let groups: Vec<serde_json::Value> = groups
                    .iter()
                    .map(|(group, replicas, seen, lags)| match seen {
                        Some(s) => json!({
                            "group": group, "replicas": replicas,
                            "voters": s.voters.iter().map(|m| m.id).collect::<Vec<_>>(),
                            "learners": s.learners.iter().map(|m| m.id).collect::<Vec<_>>(),
                            "leader": s.leader_id, "term": s.term,
                            "learner_lag_entries": lags.iter()
                                .map(|(id, lag)| json!({ "id": id, "lag": lag }))
                                .collect::<Vec<_>>(),
                        }),
                        None => json!({ "group": group, "replicas": replicas, "error": "no replica answered" }),
                    })
                    .collect();
                out!("{}", json!({ "members": out, "groups": groups }));
            } else {
                out!(
                    "{:<4} {:<22} {:<10} {:>6} {:>10} {:>10}",
                    "ID",
                    "ADDRESS",
                    "ROLE",
                    "TERM",
                    "LAST LOG",
                    "APPLIED"
                );
                for (m, s) in &rows {
                    match s {
                        Ok(s) if lost_data(m, s) => out!(
                            "{:<4} {:<22} lost its data (runs incarnation {:016x}, the \
                             membership records {:016x}): remove it, then add it again",
                            m.id,
                            m.addr,
                            s.incarnation,
                            m.incarnation
                        ),
                        Ok(s) => out!(
                            "{:<4} {:<22} {:<10} {:>6} {:>10} {:>10}",
                            m.id,
                            m.addr,
                            s.role,
                            s.term,
                            s.last_log_index,
                            s.applied_index
                        ),
                        Err(_) => out!("{:<4} {:<22} {:<10}", m.id, m.addr, "down"),
                    }
                }
                if !groups.is_empty() {
                    out!();
                    out!(
                        "{:<6} {:<16} {:<16} {:<7} {}",
                        "GROUP",
                        "VOTERS",
                        "LEARNERS",
                        "LEADER",
                        "LEARNER LAG (ID:ENTRIES)"
                    );
                }
                let ids = |members: &[seedkv_proto::pb::Member]| {
                    let ids: Vec<String> = members.iter().map(|m| m.id.to_string()).collect();
                    if ids.is_empty() {
                        "-".to_string()
                    } else {
                        ids.join(",")
                    }
                };
                for (group, replicas, seen, lags) in &groups {
                    match seen {
                        Some(s) => out!(
                            "{:<6} {:<16} {:<16} {:<7} {}",
                            group,
                            ids(&s.voters),
                            ids(&s.learners),
                            if s.leader_id == 0 {
                                "-".to_string()
                            } else {
                                s.leader_id.to_string()
                            },
                            lag_text(lags)
                        ),
                        None => {
                            out!("{group:<6} no replica answered ({})", replicas.join(", "))
                        }
                    }
                }
            }
            Ok(rows
                .iter()
                .all(|(m, s)| s.as_ref().is_ok_and(|s| !lost_data(m, s))))
        }
        ClusterCommand::Slots => {
            let mut answer = None;
            let mut last_error = String::new();
            for endpoint in &conn.endpoints {
                match client.slots(endpoint).await {
                    Ok(slots) => {
                        answer = Some(slots);
                        break;
                    }
                    Err(err) => last_error = err.to_string(),
                }
            }
            let Some(answer) = answer else {
                bail!("no endpoint answered: {last_error}");
            };
            let ranges = |group: &seedkv_proto::pb::GroupSlots| -> String {
                // Adjacent ranges taken at different epochs print as one.
                let mut merged: Vec<(u32, u32)> = Vec::new();
                for r in &group.ranges {
                    match merged.last_mut() {
                        Some(last) if last.1 + 1 == r.first => last.1 = r.last,
                        _ => merged.push((r.first, r.last)),
                    }
                }
                let parts: Vec<String> = merged
                    .iter()
                    .map(|&(first, last)| (first, last))
                    .map(|(first, last)| seedkv_proto::pb::SlotRange {
                        first,
                        last,
                        epoch: 0,
                    })
                    .collect::<Vec<_>>()
                    .iter()
                    .map(|r| {
                        if r.first == r.last {
                            r.first.to_string()
                        } else {
                            format!("{}-{}", r.first, r.last)
                        }
                    })
                    .collect();
                if parts.is_empty() {
                    "-".to_string()
                } else {
                    parts.join(",")
                }
            };
            if json {
                let groups: Vec<serde_json::Value> = answer
                    .groups
                    .iter()
                    .map(|g| {
                        let owned: Vec<serde_json::Value> = g
                            .ranges
                            .iter()
                            .map(|r| json!({ "first": r.first, "last": r.last, "epoch": r.epoch }))
                            .collect();
                        json!({
                            "group": g.group, "voters": g.voters, "leader": g.leader_id,
                            "applied": g.applied_index, "slot_count": g.slot_count,
                            "ranges": owned,
                        })
                    })
                    .collect();
                out!("{}", json!({ "node": answer.node_id, "groups": groups }));
            } else {
                out!(
                    "{:<6} {:<16} {:<7} {:>6}  RANGES",
                    "GROUP",
                    "VOTERS",
                    "LEADER",
                    "SLOTS"
                );
                for g in &answer.groups {
                    let voters: Vec<String> = g.voters.iter().map(u64::to_string).collect();
                    let leader = match g.leader_id {
                        0 => "-".to_string(),
                        id => id.to_string(),
                    };
                    out!(
                        "{:<6} {:<16} {:<7} {:>6}  {}",
                        g.group,
                        voters.join(","),
                        leader,
                        g.slot_count,
                        ranges(g)
                    );
                }
            }
            Ok(true)
        }
        ClusterCommand::MoveSlots {
            slots: (first, last),
            to,
            wait,
        } => {
            let started = client.move_slots(first, last, to).await.map_err(fail)?;
            if json {
                let moves: Vec<serde_json::Value> = started.iter().map(migration_json).collect();
                out!("{}", json!({ "started": moves }));
            } else {
                out!(
                    "{} slot moves to group {to} recorded (migrations {})",
                    started.len(),
                    match (started.first(), started.last()) {
                        (Some(a), Some(b)) if a.id != b.id => format!("{}..{}", a.id, b.id),
                        (Some(a), _) => a.id.to_string(),
                        _ => "-".into(),
                    }
                );
            }
            wait_for_moves(&client, &started, wait, json).await
        }
        ClusterCommand::AddGroup { nodes, weight } => {
            let (group, version) = client.add_group(&nodes, weight).await.map_err(fail)?;
            if json {
                out!(
                    "{}",
                    json!({ "group": group, "nodes": nodes, "weight": weight, "map_version": version })
                );
            } else {
                out!(
                    "group {group} added on nodes {nodes:?} at weight {weight} (slot map version \
                     {version}); it owns no slot yet: run `seedkv cluster rebalance`"
                );
            }
            Ok(true)
        }
        ClusterCommand::RemoveGroup { group } => {
            let version = client.remove_group(group).await.map_err(fail)?;
            if json {
                out!("{}", json!({ "removed": group, "map_version": version }));
            } else {
                out!("group {group} removed from the slot map (version {version})");
            }
            Ok(true)
        }
        ClusterCommand::SetWeight { group, weight } => {
            let version = client.set_weight(group, weight).await.map_err(fail)?;
            if json {
                out!(
                    "{}",
                    json!({ "group": group, "weight": weight, "map_version": version })
                );
            } else {
                out!(
                    "group {group} now weighs {weight} (slot map version {version}); run \
                     `seedkv cluster rebalance` to move slots accordingly"
                );
            }
            Ok(true)
        }
        ClusterCommand::Rebalance { wait } => {
            let started = client.rebalance().await.map_err(fail)?;
            if json {
                let moves: Vec<serde_json::Value> = started.iter().map(migration_json).collect();
                out!("{}", json!({ "started": moves }));
            } else if started.is_empty() {
                out!("every group already holds its weighted share; nothing to move");
            } else {
                out!("{} slot moves recorded", started.len());
            }
            wait_for_moves(&client, &started, wait, json).await
        }
        ClusterCommand::Keyslot { key } => {
            let slot = seedkv_core::slot::Slot::of(key.as_bytes());
            let map = client.slot_map().await.map_err(fail)?;
            let group = map.group_of(key.as_bytes());
            if json {
                out!(
                    "{}",
                    json!({ "key": key, "slot": slot.get(), "group": group })
                );
            } else {
                out!("slot {} (group {group})", slot.get());
            }
            Ok(true)
        }
        ClusterCommand::Migrations => {
            let answer = client.migrations().await.map_err(fail)?;
            if json {
                let moves: Vec<serde_json::Value> =
                    answer.migrations.iter().map(migration_json).collect();
                out!(
                    "{}",
                    json!({ "map_version": answer.map_version, "migrations": moves })
                );
            } else if answer.migrations.is_empty() {
                out!(
                    "no slot is moving (slot map version {})",
                    answer.map_version
                );
            } else {
                out!(
                    "{:<10} {:>5} {:>5} {:>5}  STEP",
                    "MIGRATION",
                    "SLOT",
                    "FROM",
                    "TO"
                );
                for m in &answer.migrations {
                    let step = if m.step == "committed" {
                        format!("committed at epoch {}", m.epoch)
                    } else {
                        m.step.clone()
                    };
                    out!(
                        "{:<10} {:>5} {:>5} {:>5}  {step}",
                        m.id,
                        m.slot,
                        m.from,
                        m.to
                    );
                }
            }
            Ok(true)
        }
        ClusterCommand::AddNode { id, addr, group } => {
            if id == 0 {
                bail!("node id 0 is not allowed");
            }
            client.add_learner(group, id, &addr).await.map_err(fail)?;
            let voters = current_voters(&client, conn, group).await?;
            if voters.contains(&id) {
                bail!("node {id} is already a voter; voters are {voters:?}");
            }
            let mut next = voters.clone();
            next.push(id);
            // A compare-and-set on the voters just read: if the membership changed meanwhile,
            // nothing is changed and the command says so.
            let index = client
                .change_membership(group, &[id], &[], &voters)
                .await
                .map_err(fail)?;
            if json {
                out!(
                    "{}",
                    json!({ "added": id, "group": group, "voters": next, "log_index": index })
                );
            } else {
                out!("node {id} added to group {group}; voters are now {next:?}");
                if group == 0 {
                    out!(
                        "to give it data: `seedkv cluster add-node {id} {addr} --group G` for a \
                         replica of group G, or `seedkv cluster add-group --nodes {id},...` and \
                         `seedkv cluster rebalance` for a new group"
                    );
                }
            }
            Ok(true)
        }
        ClusterCommand::RemoveNode { id, group } => {
            let group_given = group.is_some();
            // Without --group: out of every data group it votes in, then the meta group.
            let groups = match group {
                Some(group) => vec![group],
                None => {
                    let map = client.slot_map().await.map_err(fail)?;
                    map.groups().chain(std::iter::once(0)).collect()
                }
            };
            let mut removed = Vec::new();
            for group in groups {
                let (voters, learners) = current_members(&client, conn, group).await?;
                if learners.contains(&id) {
                    // A read replica: out of the group, the voters untouched.
                    let index = client
                        .change_membership(group, &[], &[id], &voters)
                        .await
                        .map_err(fail)?;
                    if json {
                        removed.push(json!({ "group": group, "voters": voters, "log_index": index, "was": "learner" }));
                    } else {
                        out!(
                            "learner {id} removed from group {group}; voters are still {voters:?}"
                        );
                    }
                    continue;
                }
                if !voters.contains(&id) {
                    if group_given {
                        bail!("node {id} is not a voter of group {group}; voters are {voters:?}");
                    }
                    continue;
                }
                let next: Vec<u64> = voters.iter().copied().filter(|v| *v != id).collect();
                if next.is_empty() {
                    bail!("cannot remove the last voter of group {group}");
                }
                let index = client
                    .change_membership(group, &[], &[id], &voters)
                    .await
                    .map_err(fail)?;
                if json {
                    removed.push(json!({ "group": group, "voters": next, "log_index": index }));
                } else {
                    out!("node {id} removed from group {group}; voters are now {next:?}");
                }
            }
            if json {
                out!("{}", json!({ "removed": id, "groups": removed }));
            }
            Ok(true)
        }
    }
}

/// The voters of Raft group `group`, as the first endpoint hosting it reports them.
async fn current_voters(client: &Client, conn: &Connection, group: u32) -> Result<Vec<u64>> {
    Ok(current_members(client, conn, group).await?.0)
}

/// The voters and the learners of `group`, as the first node answering says.
async fn current_members(
    client: &Client,
    conn: &Connection,
    group: u32,
) -> Result<(Vec<u64>, Vec<u64>)> {
    let mut endpoints = conn.endpoints.clone();
    // Group replicas named by the slot map answer too, when the endpoints do not host it.
    if let Ok(map) = client.slot_map().await {
        endpoints.extend(map.replicas_of(group).iter().cloned());
    }
    for endpoint in &endpoints {
        if let Ok(status) = client.group_status(endpoint, group, false).await {
            return Ok((
                status.voters.iter().map(|m| m.id).collect(),
                status.learners.iter().map(|m| m.id).collect(),
            ));
        }
    }
    bail!("no endpoint answered: {}", conn.endpoints.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_words_parse_into_writes() {
        use seedkv_core::WriteOp;
        let words = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
        let ops = parse_batch(&words("put a 1 del b cas c 2 3 cas-absent d 4")).expect("ops");
        assert_eq!(
            ops,
            vec![
                WriteOp::Put {
                    key: b"a".to_vec(),
                    value: b"1".to_vec()
                },
                WriteOp::Delete { key: b"b".to_vec() },
                WriteOp::Cas {
                    key: b"c".to_vec(),
                    expect: Some(b"2".to_vec()),
                    new: Some(b"3".to_vec())
                },
                WriteOp::Cas {
                    key: b"d".to_vec(),
                    expect: None,
                    new: Some(b"4".to_vec())
                },
            ]
        );
        let err = parse_batch(&words("put a")).expect_err("missing value");
        assert!(err.to_string().contains("`put` needs a value"), "{err}");
        let err = parse_batch(&words("get a")).expect_err("not a write");
        assert!(err.to_string().contains("unknown operation `get`"), "{err}");
    }

    #[test]
    fn load_batches_stay_in_one_slot_and_cover_every_key() {
        let key = |i: u64| format!("load/{i:010}").into_bytes();
        let mut seen = Vec::new();
        for batch in batches_by_slot(5_000, 7, key) {
            assert!(!batch.is_empty() && batch.len() <= 7);
            let slot = seedkv_core::slot::Slot::of(&key(batch[0]));
            assert!(batch
                .iter()
                .all(|&i| seedkv_core::slot::Slot::of(&key(i)) == slot));
            seen.extend(batch);
        }
        seen.sort_unstable();
        assert_eq!(seen, (0..5_000).collect::<Vec<_>>());
    }
}
