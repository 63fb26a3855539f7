//! Keystore round trips through the same code the binary uses.

use ledger::crypto::Keypair;
use tally_wallet::error::Kind;
use tally_wallet::keystore::{parse_secret_hex, KdfParams, Keystore, Protection};
use zeroize::Zeroizing;

fn store() -> (tempfile::TempDir, Keystore) {
    let dir = tempfile::tempdir().unwrap();
    let ks = Keystore::new(dir.path().join("keys"), KdfParams::TEST_FAST);
    (dir, ks)
}

fn pw(p: &str) -> impl FnOnce() -> tally_wallet::error::Result<Zeroizing<String>> + '_ {
    move || Ok(Zeroizing::new(p.to_string()))
}

#[test]
fn encrypt_then_decrypt_round_trips() {
    let (_d, ks) = store();
    let key = Keypair::generate();
    let info = ks
        .create("alice", &key, Protection::Password("hunter2"))
        .unwrap();
    assert_eq!(info.address, key.address());
    assert!(!info.insecure);
    let (back, info2) = ks.unlock("alice", pw("hunter2")).unwrap();
    assert_eq!(back.secret_bytes(), key.secret_bytes());
    assert_eq!(info2, info);
    // The secret is not in the file in any form a grep would find.
    let text = std::fs::read_to_string(ks.path_of("alice")).unwrap();
    assert!(!text.contains(&hex::encode(key.secret_bytes())));
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["version"], 1);
    assert_eq!(v["name"], "alice");
    assert_eq!(v["address"], hex::encode(key.address()));
    assert_eq!(v["public_key"], hex::encode(key.public_key()));
    assert_eq!(v["insecure"], false);
    assert_eq!(v["crypto"]["kdf"], "argon2id");
    assert_eq!(v["crypto"]["cipher"], "chacha20poly1305");
    assert_eq!(v["crypto"]["salt"].as_str().unwrap().len(), 32);
    assert_eq!(v["crypto"]["nonce"].as_str().unwrap().len(), 24);
}

#[test]
fn same_key_twice_gives_different_ciphertexts() {
    let (_d, ks) = store();
    let key = Keypair::generate();
    ks.create("a", &key, Protection::Password("p")).unwrap();
    ks.create("b", &key, Protection::Password("p")).unwrap();
    let read = |n: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(ks.path_of(n)).unwrap()).unwrap()
    };
    assert_ne!(read("a")["crypto"]["salt"], read("b")["crypto"]["salt"]);
    assert_ne!(
        read("a")["crypto"]["ciphertext"],
        read("b")["crypto"]["ciphertext"]
    );
}

#[test]
fn wrong_password_fails_clearly() {
    let (_d, ks) = store();
    ks.create("alice", &Keypair::generate(), Protection::Password("right"))
        .unwrap();
    let e = ks.unlock("alice", pw("wrong")).unwrap_err();
    assert_eq!(e.kind, Kind::Failure);
    assert!(
        e.message().contains("wrong password for key \"alice\""),
        "{e}"
    );
    assert!(!e.message().contains('\n'));
}

#[test]
fn missing_key_and_duplicate_names_are_errors() {
    let (_d, ks) = store();
    let e = ks.unlock("nobody", pw("x")).unwrap_err();
    assert!(e.message().contains("no key named \"nobody\""), "{e}");
    let key = Keypair::generate();
    ks.create("alice", &key, Protection::Password("p")).unwrap();
    let e = ks
        .create("alice", &key, Protection::Password("p"))
        .unwrap_err();
    assert!(e.message().contains("already exists"), "{e}");
    let e = ks
        .create("../evil", &key, Protection::Password("p"))
        .unwrap_err();
    assert_eq!(e.kind, Kind::Usage);
    let e = ks
        .create("empty", &key, Protection::Password(""))
        .unwrap_err();
    assert_eq!(e.kind, Kind::Usage);
}

#[cfg(unix)]
#[test]
fn files_are_0600_and_directory_0700() {
    use std::os::unix::fs::PermissionsExt;
    let (_d, ks) = store();
    ks.create("alice", &Keypair::generate(), Protection::Password("p"))
        .unwrap();
    ks.create("bob", &Keypair::generate(), Protection::InsecurePlaintext)
        .unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(ks.dir()), 0o700);
    assert_eq!(mode(&ks.path_of("alice")), 0o600);
    assert_eq!(mode(&ks.path_of("bob")), 0o600);
    // No temporary files left behind.
    let names: Vec<_> = std::fs::read_dir(ks.dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
}

#[test]
fn plaintext_keys_are_marked_insecure_and_need_no_password() {
    let (_d, ks) = store();
    let key = Keypair::generate();
    let info = ks
        .create("dev", &key, Protection::InsecurePlaintext)
        .unwrap();
    assert!(info.insecure);
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ks.path_of("dev")).unwrap()).unwrap();
    assert_eq!(v["insecure"], true);
    assert_eq!(v["secret_key"], hex::encode(key.secret_bytes()));
    assert!(v.get("crypto").is_none());
    let (back, info) = ks
        .unlock("dev", || {
            panic!("a plaintext key must not ask for a password")
        })
        .unwrap();
    assert!(info.insecure);
    assert_eq!(back.address(), key.address());
    assert_eq!(ks.list().unwrap().len(), 1);
}

#[test]
fn import_then_export_returns_the_same_secret() {
    let (_d, ks) = store();
    let secret = "ae72dd84b01d20be3255d6273afc5075d7db6d5c8bce030925e4fc98cbbf6325";
    let key = parse_secret_hex(&format!("  0x{}\n", secret.to_uppercase())).unwrap();
    ks.create("imported", &key, Protection::Password("p"))
        .unwrap();
    let (back, info) = ks.unlock("imported", pw("p")).unwrap();
    assert_eq!(hex::encode(back.secret_bytes()), secret);
    assert_eq!(
        hex::encode(info.address),
        "2378b50dae7d4a9a336cb1b72832db240816988d"
    );
    for bad in ["", "abcd", &"zz".repeat(32), &"00".repeat(32)] {
        let e = parse_secret_hex(bad).unwrap_err();
        assert_eq!(e.kind, Kind::Usage, "{bad}: {e}");
    }
}

#[test]
fn edited_address_is_detected() {
    let (_d, ks) = store();
    let key = Keypair::generate();
    let other = Keypair::generate();
    ks.create("alice", &key, Protection::Password("p")).unwrap();
    let path = ks.path_of("alice");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    v["address"] = hex::encode(other.address()).into();
    v["public_key"] = hex::encode(other.public_key()).into();
    std::fs::write(&path, v.to_string()).unwrap();
    // The address is bound as associated data: the right password no longer opens it.
    assert!(ks.unlock("alice", pw("p")).is_err());
}

#[test]
fn strong_default_params_round_trip_and_are_recorded() {
    // The parameters real keys get (64 MiB, 3 passes): one derivation each way.
    let dir = tempfile::tempdir().unwrap();
    let ks = Keystore::new(dir.path().to_path_buf(), KdfParams::STRONG);
    let key = Keypair::generate();
    ks.create("strong", &key, Protection::Password("p"))
        .unwrap();
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ks.path_of("strong")).unwrap()).unwrap();
    assert_eq!(v["crypto"]["kdf_params"]["m_cost_kib"], 65536);
    assert_eq!(v["crypto"]["kdf_params"]["t_cost"], 3);
    // A keystore opened with other (test) parameters still reads it: params come from the file.
    let reader = Keystore::new(dir.path().to_path_buf(), KdfParams::TEST_FAST);
    let (back, _) = reader.unlock("strong", pw("p")).unwrap();
    assert_eq!(back.address(), key.address());
}

/// Item 12 of issue 17: a key created while `TALLY_KDF_TEST_FAST=1` is honoured comes
/// with a loud warning; a key made with the real parameters does not.
#[test]
fn a_weak_test_kdf_key_is_created_with_a_loud_warning() {
    let w = crate::cli_support::Wallet::new("http://127.0.0.1:9");
    let out = w.run(&["keys", "new", "weak"]);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let warning = stderr
        .lines()
        .find(|l| l.contains("TALLY_KDF_TEST_FAST"))
        .unwrap_or_else(|| panic!("no warning about the weak KDF: {stderr:?}"));
    assert!(warning.starts_with("warning: WEAK KEY"), "{warning}");
    assert!(warning.contains("brute-forced"), "{warning}");
    let out = w
        .cmd(&["keys", "new", "strong"])
        .env_remove("TALLY_KDF_TEST_FAST")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("WEAK KEY"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
