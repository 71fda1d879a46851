//! Clients that hammer a small key space and record what they saw.
//!
//! Few keys and unique values make conflicts frequent and every read attributable to one
//! write. A call whose outcome is unknown is recorded as such (the checker lets it take
//! effect at any point after its call, or never); a call that certainly did nothing is left
//! out of the history.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use madsim::rand::{thread_rng, Rng};
use seedkv_checker::{Op, OpResult, ReadValue, Record};
use seedkv_core::command::{ScanRange, Versioned, WriteOp};
use seedkv_core::slot::{Slot, SLOT_COUNT};
use seedkv_proto::{Client, ClientConfig, ClientError, Consistency};
use tokio::time::Instant;

/// What the clients do.
#[derive(Debug, Clone)]
pub struct WorkloadConfig {
    /// Concurrent clients.
    pub clients: usize,
    /// Keys `{p0.n}k0`, `{p0.n}k1`, `{p1.m}k2`, ... (see [`key_name`]).
    pub keys: usize,
    /// How long the clients run (virtual time).
    pub duration: Duration,
    /// Each client pauses a uniform 0..think_ms between operations.
    pub think_ms: u64,
}

/// The shared history the clients append to.
pub type History = Arc<Mutex<Vec<Record>>>;

/// Key `i` of the workload. Keys come in pairs (`2j`, `2j+1`) that share a hash tag
/// `{pj.n}`, so the multi-key operations, which join a pair, stay in one slot; the tags
/// spread the pairs over the slot space (see [`pair_tag`]), so every data group serves some.
pub fn key_name(i: usize) -> String {
    format!("{{{}}}k{i}", pair_tag(i / 2))
}

/// Width of the run of slots a pair's tag is chosen in.
const PAIR_SLOTS: u16 = 64;

/// The hash tag of pair `j`: the first `pj.n` whose slot falls in a run of [`PAIR_SLOTS`]
/// slots starting at `j * 633 mod 1024`. Stepping by 633 (about 1024 times the golden ratio)
/// keeps any number of pairs spread over the whole slot space, so with the groups' slot
/// ranges contiguous, the first pairs already land in different groups (plain `pj` tags all
/// fell in one group of three).
fn pair_tag(j: usize) -> String {
    let start = (j * 633 % usize::from(SLOT_COUNT)) as u16;
    let wanted = |slot: u16| (slot + SLOT_COUNT - start) % SLOT_COUNT < PAIR_SLOTS;
    (0u32..)
        .take(100_000)
        .map(|n| format!("p{j}.{n}"))
        .find(|tag| wanted(Slot::of(tag.as_bytes()).get()))
        .unwrap_or_else(|| format!("p{j}"))
}

/// The number of a key [`key_name`] made.
fn key_index(key: &str) -> Option<usize> {
    key.split_once("}k").and_then(|(_, n)| n.parse().ok())
}

/// A client library instance for the workload: shared by two workload clients, so one session
/// carries concurrent writes (sequence numbers answered out of order).
pub fn client(endpoints: Vec<String>) -> Arc<Client> {
    let mut client_config = ClientConfig::new(endpoints);
    // Longer than a typical fault: a write stuck behind a partition usually resolves (applied,
    // or refused after truncation) instead of ending with an unknown outcome.
    client_config.request_timeout_ms = 5_000;
    client_config.max_attempts = 10;
    client_config.retry_backoff_ms = 50;
    Arc::new(Client::new(client_config))
}

/// A reader of one read replica, until `deadline`: serializable gets of random keys, each
/// required to be no older than the last one this reader saw of that key (a replica never
/// goes back in time, restarts included). Returns how many reads it served, or the first
/// regression found.
pub async fn read_from_replica(
    addr: String,
    keys: usize,
    deadline: Instant,
) -> Result<u64, String> {
    let mut config = ClientConfig::new(vec![addr.clone()]);
    config.request_timeout_ms = 1_000;
    config.max_attempts = 2;
    let client = Client::new(config);
    let mut seen: std::collections::BTreeMap<usize, u64> = Default::default();
    let mut served = 0u64;
    while Instant::now() < deadline {
        let i = thread_rng().gen_range(0..keys);
        if let Ok(Some(found)) = client
            .get(key_name(i).as_bytes(), Consistency::Serializable)
            .await
        {
            served += 1;
            let last = seen.entry(i).or_insert(0);
            if found.revision < *last {
                return Err(format!(
                    "read replica {addr} went back in time: key {} at revision {} after {} \
                     ({served} reads served)",
                    key_name(i),
                    found.revision,
                    last
                ));
            }
            *last = found.revision;
        }
        tokio::time::sleep(Duration::from_millis(thread_rng().gen_range(5..40))).await;
    }
    Ok(served)
}

/// After the run healed: one linearizable read of every key, recorded like any other call.
/// It settles the fate of every write whose outcome was unknown (applied or not, it must be
/// consistent with what the reads see) and catches a write lost at the very end.
pub async fn read_every_key(client: Arc<Client>, keys: usize, start: Instant, history: History) {
    let ns = |at: Instant| at.duration_since(start).as_nanos() as u64;
    for k in 0..keys {
        let op = Op::Get { key: key_name(k) };
        let call = Instant::now();
        // A failed read constrains nothing; the convergence check already requires a leader.
        if let Ok(result) = execute(&client, &op).await {
            let record = Record {
                client: u64::MAX,
                call_ns: ns(call),
                return_ns: Some(ns(Instant::now())),
                op,
                result: Some(result),
            };
            history
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .push(record);
        }
    }
}

/// One put in this many carries a large value: entries and catch-up batches then pass the
/// byte caps on log entries and AppendEntries (1 MiB), and snapshots grow.
const LARGE_PUT_ONE_IN: u32 = 50;
/// Sizes of the large values (the default value limit is 1 MiB).
const LARGE_VALUE_BYTES: std::ops::Range<usize> = 16 * 1024..400_000;

/// One call in this many is abandoned after a short time, as an impatient caller would: its
/// outcome is unknown, and the node must not apply it much later for nobody.
const ABANDON_ONE_IN: u32 = 20;

/// Runs one client until `deadline`, appending to `history`.
pub async fn run_client(
    client_id: u64,
    client: Arc<Client>,
    config: WorkloadConfig,
    start: Instant,
    deadline: Instant,
    history: History,
) {
    let mut seq = 0u64;
    // The last value this client saw per key: CAS expectations come from here, so some
    // succeed and many race.
    let mut seen: Vec<Option<String>> = vec![None; config.keys];
    // A refused compare-and-set is followed at once by a read of what it compared, as a
    // read-modify-write loop does: a write applied twice (once as the success nobody heard of,
    // once as the refusal reported) is then seen in the act.
    let mut reread: Option<Op> = None;
    let ns = |at: Instant| at.duration_since(start).as_nanos() as u64;
    while Instant::now() < deadline {
        seq += 1;
        let value = format!("c{client_id}-{seq}");
        let rereading = reread.is_some();
        let op = reread
            .take()
            .unwrap_or_else(|| random_op(config.keys, &value, &seen));
        let call = Instant::now();
        let patience_ms = (thread_rng().gen_range(0..ABANDON_ONE_IN) == 0)
            .then(|| thread_rng().gen_range(1..500));
        let outcome = match patience_ms {
            Some(ms) => tokio::time::timeout(Duration::from_millis(ms), execute(&client, &op))
                .await
                .unwrap_or_else(|_| Err(ClientError::Unknown("abandoned by its caller".into()))),
            None => execute(&client, &op).await,
        };
        let done = Instant::now();
        let record = match outcome {
            Ok(result) => {
                remember(&mut seen, &op, &result);
                reread = reread_after(&op, &result);
                Some(Record {
                    client: client_id,
                    call_ns: ns(call),
                    return_ns: Some(ns(done)),
                    op,
                    result: Some(result),
                })
            }
            Err(ClientError::Unknown(why))
                if !matches!(op, Op::Get { .. } | Op::MultiGet { .. }) =>
            {
                tracing::debug!(client_id, ?op, %why, "outcome unknown");
                Some(Record {
                    client: client_id,
                    call_ns: ns(call),
                    return_ns: None,
                    op,
                    result: None,
                })
            }
            // Certainly no effect (or a read): nothing to check.
            Err(_) => None,
        };
        if let Some(record) = record {
            history
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .push(record);
        }
        if reread.is_some() && !rereading {
            continue;
        }
        // A little think time keeps the clients from moving in lockstep.
        let pause_us = thread_rng().gen_range(0..=config.think_ms * 1_000);
        tokio::time::sleep(Duration::from_micros(pause_us)).await;
    }
}

fn random_op(keys: usize, value: &str, seen: &[Option<String>]) -> Op {
    let mut rng = thread_rng();
    let k = rng.gen_range(0..keys);
    let key = key_name(k);
    let roll = rng.gen_range(0..100);
    // Multi-key operations join keys in fixed pairs (k0+k1, k2+k3, ...): atomicity across
    // keys is checked, while the history still splits into small independent partitions.
    let pair = || {
        let second = if (k ^ 1) < keys { k ^ 1 } else { k };
        let mut pair = vec![key_name(k.min(second))];
        if second != k {
            pair.push(key_name(k.max(second)));
        }
        pair
    };
    match roll {
        0..=24 => Op::Get { key },
        25..=34 => Op::MultiGet { keys: pair() },
        35..=59 => Op::Put {
            key,
            value: if rng.gen_range(0..LARGE_PUT_ONE_IN) == 0 {
                // Still unique: the prefix names the write.
                format!("{value}-{}", "x".repeat(rng.gen_range(LARGE_VALUE_BYTES)))
            } else {
                value.to_string()
            },
        },
        60..=64 => Op::Delete { key },
        65..=84 => Op::Cas {
            key,
            expect: seen[k].clone(),
            new: if rng.gen_range(0..10) == 0 {
                None
            } else {
                Some(value.to_string())
            },
        },
        _ => {
            let first = k;
            let second = if (k ^ 1) < keys { k ^ 1 } else { k };
            let mut ops = vec![Op::Put {
                key: key_name(first),
                value: value.to_string(),
            }];
            if second != first {
                ops.push(if rng.gen_bool(0.5) {
                    Op::Cas {
                        key: key_name(second),
                        expect: seen[second].clone(),
                        new: Some(format!("{value}b")),
                    }
                } else {
                    Op::Delete {
                        key: key_name(second),
                    }
                });
            }
            Op::Batch { ops }
        }
    }
}

/// The read a client makes right after `op` answered `result`: the keys of a refused
/// compare-and-set (alone or in a batch).
fn reread_after(op: &Op, result: &OpResult) -> Option<Op> {
    match (op, result) {
        (
            Op::Cas { key, .. },
            OpResult::Cas {
                succeeded: false, ..
            },
        ) => Some(Op::Get { key: key.clone() }),
        (
            Op::Batch { ops },
            OpResult::Batch {
                succeeded: false, ..
            },
        ) => {
            let mut keys = Vec::new();
            for op in ops {
                op.for_each_key(&mut |key| keys.push(key.to_string()));
            }
            keys.sort();
            keys.dedup();
            Some(Op::MultiGet { keys })
        }
        _ => None,
    }
}

fn remember(seen: &mut [Option<String>], op: &Op, result: &OpResult) {
    let index = key_index;
    match (op, result) {
        (Op::Get { key }, OpResult::Get { value, .. }) => {
            if let Some(i) = index(key) {
                seen[i] = value.clone();
            }
        }
        (Op::MultiGet { keys }, OpResult::MultiGet { values }) => {
            for (key, read) in keys.iter().zip(values) {
                if let Some(i) = index(key) {
                    seen[i] = read.value.clone();
                }
            }
        }
        (Op::Put { key, value }, _) => {
            if let Some(i) = index(key) {
                seen[i] = Some(value.clone());
            }
        }
        (
            Op::Cas { key, new, .. },
            OpResult::Cas {
                succeeded: true, ..
            },
        ) => {
            if let Some(i) = index(key) {
                seen[i] = new.clone();
            }
        }
        _ => {}
    }
}

fn write_op(op: &Op) -> Option<WriteOp> {
    Some(match op {
        Op::Put { key, value } => WriteOp::Put {
            key: key.clone().into_bytes(),
            value: value.clone().into_bytes(),
        },
        Op::Delete { key } => WriteOp::Delete {
            key: key.clone().into_bytes(),
        },
        Op::Cas { key, expect, new } => WriteOp::Cas {
            key: key.clone().into_bytes(),
            expect: expect.clone().map(String::into_bytes),
            new: new.clone().map(String::into_bytes),
        },
        Op::Get { .. } | Op::MultiGet { .. } | Op::Batch { .. } | Op::Append { .. } => return None,
    })
}

fn text(bytes: Vec<u8>) -> String {
    String::from_utf8_lossy(&bytes).into_owned()
}

async fn execute(client: &Client, op: &Op) -> Result<OpResult, ClientError> {
    match op {
        Op::Get { key } => {
            let found = client
                .get(key.as_bytes(), Consistency::Linearizable)
                .await?;
            Ok(match found {
                Some(v) => OpResult::Get {
                    value: Some(text(v.value)),
                    revision: v.revision,
                },
                None => OpResult::Get {
                    value: None,
                    revision: 0,
                },
            })
        }
        Op::Put { key, value } => {
            let revision = client.put(key.as_bytes(), value.as_bytes()).await?;
            Ok(OpResult::Put { revision })
        }
        Op::Delete { key } => {
            let (revision, existed) = client.delete(key.as_bytes()).await?;
            Ok(OpResult::Delete {
                revision,
                existed: Some(existed),
            })
        }
        Op::MultiGet { keys } => {
            // Half by multi-get, half by a scan of the range the keys span: both read one
            // point of the state.
            let rows: Vec<Option<Versioned>> = if thread_rng().gen_bool(0.5) {
                let wire: Vec<Vec<u8>> = keys.iter().map(|k| k.clone().into_bytes()).collect();
                client.multi_get(&wire, Consistency::Linearizable).await?
            } else {
                let (Some(first), Some(last)) = (keys.first(), keys.last()) else {
                    return Ok(OpResult::MultiGet { values: Vec::new() });
                };
                let mut to = last.clone().into_bytes();
                to.push(0);
                let range = ScanRange {
                    prefix: Vec::new(),
                    from: first.clone().into_bytes(),
                    to,
                };
                let (found, _more) = client.scan(&range, 0, Consistency::Linearizable).await?;
                keys.iter()
                    .map(|key| {
                        found
                            .iter()
                            .find(|(k, _)| k.as_slice() == key.as_bytes())
                            .map(|(_, v)| v.clone())
                    })
                    .collect()
            };
            Ok(OpResult::MultiGet {
                values: rows
                    .into_iter()
                    .map(|row| match row {
                        Some(v) => ReadValue {
                            value: Some(text(v.value)),
                            revision: v.revision,
                        },
                        None => ReadValue {
                            value: None,
                            revision: 0,
                        },
                    })
                    .collect(),
            })
        }
        Op::Cas { key, expect, new } => {
            let (succeeded, revision) = client
                .cas(
                    key.as_bytes(),
                    expect.as_deref().map(str::as_bytes),
                    new.as_deref().map(str::as_bytes),
                )
                .await?;
            Ok(OpResult::Cas {
                succeeded,
                revision,
            })
        }
        Op::Batch { ops } => {
            let ops: Vec<WriteOp> = ops.iter().filter_map(write_op).collect();
            let (succeeded, revision) = client.batch(&ops).await?;
            Ok(OpResult::Batch {
                succeeded,
                revision,
            })
        }
        Op::Append { .. } => Err(ClientError::InvalidArgument(
            "append is not a seedkv operation".into(),
        )),
    }
}
