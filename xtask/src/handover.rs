//! `cargo xtask handover`: how well leadership moves when the leader stops.
//!
//! A release 3-node cluster on loopback takes puts from `seedkv bench` while its leader is
//! stopped, round after round: with SIGTERM (the leader hands over before it exits) and,
//! for comparison, with SIGKILL (the others wait out an election timeout). Each round
//! reports how long until another node leads, whether it led before the old leader's
//! process was gone (a hand-over), and the longest put of the bench around it.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::{bench_json, build_release, free_port, start_server, ServerProcess};

/// One stop of the leader.
struct Round {
    signal: &'static str,
    /// From the signal to another node leading.
    new_leader_ms: f64,
    /// Another node led while the old leader's process still ran.
    handed_over: bool,
    /// The longest put of the bench around the stop.
    max_put_ms: f64,
    errors: u64,
}

/// The leader's id as `cluster status` through `endpoint` reports it (not `except`).
fn leader_via(binary: &Path, endpoint: &str, except: Option<u64>) -> Option<u64> {
    let output = Command::new(binary)
        .args([
            "--endpoints",
            endpoint,
            "--output",
            "json",
            "--timeout-ms",
            "300",
        ])
        .args(["cluster", "status"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let status: serde_json::Value = serde_json::from_slice(&output.stdout).ok()?;
    status["members"].as_array()?.iter().find_map(|member| {
        let id = member["id"].as_u64()?;
        (member["role"] == "leader" && Some(id) != except).then_some(id)
    })
}

/// `cargo xtask handover`: `rounds` stops of each kind; prints a table.
pub fn handover(rounds: usize) -> Result<bool> {
    let binary = build_release()?;
    let dir = std::env::temp_dir().join(format!("seedkv-handover-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let addrs: Vec<String> = (0..3)
        .map(|_| free_port().map(|port| format!("127.0.0.1:{port}")))
        .collect::<Result<_>>()?;
    let initial: Vec<String> = addrs
        .iter()
        .enumerate()
        .map(|(i, addr)| format!("{}={addr}", i + 1))
        .collect();
    let args_of = |id: usize| -> Vec<String> {
        vec![
            "--node-id".into(),
            (id + 1).to_string(),
            "--listen".into(),
            addrs[id].clone(),
            "--data-dir".into(),
            dir.join(format!("node{}", id + 1)).display().to_string(),
            "--initial-cluster".into(),
            initial.join(","),
        ]
    };
    // One log per process started, so a stopped leader's log survives its restart.
    let started = std::cell::Cell::new(0u32);
    let log_of = |id: usize| {
        started.set(started.get() + 1);
        dir.join(format!("node{}-{}.log", id + 1, started.get()))
    };
    let mut servers: Vec<Option<ServerProcess>> = Vec::new();
    for id in 0..3 {
        servers.push(Some(start_server(&binary, &args_of(id), &log_of(id))?));
    }
    let endpoints = addrs.join(",");
    let mut results = Vec::new();
    for round in 0..rounds * 2 {
        let signal = if round % 2 == 0 { "TERM" } else { "KILL" };
        let leader = wait_leader(&binary, &addrs, None, Duration::from_secs(30))
            .context("no leader before the round")?;
        let leader_index = leader as usize - 1;
        let other = &addrs[(leader_index + 1) % 3];
        let bench = {
            let binary = binary.clone();
            let endpoints = endpoints.clone();
            // xtask is a plain program, never simulated: a thread is fine here.
            #[allow(clippy::disallowed_methods)]
            std::thread::spawn(move || {
                bench_json(
                    &binary,
                    &endpoints,
                    &[
                        "--workload",
                        "put",
                        "--clients",
                        "8",
                        "--duration",
                        "6",
                        "--warmup",
                        "0",
                    ],
                )
            })
        };
        std::thread::sleep(Duration::from_secs(2));
        let mut stopped = servers[leader_index]
            .take()
            .context("the leader is not running")?;
        let signalled = Instant::now();
        Command::new("kill")
            .args([&format!("-{signal}"), &stopped.0.id().to_string()])
            .status()?;
        let mut handed_over = false;
        let mut new_leader_ms = None;
        while signalled.elapsed() < Duration::from_secs(10) {
            let still_running = stopped.0.try_wait()?.is_none();
            if leader_via(&binary, other, Some(leader)).is_some() {
                new_leader_ms = Some(signalled.elapsed().as_secs_f64() * 1e3);
                handed_over = still_running;
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let Some(new_leader_ms) = new_leader_ms else {
            bail!("round {round}: no new leader within 10 s of SIG{signal}");
        };
        let exit = crate::wait_for(Duration::from_secs(10), || {
            stopped.0.try_wait().ok().flatten().is_some()
        });
        if exit.is_err() {
            bail!("round {round}: the old leader did not exit within 10 s of SIG{signal}");
        }
        drop(stopped);
        servers[leader_index] = Some(start_server(
            &binary,
            &args_of(leader_index),
            &log_of(leader_index),
        )?);
        let report = bench
            .join()
            .map_err(|_| anyhow::anyhow!("the bench thread panicked"))??;
        let max_put_ms = report["max_ms"].as_f64().unwrap_or(f64::NAN);
        let errors: u64 = report["errors"]
            .as_object()
            .map_or(0, |kinds| kinds.values().filter_map(|n| n.as_u64()).sum());
        println!(
            "round {round}: SIG{signal} to node {leader}: new leader after {new_leader_ms:.0} ms{}, longest put {max_put_ms:.0} ms, {errors} errors",
            if handed_over { " (handed over)" } else { "" }
        );
        results.push(Round {
            signal,
            new_leader_ms,
            handed_over,
            max_put_ms,
            errors,
        });
    }
    drop(servers);
    if std::env::var_os("SEEDKV_KEEP").is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        println!("data and logs kept in {}", dir.display());
    }
    println!();
    println!(
        "| stop | rounds | handed over | new leader p50 / max (ms) | longest put p50 / max (ms) | errors |"
    );
    println!("|---|---|---|---|---|---|");
    for signal in ["TERM", "KILL"] {
        let of: Vec<&Round> = results.iter().filter(|r| r.signal == signal).collect();
        let mut leader: Vec<f64> = of.iter().map(|r| r.new_leader_ms).collect();
        let mut put: Vec<f64> = of.iter().map(|r| r.max_put_ms).collect();
        leader.sort_by(f64::total_cmp);
        put.sort_by(f64::total_cmp);
        let p50 = |v: &[f64]| v.get(v.len() / 2).copied().unwrap_or(f64::NAN);
        let max = |v: &[f64]| v.last().copied().unwrap_or(f64::NAN);
        println!(
            "| SIG{signal} | {} | {} | {:.0} / {:.0} | {:.0} / {:.0} | {} |",
            of.len(),
            of.iter().filter(|r| r.handed_over).count(),
            p50(&leader),
            max(&leader),
            p50(&put),
            max(&put),
            of.iter().map(|r| r.errors).sum::<u64>()
        );
    }
    Ok(true)
}

/// Waits until some node other than `except` leads; returns its id.
fn wait_leader(
    binary: &Path,
    addrs: &[String],
    except: Option<u64>,
    limit: Duration,
) -> Result<u64> {
    let start = Instant::now();
    loop {
        for addr in addrs {
            if let Some(id) = leader_via(binary, addr, except) {
                return Ok(id);
            }
        }
        if start.elapsed() > limit {
            bail!("no leader within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
