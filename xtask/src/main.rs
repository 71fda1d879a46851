//! `cargo xtask`: the project's command runner.
//!
//! - `sim`: build the simulation once (its own target dir) and run seeds, each in a fresh
//!   process so that it replays alone, exactly;
//! - `bites`: prove the simulation catches deliberate safety bugs;
//! - `test`: the whole test suite, as CI runs it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};

mod groups;
mod handover;
mod moves;
mod ops;
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "seedkv's command runner")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Run simulation seeds.
    Sim(SimArgs),
    /// Show that each deliberate safety bug makes a sweep fail, and that the failing seed replays.
    Bites(BitesArgs),
    /// The full test suite: unit and integration tests, lints, simulation sweeps.
    Test(TestArgs),
    /// Install the system packages the build needs (librocksdb-dev, libclang).
    Setup,
    /// Run the same workloads against a 3-member etcd and a 3-node seedkv on loopback, side
    /// by side; print the table and write target/bench/vs-etcd.json.
    BenchVsEtcd {
        /// Measured seconds per workload and store.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// Warm-up seconds before each measurement.
        #[arg(long, default_value_t = 2.0)]
        warmup: f64,
    },
    /// Run the fuzz targets (all, or one) for a while each; installs cargo-fuzz if missing.
    Fuzz {
        /// request, storage, checker or scenario (default: all of them).
        target: Option<String>,
        /// Seconds per target.
        #[arg(long, default_value_t = 30)]
        seconds: u64,
    },
    /// Set up, build (release) and start `seedkv server`; arguments after `--` go to it.
    Server {
        /// Arguments for `seedkv server`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Time `seedkv check-history` (release) on every reference history in
    /// ../shared/checker-data and on generated hard ones; print a table.
    CheckerTimes,
    /// Stop a 3-node cluster's leader under load, round after round, with SIGTERM (it hands
    /// leadership over) and with SIGKILL; print how fast another node leads.
    Handover {
        /// Stops of each kind.
        #[arg(long, default_value_t = 10)]
        rounds: usize,
    },
    /// What operating a node costs: HTTP gateway puts against gRPC puts on one node (wrk
    /// and `seedkv bench`, 64 connections), and the CPU of scraping `/metrics` every second.
    MeasureOps {
        /// Seconds of puts per row.
        #[arg(long, default_value_t = 10)]
        bench_s: u64,
        /// Seconds of each CPU window, without and with scrapes.
        #[arg(long, default_value_t = 60)]
        window_s: u64,
    },
    /// What moving one slot (10,000 keys of 256 B) costs a loaded 3-node cluster: the
    /// 64-client mixed throughput before and during the move, and the longest write to the
    /// moving slot.
    MeasureMove {
        /// Seconds of each load.
        #[arg(long, default_value_t = 15.0)]
        bench_s: f64,
    },
    /// What many Raft groups cost a release 3-node cluster: idle CPU of its processes, and
    /// puts/s of 64 clients, per data group count.
    MeasureGroups {
        /// Group counts whose idle CPU is measured, comma-separated.
        #[arg(long, value_delimiter = ',', default_values_t = [3u32, 32, 128])]
        idle: Vec<u32>,
        /// Group counts whose put throughput is measured, comma-separated.
        #[arg(long, value_delimiter = ',', default_values_t = [1u32, 3, 32])]
        puts: Vec<u32>,
        /// Seconds of idle measured.
        #[arg(long, default_value_t = 10)]
        idle_s: u64,
        /// Seconds of puts per row.
        #[arg(long, default_value_t = 10.0)]
        bench_s: f64,
    },
    /// Measure the release server: binary size, idle RSS, and a scale table (one node per key
    /// count: load rate, 64-client puts, RSS, disk, restart to the first linearizable read),
    /// then a fourth node catching up by snapshot with a 3-node cluster.
    Measure {
        /// Key counts of the scale table (256-byte values), comma-separated.
        #[arg(long, value_delimiter = ',', default_values_t = [10_000u64, 1_000_000, 10_000_000])]
        keys: Vec<u64>,
        /// Keys the 3-node cluster holds when the fourth node joins (0: skip that part).
        #[arg(long, default_value_t = 2_000_000)]
        catch_up_keys: u64,
        /// Seconds of 64-client puts per row.
        #[arg(long, default_value_t = 10.0)]
        bench_s: f64,
    },
}

#[derive(Args, Clone)]
struct SimArgs {
    /// basic, partition, crash-restart, lossy-net, membership or mixed.
    #[arg(long)]
    scenario: String,
    /// A range of seeds, `A..B` (B excluded).
    #[arg(long, conflicts_with = "seed", required_unless_present = "seed")]
    seeds: Option<String>,
    /// One seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Cluster size (3 or 5).
    #[arg(long, default_value_t = 3)]
    nodes: u64,
    /// Data groups besides the meta group (each with a replica on every node).
    #[arg(long, default_value_t = 3)]
    groups: u64,
    /// Replicas per data group (every node when not given).
    #[arg(long)]
    replicas: Option<u64>,
    /// Read replicas (learners of every group) beside the nodes.
    #[arg(long)]
    read_replicas: Option<u64>,
    /// Concurrent clients.
    #[arg(long)]
    clients: Option<u64>,
    /// Virtual seconds of load per seed.
    #[arg(long)]
    duration_s: Option<u64>,
    /// Deliberate safety bug to switch on (see `bites`). Repeatable.
    #[arg(long = "fault")]
    faults: Vec<String>,
    /// Run every seed twice, in fresh processes, and require identical fingerprints.
    #[arg(long)]
    twice: bool,
    /// Seeds run at once (default: the number of cores).
    #[arg(long)]
    jobs: Option<usize>,
    /// Stop at the first failing seed.
    #[arg(long)]
    fail_fast: bool,
    /// Print each fault as it happens (single seed).
    #[arg(long)]
    verbose: bool,
}

#[derive(Args)]
struct BitesArgs {
    /// Most seeds to try per bug.
    #[arg(long, default_value_t = 200)]
    max_seeds: u64,
}

#[derive(Args)]
struct TestArgs {
    /// Seeds of the `mixed` sweep (5 nodes).
    #[arg(long, default_value_t = 200)]
    sim_seeds: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Task::Sim(args) => sim(&args).map(|summary| summary.failed == 0),
        Task::Bites(args) => bites(&args),
        Task::Test(args) => test(&args),
        Task::Setup => install_system_packages().map(|()| true),
        Task::BenchVsEtcd { duration, warmup } => bench_vs_etcd(duration, warmup),
        Task::Fuzz { target, seconds } => {
            fuzz(target.as_deref(), seconds).map(|(_, failed)| failed == 0)
        }
        Task::Server { args } => server(&args),
        Task::CheckerTimes => checker_times(),
        Task::Handover { rounds } => handover::handover(rounds),
        Task::MeasureOps { bench_s, window_s } => ops::measure_ops(bench_s, window_s),
        Task::MeasureMove { bench_s } => moves::measure_move(bench_s),
        Task::MeasureGroups {
            idle,
            puts,
            idle_s,
            bench_s,
        } => groups::measure_groups(&idle, &puts, idle_s, bench_s),
        Task::Measure {
            keys,
            catch_up_keys,
            bench_s,
        } => measure(&keys, catch_up_keys, bench_s),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("xtask: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(Path::to_path_buf).unwrap_or(manifest)
}

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(root());
    cmd
}

/// Cargo for the simulation build: `--cfg madsim`, its own target dir.
fn sim_cargo() -> Command {
    let mut cmd = cargo();
    cmd.env("RUSTFLAGS", "--cfg madsim")
        .env("CARGO_TARGET_DIR", root().join("target").join("sim"));
    cmd
}

/// Runs `cmd` with its output discarded; true if it exited successfully.
fn succeeds_quietly(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

fn run_checked(mut cmd: Command, what: &str) -> Result<()> {
    eprintln!("==> {what}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot start: {what}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

/// Builds the simulation binary once, with `--cfg madsim`, in `target/sim`.
fn build_sim() -> Result<PathBuf> {
    let mut cmd = sim_cargo();
    cmd.args([
        "build",
        "--profile",
        "sim",
        "-p",
        "seedkv-sim-tests",
        "--bin",
        "seedkv-sim",
    ]);
    run_checked(cmd, "build the simulation (--cfg madsim, target/sim)")?;
    Ok(root()
        .join("target")
        .join("sim")
        .join("sim")
        .join("seedkv-sim"))
}

fn parse_seeds(args: &SimArgs) -> Result<Vec<u64>> {
    if let Some(seed) = args.seed {
        return Ok(vec![seed]);
    }
    let text = args.seeds.as_deref().unwrap_or_default();
    let (from, to) = text
        .split_once("..")
        .with_context(|| format!("--seeds wants A..B, got {text:?}"))?;
    let from: u64 = from
        .trim()
        .parse()
        .with_context(|| format!("bad seed {from:?}"))?;
    let to: u64 = to
        .trim()
        .parse()
        .with_context(|| format!("bad seed {to:?}"))?;
    if from >= to {
        bail!("--seeds {text}: the range is empty");
    }
    Ok((from..to).collect())
}

/// The command that replays one seed exactly.
fn replay_command(args: &SimArgs, seed: u64) -> String {
    let mut line = format!(
        "cargo xtask sim --scenario {} --seed {seed} --nodes {} --groups {}",
        args.scenario, args.nodes, args.groups
    );
    if let Some(read_replicas) = args.read_replicas {
        line.push_str(&format!(" --read-replicas {read_replicas}"));
    }
    if let Some(replicas) = args.replicas {
        line.push_str(&format!(" --replicas {replicas}"));
    }
    if let Some(clients) = args.clients {
        line.push_str(&format!(" --clients {clients}"));
    }
    if let Some(duration) = args.duration_s {
        line.push_str(&format!(" --duration-s {duration}"));
    }
    for fault in &args.faults {
        line.push_str(&format!(" --fault {fault}"));
    }
    line
}

struct SeedRun {
    line: String,
    detail: String,
    ok: bool,
    fingerprint: Option<String>,
    virtual_s: f64,
    wall_s: f64,
}

fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|part| part.strip_prefix(name)?.strip_prefix('='))
}

fn run_seed(binary: &Path, args: &SimArgs, seed: u64) -> SeedRun {
    let mut cmd = Command::new(binary);
    cmd.args(["--scenario", &args.scenario, "--seed", &seed.to_string()])
        .args(["--nodes", &args.nodes.to_string()])
        .args(["--groups", &args.groups.to_string()])
        .stdin(Stdio::null());
    if let Some(read_replicas) = args.read_replicas {
        cmd.args(["--read-replicas", &read_replicas.to_string()]);
    }
    if let Some(replicas) = args.replicas {
        cmd.args(["--replicas", &replicas.to_string()]);
    }
    if let Some(clients) = args.clients {
        cmd.args(["--clients", &clients.to_string()]);
    }
    if let Some(duration) = args.duration_s {
        cmd.args(["--duration-s", &duration.to_string()]);
    }
    for fault in &args.faults {
        cmd.args(["--fault", fault]);
    }
    if args.verbose {
        cmd.arg("--verbose").stderr(Stdio::inherit());
    }
    let output = match cmd.output() {
        Ok(output) => output,
        Err(err) => {
            return SeedRun {
                line: format!("seed={seed} scenario={} FAIL", args.scenario),
                detail: format!("  cannot run {}: {err}", binary.display()),
                ok: false,
                fingerprint: None,
                virtual_s: 0.0,
                wall_s: 0.0,
            }
        }
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let mut lines = stdout.lines();
    let line = lines.next().unwrap_or_default().to_string();
    let mut detail: Vec<String> = lines.map(str::to_string).collect();
    let ok = output.status.success() && line.ends_with(" ok");
    if !ok && !output.status.success() && !line.starts_with("seed=") {
        // Crashed before printing its line: a panic is a failure like any other.
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(15).collect();
        detail.extend(tail.into_iter().rev().map(|l| format!("  {l}")));
        return SeedRun {
            line: format!(
                "seed={seed} scenario={} crashed ({}) FAIL",
                args.scenario, output.status
            ),
            detail: detail.join("\n"),
            ok: false,
            fingerprint: None,
            virtual_s: 0.0,
            wall_s: 0.0,
        };
    }
    SeedRun {
        fingerprint: field(&line, "fingerprint").map(str::to_string),
        virtual_s: field(&line, "virtual_s")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0),
        wall_s: field(&line, "wall_s")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0),
        line,
        detail: detail.join("\n"),
        ok,
    }
}

struct Summary {
    passed: u64,
    failed: u64,
    first_failure: Option<(u64, Option<String>)>,
    virtual_s: f64,
    wall_s: f64,
}

fn sim(args: &SimArgs) -> Result<Summary> {
    let binary = build_sim()?;
    sweep(&binary, args)
}

fn sweep(binary: &Path, args: &SimArgs) -> Result<Summary> {
    let seeds = parse_seeds(args)?;
    let jobs = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
        .max(1);
    let queue = Arc::new(Mutex::new(seeds.clone().into_iter()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (tx, rx) = mpsc::channel::<(u64, SeedRun, Option<SeedRun>)>();
    let mut workers = Vec::new();
    for _ in 0..jobs {
        let queue = queue.clone();
        let tx = tx.clone();
        let stop = stop.clone();
        let binary = binary.to_path_buf();
        let args = args.clone();
        // Workers only launch and wait on child processes; each seed runs in its own.
        #[allow(clippy::disallowed_methods)]
        workers.push(std::thread::spawn(move || loop {
            if stop.load(std::sync::atomic::Ordering::Relaxed) {
                break;
            }
            let next = queue.lock().map(|mut q| q.next()).unwrap_or(None);
            let Some(seed) = next else { break };
            let first = run_seed(&binary, &args, seed);
            let second = args.twice.then(|| run_seed(&binary, &args, seed));
            if tx.send((seed, first, second)).is_err() {
                break;
            }
        }));
    }
    drop(tx);
    let mut pending: BTreeMap<u64, (SeedRun, Option<SeedRun>)> = BTreeMap::new();
    let mut order = seeds.iter().copied().peekable();
    let mut summary = Summary {
        passed: 0,
        failed: 0,
        first_failure: None,
        virtual_s: 0.0,
        wall_s: 0.0,
    };
    for (seed, first, second) in rx {
        pending.insert(seed, (first, second));
        while let Some(next) = order.peek().copied() {
            let Some((first, second)) = pending.remove(&next) else {
                break;
            };
            order.next();
            let mut ok = first.ok;
            println!("{}", first.line);
            if !first.detail.is_empty() {
                println!("{}", first.detail);
            }
            if let Some(second) = second {
                if second.fingerprint != first.fingerprint || second.ok != first.ok {
                    ok = false;
                    println!("  not deterministic: second run gave {}", second.line);
                } else {
                    println!("  replayed: same fingerprint");
                }
            }
            summary.virtual_s += first.virtual_s;
            summary.wall_s += first.wall_s;
            if ok {
                summary.passed += 1;
            } else {
                summary.failed += 1;
                println!("  replay: {}", replay_command(args, next));
                if summary.first_failure.is_none() {
                    summary.first_failure = Some((next, first.fingerprint.clone()));
                }
                if args.fail_fast {
                    stop.store(true, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
        if args.fail_fast && summary.failed > 0 {
            break;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for worker in workers {
        let _ = worker.join();
    }
    if summary.wall_s > 0.0 {
        println!(
            "simulated {:.0} s in {:.1} s of seed wall time: {:.0}x real time",
            summary.virtual_s,
            summary.wall_s,
            summary.virtual_s / summary.wall_s
        );
    }
    println!("{} passed, {} failed", summary.passed, summary.failed);
    Ok(summary)
}

/// Each deliberate bug, with the scenario and cluster size its sweep runs at: a membership
/// change without its compare can only lose an acknowledged change when a stale read names
/// other voters that still exist, which takes five nodes; the lease bugs need clocks that
/// drift, leaders cut off while replicas are asked to stand, and restarts; the last number
/// is the read replicas beside the nodes.
const BUGS: [(&str, &str, u64, u64); 14] = [
    ("vote-not-persisted", "mixed", 3, 0),
    ("ack-before-commit", "mixed", 3, 0),
    ("stale-linearizable-read", "mixed", 3, 0),
    ("duplicate-writes", "mixed", 3, 0),
    ("membership-without-compare", "mixed", 5, 0),
    ("blank-disk-votes", "mixed", 3, 0),
    // Raft's figure 8, which the truncation needs, takes five voters.
    ("truncated-write-resent-as-new", "mixed", 5, 0),
    ("lease-without-drift-margin", "clock", 3, 0),
    ("lease-kept-on-higher-vote", "clock", 3, 0),
    ("lease-in-resumed-term", "mixed", 3, 0),
    // A diskless read replica restarted blank, updated in place.
    ("learner-replaced-in-place", "mixed", 3, 1),
    // Slot moves: the source serving a frozen slot, the destination activating before it
    // holds the copy, a late grant taking back a slot given away.
    ("source-serves-frozen", "migration", 3, 0),
    ("activate-before-copied", "migration", 3, 0),
    ("stale-epoch-accepted", "migration", 3, 0),
];

/// For each deliberate bug: a sweep of its scenario must fail within `max_seeds`, and the failing
/// seed must fail again with the same fingerprint when replayed alone.
fn bites(args: &BitesArgs) -> Result<bool> {
    let binary = build_sim()?;
    let mut all_bite = true;
    for (bug, scenario, nodes, read_replicas) in BUGS {
        let sweep_args = SimArgs {
            scenario: scenario.into(),
            seeds: Some(format!("0..{}", args.max_seeds)),
            seed: None,
            nodes,
            groups: 3,
            replicas: None,
            read_replicas: (read_replicas > 0).then_some(read_replicas),
            clients: None,
            duration_s: None,
            faults: vec![bug.into()],
            twice: false,
            jobs: None,
            fail_fast: true,
            verbose: false,
        };
        println!(
            "--- fault {bug}: sweeping {scenario} seeds 0..{}",
            args.max_seeds
        );
        let summary = sweep(&binary, &sweep_args)?;
        let Some((seed, fingerprint)) = summary.first_failure else {
            println!("fault {bug}: NOT caught within {} seeds", args.max_seeds);
            all_bite = false;
            continue;
        };
        let replay = run_seed(&binary, &sweep_args, seed);
        let replays = !replay.ok && replay.fingerprint == fingerprint;
        println!(
            "fault {bug}: caught at seed {seed}; replay {} ({})",
            if replays {
                "fails again with the same fingerprint"
            } else {
                "DIFFERS"
            },
            replay_command(&sweep_args, seed)
        );
        all_bite &= replays;
    }
    let caught = if all_bite { BUGS.len() } else { 0 };
    println!("{} passed, {} failed", caught, BUGS.len() - caught);
    Ok(all_bite)
}

/// Debian packages the build and tests need: RocksDB to link against, libclang for its
/// bindings; curl and promtool (in `prometheus`) to drive the HTTP side from outside.
const APT_PACKAGES: [&str; 6] = [
    "librocksdb-dev",
    "libclang1-14",
    "libclang-common-14-dev",
    "curl",
    "prometheus",
    "python3-venv",
];

/// The Python packages of the foreign gRPC client the tests call seedkv with, pinned.
const PYTHON_PACKAGES: [&str; 4] = [
    "grpcio==1.85.3",
    "grpcio-health-checking==1.85.1",
    "grpcio-reflection==1.85.1",
    "protobuf==7.36.2",
];

/// The Python virtual environment holding [`PYTHON_PACKAGES`].
fn python_env() -> PathBuf {
    root().join("target").join("pyenv")
}

/// Creates [`python_env`] with [`PYTHON_PACKAGES`] unless it already imports them; returns
/// its interpreter.
fn install_python_packages() -> Result<PathBuf> {
    let python = python_env().join("bin").join("python");
    let ready = Command::new(&python)
        .args(["-c", "import grpc, grpc_health.v1, grpc_reflection.v1alpha"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if ready {
        return Ok(python);
    }
    let mut venv = Command::new("python3");
    venv.args(["-m", "venv"]).arg(python_env());
    run_checked(venv, "python3 -m venv target/pyenv")?;
    let mut pip = Command::new(&python);
    pip.args(["-m", "pip", "install", "-q"])
        .args(PYTHON_PACKAGES);
    run_checked(
        pip,
        "pip install grpcio grpcio-health-checking grpcio-reflection",
    )?;
    Ok(python)
}

/// Installs the system packages the build needs, if any is missing.
fn install_system_packages() -> Result<()> {
    install_packages(&APT_PACKAGES)
}

/// Installs the Debian `packages` that are missing, with apt.
fn install_packages(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|package| {
            !Command::new("dpkg")
                .args(["-s", package])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|status| status.success())
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let sudo: &[&str] = if std::env::var("USER").is_ok_and(|u| u == "root")
        || Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.starts_with(b"0"))
    {
        &[]
    } else {
        &["sudo"]
    };
    let apt = |args: &[&str]| {
        let mut cmd = Command::new(sudo.first().copied().unwrap_or("apt-get"));
        if !sudo.is_empty() {
            cmd.arg("apt-get");
        }
        cmd.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        cmd
    };
    run_checked(apt(&["update", "-qq"]), "apt-get update")?;
    let mut install = apt(&["install", "-y", "-qq", "--no-install-recommends"]);
    install.args(&missing);
    run_checked(install, &format!("apt-get install {}", missing.join(" ")))
}

/// Everything CI runs. Ends with one line totalling the simulation seeds and checks.
fn test(args: &TestArgs) -> Result<bool> {
    install_system_packages()?;
    let mut fmt = cargo();
    fmt.args(["fmt", "--all", "--", "--check"]);
    run_checked(fmt, "cargo fmt --check")?;
    // One profile (dev) for lints and tests, so native dependencies build once.
    let mut clippy = cargo();
    clippy.args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]);
    run_checked(clippy, "cargo clippy -D warnings")?;
    let python = install_python_packages()?;
    let mut tests = cargo();
    tests
        .args(["test", "--workspace"])
        .env("SEEDKV_TEST_PYTHON", python);
    run_checked(tests, "unit and integration tests (cargo test --workspace)")?;

    // The simulation build: lints and tests under --cfg madsim, then the sweeps.
    let mut sim_clippy = sim_cargo();
    sim_clippy.args([
        "clippy",
        "--profile",
        "sim",
        "--workspace",
        "--exclude",
        "seedkv-io-real",
        "--exclude",
        "seedkv-cli",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]);
    run_checked(sim_clippy, "cargo clippy -D warnings (--cfg madsim)")?;
    let mut sim_tests = sim_cargo();
    sim_tests.args([
        "test",
        "--profile",
        "sim",
        "-p",
        "seedkv-sim-tests",
        "-p",
        "seedkv-io-sim",
    ]);
    run_checked(sim_tests, "simulation tests (--cfg madsim)")?;

    let binary = build_sim()?;
    let mut passed = 0;
    let mut failed = 0;
    let mut tally = |summary: Summary| {
        passed += summary.passed;
        failed += summary.failed;
    };
    let mixed = SimArgs {
        scenario: "mixed".into(),
        seeds: Some(format!("0..{}", args.sim_seeds)),
        seed: None,
        nodes: 5,
        groups: 3,
        replicas: None,
        read_replicas: None,
        clients: None,
        duration_s: None,
        faults: vec![],
        twice: false,
        jobs: None,
        fail_fast: false,
        verbose: false,
    };
    println!("--- sweep: mixed, 5 nodes, seeds 0..{}", args.sim_seeds);
    tally(sweep(&binary, &mixed)?);
    for scenario in [
        "basic",
        "partition",
        "crash-restart",
        "lossy-net",
        "membership",
        "disk",
    ] {
        let args = SimArgs {
            scenario: scenario.into(),
            seeds: Some("0..20".into()),
            nodes: 3,
            ..mixed.clone()
        };
        println!("--- sweep: {scenario}, 3 nodes, seeds 0..20");
        tally(sweep(&binary, &args)?);
    }
    // Data groups on three of five nodes: placement, late initialization, per-group
    // operators on different replica sets.
    let placed = SimArgs {
        seeds: Some("0..30".into()),
        replicas: Some(3),
        ..mixed.clone()
    };
    println!("--- sweep: mixed, 5 nodes, 3 replicas per data group, seeds 0..30");
    tally(sweep(&binary, &placed)?);
    // A read replica beside three voters: it joins every group at every start, is crashed,
    // paused and cut off like any node, and must never serve a read older than one it served.
    let with_replica = SimArgs {
        seeds: Some("0..30".into()),
        nodes: 3,
        read_replicas: Some(1),
        ..mixed.clone()
    };
    println!("--- sweep: mixed, 3 nodes and a read replica, seeds 0..30");
    tally(sweep(&binary, &with_replica)?);
    // Slots moving between groups under the mixed faults.
    let migration = SimArgs {
        scenario: "migration".into(),
        seeds: Some("0..60".into()),
        ..mixed.clone()
    };
    println!("--- sweep: migration, 5 nodes, seeds 0..60");
    tally(sweep(&binary, &migration)?);
    let twice = SimArgs {
        seeds: Some("1000..1020".into()),
        twice: true,
        ..mixed.clone()
    };
    println!("--- determinism: mixed, 20 seeds, each twice in fresh processes");
    tally(sweep(&binary, &twice)?);
    println!("--- the harness bites");
    let bites_ok = bites(&BitesArgs { max_seeds: 400 })?;
    if bites_ok {
        passed += 1;
    } else {
        failed += 1;
    }
    println!("--- fuzzing: every target for 30 s");
    let (fuzz_passed, fuzz_failed) = fuzz(None, 30)?;
    passed += fuzz_passed;
    failed += fuzz_failed;
    println!("--- all simulation and fuzzing checks");
    println!("{passed} passed, {failed} failed");
    Ok(failed == 0)
}

/// Builds the release `seedkv` binary (after installing what the build needs).
fn build_release() -> Result<PathBuf> {
    install_system_packages()?;
    let mut build = cargo();
    build.args(["build", "--release", "-p", "seedkv-cli", "--bin", "seedkv"]);
    run_checked(build, "build seedkv (release)")?;
    Ok(root().join("target").join("release").join("seedkv"))
}

/// `cargo xtask server`: everything needed to run a node, in one command.
fn server(args: &[String]) -> Result<bool> {
    let binary = build_release()?;
    eprintln!("==> {} server {}", binary.display(), args.join(" "));
    let status = Command::new(&binary).arg("server").args(args).status()?;
    Ok(status.success())
}

/// `cargo xtask checker-times`: every reference history's verdict, time and peak RSS,
/// with the budget CI would give it (10 s, 512 MiB); a wrong verdict fails.
fn checker_times() -> Result<bool> {
    let binary = build_release()?;
    let hard = root().join("target").join("hard");
    let mut example = cargo();
    example.args([
        "run",
        "--release",
        "-q",
        "-p",
        "seedkv-checker",
        "--example",
        "hard_history",
        "--",
    ]);
    example.arg(&hard);
    run_checked(example, "generate hard histories")?;
    let data = root().join("..").join("shared").join("checker-data");
    let verdicts = std::fs::read_to_string(data.join("jepsen-etcd").join("VERDICTS"))
        .with_context(|| {
            format!(
                "{} (shared/ must sit beside the repository)",
                data.display()
            )
        })?;
    // (file, expected verdict)
    let mut files: Vec<(PathBuf, &str)> = Vec::new();
    for line in verdicts.lines() {
        if let [file, verdict] = line.split_whitespace().collect::<Vec<_>>()[..] {
            let expected = if verdict == "linearizable" {
                "linearizable"
            } else {
                "not linearizable"
            };
            files.push((data.join("jepsen-etcd").join(file), expected));
        }
    }
    let mut kv: Vec<PathBuf> = std::fs::read_dir(data.join("kv"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .collect();
    kv.sort();
    for path in kv {
        let bad = path.to_string_lossy().ends_with("-bad.txt");
        files.push((
            path,
            if bad {
                "not linearizable"
            } else {
                "linearizable"
            },
        ));
    }
    for (name, expected) in [
        ("c50-bad-hard.jsonl", "not linearizable"),
        ("c50-hard-first.jsonl", "not linearizable"),
        ("c50-bad-late.jsonl", "not linearizable"),
        ("c50-undecidable.jsonl", "unknown"),
    ] {
        files.push((hard.join(name), expected));
    }
    println!("| history | verdict | seconds | peak RSS |");
    println!("|---|---|---|---|");
    let mut wrong = 0;
    for (path, expected) in &files {
        let output = Command::new(&binary)
            .args([
                "check-history",
                "--stats",
                "--timeout-s",
                "10",
                "--max-memory-mib",
                "512",
            ])
            .arg(path)
            .output()
            .with_context(|| format!("cannot run {}", binary.display()))?;
        let verdict = String::from_utf8_lossy(&output.stdout).trim().to_string();
        let stderr = String::from_utf8_lossy(&output.stderr);
        // "checked N operations in P partitions in S s; peak RSS R MiB"
        let stats = stderr
            .lines()
            .find(|l| l.starts_with("checked "))
            .unwrap_or("");
        let seconds = stats
            .split(" in ")
            .last()
            .and_then(|t| t.split(' ').next())
            .unwrap_or("?");
        let rss = stats.split("peak RSS ").nth(1).unwrap_or("?");
        let name = path
            .strip_prefix(&data)
            .or_else(|_| path.strip_prefix(root().join("target")))
            .unwrap_or(path);
        let mark = if verdict == *expected { "" } else { " (WRONG)" };
        if !mark.is_empty() {
            wrong += 1;
        }
        println!(
            "| {} | {verdict}{mark} | {seconds} | {rss} |",
            name.display()
        );
    }
    println!("{} passed, {} failed", files.len() - wrong, wrong);
    Ok(wrong == 0)
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Polls `check` every 50 ms for up to `limit`; returns how long it took.
fn wait_for(
    limit: std::time::Duration,
    mut check: impl FnMut() -> bool,
) -> Result<std::time::Duration> {
    let start = std::time::Instant::now();
    while !check() {
        if start.elapsed() > limit {
            bail!("gave up after {limit:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Ok(start.elapsed())
}

/// A server process that is killed if the measurement stops early.
struct ServerProcess(std::process::Child);

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Bytes of every file under `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() => dir_bytes(&entry.path()),
            Ok(meta) => meta.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Starts `seedkv server` with `args`, logging to `log`.
fn start_server(binary: &Path, args: &[String], log: &Path) -> Result<ServerProcess> {
    let child = Command::new(binary)
        .arg("server")
        .args(args)
        .args(["--log-level", "warn"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log)?)
        .spawn()?;
    Ok(ServerProcess(child))
}

/// SIGTERM, then wait for the exit; returns how long it took.
fn stop_server(server: &mut ServerProcess) -> Result<std::time::Duration> {
    Command::new("kill")
        .args(["-TERM", &server.0.id().to_string()])
        .status()?;
    wait_for(std::time::Duration::from_secs(30), || {
        server.0.try_wait().ok().flatten().is_some()
    })
}

/// `seedkv load` of `keys` keys of `value_size` bytes; returns the seconds it took.
fn load_keys(binary: &Path, endpoints: &str, keys: u64, value_size: usize) -> Result<f64> {
    let start = std::time::Instant::now();
    let ok = succeeds_quietly(Command::new(binary).args([
        "--endpoints",
        endpoints,
        "load",
        "--keys",
        &keys.to_string(),
        "--value-size",
        &value_size.to_string(),
    ]));
    if !ok {
        bail!("loading {keys} keys into {endpoints} failed");
    }
    Ok(start.elapsed().as_secs_f64())
}

/// One `seedkv bench` run; returns its JSON report.
fn bench_json(binary: &Path, endpoints: &str, args: &[&str]) -> Result<serde_json::Value> {
    let output = Command::new(binary)
        .args(["--endpoints", endpoints, "--output", "json", "bench"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("run seedkv bench")?;
    if !output.status.success() {
        bail!("bench failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    serde_json::from_slice(&output.stdout)
        .with_context(|| format!("bench output: {}", String::from_utf8_lossy(&output.stdout)))
}

/// Seconds a node rests between loading and measuring.
const SETTLE_S: u64 = 10;

/// `cargo xtask measure`: the figures of release nodes, printed as tables.
fn measure(key_counts: &[u64], catch_up_keys: u64, bench_s: f64) -> Result<bool> {
    use std::time::Duration;
    let binary = build_release()?;
    let size_mib = std::fs::metadata(&binary)?.len() as f64 / (1024.0 * 1024.0);
    let root_dir = std::env::temp_dir().join(format!("seedkv-measure-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root_dir);
    std::fs::create_dir_all(&root_dir)?;
    let client_ok = |endpoints: &str, args: &[&str]| {
        succeeds_quietly(
            Command::new(&binary)
                .args(["--endpoints", endpoints])
                .args(args),
        )
    };

    // A fresh node: start-up, idle memory, shutdown.
    let addr = format!("127.0.0.1:{}", free_port()?);
    let dir = root_dir.join("idle");
    let args = vec![
        "--listen".to_string(),
        addr.clone(),
        "--data-dir".into(),
        dir.display().to_string(),
    ];
    let mut server = start_server(&binary, &args, &root_dir.join("idle.log"))?;
    let ready = wait_for(Duration::from_secs(30), || {
        client_ok(&addr, &["put", "ready", "1"])
    })?;
    std::thread::sleep(Duration::from_secs(2));
    let idle = rss_kib(server.0.id()).unwrap_or(0);
    let stop = stop_server(&mut server)?;
    drop(server);
    println!("| figure | value |");
    println!("|---|---|");
    println!("| release binary size | {size_mib:.1} MiB |");
    println!(
        "| start to first acknowledged write (fresh single node) | {:.2} s |",
        ready.as_secs_f64()
    );
    println!(
        "| RSS, idle single node | {:.1} MiB |",
        idle as f64 / 1024.0
    );
    println!(
        "| clean shutdown (SIGTERM to exit) | {:.2} s |",
        stop.as_secs_f64()
    );
    println!();

    // The scale table: one fresh node per key count.
    println!("| keys (256 B) | load | puts/s, 64 clients | p99 | p99.9 | errors | RSS | disk | restart to first linearizable read |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for &keys in key_counts {
        let addr = format!("127.0.0.1:{}", free_port()?);
        let dir = root_dir.join(format!("scale-{keys}"));
        let args = vec![
            "--listen".to_string(),
            addr.clone(),
            "--data-dir".into(),
            dir.display().to_string(),
        ];
        let log = root_dir.join(format!("scale-{keys}.log"));
        let mut server = start_server(&binary, &args, &log)?;
        wait_for(Duration::from_secs(30), || {
            client_ok(&addr, &["put", "ready", "1"])
        })?;
        let load_s = load_keys(&binary, &addr, keys, 256)?;
        // Let the compactions the load started finish, as they would on a node that has
        // held its data for a while.
        std::thread::sleep(Duration::from_secs(SETTLE_S));
        let report = bench_json(
            &binary,
            &addr,
            &[
                "--workload",
                "put",
                "--clients",
                "64",
                "--value-size",
                "256",
                "--duration",
                &bench_s.to_string(),
                "--warmup",
                "2",
            ],
        )?;
        let rss = rss_kib(server.0.id()).unwrap_or(0);
        stop_server(&mut server)?;
        drop(server);
        let disk = dir_bytes(&dir);
        let last_key = format!("load/{:010}", keys.saturating_sub(1));
        let restart_start = std::time::Instant::now();
        let server = start_server(&binary, &args, &log)?;
        wait_for(Duration::from_secs(600), || {
            client_ok(&addr, &["get", &last_key])
        })?;
        let restart = restart_start.elapsed();
        drop(server);
        let _ = std::fs::remove_dir_all(&dir);
        println!(
            "| {keys} | {:.1} s ({:.0} keys/s) | {:.0} | {:.1} ms | {:.1} ms | {} | {:.0} MiB | {:.0} MiB | {:.2} s |",
            load_s,
            keys as f64 / load_s.max(1e-9),
            report["ops_per_s"].as_f64().unwrap_or(0.0),
            report["p99_ms"].as_f64().unwrap_or(0.0),
            report["p999_ms"].as_f64().unwrap_or(0.0),
            match report["errors"].as_object() {
                Some(errors) if !errors.is_empty() => report["errors"].to_string(),
                _ => "none".into(),
            },
            rss as f64 / 1024.0,
            disk as f64 / (1024.0 * 1024.0),
            restart.as_secs_f64()
        );
    }

    if catch_up_keys > 0 {
        println!();
        measure_catch_up(&binary, &root_dir, catch_up_keys)?;
    }
    let _ = std::fs::remove_dir_all(&root_dir);
    Ok(true)
}

/// A 3-node cluster holding `keys` keys; a fourth node joins and catches up by snapshot.
/// Prints how long it took and how much the leader's RSS rose meanwhile.
fn measure_catch_up(binary: &Path, root_dir: &Path, keys: u64) -> Result<()> {
    use std::time::Duration;
    let addrs: Vec<String> = (0..4)
        .map(|_| free_port().map(|p| format!("127.0.0.1:{p}")))
        .collect::<Result<_>>()?;
    let initial: Vec<String> = addrs[..3]
        .iter()
        .enumerate()
        .map(|(i, a)| format!("{}={a}", i + 1))
        .collect();
    let initial = initial.join(",");
    let mut servers = Vec::new();
    for (i, addr) in addrs[..3].iter().enumerate() {
        let args = vec![
            "--node-id".to_string(),
            (i + 1).to_string(),
            "--listen".into(),
            addr.clone(),
            "--data-dir".into(),
            root_dir
                .join(format!("node{}", i + 1))
                .display()
                .to_string(),
            "--initial-cluster".into(),
            initial.clone(),
            // The load writes 1,000 keys per entry: snapshot often enough that the log
            // behind the loaded data is purged and the fourth node needs the snapshot.
            "--snapshot-every".into(),
            "500".into(),
        ];
        servers.push(start_server(
            binary,
            &args,
            &root_dir.join(format!("node{}.log", i + 1)),
        )?);
    }
    let endpoints = addrs[..3].join(",");
    wait_for(Duration::from_secs(30), || {
        succeeds_quietly(Command::new(binary).args([
            "--endpoints",
            &endpoints,
            "put",
            "ready",
            "1",
        ]))
    })?;
    let load_s = load_keys(binary, &endpoints, keys, 256)?;
    // The leader, by its status.
    let status = Command::new(binary)
        .args([
            "--endpoints",
            &endpoints,
            "--output",
            "json",
            "cluster",
            "status",
        ])
        .output()?;
    let status: serde_json::Value = serde_json::from_slice(&status.stdout)?;
    let leader_id = status["members"][0]["leader"].as_u64().unwrap_or(1);
    let leader_pid = servers
        .get(leader_id.saturating_sub(1) as usize)
        .map(|s| s.0.id())
        .context("leader process")?;
    // Let the leader snapshot and purge its log, as a long-running cluster would have.
    std::thread::sleep(Duration::from_secs(3));
    let rss_before = rss_kib(leader_pid).unwrap_or(0);
    let join_start = std::time::Instant::now();
    let args = vec![
        "--node-id".to_string(),
        "4".into(),
        "--listen".into(),
        addrs[3].clone(),
        "--data-dir".into(),
        root_dir.join("node4").display().to_string(),
        "--join".into(),
        addrs[0].clone(),
        "--snapshot-every".into(),
        "500".into(),
    ];
    servers.push(start_server(binary, &args, &root_dir.join("node4.log"))?);
    let mut peak = rss_before;
    wait_for(Duration::from_secs(600), || {
        peak = peak.max(rss_kib(leader_pid).unwrap_or(0));
        let output = Command::new(binary)
            .args([
                "--endpoints",
                &addrs[3],
                "--output",
                "json",
                "cluster",
                "status",
            ])
            .output();
        let Ok(output) = output else { return false };
        let Ok(status) = serde_json::from_slice::<serde_json::Value>(&output.stdout) else {
            return false;
        };
        let members = status["members"].as_array().cloned().unwrap_or_default();
        let me = members.iter().find(|m| m["id"] == 4);
        let leader = members.iter().find(|m| m["role"] == "leader");
        match (me, leader) {
            (Some(me), Some(leader)) => me["applied"].as_u64() >= leader["applied"].as_u64(),
            _ => false,
        }
    })?;
    let caught_up = join_start.elapsed();
    println!("| 3-node cluster, {keys} keys of 256 B | value |");
    println!("|---|---|");
    println!("| load | {load_s:.1} s |");
    println!(
        "| fourth node: start to caught up (by snapshot) | {:.1} s |",
        caught_up.as_secs_f64()
    );
    println!(
        "| leader RSS before / peak during catch-up | {:.0} MiB / {:.0} MiB (+{:.0} MiB) |",
        rss_before as f64 / 1024.0,
        peak as f64 / 1024.0,
        peak.saturating_sub(rss_before) as f64 / 1024.0
    );
    drop(servers);
    Ok(())
}

const FUZZ_TARGETS: [&str; 4] = ["request", "storage", "checker", "scenario"];

/// Runs `cargo fuzz` on the nightly toolchain: each target for `seconds`, new inputs kept in
/// `fuzz/target/work/T`, seeds read from `fuzz/corpus/T`. The scenario target is built with
/// `--cfg madsim` in its own target dir. Returns (passed, failed) targets.
fn fuzz(only: Option<&str>, seconds: u64) -> Result<(u64, u64)> {
    let targets: Vec<&str> = match only {
        Some(name) if FUZZ_TARGETS.contains(&name) => vec![name],
        Some(name) => bail!(
            "unknown fuzz target {name:?}; expected one of {}",
            FUZZ_TARGETS.join(", ")
        ),
        None => FUZZ_TARGETS.to_vec(),
    };
    let nightly = |args: &[&str]| {
        let mut cmd = Command::new("rustup");
        cmd.args(["run", "nightly", "cargo"]).args(args);
        cmd
    };
    let has_fuzz = succeeds_quietly(&mut nightly(&["fuzz", "--version"]));
    if !has_fuzz {
        let mut install = cargo();
        install.args(["install", "cargo-fuzz", "--locked"]);
        run_checked(install, "cargo install cargo-fuzz")?;
    }
    let fuzz_dir = root().join("fuzz");
    let (mut passed, mut failed) = (0, 0);
    for target in targets {
        let work = fuzz_dir.join("target").join("work").join(target);
        std::fs::create_dir_all(&work)?;
        let seeds = fuzz_dir.join("corpus").join(target);
        let mut cmd = nightly(&["fuzz", "run", "-O"]);
        if target == "scenario" {
            cmd.args(["-s", "none", "--target-dir", "target/sim"])
                .env("RUSTFLAGS", "--cfg madsim");
        }
        cmd.arg(target)
            .arg(&work)
            .arg(&seeds)
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .arg("-rss_limit_mb=4096")
            .arg("-print_final_stats=1")
            .current_dir(&fuzz_dir)
            .stdin(Stdio::null());
        if target == "scenario" {
            // madsim virtualises the clock libFuzzer's per-input timeout reads, which makes
            // it fire spuriously; every simulated run is bounded in virtual time instead.
            cmd.args(["-max_len=80", "-len_control=0", "-timeout=0"]);
        }
        eprintln!("==> fuzz {target} for {seconds} s");
        let output = cmd
            .output()
            .with_context(|| format!("cannot run cargo fuzz {target}"))?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        let done = stderr
            .lines()
            .rev()
            .find(|l| l.contains("DONE"))
            .unwrap_or_default();
        let execs = done
            .split_whitespace()
            .skip_while(|w| *w != "exec/s:")
            .nth(1)
            .unwrap_or("?");
        let runs = done
            .split_whitespace()
            .next()
            .unwrap_or("#?")
            .trim_start_matches('#');
        if output.status.success() {
            println!("fuzz {target}: {runs} runs in {seconds} s ({execs} exec/s), no crash");
            passed += 1;
        } else {
            failed += 1;
            println!("fuzz {target}: FAIL");
            for line in stderr
                .lines()
                .filter(|l| {
                    l.contains("panicked")
                        || l.contains("artifact")
                        || l.contains("ERROR")
                        || l.contains("error")
                })
                .take(20)
            {
                println!("  {line}");
            }
            println!("  reproduce: cd fuzz && {}cargo +nightly fuzz run -O {}{target} artifacts/{target}/<crash file>",
                if target == "scenario" { "RUSTFLAGS=\"--cfg madsim\" " } else { "" },
                if target == "scenario" { "-s none --target-dir target/sim " } else { "" });
        }
    }
    println!("{passed} passed, {failed} failed");
    Ok((passed, failed))
}

/// CPU seconds (user + system) a process has used so far.
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i).and_then(|v| v.parse::<f64>().ok()))
        .sum();
    ticks / 100.0
}

/// `cargo xtask bench-vs-etcd`.
fn bench_vs_etcd(duration: f64, warmup: f64) -> Result<bool> {
    use std::time::Duration;
    let binary = build_release()?;
    let has_etcd = succeeds_quietly(Command::new("etcd").arg("--version"));
    if !has_etcd {
        let mut install = Command::new("apt-get");
        install
            .args([
                "install",
                "-y",
                "-qq",
                "--no-install-recommends",
                "etcd-server",
                "etcd-client",
            ])
            .env("DEBIAN_FRONTEND", "noninteractive");
        run_checked(install, "apt-get install etcd-server")?;
    }
    let out_dir = root().join("target").join("bench");
    let run_dir = out_dir.join(format!("run-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&run_dir);
    std::fs::create_dir_all(&run_dir)?;
    let mut processes: Vec<ServerProcess> = Vec::new();
    let log = |name: &str| -> Result<std::fs::File> {
        Ok(std::fs::File::create(run_dir.join(format!("{name}.log")))?)
    };

    // etcd: three members, durable (etcd fsyncs its WAL on every commit by default).
    let etcd_client: Vec<String> = (0..3)
        .map(|_| free_port().map(|p| format!("127.0.0.1:{p}")))
        .collect::<Result<_>>()?;
    let etcd_peer: Vec<String> = (0..3)
        .map(|_| free_port().map(|p| format!("127.0.0.1:{p}")))
        .collect::<Result<_>>()?;
    let initial: Vec<String> = (0..3)
        .map(|i| format!("e{i}=http://{}", etcd_peer[i]))
        .collect();
    for i in 0..3 {
        let child = Command::new("etcd")
            .args(["--name", &format!("e{i}")])
            .arg("--data-dir")
            .arg(run_dir.join(format!("etcd{i}")))
            .args([
                "--listen-client-urls",
                &format!("http://{}", etcd_client[i]),
            ])
            .args([
                "--advertise-client-urls",
                &format!("http://{}", etcd_client[i]),
            ])
            .args(["--listen-peer-urls", &format!("http://{}", etcd_peer[i])])
            .args([
                "--initial-advertise-peer-urls",
                &format!("http://{}", etcd_peer[i]),
            ])
            .args(["--initial-cluster", &initial.join(",")])
            .args([
                "--initial-cluster-state",
                "new",
                "--initial-cluster-token",
                "seedkv-bench",
            ])
            .args(["--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(log(&format!("etcd{i}"))?)
            .stderr(log(&format!("etcd{i}.err"))?)
            .spawn()
            .context("start etcd")?;
        processes.push(ServerProcess(child));
    }
    // seedkv: three nodes, durable (every append is fsynced before it counts).
    let seedkv_addrs: Vec<String> = (0..3)
        .map(|_| free_port().map(|p| format!("127.0.0.1:{p}")))
        .collect::<Result<_>>()?;
    let cluster: Vec<String> = (0..3)
        .map(|i| format!("{}={}", i + 1, seedkv_addrs[i]))
        .collect();
    for (i, addr) in seedkv_addrs.iter().enumerate() {
        let child = Command::new(&binary)
            .arg("server")
            .args(["--node-id", &(i + 1).to_string(), "--listen", addr])
            .arg("--data-dir")
            .arg(run_dir.join(format!("seedkv{}", i + 1)))
            .args([
                "--initial-cluster",
                &cluster.join(","),
                "--log-level",
                "warn",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log(&format!("seedkv{}", i + 1))?)
            .spawn()
            .context("start seedkv")?;
        processes.push(ServerProcess(child));
    }
    let etcd_pids: Vec<u32> = processes[..3].iter().map(|p| p.0.id()).collect();
    let seedkv_pids: Vec<u32> = processes[3..].iter().map(|p| p.0.id()).collect();
    let etcd_endpoints = etcd_client.join(",");
    let seedkv_endpoints = seedkv_addrs.join(",");
    wait_for(Duration::from_secs(30), || {
        succeeds_quietly(
            Command::new("etcdctl")
                .args(["--endpoints", &etcd_endpoints, "put", "ready", "1"])
                .env("ETCDCTL_API", "3"),
        )
    })
    .context("etcd did not come up")?;
    wait_for(Duration::from_secs(30), || {
        succeeds_quietly(Command::new(&binary).args([
            "--endpoints",
            &seedkv_endpoints,
            "put",
            "ready",
            "1",
        ]))
    })
    .context("seedkv did not come up")?;

    let rows: [(&str, usize, &str); 5] = [
        ("put", 1, "linearizable"),
        ("put", 64, "linearizable"),
        ("get", 64, "linearizable"),
        ("get", 64, "serializable"),
        ("mixed:90", 64, "linearizable"),
    ];
    let mut table = Vec::new();
    for (workload, clients, consistency) in rows {
        let mut measured = serde_json::Map::new();
        for (target, endpoints, pids) in [
            ("seedkv", &seedkv_endpoints, &seedkv_pids),
            ("etcd", &etcd_endpoints, &etcd_pids),
        ] {
            let cpu_before: f64 = pids.iter().map(|p| cpu_seconds(*p)).sum();
            let output = Command::new(&binary)
                .args([
                    "--endpoints",
                    endpoints,
                    "--output",
                    "json",
                    "bench",
                    "--target",
                    target,
                ])
                .args(["--workload", workload, "--clients", &clients.to_string()])
                .args([
                    "--consistency",
                    consistency,
                    "--value-size",
                    "256",
                    "--key-space",
                    "10000",
                ])
                .args([
                    "--duration",
                    &duration.to_string(),
                    "--warmup",
                    &warmup.to_string(),
                ])
                .stdin(Stdio::null())
                .output()
                .context("run seedkv bench")?;
            let cpu = pids.iter().map(|p| cpu_seconds(*p)).sum::<f64>() - cpu_before;
            if !output.status.success() {
                bail!(
                    "bench {target} {workload} failed: {}",
                    String::from_utf8_lossy(&output.stderr)
                );
            }
            let report: serde_json::Value =
                serde_json::from_slice(&output.stdout).with_context(|| {
                    format!("bench output: {}", String::from_utf8_lossy(&output.stdout))
                })?;
            let ops = report["ops"].as_f64().unwrap_or(0.0);
            let mut row = serde_json::Map::new();
            for field in ["ops_per_s", "p50_ms", "p99_ms", "p999_ms"] {
                row.insert(field.into(), report[field].clone());
            }
            row.insert(
                "server_cpu_us_per_op".into(),
                serde_json::json!(if ops > 0.0 { cpu * 1e6 / ops } else { 0.0 }),
            );
            row.insert("errors".into(), report["errors"].clone());
            measured.insert(target.into(), serde_json::Value::Object(row));
        }
        let ratio = measured["seedkv"]["ops_per_s"].as_f64().unwrap_or(0.0)
            / measured["etcd"]["ops_per_s"]
                .as_f64()
                .unwrap_or(f64::NAN)
                .max(1e-9);
        let name = if workload == "get" {
            format!("get ({consistency})")
        } else {
            workload.to_string()
        };
        table.push(serde_json::json!({
            "workload": name,
            "clients": clients,
            "value_size": 256,
            "seedkv": measured["seedkv"],
            "etcd": measured["etcd"],
            "ratio": ratio,
        }));
    }
    drop(processes);
    let _ = std::fs::remove_dir_all(&run_dir);
    let json = serde_json::json!({ "rows": table });
    std::fs::create_dir_all(&out_dir)?;
    std::fs::write(
        out_dir.join("vs-etcd.json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    println!("| workload | clients | seedkv ops/s | p50 ms | p99 ms | etcd ops/s | p50 ms | p99 ms | seedkv/etcd |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for row in &table {
        let f = |t: &str, k: &str| row[t][k].as_f64().unwrap_or(0.0);
        println!(
            "| {} | {} | {:.0} | {:.2} | {:.2} | {:.0} | {:.2} | {:.2} | {:.2}x |",
            row["workload"].as_str().unwrap_or("?"),
            row["clients"],
            f("seedkv", "ops_per_s"),
            f("seedkv", "p50_ms"),
            f("seedkv", "p99_ms"),
            f("etcd", "ops_per_s"),
            f("etcd", "p50_ms"),
            f("etcd", "p99_ms"),
            row["ratio"].as_f64().unwrap_or(0.0)
        );
    }
    println!(
        "server CPU per op (µs, all three members): {}",
        table
            .iter()
            .map(|row| format!(
                "{}: seedkv {:.0}, etcd {:.0}",
                row["workload"].as_str().unwrap_or("?"),
                row["seedkv"]["server_cpu_us_per_op"]
                    .as_f64()
                    .unwrap_or(0.0),
                row["etcd"]["server_cpu_us_per_op"].as_f64().unwrap_or(0.0)
            ))
            .collect::<Vec<_>>()
            .join("; ")
    );
    println!("wrote {}", out_dir.join("vs-etcd.json").display());
    Ok(true)
}
