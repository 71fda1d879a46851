//! The checker against histories with known verdicts (`shared/checker-data`).
//!
//! These are other people's real histories (Porcupine's test data: Jepsen etcd logs
//! and kv files); reproducing every verdict is the evidence that the checker is
//! right before it is trusted on seedkv's own histories. A missing data directory
//! is a failure, not a skip.

use std::path::PathBuf;
use std::time::Instant;

use seedkv_checker::{check_file, parse_history, Format, Model, Verdict};

fn data_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/checker-data");
    assert!(
        dir.join("README.md").is_file(),
        "reference data not found at {} (expected shared/checker-data beside the repository root); \
         these tests must not be skipped",
        dir.display()
    );
    dir
}

fn read(path: &std::path::Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

#[test]
fn jepsen_etcd_verdicts() {
    let dir = data_dir().join("jepsen-etcd");
    let verdicts = read(&dir.join("VERDICTS"));
    let mut checked = 0;
    let mut slowest = (String::new(), 0.0f64);
    let mut failures = Vec::new();
    for line in verdicts.lines().filter(|l| !l.trim().is_empty()) {
        let mut parts = line.split_whitespace();
        let (Some(file), Some(expected), None) = (parts.next(), parts.next(), parts.next()) else {
            panic!("malformed VERDICTS line {line:?}");
        };
        let expected = match expected {
            "linearizable" => Verdict::Linearizable,
            "not-linearizable" => Verdict::NotLinearizable,
            other => panic!("unknown verdict {other:?} in VERDICTS"),
        };
        let path = dir.join(file);
        let (_, format) = parse_history(&read(&path)).expect("parses");
        assert_eq!(format, Format::JepsenEtcd, "{file} detected as {format}");
        let start = Instant::now();
        let report = check_file(&path, None).unwrap_or_else(|e| panic!("{e}"));
        let secs = start.elapsed().as_secs_f64();
        if secs > slowest.1 {
            slowest = (file.to_string(), secs);
        }
        if report.verdict != expected {
            failures.push(format!(
                "{file}: expected {expected}, got {}",
                report.verdict
            ));
        }
        assert_eq!(report.partitions, 1, "{file}: one register, one partition");
        checked += 1;
    }
    assert!(
        failures.is_empty(),
        "wrong verdicts:\n{}",
        failures.join("\n")
    );
    assert!(checked >= 70, "only {checked} files listed in VERDICTS");
    println!(
        "jepsen-etcd: {checked} files ok; slowest {} in {:.3} s",
        slowest.0, slowest.1
    );
}

#[test]
fn jepsen_etcd_every_log_is_listed() {
    let dir = data_dir().join("jepsen-etcd");
    let verdicts = read(&dir.join("VERDICTS"));
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let name = entry
            .expect("dir entry")
            .file_name()
            .to_string_lossy()
            .into_owned();
        if name.ends_with(".log") {
            assert!(
                verdicts
                    .lines()
                    .any(|l| l.split_whitespace().next() == Some(name.as_str())),
                "{name} has no verdict"
            );
        }
    }
}

#[test]
fn porcupine_kv_verdicts() {
    let dir = data_dir().join("kv");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|n| n.ends_with(".txt"))
        .collect();
    names.sort();
    assert!(
        names.iter().any(|n| n == "c50-ok.txt"),
        "c50-ok.txt missing from {}",
        dir.display()
    );
    for name in &names {
        let expected = if name.ends_with("-ok.txt") {
            Verdict::Linearizable
        } else if name.ends_with("-bad.txt") {
            Verdict::NotLinearizable
        } else {
            panic!("{name}: neither -ok nor -bad");
        };
        let path = dir.join(name);
        let (records, format) = parse_history(&read(&path)).expect("parses");
        assert_eq!(format, Format::PorcupineKv, "{name} detected as {format}");
        assert!(!records.is_empty());
        let start = Instant::now();
        let report = check_file(&path, Some(Model::Kv)).unwrap_or_else(|e| panic!("{e}"));
        let secs = start.elapsed().as_secs_f64();
        println!(
            "kv/{name}: {} ({} ops, {} partitions{}) in {secs:.3} s",
            report.verdict,
            report.operations,
            report.partitions,
            report
                .failing_partition
                .as_deref()
                .map(|k| format!(", failing key {k}"))
                .unwrap_or_default()
        );
        assert_eq!(report.verdict, expected, "{name}");
        if expected == Verdict::NotLinearizable {
            assert!(report.failing_partition.is_some());
        }
    }
}

/// The register model must also accept every Jepsen file the same way when the
/// history is turned into seedkv's own format and read back.
#[test]
fn jepsen_round_trip_through_seedkv_format() {
    let dir = data_dir().join("jepsen-etcd");
    for file in ["etcd_000.log", "etcd_002.log"] {
        let (records, _) = parse_history(&read(&dir.join(file))).expect("parses");
        let text: String = records
            .iter()
            .map(|r| serde_json::to_string(r).expect("serialises") + "\n")
            .collect();
        let (back, format) = parse_history(&text).expect("reparses");
        assert_eq!(format, Format::Seedkv);
        assert_eq!(back, records);
        let direct = check_file(&dir.join(file), None).expect("checks").verdict;
        let again = seedkv_checker::check_records(&back, Model::Register)
            .expect("checks")
            .verdict;
        assert_eq!(direct, again, "{file}");
    }
}
