//! The fuzzer chooses the fault schedule: a short simulated run of the real seedkv cluster
//! (madsim, simulated disks) follows the partitions, crashes, losses and delays the input
//! encodes, then must converge and produce a linearizable history. Coverage guidance steers
//! the schedule toward code the seeds never reached.
//!
//! Build and run with `--cfg madsim` (see `cargo xtask fuzz scenario`).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[cfg(madsim)]
fn plan(bytes: &[u8]) -> Vec<seedkv_sim_tests::nemesis::PlannedFault> {
    use seedkv_sim_tests::nemesis::{Action, PlannedFault};
    bytes
        .chunks_exact(3)
        .take(24)
        .map(|step| {
            let [wait, kind, arg] = [step[0], step[1], step[2]];
            let a = usize::from(arg & 0x0f);
            let b = usize::from(arg >> 4);
            let action = match kind % 8 {
                0 => Action::Isolate(a),
                1 => Action::Split(vec![a, b]),
                2 => Action::CutOneWay(a, b),
                3 => Action::PacketLoss(f64::from(arg) / 512.0),
                4 => Action::LatencyMs(u64::from(arg) * 2),
                5 => Action::Kill(a),
                6 => Action::Restart(a),
                _ => Action::Heal,
            };
            PlannedFault {
                after_ms: u64::from(wait) * 20,
                action,
            }
        })
        .collect()
}

#[cfg(madsim)]
fuzz_target!(|data: &[u8]| {
    use std::time::Duration;

    use seedkv_sim_tests::run::{run, RunConfig};
    use seedkv_sim_tests::scenario::Scenario;
    use seedkv_sim_tests::workload::WorkloadConfig;

    let Some((seed, schedule)) = data.split_first_chunk::<8>() else {
        return;
    };
    let seed = u64::from_le_bytes(*seed);
    let config = RunConfig {
        scenario: Scenario::Mixed,
        nodes: 3,
        groups: 2,
        replicas: 0,
        read_replicas: 0,
        workload: WorkloadConfig {
            clients: 3,
            keys: 4,
            duration: Duration::from_secs(4),
            think_ms: 50,
        },
        converge_timeout: Duration::from_secs(60),
        verbose: false,
        plan: Some(plan(schedule)),
    };
    let runtime = madsim::runtime::Runtime::with_seed_and_config(seed, madsim::Config::default());
    // SEEDKV_FUZZ_FAULT=NAME switches on a deliberate safety bug, to show the target bites.
    let fault = std::env::var("SEEDKV_FUZZ_FAULT").ok().map(|name| {
        seedkv_core::faults::Fault::from_name(&name)
            .unwrap_or_else(|| panic!("unknown fault {name:?} in SEEDKV_FUZZ_FAULT"))
    });
    let report = runtime.block_on(async move {
        if let Some(fault) = fault {
            seedkv_core::faults::enable(fault);
        }
        run(config).await
    });
    if let Some(why) = report.failure {
        panic!("seed {seed} with plan {:?}: {why}", plan(schedule));
    }
});

#[cfg(not(madsim))]
fuzz_target!(|_data: &[u8]| {
    panic!("the scenario target must be built with RUSTFLAGS=\"--cfg madsim\"");
});
