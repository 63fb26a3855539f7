//! tallyd — the Tally node.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

mod cli;

use tally_node::testnet;

#[derive(Parser)]
#[command(
    name = "tallyd",
    version,
    about = "Tally node: a peer-to-peer replicated ledger with Tendermint BFT consensus"
)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a node home: config, keys and (unless --genesis is given) a one-validator genesis.
    Init(cli::InitArgs),
    /// Run a node from its home directory.
    Start {
        /// Node home directory (config/, data/).
        #[arg(long, env = "TALLY_HOME", default_value = "~/.tally/node")]
        home: PathBuf,
    },
    /// A one-validator chain in a temporary directory with a funded dev key: the quickest way to try Tally.
    Dev(cli::DevArgs),
    /// A local multi-node network: `up` creates it (once) and runs every node as a child
    /// process with a live status table; `kill N` / `restart N` inject faults.
    Testnet(testnet::TestnetArgs),
    /// Check the whole stored chain and state; exits non-zero on any inconsistency.
    Fsck {
        #[arg(long, env = "TALLY_HOME", default_value = "~/.tally/node")]
        home: PathBuf,
    },
    /// Print version information.
    Version,
}

fn main() {
    let args = Args::parse();
    let result = match args.command {
        Command::Init(a) => cli::init(a),
        Command::Start { home } => cli::start(cli::expand(&home)),
        Command::Dev(a) => cli::dev(a),
        Command::Testnet(a) => testnet::run(a),
        Command::Fsck { home } => cli::fsck(cli::expand(&home)),
        Command::Version => {
            println!("tallyd {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(tally_node::upgrade::exit_code(&e));
    }
}
