//! Protocol 2's byte-exact vectors, `ledger/vectors/tally-v2.json`: the new payloads, a
//! version-2 header, a version-2 block with evidence, the staking state keys and values
//! (evidence records and the burned total included), a stored validator set record, a
//! protocol-2 genesis, and a short chain executed from that genesis (a bond, then a
//! block with evidence that slashes and jails, and the sets that follow) with its real
//! state roots.
//!
//! The file is produced by [`generate`] (`TALLY_WRITE_VECTORS=1 cargo nextest run -p ledger
//! v2_vectors` rewrites it). Two checks: the file is exactly what the code generates now
//! (any format change shows up as a diff of the file), and every entry rebuilt from its
//! listed fields encodes, signs and hashes to the listed bytes and decodes back.

use ledger::block::{
    assemble_v2, block_sets, check_body, check_header_v2, sign_commit, BlockTemplate,
};
use ledger::crypto::{signing_digest, Keypair};
use ledger::exec::{build_body_at, execute_block, BlockEnv, ExecContext, Signatures};
use ledger::genesis::{
    write_json, Genesis, GenesisAccount, GenesisFile, GenesisValidator, Params, StakingParams,
};
use ledger::hash::{sha256, to_hex, Hash};
use ledger::merkle::merkle_root;
use ledger::staking::{
    bond_key, bond_key_bytes, evidence_key_bytes, unbonding_key, unbonding_key_bytes,
    validator_key, validator_key_bytes, validator_set_at, BondRecord, UnbondingEntry,
    ValidatorRecord, BURNED_KEY,
};
use ledger::state::{account_key, StateReader};
use ledger::store::memory::MemStore;
use ledger::store::{ChainReader, ChainWriter};
use ledger::types::*;
use ledger::upgrade::protocol_key_bytes;
use serde_json::{json, Value};

use super::vectors::{bytes, h, manifest_dir, u};

const CHAIN: &str = "tally-v2-vectors";
const SEEDS: [&str; 2] = ["tally-v2-operator", "tally-v2-validator"];
const FILE: &str = "vectors/tally-v2.json";

fn key(seed: &str) -> Keypair {
    Keypair::from_secret_bytes(&sha256(seed.as_bytes())).unwrap()
}

fn hx(b: &[u8]) -> Value {
    Value::String(to_hex(b))
}

fn enc<T: borsh::BorshSerialize>(v: &T) -> Vec<u8> {
    borsh::to_vec(v).unwrap()
}

// ---- fields <-> JSON ----

fn payload_json(p: &Payload) -> Value {
    match p {
        Payload::Transfer { to, amount } => json!({"transfer": {"to": hx(to), "amount": amount}}),
        Payload::Bond { validator, amount } => {
            json!({"bond": {"validator": hx(validator), "amount": amount}})
        }
        Payload::Unbond { validator, amount } => {
            json!({"unbond": {"validator": hx(validator), "amount": amount}})
        }
        Payload::Unjail { validator } => json!({"unjail": {"validator": hx(validator)}}),
    }
}

fn payload_from(v: &Value) -> Payload {
    if let Some(x) = v.get("transfer") {
        Payload::Transfer {
            to: h(&x["to"]),
            amount: u(&x["amount"]),
        }
    } else if let Some(x) = v.get("bond") {
        Payload::Bond {
            validator: h(&x["validator"]),
            amount: u(&x["amount"]),
        }
    } else if let Some(x) = v.get("unbond") {
        Payload::Unbond {
            validator: h(&x["validator"]),
            amount: u(&x["amount"]),
        }
    } else {
        Payload::Unjail {
            validator: h(&v["unjail"]["validator"]),
        }
    }
}

fn tx_json(t: &Tx) -> Value {
    json!({"chain_id": t.chain_id, "from": hx(&t.from), "nonce": t.nonce, "fee": t.fee,
           "payload": payload_json(&t.payload)})
}

fn tx_from(v: &Value) -> Tx {
    Tx {
        chain_id: v["chain_id"].as_str().unwrap().into(),
        from: h(&v["from"]),
        nonce: u(&v["nonce"]),
        fee: u(&v["fee"]),
        payload: payload_from(&v["payload"]),
    }
}

fn header_json(x: &Header) -> Value {
    json!({
        "version": x.version, "chain_id": x.chain_id, "height": x.height, "round": x.round,
        "time_ms": x.time_ms, "prev_hash": hx(&x.prev_hash), "tx_root": hx(&x.tx_root),
        "state_root": hx(&x.state_root), "validators_hash": hx(&x.validators_hash),
        "proposer": hx(&x.proposer), "last_commit_hash": hx(&x.last_commit_hash),
        "next_validators_hash": x.next_validators_hash.map(|n| hx(&n)),
    })
}

fn header_from(v: &Value) -> Header {
    Header {
        version: u(&v["version"]) as u32,
        chain_id: v["chain_id"].as_str().unwrap().into(),
        height: u(&v["height"]),
        round: u(&v["round"]) as u32,
        time_ms: u(&v["time_ms"]),
        prev_hash: h(&v["prev_hash"]),
        tx_root: h(&v["tx_root"]),
        state_root: h(&v["state_root"]),
        validators_hash: h(&v["validators_hash"]),
        proposer: h(&v["proposer"]),
        last_commit_hash: h(&v["last_commit_hash"]),
        next_validators_hash: (!v["next_validators_hash"].is_null())
            .then(|| h(&v["next_validators_hash"])),
    }
}

fn vote_json(sv: &SignedVote) -> Value {
    let kind = match sv.vote.kind {
        VoteKind::Prevote => "prevote",
        VoteKind::Precommit => "precommit",
    };
    json!({
        "vote": {"chain_id": sv.vote.chain_id, "height": sv.vote.height, "round": sv.vote.round,
                 "kind": kind, "block_hash": sv.vote.block_hash.map(|b| hx(&b))},
        "validator": hx(&sv.validator), "signature": hx(&sv.signature),
    })
}

fn vote_from(v: &Value) -> SignedVote {
    let x = &v["vote"];
    SignedVote {
        vote: Vote {
            chain_id: x["chain_id"].as_str().unwrap().into(),
            height: u(&x["height"]),
            round: u(&x["round"]) as u32,
            kind: match x["kind"].as_str().unwrap() {
                "prevote" => VoteKind::Prevote,
                _ => VoteKind::Precommit,
            },
            block_hash: (!x["block_hash"].is_null()).then(|| h(&x["block_hash"])),
        },
        validator: h(&v["validator"]),
        signature: h(&v["signature"]),
    }
}

fn commit_json(c: &Commit) -> Value {
    json!({"height": c.height, "round": c.round, "block_hash": hx(&c.block_hash),
           "signatures": c.signatures.iter()
               .map(|s| json!({"validator": hx(&s.validator), "signature": hx(&s.signature)}))
               .collect::<Vec<_>>()})
}

pub(crate) fn commit_from(v: &Value) -> Commit {
    Commit {
        height: u(&v["height"]),
        round: u(&v["round"]) as u32,
        block_hash: h(&v["block_hash"]),
        signatures: v["signatures"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| CommitSig {
                validator: h(&s["validator"]),
                signature: h(&s["signature"]),
            })
            .collect(),
    }
}

fn validators_json(set: &[Validator]) -> Value {
    set.iter()
        .map(|x| json!({"address": hx(&x.address), "pubkey": hx(&x.pubkey), "power": x.power}))
        .collect()
}

pub(crate) fn validators_from(v: &Value) -> Vec<Validator> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| Validator {
            address: h(&x["address"]),
            pubkey: h(&x["pubkey"]),
            power: u(&x["power"]),
        })
        .collect()
}

// ---- the generator ----

fn sorted(mut set: Vec<Validator>) -> Vec<Validator> {
    set.sort_by_key(|x| x.address);
    set
}

/// The vectors, from the code.
pub fn generate() -> Value {
    let op = key(SEEDS[0]);
    let val = key(SEEDS[1]);
    let keys: Vec<Value> = SEEDS
        .iter()
        .map(|s| {
            let k = key(s);
            json!({"seed": s, "private_key": hx(&k.secret_bytes()),
                   "public_key": hx(&k.public_key()), "address": hx(&k.address())})
        })
        .collect();

    let payloads = [
        Payload::Bond {
            validator: val.public_key(),
            amount: 5_000_000,
        },
        Payload::Unbond {
            validator: val.public_key(),
            amount: 1_000_000,
        },
        Payload::Unjail {
            validator: val.public_key(),
        },
    ];
    let mut stxs = Vec::new();
    let mut txs = Vec::new();
    for (nonce, payload) in payloads.into_iter().enumerate() {
        let tx = Tx {
            chain_id: CHAIN.into(),
            from: op.public_key(),
            nonce: nonce as u64,
            fee: 10,
            payload,
        };
        let stx = op.sign_tx(tx.clone());
        txs.push(json!({
            "name": tx.payload.kind(),
            "variant": enc(&tx.payload)[0],
            "tx": tx_json(&tx),
            "tx_borsh": hx(&enc(&tx)),
            "signing_digest": hx(&signing_digest(&tx.signing_bytes())),
            "signer_key_index": 0,
            "signature": hx(&stx.signature),
            "signed_tx_borsh": hx(&enc(&stx)),
            "tx_id": hx(&stx.id()),
        }));
        stxs.push(stx);
    }

    let set = sorted(vec![Validator {
        address: val.address(),
        pubkey: val.public_key(),
        power: 10,
    }]);
    let next_set = sorted(vec![
        Validator {
            address: val.address(),
            pubkey: val.public_key(),
            power: 10,
        },
        Validator {
            address: op.address(),
            pubkey: op.public_key(),
            power: 5,
        },
    ]);

    // A version-2 header at height 1: zero parent and last commit.
    let header1 = Header {
        version: PROTOCOL_2,
        chain_id: CHAIN.into(),
        height: 1,
        round: 0,
        time_ms: 1_700_000_000_000,
        prev_hash: [0; 32],
        tx_root: merkle_root(&[]),
        state_root: sha256(b"tally-v2-vectors state 1"),
        validators_hash: validators_hash(&set),
        proposer: val.address(),
        last_commit_hash: [0; 32],
        next_validators_hash: Some(validators_hash(&next_set)),
    };

    // Issue 21: a protocol-1 header whose proposer signals protocol 2 (version 0x00020001):
    // the protocol-1 fields and nothing else.
    let signalling = Header {
        version: header_version(PROTOCOL_1, Some(PROTOCOL_2)),
        next_validators_hash: None,
        ..header1.clone()
    };

    // A version-2 block at height 5 with the three txs, the commit of height 4 and one
    // equivocation (two prevotes of the validator at height 4 round 0).
    let prev_hash = sha256(b"tally-v2-vectors block 4");
    let commit = sign_commit(CHAIN, 4, 0, prev_hash, &[&val]);
    let vote = |target: &[u8]| {
        val.sign_vote(Vote {
            chain_id: CHAIN.into(),
            height: 4,
            round: 0,
            kind: VoteKind::Prevote,
            block_hash: Some(sha256(target)),
        })
    };
    let equivocation = Equivocation {
        a: vote(b"tally-v2-vectors fork a"),
        b: vote(b"tally-v2-vectors fork b"),
    };
    let ids: Vec<Hash> = stxs.iter().map(SignedTx::id).collect();
    let block = Block {
        header: Header {
            version: PROTOCOL_2,
            chain_id: CHAIN.into(),
            height: 5,
            round: 1,
            time_ms: 1_700_000_004_000,
            prev_hash,
            tx_root: merkle_root(&ids),
            state_root: sha256(b"tally-v2-vectors state 5"),
            validators_hash: validators_hash(&next_set),
            proposer: val.address(),
            last_commit_hash: commit.hash(),
            next_validators_hash: Some(validators_hash(&set)),
        },
        txs: stxs.clone(),
        last_commit: Some(commit.clone()),
        evidence: vec![equivocation.clone()],
    };

    let (release, seq) = (1_005u64, 7u64);
    let record = ValidatorRecord {
        stake: 4_000_000,
        jailed_until_height: 105,
        consecutive_missed: 3,
    };

    let staking = StakingParams::default();
    let genesis_file = GenesisFile {
        chain_id: CHAIN.into(),
        genesis_time_ms: 1_700_000_000_000,
        params: Params {
            protocol_version: PROTOCOL_2,
            staking: Some(staking.clone()),
            ..Params::default()
        },
        validators: vec![GenesisValidator {
            name: "v0".into(),
            pubkey: to_hex(&val.public_key()),
            power: 10,
            operator: Some(to_hex(&op.address())),
        }],
        accounts: vec![GenesisAccount {
            address: to_hex(&op.address()),
            balance: 1_000_000_000,
        }],
    };
    let mut genesis_json = Vec::new();
    write_json(&mut genesis_json, &genesis_file, 0, |_| {}).unwrap();
    let executed = executed_chain(&genesis_json);
    let (evidence_height, punished_at) = (4u64, 5u64);
    let burned_total = 150_000u64;
    let stored_set = enc(&next_set);

    json!({
        "description": "Tally protocol 2 formats (issue 20), generated by ledger/tests/it/vectors_v2.rs. \
            The ledger executes protocol 2 (executed_chain: real state roots); the node does not run it yet. \
            Keys: private key = SHA-256(seed). Tree keys: SHA-256(preimage). Hex is lowercase.",
        "keys": keys,
        "transactions": txs,
        "validators": {"set": validators_json(&set), "set_hash": hx(&validators_hash(&set)),
                       "next_set": validators_json(&next_set),
                       "next_set_hash": hx(&validators_hash(&next_set))},
        "header_v2": {"header": header_json(&header1), "header_borsh": hx(&enc(&header1)),
                      "block_hash": hx(&header1.hash())},
        "header_v1_signalling": {"header": header_json(&signalling), "protocol": PROTOCOL_1,
                                 "signal": PROTOCOL_2,
                                 "header_borsh": hx(&enc(&signalling)),
                                 "block_hash": hx(&signalling.hash())},
        "block_v2": {
            "block": {
                "header": header_json(&block.header),
                "txs": stxs.iter().map(|s| hx(&enc(s))).collect::<Vec<_>>(),
                "last_commit": commit_json(&commit),
                "evidence": [{"a": vote_json(&equivocation.a), "b": vote_json(&equivocation.b)}],
            },
            "header_borsh": hx(&enc(&block.header)),
            "equivocation_borsh": hx(&enc(&equivocation)),
            "block_borsh": hx(&enc(&block)),
            "block_hash": hx(&block.hash()),
        },
        "state_keys": {
            "account": {"address": hx(&op.address()), "preimage": hx(&op.address()),
                        "key": hx(&account_key(&op.address()))},
            "bond": {"operator": hx(&op.address()), "validator": hx(&val.public_key()),
                     "preimage": hx(&bond_key_bytes(&op.address(), &val.public_key())),
                     "key": hx(&bond_key(&op.address(), &val.public_key()))},
            "validator": {"validator": hx(&val.public_key()),
                          "preimage": hx(&validator_key_bytes(&val.public_key())),
                          "key": hx(&validator_key(&val.public_key()))},
            "unbonding": {"release_height": release, "operator": hx(&op.address()),
                          "sequence": seq,
                          "preimage": hx(&unbonding_key_bytes(release, &op.address(), seq)),
                          "key": hx(&unbonding_key(release, &op.address(), seq))},
            "evidence": {"validator": hx(&val.public_key()), "height": evidence_height,
                         "preimage": hx(&evidence_key_bytes(&val.public_key(), evidence_height)),
                         "key": hx(&sha256(&evidence_key_bytes(&val.public_key(), evidence_height)))},
            "burned": {"preimage": hx(BURNED_KEY), "key": hx(&sha256(BURNED_KEY))},
            "activation": {"protocol": PROTOCOL_2,
                           "preimage": hx(&protocol_key_bytes(PROTOCOL_2)),
                           "key": hx(&sha256(&protocol_key_bytes(PROTOCOL_2)))},
        },
        "state_values": {
            "bond": {"amount": 4_000_000, "borsh": hx(&enc(&BondRecord { amount: 4_000_000 }))},
            "validator_record": {"stake": record.stake,
                                 "jailed_until_height": record.jailed_until_height,
                                 "consecutive_missed": record.consecutive_missed,
                                 "borsh": hx(&enc(&record))},
            "unbonding_entry": {"amount": 1_000_000, "validator": hx(&val.public_key()),
                                "borsh": hx(&enc(&UnbondingEntry {
                                    amount: 1_000_000, validator: val.public_key() }))},
            "evidence_record": {"punished_at": punished_at, "borsh": hx(&enc(&punished_at))},
            "burned": {"amount": burned_total, "borsh": hx(&enc(&burned_total))},
            "activation": {"height": 120u64, "borsh": hx(&enc(&120u64))},
        },
        "stored_set": {
            "table": "ValidatorSets", "family": "state", "key_prefix": hx(b"v"),
            "first_height": 3, "key": hx(&[&b"v"[..], &3u64.to_be_bytes()].concat()),
            "validators": validators_json(&next_set),
            "borsh": hx(&stored_set),
            "record": hx(&[&sha256(&stored_set)[..8], &stored_set[..]].concat()),
        },
        "executed_chain": executed,
        "genesis": {
            "json": String::from_utf8(genesis_json.clone()).unwrap(),
            "sha256": hx(&sha256(&genesis_json)),
            "protocol_version": PROTOCOL_2,
            "staking": serde_json::to_value(&staking).unwrap(),
        },
    })
}

/// A protocol-2 chain run from the vectors' genesis (one validator `val`, operated by
/// `op`): block 1 bonds `op`'s own key as a second validator, block 2 is empty, block 3
/// carries `val`'s equivocation at height 2 (slashed by slash_fraction_bps, jailed) and an
/// Unbond. Each block is listed with its borsh, hash and real state root, the set stored
/// at its end, and the burned total after it.
fn executed_chain(genesis_json: &[u8]) -> Value {
    let (op, val) = (key(SEEDS[0]), key(SEEDS[1]));
    let g = Genesis::from_bytes("genesis.json", genesis_json).unwrap();
    let store = MemStore::new(&g).unwrap();
    let ctx = ExecContext {
        chain_id: CHAIN,
        params: &g.params,
        validators: &g.validators,
    };
    let tx = |nonce: u64, payload: Payload| {
        op.sign_tx(Tx {
            chain_id: CHAIN.into(),
            from: op.public_key(),
            nonce,
            fee: 10,
            payload,
        })
    };
    let equivocation = |height: u64| {
        let vote = |b: &[u8]| {
            val.sign_vote(Vote {
                chain_id: CHAIN.into(),
                height,
                round: 0,
                kind: VoteKind::Precommit,
                block_hash: Some(sha256(b)),
            })
        };
        Equivocation {
            a: vote(b"executed fork a"),
            b: vote(b"executed fork b"),
        }
    };
    let plan: Vec<(Vec<SignedTx>, Vec<Equivocation>)> = vec![
        (
            vec![tx(
                0,
                Payload::Bond {
                    validator: op.public_key(),
                    amount: 3_000_000,
                },
            )],
            vec![],
        ),
        (vec![], vec![]),
        (
            vec![tx(
                1,
                Payload::Unbond {
                    validator: op.public_key(),
                    amount: 1_000_000,
                },
            )],
            vec![equivocation(2)],
        ),
    ];
    let signers = [&op, &val];
    let mut blocks = Vec::new();
    for (txs, evidence) in plan {
        let tip = store.tip().unwrap();
        let height = tip.height + 1;
        let sets = block_sets(&store, height).unwrap();
        let proposer = sets.current.proposer(height, 0).address;
        let last_commit = store.commit(tip.height).unwrap();
        let env = BlockEnv {
            height,
            proposer,
            last_commit: last_commit.as_ref(),
            evidence: &evidence,
            signal: None,
        };
        let body = build_body_at(&store, ctx, env, txs, &Signatures::Verify).unwrap();
        assert!(body.rejected.is_empty() && body.rejected_evidence.is_empty());
        let template = BlockTemplate {
            chain_id: CHAIN.into(),
            height,
            round: 0,
            time_ms: 1_700_000_000_000 + height * 1_000,
            prev_hash: tip.block_hash,
            validators_hash: sets.current.hash(),
            proposer,
            last_commit,
        };
        let block = assemble_v2(template, sets.next.hash(), &body);
        check_header_v2(CHAIN, &sets, &tip, &block).unwrap();
        let outcome = execute_block(&store, ctx, &block, &Signatures::Verify).unwrap();
        let in_set: Vec<&Keypair> = signers
            .iter()
            .copied()
            .filter(|k| sets.current.get(&k.address()).is_some())
            .collect();
        let commit = sign_commit(CHAIN, height, 0, block.hash(), &in_set);
        let ids: Vec<Hash> = block.txs.iter().map(SignedTx::id).collect();
        store
            .commit_block(&block, &commit, &outcome.update, &ids)
            .unwrap();
        let burned = store
            .entry(BURNED_KEY)
            .unwrap()
            .map_or(0, |b| borsh::from_slice::<u64>(&b).unwrap());
        let set_after = validator_set_at(&store, height + 2).unwrap();
        blocks.push(json!({
            "height": height,
            "block_borsh": hx(&enc(&block)),
            "block_hash": hx(&block.hash()),
            "state_root": hx(&block.header.state_root),
            "evidence": block.evidence.len(),
            "commit": commit_json(&commit),
            "set_of_height_plus_2": validators_json(set_after.validators()),
            "burned_after": burned,
        }));
    }
    Value::Array(blocks)
}

fn render(v: &Value) -> String {
    let mut s = serde_json::to_string_pretty(v).unwrap();
    s.push('\n');
    s
}

fn file_text() -> String {
    let path = manifest_dir().join(FILE);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

#[test]
fn v2_vectors_file_is_what_the_code_generates() {
    let generated = render(&generate());
    if std::env::var_os("TALLY_WRITE_VECTORS").is_some() {
        std::fs::write(manifest_dir().join(FILE), &generated).unwrap();
        return;
    }
    assert!(
        file_text() == generated,
        "ledger/{FILE} differs from what the code generates: a format changed. If that \
         is intended, rewrite it with TALLY_WRITE_VECTORS=1 cargo nextest run -p ledger \
         v2_vectors and review the diff"
    );
}

#[test]
fn v2_vectors_reencode_byte_for_byte_from_their_fields() {
    let v: Value = serde_json::from_str(&file_text()).unwrap();
    let keys: Vec<Keypair> = v["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            let kp = key(k["seed"].as_str().unwrap());
            assert_eq!(kp.secret_bytes(), h::<32>(&k["private_key"]));
            assert_eq!(kp.public_key(), h::<33>(&k["public_key"]));
            assert_eq!(kp.address(), h::<20>(&k["address"]));
            kp
        })
        .collect();

    // Transactions: each new payload, its variant byte, signature and id.
    let mut expected_variant = 1u8;
    for c in v["transactions"].as_array().unwrap() {
        let name = c["name"].as_str().unwrap();
        let tx = tx_from(&c["tx"]);
        assert_eq!(tx.payload.kind(), name);
        let tx_borsh = bytes(&c["tx_borsh"]);
        assert_eq!(enc(&tx), tx_borsh, "{name} tx borsh");
        // The payload's variant byte follows chain_id, from, nonce and fee.
        let at = 4 + tx.chain_id.len() + 33 + 8 + 8;
        assert_eq!(tx_borsh[at], expected_variant, "{name} variant");
        assert_eq!(u(&c["variant"]), u64::from(expected_variant));
        expected_variant += 1;
        assert_eq!(
            signing_digest(&tx.signing_bytes()),
            h::<32>(&c["signing_digest"])
        );
        let signer = &keys[c["signer_key_index"].as_u64().unwrap() as usize];
        let stx = signer.sign_tx(tx.clone());
        assert_eq!(stx.signature, h::<64>(&c["signature"]), "{name} signature");
        stx.verify_signature().unwrap();
        let stx_borsh = bytes(&c["signed_tx_borsh"]);
        assert_eq!(enc(&stx), stx_borsh, "{name} signed borsh");
        assert_eq!(stx.id(), h::<32>(&c["tx_id"]), "{name} id");
        assert_eq!(borsh::from_slice::<SignedTx>(&stx_borsh).unwrap(), stx);
    }
    assert_eq!(expected_variant, 4, "Bond, Unbond and Unjail");

    let set = validators_from(&v["validators"]["set"]);
    let next_set = validators_from(&v["validators"]["next_set"]);
    assert_eq!(validators_hash(&set), h::<32>(&v["validators"]["set_hash"]));
    assert_eq!(
        validators_hash(&next_set),
        h::<32>(&v["validators"]["next_set_hash"])
    );

    // The version-2 header: the protocol-1 encoding of its fields, then the 32 bytes of
    // next_validators_hash.
    let c = &v["header_v2"];
    let header = header_from(&c["header"]);
    assert_eq!(header.version, 2);
    assert_eq!(
        header.next_validators_hash,
        Some(validators_hash(&next_set))
    );
    let header_borsh = bytes(&c["header_borsh"]);
    assert_eq!(enc(&header), header_borsh);
    let mut v1_form = header.clone();
    v1_form.next_validators_hash = None;
    let mut expected = enc(&v1_form);
    expected.extend_from_slice(&validators_hash(&next_set));
    assert_eq!(
        header_borsh, expected,
        "v2 = v1 fields then next_validators_hash"
    );
    assert_eq!(header.hash(), h::<32>(&c["block_hash"]));
    assert_eq!(header.hash(), sha256(&header_borsh));
    assert_eq!(borsh::from_slice::<Header>(&header_borsh).unwrap(), header);

    // The signalling protocol-1 header: the protocol in the low 16 bits, the signal in the
    // high ones, no next_validators_hash; its bytes are the unsignalled header's but for
    // the version.
    let c = &v["header_v1_signalling"];
    let header = header_from(&c["header"]);
    assert_eq!(header.version, 0x0002_0001);
    assert_eq!(u64::from(header.protocol()), u(&c["protocol"]));
    assert_eq!(header.signal().map(u64::from), Some(u(&c["signal"])));
    let header_borsh = bytes(&c["header_borsh"]);
    assert_eq!(enc(&header), header_borsh);
    let mut silent = header.clone();
    silent.version = PROTOCOL_1;
    let mut expected = enc(&silent);
    expected[..4].copy_from_slice(&0x0002_0001u32.to_le_bytes());
    assert_eq!(header_borsh, expected, "only the version differs");
    assert_eq!(header.hash(), h::<32>(&c["block_hash"]));
    assert_eq!(borsh::from_slice::<Header>(&header_borsh).unwrap(), header);
    let k = &v["state_keys"]["activation"];
    let preimage = protocol_key_bytes(u(&k["protocol"]) as u32);
    assert_eq!(preimage.to_vec(), bytes(&k["preimage"]));
    assert_eq!(sha256(&preimage), h::<32>(&k["key"]));
    let a = &v["state_values"]["activation"];
    assert_eq!(enc(&u(&a["height"])), bytes(&a["borsh"]));

    // The version-2 block with one piece of evidence.
    let c = &v["block_v2"];
    let b = &c["block"];
    let txs: Vec<SignedTx> = b["txs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| borsh::from_slice(&bytes(t)).unwrap())
        .collect();
    let evidence: Vec<Equivocation> = b["evidence"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| Equivocation {
            a: vote_from(&e["a"]),
            b: vote_from(&e["b"]),
        })
        .collect();
    assert_eq!(evidence.len(), 1);
    let block = Block {
        header: header_from(&b["header"]),
        txs,
        last_commit: Some(commit_from(&b["last_commit"])),
        evidence,
    };
    assert_eq!(enc(&block.header), bytes(&c["header_borsh"]));
    assert_eq!(enc(&block.evidence[0]), bytes(&c["equivocation_borsh"]));
    let block_borsh = bytes(&c["block_borsh"]);
    assert_eq!(enc(&block), block_borsh);
    // Layout: header, txs, last_commit, then the evidence list (u32 count, entries).
    let mut expected = enc(&block.header);
    expected.extend(enc(&block.txs));
    expected.extend(enc(&block.last_commit));
    expected.extend(1u32.to_le_bytes());
    expected.extend(bytes(&c["equivocation_borsh"]));
    assert_eq!(block_borsh, expected);
    assert_eq!(block.hash(), h::<32>(&c["block_hash"]));
    assert_eq!(
        block.hash(),
        block.header.hash(),
        "the hash covers the header only"
    );
    assert_eq!(borsh::from_slice::<Block>(&block_borsh).unwrap(), block);
    assert_eq!(check_body(&block), Ok(()));
    // The evidence is real: one validator, same height/round/kind, two block hashes,
    // both signatures valid.
    let e = &block.evidence[0];
    let signer = set
        .iter()
        .find(|x| x.address == e.a.validator)
        .expect("the equivocator is in the set");
    assert_eq!(e.a.validator, e.b.validator);
    assert_eq!(
        (e.a.vote.height, e.a.vote.round, e.a.vote.kind),
        (e.b.vote.height, e.b.vote.round, e.b.vote.kind)
    );
    assert_ne!(e.a.vote.block_hash, e.b.vote.block_hash);
    e.a.verify_signature(&signer.pubkey).unwrap();
    e.b.verify_signature(&signer.pubkey).unwrap();

    // State keys: exact preimages and their SHA-256.
    let k = &v["state_keys"];
    let (op, val): (Address, PublicKeyBytes) =
        (h(&k["bond"]["operator"]), h(&k["bond"]["validator"]));
    let mut pre = b"tally/bond/".to_vec();
    pre.extend_from_slice(&op);
    pre.extend_from_slice(&val);
    assert_eq!(pre, bytes(&k["bond"]["preimage"]));
    assert_eq!(bond_key(&op, &val), h::<32>(&k["bond"]["key"]));
    assert_eq!(sha256(&pre), bond_key(&op, &val));
    let mut pre = b"tally/validator/".to_vec();
    pre.extend_from_slice(&h::<33>(&k["validator"]["validator"]));
    assert_eq!(pre, bytes(&k["validator"]["preimage"]));
    assert_eq!(
        validator_key(&h(&k["validator"]["validator"])),
        h::<32>(&k["validator"]["key"])
    );
    let x = &k["unbonding"];
    let mut pre = b"tally/unbonding/".to_vec();
    pre.extend_from_slice(&u(&x["release_height"]).to_be_bytes());
    pre.extend_from_slice(&h::<20>(&x["operator"]));
    pre.extend_from_slice(&u(&x["sequence"]).to_be_bytes());
    assert_eq!(pre, bytes(&x["preimage"]));
    assert_eq!(
        unbonding_key(
            u(&x["release_height"]),
            &h(&x["operator"]),
            u(&x["sequence"])
        ),
        h::<32>(&x["key"])
    );
    assert_eq!(
        account_key(&h(&k["account"]["address"])),
        h::<32>(&k["account"]["key"])
    );
    let all: std::collections::HashSet<_> = ["account", "bond", "validator", "unbonding"]
        .iter()
        .map(|n| k[n]["key"].as_str().unwrap())
        .collect();
    assert_eq!(all.len(), 4);

    let s = &v["state_values"];
    assert_eq!(
        enc(&BondRecord {
            amount: u(&s["bond"]["amount"])
        }),
        bytes(&s["bond"]["borsh"])
    );
    let r = &s["validator_record"];
    assert_eq!(
        enc(&ValidatorRecord {
            stake: u(&r["stake"]),
            jailed_until_height: u(&r["jailed_until_height"]),
            consecutive_missed: u(&r["consecutive_missed"]),
        }),
        bytes(&r["borsh"])
    );
    assert_eq!(
        enc(&UnbondingEntry {
            amount: u(&s["unbonding_entry"]["amount"]),
            validator: h(&s["unbonding_entry"]["validator"]),
        }),
        bytes(&s["unbonding_entry"]["borsh"])
    );
    assert_eq!(
        enc(&u(&s["evidence_record"]["punished_at"])),
        bytes(&s["evidence_record"]["borsh"])
    );
    assert_eq!(
        enc(&u(&s["burned"]["amount"])),
        bytes(&s["burned"]["borsh"])
    );
    let x = &k["evidence"];
    let mut pre = b"tally/evidence/".to_vec();
    pre.extend_from_slice(&h::<33>(&x["validator"]));
    pre.extend_from_slice(&u(&x["height"]).to_be_bytes());
    assert_eq!(pre, bytes(&x["preimage"]));
    assert_eq!(sha256(&pre), h::<32>(&x["key"]));
    assert_eq!(bytes(&k["burned"]["preimage"]), b"tally/burned");
    assert_eq!(sha256(b"tally/burned"), h::<32>(&k["burned"]["key"]));

    // The stored set record: key `v` ‖ first height BE, value checksum ‖ borsh(set).
    let x = &v["stored_set"];
    let stored = validators_from(&x["validators"]);
    let borsh_set = bytes(&x["borsh"]);
    assert_eq!(enc(&stored), borsh_set);
    let mut key = b"v".to_vec();
    key.extend_from_slice(&u(&x["first_height"]).to_be_bytes());
    assert_eq!(key, bytes(&x["key"]));
    let mut record = sha256(&borsh_set)[..8].to_vec();
    record.extend_from_slice(&borsh_set);
    assert_eq!(record, bytes(&x["record"]));

    // The protocol-2 genesis loads as protocol 2 with its staking parameters; its hash is
    // the SHA-256 of the file's bytes.
    let g = &v["genesis"];
    let text = g["json"].as_str().unwrap();
    let genesis = Genesis::from_bytes("genesis.json", text.as_bytes()).unwrap();
    assert_eq!(u(&g["protocol_version"]), 2);
    assert_eq!(genesis.params.protocol_version, PROTOCOL_2);
    let staking: StakingParams = serde_json::from_value(g["staking"].clone()).unwrap();
    assert_eq!(genesis.params.staking(), staking);
    assert_eq!(genesis.params.staking.as_ref(), Some(&staking));
    assert_eq!(genesis.hash, h::<32>(&g["sha256"]));

    // The executed chain replays from the genesis: every block passes the header checks
    // against the stored sets and executes to its listed state root.
    let store = MemStore::new(&genesis).unwrap();
    let ctx = ExecContext {
        chain_id: CHAIN,
        params: &genesis.params,
        validators: &genesis.validators,
    };
    let mut saw_evidence = false;
    for b in v["executed_chain"].as_array().unwrap() {
        let block: Block = borsh::from_slice(&bytes(&b["block_borsh"])).unwrap();
        assert_eq!(block.hash(), h::<32>(&b["block_hash"]));
        assert_eq!(block.header.state_root, h::<32>(&b["state_root"]));
        saw_evidence |= !block.evidence.is_empty();
        let tip = store.tip().unwrap();
        let sets = block_sets(&store, block.header.height).unwrap();
        check_header_v2(CHAIN, &sets, &tip, &block).unwrap();
        let outcome = execute_block(&store, ctx, &block, &Signatures::Verify).unwrap();
        let commit = commit_from(&b["commit"]);
        sets.current
            .verify_commit(CHAIN, block.header.height, &block.hash(), &commit)
            .unwrap();
        let ids: Vec<Hash> = block.txs.iter().map(SignedTx::id).collect();
        store
            .commit_block(&block, &commit, &outcome.update, &ids)
            .unwrap();
        let set = validator_set_at(&store, block.header.height + 2).unwrap();
        assert_eq!(
            set.validators(),
            &validators_from(&b["set_of_height_plus_2"])[..]
        );
        let burned = store
            .entry(BURNED_KEY)
            .unwrap()
            .map_or(0, |x| borsh::from_slice::<u64>(&x).unwrap());
        assert_eq!(burned, u(&b["burned_after"]));
    }
    assert!(saw_evidence, "the executed chain has a block with evidence");
}
