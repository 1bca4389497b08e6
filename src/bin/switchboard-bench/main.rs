//! `switchboard-bench`: the project's load generator. Open-loop (a fixed send schedule, so a
//! stall shows up as latency instead of hiding), a send timestamp and sequence number in every
//! payload, HdrHistogram percentiles of send→deliver latency, and counts of lost, duplicated
//! and reordered messages. It starts the system under test itself (switchboard, or Centrifugo
//! for the side-by-side runs) pinned to its own core, and writes JSON and Markdown results.
//!
//! `run` runs named scenarios — against a server it starts, or (`--urls`) an already running
//! switchboard such as a cluster (S9); `idle-worker` is the child process that holds a share
//! of the idle connections of S1, S7 and S9 (several processes and source addresses pass the per-process
//! file limit and the per-address port range).
//!
//! Exit status of `run`: 0 when every step that must be valid was (verdict PASS), 2 when the
//! run completed but the verdict is FAIL (results are still written), 1 when it could not run.

mod attachments;
mod attachments_report;
mod cluster;
mod groups;
mod groups_report;
mod pairs;
mod report;
mod scenarios;
mod slow;
mod soak;
mod target;
mod ws;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "switchboard-bench", about = "Open-loop load generator and benchmark scenarios")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run scenarios and write `results.json` and `summary.md` into `--out`.
    Run(Box<scenarios::RunArgs>),
    /// Child process of S1 and S7: hold `count` idle connections (internal).
    IdleWorker {
        #[arg(long)]
        url: String,
        #[arg(long)]
        target: target::Kind,
        #[arg(long)]
        tokens: String,
        #[arg(long)]
        count: usize,
        #[arg(long)]
        source_ip: String,
        #[arg(long)]
        hold_secs: u64,
        /// Sync after connecting; reconnect, sync again and report after a drop (S9).
        #[arg(long)]
        resync: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = match cli.command {
        Command::Run(args) => runtime.block_on(scenarios::run(*args)),
        Command::IdleWorker { url, target, tokens, count, source_ip, hold_secs, resync } => {
            let tokens: Vec<String> = tokens.split(',').map(str::to_owned).collect();
            runtime
                .block_on(scenarios::idle_worker(url, target, tokens, count, source_ip, hold_secs, resync))
                .map(|()| true)
        }
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(2),
        Err(e) => {
            eprintln!("switchboard-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Where results go by default: `bench-results/<UTC timestamp>`.
pub fn default_out_dir() -> PathBuf {
    let secs =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
    PathBuf::from("bench-results").join(format!("run-{secs}"))
}

pub type Failure = Box<dyn std::error::Error + Send + Sync>;
