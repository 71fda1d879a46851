//! Online slot migration on a real cluster: three nodes with two data groups hold 50,000
//! loaded keys; while `seedkv bench --workload mixed:50` records its history, a third group
//! is added and `seedkv cluster rebalance` moves a third of the slots to it. Afterwards every
//! loaded key reads back, the history is linearizable, the slot shares follow the weights,
//! and bad requests are refused with nothing changed. Every process started is stopped.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{cli, client_for, free_addrs, initial_cluster, leader, wait_until, Servers, BIN};
use seedkv_core::command::ScanRange;
use seedkv_proto::Consistency;

/// Keys loaded before the move.
const LOADED_KEYS: usize = 50_000;
/// Seconds of load during which the group is added and the slots move.
const LOAD_S: u64 = 12;

fn ok(output: &std::process::Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(
        output.status.success(),
        "{what} failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

fn refused(output: &std::process::Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "expected a refusal, got success");
    assert!(
        stderr.contains(needle),
        "expected {needle:?} in the refusal: {stderr}"
    );
    assert_eq!(
        stderr.trim().lines().count(),
        1,
        "a refusal is one line: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slots_move_to_an_added_group_under_load_and_nothing_is_lost() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let mut servers = Servers::new(tmp.path());
    let addrs = free_addrs(3);
    let args = vec![
        "--initial-cluster".to_string(),
        initial_cluster(&addrs),
        "--groups".to_string(),
        "2".to_string(),
    ];
    for id in 1..=3u64 {
        servers.start(id, &addrs[id as usize - 1], &args);
    }
    let endpoints = addrs.join(",");
    let probe = client_for(&addrs);
    wait_until("a leader", Duration::from_secs(30), || async {
        leader(&probe, &addrs).await.is_some()
    })
    .await;
    wait_until("the slot map", Duration::from_secs(30), || async {
        probe.slot_map().await.is_ok()
    })
    .await;
    let keys = LOADED_KEYS.to_string();
    ok(
        &cli(&endpoints, &["load", "--keys", &keys, "--value-size", "64"]),
        "seedkv load",
    );

    let history = tmp.path().join("history.jsonl");
    let mut bench = Command::new(BIN)
        .args(["--endpoints", &endpoints, "--output", "json"])
        .args(["bench", "--workload", "mixed:50", "--clients", "16"])
        .args(["--key-space", "64", "--warmup", "0"])
        .args(["--duration", &LOAD_S.to_string()])
        .arg("--record-history")
        .arg(&history)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start seedkv bench");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let added = ok(
        &cli(
            &endpoints,
            &[
                "--output",
                "json",
                "cluster",
                "add-group",
                "--nodes",
                "3,1,2",
            ],
        ),
        "cluster add-group",
    );
    let added: serde_json::Value = serde_json::from_str(added.trim()).expect("add-group JSON");
    assert_eq!(added["group"], 3, "{added}");
    // The added group elects a leader once its first replica starts it.
    wait_until(
        "a leader of the added group",
        Duration::from_secs(30),
        || async { common::group_leader(&probe, &addrs, 3).await.is_some() },
    )
    .await;
    let moved = ok(
        &cli(
            &endpoints,
            &["--output", "json", "cluster", "rebalance", "--wait", "120"],
        ),
        "cluster rebalance",
    );
    let moved: serde_json::Value = serde_json::from_str(moved.trim()).expect("rebalance JSON");
    let started = moved["started"].as_array().map_or(0, Vec::len);
    assert_eq!(
        started, 341,
        "a third of the slots moves to the new group: {moved}"
    );

    let deadline = Instant::now() + Duration::from_secs(LOAD_S + 60);
    while bench.try_wait().expect("wait for bench").is_none() {
        if Instant::now() > deadline {
            let _ = bench.kill();
            panic!("seedkv bench did not finish");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let output = bench.wait_with_output().expect("bench output");
    let stdout = ok(&output, "seedkv bench");
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).expect("bench JSON");
    let ops = report["ops"].as_u64().unwrap_or(0);
    assert!(ops > 1_000, "only {ops} operations: {report}");

    let check = Command::new(BIN)
        .args(["check-history", "--timeout-s", "60"])
        .arg(&history)
        .output()
        .expect("run check-history");
    assert_eq!(
        String::from_utf8_lossy(&check.stdout).trim(),
        "linearizable",
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );

    // Every loaded key reads back, through a scan of the whole key space in pages.
    let mut found = 0;
    let mut from = Vec::new();
    loop {
        let range = ScanRange {
            prefix: b"load/".to_vec(),
            from: from.clone(),
            to: Vec::new(),
        };
        let (page, more) = probe
            .scan(&range, 10_000, Consistency::Linearizable)
            .await
            .expect("scan");
        found += page.len();
        match page.last() {
            Some((last, _)) if more => {
                from = last.clone();
                from.push(0);
            }
            _ => break,
        }
    }
    assert_eq!(
        found, LOADED_KEYS,
        "every loaded key reads back after the moves"
    );

    // Shares follow the (equal) weights: 342, 341 and 341 slots.
    let slots = ok(
        &cli(&endpoints, &["--output", "json", "cluster", "slots"]),
        "cluster slots",
    );
    let slots: serde_json::Value = serde_json::from_str(slots.trim()).expect("slots JSON");
    let mut counts: Vec<u64> = slots["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .filter(|g| g["group"] != 0)
        .map(|g| g["slot_count"].as_u64().unwrap_or(0))
        .collect();
    counts.sort_unstable();
    assert_eq!(counts, vec![341, 341, 342], "{slots}");
    let migrations = ok(
        &cli(&endpoints, &["--output", "json", "cluster", "migrations"]),
        "cluster migrations",
    );
    assert!(migrations.contains("\"migrations\":[]"), "{migrations}");

    // Bad requests: one line, a non-zero exit, nothing changed.
    refused(
        &cli(
            &endpoints,
            &["cluster", "move-slots", "--slots", "0", "--to", "1"],
        ),
        "owns slot 0 already",
    );
    refused(
        &cli(
            &endpoints,
            &["cluster", "move-slots", "--slots", "0", "--to", "9"],
        ),
        "no data group g9",
    );
    refused(
        &cli(
            &endpoints,
            &["cluster", "move-slots", "--slots", "5..2", "--to", "2"],
        ),
        "inverted",
    );
    refused(
        &cli(&endpoints, &["cluster", "set-weight", "2", "0"]),
        "weight of at least 1",
    );
    refused(
        &cli(&endpoints, &["cluster", "add-group", "--nodes", "1,7"]),
        "node 7 is not a voting member",
    );
    refused(
        &cli(&endpoints, &["cluster", "remove-group", "3"]),
        "still owns 341 slots",
    );
    let after = ok(
        &cli(&endpoints, &["--output", "json", "cluster", "slots"]),
        "cluster slots",
    );
    let after: serde_json::Value = serde_json::from_str(after.trim()).expect("slots JSON");
    let count_of = |v: &serde_json::Value, group: u64| {
        v["groups"]
            .as_array()
            .and_then(|groups| groups.iter().find(|g| g["group"] == group))
            .map(|g| g["slot_count"].clone())
    };
    for group in 1..=3 {
        assert_eq!(count_of(&after, group), count_of(&slots, group));
    }
    println!(
        "{ops} operations during {started} slot moves (errors {}), history linearizable",
        report["errors"]
    );
    for id in 1..=3 {
        servers.stop(id);
    }
}
