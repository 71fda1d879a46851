//! Arbitrary or corrupted bytes as on-disk data: the simulated disk's file, stored log
//! entries, votes, applied metas and snapshot frames. Recovery returns an error or a valid state — never a panic,
//! never a silently wrong value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use seedkv_core::codec;
use seedkv_core::storage::snapshot::SnapshotFrame;
use seedkv_core::storage::{AppliedMeta, DiskOp, WriteBatch};
use seedkv_core::types::{Entry, Vote};
use seedkv_io_sim::recovery;

fuzz_target!(|data: &[u8]| {
    // 1. The whole input as the disk file: recovery stops at the first bad record, and what
    //    it kept recovers identically again.
    let recovered = recovery::recover(data);
    assert!(recovered.valid_len <= data.len());
    assert_eq!(recovery::recover(&data[..recovered.valid_len]), recovered);

    // 2. The input as stored values: decoding may fail, but what decodes re-encodes to a value
    //    that decodes the same.
    if let Ok(entry) = codec::decode::<Entry>(data) {
        let again: Entry = codec::decode(&codec::encode(&entry)).expect("re-decode entry");
        assert_eq!(again.log_id, entry.log_id);
    }
    if let Ok(vote) = codec::decode::<Vote>(data) {
        assert_eq!(
            codec::decode::<Vote>(&codec::encode(&vote)).ok(),
            Some(vote)
        );
    }
    if let Ok(meta) = codec::decode::<AppliedMeta>(data) {
        let again: AppliedMeta = codec::decode(&codec::encode(&meta)).expect("re-decode meta");
        assert_eq!(again, meta);
    }
    if let Ok(frame) = codec::decode::<SnapshotFrame>(data) {
        let again: SnapshotFrame =
            codec::decode(&codec::encode(&frame)).expect("re-decode snapshot frame");
        assert_eq!(format!("{again:?}"), format!("{frame:?}"));
    }

    // 3. A valid record, corrupted where the input says: either refused, or exactly what was
    //    written (a checksum never lets a changed value through).
    let Some((&flips, rest)) = data.split_first() else {
        return;
    };
    let mut batch = WriteBatch::default();
    for chunk in rest.chunks(9).take(8) {
        let (key, value) = chunk.split_at(chunk.len().min(3));
        batch.ops.push(DiskOp::Put(key.to_vec(), value.to_vec()));
    }
    let mut file = Vec::new();
    recovery::append_record(&mut file, &batch);
    let clean = recovery::recover(&file);
    assert_eq!(clean.records, 1);
    let mut corrupted = file.clone();
    for (i, byte) in rest.iter().take(usize::from(flips % 4) + 1).enumerate() {
        let at = (usize::from(*byte) * 31 + i * 7) % corrupted.len();
        corrupted[at] ^= 1 << (i % 8);
    }
    let after = recovery::recover(&corrupted);
    if corrupted != file {
        if after.records == 1 {
            assert_eq!(
                after.table, clean.table,
                "a corrupted record replayed a different value"
            );
        }
    }
});
