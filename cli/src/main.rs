//! `seedkv`: the command-line front door.
//!
//! Today it checks histories for linearizability; the server and client subcommands build on
//! the same binary.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use seedkv_checker::{check_file, Model, Verdict};

#[derive(Parser)]
#[command(
    name = "seedkv",
    version,
    about = "seedkv: a Raft-replicated key-value store"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
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
    match cli.command {
        Cmd::CheckHistory { file, model } => match check_file(&file, model) {
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
        },
    }
}
