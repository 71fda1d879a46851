//! Operating a cluster from outside, with tools the project did not write: `curl` on the
//! HTTP/JSON gateway and `/health`, `promtool check metrics` on `/metrics`, and Python's
//! grpcio on `grpc.health.v1` and `grpc.reflection` (which build the request types from
//! the server's own descriptors and call Put and Get). Three real processes on free ports.
//!
//! `cargo xtask test` installs the tools (Debian's `prometheus` for promtool, a Python
//! virtual environment with grpcio under `target/pyenv`); run alone, set
//! `SEEDKV_TEST_PYTHON` to a Python that has them.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{client_for, free_addrs, initial_cluster, leader, wait_until, Servers, BIN};
use serde_json::Value;

/// `curl` with `args` on `url`: the HTTP status and the body.
fn curl(url: &str, args: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-o", "-", "-w", "\n%{http_code}"])
        .args(args)
        .arg(url)
        .output()
        .expect("run curl (install it: apt-get install curl)");
    assert!(
        out.status.success(),
        "curl {url} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("utf-8 answer");
    let (body, code) = text.rsplit_once('\n').expect("status line");
    (code.trim().parse().expect("status code"), body.to_string())
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|err| panic!("not JSON ({err}): {body}"))
}

fn python() -> String {
    std::env::var("SEEDKV_TEST_PYTHON").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../target/pyenv/bin/python").to_string()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_promtool_and_a_foreign_grpc_client_operate_a_cluster() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let mut servers = Servers::new(tmp.path());
    let addrs = free_addrs(3);
    let initial = initial_cluster(&addrs);
    let args = ["--initial-cluster".to_string(), initial];

    // Alone, node 1 cannot elect: /health says why, with 503.
    servers.start(1, &addrs[0], &args);
    let health_url = |i: usize| format!("http://{}/health", addrs[i]);
    wait_until(
        "node 1 to answer /health",
        Duration::from_secs(30),
        || async {
            Command::new("curl")
                .args(["-s", "-o", "/dev/null", &health_url(0)])
                .status()
                .is_ok_and(|s| s.success())
        },
    )
    .await;
    let (code, body) = curl(&health_url(0), &[]);
    assert_eq!(code, 503, "{body}");
    let report = json(&body);
    assert_eq!(report["healthy"], false, "{body}");
    assert!(
        report["problems"].to_string().contains("no leader known"),
        "{body}"
    );

    servers.start(2, &addrs[1], &args);
    servers.start(3, &addrs[2], &args);
    let probe = client_for(&addrs);
    wait_until("a leader", Duration::from_secs(30), || async {
        leader(&probe, &addrs).await.is_some()
    })
    .await;
    wait_until("every node healthy", Duration::from_secs(60), || async {
        (0..3).all(|i| {
            let (code, body) = curl(&health_url(i), &[]);
            let report = json(&body);
            code == 200
                && report["healthy"] == true
                && report["groups"].as_array().is_some_and(|g| g.len() >= 2)
        })
    })
    .await;

    // The gateway: any node takes any key (it routes like a client).
    let kv = |i: usize, key: &str| format!("http://{}/v1/kv/{key}", addrs[i]);
    let (code, body) = curl(
        &kv(0, "greeting"),
        &["-X", "PUT", "--data-binary", "hello, world"],
    );
    assert_eq!(code, 200, "{body}");
    let written = json(&body)["revision"].as_u64().expect("revision");
    assert!(written > 0);
    let (code, body) = curl(&kv(1, "greeting"), &[]);
    assert_eq!(code, 200, "{body}");
    let got = json(&body);
    assert_eq!(got["value"], "hello, world");
    assert_eq!(got["revision"].as_u64(), Some(written));
    let (code, body) = curl(
        &format!("{}?consistency=serializable", kv(2, "greeting")),
        &[],
    );
    assert!(
        code == 200 && json(&body)["key"] == "greeting",
        "{code} {body}"
    );
    // Keys may hold slashes and escaped bytes; values any bytes.
    let (code, body) = curl(
        &kv(2, "dir/sub%20key"),
        &["-X", "PUT", "--data-binary", "spaced"],
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&body)["key"], "dir/sub key");
    let binary = tmp.path().join("binary");
    std::fs::write(&binary, [0xff, 0x00, 0x80]).expect("write value");
    let at_binary = format!("@{}", binary.display());
    let (code, _) = curl(&kv(0, "bin"), &["-X", "PUT", "--data-binary", &at_binary]);
    assert_eq!(code, 200);
    let got = json(&curl(&kv(1, "bin"), &[]).1);
    assert_eq!(got["value_base64"], "/wCA", "{got}");
    // Listing by prefix, in key order, with a limit.
    for i in 0..5 {
        let (code, _) = curl(
            &kv(i % 3, &format!("list/{i}")),
            &["-X", "PUT", "--data-binary", &format!("v{i}")],
        );
        assert_eq!(code, 200);
    }
    let (code, body) = curl(
        &format!("http://{}/v1/kv?prefix=list/&limit=3", addrs[1]),
        &[],
    );
    assert_eq!(code, 200, "{body}");
    let listed = json(&body);
    let keys: Vec<&str> = listed["kvs"]
        .as_array()
        .expect("kvs")
        .iter()
        .filter_map(|kv| kv["key"].as_str())
        .collect();
    assert_eq!(keys, ["list/0", "list/1", "list/2"], "{body}");
    assert_eq!(listed["more"], true);
    // Delete, then a read of the key is a 404 with a JSON error.
    let (code, body) = curl(&kv(2, "greeting"), &["-X", "DELETE"]);
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&body)["deleted"], true);
    let (code, body) = curl(&kv(0, "greeting"), &[]);
    assert_eq!(code, 404, "{body}");
    assert_eq!(json(&body)["code"], "NOT_FOUND");
    // Bad input: a clear JSON error, nothing written.
    let (code, body) = curl(&format!("{}?consistency=eventual", kv(0, "x")), &[]);
    assert_eq!(
        (code, json(&body)["code"].as_str()),
        (400, Some("INVALID_ARGUMENT"))
    );
    let long_key = "k".repeat(5_000);
    let (code, body) = curl(&kv(0, &long_key), &["-X", "PUT", "--data-binary", "v"]);
    assert_eq!(code, 400, "{body}");
    assert!(json(&body)["error"].to_string().contains("key"), "{body}");
    let (code, _) = curl(&format!("http://{}/v1/kv?limit=0", addrs[0]), &[]);
    assert_eq!(code, 400);

    // A plain HTTP path nobody serves is a JSON 404 (a gRPC call to one gets gRPC's
    // UNIMPLEMENTED: see grpc_probe.py), and an empty key a 400: never a 200 for nothing.
    let (code, body) = curl(&format!("http://{}/no/such/path", addrs[0]), &[]);
    assert_eq!(
        (code, json(&body)["code"].as_str()),
        (404, Some("NOT_FOUND"))
    );
    let (code, body) = curl(
        &format!("http://{}/v1/kv/", addrs[0]),
        &["-X", "PUT", "--data-binary", "v"],
    );
    assert_eq!(
        (code, json(&body)["code"].as_str()),
        (400, Some("INVALID_ARGUMENT"))
    );
    let (code, body) = curl(&format!("http://{}/v1/kv?limit=many", addrs[0]), &[]);
    assert_eq!(
        (code, json(&body)["code"].as_str()),
        (400, Some("INVALID_ARGUMENT"))
    );
    let big = tmp.path().join("big");
    std::fs::write(&big, vec![b'x'; 2 << 20]).expect("write value");
    let (code, body) = curl(
        &kv(0, "big"),
        &["-X", "PUT", "--data-binary", &format!("@{}", big.display())],
    );
    assert_eq!(
        (code, json(&body)["code"].as_str()),
        (413, Some("TOO_LARGE"))
    );

    // /metrics: clean for promtool, and it counts what was just done.
    let (code, metrics) = curl(&format!("http://{}/metrics", addrs[0]), &[]);
    assert_eq!(code, 200);
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run promtool (install it: apt-get install prometheus)");
    {
        use std::io::Write;
        let mut stdin = promtool.stdin.take().expect("stdin");
        stdin.write_all(metrics.as_bytes()).expect("feed promtool");
    }
    let checked = promtool.wait_with_output().expect("promtool");
    assert!(
        checked.status.success() && checked.stdout.is_empty() && checked.stderr.is_empty(),
        "promtool: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    for expected in [
        "seedkv_http_requests_total{route=\"/v1/kv/{key}\",verb=\"PUT\",code=\"200\"}",
        "seedkv_http_requests_total{route=\"/v1/kv/{key}\",verb=\"GET\",code=\"404\"}",
        "seedkv_raft_term{group=\"0\"}",
        "seedkv_raft_applied_index{group=\"1\"}",
        "seedkv_fsyncs_total",
        "seedkv_fsync_duration_seconds_bucket",
        "seedkv_log_entries_per_fsync_bucket",
        "seedkv_proposal_queue_limit 65536",
        "seedkv_rocksdb_size_bytes{part=\"sst\"}",
    ] {
        assert!(
            metrics.contains(expected),
            "no {expected} in /metrics:\n{metrics}"
        );
    }
    // A Prometheus server asks for OpenMetrics, and gets it.
    let (_, open) = curl(
        &format!("http://{}/metrics", addrs[0]),
        &["-H", "Accept: application/openmetrics-text; version=1.0.0"],
    );
    assert!(open.ends_with("# EOF\n"), "not OpenMetrics: {open}");

    // A gRPC client the project did not write, with no .proto of seedkv's.
    let out = Command::new(python())
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/grpc_probe.py"))
        .arg(&addrs[1])
        .output()
        .unwrap_or_else(|err| {
            panic!(
                "run {} ({err}): `cargo xtask test` creates it, or set SEEDKV_TEST_PYTHON",
                python()
            )
        });
    assert!(
        out.status.success(),
        "grpc_probe.py: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The gRPC calls it made are counted, the unknown one as such (its first Put went to
    // node 2: answered, or sent on to the leader).
    let (_, metrics) = curl(&format!("http://{}/metrics", addrs[1]), &[]);
    for expected in [
        "seedkv_grpc_requests_total{method=\"seedkv.v1.Kv/Put\",code=\"",
        "seedkv_grpc_requests_total{method=\"unknown\",code=\"Unimplemented\"}",
        "seedkv_grpc_requests_total{method=\"grpc.health.v1.Health/Check\",code=\"Ok\"}",
    ] {
        assert!(
            metrics.contains(expected),
            "no {expected} in /metrics:\n{metrics}"
        );
    }
    // The CLI still speaks gRPC on the same port.
    let out = Command::new(BIN)
        .args(["--endpoints", &addrs[2], "get", "list/4"])
        .output()
        .expect("seedkv get");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for id in 1..=3 {
        servers.stop(id);
    }
}
