//! Hand-written histories with known verdicts, one per rule of the models.
//!
//! Each test states a small scenario whose answer can be worked out by hand, so a
//! wrong rule in the model or the search shows up as a named failure. Every history
//! is also run through the brute-force checker, which must agree.

use seedkv_checker::{
    check_brute_force, check_records, CheckError, Model, Op, OpResult, ReadValue, Record, Verdict,
};

use Verdict::{Linearizable as LIN, NotLinearizable as NOT};

fn s(v: &str) -> String {
    v.to_string()
}

fn rec(client: u64, call: u64, ret: Option<u64>, op: Op, result: Option<OpResult>) -> Record {
    Record {
        client,
        call_ns: call,
        return_ns: if result.is_some() { ret } else { None },
        op,
        result,
    }
}

fn put(c: u64, call: u64, ret: u64, key: &str, value: &str, rev: u64) -> Record {
    rec(
        c,
        call,
        Some(ret),
        Op::Put {
            key: s(key),
            value: s(value),
        },
        Some(OpResult::Put { revision: rev }),
    )
}

fn put_unknown(c: u64, call: u64, key: &str, value: &str) -> Record {
    rec(
        c,
        call,
        None,
        Op::Put {
            key: s(key),
            value: s(value),
        },
        None,
    )
}

fn get(c: u64, call: u64, ret: u64, key: &str, value: Option<&str>, rev: u64) -> Record {
    rec(
        c,
        call,
        Some(ret),
        Op::Get { key: s(key) },
        Some(OpResult::Get {
            value: value.map(s),
            revision: rev,
        }),
    )
}

fn del(c: u64, call: u64, ret: u64, key: &str, rev: u64) -> Record {
    delete(c, call, ret, key, rev, None)
}

fn delete(c: u64, call: u64, ret: u64, key: &str, rev: u64, existed: Option<bool>) -> Record {
    rec(
        c,
        call,
        Some(ret),
        Op::Delete { key: s(key) },
        Some(OpResult::Delete {
            revision: rev,
            existed,
        }),
    )
}

#[allow(clippy::too_many_arguments)]
fn cas(
    c: u64,
    call: u64,
    ret: u64,
    key: &str,
    expect: Option<&str>,
    new: Option<&str>,
    succeeded: bool,
    rev: u64,
) -> Record {
    rec(
        c,
        call,
        Some(ret),
        Op::Cas {
            key: s(key),
            expect: expect.map(s),
            new: new.map(s),
        },
        Some(OpResult::Cas {
            succeeded,
            revision: rev,
        }),
    )
}

fn batch(c: u64, call: u64, ret: Option<u64>, ops: Vec<Op>, result: Option<(bool, u64)>) -> Record {
    rec(
        c,
        call,
        ret,
        Op::Batch { ops },
        result.map(|(succeeded, revision)| OpResult::Batch {
            succeeded,
            revision,
        }),
    )
}

fn bput(key: &str, value: &str) -> Op {
    Op::Put {
        key: s(key),
        value: s(value),
    }
}

fn bcas(key: &str, expect: Option<&str>, new: Option<&str>) -> Op {
    Op::Cas {
        key: s(key),
        expect: expect.map(s),
        new: new.map(s),
    }
}

/// Checks with both checkers, asserts they agree, returns the verdict.
fn verdict(records: &[Record], model: Model) -> Verdict {
    let fast = check_records(records, model).expect("valid history");
    let brute = check_brute_force(records, model).expect("small history");
    assert_eq!(fast.verdict, brute, "checkers disagree on {records:#?}");
    assert_eq!(
        fast.failing_partition.is_some(),
        fast.verdict == NOT,
        "failing_partition only for failures"
    );
    fast.verdict
}

// ---------------------------------------------------------------- Kv model

fn del_existed(c: u64, call: u64, ret: u64, key: &str, rev: u64, existed: bool) -> Record {
    delete(c, call, ret, key, rev, Some(existed))
}

fn multi_get(c: u64, call: u64, ret: u64, reads: &[(&str, Option<&str>, u64)]) -> Record {
    rec(
        c,
        call,
        Some(ret),
        Op::MultiGet {
            keys: reads.iter().map(|(k, _, _)| s(k)).collect(),
        },
        Some(OpResult::MultiGet {
            values: reads
                .iter()
                .map(|(_, v, r)| ReadValue {
                    value: v.map(s),
                    revision: *r,
                })
                .collect(),
        }),
    )
}

#[test]
fn delete_says_whether_the_key_was_there() {
    let h = [
        put(1, 0, 10, "a", "1", 1),
        del_existed(1, 20, 30, "a", 2, true),
        del_existed(1, 40, 50, "a", 3, false),
    ];
    assert_eq!(verdict(&h, Model::Kv), LIN);
    // A delete of a key written before it cannot find it absent, nor a second one find it.
    let h = [
        put(1, 0, 10, "a", "1", 1),
        del_existed(1, 20, 30, "a", 2, false),
    ];
    assert_eq!(verdict(&h, Model::Kv), NOT);
    let h = [del_existed(1, 0, 10, "a", 1, true)];
    assert_eq!(verdict(&h, Model::Kv), NOT);
    // Concurrent with the put, either answer fits.
    for existed in [true, false] {
        let h = [
            put(1, 0, 30, "a", "1", 1),
            del_existed(2, 10, 20, "a", 2, existed),
        ];
        assert_eq!(verdict(&h, Model::Kv), LIN);
    }
}

#[test]
fn multi_get_sees_one_point() {
    let write_both = batch(
        1,
        0,
        Some(30),
        vec![bput("a", "1"), bput("b", "1")],
        Some((true, 1)),
    );
    // Before or after the batch: fine.
    for reads in [
        [("a", None, 0), ("b", None, 0)],
        [("a", Some("1"), 1), ("b", Some("1"), 1)],
    ] {
        let h = [write_both.clone(), multi_get(2, 10, 20, &reads)];
        assert_eq!(verdict(&h, Model::Kv), LIN);
    }
    // Half of it: never.
    let h = [
        write_both.clone(),
        multi_get(2, 10, 20, &[("a", Some("1"), 1), ("b", None, 0)]),
    ];
    assert_eq!(verdict(&h, Model::Kv), NOT);
    // Two writes in order: a read that sees the second must see the first.
    let h = [
        put(1, 0, 10, "a", "1", 1),
        put(1, 20, 30, "b", "2", 2),
        multi_get(2, 0, 40, &[("a", None, 0), ("b", Some("2"), 2)]),
    ];
    assert_eq!(verdict(&h, Model::Kv), NOT);
}

#[test]
fn empty_history_is_linearizable() {
    let report = check_records(&[], Model::Kv).expect("empty is fine");
    assert_eq!(report.verdict, LIN);
    assert_eq!((report.operations, report.partitions), (0, 0));
}

#[test]
fn sequential_put_get() {
    let h = [
        put(1, 0, 10, "a", "1", 1),
        get(2, 20, 30, "a", Some("1"), 1),
    ];
    assert_eq!(verdict(&h, Model::Kv), LIN);
}

#[test]
fn stale_read_is_not_linearizable() {
    let h = [put(1, 0, 10, "a", "1", 1), get(2, 20, 30, "a", None, 0)];
    assert_eq!(verdict(&h, Model::Kv), NOT);
    let h = [
        put(1, 0, 10, "a", "1", 1),
        put(1, 20, 30, "a", "2", 2),
        get(2, 40, 50, "a", Some("1"), 1),
    ];
    assert_eq!(verdict(&h, Model::Kv), NOT);
    assert_eq!(verdict(&h, Model::Register), NOT);
}

#[test]
fn read_concurrent_with_write_may_see_either() {
    for (value, rev) in [(None, 0), (Some("1"), 1)] {
        let h = [put(1, 0, 10, "a", "1", 1), get(2, 5, 15, "a", value, rev)];
        assert_eq!(verdict(&h, Model::Kv), LIN);
    }
}

#[test]
fn equal_times_count_as_concurrent() {
    // The get is called exactly when the put returns: either order is allowed.
    let h = [put(1, 0, 10, "a", "1", 1), get(2, 10, 20, "a", None, 0)];
    assert_eq!(verdict(&h, Model::Kv), LIN);
}

#[test]
fn concurrent_writes_in_either_order() {
    for (last, rev) in [("1", 1), ("2", 2)] {
        let h = [
            put(1, 0, 10, "a", "1", 1),
            put(2, 5, 15, "a", "2", 2),
            get(3, 20, 30, "a", Some(last), rev),
        ];
        assert_eq!(verdict(&h, Model::Kv), LIN, "last = {last}");
    }
}

#[test]
fn reads_must_agree_on_the_order_of_concurrent_writes() {
    // Two sequential reads see 2 then 1 after both writes completed.
    let h = [
        put(1, 0, 10, "a", "1", 1),
        put(2, 5, 15, "a", "2", 2),
        get(3, 20, 30, "a", Some("2"), 2),
        get(3, 40, 50, "a", Some("1"), 1),
    ];
    assert_eq!(verdict(&h, Model::Kv), NOT);
}

#[test]
fn revision_mismatch_is_detected() {
    let h = [
        put(1, 0, 10, "a", "1", 5),
        get(2, 20, 30, "a", Some("1"), 4),
    ];
    assert_eq!(verdict(&h, Model::Kv), NOT);
    // The register model ignores revisions.
    assert_eq!(verdict(&h, Model::Register), LIN);
    // Absent keys read revision 0.
    let h = [get(2, 20, 30, "a", None, 3)];
    assert_eq!(verdict(&h, Model::Kv), NOT);
}

#[test]
fn delete_makes_the_key_absent_with_revision_zero() {
    let h = [
        put(1, 0, 10, "a", "1", 1),
        del(1, 20, 30, "a", 2),
        get(2, 40, 50, "a", None, 0),
    ];
    assert_eq!(verdict(&h, Model::Kv), LIN);
    let h = [
        put(1, 0, 10, "a", "1", 1),
        del(1, 20, 30, "a", 2),
        get(2, 40, 50, "a", None, 2),
    ];
    assert_eq!(verdict(&h, Model::Kv), NOT);
}

#[test]
fn unknown_write_may_or_may_not_take_effect() {
    let seen = [
        put_unknown(1, 0, "a", "1"),
        get(2, 20, 30, "a", Some("1"), 7),
    ];
    assert_eq!(verdict(&seen, Model::Kv), LIN);
    let unseen = [put_unknown(1, 0, "a", "1"), get(2, 20, 30, "a", None, 0)];
    assert_eq!(verdict(&unseen, Model::Kv), LIN);
    // It may even take effect long after: unseen first, then seen.
    let late = [
        put_unknown(1, 0, "a", "1"),
        get(2, 20, 30, "a", None, 0),
        get(2, 40, 50, "a", Some("1"), 7),
    ];
    assert_eq!(verdict(&late, Model::Kv), LIN);
}

#[test]
fn unknown_write_cannot_be_undone_or_act_before_its_call() {
    let undone = [
        put_unknown(1, 0, "a", "1"),
        get(2, 20, 30, "a", Some("1"), 7),
        get(2, 40, 50, "a", None, 0),
    ];
    assert_eq!(verdict(&undone, Model::Kv), NOT);
    let early = [
        get(2, 0, 5, "a", Some("1"), 7),
        put_unknown(1, 10, "a", "1"),
    ];
    assert_eq!(verdict(&early, Model::Kv), NOT);
    // Once a read has fixed its revision, later reads must agree.
    let two_revs = [
        put_unknown(1, 0, "a", "1"),
        get(2, 20, 30, "a", Some("1"), 7),
        get(2, 40, 50, "a", Some("1"), 8),
    ];
    assert_eq!(verdict(&two_revs, Model::Kv), NOT);
}

#[test]
fn unknown_read_constrains_nothing() {
    let h = [
        put(1, 0, 10, "a", "1", 1),
        rec(2, 20, None, Op::Get { key: s("a") }, None),
    ];
    assert_eq!(verdict(&h, Model::Kv), LIN);
}

#[test]
fn failed_cas() {
    // Comparison fails against "1": fine, and reports the current revision.
    let ok = [
        put(1, 0, 10, "a", "1", 1),
        cas(2, 20, 30, "a", Some("2"), Some("3"), false, 1),
        get(3, 40, 50, "a", Some("1"), 1),
    ];
    assert_eq!(verdict(&ok, Model::Kv), LIN);
    // Wrong revision on failure.
    let bad_rev = [
        put(1, 0, 10, "a", "1", 1),
        cas(2, 20, 30, "a", Some("2"), Some("3"), false, 7),
    ];
    assert_eq!(verdict(&bad_rev, Model::Kv), NOT);
    // It cannot fail when the comparison holds.
    let should_succeed = [
        put(1, 0, 10, "a", "1", 1),
        cas(2, 20, 30, "a", Some("1"), Some("3"), false, 1),
    ];
    assert_eq!(verdict(&should_succeed, Model::Kv), NOT);
    assert_eq!(verdict(&should_succeed, Model::Register), NOT);
    // Nor succeed when it does not.
    let should_fail = [
        put(1, 0, 10, "a", "1", 1),
        cas(2, 20, 30, "a", Some("2"), Some("3"), true, 2),
    ];
    assert_eq!(verdict(&should_fail, Model::Kv), NOT);
    // A failed cas does not write.
    let no_write = [
        put(1, 0, 10, "a", "1", 1),
        cas(2, 20, 30, "a", Some("2"), Some("3"), false, 1),
        get(3, 40, 50, "a", Some("3"), 1),
    ];
    assert_eq!(verdict(&no_write, Model::Kv), NOT);
}

#[test]
fn cas_on_absent_and_delete_on_success() {
    let h = [
        cas(1, 0, 10, "a", None, Some("1"), true, 1),
        cas(1, 20, 30, "a", None, Some("2"), false, 1),
        cas(1, 40, 50, "a", Some("1"), None, true, 2),
        get(2, 60, 70, "a", None, 0),
    ];
    assert_eq!(verdict(&h, Model::Kv), LIN);
}

#[test]
fn unknown_cas_applies_only_if_comparison_holds() {
    let unknown = |expect: &str| {
        rec(
            2,
            20,
            None,
            Op::Cas {
                key: s("a"),
                expect: Some(s(expect)),
                new: Some(s("9")),
            },
            None,
        )
    };
    let applies = [
        put(1, 0, 10, "a", "1", 1),
        unknown("1"),
        get(3, 40, 50, "a", Some("9"), 5),
    ];
    assert_eq!(verdict(&applies, Model::Kv), LIN);
    let cannot = [
        put(1, 0, 10, "a", "1", 1),
        unknown("2"),
        get(3, 40, 50, "a", Some("9"), 5),
    ];
    assert_eq!(verdict(&cannot, Model::Kv), NOT);
}

#[test]
fn batch_is_atomic_across_keys() {
    // The batch (concurrent with everything) writes a and b. A client sees the new
    // a and *afterwards* the old b: no single point for the batch. Each key alone
    // is linearizable, so only a checker that keeps a and b together catches it.
    let torn = [
        batch(
            1,
            0,
            Some(100),
            vec![bput("a", "1"), bput("b", "1")],
            Some((true, 3)),
        ),
        get(2, 10, 20, "a", Some("1"), 3),
        get(2, 30, 40, "b", None, 0),
    ];
    assert_eq!(verdict(&torn, Model::Kv), NOT);
    let report = check_records(&torn, Model::Kv).expect("valid");
    assert_eq!(report.partitions, 1);
    assert_eq!(report.failing_partition.as_deref(), Some("a, b"));
    // Two independent puts in place of the batch are fine: only atomicity is broken.
    let split = [
        put(1, 0, 100, "a", "1", 3),
        put(1, 0, 100, "b", "1", 3),
        torn[1].clone(),
        torn[2].clone(),
    ];
    assert_eq!(verdict(&split, Model::Kv), LIN);
    // Old b first, then new a: fine.
    let fine = [
        torn[0].clone(),
        get(2, 10, 20, "b", None, 0),
        get(2, 30, 40, "a", Some("1"), 3),
    ];
    assert_eq!(verdict(&fine, Model::Kv), LIN);
}

#[test]
fn failed_batch_applies_nothing() {
    let ops = vec![bcas("a", Some("9"), Some("1")), bput("b", "1")];
    let h = [
        batch(1, 0, Some(10), ops.clone(), Some((false, 0))),
        get(2, 20, 30, "b", None, 0),
    ];
    assert_eq!(verdict(&h, Model::Kv), LIN);
    let h = [
        batch(1, 0, Some(10), ops.clone(), Some((false, 0))),
        get(2, 20, 30, "b", Some("1"), 1),
    ];
    assert_eq!(verdict(&h, Model::Kv), NOT);
    // It cannot claim success with a failing comparison...
    let h = [batch(1, 0, Some(10), ops.clone(), Some((true, 1)))];
    assert_eq!(verdict(&h, Model::Kv), NOT);
    // ...nor fail when all comparisons hold.
    let h = [
        put(1, 0, 10, "a", "9", 1),
        batch(1, 20, Some(30), ops, Some((false, 0))),
    ];
    assert_eq!(verdict(&h, Model::Kv), NOT);
}

#[test]
fn batch_sets_its_revision_on_every_written_key() {
    let h = [
        batch(
            1,
            0,
            Some(10),
            vec![bput("a", "1"), bcas("b", None, Some("2"))],
            Some((true, 4)),
        ),
        get(2, 20, 30, "a", Some("1"), 4),
        get(2, 20, 30, "b", Some("2"), 4),
    ];
    assert_eq!(verdict(&h, Model::Kv), LIN);
    let mut wrong = h.clone();
    wrong[2] = get(2, 20, 30, "b", Some("2"), 5);
    assert_eq!(verdict(&wrong, Model::Kv), NOT);
}

#[test]
fn unknown_batch_is_all_or_nothing() {
    let unknown = batch(1, 0, None, vec![bput("a", "1"), bput("b", "1")], None);
    let all = [
        unknown.clone(),
        get(2, 10, 20, "a", Some("1"), 3),
        get(2, 30, 40, "b", Some("1"), 3),
    ];
    assert_eq!(verdict(&all, Model::Kv), LIN);
    let none = [
        unknown.clone(),
        get(2, 10, 20, "a", None, 0),
        get(2, 30, 40, "b", None, 0),
    ];
    assert_eq!(verdict(&none, Model::Kv), LIN);
    let half = [
        unknown,
        get(2, 10, 20, "a", Some("1"), 3),
        get(2, 30, 40, "b", None, 0),
    ];
    assert_eq!(verdict(&half, Model::Kv), NOT);
}

#[test]
fn independent_keys_are_separate_partitions() {
    let h = [
        put(1, 0, 10, "a", "1", 1),
        put(1, 0, 10, "b", "1", 2),
        get(2, 20, 30, "b", Some("1"), 2),
        get(2, 20, 30, "c", None, 0),
        get(2, 40, 50, "a", None, 0),
    ];
    let report = check_records(&h, Model::Kv).expect("valid");
    assert_eq!(report.partitions, 3);
    assert_eq!(report.operations, 5);
    assert_eq!(report.verdict, NOT);
    assert_eq!(report.failing_partition.as_deref(), Some("a"));
    assert_eq!(verdict(&h, Model::Kv), NOT);
}

// ---------------------------------------------------------- Register model

#[test]
fn register_model_follows_porcupine_etcd() {
    // cas ok only if the comparison holds; a failed cas means it did not hold.
    let h = [
        put(0, 0, 10, "x", "1", 0),
        cas(1, 20, 30, "x", Some("1"), Some("2"), true, 0),
        get(2, 40, 50, "x", Some("2"), 0),
    ];
    assert_eq!(verdict(&h, Model::Register), LIN);
    let h = [
        put(0, 0, 10, "x", "1", 0),
        cas(1, 20, 30, "x", Some("1"), Some("2"), false, 0),
    ];
    assert_eq!(verdict(&h, Model::Register), NOT);
    // A cas against an absent register fails.
    let h = [cas(1, 0, 10, "x", Some("1"), Some("2"), true, 0)];
    assert_eq!(verdict(&h, Model::Register), NOT);
    // An unknown write may land later.
    let h = [
        put_unknown(0, 0, "x", "3"),
        get(1, 10, 20, "x", None, 0),
        get(1, 30, 40, "x", Some("3"), 0),
    ];
    assert_eq!(verdict(&h, Model::Register), LIN);
}

// ------------------------------------------------------------------ errors

#[test]
fn invalid_records_are_errors_naming_the_record() {
    let mut bad = put(1, 0, 10, "a", "1", 1);
    bad.result = Some(OpResult::Get {
        value: None,
        revision: 0,
    });
    let h = [get(2, 0, 5, "a", None, 0), bad];
    match check_records(&h, Model::Kv) {
        Err(CheckError::InvalidRecord { index: 1, message }) => {
            assert!(message.contains("does not answer"), "{message}")
        }
        other => panic!("expected InvalidRecord at 1, got {other:?}"),
    }
    let backwards = [put(1, 10, 5, "a", "1", 1)];
    assert!(matches!(
        check_records(&backwards, Model::Kv),
        Err(CheckError::InvalidRecord { index: 0, .. })
    ));
    let mut no_return = put(1, 0, 10, "a", "1", 1);
    no_return.return_ns = None;
    assert!(check_records(&[no_return], Model::Kv).is_err());
    let nested = batch(
        1,
        0,
        Some(1),
        vec![Op::Get { key: s("a") }],
        Some((true, 1)),
    );
    assert!(check_records(&[nested], Model::Kv).is_err());
}

#[test]
fn brute_force_refuses_large_histories() {
    let h: Vec<Record> = (0..11)
        .map(|i| put(1, i * 10, i * 10 + 5, "a", "1", i + 1))
        .collect();
    assert!(matches!(
        check_brute_force(&h, Model::Kv),
        Err(CheckError::TooManyOperations { count: 11, max: 10 })
    ));
    assert_eq!(
        check_brute_force(&h[..10], Model::Kv).expect("10 is fine"),
        LIN
    );
}

#[test]
fn long_sequential_history_does_not_overflow() {
    // 20_000 sequential operations: the search must not recurse.
    let mut h = Vec::new();
    for i in 0..10_000u64 {
        h.push(put(1, 4 * i, 4 * i + 1, "a", &i.to_string(), i + 1));
        h.push(get(
            2,
            4 * i + 2,
            4 * i + 3,
            "a",
            Some(&i.to_string()),
            i + 1,
        ));
    }
    let report = check_records(&h, Model::Kv).expect("valid");
    assert_eq!(report.verdict, LIN);
    h.push(get(2, 40_000, 40_001, "a", Some("0"), 1));
    assert_eq!(check_records(&h, Model::Kv).expect("valid").verdict, NOT);
}
