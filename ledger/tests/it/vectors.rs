//! Reproduces every entry of ../shared/vectors/tally-v1.json byte for byte. The file is
//! read at test time, never copied into the code.

use ledger::crypto::{address_of, signing_digest, verify, Keypair};
use ledger::hash::{from_hex_array, sha256};
use ledger::merkle::merkle_root;
use ledger::types::*;
use ledger::validators::{CommitError, ValidatorSet};
use serde_json::Value;

/// This crate's directory, read at run time (cargo and nextest set it) so that a test
/// binary reused from another checkout of the same sources reads this checkout's files.
pub(crate) fn manifest_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| env!("CARGO_MANIFEST_DIR").into(), Into::into)
}

fn vectors() -> Value {
    let path = manifest_dir().join("../../shared/vectors/tally-v1.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read the golden vectors at {}: {e} (../shared must sit beside the repo)",
            path.display()
        )
    });
    serde_json::from_str(&text).expect("vectors are JSON")
}

pub(crate) fn h<const N: usize>(v: &Value) -> [u8; N] {
    from_hex_array(v.as_str().expect("hex string")).expect("valid hex")
}

pub(crate) fn bytes(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().expect("hex string")).expect("valid hex")
}

/// u64 values above 2^53 are strings in the file.
pub(crate) fn u(v: &Value) -> u64 {
    match v {
        Value::String(s) => s.parse().expect("u64 string"),
        other => other.as_u64().expect("u64 number"),
    }
}

fn keys(v: &Value) -> Vec<Keypair> {
    v["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            let secret = sha256(k["seed"].as_str().unwrap().as_bytes());
            assert_eq!(
                secret,
                h::<32>(&k["private_key"]),
                "private key = SHA-256(seed)"
            );
            let kp = Keypair::from_secret_bytes(&secret).unwrap();
            assert_eq!(kp.public_key(), h::<33>(&k["public_key"]));
            assert_eq!(kp.address(), h::<20>(&k["address"]));
            assert_eq!(address_of(&kp.public_key()), kp.address());
            kp
        })
        .collect()
}

fn hash_opt(v: &Value) -> Option<[u8; 32]> {
    if v.is_null() {
        None
    } else {
        Some(h(v))
    }
}

#[test]
fn keys_derive_public_keys_and_addresses() {
    let v = vectors();
    assert_eq!(keys(&v).len(), v["keys"].as_array().unwrap().len());
}

#[test]
fn transactions_encode_sign_and_hash_exactly() {
    let v = vectors();
    let keys = keys(&v);
    let cases = v["transactions"].as_array().unwrap();
    assert!(!cases.is_empty());
    for (i, c) in cases.iter().enumerate() {
        let t = &c["tx"];
        let tr = &t["payload"]["transfer"];
        let tx = Tx {
            chain_id: t["chain_id"].as_str().unwrap().to_string(),
            from: h(&t["from"]),
            nonce: u(&t["nonce"]),
            fee: u(&t["fee"]),
            payload: Payload::Transfer {
                to: h(&tr["to"]),
                amount: u(&tr["amount"]),
            },
        };
        assert_eq!(
            borsh::to_vec(&tx).unwrap(),
            bytes(&c["tx_borsh"]),
            "tx {i} borsh"
        );
        assert_eq!(
            signing_digest(&tx.signing_bytes()),
            h::<32>(&c["signing_digest"]),
            "tx {i} digest"
        );
        let key = &keys[c["signer_key_index"].as_u64().unwrap() as usize];
        let stx = key.sign_tx(tx.clone());
        assert_eq!(
            stx.signature,
            h::<64>(&c["signature"]),
            "tx {i} signature (RFC 6979, low S)"
        );
        stx.verify_signature().unwrap();
        let encoded = borsh::to_vec(&stx).unwrap();
        assert_eq!(encoded, bytes(&c["signed_tx_borsh"]), "tx {i} signed borsh");
        assert_eq!(stx.id(), h::<32>(&c["tx_id"]), "tx {i} id");
        let decoded: SignedTx = ledger::codec::decode("tx", &encoded, 1 << 20).unwrap();
        assert_eq!(decoded, stx, "tx {i} decodes back");
    }
}

#[test]
fn invalid_signatures_are_rejected() {
    let v = vectors();
    let cases = v["invalid_signatures"].as_array().unwrap();
    assert_eq!(cases.len(), 4);
    for c in cases {
        let tx_bytes = bytes(&c["tx_borsh"]);
        let tx: Tx = ledger::codec::decode("tx", &tx_bytes, 1 << 20).unwrap();
        let stx = SignedTx {
            tx,
            signature: h(&c["signature"]),
        };
        let pk: [u8; 33] = h(&c["public_key"]);
        assert_eq!(stx.tx.from, pk);
        assert!(stx.verify_signature().is_err(), "must reject: {}", c["why"]);
        // And the raw verifier agrees.
        let mut msg = TX_DOMAIN.to_vec();
        msg.extend_from_slice(&tx_bytes);
        assert!(verify(&pk, &msg, &stx.signature).is_err(), "{}", c["why"]);
    }
}

#[test]
fn votes_and_proposals_encode_and_sign_exactly() {
    let v = vectors();
    let keys = keys(&v);
    for (i, c) in v["votes"].as_array().unwrap().iter().enumerate() {
        let vt = &c["vote"];
        let vote = Vote {
            chain_id: vt["chain_id"].as_str().unwrap().into(),
            height: u(&vt["height"]),
            round: u(&vt["round"]) as u32,
            kind: match vt["kind"].as_str().unwrap() {
                "prevote" => VoteKind::Prevote,
                "precommit" => VoteKind::Precommit,
                other => panic!("unknown vote kind {other}"),
            },
            block_hash: hash_opt(&vt["block_hash"]),
        };
        assert_eq!(
            borsh::to_vec(&vote).unwrap(),
            bytes(&c["vote_borsh"]),
            "vote {i}"
        );
        assert_eq!(
            signing_digest(&vote.signing_bytes()),
            h::<32>(&c["signing_digest"]),
            "vote {i}"
        );
        let key = &keys[c["signer_key_index"].as_u64().unwrap() as usize];
        let sv = key.sign_vote(vote);
        assert_eq!(sv.signature, h::<64>(&c["signature"]), "vote {i} signature");
        assert_eq!(sv.validator, h::<20>(&c["validator"]), "vote {i} validator");
        sv.verify_signature(&key.public_key()).unwrap();
    }
    for (i, c) in v["proposals"].as_array().unwrap().iter().enumerate() {
        let p = &c["proposal"];
        let proposal = Proposal {
            chain_id: p["chain_id"].as_str().unwrap().into(),
            height: u(&p["height"]),
            round: u(&p["round"]) as u32,
            pol_round: p["pol_round"].as_u64().map(|r| r as u32),
            block_hash: h(&p["block_hash"]),
        };
        assert_eq!(
            borsh::to_vec(&proposal).unwrap(),
            bytes(&c["proposal_borsh"]),
            "proposal {i}"
        );
        assert_eq!(
            signing_digest(&proposal.signing_bytes()),
            h::<32>(&c["signing_digest"])
        );
        let key = &keys[c["signer_key_index"].as_u64().unwrap() as usize];
        let sp = key.sign_proposal(proposal);
        assert_eq!(
            sp.signature,
            h::<64>(&c["signature"]),
            "proposal {i} signature"
        );
        sp.verify_signature(&key.public_key()).unwrap();
    }
}

#[test]
fn merkle_roots_match() {
    let v = vectors();
    let cases = v["merkle"]["cases"].as_array().unwrap();
    assert!(cases.len() >= 5);
    for c in cases {
        let n = c["leaf_count"].as_u64().unwrap();
        let leaves: Vec<[u8; 32]> = (0..n).map(|i| sha256(i.to_string().as_bytes())).collect();
        assert_eq!(merkle_root(&leaves), h::<32>(&c["root"]), "{n} leaves");
    }
}

fn validator_list(v: &Value) -> Vec<Validator> {
    super::vectors_v2::validators_from(&v["validators"]["validators"])
}

#[test]
fn validators_headers_commit_and_account_match() {
    let v = vectors();
    let vals = validator_list(&v);
    assert_eq!(
        borsh::to_vec(&vals).unwrap(),
        bytes(&v["validators"]["validators_borsh"])
    );
    assert_eq!(
        validators_hash(&vals),
        h::<32>(&v["validators"]["validators_hash"])
    );
    for x in &vals {
        assert_eq!(address_of(&x.pubkey), x.address);
    }

    for (i, c) in v["headers"].as_array().unwrap().iter().enumerate() {
        let x = &c["header"];
        let header = Header {
            version: u(&x["version"]) as u32,
            chain_id: x["chain_id"].as_str().unwrap().into(),
            height: u(&x["height"]),
            round: u(&x["round"]) as u32,
            time_ms: u(&x["time_ms"]),
            prev_hash: h(&x["prev_hash"]),
            tx_root: h(&x["tx_root"]),
            state_root: h(&x["state_root"]),
            validators_hash: h(&x["validators_hash"]),
            proposer: h(&x["proposer"]),
            last_commit_hash: h(&x["last_commit_hash"]),
            next_validators_hash: None,
        };
        let ids: Vec<[u8; 32]> = c["tx_ids"].as_array().unwrap().iter().map(h).collect();
        assert_eq!(
            merkle_root(&ids),
            header.tx_root,
            "header {i} tx_root over its tx ids"
        );
        assert_eq!(
            borsh::to_vec(&header).unwrap(),
            bytes(&c["header_borsh"]),
            "header {i}"
        );
        assert_eq!(header.hash(), h::<32>(&c["block_hash"]), "header {i} hash");
    }

    let c = &v["commit"];
    let x = &c["commit"];
    let commit = super::vectors_v2::commit_from(x);
    assert_eq!(borsh::to_vec(&commit).unwrap(), bytes(&c["commit_borsh"]));
    assert_eq!(commit.hash(), h::<32>(&c["commit_hash"]));
    // Each signature is a valid precommit ...
    let set = ValidatorSet::new(vals).unwrap();
    let chain = v["headers"][0]["header"]["chain_id"].as_str().unwrap();
    for s in &commit.signatures {
        let vote = Vote {
            chain_id: chain.into(),
            height: commit.height,
            round: commit.round,
            kind: VoteKind::Precommit,
            block_hash: Some(commit.block_hash),
        };
        verify(
            &set.get(&s.validator).unwrap().pubkey,
            &vote.signing_bytes(),
            &s.signature,
        )
        .unwrap();
    }
    // ... but 60% of the power is not more than 2/3.
    assert_eq!(
        set.verify_commit(chain, commit.height, &commit.block_hash, &commit),
        Err(CommitError::NotEnoughPower {
            power: 60,
            total: 100
        })
    );

    let a = &v["account"];
    let account = Account {
        balance: u(&a["account"]["balance"]),
        nonce: u(&a["account"]["nonce"]),
    };
    assert_eq!(borsh::to_vec(&account).unwrap(), bytes(&a["account_borsh"]));
}
