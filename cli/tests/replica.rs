//! A diskless read replica beside three voters, as real processes: it joins every group as
//! a learner, never votes, serves serializable reads from its own state, sends linearizable
//! reads to the leaders, and after a restart (its memory gone) catches up by snapshot
//! before it serves again. Bad role flags are refused at start.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{client_for, free_addrs, initial_cluster, leader, wait_until, Servers, BIN};
use seedkv_proto::{ClientConfig, Consistency};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_diskless_replica_serves_reads_and_catches_up_after_a_restart() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let mut servers = Servers::new(tmp.path());
    let addrs = free_addrs(4);
    let initial = initial_cluster(&addrs[..3]);
    // Snapshots every 100 entries: the restarted replica catches up by snapshot.
    for id in 1..=3u64 {
        servers.start(
            id,
            &addrs[id as usize - 1],
            &[
                "--initial-cluster".to_string(),
                initial.clone(),
                "--snapshot-every".to_string(),
                "100".to_string(),
            ],
        );
    }
    let voters = addrs[..3].to_vec();
    let probe = client_for(&voters);
    wait_until("a leader", Duration::from_secs(30), || async {
        leader(&probe, &voters).await.is_some()
    })
    .await;
    let replica_args = [
        "--role".to_string(),
        "replica".to_string(),
        "--diskless".to_string(),
        "--join".to_string(),
        addrs[0].clone(),
    ];
    servers.start(4, &addrs[3], &replica_args);
    let writer = client_for(&voters);
    for i in 0..300u32 {
        writer
            .put(format!("key{i:03}").as_bytes(), b"one")
            .await
            .expect("put");
    }
    // Reads go to the replica alone.
    let mut config = ClientConfig::new(vec![addrs[3].clone()]);
    config.request_timeout_ms = 1_000;
    let reader = seedkv_proto::Client::new(config);
    let map = probe.slot_map().await.expect("slot map");
    let groups: Vec<u32> = map.groups().collect();
    wait_until(
        "the replica to be a learner of every group",
        Duration::from_secs(60),
        || async {
            for &group in &groups {
                let Ok(status) = probe.group_status(&addrs[0], group, false).await else {
                    return false;
                };
                if !status.learners.iter().any(|m| m.id == 4)
                    || status.voters.iter().any(|m| m.id == 4)
                {
                    return false;
                }
            }
            true
        },
    )
    .await;
    wait_until(
        "serializable reads of the last write from the replica",
        Duration::from_secs(60),
        || async {
            matches!(
                reader.get(b"key299", Consistency::Serializable).await,
                Ok(Some(v)) if v.value == b"one"
            )
        },
    )
    .await;
    let status = probe.status(&addrs[3]).await.expect("replica status");
    assert_eq!(status.role, "learner", "a replica never votes");

    // A restart: everything it held is gone; it rejoins with a new incarnation.
    servers.kill(4);
    for i in 0..300u32 {
        writer
            .put(format!("key{i:03}").as_bytes(), b"two")
            .await
            .expect("put");
    }
    servers.start(4, &addrs[3], &replica_args);
    // Until it caught up, it refuses (the client then reads by the map, from a leader):
    // never the first value once the second was acknowledged.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(Some(v)) = reader.get(b"key000", Consistency::Serializable).await {
            assert_eq!(
                v.value, b"two",
                "a read from the restarted replica went back in time"
            );
        }
        let on_replica = probe
            .group_status(&addrs[3], map.group_of(b"key000"), false)
            .await
            .map(|s| s.applied_index)
            .unwrap_or(0);
        if on_replica > 0
            && probe
                .status(&addrs[3])
                .await
                .is_ok_and(|s| s.role == "learner")
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the replica did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let linearizable = reader
        .get(b"key299", Consistency::Linearizable)
        .await
        .expect("a linearizable read through the replica's endpoint");
    assert_eq!(linearizable.map(|v| v.value), Some(b"two".to_vec()));
    assert!(
        !tmp.path().join("data4").exists(),
        "a diskless replica created its data directory"
    );

    // Removing it takes it out of every group and leaves the voters as they were.
    let out = common::cli(&addrs[0], &["cluster", "remove-node", "4"]);
    assert!(
        out.status.success(),
        "remove-node 4: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for group in std::iter::once(0).chain(groups.iter().copied()) {
        // Node 1 may be a follower of the group: it sees the change once it is appended.
        wait_until(
            "the replica out of the group",
            Duration::from_secs(10),
            || async {
                probe
                    .group_status(&addrs[0], group, false)
                    .await
                    .is_ok_and(|s| !s.learners.iter().any(|m| m.id == 4))
            },
        )
        .await;
        let status = probe
            .group_status(&addrs[0], group, false)
            .await
            .expect("group status");
        let voters: Vec<u64> = status.voters.iter().map(|m| m.id).collect();
        assert_eq!(voters, vec![1, 2, 3], "group {group}'s voters changed");
    }
}

#[test]
fn bad_role_flags_are_refused_at_start() {
    let tmp = tempfile::tempdir().expect("temp dir");
    for (args, says) in [
        (vec!["--diskless"], "--diskless is for read replicas"),
        (vec!["--role", "replica"], "--role replica needs --join"),
        (vec!["--role", "leader"], "--role must be voter or replica"),
    ] {
        let out = Command::new(BIN)
            .arg("server")
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(tmp.path().join("data"))
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .expect("run seedkv server");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} must not start");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        assert_eq!(
            stderr.trim().lines().count(),
            1,
            "one readable line: {stderr}"
        );
        assert!(
            !tmp.path().join("data").exists(),
            "{args:?} wrote a data directory"
        );
    }
}
