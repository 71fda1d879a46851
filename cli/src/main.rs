//! `seedkv`: server, client and tools in one binary.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use seedkv_checker::{check_file, Model, Verdict};

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
    /// Check a recorded history for linearizability. Prints `linearizable` (exit 0) or
    /// `not linearizable` (exit 1); a file that cannot be read or parsed exits 2.
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
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Cmd::CheckHistory { file, model } = &cli.command {
        return check_history(file, *model);
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

fn check_history(file: &std::path::Path, model: Option<Model>) -> ExitCode {
    match check_file(file, model) {
        Ok(report) => {
            println!("{}", report.verdict);
            match report.verdict {
                Verdict::Linearizable => ExitCode::SUCCESS,
                Verdict::NotLinearizable => {
                    if let Some(keys) = report.failing_partition {
                        eprintln!("first violation among keys: {keys}");
                    }
                    ExitCode::from(1)
                }
            }
        }
        Err(err) => {
            eprintln!("seedkv: {err}");
            ExitCode::from(2)
        }
    }
}
