//! `balance --verify` against a fake node that serves a real commit, header and JMT proof
//! built with the ledger crate (one validator, state from a genesis file).

use ledger::crypto::Keypair;
use ledger::genesis::Genesis;
use ledger::store::memory::MemStore;
use ledger::types::{Block, Header};
use ledger::ZERO_HASH;
use serde_json::{json, Value};

use crate::cli_support::Wallet;
use crate::fake_node::{FakeNode, CHAIN_ID};

fn genesis_json(validator: &Keypair, account: &[u8; 20], balance: u64) -> String {
    json!({
        "chain_id": CHAIN_ID,
        "genesis_time_ms": 0,
        "params": {"block_max_txs": 100, "block_max_bytes": 1_000_000, "max_tx_bytes": 1024, "min_fee": 2},
        "validators": [{"name": "v0", "pubkey": hex::encode(validator.public_key()), "power": 10}],
        "accounts": [{"address": hex::encode(account), "balance": balance}],
    })
    .to_string()
}

/// Serves block 1 (state = genesis state) with a valid commit, and account proofs.
fn serve_chain(node: &FakeNode, validator: &Keypair, genesis_text: &str, account: [u8; 20]) {
    let genesis = Genesis::from_bytes("genesis.json", genesis_text.as_bytes()).unwrap();
    let store = MemStore::new(&genesis).unwrap();
    let (_, proof, root) = ledger::state::prove_account(&store, &account).unwrap();
    let header = Header {
        version: 1,
        chain_id: CHAIN_ID.into(),
        height: 1,
        round: 0,
        time_ms: 1,
        prev_hash: ZERO_HASH,
        tx_root: ledger::sha256(b""),
        state_root: root,
        validators_hash: genesis.validator_set().hash(),
        proposer: validator.address(),
        last_commit_hash: ZERO_HASH,
        next_validators_hash: None,
    };
    let hash = header.hash();
    let commit = ledger::block::sign_commit(CHAIN_ID, 1, 0, hash, &[validator]);
    let block = Block {
        header,
        txs: vec![],
        last_commit: None,
        evidence: vec![],
    };
    let block_json = json!({
        "height": 1, "hash": hex::encode(hash), "header": {"height": 1}, "tx_ids": [],
        "commit": {"height": 1, "round": 0, "block_hash": hex::encode(commit.block_hash),
                   "signatures": [{"validator": hex::encode(validator.address()),
                                   "signature": hex::encode(commit.signatures[0].signature)}]},
        "block": hex::encode(ledger::codec::encode(&block)),
    });
    let proof_hex = hex::encode(proof.to_bytes());
    let root_hex = hex::encode(root);
    node.with(|inner| {
        inner.extra_blocks.insert(1, block_json);
        inner.extra_account_fields = Some(Box::new(move |_addr| -> Value {
            json!({"height": 1, "state_root": root_hex, "proof": proof_hex, "exists": true})
        }));
    });
}

#[test]
fn balance_verify_checks_commit_header_and_proof() {
    let node = FakeNode::start();
    let w = Wallet::new(&node.url);
    let alice = w.new_key("alice");
    let validator = Keypair::generate();
    let text = genesis_json(&validator, &alice, 5000);
    let path = w.dir.path().join("genesis.json");
    std::fs::write(&path, &text).unwrap();
    let g = path.to_str().unwrap();
    node.fund(&alice, 5000);
    serve_chain(&node, &validator, &text, alice);

    let out = w.ok(&["balance", "alice", "--verify", "--genesis", g]);
    assert!(out.starts_with("verified: "), "{out}");
    let v = w.json(&["balance", "alice", "--verify", "--genesis", g]);
    assert_eq!(v["verified"], true);
    assert_eq!(v["balance"], 5000);
    assert_eq!(v["height"], 1);

    // A node that lies about the balance is caught by the proof.
    node.fund(&alice, 1);
    let out = w.run(&["balance", "alice", "--verify", "--genesis", g]);
    crate::cli::assert_fails(&out, 1, "verification FAILED");
    assert!(String::from_utf8_lossy(&out.stderr).contains("not proven"));

    // A genesis with another validator does not accept the commit.
    let other = Keypair::generate();
    let path2 = w.dir.path().join("other.json");
    std::fs::write(&path2, genesis_json(&other, &alice, 5000)).unwrap();
    let out = w.run(&[
        "balance",
        "alice",
        "--verify",
        "--genesis",
        path2.to_str().unwrap(),
    ]);
    crate::cli::assert_fails(&out, 1, "not valid for the genesis validators");

    // --verify without --genesis is a usage error.
    let out = w.run(&["balance", "alice", "--verify"]);
    crate::cli::assert_fails(&out, 2, "--genesis");
}
