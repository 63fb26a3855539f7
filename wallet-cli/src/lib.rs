//! `tally`, the Tally wallet CLI, as a library so tests can drive the same keystore and
//! signing paths the binary uses. `main.rs` only calls [`main_entry`].

pub mod cli;
pub mod commands;
pub mod context;
pub mod error;
pub mod input;
pub mod keystore;
pub mod light;
pub mod rpc;

use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::Parser;

use crate::cli::{Cli, Command, OutputFormat};
use crate::context::Ctx;
use crate::error::{Error, Result};

/// Parses the command line, runs the command, prints any error as one line on stderr
/// (and, with `--output json`, as a JSON object on stdout) and returns the exit code.
pub fn main_entry() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return clap_exit(e),
    };
    let ctx = Ctx::from_cli(&cli);
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::failure(format!("cannot start the async runtime: {e}")))
        .and_then(|rt| rt.block_on(run(&ctx, cli.command)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if ctx.output == OutputFormat::Json && !e.json_reported {
                println!(
                    "{}",
                    serde_json::json!({
                        "error": {
                            "kind": e.kind.as_str(),
                            "code": e.code,
                            "message": e.message(),
                            "exit_code": e.kind.exit_code(),
                        }
                    })
                );
            }
            eprintln!("error: {e}");
            e.exit_code()
        }
    }
}

pub async fn run(ctx: &Ctx, command: Command) -> Result<()> {
    match command {
        Command::Keys(cmd) => commands::keys::run(ctx, cmd),
        Command::Balance(args) => commands::query::balance(ctx, args).await,
        Command::Send(args) => commands::transfer::run(ctx, args).await,
        Command::Tx { id } => commands::query::tx(ctx, id).await,
        Command::Status => commands::query::status(ctx).await,
        Command::Block { at } => commands::query::block(ctx, at).await,
        Command::Bench(args) => commands::bench::run(ctx, args).await,
        Command::Stake(cmd) => commands::stake::run(ctx, cmd).await,
        Command::Validators { height } => commands::stake::validators(ctx, height).await,
        Command::Validator { key } => commands::stake::validator(ctx, key).await,
        Command::Staking { account } => commands::stake::staking(ctx, &account).await,
    }
}

/// Help and version go to stdout with exit 0; every other clap error becomes one line on
/// stderr with exit 2.
fn clap_exit(e: clap::Error) -> ExitCode {
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = e.print();
            ExitCode::SUCCESS
        }
        _ => {
            // clap's message is the first paragraph (it may continue on indented lines,
            // e.g. the list of missing arguments); usage and tips follow a blank line.
            let rendered = e.render().to_string();
            let paragraph: Vec<&str> = rendered
                .lines()
                .map(str::trim)
                .skip_while(|l| l.is_empty())
                .take_while(|l| !l.is_empty())
                .collect();
            let text = paragraph.join(" ");
            let text = text.strip_prefix("error: ").unwrap_or(&text);
            let text = if text.is_empty() {
                "invalid command line"
            } else {
                text
            };
            eprintln!("error: {text}; see 'tally --help'");
            ExitCode::from(error::Kind::Usage.exit_code())
        }
    }
}
