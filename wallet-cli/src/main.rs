//! `tally`: the Tally wallet CLI. See README.md for commands, exit codes and formats.

fn main() -> std::process::ExitCode {
    tally_wallet::main_entry()
}
