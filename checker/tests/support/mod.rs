//! Histories built to be hard for the search, shared by the budget tests and the
//! `hard_history` example (which writes them out for `seedkv check-history`).
#![allow(dead_code)]

use seedkv_checker::{Op, OpResult, Record};

/// `n` puts of distinct values on `key`, all concurrent, then a get after all of
/// them returned. With `read: Some(0)` the get reads the first put's value: the
/// history is linearizable, but only orders that end with that put explain it, and
/// the search (which tries the first call first) reaches one of those late, after
/// about `n * 2^(n-1)` configurations. With `read: None` the get reads a value
/// nobody wrote: not linearizable, and refuting it explores every configuration.
pub fn concurrent_puts(key: &str, n: u64, read: Option<u64>, t0: u64) -> Vec<Record> {
    let mut records: Vec<Record> = (0..n)
        .map(|i| Record {
            client: i,
            call_ns: t0 + i,
            return_ns: Some(t0 + 1_000 + i),
            op: Op::Put {
                key: key.to_string(),
                value: format!("v{i}"),
            },
            result: Some(OpResult::Put { revision: i + 1 }),
        })
        .collect();
    let (value, revision) = match read {
        Some(i) => (format!("v{i}"), i + 1),
        None => ("never written".to_string(), n + 1),
    };
    records.push(Record {
        client: n,
        call_ns: t0 + 2_000,
        return_ns: Some(t0 + 2_001),
        op: Op::Get {
            key: key.to_string(),
        },
        result: Some(OpResult::Get {
            value: Some(value),
            revision,
        }),
    });
    records
}

/// [`concurrent_puts`] refuted (`read: None`), in a partition widened to `1 + extra_keys`
/// keys by a batch with unknown outcome that writes all of them: every configuration of
/// its search holds a wide state, so it grows in memory faster than a one-key partition.
pub fn wide_undecidable(key: &str, n: u64, extra_keys: usize) -> Vec<Record> {
    let mut records = concurrent_puts(key, n, None, 0);
    let ops = (0..=extra_keys)
        .map(|i| Op::Put {
            key: if i == 0 {
                key.to_string()
            } else {
                format!("{key}-{i}")
            },
            value: "wide".to_string(),
        })
        .collect();
    records.push(Record {
        client: n + 1,
        call_ns: 0,
        return_ns: None,
        op: Op::Batch { ops },
        result: None,
    });
    records
}

/// A put then, strictly after it, a get that reads the key as absent: refuted in
/// a handful of steps.
pub fn quick_violation(key: &str, t0: u64) -> Vec<Record> {
    vec![
        Record {
            client: 0,
            call_ns: t0,
            return_ns: Some(t0 + 10),
            op: Op::Put {
                key: key.to_string(),
                value: "1".to_string(),
            },
            result: Some(OpResult::Put { revision: 1 }),
        },
        Record {
            client: 1,
            call_ns: t0 + 20,
            return_ns: Some(t0 + 30),
            op: Op::Get {
                key: key.to_string(),
            },
            result: Some(OpResult::Get {
                value: None,
                revision: 0,
            }),
        },
    ]
}

/// Porcupine's 50-client kv history (`c50-ok.txt`, parsed) turned into one that is
/// not linearizable and partly undecidable, the shape that once hung the checker:
/// - in each key of `refuted`, the first get that read a non-empty value after
///   `at_percent` of the history reads it with a suffix no append wrote;
/// - each key of `hard` ends with `appends` concurrent appends and a get whose
///   answer no order of them explains: refuting that means trying every order.
pub fn c50_with_violations(
    mut records: Vec<Record>,
    refuted: &[&str],
    at_percent: usize,
    hard: &[&str],
    appends: u64,
) -> Vec<Record> {
    let from = records.len() * at_percent / 100;
    for key in refuted {
        let target = records.iter_mut().skip(from).find(|r| {
            matches!((&r.op, &r.result), (Op::Get { key: k }, Some(OpResult::Get { value: Some(v), .. })) if k == key && !v.is_empty())
        });
        if let Some(Record {
            result: Some(OpResult::Get { value: Some(v), .. }),
            ..
        }) = target
        {
            v.push_str(" z");
        }
    }
    let end = records
        .iter()
        .map(|r| r.return_ns.unwrap_or(r.call_ns))
        .max()
        .unwrap_or(0)
        + 1_000;
    for key in hard {
        for i in 0..appends {
            records.push(Record {
                client: 1_000 + i,
                call_ns: end + i,
                return_ns: Some(end + 1_000 + i),
                op: Op::Append {
                    key: key.to_string(),
                    value: format!(" h{i}"),
                },
                result: Some(OpResult::Append),
            });
        }
        records.push(Record {
            client: 999,
            call_ns: end + 2_000,
            return_ns: Some(end + 2_001),
            op: Op::Get {
                key: key.to_string(),
            },
            result: Some(OpResult::Get {
                value: Some("no order of appends gives this".to_string()),
                revision: 0,
            }),
        });
    }
    records
}
