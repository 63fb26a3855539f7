//! `tally stake bond|unbond|unjail`, `tally validators`, `tally validator` and
//! `tally staking`: the real binary against the fake node, which records the txs it
//! admits (so the payloads are checked byte for byte after decoding) and answers the
//! read routes with the `tally-api` types the real node serves.

use ledger::types::Payload;
use serde_json::json;
use tally_api::{self as api, ErrorCode};

use crate::cli::assert_fails;
use crate::cli_support::Wallet;
use crate::fake_node::{FakeNode, MIN_FEE};

fn validator_key(i: u8) -> [u8; 33] {
    ledger::crypto::Keypair::from_secret_bytes(&[i; 32])
        .unwrap()
        .public_key()
}

/// A protocol-2 fake node and a wallet with `alice` funded.
fn staking_node() -> (FakeNode, Wallet, [u8; 20]) {
    let node = FakeNode::start();
    node.with(|g| g.protocol = 2);
    let w = Wallet::new(&node.url);
    let alice = w.new_key("alice");
    node.fund(&alice, 1_000_000);
    (node, w, alice)
}

#[test]
fn stake_commands_sign_the_right_payloads_and_wait_for_the_commit() {
    let (node, w, alice) = staking_node();
    let key = validator_key(1);
    let key_hex = hex::encode(key);

    let text = w.ok(&[
        "stake",
        "bond",
        "--validator",
        &key_hex,
        "--amount",
        "700",
        "--from",
        "alice",
    ]);
    for stage in [
        "signed",
        "accepted by node",
        "included in block",
        "final",
        "bonded 700 to",
    ] {
        assert!(text.contains(stage), "missing {stage:?}: {text}");
    }
    assert_eq!(node.account(&alice).balance, 1_000_000 - 700 - MIN_FEE);

    let unbond = w.json(&[
        "stake",
        "unbond",
        "--validator",
        &key_hex,
        "--amount",
        "300",
        "--from",
        "alice",
        "--fee",
        "5",
    ]);
    assert_eq!(unbond["status"], "committed", "{unbond}");
    assert_eq!(
        (&unbond["action"], &unbond["validator"], &unbond["amount"]),
        (&json!("unbond"), &json!(key_hex), &json!(300))
    );
    assert_eq!((&unbond["fee"], &unbond["nonce"]), (&json!(5), &json!(1)));

    let unjail = w.json(&[
        "stake",
        "unjail",
        "--validator",
        &key_hex,
        "--from",
        "alice",
        "--wait",
        "accepted",
    ]);
    assert_eq!(unjail["status"], "accepted", "{unjail}");
    assert_eq!(unjail["action"], "unjail");
    assert!(unjail.get("amount").is_none(), "{unjail}");

    let accepted = node.with(|g| g.accepted.clone());
    let got: Vec<(Payload, u64, u64)> = accepted
        .iter()
        .map(|t| (t.tx.payload.clone(), t.tx.nonce, t.tx.fee))
        .collect();
    assert_eq!(
        got,
        vec![
            (
                Payload::Bond {
                    validator: key,
                    amount: 700
                },
                0,
                MIN_FEE
            ),
            (
                Payload::Unbond {
                    validator: key,
                    amount: 300
                },
                1,
                5
            ),
            (Payload::Unjail { validator: key }, 2, MIN_FEE),
        ]
    );
    for t in &accepted {
        assert_eq!(t.sender(), alice);
        assert_eq!(t.tx.chain_id, crate::fake_node::CHAIN_ID);
        t.verify_signature().unwrap();
    }
}

#[test]
fn the_nodes_staking_refusals_are_rejections_with_what_to_do() {
    let (node, w, alice) = staking_node();
    let key_hex = hex::encode(validator_key(1));
    let cases = [
        (
            ErrorCode::NoBond,
            "the sender has no bond to validator 02; nothing to unbond",
            "unbond",
            "'tally staking <key>'",
        ),
        (
            ErrorCode::NotOperator,
            "the sender has no bond to validator 02; only its operators may unjail it",
            "unjail",
            "use --from with that key",
        ),
        (
            ErrorCode::NotJailed,
            "validator 02 is not jailed",
            "unjail",
            "nothing to do",
        ),
        (
            ErrorCode::StillJailed,
            "validator 02 is jailed until height 9; this block is 7",
            "unjail",
            "wait until its jail time is over",
        ),
        (
            ErrorCode::BadValidatorKey,
            "validator 02 is not a compressed secp256k1 key",
            "bond",
            "33-byte compressed consensus key",
        ),
    ];
    for (code, message, action, hint) in cases {
        node.with(|g| g.stake_refusal = Some((code, message.to_string())));
        let mut args = vec!["stake", action, "--validator", &key_hex, "--from", "alice"];
        if action != "unjail" {
            args.extend(["--amount", "10"]);
        }
        let out = w.run(&args);
        assert_fails(&out, 4, code.as_str());
        assert_fails(&out, 4, message);
        assert_fails(&out, 4, hint);
    }
    assert_eq!(node.account(&alice).balance, 1_000_000);

    // A protocol-1 chain refuses every staking payload.
    node.with(|g| {
        g.protocol = 1;
        g.stake_refusal = None;
    });
    let out = w.run(&[
        "stake",
        "bond",
        "--validator",
        &key_hex,
        "--amount",
        "10",
        "--from",
        "alice",
    ]);
    assert_fails(
        &out,
        4,
        "payload Bond needs protocol 2; this chain runs protocol 1 (unsupported_payload)",
    );
    assert_fails(&out, 4, "staking needs a protocol-2 chain");
    assert!(node.with(|g| g.accepted.is_empty()));
}

#[test]
fn bad_stake_arguments_are_usage_errors() {
    let (node, w, _) = staking_node();
    let key_hex = hex::encode(validator_key(1));
    let bond = |validator: &str, amount: &str| {
        w.run(&[
            "stake",
            "bond",
            "--validator",
            validator,
            "--amount",
            amount,
            "--from",
            "alice",
        ])
    };
    assert_fails(&bond(&key_hex[..64], "10"), 2, "66 hex characters");
    assert_fails(
        &bond(&format!("04{}", &key_hex[2..]), "10"),
        2,
        "not a compressed secp256k1 key",
    );
    assert_fails(&bond(&key_hex, "0"), 2, "--amount");
    let out = w.run(&["stake", "unjail", "--validator", &key_hex]);
    assert_fails(&out, 2, "--from");
    let out = w.run(&[
        "stake",
        "bond",
        "--validator",
        &key_hex,
        "--amount",
        "5",
        "--from",
        "carol",
    ]);
    assert_fails(&out, 1, "no key named \"carol\"");
    assert_fails(
        &w.run(&["validators", "--height", "0"]),
        2,
        "heights start at 1",
    );
    assert_fails(&w.run(&["validator", "abc"]), 2, "66 hex characters");
    assert!(node.with(|g| g.accepted.is_empty()));
}

fn sample_set() -> api::Validators {
    let v = |name: &str, i: u8, power| api::Validator {
        name: name.into(),
        address: hex::encode(ledger::crypto::address_of(&validator_key(i))),
        pubkey: hex::encode(validator_key(i)),
        power,
    };
    let (a, b) = (v("v0", 1, 30), v("", 2, 10));
    api::Validators {
        height: 7,
        protocol_version: 2,
        total_power: 40,
        validators_hash: "ab".repeat(32),
        proposers: vec![a.address.clone(), b.address.clone()],
        validators: vec![a, b],
    }
}

#[test]
fn validators_validator_and_staking_show_the_nodes_answers() {
    let (node, w, alice) = staking_node();
    let set = sample_set();
    let key = hex::encode(validator_key(2));
    let info = api::ValidatorInfo {
        pubkey: key.clone(),
        address: set.validators[1].address.clone(),
        name: String::new(),
        height: 6,
        stake: Some(1_000),
        jailed_until_height: 9,
        consecutive_missed: Some(0),
        in_set: false,
        power: 0,
    };
    let staking = api::Staking {
        address: hex::encode(alice),
        height: 6,
        bonds: vec![api::Bond {
            validator: key.clone(),
            amount: 1_000,
        }],
        unbonding: vec![api::Unbonding {
            release_height: 12,
            amount: 250,
            validator: key.clone(),
        }],
        total_bonded: 1_000,
        total_unbonding: 250,
    };
    node.with(|g| {
        g.canned
            .insert("/v1/validators".into(), serde_json::to_value(&set).unwrap());
        g.canned.insert(
            "/v1/validators?height=7".into(),
            serde_json::to_value(&set).unwrap(),
        );
        g.canned.insert(
            format!("/v1/validators/{key}"),
            serde_json::to_value(&info).unwrap(),
        );
        g.canned.insert(
            format!("/v1/staking/{}", hex::encode(alice)),
            serde_json::to_value(&staking).unwrap(),
        );
    });

    let v = w.json(&["validators", "--height", "7"]);
    assert_eq!(serde_json::from_value::<api::Validators>(v).unwrap(), set);
    let text = w.ok(&["validators"]);
    for part in [
        "validator set of height 7 (protocol 2): 2 validators, total power 40",
        &format!("v0   {}       30   75.0%", set.validators[0].address),
        &format!("-    {}       10   25.0%  {key}", set.validators[1].address),
        &format!(
            "proposers   rounds 0..1: v0, {}",
            &set.validators[1].address[..8]
        ),
    ] {
        assert!(text.contains(part), "{part:?} in:\n{text}");
    }
    // A height the node does not know yet: its 404 and words.
    let out = w.run(&["validators", "--height", "99"]);
    assert_fails(&out, 1, "not_found");

    let v = w.json(&["validator", &key]);
    assert_eq!(
        serde_json::from_value::<api::ValidatorInfo>(v).unwrap(),
        info
    );
    let text = w.ok(&["validator", &key]);
    for part in [
        "stake       1000",
        "jailed      yes, until height 9",
        "in the set  no (height 7)",
    ] {
        assert!(text.contains(part), "{part:?} in:\n{text}");
    }

    let v = w.json(&["staking", "alice"]);
    assert_eq!(v["name"], "alice");
    assert_eq!(v["total_unbonding"], 250);
    let text = w.ok(&["staking", &hex::encode(alice)]);
    for part in [
        "bonded      1000 in 1 bond(s)",
        &format!("1000  to {key}"),
        "unbonding   250 in 1 entry",
        "250  paid back at the end of height 12",
    ] {
        assert!(text.contains(part), "{part:?} in:\n{text}");
    }
    assert_fails(&w.run(&["staking", "dave"]), 2, "neither a key");
}
