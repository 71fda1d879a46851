//! `cargo xtask measure-groups`: what many Raft groups cost a 3-node cluster.
//!
//! For each group count, a release 3-node cluster on loopback starts with `--groups G`, every
//! group elects a leader and takes its slots, the cluster settles (leadership spreads over
//! the nodes, idle groups go quiet), then it idles while the CPU time of
//! its three processes is read from `/proc` (utime + stime); for the put counts, `seedkv
//! bench` then runs 64 clients of puts against it.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::{bench_json, build_release, free_port, start_server, succeeds_quietly, ServerProcess};

/// Seconds the cluster settles before the idle measurement: elections and slot grants,
/// leaders handing groups to their preferred replicas (the first offers come 5 s after a
/// leader took over, and may repeat), and idle groups going quiet (2 s after their last
/// entry).
const SETTLE_S: u64 = 20;

/// Clock ticks per second of `/proc/PID/stat` times (Linux reports them in USER_HZ, 100).
const TICKS_PER_S: f64 = 100.0;

/// CPU seconds `pid` has used so far.
pub(crate) fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("read /proc/{pid}/stat"))?;
    // The command name may hold spaces: fields start after its closing parenthesis.
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("unreadable /proc stat")?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks = |i: usize| -> Result<f64> {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .context("unreadable cpu times")
    };
    Ok((ticks(11)? + ticks(12)?) / TICKS_PER_S)
}

/// True once every data group of the cluster at `endpoints` has a leader whose log took
/// its slots: a put to one key of each group succeeds.
pub(crate) fn every_group_serves(binary: &Path, endpoints: &str, groups: u32) -> bool {
    let output = Command::new(binary)
        .args([
            "--endpoints",
            endpoints,
            "--output",
            "json",
            "cluster",
            "slots",
        ])
        .output();
    let Ok(output) = output else {
        return false;
    };
    let Ok(answer) = serde_json::from_slice::<serde_json::Value>(&output.stdout) else {
        return false;
    };
    let Some(list) = answer["groups"].as_array() else {
        return false;
    };
    let serving = list
        .iter()
        .filter(|g| g["group"].as_u64().unwrap_or(0) != 0)
        .filter(|g| g["leader"].as_u64().unwrap_or(0) != 0 && g["slot_count"].as_u64() > Some(0))
        .count();
    serving == groups as usize
}

struct Row {
    groups: u32,
    idle_cpu_percent: f64,
    puts_per_s: Option<f64>,
    put_p99_ms: Option<f64>,
}

/// A release 3-node cluster on loopback with `groups` data groups, every group serving;
/// its server processes (stopped when dropped) and endpoints. `tag` names its files in `dir`.
pub(crate) fn start_cluster(
    binary: &Path,
    dir: &Path,
    tag: &str,
    groups: u32,
) -> Result<(Vec<ServerProcess>, String)> {
    let addrs: Vec<String> = (0..3)
        .map(|_| free_port().map(|p| format!("127.0.0.1:{p}")))
        .collect::<Result<_>>()?;
    let initial: Vec<String> = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| format!("{}={a}", i + 1))
        .collect();
    let mut servers: Vec<ServerProcess> = Vec::new();
    for (i, addr) in addrs.iter().enumerate() {
        let args = vec![
            "--node-id".to_string(),
            (i + 1).to_string(),
            "--listen".into(),
            addr.clone(),
            "--data-dir".into(),
            dir.join(format!("{tag}-n{}", i + 1)).display().to_string(),
            "--initial-cluster".into(),
            initial.join(","),
            "--groups".into(),
            groups.to_string(),
        ];
        servers.push(start_server(
            binary,
            &args,
            &dir.join(format!("{tag}-n{}.log", i + 1)),
        )?);
    }
    let endpoints = addrs.join(",");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !every_group_serves(binary, &endpoints, groups) {
        if Instant::now() > deadline {
            bail!("the {groups}-group cluster did not serve every group within 120 s");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    Ok((servers, endpoints))
}

/// One cluster of `groups` data groups: idle CPU over `idle_s`, then `bench_s` of puts if
/// `bench`.
fn one(binary: &Path, dir: &Path, groups: u32, idle_s: u64, bench: Option<f64>) -> Result<Row> {
    let (servers, endpoints) = start_cluster(binary, dir, &format!("g{groups}"), groups)?;
    if !succeeds_quietly(Command::new(binary).args([
        "--endpoints",
        &endpoints,
        "put",
        "ready",
        "1",
    ])) {
        bail!("the {groups}-group cluster refused a put");
    }
    std::thread::sleep(Duration::from_secs(SETTLE_S));
    let pids: Vec<u32> = servers.iter().map(|s| s.0.id()).collect();
    let before: f64 = pids.iter().map(|&p| cpu_seconds(p)).sum::<Result<f64>>()?;
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(idle_s));
    let after: f64 = pids.iter().map(|&p| cpu_seconds(p)).sum::<Result<f64>>()?;
    let idle_cpu_percent = 100.0 * (after - before) / start.elapsed().as_secs_f64();
    let (puts_per_s, put_p99_ms) = match bench {
        Some(seconds) => {
            let report = bench_json(
                binary,
                &endpoints,
                &[
                    "--clients",
                    "64",
                    "--duration",
                    &seconds.to_string(),
                    "--workload",
                    "put",
                ],
            )?;
            (report["ops_per_s"].as_f64(), report["p99_ms"].as_f64())
        }
        None => (None, None),
    };
    drop(servers);
    Ok(Row {
        groups,
        idle_cpu_percent,
        puts_per_s,
        put_p99_ms,
    })
}

/// Measures idle CPU at each of `idle_groups` and puts/s at each of `put_groups`.
pub fn measure_groups(
    idle_groups: &[u32],
    put_groups: &[u32],
    idle_s: u64,
    bench_s: f64,
) -> Result<bool> {
    let binary = build_release()?;
    let dir = std::env::temp_dir().join(format!("seedkv-groups-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let mut counts: Vec<u32> = idle_groups.iter().chain(put_groups).copied().collect();
    counts.sort_unstable();
    counts.dedup();
    let mut rows = Vec::new();
    for groups in counts {
        let bench = put_groups.contains(&groups).then_some(bench_s);
        println!("--- {groups} data groups");
        rows.push(one(&binary, &dir, groups, idle_s, bench)?);
    }
    println!();
    println!("| data groups | idle CPU, 3 processes (% of one core) | puts/s, 64 clients | put p99 (ms) |");
    println!("|---:|---:|---:|---:|");
    let show = |v: Option<f64>, digits: usize| match v {
        Some(v) => format!("{v:.digits$}"),
        None => "-".to_string(),
    };
    for row in &rows {
        println!(
            "| {} | {:.1} | {} | {} |",
            row.groups,
            row.idle_cpu_percent,
            show(row.puts_per_s, 0),
            show(row.put_p99_ms, 1)
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(true)
}
