//! `seedkv bench`: load a cluster — seedkv, or etcd through its v3 API — with one client, and
//! report throughput, latency percentiles and errors by kind.
//!
//! Every client task runs operations back to back on its own connection until the op budget
//! or the duration is spent; latencies go into an HDR histogram (microseconds). Keys are
//! `bench/NNNNNNNN` (a run recording a history gets a prefix of its own) drawn uniformly from the key space by a per-client xorshift generator, so
//! two runs with the same flags issue the same keys.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use seedkv_checker::{Op, OpResult, Record};
use seedkv_proto::etcd;
use seedkv_proto::{Client, ClientConfig, ClientError, Consistency};
use serde_json::json;
use tonic::transport::Channel;

use crate::client::{Connection, Output, ReadConsistency};

/// Which store to measure.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Seedkv,
    Etcd,
}

/// What each operation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    Put,
    Get,
    /// `READ_PERCENT` reads, the rest puts.
    Mixed(u8),
    Cas,
}

impl FromStr for Workload {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "put" => Ok(Workload::Put),
            "get" => Ok(Workload::Get),
            "cas" => Ok(Workload::Cas),
            _ => match s.strip_prefix("mixed:").map(str::parse::<u8>) {
                Some(Ok(pct)) if pct <= 100 => Ok(Workload::Mixed(pct)),
                _ => Err(format!(
                    "unknown workload {s:?}: expected put, get, cas or mixed:READ_PERCENT (0-100)"
                )),
            },
        }
    }
}

impl std::fmt::Display for Workload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Workload::Put => f.write_str("put"),
            Workload::Get => f.write_str("get"),
            Workload::Mixed(pct) => write!(f, "mixed:{pct}"),
            Workload::Cas => f.write_str("cas"),
        }
    }
}

/// Options of `seedkv bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// The store to measure (etcd: its v3 gRPC API at --endpoints).
    #[arg(long, value_enum, default_value_t = Target::Seedkv)]
    target: Target,
    /// Concurrent clients, each with its own connection.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Stop after this many operations (after warm-up).
    #[arg(long, conflicts_with = "duration")]
    ops: Option<u64>,
    /// Stop after this many seconds (after warm-up) [default: 10 unless --ops].
    #[arg(long)]
    duration: Option<f64>,
    /// put, get, cas or mixed:READ_PERCENT.
    #[arg(long, default_value = "put")]
    workload: Workload,
    /// Number of distinct keys.
    #[arg(long, default_value_t = 10_000)]
    key_space: u64,
    /// Bytes per value.
    #[arg(long, default_value_t = 256)]
    value_size: usize,
    /// Consistency of reads.
    #[arg(long, value_enum, default_value_t)]
    consistency: ReadConsistency,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 0.0)]
    warmup: f64,
    /// Write every measured operation to FILE in seedkv's history format, for
    /// `seedkv check-history` (seedkv target only).
    #[arg(long)]
    record_history: Option<PathBuf>,
    /// Prefix of the bench's keys (default `bench/`, or a prefix of the run's own when it
    /// records a history). A `{hash tag}` in it puts every key in one slot.
    #[arg(long)]
    key_prefix: Option<String>,
}

/// Most clients one bench runs.
pub const MAX_CLIENTS: usize = 4_096;

/// A failed operation, by kind.
struct OpError {
    kind: &'static str,
    /// The outcome of a write is unknown.
    unknown: bool,
    /// What the store or the client said.
    message: String,
}

fn seedkv_error(err: &ClientError) -> OpError {
    let message = err.to_string();
    match err {
        ClientError::InvalidArgument(_) => OpError {
            kind: "invalid",
            unknown: false,
            message: message.clone(),
        },
        ClientError::Unavailable(_) => OpError {
            kind: "unavailable",
            unknown: false,
            message: message.clone(),
        },
        ClientError::Unknown(_) => OpError {
            kind: "unknown-outcome",
            unknown: true,
            message: message.clone(),
        },
        ClientError::Server(_) => OpError {
            kind: "server",
            unknown: false,
            message: message.clone(),
        },
    }
}

fn etcd_error(status: &tonic::Status) -> OpError {
    let kind = match status.code() {
        tonic::Code::DeadlineExceeded => "timeout",
        tonic::Code::Unavailable => "unavailable",
        tonic::Code::InvalidArgument => "invalid",
        _ => "server",
    };
    OpError {
        kind,
        unknown: true,
        message: status.message().to_string(),
    }
}

/// One client's connection to the store under test.
enum Store {
    Seedkv(Client),
    Etcd(etcd::kv_client::KvClient<Channel>),
}

const ETCD_TIMEOUT: Duration = Duration::from_secs(5);

impl Store {
    async fn connect(target: Target, endpoints: &[String], timeout_ms: u64) -> Result<Store> {
        Ok(match target {
            Target::Seedkv => {
                let mut config = ClientConfig::new(endpoints.to_vec());
                config.request_timeout_ms = timeout_ms;
                Store::Seedkv(Client::new(config))
            }
            Target::Etcd => {
                let addr = endpoints.first().context("no endpoint")?;
                let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
                    .connect_timeout(Duration::from_secs(2))
                    .connect()
                    .await
                    .with_context(|| format!("cannot connect to etcd at {addr}"))?;
                Store::Etcd(etcd::kv_client::KvClient::new(channel))
            }
        })
    }

    async fn put(&mut self, key: &[u8], value: &[u8]) -> Result<u64, OpError> {
        match self {
            Store::Seedkv(client) => client.put(key, value).await.map_err(|e| seedkv_error(&e)),
            Store::Etcd(kv) => {
                let request = etcd::PutRequest {
                    key: key.to_vec(),
                    value: value.to_vec(),
                    ..Default::default()
                };
                match tokio::time::timeout(ETCD_TIMEOUT, kv.put(request)).await {
                    Ok(Ok(reply)) => Ok(reply.into_inner().header.map_or(0, |h| h.revision as u64)),
                    Ok(Err(status)) => Err(etcd_error(&status)),
                    Err(_) => Err(OpError {
                        kind: "timeout",
                        unknown: true,
                        message: format!("no answer within {} s", ETCD_TIMEOUT.as_secs()),
                    }),
                }
            }
        }
    }

    async fn get(
        &mut self,
        key: &[u8],
        consistency: Consistency,
    ) -> Result<Option<(Vec<u8>, u64)>, OpError> {
        match self {
            Store::Seedkv(client) => client
                .get(key, consistency)
                .await
                .map(|found| found.map(|v| (v.value, v.revision)))
                .map_err(|e| seedkv_error(&e)),
            Store::Etcd(kv) => {
                let request = etcd::RangeRequest {
                    key: key.to_vec(),
                    serializable: consistency == Consistency::Serializable,
                    ..Default::default()
                };
                match tokio::time::timeout(ETCD_TIMEOUT, kv.range(request)).await {
                    Ok(Ok(reply)) => Ok(reply
                        .into_inner()
                        .kvs
                        .into_iter()
                        .next()
                        .map(|kv| (kv.value, kv.mod_revision as u64))),
                    Ok(Err(status)) => Err(OpError {
                        unknown: false,
                        ..etcd_error(&status)
                    }),
                    Err(_) => Err(OpError {
                        kind: "timeout",
                        unknown: false,
                        message: format!("no answer within {} s", ETCD_TIMEOUT.as_secs()),
                    }),
                }
            }
        }
    }

    async fn cas(
        &mut self,
        key: &[u8],
        expect: Option<&[u8]>,
        new: &[u8],
    ) -> Result<(bool, u64), OpError> {
        match self {
            Store::Seedkv(client) => client
                .cas(key, expect, Some(new))
                .await
                .map_err(|e| seedkv_error(&e)),
            Store::Etcd(kv) => {
                use etcd::compare::{CompareResult, CompareTarget, TargetUnion};
                let compare = match expect {
                    Some(value) => etcd::Compare {
                        result: CompareResult::Equal as i32,
                        target: CompareTarget::Value as i32,
                        key: key.to_vec(),
                        target_union: Some(TargetUnion::Value(value.to_vec())),
                        ..Default::default()
                    },
                    None => etcd::Compare {
                        result: CompareResult::Equal as i32,
                        target: CompareTarget::Version as i32,
                        key: key.to_vec(),
                        target_union: Some(TargetUnion::Version(0)),
                        ..Default::default()
                    },
                };
                let put = etcd::RequestOp {
                    request: Some(etcd::request_op::Request::RequestPut(etcd::PutRequest {
                        key: key.to_vec(),
                        value: new.to_vec(),
                        ..Default::default()
                    })),
                };
                let request = etcd::TxnRequest {
                    compare: vec![compare],
                    success: vec![put],
                    failure: vec![],
                };
                match tokio::time::timeout(ETCD_TIMEOUT, kv.txn(request)).await {
                    Ok(Ok(reply)) => {
                        let reply = reply.into_inner();
                        Ok((
                            reply.succeeded,
                            reply.header.map_or(0, |h| h.revision as u64),
                        ))
                    }
                    Ok(Err(status)) => Err(etcd_error(&status)),
                    Err(_) => Err(OpError {
                        kind: "timeout",
                        unknown: true,
                        message: format!("no answer within {} s", ETCD_TIMEOUT.as_secs()),
                    }),
                }
            }
        }
    }
}

/// xorshift64*: a tiny deterministic generator for key choice; not for anything secret.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

fn key(prefix: &str, index: u64) -> Vec<u8> {
    format!("{prefix}{index:08}").into_bytes()
}

/// A value of exactly `size` bytes that starts with `tag` (unique tags keep histories checkable).
fn value(tag: &str, size: usize) -> Vec<u8> {
    let mut value = tag.as_bytes().to_vec();
    value.resize(size.max(tag.len()), b'.');
    value
}

struct Shared {
    measure_from: Instant,
    stop_at: Option<Instant>,
    ops_budget: Option<u64>,
    issued: AtomicU64,
    done: AtomicU64,
    history: Option<Mutex<Vec<Record>>>,
}

struct ClientResult {
    histogram: Histogram<u64>,
    errors: BTreeMap<&'static str, u64>,
    /// The first message of each kind of error.
    examples: BTreeMap<&'static str, String>,
}

impl Shared {
    /// Claims the next measured operation; false when the run is over.
    fn claim(&self) -> bool {
        let now = Instant::now();
        if self.stop_at.is_some_and(|stop| now >= stop) {
            return false;
        }
        if now < self.measure_from {
            return true; // warm-up: not counted
        }
        match self.ops_budget {
            Some(budget) => self.issued.fetch_add(1, Ordering::Relaxed) < budget,
            None => true,
        }
    }
}

async fn run_client(
    index: usize,
    mut store: Store,
    args: Arc<BenchArgsResolved>,
    shared: Arc<Shared>,
) -> Result<ClientResult> {
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut errors = BTreeMap::new();
    let mut examples: BTreeMap<&'static str, String> = BTreeMap::new();
    let mut rng =
        XorShift(0x9e37_79b9_7f4a_7c15 ^ (index as u64 + 1).wrapping_mul(0x1000_0000_01b3));
    let mut seen: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    let mut seq = 0u64;
    while shared.claim() {
        seq += 1;
        let k = rng.next() % args.key_space;
        let read = match args.workload {
            Workload::Get => true,
            Workload::Put | Workload::Cas => false,
            Workload::Mixed(pct) => rng.next() % 100 < u64::from(pct),
        };
        let tag = format!("c{index}-{seq}-");
        let key_bytes = key(&args.key_prefix, k);
        let started = Instant::now();
        let measured = started >= shared.measure_from;
        let (op, outcome) = if read {
            let result = store.get(&key_bytes, args.consistency).await;
            if let Ok(Some((v, _))) = &result {
                seen.insert(k, v.clone());
            }
            let op = Op::Get {
                key: String::from_utf8_lossy(&key_bytes).into_owned(),
            };
            (
                op,
                result.map(|found| match found {
                    Some((v, revision)) => OpResult::Get {
                        value: Some(String::from_utf8_lossy(&v).into_owned()),
                        revision,
                    },
                    None => OpResult::Get {
                        value: None,
                        revision: 0,
                    },
                }),
            )
        } else if args.workload == Workload::Cas {
            let new = value(&tag, args.value_size);
            let expect = seen.get(&k).cloned();
            let result = store.cas(&key_bytes, expect.as_deref(), &new).await;
            if let Ok((true, _)) = result {
                seen.insert(k, new.clone());
            }
            let op = Op::Cas {
                key: String::from_utf8_lossy(&key_bytes).into_owned(),
                expect: expect.map(|v| String::from_utf8_lossy(&v).into_owned()),
                new: Some(String::from_utf8_lossy(&new).into_owned()),
            };
            (
                op,
                result.map(|(succeeded, revision)| OpResult::Cas {
                    succeeded,
                    revision,
                }),
            )
        } else {
            let v = value(&tag, args.value_size);
            let result = store.put(&key_bytes, &v).await;
            if result.is_ok() {
                seen.insert(k, v.clone());
            }
            let op = Op::Put {
                key: String::from_utf8_lossy(&key_bytes).into_owned(),
                value: String::from_utf8_lossy(&v).into_owned(),
            };
            (op, result.map(|revision| OpResult::Put { revision }))
        };
        let finished = Instant::now();
        if !measured {
            continue;
        }
        let micros = finished.duration_since(started).as_micros().max(1) as u64;
        let record = |result: Option<OpResult>| Record {
            client: index as u64,
            call_ns: started.duration_since(shared.measure_from).as_nanos() as u64,
            return_ns: result
                .as_ref()
                .map(|_| finished.duration_since(shared.measure_from).as_nanos() as u64),
            op: op.clone(),
            result,
        };
        let entry = match outcome {
            Ok(result) => {
                histogram.saturating_record(micros);
                Some(record(Some(result)))
            }
            Err(err) => {
                *errors.entry(err.kind).or_default() += 1;
                let unknown = err.unknown;
                examples.entry(err.kind).or_insert(err.message);
                unknown.then(|| record(None))
            }
        };
        shared.done.fetch_add(1, Ordering::Relaxed);
        if let (Some(history), Some(entry)) = (&shared.history, entry) {
            history
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(entry);
        }
    }
    Ok(ClientResult {
        histogram,
        errors,
        examples,
    })
}

struct BenchArgsResolved {
    key_prefix: String,
    workload: Workload,
    key_space: u64,
    value_size: usize,
    consistency: Consistency,
}

/// Writes every key once so that reads find data.
async fn prefill(
    target: Target,
    endpoints: &[String],
    args: &BenchArgsResolved,
    timeout_ms: u64,
) -> Result<()> {
    let keys = args.key_space;
    let workers = 32u64.min(keys.max(1));
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..workers {
        let endpoints = endpoints.to_vec();
        let value_size = args.value_size;
        let prefix = args.key_prefix.clone();
        tasks.spawn(async move {
            let mut store = Store::connect(target, &endpoints, timeout_ms).await?;
            let mut k = worker;
            while k < keys {
                let v = value(&format!("init{k}-"), value_size);
                let mut tries = 0;
                while let Err(err) = store.put(&key(&prefix, k), &v).await {
                    tries += 1;
                    if tries >= 5 {
                        bail!("prefill of key {k} failed: {}", err.kind);
                    }
                }
                k += workers;
            }
            Ok::<(), anyhow::Error>(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(())
}

/// Runs the benchmark and prints its report.
pub async fn run(conn: &Connection, args: BenchArgs) -> Result<bool> {
    if args.clients == 0 || args.clients > MAX_CLIENTS {
        bail!("--clients must be between 1 and {MAX_CLIENTS}");
    }
    if args.key_space == 0 {
        bail!("--key-space must be 1 or more");
    }
    if args.record_history.is_some() && args.target != Target::Seedkv {
        bail!("--record-history needs --target seedkv (revisions are seedkv's)");
    }
    let duration = match (args.ops, args.duration) {
        (Some(_), _) => None,
        (None, Some(seconds)) if seconds > 0.0 => Some(Duration::from_secs_f64(seconds)),
        (None, Some(_)) => bail!("--duration must be positive"),
        (None, None) => Some(Duration::from_secs(10)),
    };
    // A recorded history must start from absent keys: give the run keys of its own.
    let key_prefix = match (&args.key_prefix, &args.record_history) {
        (Some(prefix), _) => prefix.clone(),
        (None, Some(_)) => {
            // Only names this run's keys; nothing replays it.
            #[allow(clippy::disallowed_methods)]
            let now = std::time::SystemTime::now();
            let nanos = now
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            format!("bench-{nanos:x}-{}/", std::process::id())
        }
        (None, None) => "bench/".to_string(),
    };
    let resolved = Arc::new(BenchArgsResolved {
        key_prefix,
        workload: args.workload,
        key_space: args.key_space,
        value_size: args.value_size,
        consistency: args.consistency.into(),
    });
    let reads = !matches!(args.workload, Workload::Put);
    if reads && args.record_history.is_none() {
        eprintln!("prefilling {} keys...", args.key_space);
        prefill(args.target, &conn.endpoints, &resolved, conn.timeout_ms).await?;
    }
    let mut stores = Vec::with_capacity(args.clients);
    for index in 0..args.clients {
        let mut endpoints = conn.endpoints.clone();
        let first = index % endpoints.len().max(1);
        endpoints.rotate_left(first);
        stores.push(Store::connect(args.target, &endpoints, conn.timeout_ms).await?);
    }
    let warmup = Duration::from_secs_f64(args.warmup.max(0.0));
    let measure_from = Instant::now() + warmup;
    let shared = Arc::new(Shared {
        measure_from,
        stop_at: duration.map(|d| measure_from + d),
        ops_budget: args.ops,
        issued: AtomicU64::new(0),
        done: AtomicU64::new(0),
        history: args.record_history.as_ref().map(|_| Mutex::new(Vec::new())),
    });
    let progress = match (args.ops, duration) {
        (Some(ops), _) => indicatif::ProgressBar::new(ops),
        (None, Some(d)) => indicatif::ProgressBar::new(d.as_millis() as u64),
        (None, None) => indicatif::ProgressBar::hidden(),
    };
    progress.set_style(
        indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut tasks = tokio::task::JoinSet::new();
    for (index, store) in stores.into_iter().enumerate() {
        tasks.spawn(run_client(index, store, resolved.clone(), shared.clone()));
    }
    let ticker = {
        let shared = shared.clone();
        let progress = progress.clone();
        let by_ops = args.ops.is_some();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let done = shared.done.load(Ordering::Relaxed);
                let now = Instant::now();
                if by_ops {
                    progress.set_position(done);
                } else {
                    progress.set_position(
                        now.saturating_duration_since(shared.measure_from)
                            .as_millis() as u64,
                    );
                }
                let seconds = now
                    .saturating_duration_since(shared.measure_from)
                    .as_secs_f64();
                if seconds > 0.0 {
                    progress.set_message(format!("{done} ops, {:.0} ops/s", done as f64 / seconds));
                } else {
                    progress.set_message("warming up".to_string());
                }
            }
        })
    };
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut errors: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut examples: BTreeMap<&'static str, String> = BTreeMap::new();
    while let Some(done) = tasks.join_next().await {
        let result = done.context("bench client panicked")??;
        histogram.add(&result.histogram)?;
        for (kind, count) in result.errors {
            *errors.entry(kind).or_default() += count;
        }
        for (kind, message) in result.examples {
            examples.entry(kind).or_insert(message);
        }
    }
    let elapsed = Instant::now()
        .saturating_duration_since(shared.measure_from)
        .as_secs_f64();
    ticker.abort();
    progress.finish_and_clear();
    let ok_ops = histogram.len();
    let error_ops: u64 = errors.values().sum();
    let ops_per_s = ok_ops as f64 / elapsed.max(1e-9);
    let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
    let (p50, p90, p99, p999, max) = (
        ms(0.5),
        ms(0.9),
        ms(0.99),
        ms(0.999),
        histogram.max() as f64 / 1000.0,
    );
    if let (Some(path), Some(history)) = (&args.record_history, &shared.history) {
        let history = history.lock().unwrap_or_else(|p| p.into_inner());
        let mut text = String::new();
        for record in history.iter() {
            text.push_str(&serde_json::to_string(record)?);
            text.push('\n');
        }
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    let target = match args.target {
        Target::Seedkv => "seedkv",
        Target::Etcd => "etcd",
    };
    if conn.output == Output::Json {
        out!(
            "{}",
            json!({
                "target": target,
                "workload": args.workload.to_string(),
                "clients": args.clients,
                "value_size": args.value_size,
                "key_space": args.key_space,
                "consistency": format!("{:?}", args.consistency).to_lowercase(),
                "ops": ok_ops,
                "errors": errors,
                "error_examples": examples,
                "seconds": elapsed,
                "ops_per_s": ops_per_s,
                "p50_ms": p50, "p90_ms": p90, "p99_ms": p99, "p999_ms": p999, "max_ms": max,
            })
        );
    } else {
        out!(
            "{target}: {} x {} clients, {}-byte values, {} keys",
            args.workload,
            args.clients,
            args.value_size,
            args.key_space
        );
        out!("  {ok_ops} ops in {elapsed:.1} s: {ops_per_s:.0} ops/s");
        out!(
            "  latency ms: p50 {p50:.3}  p90 {p90:.3}  p99 {p99:.3}  p99.9 {p999:.3}  max {max:.3}"
        );
        if errors.is_empty() {
            out!("  errors: none");
        } else {
            let list: Vec<String> = errors.iter().map(|(k, n)| format!("{k} {n}")).collect();
            out!("  errors: {} ({})", error_ops, list.join(", "));
            for (kind, message) in &examples {
                out!("  first {kind}: {message}");
            }
        }
    }
    Ok(true)
}
