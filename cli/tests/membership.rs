//! Membership changes on a real cluster: two nodes joining at the same moment both end as
//! voters (changes compose instead of overwriting each other), and a change based on a
//! membership that no longer holds is refused with nothing changed.

mod common;

use std::time::Duration;

use common::{client_for, free_addrs, initial_cluster, leader, wait_until, Servers};
use seedkv_proto::ClientError;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_simultaneous_joins_give_five_voters_and_stale_changes_are_refused() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let mut servers = Servers::new(tmp.path());
    let addrs = free_addrs(5);
    let initial = initial_cluster(&addrs[..3]);
    for id in 1..=3u64 {
        servers.start(
            id,
            &addrs[id as usize - 1],
            &["--initial-cluster".to_string(), initial.clone()],
        );
    }
    let voters = addrs[..3].to_vec();
    let probe = client_for(&addrs);
    wait_until("a leader", Duration::from_secs(30), || async {
        leader(&probe, &voters).await.is_some()
    })
    .await;

    // Nodes 4 and 5 join through different nodes at the same moment.
    for id in [4u64, 5] {
        let via = &addrs[id as usize - 4];
        servers.start(
            id,
            &addrs[id as usize - 1],
            &["--join".to_string(), via.clone()],
        );
    }
    let voter_ids = || async {
        let (_, leader_addr) = leader(&probe, &addrs).await?;
        let status = probe.status(&leader_addr).await.ok()?;
        Some(status.voters.iter().map(|m| m.id).collect::<Vec<u64>>())
    };
    wait_until("five voters", Duration::from_secs(60), || async {
        voter_ids().await == Some(vec![1, 2, 3, 4, 5])
    })
    .await;

    // A change based on the old membership is refused, and changes nothing.
    let admin = client_for(&addrs);
    match admin.change_membership(0, &[], &[2], &[1, 2, 3]).await {
        Err(ClientError::Server(message)) => {
            assert!(message.contains("membership changed"), "{message}")
        }
        other => panic!("a stale change must be refused: {other:?}"),
    }
    assert_eq!(voter_ids().await, Some(vec![1, 2, 3, 4, 5]));
    // Based on the current one, it goes through (once the joins' change has finished).
    wait_until("node 2 removed", Duration::from_secs(30), || async {
        match admin
            .change_membership(0, &[], &[2], &[1, 2, 3, 4, 5])
            .await
        {
            Ok(_) => true,
            Err(ClientError::Server(message)) if message.contains("in progress") => false,
            Err(err) => panic!("remove node 2: {err}"),
        }
    })
    .await;
    // Node 2 may have led: wait for the next leader before reading the voters.
    wait_until("voters 1, 3, 4, 5", Duration::from_secs(30), || async {
        voter_ids().await == Some(vec![1, 3, 4, 5])
    })
    .await;
    // Removing every voter is refused before it reaches Raft.
    wait_until(
        "the removal of every voter refused",
        Duration::from_secs(30),
        || async {
            match admin.change_membership(0, &[], &[1, 3, 4, 5], &[]).await {
                Err(ClientError::InvalidArgument(message)) => {
                    assert!(message.contains("no voter"), "{message}");
                    true
                }
                Ok(index) => panic!("removing every voter must be refused, not done at {index}"),
                // No leader yet, or the last change still settling: ask again.
                Err(_) => false,
            }
        },
    )
    .await;
    servers.stop(2);
    for id in [1, 3, 4, 5] {
        servers.stop(id);
    }
}
