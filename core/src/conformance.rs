//! One storage conformance suite for every [`Disk`]: the simulated disk and RocksDB run the
//! same checks, so "durable" means the same thing in the simulator and in production.
//!
//! A test binds an implementation through [`DiskUnderTest`] and calls [`run_all`]; every
//! check panics with a message naming what broke.

use std::future::Future;
use std::sync::Arc;

use crate::storage::{Disk, DiskRead, Durability, WriteBatch};

/// An implementation under test, and how to crash it.
pub trait DiskUnderTest {
    /// The disk type.
    type Disk: Disk;

    /// The currently open disk.
    fn disk(&self) -> Arc<Self::Disk>;

    /// Loses power (or drops the handle without flushing) and opens the disk again. Must not
    /// be called while a clone of [`DiskUnderTest::disk`] is alive.
    fn crash_and_reopen(&mut self) -> impl Future<Output = ()>;
}

fn key(prefix: &str, i: u32) -> Vec<u8> {
    format!("{prefix}{i:04}").into_bytes()
}

async fn put(disk: &impl Disk, k: Vec<u8>, v: &[u8], durability: Durability) {
    let mut batch = WriteBatch::default();
    batch.put(k, v.to_vec());
    disk.write(batch, durability).await.expect("write");
}

/// Runs every check, reopening the disk between them.
pub async fn run_all<H: DiskUnderTest>(harness: &mut H) {
    point_ops(&*harness.disk()).await;
    scans(&*harness.disk()).await;
    batches_are_atomic(&*harness.disk()).await;
    views_are_point_in_time(&*harness.disk()).await;
    byte_bounded_scans(&*harness.disk()).await;
    synced_writes_survive_a_crash(harness).await;
    buffered_writes_survive_a_crash_after_sync(harness).await;
    buffered_writes_are_lost_only_as_a_suffix(harness).await;
}

/// Put, overwrite, get, delete.
pub async fn point_ops(disk: &impl Disk) {
    put(disk, b"p/a".to_vec(), b"1", Durability::Sync).await;
    assert_eq!(disk.get(b"p/a").expect("get"), Some(b"1".to_vec()));
    put(disk, b"p/a".to_vec(), b"2", Durability::Buffered).await;
    assert_eq!(
        disk.get(b"p/a").expect("get"),
        Some(b"2".to_vec()),
        "reads see buffered writes"
    );
    let mut batch = WriteBatch::default();
    batch.delete(b"p/a".to_vec());
    disk.write(batch, Durability::Sync).await.expect("delete");
    assert_eq!(disk.get(b"p/a").expect("get"), None);
    assert_eq!(disk.get(b"p/never").expect("get"), None);
}

/// Range scans in both directions, with limits, and half-open range deletes.
pub async fn scans(disk: &impl Disk) {
    let mut batch = WriteBatch::default();
    for i in 0..10 {
        batch.put(key("s/", i), vec![i as u8]);
    }
    batch.put(b"s0".to_vec(), b"outside".to_vec());
    disk.write(batch, Durability::Sync).await.expect("write");
    let keys = |rows: Vec<(Vec<u8>, Vec<u8>)>| rows.into_iter().map(|(k, _)| k).collect::<Vec<_>>();
    let all = disk.scan(b"s/", b"s0", usize::MAX, false).expect("scan");
    assert_eq!(keys(all), (0..10).map(|i| key("s/", i)).collect::<Vec<_>>());
    let first3 = disk.scan(b"s/", b"s0", 3, false).expect("scan");
    assert_eq!(
        keys(first3),
        (0..3).map(|i| key("s/", i)).collect::<Vec<_>>()
    );
    let last2 = disk.scan(b"s/", b"s0", 2, true).expect("reverse scan");
    assert_eq!(
        keys(last2),
        vec![key("s/", 9), key("s/", 8)],
        "reverse scans start at the end"
    );
    let bounded = disk
        .scan(&key("s/", 2), &key("s/", 5), usize::MAX, true)
        .expect("scan");
    assert_eq!(
        keys(bounded),
        vec![key("s/", 4), key("s/", 3), key("s/", 2)],
        "`to` is excluded"
    );
    assert!(disk
        .scan(&key("s/", 5), &key("s/", 5), 10, false)
        .expect("scan")
        .is_empty());
    let mut batch = WriteBatch::default();
    batch.delete_range(key("s/", 3), key("s/", 7));
    disk.write(batch, Durability::Sync)
        .await
        .expect("delete range");
    let left = disk.scan(b"s/", b"s0", usize::MAX, false).expect("scan");
    assert_eq!(
        keys(left),
        [0, 1, 2, 7, 8, 9]
            .iter()
            .map(|i| key("s/", *i))
            .collect::<Vec<_>>(),
        "delete_range removes [from, to)"
    );
    assert_eq!(disk.get(b"s0").expect("get"), Some(b"outside".to_vec()));
}

/// A batch's puts and deletes become visible together.
pub async fn batches_are_atomic(disk: &impl Disk) {
    put(disk, b"b/old".to_vec(), b"x", Durability::Sync).await;
    let mut batch = WriteBatch::default();
    batch.put(b"b/new1".to_vec(), b"1".to_vec());
    batch.delete(b"b/old".to_vec());
    batch.put(b"b/new2".to_vec(), b"2".to_vec());
    disk.write(batch, Durability::Sync).await.expect("write");
    let rows = disk.scan(b"b/", b"b0", usize::MAX, false).expect("scan");
    assert_eq!(
        rows,
        vec![
            (b"b/new1".to_vec(), b"1".to_vec()),
            (b"b/new2".to_vec(), b"2".to_vec())
        ]
    );
}

/// A view reads the disk as it was when taken, whatever is written afterwards; a view of a
/// view reads the same.
pub async fn views_are_point_in_time(disk: &impl Disk) {
    put(disk, b"v/a".to_vec(), b"old", Durability::Buffered).await;
    put(disk, b"v/gone".to_vec(), b"here", Durability::Buffered).await;
    let view = disk.view().expect("view");
    put(disk, b"v/a".to_vec(), b"new", Durability::Sync).await;
    put(disk, b"v/b".to_vec(), b"added", Durability::Buffered).await;
    let mut batch = WriteBatch::default();
    batch.delete_range(b"v/g".to_vec(), b"v/h".to_vec());
    disk.write(batch, Durability::Buffered)
        .await
        .expect("delete");
    assert_eq!(view.get(b"v/a").expect("get"), Some(b"old".to_vec()));
    assert_eq!(view.get(b"v/b").expect("get"), None);
    let rows = view.scan(b"v/", b"v0", usize::MAX, false).expect("scan");
    assert_eq!(
        rows,
        vec![
            (b"v/a".to_vec(), b"old".to_vec()),
            (b"v/gone".to_vec(), b"here".to_vec())
        ],
        "a view saw a later write"
    );
    let again = view.view().expect("view of a view");
    assert_eq!(again.get(b"v/gone").expect("get"), Some(b"here".to_vec()));
    assert_eq!(disk.get(b"v/a").expect("get"), Some(b"new".to_vec()));
    assert_eq!(disk.get(b"v/gone").expect("get"), None);
}

/// `scan_bytes` stops at its row or byte bound, always returning at least one row.
pub async fn byte_bounded_scans(disk: &impl Disk) {
    let mut batch = WriteBatch::default();
    for i in 0..20 {
        batch.put(key("z/", i), vec![7; 100]);
    }
    disk.write(batch, Durability::Buffered)
        .await
        .expect("write");
    let by_rows = disk.scan_bytes(b"z/", b"z0", 5, usize::MAX).expect("scan");
    assert_eq!(by_rows.len(), 5);
    // Each row is 6 key bytes and 100 value bytes: 250 bytes hold two full rows and a
    // third that crosses the bound.
    let by_bytes = disk.scan_bytes(b"z/", b"z0", 100, 250).expect("scan");
    assert_eq!(by_bytes.len(), 3, "stops once the bytes reach the bound");
    let one = disk.scan_bytes(b"z/", b"z0", 100, 1).expect("scan");
    assert_eq!(one.len(), 1, "one row even if it alone passes the bound");
    let from_middle = disk
        .scan_bytes(&key("z/", 18), b"z0", 100, usize::MAX)
        .expect("scan");
    assert_eq!(
        from_middle.into_iter().map(|(k, _)| k).collect::<Vec<_>>(),
        vec![key("z/", 18), key("z/", 19)]
    );
    assert!(disk
        .scan_bytes(b"z0", b"z/", 10, 10)
        .expect("scan")
        .is_empty());
}

/// Everything written with `Sync` is there after a crash.
pub async fn synced_writes_survive_a_crash<H: DiskUnderTest>(harness: &mut H) {
    {
        let disk = harness.disk();
        for i in 0..50 {
            let mut batch = WriteBatch::default();
            batch.put(key("d/", i), vec![i as u8; 100]);
            if i > 0 {
                batch.delete(key("d/", i - 1));
            }
            disk.write(batch, Durability::Sync).await.expect("write");
        }
    }
    harness.crash_and_reopen().await;
    let disk = harness.disk();
    let rows = disk.scan(b"d/", b"d0", usize::MAX, false).expect("scan");
    assert_eq!(
        rows,
        vec![(key("d/", 49), vec![49; 100])],
        "synced writes lost in a crash"
    );
}

/// Buffered writes followed by `sync()` are all there after a crash.
pub async fn buffered_writes_survive_a_crash_after_sync<H: DiskUnderTest>(harness: &mut H) {
    {
        let disk = harness.disk();
        for i in 0..30 {
            put(&*disk, key("y/", i), b"then synced", Durability::Buffered).await;
        }
        disk.sync().await.expect("sync");
    }
    harness.crash_and_reopen().await;
    let disk = harness.disk();
    let rows = disk.scan(b"y/", b"y0", usize::MAX, false).expect("scan");
    assert_eq!(
        rows.len(),
        30,
        "sync() did not make earlier buffered writes durable"
    );
}

/// Unsynced writes may be lost, but only as a suffix: what survives is a prefix of them.
pub async fn buffered_writes_are_lost_only_as_a_suffix<H: DiskUnderTest>(harness: &mut H) {
    {
        let disk = harness.disk();
        put(&*disk, b"u/base".to_vec(), b"synced", Durability::Sync).await;
        for i in 0..40 {
            put(&*disk, key("u/", i), b"buffered", Durability::Buffered).await;
        }
    }
    harness.crash_and_reopen().await;
    let disk = harness.disk();
    assert_eq!(disk.get(b"u/base").expect("get"), Some(b"synced".to_vec()));
    let survivors: Vec<Vec<u8>> = disk
        .scan(b"u/0", b"u/9999", usize::MAX, false)
        .expect("scan")
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    let prefix: Vec<Vec<u8>> = (0..survivors.len() as u32).map(|i| key("u/", i)).collect();
    assert_eq!(
        survivors, prefix,
        "a crash kept a later buffered write but lost an earlier one"
    );
}
