//! Arbitrary small histories: the linearizability checker never crashes and agrees with a
//! brute-force checker that tries every order.
#![no_main]

use libfuzzer_sys::fuzz_target;
use seedkv_checker::{
    check_brute_force, check_records, Model, Op, OpResult, ReadValue, Record, Verdict,
};

const KEYS: [&str; 2] = ["a", "b"];
const VALUES: [&str; 3] = ["1", "2", "3"];

fn history(data: &[u8]) -> Vec<Record> {
    let mut records = Vec::new();
    for chunk in data.chunks_exact(5).take(7) {
        let [kind, key, value, call, span] = [chunk[0], chunk[1], chunk[2], chunk[3], chunk[4]];
        let key = KEYS[usize::from(key) % 2].to_string();
        let other = KEYS[usize::from(key == "a")].to_string();
        let value = VALUES[usize::from(value) % 3].to_string();
        let revision = u64::from(value.as_bytes()[0] - b'0');
        let (op, result) = match kind % 6 {
            0 => (
                Op::Get { key },
                OpResult::Get {
                    value: (revision != 3).then(|| value.clone()),
                    revision: if revision == 3 { 0 } else { revision },
                },
            ),
            1 => (Op::Put { key, value }, OpResult::Put { revision }),
            2 => (
                Op::Delete { key },
                OpResult::Delete {
                    revision,
                    existed: (kind & 0x20 != 0).then_some(kind & 0x40 != 0),
                },
            ),
            3 => (
                Op::Cas {
                    key,
                    expect: Some(value.clone()),
                    new: Some(format!("{value}x")),
                },
                OpResult::Cas {
                    succeeded: kind & 0x40 != 0,
                    revision,
                },
            ),
            4 => (
                Op::Batch {
                    ops: vec![
                        Op::Put {
                            key,
                            value: value.clone(),
                        },
                        Op::Delete { key: other },
                    ],
                },
                OpResult::Batch {
                    succeeded: kind & 0x40 != 0,
                    revision,
                },
            ),
            5 if kind & 0x20 != 0 => (
                Op::MultiGet {
                    keys: vec![key, other],
                },
                OpResult::MultiGet {
                    values: vec![
                        ReadValue {
                            value: (revision != 3).then(|| value.clone()),
                            revision: if revision == 3 { 0 } else { revision },
                        },
                        ReadValue {
                            value: None,
                            revision: 0,
                        },
                    ],
                },
            ),
            _ => (Op::Put { key, value }, OpResult::Put { revision }),
        };
        let call_ns = u64::from(call);
        let unknown = kind & 0x80 != 0 && !matches!(op, Op::Get { .. } | Op::MultiGet { .. });
        records.push(Record {
            client: records.len() as u64,
            call_ns,
            return_ns: (!unknown).then(|| call_ns + u64::from(span)),
            op,
            result: (!unknown).then_some(result),
        });
    }
    records
}

fuzz_target!(|data: &[u8]| {
    let records = history(data);
    for model in [Model::Kv, Model::Register] {
        let fast = check_records(&records, model).map(|report| report.verdict);
        let slow = check_brute_force(&records, model);
        match (fast, slow) {
            (Ok(a), Ok(b)) => assert_eq!(a, b, "checker and brute force disagree on {records:#?}"),
            (Err(_), Err(_)) => {}
            (a, b) => panic!("one checker refused the history: {a:?} vs {b:?}"),
        }
    }
    let _ = Verdict::Linearizable;
});
