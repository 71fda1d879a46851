//! `seedkv-sim`: runs one simulation seed in this process and prints one result line.
//!
//! Built with `--cfg madsim` by `cargo xtask sim`, which runs every seed in a fresh process
//! so that each replays alone, exactly.

use std::process::ExitCode;

use clap::Parser;

/// A simulation allocates and frees small objects at a high rate (futures, messages, timers);
/// mimalloc serves them faster than the system allocator and keeps its pages.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Run one seedkv simulation seed.
#[derive(Parser, Debug)]
#[command(name = "seedkv-sim")]
struct Args {
    /// Scenario: basic, partition, crash-restart, lossy-net, membership or mixed.
    #[arg(long)]
    scenario: String,
    /// The seed.
    #[arg(long)]
    seed: u64,
    /// Cluster size.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=7))]
    nodes: u64,
    /// Data groups besides the meta group, each with a replica on every node.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=64))]
    groups: u32,
    /// Replicas per data group (0: every node).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=7))]
    replicas: u32,
    /// Read replicas (`--role replica`: learners of every group) beside the members.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=2))]
    read_replicas: u64,
    /// Concurrent clients.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=64))]
    clients: u64,
    /// Size of the key space.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=1000))]
    keys: u64,
    /// Each client pauses a uniform 0..think-ms milliseconds between operations.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(0..=10_000))]
    think_ms: u64,
    /// Virtual seconds of load.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=3600))]
    duration_s: u64,
    /// Turn on a deliberate safety bug: vote-not-persisted, ack-before-commit,
    /// stale-linearizable-read, duplicate-writes, membership-without-compare,
    /// blank-disk-votes or truncated-write-resent-as-new. Repeatable.
    #[arg(long = "fault")]
    faults: Vec<String>,
    /// Write the recorded history here (seedkv history format).
    #[arg(long)]
    history_out: Option<std::path::PathBuf>,
    /// Print every fault as it happens.
    #[arg(long)]
    verbose: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("seedkv-sim: {message}");
            ExitCode::from(2)
        }
    }
}

#[cfg(not(madsim))]
fn run(_args: Args) -> Result<ExitCode, String> {
    Err("this binary must be built with RUSTFLAGS=\"--cfg madsim\"; run it through `cargo xtask sim`".into())
}

#[cfg(madsim)]
fn run(args: Args) -> Result<ExitCode, String> {
    use seedkv_core::faults::{self, Fault};
    use seedkv_sim_tests::run::{run, RunConfig};
    use seedkv_sim_tests::scenario::Scenario;
    use seedkv_sim_tests::workload::WorkloadConfig;
    use std::time::Duration;

    let scenario: Scenario = args.scenario.parse()?;
    let mut enabled = Vec::new();
    for name in &args.faults {
        let fault = Fault::from_name(name).ok_or_else(|| {
            let names: Vec<&str> = Fault::ALL.iter().map(|(_, n)| *n).collect();
            format!(
                "unknown fault {name:?}; expected one of {}",
                names.join(", ")
            )
        })?;
        enabled.push(fault);
    }
    let config = RunConfig {
        scenario,
        nodes: args.nodes as usize,
        groups: args.groups,
        replicas: args.replicas,
        read_replicas: args.read_replicas as usize,
        workload: WorkloadConfig {
            clients: args.clients as usize,
            keys: args.keys as usize,
            duration: Duration::from_secs(args.duration_s),
            think_ms: args.think_ms,
        },
        converge_timeout: Duration::from_secs(60),
        verbose: args.verbose,
        plan: None,
    };
    // Wall time is read outside the runtime, where the clock is real.
    let wall_start = std::time::Instant::now();
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let runtime =
        madsim::runtime::Runtime::with_seed_and_config(args.seed, madsim::Config::default());
    let report = runtime.block_on(async move {
        for fault in enabled {
            faults::enable(fault);
        }
        run(config).await
    });
    let wall_s = wall_start.elapsed().as_secs_f64();
    if let Some(path) = &args.history_out {
        let mut text = String::new();
        for record in &report.history {
            let line = serde_json::to_string(record).map_err(|e| e.to_string())?;
            text.push_str(&line);
            text.push('\n');
        }
        std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    println!(
        "seed={} scenario={} ops={} unknown={} virtual_s={:.1} wall_s={:.2} msgs={}/{} fingerprint={:016x} {}",
        args.seed,
        scenario,
        report.ops,
        report.unknown_ops,
        report.virtual_s,
        wall_s,
        report.messages.0,
        report.messages.1,
        report.fingerprint,
        if report.failure.is_none() { "ok" } else { "FAIL" }
    );
    match report.failure {
        None => Ok(ExitCode::SUCCESS),
        Some(why) => {
            println!("  failure: {why}");
            Ok(ExitCode::from(1))
        }
    }
}
