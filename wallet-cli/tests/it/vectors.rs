//! A key imported through the wallet signs exactly as the golden vectors say
//! (../shared/vectors/tally-v1.json, produced by an independent implementation).

use ledger::codec::{decode, encode};
use ledger::types::SignedTx;
use serde_json::Value;
use tally_wallet::commands::transfer::build_transfer;
use tally_wallet::keystore::{parse_secret_hex, KdfParams, Keystore, Protection};
use zeroize::Zeroizing;

/// This crate's directory, read at run time (cargo and nextest set it) so that a test
/// binary reused from another checkout of the same sources reads this checkout's files.
fn manifest_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| env!("CARGO_MANIFEST_DIR").into(), Into::into)
}

fn vectors() -> Value {
    let path = manifest_dir().join("../../shared/vectors/tally-v1.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// u64 values above 2^53 are strings in the vector file.
fn u64_of(v: &Value) -> u64 {
    match v {
        Value::Number(n) => n.as_u64().unwrap(),
        Value::String(s) => s.parse().unwrap(),
        other => panic!("not a u64: {other}"),
    }
}

#[test]
fn wallet_imported_keys_sign_like_the_vectors() {
    let v = vectors();
    let dir = tempfile::tempdir().unwrap();
    let ks = Keystore::new(dir.path().to_path_buf(), KdfParams::TEST_FAST);
    let keys = v["keys"].as_array().unwrap();
    for (i, k) in keys.iter().enumerate() {
        // private key = SHA-256(seed), fed through the wallet's import path.
        let secret = hex::encode(ledger::sha256(k["seed"].as_str().unwrap().as_bytes()));
        assert_eq!(secret, k["private_key"].as_str().unwrap());
        let key = parse_secret_hex(&secret).unwrap();
        ks.create(&format!("k{i}"), &key, Protection::Password("pw"))
            .unwrap();
        let (unlocked, info) = ks
            .unlock(&format!("k{i}"), || Ok(Zeroizing::new("pw".to_string())))
            .unwrap();
        assert_eq!(
            hex::encode(unlocked.public_key()),
            k["public_key"].as_str().unwrap()
        );
        assert_eq!(hex::encode(info.address), k["address"].as_str().unwrap());
    }
    let txs = v["transactions"].as_array().unwrap();
    assert!(!txs.is_empty());
    for (n, t) in txs.iter().enumerate() {
        let idx = t["signer_key_index"].as_u64().unwrap() as usize;
        let (key, _) = ks
            .unlock(&format!("k{idx}"), || Ok(Zeroizing::new("pw".to_string())))
            .unwrap();
        let tx = &t["tx"];
        assert_eq!(tx["from"].as_str().unwrap(), hex::encode(key.public_key()));
        let transfer = &tx["payload"]["transfer"];
        let to = ledger::hash::from_hex_array::<20>(transfer["to"].as_str().unwrap()).unwrap();
        let stx = build_transfer(
            &key,
            tx["chain_id"].as_str().unwrap(),
            u64_of(&tx["nonce"]),
            u64_of(&tx["fee"]),
            to,
            u64_of(&transfer["amount"]),
        );
        assert_eq!(
            hex::encode(encode(&stx.tx)),
            t["tx_borsh"].as_str().unwrap(),
            "tx {n}"
        );
        assert_eq!(
            hex::encode(stx.signature),
            t["signature"].as_str().unwrap(),
            "tx {n}"
        );
        let signed = encode(&stx);
        assert_eq!(
            hex::encode(&signed),
            t["signed_tx_borsh"].as_str().unwrap(),
            "tx {n}"
        );
        assert_eq!(
            hex::encode(stx.id()),
            t["tx_id"].as_str().unwrap(),
            "tx {n}"
        );
        stx.verify_signature().unwrap();
        let back: SignedTx = decode("tx", &signed, 1 << 16).unwrap();
        assert_eq!(back, stx);
    }
}
