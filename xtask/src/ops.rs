//! `cargo xtask measure-ops`: what the operability surface costs.
//!
//! 1. The HTTP/JSON gateway against gRPC on one release node (the quickstart, fresh data
//!    directory): `wrk` with 64 connections PUTs 256-byte values to distinct keys through
//!    `/v1/kv/{key}`, then `seedkv bench` runs 64 gRPC clients of 256-byte puts against the
//!    same node. Both for the same seconds.
//! 2. Scraping `/metrics` once a second: a release 3-node cluster with 32 data groups (many
//!    per-group series) settles, then node 1's CPU time (utime + stime from `/proc`) is read
//!    over a window without scrapes and an equal window with one scrape a second; the
//!    difference is the scrape's cost.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::groups::{cpu_seconds, every_group_serves};
use crate::{bench_json, build_release, free_port, start_server, ServerProcess};

/// Bytes of every value written.
const VALUE_BYTES: usize = 256;

/// Concurrent connections (wrk) and clients (`seedkv bench`).
const CONNECTIONS: u32 = 64;

/// Data groups of the scraped cluster.
const SCRAPED_GROUPS: u32 = 32;

/// Seconds the scraped cluster settles before its windows (see `groups::SETTLE_S`).
const SETTLE_S: u64 = 20;

/// The wrk script: PUT a 256-byte value to a new key each request.
fn wrk_script(dir: &Path) -> Result<std::path::PathBuf> {
    let path = dir.join("put.lua");
    std::fs::write(
        &path,
        format!(
            "wrk.method = \"PUT\"\nwrk.body = string.rep(\"v\", {VALUE_BYTES})\n\
             local n = 0\nrequest = function()\n  n = n + 1\n  \
             return wrk.format(nil, \"/v1/kv/gw-\" .. math.random(1, 1000000000) .. \"-\" .. n)\nend\n"
        ),
    )?;
    Ok(path)
}

/// Requests per second, p99 latency (ms) and non-2xx answers from wrk's report.
fn parse_wrk(report: &str) -> Result<(f64, Option<f64>, u64)> {
    let mut per_s = None;
    let mut p99 = None;
    let mut non_2xx = 0;
    for line in report.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("Requests/sec:") {
            per_s = rest.trim().parse::<f64>().ok();
        } else if let Some(rest) = line.strip_prefix("99%") {
            p99 = ms(rest.trim());
        } else if let Some(rest) = line.strip_prefix("Non-2xx or 3xx responses:") {
            non_2xx = rest.trim().parse().unwrap_or(u64::MAX);
        }
    }
    Ok((
        per_s.context("no Requests/sec in wrk's report")?,
        p99,
        non_2xx,
    ))
}

/// wrk's latency (`850.00us`, `12.34ms`, `1.02s`) in milliseconds.
fn ms(text: &str) -> Option<f64> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().ok()?;
    match unit {
        "us" => Some(value / 1_000.0),
        "ms" => Some(value),
        "s" => Some(value * 1_000.0),
        "m" => Some(value * 60_000.0),
        _ => None,
    }
}

fn gateway_vs_grpc(binary: &Path, dir: &Path, seconds: u64) -> Result<()> {
    let addr = format!("127.0.0.1:{}", free_port()?);
    let _server = start_server(
        binary,
        &[
            "--node-id".into(),
            "1".into(),
            "--listen".into(),
            addr.clone(),
            "--data-dir".into(),
            dir.join("gateway").display().to_string(),
        ],
        &dir.join("gateway.log"),
    )?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !crate::succeeds_quietly(Command::new(binary).args([
        "--endpoints",
        &addr,
        "put",
        "ready",
        "1",
    ])) {
        if Instant::now() > deadline {
            bail!("the node did not take a put within 60 s");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let script = wrk_script(dir)?;
    let output = Command::new("wrk")
        .args(["-t", "2", "-c", &CONNECTIONS.to_string(), "-d"])
        .arg(format!("{seconds}s"))
        .arg("--latency")
        .arg("-s")
        .arg(&script)
        .arg(format!("http://{addr}"))
        .output()
        .context("run wrk")?;
    let report = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "wrk failed: {}{report}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let (http_per_s, http_p99, non_2xx) = parse_wrk(&report)?;
    let grpc = bench_json(
        binary,
        &addr,
        &[
            "--clients",
            &CONNECTIONS.to_string(),
            "--duration",
            &seconds.to_string(),
            "--workload",
            "put",
            "--value-size",
            &VALUE_BYTES.to_string(),
        ],
    )?;
    println!();
    println!("| puts of {VALUE_BYTES} B, one node, {CONNECTIONS} connections, {seconds} s | puts/s | p99 (ms) | errors |");
    println!("|---|---:|---:|---:|");
    println!(
        "| HTTP gateway (`wrk`, `PUT /v1/kv/{{key}}`) | {http_per_s:.0} | {} | {non_2xx} |",
        http_p99.map_or("-".into(), |v| format!("{v:.1}"))
    );
    // `errors` counts each kind of error apart.
    let grpc_errors: u64 = match &grpc["errors"] {
        serde_json::Value::Object(kinds) => kinds.values().filter_map(|v| v.as_u64()).sum(),
        other => other.as_u64().unwrap_or(0),
    };
    println!(
        "| gRPC (`seedkv bench --workload put`) | {:.0} | {:.1} | {grpc_errors} |",
        grpc["ops_per_s"].as_f64().unwrap_or(0.0),
        grpc["p99_ms"].as_f64().unwrap_or(0.0),
    );
    Ok(())
}

fn scrape_cost(binary: &Path, dir: &Path, window_s: u64) -> Result<()> {
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
        servers.push(start_server(
            binary,
            &[
                "--node-id".into(),
                (i + 1).to_string(),
                "--listen".into(),
                addr.clone(),
                "--data-dir".into(),
                dir.join(format!("scrape-n{}", i + 1)).display().to_string(),
                "--initial-cluster".into(),
                initial.join(","),
                "--groups".into(),
                SCRAPED_GROUPS.to_string(),
            ],
            &dir.join(format!("scrape-n{}.log", i + 1)),
        )?);
    }
    let endpoints = addrs.join(",");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !every_group_serves(binary, &endpoints, SCRAPED_GROUPS) {
        if Instant::now() > deadline {
            bail!("the {SCRAPED_GROUPS}-group cluster did not serve every group within 120 s");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    std::thread::sleep(Duration::from_secs(SETTLE_S));
    let pid = servers[0].0.id();
    let url = format!("http://{}/metrics", addrs[0]);
    let scrape = || -> Result<usize> {
        let out = Command::new("curl")
            .args(["-sf", "--max-time", "5", &url])
            .output()
            .context("run curl")?;
        if !out.status.success() {
            bail!("scraping {url} failed");
        }
        Ok(out.stdout.len())
    };
    let bytes = scrape()?;
    let window = Duration::from_secs(window_s);
    let before = cpu_seconds(pid)?;
    std::thread::sleep(window);
    let quiet = cpu_seconds(pid)? - before;
    let before = cpu_seconds(pid)?;
    let start = Instant::now();
    let mut scrapes = 0u64;
    while start.elapsed() < window {
        let next = start + Duration::from_secs(scrapes + 1);
        scrape()?;
        scrapes += 1;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    let scraped = cpu_seconds(pid)? - before;
    let elapsed = window.as_secs_f64();
    println!();
    println!(
        "| node 1 of 3, {SCRAPED_GROUPS} data groups, {window_s} s windows | CPU (% of one core) |"
    );
    println!("|---|---:|");
    println!("| no scrapes | {:.2} |", 100.0 * quiet / elapsed);
    println!(
        "| one scrape of `/metrics` a second ({scrapes} scrapes, {bytes} bytes each) | {:.2} |",
        100.0 * scraped / start.elapsed().as_secs_f64()
    );
    println!(
        "| difference: the scrapes' cost | {:.2} |",
        100.0 * (scraped / start.elapsed().as_secs_f64() - quiet / elapsed)
    );
    Ok(())
}

/// Runs both measurements and prints their tables.
pub fn measure_ops(bench_s: u64, window_s: u64) -> Result<bool> {
    crate::install_packages(&["wrk", "curl"])?;
    let binary = build_release()?;
    let dir = std::env::temp_dir().join(format!("seedkv-ops-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let result =
        gateway_vs_grpc(&binary, &dir, bench_s).and_then(|()| scrape_cost(&binary, &dir, window_s));
    let _ = std::fs::remove_dir_all(&dir);
    result.map(|()| true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_reports_are_read() {
        let report = "  Latency Distribution\n     50%  5.10ms\n     99%   1.20s\n  \
                      12345 requests in 10.00s, 1.2MB read\n  Non-2xx or 3xx responses: 3\n\
                      Requests/sec:   1234.50\n";
        let (per_s, p99, bad) = parse_wrk(report).expect("parsed");
        assert_eq!((per_s, p99, bad), (1234.5, Some(1_200.0), 3));
        assert_eq!(ms("850.00us"), Some(0.85));
        assert!(parse_wrk("nothing").is_err());
    }
}
