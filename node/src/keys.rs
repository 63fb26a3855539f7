//! Node key files in `<home>/config/`: the libp2p identity (Ed25519) and, for a
//! validator, the consensus key (secp256k1). Plain JSON with mode 0600, like CometBFT's
//! `node_key.json` / `priv_validator_key.json`: a validator must sign without a human.

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use ledger::crypto::Keypair;
use ledger::hash::{from_hex_array, to_hex};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct KeyFile {
    #[serde(rename = "type")]
    kind: String,
    secret: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pubkey: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    peer_id: Option<String>,
}

/// Writes `contents` to `path` with mode 0600, creating parent directories.
pub fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(contents)?;
    f.sync_all()?;
    Ok(())
}

pub fn write_validator_key(path: &Path, key: &Keypair) -> anyhow::Result<()> {
    let file = KeyFile {
        kind: "secp256k1".into(),
        secret: to_hex(&key.secret_bytes()),
        address: Some(to_hex(&key.address())),
        pubkey: Some(to_hex(&key.public_key())),
        peer_id: None,
    };
    write_private(path, serde_json::to_string_pretty(&file)?.as_bytes())
}

pub fn read_validator_key(path: &Path) -> anyhow::Result<Keypair> {
    let file = read(path, "secp256k1")?;
    let secret: [u8; 32] = from_hex_array(&file.secret)
        .map_err(|e| anyhow::anyhow!("{}: secret is not 64 hex characters: {e}", path.display()))?;
    Keypair::from_secret_bytes(&secret).map_err(|e| {
        anyhow::anyhow!(
            "{}: secret is not a valid secp256k1 key: {e}",
            path.display()
        )
    })
}

pub fn write_node_key(path: &Path, secret: [u8; 32]) -> anyhow::Result<()> {
    let peer_id = tally_p2p::peer_id_from_secret(secret)?;
    let file = KeyFile {
        kind: "ed25519".into(),
        secret: to_hex(&secret),
        address: None,
        pubkey: None,
        peer_id: Some(peer_id.to_string()),
    };
    write_private(path, serde_json::to_string_pretty(&file)?.as_bytes())
}

pub fn read_node_key(path: &Path) -> anyhow::Result<[u8; 32]> {
    let file = read(path, "ed25519")?;
    from_hex_array(&file.secret)
        .map_err(|e| anyhow::anyhow!("{}: secret is not 64 hex characters: {e}", path.display()))
}

pub fn random_secret() -> [u8; 32] {
    use rand::RngCore;
    let mut s = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut s);
    s
}

fn read(path: &Path, kind: &str) -> anyhow::Result<KeyFile> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "cannot read key file {}; run `tallyd init` to create it",
            path.display()
        )
    })?;
    let file: KeyFile = serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{}: not a key file: {e}", path.display()))?;
    if file.kind != kind {
        anyhow::bail!(
            "{}: key type is \"{}\", expected \"{kind}\"",
            path.display(),
            file.kind
        );
    }
    Ok(file)
}
