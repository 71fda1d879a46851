//! The state machine against a `BTreeMap` model, on random command sequences; snapshot and
//! codec round trips.

use std::collections::BTreeMap;

use proptest::prelude::*;
use seedkv_core::codec;
use seedkv_core::command::{Command, Response, ScanRange, WriteOp};
use seedkv_core::session::SessionTag;
use seedkv_core::KvState;

type Model = BTreeMap<Vec<u8>, (Vec<u8>, u64)>;

fn key() -> impl Strategy<Value = Vec<u8>> {
    prop::sample::select(vec!["a", "b", "c", "ab", "ba", "b\u{0}"])
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

#[derive(Debug, Clone)]
enum Step {
    Write(Command),
    Scan(ScanRange, usize),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => write_op().prop_map(|op| Step::Write(Command::Single(op))),
        1 => prop::collection::vec(write_op(), 1..4).prop_map(|ops| Step::Write(Command::Batch(ops))),
        1 => prop::collection::vec(
            prop_oneof![
                write_op().prop_map(Command::Single),
                prop::collection::vec(write_op(), 1..3).prop_map(Command::Batch),
            ],
            1..4,
        )
        .prop_map(|commands| Step::Write(Command::Multi(commands))),
        1 => (
            prop::option::of(key()),
            prop::option::of(key()),
            prop::option::of(key()),
            0usize..4
        )
            .prop_map(|(prefix, from, to, limit)| {
                Step::Scan(
                    ScanRange {
                        prefix: prefix.unwrap_or_default(),
                        from: from.unwrap_or_default(),
                        to: to.unwrap_or_default(),
                    },
                    limit,
                )
            }),
    ]
}

fn holds(model: &Model, key: &[u8], expect: &Option<Vec<u8>>) -> bool {
    model.get(key).map(|(v, _)| v) == expect.as_ref()
}

fn model_write(model: &mut Model, op: &WriteOp, revision: u64) {
    match op {
        WriteOp::Put { key, value } => {
            model.insert(key.clone(), (value.clone(), revision));
        }
        WriteOp::Delete { key } => {
            model.remove(key);
        }
        WriteOp::Cas { key, new, .. } => match new {
            Some(v) => {
                model.insert(key.clone(), (v.clone(), revision));
            }
            None => {
                model.remove(key);
            }
        },
    }
}

/// What the model says `command` at `revision` answers, applying it.
fn model_apply(model: &mut Model, command: &Command, revision: u64) -> Response {
    match command {
        Command::Single(op @ WriteOp::Put { .. }) => {
            model_write(model, op, revision);
            Response::Put { revision }
        }
        Command::Single(op @ WriteOp::Delete { key }) => {
            let existed = model.contains_key(key);
            model_write(model, op, revision);
            Response::Delete { revision, existed }
        }
        Command::Single(op @ WriteOp::Cas { key, expect, .. }) => {
            if holds(model, key, expect) {
                model_write(model, op, revision);
                Response::Cas {
                    succeeded: true,
                    revision,
                }
            } else {
                let current = model.get(key).map_or(0, |(_, r)| *r);
                Response::Cas {
                    succeeded: false,
                    revision: current,
                }
            }
        }
        Command::Batch(ops) => {
            let all = ops.iter().all(|op| match op {
                WriteOp::Cas { key, expect, .. } => holds(model, key, expect),
                _ => true,
            });
            if !all {
                return Response::Batch {
                    succeeded: false,
                    revision: 0,
                };
            }
            for op in ops {
                model_write(model, op, revision);
            }
            Response::Batch {
                succeeded: true,
                revision,
            }
        }
        Command::Multi(commands) => Response::Multi(
            commands
                .iter()
                .map(|command| model_apply(model, command, revision))
                .collect(),
        ),
        Command::Register | Command::Tagged { .. } => {
            unreachable!("sessions have their own property test")
        }
        Command::Own(_) | Command::SetMap { .. } | Command::Move(_) | Command::Migrate(_) => {
            unreachable!("ownership, moves and the slot map have their own tests")
        }
    }
}

fn state_as_model(state: &KvState) -> Model {
    state
        .iter()
        .map(|(k, v)| (k.clone(), (v.value.clone(), v.revision)))
        .collect()
}

proptest! {
    #[test]
    fn state_machine_matches_the_model(steps in prop::collection::vec(step(), 1..60)) {
        let mut state = KvState::owning_every_slot();
        let mut model = Model::new();
        let mut revision = 0;
        for step in &steps {
            match step {
                Step::Write(command) => {
                    revision += 1 + (revision % 3); // revisions are log indexes: increasing, with gaps
                    let got = state.apply(revision, command);
                    let want = model_apply(&mut model, command, revision);
                    prop_assert_eq!(got, want);
                    prop_assert_eq!(state_as_model(&state), model.clone());
                }
                Step::Scan(range, limit) => {
                    let got: Vec<(Vec<u8>, Vec<u8>, u64)> = state
                        .scan(range, *limit)
                        .into_iter()
                        .map(|(k, v)| (k, v.value, v.revision))
                        .collect();
                    let want: Vec<(Vec<u8>, Vec<u8>, u64)> = model
                        .iter()
                        .filter(|(k, _)| range.contains(k))
                        .take(if *limit == 0 { usize::MAX } else { *limit })
                        .map(|(k, (v, r))| (k.clone(), v.clone(), *r))
                        .collect();
                    prop_assert_eq!(got, want);
                }
            }
        }
        // Snapshot and restore: identical state, identical digest.
        let restored: KvState = codec::decode(&codec::encode(&state)).expect("decode snapshot");
        prop_assert_eq!(&restored, &state);
        prop_assert_eq!(restored.digest(), state.digest());
    }

    /// However writes are resent, each (client, seq) applies once, answers every copy with
    /// its first answer, and the data equals applying each write once without sessions.
    #[test]
    fn tagged_writes_apply_once(
        clients in 1usize..4,
        steps in prop::collection::vec((0usize..4, 1u64..8, write_op()), 1..80),
    ) {
        let mut state = KvState::owning_every_slot();
        let mut reference = KvState::owning_every_slot();
        let mut revision = 0;
        let mut ids = Vec::new();
        for _ in 0..clients {
            revision += 1;
            match state.apply(revision, &Command::Register) {
                Response::Registered { client_id } => ids.push(client_id),
                other => prop_assert!(false, "register answered {:?}", other),
            }
        }
        let mut first: BTreeMap<(u64, u64), Response> = BTreeMap::new();
        for (pick, seq, op) in steps {
            revision += 1;
            // One pick in four names a client that never registered.
            let client_id = ids.get(pick).copied().unwrap_or(10_000);
            let session = SessionTag { client_id, seq, acked_below: 1 };
            let got = state.apply(revision, &Command::Tagged { session, command: Box::new(Command::Single(op.clone())) });
            if !ids.contains(&client_id) {
                prop_assert_eq!(got, Response::SessionExpired);
                continue;
            }
            match first.get(&(client_id, seq)) {
                Some(answer) => prop_assert_eq!(&got, answer),
                None => {
                    let want = reference.apply(revision, &Command::Single(op));
                    prop_assert_eq!(&got, &want);
                    first.insert((client_id, seq), got);
                }
            }
        }
        let data: Vec<_> = state.iter().collect();
        let want: Vec<_> = reference.iter().collect();
        prop_assert_eq!(data, want);
        let restored: KvState = codec::decode(&codec::encode(&state)).expect("decode snapshot");
        prop_assert_eq!(restored.digest(), state.digest());
        prop_assert_eq!(&restored, &state);
    }

    #[test]
    fn commands_and_responses_round_trip(ops in prop::collection::vec(write_op(), 1..8), revision in any::<u64>()) {
        let command = Command::Batch(ops);
        let decoded: Command = codec::decode(&codec::encode(&command)).expect("decode");
        prop_assert_eq!(decoded, command);
        for response in [
            Response::Put { revision },
            Response::Delete { revision, existed: revision % 2 == 0 },
            Response::Cas { succeeded: true, revision },
            Response::Batch { succeeded: false, revision },
            Response::None,
        ] {
            let decoded: Response = codec::decode(&codec::encode(&response)).expect("decode");
            prop_assert_eq!(decoded, response);
        }
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = codec::decode::<Command>(&bytes);
        let _ = codec::decode::<KvState>(&bytes);
    }
}

mod disk_and_wire_types {
    use proptest::prelude::*;
    use seedkv_core::codec;
    use seedkv_core::command::{Command, WriteOp};
    use seedkv_core::storage::{DiskOp, WriteBatch};
    use seedkv_core::types::{Entry, LogId, Vote};

    fn bytes() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(any::<u8>(), 0..16)
    }

    proptest! {
        #[test]
        fn write_batches_round_trip(ops in prop::collection::vec(
            prop_oneof![
                (bytes(), bytes()).prop_map(|(k, v)| DiskOp::Put(k, v)),
                bytes().prop_map(DiskOp::Delete),
                (bytes(), bytes()).prop_map(|(a, b)| DiskOp::DeleteRange(a, b)),
            ],
            0..6,
        )) {
            let batch = WriteBatch { ops };
            prop_assert_eq!(codec::decode::<WriteBatch>(&codec::encode(&batch)).ok(), Some(batch));
        }

        #[test]
        fn log_entries_and_votes_round_trip(term in 0u64..1000, node in 1u64..10, index in any::<u64>(), key in bytes(), value in bytes(), committed in any::<bool>()) {
            let log_id = LogId::new(openraft::CommittedLeaderId::new(term, node), index);
            let entry = Entry {
                log_id,
                payload: openraft::EntryPayload::Normal(Command::Single(WriteOp::Put { key, value })),
            };
            let decoded: Entry = codec::decode(&codec::encode(&entry)).expect("entry decodes");
            prop_assert_eq!(decoded.log_id, entry.log_id);
            prop_assert_eq!(format!("{:?}", decoded.payload), format!("{:?}", entry.payload));
            let mut vote = Vote::new(term, node);
            if committed {
                vote.commit();
            }
            prop_assert_eq!(codec::decode::<Vote>(&codec::encode(&vote)).ok(), Some(vote));
        }
    }
}
