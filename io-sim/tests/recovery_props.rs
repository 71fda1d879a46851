//! Recovery of the simulated disk's file, cut at every possible crash point.

use proptest::prelude::*;
use seedkv_core::storage::WriteBatch;
use seedkv_io_sim::recovery::{append_record, apply_batch, recover, Table};

fn batch() -> impl Strategy<Value = WriteBatch> {
    let key = prop::sample::select(vec!["a", "b", "c", "d"]).prop_map(|k| k.as_bytes().to_vec());
    let op = prop_oneof![
        (key.clone(), prop::collection::vec(any::<u8>(), 0..8))
            .prop_map(|(k, v)| seedkv_core::storage::DiskOp::Put(k, v)),
        key.clone().prop_map(seedkv_core::storage::DiskOp::Delete),
        (key.clone(), key).prop_map(|(a, b)| seedkv_core::storage::DiskOp::DeleteRange(a, b)),
    ];
    prop::collection::vec(op, 1..4).prop_map(|ops| WriteBatch { ops })
}

proptest! {
    /// A file cut anywhere recovers exactly the batches wholly before the cut.
    #[test]
    fn a_cut_file_recovers_the_whole_records_before_the_cut(
        batches in prop::collection::vec(batch(), 1..12),
        cut_fraction in 0.0f64..=1.0,
    ) {
        let mut file = Vec::new();
        let mut ends = Vec::new();
        for b in &batches {
            append_record(&mut file, b);
            ends.push(file.len());
        }
        let cut = (file.len() as f64 * cut_fraction) as usize;
        let whole = ends.iter().take_while(|end| **end <= cut).count();
        let mut expected = Table::new();
        for b in &batches[..whole] {
            apply_batch(&mut expected, b);
        }
        let recovered = recover(&file[..cut]);
        prop_assert_eq!(recovered.records, whole);
        prop_assert_eq!(recovered.valid_len, if whole == 0 { 0 } else { ends[whole - 1] });
        prop_assert_eq!(recovered.table, expected);
    }

    /// Arbitrary bytes never make recovery panic, and what it accepts replays again the same.
    #[test]
    fn arbitrary_bytes_recover_without_panicking(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let recovered = recover(&bytes);
        prop_assert!(recovered.valid_len <= bytes.len());
        let again = recover(&bytes[..recovered.valid_len]);
        prop_assert_eq!(again, recovered);
    }
}
