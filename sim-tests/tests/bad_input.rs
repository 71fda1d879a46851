//! Bad input gets a clear error and loses nothing: the real node and client, in the simulator.
#![cfg(madsim)]

use std::time::Duration;

use seedkv_core::command::WriteOp;
use seedkv_core::slot::Slot;
use seedkv_core::slot_map::SlotMap;
use seedkv_core::GroupId;
use seedkv_io_sim::DiskConfig;
use seedkv_proto::pb::kv_client::KvClient;
use seedkv_proto::status::moved_slot;
use seedkv_proto::trace::discard;
use seedkv_proto::{pb, Client, ClientConfig, ClientError, Consistency};
use seedkv_sim_tests::cluster::{initialized as bootstrapped, SimCluster};
use tonic::Code;

fn invalid(result: Result<impl std::fmt::Debug, ClientError>, needle: &str) {
    match result {
        Err(ClientError::InvalidArgument(message)) => {
            assert!(
                message.contains(needle),
                "{message:?} should mention {needle:?}"
            )
        }
        other => panic!("expected InvalidArgument mentioning {needle:?}, got {other:?}"),
    }
}

#[madsim::test]
async fn limits_and_unknown_nodes_are_refused_clearly() {
    let cluster = SimCluster::start(3, 0, 3, 0, discard(), DiskConfig::default());
    let members = cluster.members();
    let endpoints = cluster.addrs();
    let client_host = madsim::runtime::Handle::current()
        .create_node()
        .name("client")
        .ip("10.0.1.9".parse().expect("literal address"))
        .build();
    client_host
        .spawn(async move {
            let client = Client::new(ClientConfig::new(endpoints.clone()));
            let mut initialized = false;
            for _ in 0..50 {
                if bootstrapped(client.init(&endpoints[0], &members, 3, 3).await) {
                    initialized = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            assert!(initialized, "cluster did not initialize");
            let revision = client.put(b"keep", b"me").await.expect("put");

            invalid(client.put(b"", b"v").await, "key is empty");
            invalid(
                client.put(&vec![b'k'; 4097], b"v").await,
                "key is 4097 bytes",
            );
            invalid(
                client.put(b"k", &vec![0; 1024 * 1024 + 1]).await,
                "value is 1048577 bytes",
            );
            invalid(
                client.get(b"", Consistency::Linearizable).await,
                "key is empty",
            );
            invalid(client.cas(b"", None, Some(b"v")).await, "key is empty");
            // Keys of one batch share a hash slot ({b}), so only the limit under test bites.
            let many: Vec<WriteOp> = (0..1025)
                .map(|i: u32| WriteOp::Put {
                    key: format!("{{b}}{i}").into_bytes(),
                    value: vec![],
                })
                .collect();
            invalid(client.batch(&many).await, "batch has 1025 operations");
            invalid(client.batch(&[]).await, "batch is empty");
            let big: Vec<WriteOp> = (0..5u8)
                .map(|i| WriteOp::Put {
                    key: format!("{{b}}{i}").into_bytes(),
                    value: vec![0; 1024 * 1024],
                })
                .collect();
            invalid(client.batch(&big).await, "request carries");

            // Membership with a node nobody added.
            invalid(
                client.change_membership(0, &[2], &[3], &[]).await,
                "either adds voters or removes voters",
            );
            // Based on a membership that does not hold.
            match client.change_membership(0, &[], &[2], &[1, 9]).await {
                Err(ClientError::Server(message)) => {
                    assert!(message.contains("membership changed"), "{message:?}")
                }
                other => panic!("expected a refusal of a stale change, got {other:?}"),
            }
            match client.change_membership(0, &[42], &[], &[]).await {
                Err(ClientError::InvalidArgument(message)) => {
                    assert!(message.contains("42"), "{message:?} should name node 42")
                }
                other => panic!("expected a refusal naming node 42, got {other:?}"),
            }
            invalid(client.add_learner(0, 0, "10.0.0.9:7379").await, "node id 0");

            // Sharding: a plan with more groups than slots; raw requests that name no group
            // on a cluster of several; a write under a session of another group.
            invalid(
                client.init(&endpoints[0], &members, 2_000, 3).await,
                "more than the 1024 slots",
            );
            let mut raw = KvClient::connect(format!("http://{}", endpoints[0]))
                .await
                .expect("connect");
            let scan = pb::ScanRequest {
                limit: 1,
                ..Default::default()
            };
            let refused = raw.scan(scan).await.expect_err("a scan naming no group");
            assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
            assert!(refused.message().contains("3 data groups"), "{refused:?}");
            let refused = raw
                .register(pb::RegisterRequest { group: 0 })
                .await
                .expect_err("a session naming no group");
            assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
            let plan = SlotMap::initial(&[1, 2, 3], 3, 3).expect("plan");
            let key = (0..)
                .map(|n: u32| format!("elsewhere{n}").into_bytes())
                .find(|key| plan.owner(Slot::of(key)).group == GroupId(2))
                .expect("a key of group 2");
            let put = pb::PutRequest {
                key: key.clone(),
                value: b"lost?".to_vec(),
                session: Some(pb::Session {
                    client_id: 1,
                    seq: 1,
                    acked_below: 1,
                    group: 1,
                }),
            };
            // Any node: each holds every group here, so the key's group serves it and the
            // session's group does not match.
            let refused = raw.put(put).await.expect_err("a session of another group");
            assert_eq!(
                moved_slot(&refused),
                Some(Slot::of(&key)),
                "{refused:?} should be MOVED"
            );
            let absent = client.get(&key, Consistency::Linearizable).await;
            assert!(matches!(absent, Ok(None)), "{absent:?}");

            // Nothing was lost or changed by any of it.
            let kept = client
                .get(b"keep", Consistency::Linearizable)
                .await
                .expect("get")
                .expect("key present");
            assert_eq!(
                (kept.value.as_slice(), kept.revision),
                (b"me".as_slice(), revision)
            );
            let (rows, more) = client
                .scan(&Default::default(), 0, Consistency::Linearizable)
                .await
                .expect("scan");
            assert_eq!(rows.len(), 1);
            assert!(!more);
        })
        .await
        .expect("client task");
}
