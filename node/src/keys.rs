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

/// Writes `contents` to `path` with mode 0600, creating parent directories. Atomic: the
/// bytes go to a temporary file in the same directory, which is synced and then renamed
/// over `path`, and the directory is synced. A crash (or a reader) sees the old file or the
/// new one, never a truncated key.
pub fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let name = path
        .file_name()
        .ok_or_else(|| anyhow::anyhow!("{} is not a file path", path.display()))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let write = || -> anyhow::Result<()> {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts
            .open(&tmp)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        f.write_all(contents)
            .and_then(|()| f.sync_all())
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, path)
            .with_context(|| format!("cannot replace {}", path.display()))?;
        Ok(())
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    // The rename is durable only once the directory entry is.
    #[cfg(unix)]
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot sync the directory {}", dir.display()))?;
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Item 12 of issue 17: while the key file is rewritten, a reader (or a crash) never
    /// finds it empty or cut short.
    #[test]
    fn a_reader_never_sees_a_partly_written_validator_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config/validator_key.json");
        let keys = [Keypair::generate(), Keypair::generate()];
        write_validator_key(&path, &keys[0]).unwrap();
        let done = std::sync::atomic::AtomicBool::new(false);
        let (torn, reads) = std::thread::scope(|s| {
            let reader = s.spawn(|| {
                let (mut torn, mut reads) = (Vec::new(), 0u32);
                while !done.load(std::sync::atomic::Ordering::SeqCst) {
                    reads += 1;
                    if let Err(e) = read_validator_key(&path) {
                        torn.push(e.to_string());
                    }
                }
                (torn, reads)
            });
            for i in 0..300 {
                write_validator_key(&path, &keys[i % 2]).unwrap();
            }
            done.store(true, std::sync::atomic::Ordering::SeqCst);
            reader.join().unwrap()
        });
        assert!(reads > 0);
        assert!(
            torn.is_empty(),
            "{} of {reads} reads found a partly written key file, e.g. {:?}",
            torn.len(),
            torn.first()
        );
        let back = read_validator_key(&path).unwrap();
        assert_eq!(back.secret_bytes(), keys[1].secret_bytes());
        // No temporary file is left behind, and the file is private.
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("validator_key.json")]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
