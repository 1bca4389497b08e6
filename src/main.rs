//! The `switchboard` binary: `serve` runs a node, `config` prints the effective configuration
//! and its env vars, `chat` is a small terminal client.

use clap::{Parser, Subcommand};

use std::path::PathBuf;
use std::process::ExitCode;
use switchboard::config::Config;

#[derive(Parser)]
#[command(name = "switchboard", version, about = "A durable, exactly-once chat service")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node (embedded single-node default: no external servers needed).
    Serve {
        /// Config file (default: built-in defaults, equal to config/switchboard.toml).
        #[arg(long, env = "SWITCHBOARD_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Validate the configuration and print it (secrets redacted) with every env override.
    Config {
        #[arg(long, env = "SWITCHBOARD_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Chat from the terminal: log in (or register), open a direct conversation, send lines.
    Chat(switchboard::cli_client::ChatArgs),
    /// Database schema: `schema apply` creates the Cassandra keyspace and tables (idempotent).
    Schema {
        #[command(subcommand)]
        action: SchemaAction,
        #[arg(long, env = "SWITCHBOARD_CONFIG", global = true)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum SchemaAction {
    /// Apply schema.cql to the configured Cassandra (store_backend = "cassandra").
    Apply,
}

fn load(path: Option<&std::path::Path>) -> Result<Config, ExitCode> {
    Config::load(path, |k| std::env::var(k).ok()).map_err(|e| {
        eprintln!("switchboard: invalid configuration: {e}");
        ExitCode::from(2)
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config } => {
            let config = match load(config.as_deref()) {
                Ok(c) => c,
                Err(code) => return code,
            };
            switchboard::telemetry::init_tracing();
            match actix::System::new().block_on(switchboard::serve(config)) {
                Ok(()) => ExitCode::SUCCESS,
                // Refused to start (e.g. the master key does not match the store): fix and retry.
                Err(e @ switchboard::ServeError::Start(_)) => {
                    eprintln!("switchboard: {e}");
                    ExitCode::from(2)
                }
                Err(e) => {
                    eprintln!("switchboard: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Config { config } => match load(config.as_deref()) {
            Ok(c) => {
                println!("{c:#?}\n\nenvironment overrides:");
                for (var, key) in Config::env_vars() {
                    println!("  {var:<36} {key}");
                }
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Chat(args) => switchboard::cli_client::run(args),
        Command::Schema { action: SchemaAction::Apply, config } => {
            let config = match load(config.as_deref()) {
                Ok(c) => c,
                Err(code) => return code,
            };
            switchboard::telemetry::init_tracing();
            match switchboard::store::cassandra::apply_schema_cli(&config) {
                Ok(message) => {
                    println!("{message}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("switchboard schema apply: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
