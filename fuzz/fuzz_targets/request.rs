//! Arbitrary bytes as a client request (protobuf), converted exactly as the server converts
//! it, checked against the limits, and applied to a state machine: never a panic, and the
//! state machine's invariants hold afterwards.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use seedkv_core::command::{Command, Response};
use seedkv_core::{codec, KvState, Limits};
use seedkv_proto::{convert, pb};

fn apply(state: &mut KvState, limits: &Limits, command: Command) {
    if limits.check_command(&command).is_err() {
        return;
    }
    let before = state.clone();
    let data = |state: &KvState| -> Vec<(Vec<u8>, seedkv_core::Versioned)> {
        state.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    };
    let revision = 7;
    let response = state.apply(revision, &command);
    let ops = command.ops().len();
    // Only keys the command names may change, each to the command's revision.
    for (key, value) in state.iter() {
        match before.get(key) {
            Some(old) if old == value => {}
            _ => {
                assert_eq!(
                    value.revision, revision,
                    "a key changed to another revision"
                );
                assert!(command.ops().iter().any(|op| op.key() == key.as_slice()));
            }
        }
    }
    assert!(state.len() <= before.len() + ops);
    match response.clone() {
        Response::Put { revision: r } | Response::Delete { revision: r, .. } => {
            assert_eq!(r, revision)
        }
        Response::Cas {
            succeeded: true,
            revision: r,
        } => assert_eq!(r, revision),
        Response::Cas {
            succeeded: false, ..
        } => assert_eq!(data(state), data(&before), "a failed CAS wrote"),
        Response::Batch {
            succeeded: false,
            revision: r,
        } => {
            assert_eq!(r, 0);
            assert_eq!(data(state), data(&before), "a failed batch wrote");
        }
        Response::Batch {
            succeeded: true,
            revision: r,
        } => assert_eq!(r, revision),
        Response::SessionExpired | Response::StaleWrite { .. } => {
            assert_eq!(data(state), data(&before), "a refused session write wrote")
        }
        // The state owns every slot: no client write can be refused as not owned.
        Response::NotOwned { .. } => panic!("a write refused as not owned by a group owning every slot"),
        // Nothing is frozen: no slot is moving.
        Response::Frozen { .. } => panic!("a write refused as frozen where no slot moves"),
        Response::Stepped(_) | Response::Migration(_) => {
            panic!("a client command answered as a slot move step")
        }
        Response::Owned { .. } | Response::MapSet { .. } => {
            panic!("a client command answered as a slot grant or map change")
        }
        Response::None => panic!("a command answered None"),
        Response::Registered { .. } => panic!("a write answered as a registration"),
        Response::Multi(_) => panic!("a client command answered as a group"),
    }
    // Resent, a session write answers the same and changes nothing.
    if let Command::Tagged { .. } = command {
        let after = state.clone();
        let again = state.apply(revision + 1, &command);
        assert_eq!(data(state), data(&after), "a resent session write applied again");
        if !matches!(again, Response::SessionExpired | Response::StaleWrite { .. }) {
            assert_eq!(again, response, "a resent session write answered differently");
        }
    }
    // The snapshot of what came out restores to the same state.
    let restored: KvState = codec::decode(&codec::encode(&*state)).expect("snapshot decodes");
    assert_eq!(restored.digest(), state.digest());
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, body)) = data.split_first() else {
        return;
    };
    let limits = Limits {
        max_key_bytes: 64,
        max_value_bytes: 256,
        max_batch_ops: 16,
        max_request_bytes: 2048,
        max_scan_limit: 100,
    };
    let mut state = KvState::owning_every_slot();
    // Something to compare against and overwrite.
    state.apply(
        1,
        &convert::put(pb::PutRequest {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            session: None,
        }),
    );
    // A session for requests that name client 2.
    state.apply(2, &Command::Register);
    match kind % 7 {
        0 => {
            if let Ok(req) = pb::PutRequest::decode(body) {
                apply(&mut state, &limits, convert::put(req));
            }
        }
        1 => {
            if let Ok(req) = pb::DeleteRequest::decode(body) {
                apply(&mut state, &limits, convert::delete(req));
            }
        }
        2 => {
            if let Ok(req) = pb::CasRequest::decode(body) {
                apply(&mut state, &limits, convert::cas(req));
            }
        }
        3 => {
            if let Ok(req) = pb::BatchRequest::decode(body) {
                if let Ok(command) = convert::batch(req) {
                    apply(&mut state, &limits, command);
                }
            }
        }
        4 => {
            if let Ok(req) = pb::GetRequest::decode(body) {
                if limits.check_key(&req.key).is_ok() {
                    let _ = state.get(&req.key);
                }
            }
        }
        5 => {
            if let Ok(req) = pb::ScanRequest::decode(body) {
                let (range, limit) = convert::scan(&req, &limits);
                if limits.check_scan(&range, limit).is_ok() {
                    let rows = state.scan(&range, limit);
                    assert!(rows.len() <= limit.max(1) || limit == 0);
                    assert!(
                        rows.windows(2).all(|w| w[0].0 < w[1].0),
                        "scan out of order"
                    );
                    assert!(rows.iter().all(|(k, _)| range.contains(k)));
                }
            }
        }
        _ => {
            if let Ok(req) = pb::MultiGetRequest::decode(body) {
                if limits.check_keys(&req.keys).is_ok() {
                    assert!(req.keys.len() <= limits.max_batch_ops);
                }
            }
        }
    }
});
