//! `seedkv`: server, client and tools in one binary.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use seedkv_checker::{check_file_within, Budget, Model, Verdict};

/// Prints one line of a command's output, as `println!` does; a reader that went away
/// (`seedkv scan | head`) ends the command quietly with success, as Unix tools do, where
/// `println!` would panic.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let mut stdout = std::io::stdout().lock();
        if let Err(err) = writeln!(stdout, $($arg)*).and_then(|()| stdout.flush()) {
            if err.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
            eprintln!("seedkv: cannot write the output: {err}");
            std::process::exit(1);
        }
    }};
}

mod bench;
mod client;
mod server;

#[derive(Parser)]
#[command(
    name = "seedkv",
    version,
    about = "seedkv: a Raft-replicated key-value store"
)]
struct Cli {
    #[command(flatten)]
    connection: client::Connection,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a seedkv node (with no flags: a single-node cluster on 127.0.0.1:7379).
    Server(Box<server::ServerArgs>),
    #[command(flatten)]
    Kv(client::KvCommand),
    /// Write many keys quickly, in atomic batches (for test data and measurements).
    Load(client::LoadArgs),
    /// Measure throughput and latency of seedkv or etcd with one client.
    Bench(Box<bench::BenchArgs>),
    /// Cluster membership and status.
    #[command(subcommand)]
    Cluster(client::ClusterCommand),
    /// Check a recorded history for linearizability. Prints `linearizable` (exit 0),
    /// `not linearizable` (exit 1) or, when the budget ran out first, `unknown` (exit 3,
    /// naming the keys left undecided); a file that cannot be read or parsed exits 2.
    ///
    /// Reads seedkv's own history format (JSON lines, docs/HISTORY_FORMAT.md), Jepsen etcd
    /// register logs and Porcupine key-value logs; the format is detected.
    CheckHistory {
        /// The history file.
        file: PathBuf,
        /// kv (a map of independent keys) or register (Jepsen's single register). Defaults
        /// to what the file's format implies.
        #[arg(long)]
        model: Option<Model>,
        /// Give up after this many seconds with verdict `unknown`.
        #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
        timeout_s: u64,
        /// Give up a key's search once all searches together hold this much memory
        /// (their memos); the other keys are still decided.
        #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u64).range(1..=1 << 20))]
        max_memory_mib: u64,
        /// Also print, on stderr, the time taken and the process's peak RSS.
        #[arg(long)]
        stats: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Cmd::CheckHistory {
        file,
        model,
        timeout_s,
        max_memory_mib,
        stats,
    } = &cli.command
    {
        let budget = Budget {
            timeout: Some(std::time::Duration::from_secs(*timeout_s)),
            max_search_bytes: usize::try_from(*max_memory_mib << 20).unwrap_or(usize::MAX),
        };
        return check_history(file, *model, &budget, *stats);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("seedkv: cannot start the async runtime: {err}");
            return ExitCode::from(2);
        }
    };
    let outcome = runtime.block_on(async {
        match cli.command {
            Cmd::Server(args) => server::run(*args).await.map(|()| true),
            Cmd::Kv(command) => client::run(&cli.connection, command).await,
            Cmd::Cluster(command) => client::cluster(&cli.connection, command).await,
            Cmd::Load(args) => client::load(&cli.connection, args).await,
            Cmd::Bench(args) => bench::run(&cli.connection, *args).await,
            Cmd::CheckHistory { .. } => Ok(true),
        }
    });
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(err) => {
            eprintln!("seedkv: {err:#}");
            ExitCode::from(1)
        }
    }
}

/// Exit code of `check-history` when the budget ran out before a verdict.
const EXIT_UNKNOWN: u8 = 3;

fn check_history(
    file: &std::path::Path,
    model: Option<Model>,
    budget: &Budget,
    stats: bool,
) -> ExitCode {
    let start = std::time::Instant::now();
    match check_file_within(file, model, budget) {
        Ok(report) => {
            out!("{}", report.verdict);
            if stats {
                eprintln!(
                    "checked {} operations in {} partitions in {:.3} s; peak RSS {}",
                    report.operations,
                    report.partitions,
                    start.elapsed().as_secs_f64(),
                    peak_rss_mib()
                        .map(|mib| format!("{mib:.1} MiB"))
                        .unwrap_or_else(|| "unknown".into())
                );
            }
            match report.verdict {
                Verdict::Linearizable => ExitCode::SUCCESS,
                Verdict::NotLinearizable => {
                    if let Some(keys) = report.failing_partition {
                        eprintln!("first violation among keys: {keys}");
                    }
                    ExitCode::from(1)
                }
                Verdict::Unknown => {
                    if let Some(limit) = report.limit {
                        eprintln!(
                            "{limit} reached; undecided keys: {}",
                            report.undecided.join(" | ")
                        );
                    }
                    ExitCode::from(EXIT_UNKNOWN)
                }
            }
        }
        Err(err) => {
            eprintln!("seedkv: {err}");
            ExitCode::from(2)
        }
    }
}

/// This process's peak resident set (Linux: `VmHWM` in /proc/self/status).
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}
