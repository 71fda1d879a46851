//! Writes histories that are hard for the checker into a directory, in seedkv's
//! JSON-lines format, for timing `seedkv check-history` on them:
//!
//! ```sh
//! cargo run --release -p seedkv-checker --example hard_history -- target/hard
//! time seedkv check-history target/hard/c50-bad-hard.jsonl
//! ```
//!
//! - `c50-bad-hard.jsonl`: Porcupine's 50-client kv history with a violation in
//!   keys 0..=6 and, in keys 7..=9, 20 concurrent appends whose refutation means
//!   trying every order (not linearizable; decided by the quick keys).
//! - `c50-hard-first.jsonl`: the same with the undecidable keys being 0..=2, the
//!   first in the history.
//! - `c50-bad-late.jsonl`: as the first, with the violations in the last tenth.
//! - `c50-undecidable.jsonl`: only the undecidable keys (verdict `unknown`).

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::PathBuf;

use seedkv_checker::{parse_history, Record};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = PathBuf::from(std::env::args().nth(1).ok_or("usage: hard_history DIR")?);
    let source =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/checker-data/kv/c50-ok.txt");
    let text =
        std::fs::read_to_string(&source).map_err(|e| format!("{}: {e}", source.display()))?;
    let (c50, _) = parse_history(&text)?;
    std::fs::create_dir_all(&dir)?;
    let quick = ["0", "1", "2", "3", "4", "5", "6"];
    let files: [(&str, Vec<Record>); 4] = [
        (
            "c50-bad-hard.jsonl",
            support::c50_with_violations(c50.clone(), &quick, 30, &["7", "8", "9"], 20),
        ),
        (
            "c50-hard-first.jsonl",
            support::c50_with_violations(
                c50.clone(),
                &["3", "4", "5", "6", "7", "8", "9"],
                30,
                &["0", "1", "2"],
                20,
            ),
        ),
        (
            "c50-bad-late.jsonl",
            support::c50_with_violations(c50.clone(), &quick, 90, &["7", "8", "9"], 20),
        ),
        (
            "c50-undecidable.jsonl",
            support::c50_with_violations(c50, &[], 30, &["7", "8", "9"], 20),
        ),
    ];
    for (name, records) in files {
        let mut out = String::new();
        for record in &records {
            out.push_str(&serde_json::to_string(record)?);
            out.push('\n');
        }
        let path = dir.join(name);
        std::fs::write(&path, out)?;
        println!("{} ({} operations)", path.display(), records.len());
    }
    Ok(())
}
