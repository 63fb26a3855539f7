//! The keystore: one versioned JSON file per key in a directory (default `~/.tally/keys`).
//!
//! An encrypted file holds the secret key sealed with ChaCha20-Poly1305 under a key
//! derived from the password by argon2id (random 16-byte salt, random 12-byte nonce). The
//! address and public key are stored in clear so `keys list` needs no password; they are
//! also bound into the AEAD as associated data, so editing them makes decryption fail
//! instead of silently pairing a secret with another address. Plaintext files exist only
//! for throw-away testnet keys and say `"insecure": true`.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use argon2::{Algorithm, Argon2, Params, Version};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use ledger::crypto::Keypair;
use ledger::types::{Address, PublicKeyBytes};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::input::validate_key_name;

/// Format version written in every key file.
pub const KEYFILE_VERSION: u32 = 1;
/// Set to `1` to use very cheap KDF parameters. For tests only: keys written this way are
/// trivially brute-forced, which is why the variable is undocumented in `--help`.
pub const TEST_FAST_KDF_ENV: &str = "TALLY_KDF_TEST_FAST";

const AAD_DOMAIN: &[u8] = b"tally-keystore-v1";
const SALT_LEN: usize = 16;
const NONCE_LEN: usize = 12;

/// argon2id cost parameters, stored in the file so they can be raised later without
/// breaking old files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    pub m_cost_kib: u32,
    pub t_cost: u32,
    pub p_cost: u32,
}

impl KdfParams {
    /// RFC 9106's second recommended option (64 MiB, 3 passes), single lane so it costs
    /// the same on a two-core laptop as on a server: about half a second.
    pub const STRONG: KdfParams = KdfParams {
        m_cost_kib: 64 * 1024,
        t_cost: 3,
        p_cost: 1,
    };
    /// For tests: microseconds instead of half a second.
    pub const TEST_FAST: KdfParams = KdfParams {
        m_cost_kib: 64,
        t_cost: 1,
        p_cost: 1,
    };

    /// [`Self::STRONG`] unless `TALLY_KDF_TEST_FAST=1`.
    pub fn from_env() -> Self {
        match std::env::var(TEST_FAST_KDF_ENV) {
            Ok(v) if v == "1" => Self::TEST_FAST,
            _ => Self::STRONG,
        }
    }

    /// Bounds on parameters read from a file, so a tampered file cannot make us allocate
    /// gigabytes or spin for hours.
    fn check(&self) -> Result<Params, String> {
        if self.m_cost_kib > 4 * 1024 * 1024 || self.t_cost > 64 || self.p_cost > 16 {
            return Err(format!("KDF parameters out of range: {self:?}"));
        }
        Params::new(self.m_cost_kib, self.t_cost, self.p_cost, Some(32))
            .map_err(|e| format!("invalid KDF parameters {self:?}: {e}"))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CryptoSection {
    /// Always "argon2id".
    pub kdf: String,
    pub kdf_params: KdfParams,
    /// Hex, 16 bytes.
    pub salt: String,
    /// Always "chacha20poly1305".
    pub cipher: String,
    /// Hex, 12 bytes.
    pub nonce: String,
    /// Hex of the sealed 32-byte secret plus the 16-byte tag.
    pub ciphertext: String,
}

/// The file as stored on disk.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyFile {
    pub version: u32,
    pub name: String,
    /// 40 hex chars.
    pub address: String,
    /// 66 hex chars (compressed secp256k1 point).
    pub public_key: String,
    /// True for plaintext keys: anyone who can read the file can spend.
    #[serde(default)]
    pub insecure: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crypto: Option<CryptoSection>,
    /// Hex secret, only in insecure files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key: Option<String>,
}

/// What can be learned about a key without its password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    pub name: String,
    pub address: Address,
    pub public_key: PublicKeyBytes,
    pub insecure: bool,
    pub path: PathBuf,
}

/// How a new key is protected.
pub enum Protection<'a> {
    Password(&'a str),
    InsecurePlaintext,
}

pub struct Keystore {
    dir: PathBuf,
    kdf: KdfParams,
}

impl Keystore {
    pub fn new(dir: PathBuf, kdf: KdfParams) -> Self {
        Self { dir, kdf }
    }

    /// `~/.tally/keys`.
    pub fn default_dir() -> Result<PathBuf> {
        match std::env::var_os("HOME") {
            Some(home) if !home.is_empty() => Ok(PathBuf::from(home).join(".tally").join("keys")),
            _ => Err(Error::usage(
                "cannot find the home directory (HOME is not set); pass --keys-dir or set TALLY_KEYS_DIR",
            )),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn path_of(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.json"))
    }

    pub fn exists(&self, name: &str) -> bool {
        validate_key_name(name).is_ok() && self.path_of(name).is_file()
    }

    /// Writes a new key file (mode 0600, directory 0700); refuses to overwrite one.
    pub fn create(&self, name: &str, key: &Keypair, protection: Protection<'_>) -> Result<KeyInfo> {
        validate_key_name(name).map_err(Error::usage)?;
        let path = self.path_of(name);
        if path.exists() {
            return Err(Error::failure(format!(
                "key \"{name}\" already exists at {}; choose another name or delete that file first",
                path.display()
            )));
        }
        let address = key.address();
        let public_key = key.public_key();
        let secret = Zeroizing::new(key.secret_bytes());
        let mut file = KeyFile {
            version: KEYFILE_VERSION,
            name: name.to_string(),
            address: hex::encode(address),
            public_key: hex::encode(public_key),
            insecure: false,
            crypto: None,
            secret_key: None,
        };
        match protection {
            Protection::InsecurePlaintext => {
                file.insecure = true;
                file.secret_key = Some(hex::encode(*secret));
            }
            Protection::Password(password) => {
                if password.is_empty() {
                    return Err(Error::usage(
                        "empty password; choose a password, or use --insecure-plaintext for a throw-away testnet key",
                    ));
                }
                if self.kdf != KdfParams::STRONG {
                    // Honoured only to keep test suites fast: say so loudly every time, so
                    // a key made this way by mistake is never mistaken for a real one.
                    crate::context::warn(&format!(
                        "WEAK KEY: {TEST_FAST_KDF_ENV} (tests only) is in effect: key \"{name}\" \
                         is encrypted with argon2 cost {} KiB / {} pass instead of {} KiB / {} \
                         passes, so its password can be brute-forced quickly; never hold real \
                         funds with it: unset {TEST_FAST_KDF_ENV} and create a new key",
                        self.kdf.m_cost_kib,
                        self.kdf.t_cost,
                        KdfParams::STRONG.m_cost_kib,
                        KdfParams::STRONG.t_cost,
                    ));
                }
                file.crypto = Some(seal(&secret, password, &address, &public_key, self.kdf)?);
            }
        }
        let text = Zeroizing::new(
            serde_json::to_string_pretty(&file)
                .map_err(|e| Error::failure(format!("cannot encode the key file: {e}")))?,
        );
        self.ensure_dir()?;
        write_new_private_file(&path, text.as_bytes())?;
        Ok(KeyInfo {
            name: name.to_string(),
            address,
            public_key,
            insecure: file.insecure,
            path,
        })
    }

    /// Reads a key's public part (no password needed).
    pub fn info(&self, name: &str) -> Result<KeyInfo> {
        let (file, path) = self.read(name)?;
        parse_info(&file, path)
    }

    /// All keys, sorted by name. Damaged files are skipped with a warning on stderr.
    pub fn list(&self) -> Result<Vec<KeyInfo>> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(Error::failure(format!(
                    "cannot read the keystore directory {}: {e}",
                    self.dir.display()
                )))
            }
        };
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let file_name = entry.file_name();
            let Some(stem) = file_name.to_str().and_then(|n| n.strip_suffix(".json")) else {
                continue;
            };
            if validate_key_name(stem).is_err() {
                continue;
            }
            // One damaged file must not hide the other keys.
            match self.info(stem) {
                Ok(info) => out.push(info),
                Err(e) => crate::context::warn(&format!("skipping: {e}")),
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Decrypts a key. `password` is only asked for when the file is encrypted.
    pub fn unlock(
        &self,
        name: &str,
        password: impl FnOnce() -> Result<Zeroizing<String>>,
    ) -> Result<(Keypair, KeyInfo)> {
        let (file, path) = self.read(name)?;
        let info = parse_info(&file, path)?;
        let secret: Zeroizing<[u8; 32]> = if file.insecure {
            let hex_secret = file.secret_key.as_deref().ok_or_else(|| {
                corrupt(&info.path, "it is marked insecure but has no secret_key")
            })?;
            Zeroizing::new(
                ledger::hash::from_hex_array::<32>(hex_secret)
                    .map_err(|e| corrupt(&info.path, &format!("secret_key: {e}")))?,
            )
        } else {
            let crypto = file
                .crypto
                .as_ref()
                .ok_or_else(|| corrupt(&info.path, "it has no crypto section"))?;
            let password = password()?;
            open(crypto, &password, &info)?
        };
        let key = Keypair::from_secret_bytes(&secret)
            .map_err(|e| corrupt(&info.path, &format!("secret: {e}")))?;
        if key.address() != info.address || key.public_key() != info.public_key {
            return Err(corrupt(
                &info.path,
                "its secret does not match its address; restore the file from a backup",
            ));
        }
        Ok((key, info))
    }

    fn read(&self, name: &str) -> Result<(KeyFile, PathBuf)> {
        validate_key_name(name).map_err(Error::usage)?;
        let path = self.path_of(name);
        let text = match fs::read_to_string(&path) {
            Ok(t) => Zeroizing::new(t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::failure(format!(
                    "no key named \"{name}\" in {}; see 'tally keys list', create one with 'tally keys new {name}', or set --keys-dir / TALLY_KEYS_DIR",
                    self.dir.display()
                )))
            }
            Err(e) => {
                return Err(Error::failure(format!("cannot read key file {}: {e}", path.display())))
            }
        };
        let file: KeyFile = serde_json::from_str(&text)
            .map_err(|e| corrupt(&path, &format!("not a Tally key file ({e})")))?;
        if file.version != KEYFILE_VERSION {
            return Err(Error::failure(format!(
                "key file {} has format version {}, this tally understands version {KEYFILE_VERSION}; upgrade tally",
                path.display(),
                file.version
            )));
        }
        Ok((file, path))
    }

    fn ensure_dir(&self) -> Result<()> {
        let mut builder = fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt;
            builder.mode(0o700);
        }
        builder.create(&self.dir).map_err(|e| {
            Error::failure(format!(
                "cannot create the keystore directory {}: {e}; pass a writable --keys-dir",
                self.dir.display()
            ))
        })
    }
}

/// Whether other users can read a file or directory (a warning, not an error: the file
/// is still encrypted unless insecure).
pub fn is_group_or_world_accessible(path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::metadata(path)
            .map(|m| m.permissions().mode() & 0o077 != 0)
            .unwrap_or(false)
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        false
    }
}

fn corrupt(path: &Path, what: &str) -> Error {
    Error::failure(format!("key file {} is damaged: {what}", path.display()))
}

fn parse_info(file: &KeyFile, path: PathBuf) -> Result<KeyInfo> {
    let address = ledger::hash::from_hex_array::<20>(&file.address)
        .map_err(|e| corrupt(&path, &format!("address: {e}")))?;
    let public_key = ledger::hash::from_hex_array::<33>(&file.public_key)
        .map_err(|e| corrupt(&path, &format!("public_key: {e}")))?;
    if ledger::crypto::address_of(&public_key) != address {
        return Err(corrupt(&path, "its address does not match its public key"));
    }
    Ok(KeyInfo {
        name: file.name.clone(),
        address,
        public_key,
        insecure: file.insecure,
        path,
    })
}

fn aad(address: &Address, public_key: &PublicKeyBytes) -> Vec<u8> {
    [AAD_DOMAIN, address.as_slice(), public_key.as_slice()].concat()
}

fn derive_key(password: &str, salt: &[u8], params: KdfParams) -> Result<Zeroizing<[u8; 32]>> {
    let p = params
        .check()
        .map_err(|e| Error::failure(format!("keystore: {e}")))?;
    let mut out = Zeroizing::new([0u8; 32]);
    Argon2::new(Algorithm::Argon2id, Version::V0x13, p)
        .hash_password_into(password.as_bytes(), salt, out.as_mut())
        .map_err(|e| Error::failure(format!("keystore: key derivation failed: {e}")))?;
    Ok(out)
}

fn seal(
    secret: &[u8; 32],
    password: &str,
    address: &Address,
    public_key: &PublicKeyBytes,
    params: KdfParams,
) -> Result<CryptoSection> {
    let mut salt = [0u8; SALT_LEN];
    let mut nonce = [0u8; NONCE_LEN];
    rand::rngs::OsRng.fill_bytes(&mut salt);
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let key = derive_key(password, &salt, params)?;
    let cipher = ChaCha20Poly1305::new(Key::from_slice(key.as_ref()));
    let ciphertext = cipher
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: secret,
                aad: &aad(address, public_key),
            },
        )
        .map_err(|_| Error::failure("keystore: encryption failed"))?;
    Ok(CryptoSection {
        kdf: "argon2id".into(),
        kdf_params: params,
        salt: hex::encode(salt),
        cipher: "chacha20poly1305".into(),
        nonce: hex::encode(nonce),
        ciphertext: hex::encode(ciphertext),
    })
}

fn open(crypto: &CryptoSection, password: &str, info: &KeyInfo) -> Result<Zeroizing<[u8; 32]>> {
    if crypto.kdf != "argon2id" || crypto.cipher != "chacha20poly1305" {
        return Err(corrupt(
            &info.path,
            &format!("unknown kdf/cipher {}/{}", crypto.kdf, crypto.cipher),
        ));
    }
    let salt = hex::decode(&crypto.salt).map_err(|e| corrupt(&info.path, &format!("salt: {e}")))?;
    let nonce = ledger::hash::from_hex_array::<NONCE_LEN>(&crypto.nonce)
        .map_err(|e| corrupt(&info.path, &format!("nonce: {e}")))?;
    let ciphertext = hex::decode(&crypto.ciphertext)
        .map_err(|e| corrupt(&info.path, &format!("ciphertext: {e}")))?;
    let key = derive_key(password, &salt, crypto.kdf_params)?;
    let cipher = ChaCha20Poly1305::new(Key::from_slice(key.as_ref()));
    let plain = Zeroizing::new(
        cipher
            .decrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: &ciphertext,
                    aad: &aad(&info.address, &info.public_key),
                },
            )
            .map_err(|_| {
                Error::failure(format!(
                    "wrong password for key \"{}\" (the key file did not decrypt); try again, or check --password-file / TALLY_PASSWORD",
                    info.name
                ))
            })?,
    );
    let secret: [u8; 32] = plain
        .as_slice()
        .try_into()
        .map_err(|_| corrupt(&info.path, "the sealed secret is not 32 bytes"))?;
    Ok(Zeroizing::new(secret))
}

/// Creates `path` with mode 0600 and the given content, never replacing an existing
/// file: write a temporary file, then hard-link it into place (which fails if the name
/// is taken) so a crash never leaves a half-written key under the real name.
fn write_new_private_file(path: &Path, content: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut suffix = [0u8; 6];
    rand::rngs::OsRng.fill_bytes(&mut suffix);
    let tmp = dir.join(format!(".tmp-{}", hex::encode(suffix)));
    let fail = |e: std::io::Error| {
        Error::failure(format!("cannot write key file {}: {e}", path.display()))
    };
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let result = (|| {
        let mut f = options.open(&tmp)?;
        f.write_all(content)?;
        f.sync_all()?;
        fs::hard_link(&tmp, path)
    })();
    let _ = fs::remove_file(&tmp);
    match result {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(Error::failure(format!(
            "key file {} already exists; choose another name",
            path.display()
        ))),
        Err(e) => Err(fail(e)),
    }
}

/// Parses a secret key given as 64 hex characters (surrounding whitespace and a `0x`
/// prefix are tolerated).
pub fn parse_secret_hex(text: &str) -> Result<Keypair> {
    let trimmed = Zeroizing::new(text.trim().to_ascii_lowercase());
    let secret = Zeroizing::new(ledger::hash::from_hex_array::<32>(&trimmed).map_err(|e| {
        Error::usage(format!(
            "the secret key must be 64 hex characters ({e}); pass it in a file with --secret-file or on stdin"
        ))
    })?);
    Keypair::from_secret_bytes(&secret)
        .map_err(|e| Error::usage(format!("the secret key is not usable: {e}")))
}
