//! `tally keys new|list|show|import|export`.

use ledger::crypto::Keypair;
use serde_json::json;
use zeroize::Zeroizing;

use crate::cli::KeysCommand;
use crate::context::{read_secret, warn, warn_insecure, Ctx};
use crate::error::{Error, Result};
use crate::keystore::{parse_secret_hex, KeyInfo, Protection};

pub fn run(ctx: &Ctx, cmd: KeysCommand) -> Result<()> {
    let ks = ctx.keystore()?;
    match cmd {
        KeysCommand::New {
            name,
            insecure_plaintext,
        } => {
            crate::input::validate_key_name(&name).map_err(Error::usage)?;
            if ks.exists(&name) {
                return Err(Error::failure(format!(
                    "key \"{name}\" already exists at {}; choose another name",
                    ks.path_of(&name).display()
                )));
            }
            let key = Keypair::generate();
            let info = store(ctx, &ks, &name, &key, insecure_plaintext)?;
            print_key(ctx, "created", &info);
            Ok(())
        }
        KeysCommand::Import {
            name,
            secret_file,
            insecure_plaintext,
        } => {
            crate::input::validate_key_name(&name).map_err(Error::usage)?;
            if ks.exists(&name) {
                return Err(Error::failure(format!(
                    "key \"{name}\" already exists at {}; choose another name",
                    ks.path_of(&name).display()
                )));
            }
            let secret = read_secret(secret_file.as_deref())?;
            let key = parse_secret_hex(&secret)?;
            drop(secret);
            let info = store(ctx, &ks, &name, &key, insecure_plaintext)?;
            print_key(ctx, "imported", &info);
            Ok(())
        }
        KeysCommand::List => {
            let keys = ks.list()?;
            let value = json!({
                "keys_dir": ks.dir().display().to_string(),
                "keys": keys.iter().map(key_json).collect::<Vec<_>>(),
            });
            ctx.emit(&value, || {
                if keys.is_empty() {
                    return format!(
                        "no keys in {}; create one with 'tally keys new NAME'",
                        ks.dir().display()
                    );
                }
                let width = keys.iter().map(|k| k.name.len()).max().unwrap_or(4).max(4);
                let mut out = format!("{:width$}  ADDRESS", "NAME");
                for k in &keys {
                    out.push_str(&format!(
                        "\n{:width$}  {}{}",
                        k.name,
                        hex::encode(k.address),
                        if k.insecure {
                            "  INSECURE (plaintext)"
                        } else {
                            ""
                        }
                    ));
                }
                out
            });
            Ok(())
        }
        KeysCommand::Show { name } => {
            let info = ks.info(&name)?;
            if info.insecure {
                warn_insecure(&info);
            }
            print_key(ctx, "", &info);
            Ok(())
        }
        KeysCommand::Export {
            name,
            yes_print_secret,
        } => {
            if !yes_print_secret {
                return Err(Error::usage(format!(
                    "export prints the secret key of \"{name}\" to stdout, and anyone who sees it can spend the funds; add --yes-print-secret to confirm"
                )));
            }
            let (key, info) = ctx.unlock(&ks, &name)?;
            let secret = Zeroizing::new(hex::encode(key.secret_bytes()));
            warn(&format!(
                "printing the secret key of \"{}\"; do not share it or leave it in shell history or logs",
                info.name
            ));
            let mut value = key_json(&info);
            value["secret_key"] = json!(secret.as_str());
            ctx.emit(&value, || secret.to_string());
            Ok(())
        }
    }
}

fn store(
    ctx: &Ctx,
    ks: &crate::keystore::Keystore,
    name: &str,
    key: &Keypair,
    insecure: bool,
) -> Result<KeyInfo> {
    let info = if insecure {
        ks.create(name, key, Protection::InsecurePlaintext)?
    } else {
        let password = ctx.new_password(name)?;
        ks.create(name, key, Protection::Password(&password))?
    };
    if info.insecure {
        warn_insecure(&info);
    }
    Ok(info)
}

pub fn key_json(k: &KeyInfo) -> serde_json::Value {
    json!({
        "name": k.name,
        "address": hex::encode(k.address),
        "public_key": hex::encode(k.public_key),
        "insecure": k.insecure,
        "path": k.path.display().to_string(),
    })
}

fn print_key(ctx: &Ctx, verb: &str, info: &KeyInfo) {
    ctx.emit(&key_json(info), || {
        let head = if verb.is_empty() {
            format!("key \"{}\"", info.name)
        } else {
            format!("{verb} key \"{}\"", info.name)
        };
        format!(
            "{head}\naddress     {}\npublic key  {}\nfile        {}{}",
            hex::encode(info.address),
            hex::encode(info.public_key),
            info.path.display(),
            if info.insecure {
                "\nstorage     INSECURE plaintext (testnets only)"
            } else {
                "\nstorage     encrypted (argon2id + chacha20poly1305)"
            }
        )
    });
}
