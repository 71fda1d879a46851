//! The simulated disk's on-disk format and its recovery, free of any runtime so that fuzzers
//! and tests can feed it arbitrary bytes.
//!
//! The disk is one append-only file of records `len: u32 LE ‖ frame`, where `frame` is a
//! checksummed [`seedkv_core::codec`] frame of a [`WriteBatch`]. Recovery replays records in
//! order and stops at the first one that is short or fails its checksum: that is a torn tail
//! from a crash, and everything after it is discarded — exactly the batches that were never
//! acknowledged as synced.

use std::collections::BTreeMap;

use seedkv_core::codec;
use seedkv_core::storage::{DiskOp, WriteBatch};

/// The key-value contents of a disk.
/// Keys to values; values are shared, so a point-in-time view of the table copies keys and
/// pointers, not the bytes of every value.
pub type Table = BTreeMap<Vec<u8>, std::sync::Arc<[u8]>>;

/// Appends `batch` to `file` as one record.
pub fn append_record(file: &mut Vec<u8>, batch: &WriteBatch) {
    let frame = codec::encode(batch);
    let len = u32::try_from(frame.len()).unwrap_or(u32::MAX);
    assert!(
        (len as usize) == frame.len(),
        "a record is limited to 4 GiB"
    );
    file.extend_from_slice(&len.to_le_bytes());
    file.extend_from_slice(&frame);
}

/// Applies `batch` to `table`.
pub fn apply_batch(table: &mut Table, batch: &WriteBatch) {
    for op in &batch.ops {
        match op {
            DiskOp::Put(key, value) => {
                table.insert(key.clone(), std::sync::Arc::from(value.as_slice()));
            }
            DiskOp::Delete(key) => {
                table.remove(key);
            }
            DiskOp::DeleteRange(from, to) => {
                if from < to {
                    let doomed: Vec<Vec<u8>> = table
                        .range(from.clone()..to.clone())
                        .map(|(k, _)| k.clone())
                        .collect();
                    for key in doomed {
                        table.remove(&key);
                    }
                }
            }
        }
    }
}

/// What recovery found in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovered {
    /// The contents after replaying every intact record.
    pub table: Table,
    /// Bytes of intact records: the file is truncated to this length.
    pub valid_len: usize,
    /// Intact records replayed.
    pub records: usize,
}

/// Replays `file` up to its first short or corrupt record. Never panics on any input.
pub fn recover(file: &[u8]) -> Recovered {
    let mut table = Table::new();
    let mut offset = 0usize;
    let mut records = 0usize;
    while let Some(header) = file.get(offset..offset + 4) {
        let mut len_bytes = [0u8; 4];
        len_bytes.copy_from_slice(header);
        let len = u32::from_le_bytes(len_bytes) as usize;
        let Some(frame) = file.get(offset + 4..offset + 4 + len) else {
            break;
        };
        let Ok(batch) = codec::decode::<WriteBatch>(frame) else {
            break;
        };
        apply_batch(&mut table, &batch);
        offset += 4 + len;
        records += 1;
    }
    Recovered {
        table,
        valid_len: offset,
        records,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(key: &str, value: &str) -> WriteBatch {
        let mut batch = WriteBatch::default();
        batch.put(key.into(), value.into());
        batch
    }

    #[test]
    fn replays_intact_records_and_stops_at_a_torn_tail() {
        let mut file = Vec::new();
        append_record(&mut file, &batch("a", "1"));
        let first_len = file.len();
        append_record(&mut file, &batch("b", "2"));
        let full = recover(&file);
        assert_eq!(full.records, 2);
        assert_eq!(full.valid_len, file.len());
        for cut in first_len..file.len() {
            let torn = recover(&file[..cut]);
            assert_eq!(torn.records, 1, "cut at {cut}");
            assert_eq!(torn.valid_len, first_len);
            assert!(torn.table.contains_key(b"a".as_slice()));
            assert!(!torn.table.contains_key(b"b".as_slice()));
        }
    }

    #[test]
    fn a_flipped_byte_ends_recovery_there() {
        let mut file = Vec::new();
        append_record(&mut file, &batch("a", "1"));
        let first_len = file.len();
        append_record(&mut file, &batch("b", "2"));
        file[first_len + 9] ^= 1;
        let recovered = recover(&file);
        assert_eq!(recovered.records, 1);
        assert_eq!(recovered.valid_len, first_len);
    }

    #[test]
    fn delete_range_is_half_open() {
        let mut table = Table::new();
        for key in ["a", "b", "c"] {
            table.insert(key.into(), std::sync::Arc::from(&[][..]));
        }
        let mut batch = WriteBatch::default();
        batch.delete_range("a".into(), "c".into());
        apply_batch(&mut table, &batch);
        assert_eq!(table.keys().collect::<Vec<_>>(), vec![&b"c".to_vec()]);
    }
}
