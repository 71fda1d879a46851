//! Exactly-once writes through leader crashes, on a real cluster: `seedkv bench --workload cas`
//! with 16 clients records its history while the leader is SIGKILLed and restarted twice.
//! Every write must end with an answer (resent writes are answered, never applied twice), and
//! the history must be linearizable. Every process started is stopped.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{client_for, free_addrs, initial_cluster, leader, wait_until, Servers, BIN};

/// Seconds of load; the leader is killed at 1/5 and 3/5 of it and restarted 1 s later.
const LOAD_S: u64 = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cas_writes_through_two_leader_kills_have_answers_and_are_linearizable() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let mut servers = Servers::new(tmp.path());
    let addrs = free_addrs(3);
    let initial = initial_cluster(&addrs[..3]);
    let args = vec!["--initial-cluster".to_string(), initial];
    for id in 1..=3u64 {
        servers.start(id, &addrs[id as usize - 1], &args);
    }
    let probe = client_for(&addrs);
    wait_until("a leader", Duration::from_secs(30), || async {
        leader(&probe, &addrs).await.is_some()
    })
    .await;

    let history = tmp.path().join("history.jsonl");
    let mut bench = Command::new(BIN)
        .args(["--endpoints", &addrs.join(","), "--output", "json"])
        .args([
            "bench",
            "--workload",
            "cas",
            "--clients",
            "16",
            "--key-space",
            "8",
        ])
        .args(["--duration", &LOAD_S.to_string(), "--warmup", "0"])
        .arg("--record-history")
        .arg(&history)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start seedkv bench");
    let started = Instant::now();
    for kill_at_s in [LOAD_S / 5, 3 * LOAD_S / 5] {
        tokio::time::sleep(Duration::from_secs(kill_at_s).saturating_sub(started.elapsed())).await;
        let (id, addr) = leader(&probe, &addrs).await.expect("a leader to kill");
        servers.kill(id);
        tokio::time::sleep(Duration::from_secs(1)).await;
        servers.start(id, &addr, &args);
    }
    // The bench stops by itself; bound the wait all the same.
    let deadline = Instant::now() + Duration::from_secs(LOAD_S + 60);
    while bench.try_wait().expect("wait for bench").is_none() {
        if Instant::now() > deadline {
            let _ = bench.kill();
            panic!("seedkv bench did not finish");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let output = bench.wait_with_output().expect("bench output");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "bench failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).expect("bench JSON");
    let ops = report["ops"].as_u64().unwrap_or(0);
    assert!(ops > 100, "only {ops} operations: {report}");
    let errors = report["errors"].as_object().cloned().unwrap_or_default();
    assert!(
        !errors.contains_key("unknown-outcome"),
        "writes ended with an unknown outcome: {report}"
    );

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
    println!("{ops} cas operations, errors {errors:?}, history linearizable");
    for id in 1..=3 {
        servers.stop(id);
    }
}
