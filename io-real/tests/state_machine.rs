//! The state machine on RocksDB against the in-memory reference (`KvState`): random command
//! runs, reads of every kind, a reopen, and a snapshot streamed to a second disk.

use std::sync::Arc;

use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, EntryPayload};
use proptest::prelude::*;
use seedkv_core::command::{Command, ScanRange, WriteOp};
use seedkv_core::ownership::OwnedRange;
use seedkv_core::session::SessionTag;
use seedkv_core::storage::snapshot::Staging;
use seedkv_core::storage::{DynDisk, SnapshotData, StateMachineStore};
use seedkv_core::types::{Entry, LogId};
use seedkv_core::{GroupId, KvState};
use seedkv_io_real::{Identity, RocksDisk};

const GROUP: GroupId = GroupId(0);

fn key() -> impl Strategy<Value = Vec<u8>> {
    prop::sample::select(vec![
        "a", "b", "c", "ab", "ba", "b\u{0}", "{t}1", "{t}2", "x{t}", "zz", "{}z",
    ])
    .prop_map(|k| k.as_bytes().to_vec())
}

fn value() -> impl Strategy<Value = Vec<u8>> {
    prop::sample::select(vec!["", "x", "y", "zz"]).prop_map(|v| v.as_bytes().to_vec())
}

fn write_op() -> impl Strategy<Value = WriteOp> {
    prop_oneof![
        (key(), value()).prop_map(|(key, value)| WriteOp::Put { key, value }),
        key().prop_map(|key| WriteOp::Delete { key }),
        (key(), prop::option::of(value()), prop::option::of(value()))
            .prop_map(|(key, expect, new)| WriteOp::Cas { key, expect, new }),
    ]
}

fn command() -> impl Strategy<Value = Command> {
    let plain = prop_oneof![
        4 => write_op().prop_map(Command::Single),
        1 => prop::collection::vec(write_op(), 1..4).prop_map(Command::Batch),
    ];
    prop_oneof![
        6 => plain.clone(),
        1 => Just(Command::Register),
        3 => (1u64..4, 1u64..6, 0u64..3, plain.clone()).prop_map(|(client_id, seq, back, command)| {
            Command::Tagged {
                session: SessionTag {
                    client_id,
                    seq,
                    acked_below: seq.saturating_sub(back).max(1),
                },
                command: Box::new(command),
            }
        }),
        1 => prop::collection::vec(plain, 1..4).prop_map(Command::Multi),
    ]
}

fn scan_range() -> impl Strategy<Value = (ScanRange, usize)> {
    (
        prop::option::of(key()),
        prop::option::of(key()),
        prop::option::of(key()),
        0usize..4,
    )
        .prop_map(|(prefix, from, to, limit)| {
            (
                ScanRange {
                    prefix: prefix.unwrap_or_default(),
                    from: from.unwrap_or_default(),
                    to: to.unwrap_or_default(),
                },
                limit,
            )
        })
}

fn entry(index: u64, command: Command) -> Entry {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(command),
    }
}

fn open_disk(dir: &std::path::Path) -> Arc<RocksDisk> {
    let identity = Identity {
        node_id: 1,
        cluster: "test".into(),
    };
    Arc::new(RocksDisk::open(dir, &identity).expect("open"))
}

async fn open_machine(disk: &Arc<RocksDisk>) -> StateMachineStore {
    let dyn_disk: Arc<dyn DynDisk> = disk.clone();
    StateMachineStore::open(dyn_disk, GROUP, Default::default())
        .await
        .expect("open state machine")
}

/// Every read of `machine` agrees with `reference`.
fn same_reads(machine: &StateMachineStore, reference: &KvState, scans: &[(ScanRange, usize)]) {
    let state = machine.state();
    assert_eq!(state.digest().expect("digest"), reference.digest());
    assert_eq!(
        state.summary().expect("summary").key_count,
        reference.len() as u64
    );
    let keys: Vec<Vec<u8>> = reference.iter().map(|(k, _)| k.clone()).collect();
    let multi = state.multi_get(&keys).expect("multi-get");
    for (key, row) in keys.iter().zip(multi) {
        assert_eq!(row.as_ref(), reference.get(key));
        assert_eq!(state.get(key).expect("get").as_ref(), reference.get(key));
    }
    assert_eq!(state.get(b"never").expect("get"), None);
    for (range, limit) in scans {
        assert_eq!(
            state.scan(range, *limit).expect("scan"),
            reference.scan(range, *limit),
            "scan {range:?} limit {limit}"
        );
    }
}

/// Begins `transfer` into `staging` and sends every chunk of `view`, as a leader does;
/// returns the rows and key rows sent (for the finish).
async fn send_transfer(
    staging: &mut Staging,
    transfer: u64,
    meta: &seedkv_core::types::SnapshotMeta,
    view: &seedkv_core::storage::snapshot::SnapshotView,
) -> (u64, u64) {
    staging
        .begin(transfer, Default::default(), meta.clone(), view.header())
        .await
        .expect("begin");
    let mut cursor = view.cursor();
    let mut seq = 0;
    while let Some(rows) = view.next_chunk(&mut cursor).expect("chunk") {
        staging.rows(transfer, seq, rows).await.expect("rows");
        seq += 1;
    }
    (cursor.rows(), cursor.keys())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]
    #[test]
    fn the_disk_state_machine_matches_the_reference(
        runs in prop::collection::vec(prop::collection::vec(command(), 1..12), 1..12),
        scans in prop::collection::vec(scan_range(), 4),
        reopen_after in 0usize..12,
        snapshot_after in 0usize..12,
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(async {
            let tmp = tempfile::tempdir().expect("temp dir");
            let dir_a = tmp.path().join("a");
            let dir_b = tmp.path().join("b");
            let mut disk = open_disk(&dir_a);
            let mut machine = open_machine(&disk).await;
            let mut reference = KvState::default();
            // The group first takes every slot, as a group given the whole key space does.
            let own = Command::Own(vec![OwnedRange::EVERY_SLOT]);
            reference.apply(1, &own);
            machine.apply(vec![entry(1, own)]).await.expect("own");
            let mut index = 1;
            let mut follower: Option<(Arc<RocksDisk>, StateMachineStore)> = None;
            for (run_no, run) in runs.iter().enumerate() {
                let mut entries = Vec::new();
                let mut expected = Vec::new();
                for command in run {
                    index += 1;
                    expected.push(reference.apply(index, command));
                    entries.push(entry(index, command.clone()));
                }
                let responses = machine.apply(entries.clone()).await.expect("apply");
                assert_eq!(responses, expected);
                if let Some((_, follower)) = &mut follower {
                    let responses = follower.apply(entries).await.expect("follower apply");
                    assert_eq!(responses, expected);
                    same_reads(follower, &reference, &scans);
                }
                same_reads(&machine, &reference, &scans);
                if run_no == reopen_after {
                    drop(machine);
                    drop(disk);
                    disk = open_disk(&dir_a);
                    machine = open_machine(&disk).await;
                    let applied = machine.state().last_applied().map(|id| id.index);
                    assert_eq!(applied, Some(index), "a clean reopen keeps the applied point");
                    same_reads(&machine, &reference, &scans);
                }
                if run_no == snapshot_after && follower.is_none() {
                    let snapshot = machine.get_current_snapshot().await.expect("snapshot").expect("some");
                    let SnapshotData::View(view) = *snapshot.snapshot else { panic!("a view") };
                    let follower_disk = open_disk(&dir_b);
                    let mut follower_machine = open_machine(&follower_disk).await;
                    let mut staging = Staging::new(follower_machine.state());
                    let (rows, keys) = send_transfer(&mut staging, 7, &snapshot.meta, &view).await;
                    assert!(staging.finish(7, rows + 1, keys).is_err(), "a wrong row count is refused");
                    // The refused finish ended the transfer: send it again.
                    let (rows, keys) = send_transfer(&mut staging, 8, &snapshot.meta, &view).await;
                    let (_, meta, staged) = staging.finish(8, rows, keys).expect("finish");
                    follower_machine
                        .install_snapshot(&meta, Box::new(SnapshotData::Staged(staged)))
                        .await
                        .expect("install");
                    same_reads(&follower_machine, &reference, &scans);
                    follower = Some((follower_disk, follower_machine));
                }
            }
            if let Some((follower_disk, follower_machine)) = follower {
                // The follower restarts on the installed generation.
                drop(follower_machine);
                drop(follower_disk);
                let follower_disk = open_disk(&dir_b);
                let follower_machine = open_machine(&follower_disk).await;
                same_reads(&follower_machine, &reference, &scans);
            }
        });
    }
}

/// A scan over many keys spread over every slot returns them in key order, cut at the limit.
#[test]
fn scans_merge_every_slot_in_key_order() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let tmp = tempfile::tempdir().expect("temp dir");
        let disk = open_disk(&tmp.path().join("a"));
        let mut machine = open_machine(&disk).await;
        let mut reference = KvState::owning_every_slot();
        let mut entries = vec![entry(1, Command::Own(vec![OwnedRange::EVERY_SLOT]))];
        for i in 1..3_000u64 {
            let command = Command::Single(WriteOp::Put {
                key: format!("k{i:05}").into_bytes(),
                value: vec![1; 10],
            });
            reference.apply(i + 1, &command);
            entries.push(entry(i + 1, command));
        }
        machine.apply(entries).await.expect("apply");
        let state = machine.state();
        for (range, limit) in [
            (ScanRange::default(), 0),
            (ScanRange::default(), 1_000),
            (
                ScanRange {
                    prefix: b"k01".to_vec(),
                    ..Default::default()
                },
                0,
            ),
            (
                ScanRange {
                    from: b"k00500".to_vec(),
                    to: b"k00750".to_vec(),
                    ..Default::default()
                },
                100,
            ),
        ] {
            let got = state.scan(&range, limit).expect("scan");
            assert_eq!(got, reference.scan(&range, limit), "{range:?} {limit}");
        }
    });
}

/// A row whose bytes were damaged on disk is never served: the read fails naming the key.
/// A damaged applied meta or session row is refused when the state machine opens, and the
/// refusal rewrites nothing.
#[test]
fn damaged_rows_are_refused_never_served() {
    use seedkv_core::storage::{keys, Disk, DiskError, DiskRead, Durability, WriteBatch};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path().join("a");
        let disk = open_disk(&dir);
        let mut machine = open_machine(&disk).await;
        let mut entries = vec![entry(1, Command::Own(vec![OwnedRange::EVERY_SLOT]))];
        for (i, key) in ["good", "bad"].iter().enumerate() {
            let command = Command::Single(WriteOp::Put {
                key: key.as_bytes().to_vec(),
                value: b"value".to_vec(),
            });
            entries.push(entry(i as u64 + 2, command));
        }
        entries.push(entry(4, Command::Register));
        machine.apply(entries).await.expect("apply");
        let generation = machine.state().meta().generation;
        // Flip one bit of the stored row of "bad".
        let row_key = keys::row(GROUP, generation, b"bad");
        let mut bytes = disk.get(&row_key).expect("get").expect("row");
        let last = bytes.len() - 1;
        bytes[last] ^= 0x01;
        let mut batch = WriteBatch::default();
        batch.put(row_key, bytes);
        disk.write(batch, Durability::Sync).await.expect("write");
        let state = machine.state();
        assert!(state.get(b"good").expect("good row").is_some());
        match state.get(b"bad") {
            Err(DiskError::Corrupt { key, reason }) => {
                assert!(key.contains("bad"), "{key}");
                assert!(reason.contains("checksum"), "{reason}");
            }
            other => panic!("a damaged row was served: {other:?}"),
        }
        assert!(state
            .multi_get(&[b"good".to_vec(), b"bad".to_vec()])
            .is_err());
        // Applying a write that reads the damaged row stops the state machine.
        let cas = Command::Single(WriteOp::Cas {
            key: b"bad".to_vec(),
            expect: Some(b"value".to_vec()),
            new: None,
        });
        assert!(machine.apply(vec![entry(5, cas)]).await.is_err());

        // Damage the applied meta: the next open refuses, naming it, and writes nothing.
        drop(machine);
        let meta_key = keys::applied(GROUP);
        let mut meta = disk.get(&meta_key).expect("get").expect("meta");
        meta[0] ^= 0x80;
        let mut batch = WriteBatch::default();
        batch.put(meta_key.clone(), meta.clone());
        disk.write(batch, Durability::Sync).await.expect("write");
        let dyn_disk: Arc<dyn DynDisk> = disk.clone();
        let refused = StateMachineStore::open(dyn_disk, GROUP, Default::default())
            .await
            .err()
            .expect("a damaged meta is refused");
        assert!(refused.to_string().contains("checksum"), "{refused}");
        assert_eq!(disk.get(&meta_key).expect("get"), Some(meta));
    });
}
