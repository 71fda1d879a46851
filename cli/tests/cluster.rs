//! A real three-node cluster: `seedkv server` processes on loopback, real RocksDB in temporary
//! directories, the leader killed with SIGKILL in the middle of 1,000 writes and restarted,
//! then a fourth node joins and one is removed. Every process started is stopped.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{
    caught_up, cli, client_for, free_addrs, group_leader, initial_cluster, leader, wait_until,
    Servers,
};
use seedkv_proto::{ClientError, Consistency};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_the_leader_during_writes_then_join_and_remove() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let mut servers = Servers::new(tmp.path());
    let addrs = free_addrs(4);
    let initial = initial_cluster(&addrs[..3]);
    // Snapshots every 200 entries: the restarted and the new node catch up by snapshot.
    let args_for = |_id: u64| {
        vec![
            "--initial-cluster".to_string(),
            initial.clone(),
            "--snapshot-every".to_string(),
            "200".to_string(),
        ]
    };
    for id in 1..=3u64 {
        servers.start(id, &addrs[id as usize - 1], &args_for(id));
    }
    let voters = addrs[..3].to_vec();
    let probe = client_for(&voters);
    wait_until("a leader", Duration::from_secs(30), || async {
        leader(&probe, &voters).await.is_some()
    })
    .await;

    // 1,000 writes; the leader is SIGKILLed after the 500th.
    let client = client_for(&voters);
    let mut acked: BTreeMap<String, String> = BTreeMap::new();
    let mut unknown = 0;
    let mut killed = None;
    for i in 0..1_000u32 {
        if i == 500 {
            // The leader of the first data group: a third of the writes go through it.
            let (id, _) = group_leader(&probe, &voters, 1)
                .await
                .expect("leader before the kill");
            servers.kill(id);
            killed = Some(id);
        }
        let key = format!("key{i:04}");
        let value = format!("value{i}");
        // A definite failure applied nothing, so the same write may be sent again.
        let mut tries = 0;
        loop {
            tries += 1;
            match client.put(key.as_bytes(), value.as_bytes()).await {
                Ok(_) => {
                    acked.insert(key, value);
                    break;
                }
                Err(ClientError::Unknown(_)) => {
                    unknown += 1;
                    break;
                }
                Err(err) if tries < 5 => eprintln!("write {i} refused, retrying: {err}"),
                Err(err) => panic!("write {i} failed {tries} times: {err}"),
            }
        }
    }
    let killed = killed.expect("a leader was killed");
    assert!(
        acked.len() >= 990,
        "only {} writes acknowledged ({unknown} unknown)",
        acked.len()
    );

    // Restart the killed node from its data directory; it must catch up.
    servers.start(killed, &addrs[killed as usize - 1], &args_for(killed));
    let killed_addr = addrs[killed as usize - 1].clone();
    wait_until(
        "the restarted node to catch up",
        Duration::from_secs(30),
        || caught_up(&probe, &voters, &killed_addr),
    )
    .await;

    // Every acknowledged write, read back from every node on its own.
    let keys: Vec<Vec<u8>> = acked.keys().map(|k| k.clone().into_bytes()).collect();
    for addr in &voters {
        let single = client_for(std::slice::from_ref(addr));
        for chunk in keys.chunks(500) {
            let values = single
                .multi_get(chunk, Consistency::Serializable)
                .await
                .unwrap_or_else(|err| panic!("read from {addr}: {err}"));
            for (key, value) in chunk.iter().zip(values) {
                let key = String::from_utf8_lossy(key).into_owned();
                let got = value.map(|v| String::from_utf8_lossy(&v.value).into_owned());
                assert_eq!(got.as_ref(), acked.get(&key), "{key} on {addr}");
            }
        }
    }

    // The CLI session: put, get, scan.
    let endpoints = voters.join(",");
    let out = cli(&endpoints, &["put", "foo", "bar"]);
    assert!(
        out.status.success(),
        "put: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(&endpoints, &["get", "foo"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "bar\n");
    let out = cli(&endpoints, &["get", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&out.stderr), "not found\n");
    let out = cli(&endpoints, &["scan", "--prefix", "fo"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "foo => bar\n");
    let out = cli(&endpoints, &["put", "", "x"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("key is empty"));

    // An atomic batch from the shell: keys sharing a hash tag, all or nothing.
    let out = cli(
        &endpoints,
        &[
            "batch",
            "put",
            "{u1}.name",
            "ann",
            "cas-absent",
            "{u1}.mail",
            "a@x",
        ],
    );
    assert!(
        out.status.success(),
        "batch: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let refused = [
        "batch",
        "put",
        "{u1}.name",
        "bob",
        "cas",
        "{u1}.mail",
        "b@x",
        "c@x",
    ];
    let out = cli(&endpoints, &refused);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "compare failed: nothing was written\n"
    );
    let out = cli(&endpoints, &["mget", "{u1}.name", "{u1}.mail"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "{u1}.name => ann\n{u1}.mail => a@x\n"
    );
    // Keys of two slots in one batch: refused by the CLI, and by the node whatever the client.
    let out = cli(&endpoints, &["batch", "put", "a", "1", "put", "b", "2"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("CROSS_SLOT"));
    let mut kv = seedkv_proto::pb::kv_client::KvClient::connect(format!("http://{}", voters[0]))
        .await
        .expect("connect");
    let put = |key: &str| seedkv_proto::pb::WriteOp {
        op: Some(seedkv_proto::pb::write_op::Op::Put(
            seedkv_proto::pb::PutRequest {
                key: key.as_bytes().to_vec(),
                value: b"1".to_vec(),
                ..Default::default()
            },
        )),
    };
    let request = seedkv_proto::pb::BatchRequest {
        ops: vec![put("a"), put("b")],
        session: None,
    };
    let status = kv.batch(request).await.expect_err("cross-slot batch");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains("CROSS_SLOT"),
        "{}",
        status.message()
    );
    let out = cli(&endpoints, &["get", "a"]);
    assert_eq!(out.status.code(), Some(1), "nothing was written");

    // A fourth node joins through node 1 and becomes a voter.
    let join = ["--join", &addrs[0], "--snapshot-every", "200"].map(String::from);
    servers.start(4, &addrs[3], &join);
    wait_until(
        "node 4 to become a voter",
        Duration::from_secs(60),
        || async {
            match probe.status(&addrs[0]).await {
                Ok(status) => status.voters.iter().any(|m| m.id == 4),
                Err(_) => false,
            }
        },
    )
    .await;

    // Joining adds a node to the meta group; a data group takes it as a replica when asked.
    let all = addrs.join(",");
    let out = cli(
        &all,
        &["cluster", "add-node", "4", &addrs[3], "--group", "1"],
    );
    assert!(
        out.status.success(),
        "add-node --group 1: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Node 4 caught up with group 1 through a snapshot; the log behind snapshots is purged.
    wait_until(
        "node 4 to install a snapshot of group 1",
        Duration::from_secs(30),
        || async {
            probe
                .group_status(&addrs[3], 1, false)
                .await
                .is_ok_and(|status| status.snapshot_index > 0)
        },
    )
    .await;
    let status = probe
        .group_status(&addrs[0], 1, false)
        .await
        .expect("status of node 1");
    assert!(status.purged_index > 0, "node 1 purged nothing: {status:?}");

    // Remove node 2 from every group through the CLI, then stop it.
    let out = cli(&all, &["cluster", "remove-node", "2"]);
    assert!(
        out.status.success(),
        "remove-node: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for group in 1..=3 {
        let status = probe
            .group_status(&addrs[0], group, false)
            .await
            .expect("status");
        assert!(
            status.voters.iter().all(|m| m.id != 2),
            "node 2 still votes in group {group}: {status:?}"
        );
    }
    let status = probe.status(&addrs[0]).await.expect("status");
    let ids: Vec<u64> = status.voters.iter().map(|m| m.id).collect();
    assert_eq!(ids, vec![1, 3, 4]);
    servers.stop(2);
    let remaining = vec![addrs[0].clone(), addrs[2].clone(), addrs[3].clone()];
    wait_until(
        "a leader among 1, 3, 4",
        Duration::from_secs(30),
        || async { leader(&probe, &remaining).await.is_some() },
    )
    .await;

    let out = cli(&all, &["cluster", "status"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("leader"), "{table}");

    // Three data groups (one per initial member) share the slots, as their own logs decided.
    let out = cli(&all, &["--output", "json", "cluster", "slots"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let slots: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("cluster slots prints JSON");
    let groups = slots["groups"].as_array().expect("groups");
    let counts: Vec<u64> = groups
        .iter()
        .map(|g| g["slot_count"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(counts, vec![0, 342, 341, 341], "{slots}");
    assert_eq!(
        groups[1]["ranges"],
        serde_json::json!([{ "first": 0, "last": 341, "epoch": 1 }]),
        "{slots}"
    );
    assert_eq!(
        groups[1]["voters"].as_array().map(Vec::len),
        Some(3),
        "{slots}"
    );
    let out = cli(&all, &["cluster", "slots"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("683-1023"), "{table}");

    for id in [1, 3, 4] {
        servers.stop(id);
    }
}
