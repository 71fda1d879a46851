//! The simulated disk against the storage conformance suite, crashes included.
#![cfg(madsim)]

use std::sync::Arc;

use seedkv_core::conformance::{self, DiskUnderTest};
use seedkv_io_sim::{DiskConfig, SimDisk, SimDiskHandle};

struct Sim {
    disk: SimDisk,
    handle: Arc<SimDiskHandle>,
}

impl DiskUnderTest for Sim {
    type Disk = SimDiskHandle;

    fn disk(&self) -> Arc<SimDiskHandle> {
        self.handle.clone()
    }

    async fn crash_and_reopen(&mut self) {
        self.disk.crash();
        self.handle = self.disk.open();
    }
}

#[madsim::test]
async fn the_simulated_disk_passes_the_conformance_suite() {
    // Many seeds, so crashes tear the unsynced tail at many different points.
    for _ in 0..20 {
        let disk = SimDisk::new(DiskConfig::default());
        let handle = disk.open();
        conformance::run_all(&mut Sim { disk, handle }).await;
    }
}
