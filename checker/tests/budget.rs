//! The check ends at the first failing partition wherever it stands, and stays
//! within its budget: a history too hard to decide gets `unknown`, naming what is
//! left undecided, never a hang or a false verdict.

mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use seedkv_checker::{
    check_records, check_records_within, parse_history, Budget, Limit, Model, Record, Verdict,
};
use support::{c50_with_violations, concurrent_puts, quick_violation, wide_undecidable};

/// Puts in the undecidable partitions: refuting one means exploring about
/// `40 * 2^39` configurations, far past any budget.
const UNDECIDABLE_PUTS: u64 = 40;
/// Puts in the hard but decidable partitions (about 10^6 configurations each).
const HARD_PUTS: u64 = 16;

fn history(parts: Vec<Vec<Record>>) -> Vec<Record> {
    parts.into_iter().flatten().collect()
}

fn generous() -> Budget {
    Budget {
        timeout: Some(Duration::from_secs(120)),
        ..Budget::default()
    }
}

#[test]
fn a_quick_violation_ends_the_check_in_any_position() {
    for position in 0..4 {
        let mut parts: Vec<Vec<Record>> = (0..3)
            .map(|i| concurrent_puts(&format!("hard{i}"), UNDECIDABLE_PUTS, None, 0))
            .collect();
        parts.insert(position, quick_violation("easy", 0));
        let report =
            check_records_within(&history(parts), Model::Kv, &generous()).expect("valid history");
        assert_eq!(
            report.verdict,
            Verdict::NotLinearizable,
            "position {position}"
        );
        assert_eq!(report.failing_partition.as_deref(), Some("easy"));
        assert_eq!(report.partitions, 4);
    }
}

#[test]
fn a_violation_behind_hard_linearizable_partitions_is_found() {
    let mut parts: Vec<Vec<Record>> = (0..3)
        .map(|i| concurrent_puts(&format!("hard{i}"), HARD_PUTS, Some(0), 0))
        .collect();
    parts.push(quick_violation("easy", 0));
    let report = check_records(&history(parts), Model::Kv).expect("valid history");
    assert_eq!(report.verdict, Verdict::NotLinearizable);
    assert_eq!(report.failing_partition.as_deref(), Some("easy"));
}

#[test]
fn a_linearizable_history_needs_every_partition_decided() {
    let parts: Vec<Vec<Record>> = (0..3)
        .map(|i| concurrent_puts(&format!("hard{i}"), HARD_PUTS, Some(0), 0))
        .collect();
    let report = check_records(&history(parts), Model::Kv).expect("valid history");
    assert_eq!(report.verdict, Verdict::Linearizable);
    assert!(report.undecided.is_empty() && report.limit.is_none());
    // The hard refutation of the same shape is decided too (not cut short).
    let refuted = concurrent_puts("k", HARD_PUTS, None, 0);
    let report = check_records(&refuted, Model::Kv).expect("valid history");
    assert_eq!(report.verdict, Verdict::NotLinearizable);
}

#[test]
fn too_hard_for_the_time_budget_is_unknown_within_it() {
    let parts = vec![
        concurrent_puts("easy-ok", 3, Some(2), 0),
        concurrent_puts("hard", UNDECIDABLE_PUTS, None, 0),
    ];
    let timeout = Duration::from_millis(500);
    let budget = Budget {
        timeout: Some(timeout),
        max_search_bytes: usize::MAX,
    };
    let start = Instant::now();
    let report = check_records_within(&history(parts), Model::Kv, &budget).expect("valid");
    let took = start.elapsed();
    assert_eq!(report.verdict, Verdict::Unknown);
    assert_eq!(report.undecided, vec!["hard".to_string()]);
    assert_eq!(report.limit, Some(Limit::Time(timeout)));
    assert!(report.failing_partition.is_none());
    // One slice past the deadline at most; the bound only catches a hang.
    assert!(took < Duration::from_secs(10), "took {took:?}");
}

#[test]
fn the_memory_budget_gives_up_the_largest_search_and_goes_on() {
    let budget = Budget {
        timeout: None,
        max_search_bytes: 8 << 20,
    };
    // "hard" holds a 16-key state per configuration and outgrows the other search, which
    // needs about 5 MiB on its own: "hard" is given up, the other is still decided.
    let with =
        |other: Vec<Record>| history(vec![wide_undecidable("hard", UNDECIDABLE_PUTS, 15), other]);
    let report = check_records_within(
        &with(concurrent_puts("ok", 13, Some(0), 0)),
        Model::Kv,
        &budget,
    )
    .expect("valid");
    assert_eq!(report.verdict, Verdict::Unknown);
    assert_eq!(report.undecided.len(), 1);
    assert!(
        report.undecided[0].starts_with("hard, "),
        "{:?}",
        report.undecided
    );
    assert_eq!(report.limit, Some(Limit::Memory(8 << 20)));
    // Deterministic: the same budget stops at the same point, with the same answer.
    let again = check_records_within(
        &with(concurrent_puts("ok", 13, Some(0), 0)),
        Model::Kv,
        &budget,
    )
    .expect("valid");
    assert_eq!(again, report);
    // A violation elsewhere is still found after the hard search was given up.
    let report = check_records_within(
        &with(concurrent_puts("slow-bad", 13, None, 0)),
        Model::Kv,
        &budget,
    )
    .expect("valid");
    assert_eq!(report.verdict, Verdict::NotLinearizable);
    assert_eq!(report.failing_partition.as_deref(), Some("slow-bad"));
    assert_eq!(
        report.undecided.len(),
        1,
        "the hard search was given up first"
    );
    assert_eq!(report.limit, Some(Limit::Memory(8 << 20)));
}

fn c50() -> Vec<Record> {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/checker-data/kv/c50-ok.txt");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (shared/checker-data must sit beside the repository)",
            path.display()
        )
    });
    parse_history(&text).expect("parses").0
}

/// The shape that once hung the checker: 50 clients, 10 keys, seven keys with a
/// violation, three keys whose refutation means trying every order of 20 appends.
#[test]
fn porcupine_c50_with_seven_violations_and_three_undecidable_keys() {
    let refuted = ["0", "1", "2", "3", "4", "5", "6"];
    for hard in [["7", "8", "9"], ["0", "1", "2"]] {
        let refuted: Vec<&str> = refuted
            .iter()
            .copied()
            .filter(|k| !hard.contains(k))
            .collect();
        let records = c50_with_violations(c50(), &refuted, 30, &hard, 20);
        let report = check_records_within(&records, Model::Kv, &generous()).expect("valid");
        assert_eq!(
            report.verdict,
            Verdict::NotLinearizable,
            "hard keys {hard:?}"
        );
        let failing = report.failing_partition.expect("names the failing key");
        assert!(
            refuted.contains(&failing.as_str()),
            "{failing} is not one of {refuted:?}"
        );
    }
    // With no violation left, the undecidable keys make the verdict unknown, not
    // linearizable, and the budget holds.
    let records = c50_with_violations(c50(), &[], 30, &["7", "8", "9"], 20);
    // A memory bound alone: deterministic, and as quick in a debug build.
    let budget = Budget {
        timeout: None,
        max_search_bytes: 64 << 20,
    };
    let report = check_records_within(&records, Model::Kv, &budget).expect("valid");
    assert_eq!(report.verdict, Verdict::Unknown);
    let mut undecided = report.undecided.clone();
    undecided.sort();
    assert_eq!(undecided, vec!["7", "8", "9"]);
}
