//! `cargo xtask measure-move`: what moving one slot costs a loaded cluster.
//!
//! A release 3-node cluster with two data groups holds one slot of 10,000 keys of 256 bytes
//! (every key shares the `{mv}` hash tag). `seedkv bench` runs a 64-client mixed load
//! (half gets, half puts) twice: once as the baseline, once while `seedkv cluster
//! move-slots` moves the slot to the other group. Beside each load, one client writes keys
//! of the moving slot back to back: the longest of its writes is how long the slot's
//! writes paused.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::build_release;
use crate::groups::start_cluster;

/// Keys of the moving slot, and their value size.
const SLOT_KEYS: u64 = 10_000;
const VALUE_BYTES: u64 = 256;
/// Prefix of the slot's keys: the hash tag puts them all in one slot.
const SLOT_PREFIX: &str = "{mv}/";

fn seedkv(binary: &Path, endpoints: &str, args: &[&str]) -> Result<serde_json::Value> {
    let output = Command::new(binary)
        .args(["--endpoints", endpoints, "--output", "json"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run seedkv {args:?}"))?;
    if !output.status.success() {
        bail!(
            "seedkv {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(stdout.trim()).with_context(|| format!("output of {args:?}: {stdout}"))
}

/// A load and the slot's writer, side by side for `bench_s`; `during` runs meanwhile,
/// `delay_s` after they start. Returns both reports.
fn loads(
    binary: &Path,
    endpoints: &str,
    bench_s: f64,
    during: Option<(f64, &dyn Fn() -> Result<Duration>)>,
) -> Result<(serde_json::Value, serde_json::Value, Option<Duration>)> {
    let seconds = bench_s.to_string();
    let spawn = |args: &[&str]| {
        Command::new(binary)
            .args(["--endpoints", endpoints, "--output", "json", "bench"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("start seedkv bench")
    };
    let load = spawn(&[
        "--clients",
        "64",
        "--workload",
        "mixed:50",
        "--duration",
        &seconds,
    ])?;
    let prefix = format!("{SLOT_PREFIX}probe/");
    let writer = spawn(&[
        "--clients",
        "1",
        "--workload",
        "put",
        "--key-space",
        "16",
        "--key-prefix",
        &prefix,
        "--duration",
        &seconds,
    ])?;
    let took = match during {
        Some((delay_s, action)) => {
            std::thread::sleep(Duration::from_secs_f64(delay_s));
            Some(action()?)
        }
        None => None,
    };
    let report = |child: std::process::Child| -> Result<serde_json::Value> {
        let output = child.wait_with_output().context("wait for bench")?;
        if !output.status.success() {
            bail!("bench failed: {}", String::from_utf8_lossy(&output.stderr));
        }
        serde_json::from_slice(&output.stdout).context("bench JSON")
    };
    Ok((report(load)?, report(writer)?, took))
}

/// Measures one slot's move under load, `bench_s` seconds per load.
pub fn measure_move(bench_s: f64) -> Result<bool> {
    let binary = build_release()?;
    let dir = std::env::temp_dir().join(format!("seedkv-move-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let (servers, endpoints) = start_cluster(&binary, &dir, "move", 2)?;
    let keys = SLOT_KEYS.to_string();
    let value = VALUE_BYTES.to_string();
    let loaded = Command::new(&binary)
        .args(["--endpoints", &endpoints, "load", "--keys", &keys])
        .args(["--value-size", &value, "--prefix", SLOT_PREFIX])
        .stdin(Stdio::null())
        .output()
        .context("run seedkv load")?;
    if !loaded.status.success() {
        bail!(
            "seedkv load failed: {}",
            String::from_utf8_lossy(&loaded.stderr)
        );
    }
    let slot = seedkv(&binary, &endpoints, &["cluster", "keyslot", SLOT_PREFIX])?;
    let (Some(number), Some(owner)) = (slot["slot"].as_u64(), slot["group"].as_u64()) else {
        bail!("no slot for {SLOT_PREFIX}: {slot}");
    };
    let to = if owner == 1 { 2 } else { 1 };
    println!("--- baseline: {bench_s} s of 64-client mixed:50 load");
    let (before, before_writer, _) = loads(&binary, &endpoints, bench_s, None)?;
    println!("--- the same load while slot {number} ({SLOT_KEYS} keys x {VALUE_BYTES} B) moves from group {owner} to group {to}");
    let number_text = number.to_string();
    let to_text = to.to_string();
    let move_slot = || -> Result<Duration> {
        let started = Instant::now();
        seedkv(
            &binary,
            &endpoints,
            &[
                "cluster",
                "move-slots",
                "--slots",
                &number_text,
                "--to",
                &to_text,
                "--wait",
                "60",
            ],
        )?;
        Ok(started.elapsed())
    };
    let (during, during_writer, took) = loads(
        &binary,
        &endpoints,
        bench_s,
        Some((bench_s / 3.0, &move_slot)),
    )?;
    let moved = seedkv(&binary, &endpoints, &["cluster", "keyslot", SLOT_PREFIX])?;
    if moved["group"].as_u64() != Some(to) {
        bail!("the slot did not move: {moved}");
    }
    let count = Command::new(&binary)
        .args([
            "--endpoints",
            &endpoints,
            "scan",
            "--prefix",
            "{mv}/0",
            "--limit",
            "10000",
        ])
        .output()
        .context("scan the moved slot")?;
    let rows = String::from_utf8_lossy(&count.stdout)
        .lines()
        .filter(|line| line.contains(" => "))
        .count();
    drop(servers);
    let _ = std::fs::remove_dir_all(&dir);
    let ops = |v: &serde_json::Value| v["ops_per_s"].as_f64().unwrap_or(0.0);
    let max = |v: &serde_json::Value| v["max_ms"].as_f64().unwrap_or(0.0);
    println!();
    println!("| load | ops/s, 64 clients mixed:50 | errors | longest write to the slot (ms) |");
    println!("|---|---:|---|---:|");
    println!(
        "| before | {:.0} | {} | {:.1} |",
        ops(&before),
        before["errors"],
        max(&before_writer)
    );
    println!(
        "| during the move | {:.0} | {} | {:.1} |",
        ops(&during),
        during["errors"],
        max(&during_writer)
    );
    println!();
    println!(
        "throughput during/before: {:.0} %; the move took {:.0} ms end to end (recorded to \
         finished); {rows} of {SLOT_KEYS} keys read back from the new owner",
        100.0 * ops(&during) / ops(&before).max(1e-9),
        took.unwrap_or_default().as_secs_f64() * 1000.0
    );
    Ok(rows as u64 == SLOT_KEYS)
}
