//! What every command needs: the output format, the keystore, passwords, node clients,
//! and resolving "name or address" arguments.

use std::io::{IsTerminal, Read};
use std::path::PathBuf;

use ledger::crypto::Keypair;
use ledger::types::Address;
use zeroize::Zeroizing;

use crate::cli::{Cli, OutputFormat};
use crate::error::{Error, Result};
use crate::input::{looks_like_address, parse_address, validate_key_name};
use crate::keystore::{is_group_or_world_accessible, KdfParams, KeyInfo, Keystore};
use crate::rpc::NodeClient;

pub const PASSWORD_ENV: &str = "TALLY_PASSWORD";

pub struct Ctx {
    pub output: OutputFormat,
    pub nodes: Vec<String>,
    pub keys_dir: Option<PathBuf>,
    pub password_file: Option<PathBuf>,
}

impl Ctx {
    pub fn from_cli(cli: &Cli) -> Self {
        Self {
            output: cli.output,
            nodes: cli
                .node
                .iter()
                .map(|n| n.trim().to_string())
                .filter(|n| !n.is_empty())
                .collect(),
            keys_dir: cli.keys_dir.clone(),
            password_file: cli.password_file.clone(),
        }
    }

    pub fn json(&self) -> bool {
        self.output == OutputFormat::Json
    }

    /// Prints a command's result: `text` in text mode, `value` as one JSON line in json mode.
    pub fn emit(&self, value: &serde_json::Value, text: impl FnOnce() -> String) {
        if self.json() {
            println!("{value}");
        } else {
            let t = text();
            if !t.is_empty() {
                println!("{t}");
            }
        }
    }

    /// A progress line in text mode (nothing in json mode: stdout is one object).
    pub fn say(&self, line: impl AsRef<str>) {
        if !self.json() {
            println!("{}", line.as_ref());
        }
    }

    pub fn keystore(&self) -> Result<Keystore> {
        let dir = match &self.keys_dir {
            Some(d) => d.clone(),
            None => Keystore::default_dir()?,
        };
        if dir.exists() && is_group_or_world_accessible(&dir) {
            warn(&format!(
                "keystore directory {} is accessible by other users; run: chmod 700 {}",
                dir.display(),
                dir.display()
            ));
        }
        Ok(Keystore::new(dir, KdfParams::from_env()))
    }

    /// The first node (all commands but `bench` talk to one node).
    pub fn client(&self) -> Result<NodeClient> {
        let url = self.nodes.first().ok_or_else(|| {
            Error::usage("no node URL; pass --node http://HOST:PORT or set TALLY_NODE")
        })?;
        NodeClient::new(url)
    }

    pub fn clients(&self) -> Result<Vec<NodeClient>> {
        if self.nodes.is_empty() {
            return Err(Error::usage(
                "no node URL; pass --node http://HOST:PORT or set TALLY_NODE",
            ));
        }
        self.nodes.iter().map(|n| NodeClient::new(n)).collect()
    }

    /// The password to unlock an existing key.
    pub fn unlock_password(&self, name: &str) -> Result<Zeroizing<String>> {
        if let Some(p) = self.password_from_file_or_env()? {
            return Ok(p);
        }
        prompt(&format!("Password for key \"{name}\": "), name)
    }

    /// The password for a new key: asked twice when typed.
    pub fn new_password(&self, name: &str) -> Result<Zeroizing<String>> {
        if let Some(p) = self.password_from_file_or_env()? {
            return Ok(p);
        }
        let first = prompt(&format!("New password for key \"{name}\": "), name)?;
        let second = prompt("Repeat the password: ", name)?;
        if *first != *second {
            return Err(Error::usage(
                "the two passwords differ; run the command again",
            ));
        }
        Ok(first)
    }

    fn password_from_file_or_env(&self) -> Result<Option<Zeroizing<String>>> {
        if let Some(path) = &self.password_file {
            let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
                Error::failure(format!(
                    "cannot read the password file {}: {e}; check --password-file / TALLY_PASSWORD_FILE",
                    path.display()
                ))
            })?);
            let line = text.lines().next().unwrap_or("");
            return Ok(Some(Zeroizing::new(line.to_string())));
        }
        if let Ok(p) = std::env::var(PASSWORD_ENV) {
            return Ok(Some(Zeroizing::new(p)));
        }
        Ok(None)
    }

    /// Unlocks a key for signing, warning if it is stored in plaintext.
    pub fn unlock(&self, keystore: &Keystore, name: &str) -> Result<(Keypair, KeyInfo)> {
        let (key, info) = keystore.unlock(name, || self.unlock_password(name))?;
        if info.insecure {
            warn_insecure(&info);
        }
        Ok((key, info))
    }

    /// Resolves "key name or 40-hex address" to an address (and the key name if any).
    pub fn resolve_account(&self, text: &str) -> Result<(Address, Option<String>)> {
        if looks_like_address(text) {
            return parse_address(text).map(|a| (a, None)).map_err(Error::usage);
        }
        if validate_key_name(text).is_ok() {
            let ks = self.keystore()?;
            if ks.exists(text) {
                let info = ks.info(text)?;
                return Ok((info.address, Some(info.name)));
            }
            let hexish = text.strip_prefix("0x").unwrap_or(text);
            if !hexish.is_empty() && hexish.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(Error::usage(format!(
                    "\"{text}\" is not an address: expected 40 hex characters, got {}",
                    hexish.len()
                )));
            }
            return Err(Error::usage(format!(
                "\"{text}\" is neither a key in {} nor a 40-hex address; see 'tally keys list'",
                ks.dir().display()
            )));
        }
        Err(Error::usage(format!(
            "\"{text}\" is neither a key name nor an address (40 hex characters)"
        )))
    }
}

pub fn warn(message: &str) {
    eprintln!("warning: {}", crate::error::one_line(message));
}

pub fn warn_insecure(info: &KeyInfo) {
    warn(&format!(
        "key \"{}\" is stored UNENCRYPTED in {} (insecure plaintext: for testnets only)",
        info.name,
        info.path.display()
    ));
}

fn prompt(text: &str, name: &str) -> Result<Zeroizing<String>> {
    // Never wait on a terminal the caller did not give us (scripts, CI, tests).
    if !std::io::stdin().is_terminal() {
        return Err(Error::usage(format!(
            "no password for key \"{name}\": set TALLY_PASSWORD, pass --password-file, or run in a terminal to be prompted"
        )));
    }
    rpassword::prompt_password(text)
        .map(Zeroizing::new)
        .map_err(|e| Error::failure(format!("cannot read the password from the terminal: {e}")))
}

/// Reads a secret from a file or stdin (prompting without echo on a terminal).
pub fn read_secret(path: Option<&std::path::Path>) -> Result<Zeroizing<String>> {
    match path {
        Some(p) if p.as_os_str() != "-" => {
            if is_group_or_world_accessible(p) {
                warn(&format!(
                    "secret file {} is readable by other users; delete it after the import",
                    p.display()
                ));
            }
            std::fs::read_to_string(p).map(Zeroizing::new).map_err(|e| {
                Error::failure(format!("cannot read the secret file {}: {e}", p.display()))
            })
        }
        _ => {
            if std::io::stdin().is_terminal() {
                rpassword::prompt_password("Secret key (64 hex, not echoed): ")
                    .map(Zeroizing::new)
                    .map_err(|e| Error::failure(format!("cannot read the secret: {e}")))
            } else {
                let mut s = Zeroizing::new(String::new());
                std::io::stdin()
                    .take(4096)
                    .read_to_string(&mut s)
                    .map_err(|e| {
                        Error::failure(format!("cannot read the secret from stdin: {e}"))
                    })?;
                Ok(s)
            }
        }
    }
}
