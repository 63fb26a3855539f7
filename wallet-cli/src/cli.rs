//! Command-line definition (clap derive). Parsers for user-typed values live in
//! [`crate::input`] so clap reports bad values as one-line usage errors (exit 2).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::input::{
    parse_amount, parse_block_ref, parse_duration, parse_height, parse_positive_amount,
    parse_tx_id, parse_validator_key, BlockRef,
};
use crate::rpc::DEFAULT_NODE;

#[derive(Debug, Parser)]
#[command(
    name = "tally",
    version,
    about = "Tally wallet: keys, transfers, queries and a load generator",
    after_help = "Exit codes: 0 ok, 1 failure, 2 usage error, 3 node unreachable, 4 transaction rejected by the node.\nThe password comes from --password-file, else TALLY_PASSWORD, else a prompt."
)]
pub struct Cli {
    /// Node RPC URL. `bench` accepts several (repeat the flag or separate with commas);
    /// other commands use the first.
    #[arg(long, global = true, env = "TALLY_NODE", value_delimiter = ',', default_value = DEFAULT_NODE)]
    pub node: Vec<String>,

    /// Output format: human text, or one JSON object per command on stdout (for scripts).
    #[arg(long, global = true, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,

    /// Keystore directory [default: ~/.tally/keys].
    #[arg(long, global = true, env = "TALLY_KEYS_DIR")]
    pub keys_dir: Option<PathBuf>,

    /// Read the keystore password from the first line of this file.
    #[arg(long, global = true, env = "TALLY_PASSWORD_FILE")]
    pub password_file: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create, list, show, import and export keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Show an account's balance and nonce (optionally verified against genesis).
    Balance(BalanceArgs),
    /// Sign and submit a transfer, then wait for it to be accepted or committed.
    Send(SendArgs),
    /// Show a transaction's status.
    Tx {
        /// Transaction id (64 hex characters).
        #[arg(value_parser = parse_tx_id)]
        id: [u8; 32],
    },
    /// Show the node's status.
    Status,
    /// Show a block: a height, or "latest".
    Block {
        #[arg(default_value = "latest", value_parser = parse_block_ref)]
        at: BlockRef,
    },
    /// Load generator: many accounts, a target rate, a duration; reports TPS and latency.
    Bench(BenchArgs),
    /// Bond stake to a validator's consensus key, unbond it, or unjail a validator
    /// (protocol-2 chains).
    #[command(subcommand)]
    Stake(StakeCommand),
    /// Show the validator set of a height: addresses, keys, powers, proposer order.
    Validators {
        /// The height whose set to show [default: the next height].
        #[arg(long, value_parser = parse_height)]
        height: Option<u64>,
    },
    /// Show one validator: stake, jail, missed commits, place in the set.
    Validator {
        /// The validator's consensus key (66 hex characters).
        #[arg(value_parser = parse_validator_key)]
        key: [u8; 33],
    },
    /// Show an operator's bonds and the stake on its way back (unbonding).
    Staking {
        /// Key name or 40-hex address.
        account: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum StakeCommand {
    /// Move --amount from the key's balance into its bond to a validator's consensus key
    /// (a new key joins the set two heights after the block, if its stake qualifies).
    Bond(StakeAmountArgs),
    /// Start returning up to --amount of the key's bond to a validator; it is paid back
    /// to the balance after the chain's unbonding period.
    Unbond(StakeAmountArgs),
    /// Let a jailed validator back into the set once its jail time is over (by one of
    /// its operators: a key with a bond to it).
    Unjail(UnjailArgs),
}

/// How a transaction is signed, paid and followed (`send` and `stake` alike).
#[derive(Debug, Args)]
pub struct TxOptions {
    /// Key that signs and pays (for a staking transaction, the operator).
    #[arg(long)]
    pub from: String,
    /// Fee in base units [default: the node's min_fee].
    #[arg(long, value_parser = parse_amount, allow_hyphen_values = true)]
    pub fee: Option<u64>,
    #[arg(long, value_enum, default_value_t = WaitFor::Committed)]
    pub wait: WaitFor,
    /// How long to wait for the commit (e.g. 30s, 2m).
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    pub timeout: Duration,
}

#[derive(Debug, Args)]
pub struct StakeAmountArgs {
    /// The validator's consensus key (66 hex characters; see 'tally validators').
    #[arg(long, value_parser = parse_validator_key)]
    pub validator: [u8; 33],
    /// Amount in base units.
    #[arg(long, value_parser = parse_positive_amount, allow_hyphen_values = true)]
    pub amount: u64,
    #[command(flatten)]
    pub tx: TxOptions,
}

#[derive(Debug, Args)]
pub struct UnjailArgs {
    /// The jailed validator's consensus key (66 hex characters).
    #[arg(long, value_parser = parse_validator_key)]
    pub validator: [u8; 33],
    #[command(flatten)]
    pub tx: TxOptions,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Generate a new key.
    New {
        name: String,
        /// Store the key unencrypted (testnets only; the file is marked insecure).
        #[arg(long)]
        insecure_plaintext: bool,
    },
    /// List the keys in the keystore.
    List,
    /// Show a key's address and public key.
    Show { name: String },
    /// Import a secret key (64 hex) from a file or stdin, never from the command line.
    Import {
        name: String,
        /// File holding the secret key as 64 hex characters; without it, stdin is read.
        #[arg(long)]
        secret_file: Option<PathBuf>,
        /// Store the key unencrypted (testnets only; the file is marked insecure).
        #[arg(long)]
        insecure_plaintext: bool,
    },
    /// Print a key's secret (hex). Requires --yes-print-secret.
    Export {
        name: String,
        /// Confirm that the secret may be printed to stdout.
        #[arg(long)]
        yes_print_secret: bool,
    },
}

#[derive(Debug, Args)]
pub struct BalanceArgs {
    /// Key name or 40-hex address.
    pub account: String,
    /// Verify the answer: commit signatures against the genesis validators, then the
    /// account proof against the committed state root.
    #[arg(long, requires = "genesis")]
    pub verify: bool,
    /// genesis.json of the chain (for --verify).
    #[arg(long)]
    pub genesis: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WaitFor {
    /// Return once the node has accepted the transaction into its mempool.
    Accepted,
    /// Return once the transaction is in a committed (final) block.
    Committed,
}

#[derive(Debug, Args)]
pub struct SendArgs {
    /// Recipient: key name or 40-hex address.
    #[arg(long)]
    pub to: String,
    /// Amount in base units.
    #[arg(long, value_parser = parse_positive_amount, allow_hyphen_values = true)]
    pub amount: u64,
    #[command(flatten)]
    pub tx: TxOptions,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Create this many fresh in-memory accounts funded from --fund-from.
    #[arg(long, default_value_t = 16)]
    pub accounts: usize,
    /// Key that funds the fresh accounts. Without it, keystore keys are used (--keys).
    #[arg(long)]
    pub fund_from: Option<String>,
    /// Amount sent to each fresh account [default: enough for the run, twice over].
    #[arg(long, value_parser = parse_amount)]
    pub fund_amount: Option<u64>,
    /// Keystore keys to use when not funding fresh ones (comma-separated) [default: all].
    #[arg(long, value_delimiter = ',')]
    pub keys: Vec<String>,
    /// Target submission rate, transactions per second.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// How long to submit (e.g. 10s, 1m).
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub duration: Duration,
    /// Most submissions in flight at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Amount of each benchmark transfer.
    #[arg(long, value_parser = parse_positive_amount, default_value = "1")]
    pub amount: u64,
    /// Fee of each transfer [default: the node's min_fee].
    #[arg(long, value_parser = parse_amount)]
    pub fee: Option<u64>,
    /// After submitting, how long to wait for accepted transactions to commit.
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    pub drain_timeout: Duration,
    /// Submit through `POST /v1/txs/batch`, this many txs per request (1-1024), all signed
    /// before the measured window; 0 sends one request per tx, signed as it goes.
    #[arg(long, default_value_t = 0)]
    pub batch: usize,
}
