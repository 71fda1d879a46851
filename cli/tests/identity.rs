//! A node that lost its data cannot come back as itself, and clusters stay apart, on real
//! processes and real disks:
//! - once the leader has recorded every member's incarnation, a member restarted on an empty
//!   data directory with its bootstrap flags refuses to start, saying how to rejoin;
//! - removed and joined again on that empty directory, it becomes a voter and catches up;
//! - a node of another cluster is refused as a learner, and nothing changes.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{cli, client_for, free_addrs, initial_cluster, leader, wait_until, Servers, BIN};
use seedkv_proto::{ClientError, Consistency};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_on_a_blank_disk_must_rejoin_and_other_clusters_are_refused() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let mut servers = Servers::new(tmp.path());
    let addrs = free_addrs(4);
    let voters = addrs[..3].to_vec();
    let bootstrap = vec!["--initial-cluster".to_string(), initial_cluster(&voters)];
    for id in 1..=3u64 {
        servers.start(id, &addrs[id as usize - 1], &bootstrap);
    }
    let probe = client_for(&addrs);
    // The leader records each member's incarnation once the member answers.
    wait_until(
        "every incarnation recorded",
        Duration::from_secs(30),
        || async {
            let Some((_, leader_addr)) = leader(&probe, &voters).await else {
                return false;
            };
            let Ok(status) = probe.status(&leader_addr).await else {
                return false;
            };
            status.voters.len() == 3 && status.voters.iter().all(|m| m.incarnation != 0)
        },
    )
    .await;
    let client = client_for(&voters);
    client.put(b"kept", b"before").await.expect("first put");

    // Node 3 loses its disk and is started again as an initial member: refused.
    servers.stop(3);
    std::fs::remove_dir_all(tmp.path().join("data3")).expect("wipe node 3");
    let refused = Command::new(BIN)
        .arg("server")
        .args(["--node-id", "3", "--listen", &addrs[2]])
        .arg("--data-dir")
        .arg(tmp.path().join("data3"))
        .args(&bootstrap)
        .stdin(Stdio::null())
        .output()
        .expect("run seedkv server");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "a blank member must not start");
    assert!(
        stderr.contains("already ran as a member") && stderr.contains("--join"),
        "{stderr}"
    );
    assert!(
        !tmp.path().join("data3").join("db").exists(),
        "the refused start must not create a data directory"
    );

    // Removed, then joined again on its empty directory: a voter again, with the data.
    let endpoints = voters[..2].join(",");
    let removed = cli(&endpoints, &["cluster", "remove-node", "3"]);
    assert!(
        removed.status.success(),
        "{}",
        String::from_utf8_lossy(&removed.stderr)
    );
    servers.start(3, &addrs[2], &["--join".to_string(), addrs[0].clone()]);
    wait_until("node 3 a voter again", Duration::from_secs(60), || async {
        let Some((_, leader_addr)) = leader(&probe, &voters).await else {
            return false;
        };
        let Ok(status) = probe.status(&leader_addr).await else {
            return false;
        };
        let Ok(node3) = probe.status(&addrs[2]).await else {
            return false;
        };
        status
            .voters
            .iter()
            .any(|m| m.id == 3 && m.incarnation == node3.incarnation)
    })
    .await;
    let node3 = client_for(&addrs[2..3]);
    wait_until("node 3 caught up", Duration::from_secs(30), || async {
        matches!(
            node3.get(b"kept", Consistency::Serializable).await,
            Ok(Some(v)) if v.value == b"before"
        )
    })
    .await;

    // A node bootstrapped as a cluster of its own cannot be added to this one.
    servers.start(4, &addrs[3], &[]);
    wait_until("node 4 up", Duration::from_secs(30), || async {
        probe
            .status(&addrs[3])
            .await
            .is_ok_and(|s| s.role == "leader")
    })
    .await;
    match client.add_learner(0, 4, &addrs[3]).await {
        Err(ClientError::Server(message)) => {
            assert!(message.contains("belongs to cluster"), "{message}")
        }
        other => panic!("a node of another cluster must be refused: {other:?}"),
    }
    let (_, leader_addr) = leader(&probe, &voters).await.expect("a leader");
    let status = probe.status(&leader_addr).await.expect("leader status");
    assert!(status.learners.is_empty(), "{:?}", status.learners);
    for id in 1..=4 {
        servers.stop(id);
    }
}
