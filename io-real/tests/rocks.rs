//! RocksDB against the storage conformance suite, and ownership of the data directory.

use std::path::PathBuf;
use std::sync::Arc;

use seedkv_core::conformance::{self, DiskUnderTest};
use seedkv_io_real::{Identity, OpenError, RocksDisk};

fn identity(node_id: u64) -> Identity {
    Identity {
        node_id,
        cluster: "test".into(),
    }
}

struct Rocks {
    dir: PathBuf,
    disk: Option<Arc<RocksDisk>>,
}

impl DiskUnderTest for Rocks {
    type Disk = RocksDisk;

    fn disk(&self) -> Arc<RocksDisk> {
        self.disk.clone().expect("disk is open")
    }

    async fn crash_and_reopen(&mut self) {
        // Drop without flushing: the memtable is gone, only the WAL and SSTs remain.
        let disk = self.disk.take().expect("disk is open");
        assert_eq!(Arc::strong_count(&disk), 1, "a handle outlived the crash");
        drop(disk);
        self.disk = Some(Arc::new(
            RocksDisk::open(&self.dir, &identity(1)).expect("reopen"),
        ));
    }
}

#[tokio::test]
async fn rocksdb_passes_the_conformance_suite() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().join("data");
    let disk = RocksDisk::open(&dir, &identity(1)).expect("open");
    let mut harness = Rocks {
        dir,
        disk: Some(Arc::new(disk)),
    };
    conformance::run_all(&mut harness).await;
}

#[test]
fn a_second_opener_is_refused_while_the_first_holds_the_directory() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().join("data");
    let _first = RocksDisk::open(&dir, &identity(1)).expect("open");
    match RocksDisk::open(&dir, &identity(1)) {
        Err(err @ OpenError::Locked { .. }) => {
            assert!(err.to_string().contains("in use by another seedkv process"))
        }
        Err(other) => panic!("expected Locked, got {other}"),
        Ok(_) => panic!("a second opener was allowed"),
    }
}

#[test]
fn a_directory_of_another_node_or_cluster_is_refused_and_kept() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().join("data");
    drop(RocksDisk::open(&dir, &identity(1)).expect("open"));
    match RocksDisk::open(&dir, &identity(2)) {
        Err(err @ OpenError::WrongOwner { .. }) => {
            assert!(err.to_string().contains("belongs to node 1"), "{err}")
        }
        Err(other) => panic!("expected WrongOwner, got {other}"),
        Ok(_) => panic!("node 2 opened node 1's directory"),
    }
    let other_cluster = Identity {
        node_id: 1,
        cluster: "elsewhere".into(),
    };
    assert!(matches!(
        RocksDisk::open(&dir, &other_cluster),
        Err(OpenError::WrongOwner { .. })
    ));
    // Refusing wrote nothing: the rightful owner still opens it.
    RocksDisk::open(&dir, &identity(1)).expect("owner reopens");
}

#[test]
fn foreign_and_corrupt_directories_are_refused() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let foreign = tmp.path().join("foreign");
    std::fs::create_dir_all(&foreign).expect("mkdir");
    std::fs::write(foreign.join("notes.txt"), b"mine").expect("write");
    match RocksDisk::open(&foreign, &identity(1)) {
        Err(OpenError::Corrupt { reason, .. }) => assert!(reason.contains("no seedkv database")),
        Err(other) => panic!("expected Corrupt, got {other}"),
        Ok(_) => panic!("opened a foreign directory"),
    }
    assert_eq!(
        std::fs::read_dir(&foreign).expect("ls").count(),
        1,
        "wrote into it"
    );

    let dir = tmp.path().join("data");
    drop(RocksDisk::open(&dir, &identity(1)).expect("open"));
    std::fs::write(dir.join("db").join("CURRENT"), b"garbage\n").expect("corrupt");
    match RocksDisk::open(&dir, &identity(1)) {
        Err(err @ OpenError::Corrupt { .. }) => assert!(err.to_string().contains("corrupt")),
        Err(other) => panic!("expected Corrupt, got {other}"),
        Ok(_) => panic!("opened a corrupt database"),
    }
}

mod random_sequences {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use proptest::prelude::*;
    use seedkv_core::storage::{Disk, DiskRead, Durability, WriteBatch};
    use seedkv_io_real::RocksDisk;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// Random writes, some synced, with a drop-without-flush reopen at a random point:
        /// afterwards the disk holds exactly what the model says, and never less than what was
        /// synced.
        #[test]
        fn random_writes_with_a_crash_point(
            writes in prop::collection::vec((0u8..6, prop::option::of(0u8..4), any::<bool>()), 1..40),
            crash_at in any::<prop::sample::Index>(),
        ) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            runtime.block_on(async {
                let tmp = tempfile::tempdir().expect("temp dir");
                let dir = tmp.path().join("data");
                let identity = super::identity(1);
                let mut disk = Arc::new(RocksDisk::open(&dir, &identity).expect("open"));
                let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
                let crash = crash_at.index(writes.len());
                for (i, (key, value, sync)) in writes.iter().enumerate() {
                    if i == crash {
                        drop(disk);
                        disk = Arc::new(RocksDisk::open(&dir, &identity).expect("reopen"));
                    }
                    let key = vec![b'k', *key];
                    let mut batch = WriteBatch::default();
                    match value {
                        Some(v) => {
                            batch.put(key.clone(), vec![*v]);
                            model.insert(key, vec![*v]);
                        }
                        None => {
                            batch.delete(key.clone());
                            model.remove(&key);
                        }
                    }
                    let durability = if *sync { Durability::Sync } else { Durability::Buffered };
                    disk.write(batch, durability).await.expect("write");
                }
                drop(disk);
                let disk = RocksDisk::open(&dir, &identity).expect("final reopen");
                let rows = disk.scan(b"k", b"l", usize::MAX, false).expect("scan");
                let got: BTreeMap<Vec<u8>, Vec<u8>> = rows.into_iter().collect();
                // A process drop keeps RocksDB's WAL (only power loss could cut it), so every
                // acknowledged write is there.
                assert_eq!(got, model);
            });
        }
    }
}

#[tokio::test]
async fn a_diskless_database_keeps_everything_in_memory() {
    use seedkv_core::storage::{Disk, DiskRead, Durability, WriteBatch};
    let disk = RocksDisk::open_in_memory(&identity(4)).expect("open in memory");
    let mut batch = WriteBatch::default();
    batch.put(b"k1".to_vec(), b"v1".to_vec());
    batch.put(b"k2".to_vec(), b"v2".to_vec());
    disk.write(batch, Durability::Sync).await.expect("write");
    let view = disk.view().expect("view");
    let mut later = WriteBatch::default();
    later.delete(b"k1".to_vec());
    disk.write(later, Durability::Buffered)
        .await
        .expect("write");
    assert_eq!(disk.get(b"k1").expect("get"), None);
    assert_eq!(view.get(b"k1").expect("get"), Some(b"v1".to_vec()));
    assert_eq!(disk.scan(b"k", b"l", 10, false).expect("scan").len(), 1);
    disk.sync().await.expect("sync");
    for file in ["CURRENT", "LOCK", "IDENTITY", "LOG"] {
        let path = disk.dir().join(file);
        assert!(
            !path.exists(),
            "a diskless database wrote {} on the machine's disk",
            path.display()
        );
    }
    // A second one in the same process is a separate, empty database.
    let other = RocksDisk::open_in_memory(&identity(5)).expect("open in memory");
    assert_eq!(other.get(b"k2").expect("get"), None);
}
