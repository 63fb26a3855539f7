//! Protocol 2's formats at their edges: version-keyed header and block encodings round
//! trip, every truncation and extension fails to decode without panicking, protocol-1
//! bytes are unchanged, and a protocol-1 chain refuses the new payloads and block version.

use ledger::block::{check_header, sign_commit, HeaderError};
use ledger::codec::{decode, encode};
use ledger::crypto::Keypair;
use ledger::exec::{execute_block, BlockError, ExecContext, Executor, Signatures};
use ledger::genesis::{Genesis, Params};
use ledger::hash::sha256;
use ledger::state::AccountReader;
use ledger::store::memory::MemStore;
use ledger::store::ChainReader;
use ledger::types::*;

const CHAIN: &str = "p2";

fn key(i: u8) -> Keypair {
    Keypair::from_secret_bytes(&sha256(&[i])).unwrap()
}

fn header(version: u32) -> Header {
    Header {
        version,
        chain_id: CHAIN.into(),
        height: 7,
        round: 2,
        time_ms: 99,
        prev_hash: [1; 32],
        tx_root: [2; 32],
        state_root: [3; 32],
        validators_hash: [4; 32],
        proposer: [5; 20],
        last_commit_hash: [6; 32],
        next_validators_hash: (version >= PROTOCOL_2).then_some([7; 32]),
    }
}

fn equivocation(k: &Keypair) -> Equivocation {
    let vote = |b: u8| {
        k.sign_vote(Vote {
            chain_id: CHAIN.into(),
            height: 6,
            round: 0,
            kind: VoteKind::Precommit,
            block_hash: Some([b; 32]),
        })
    };
    Equivocation {
        a: vote(1),
        b: vote(2),
    }
}

fn block(version: u32, evidence: usize) -> Block {
    let k = key(1);
    let tx = k.sign_tx(Tx {
        chain_id: CHAIN.into(),
        from: k.public_key(),
        nonce: 0,
        fee: 1,
        payload: Payload::Transfer {
            to: [9; 20],
            amount: 3,
        },
    });
    Block {
        header: header(version),
        txs: vec![tx],
        last_commit: Some(sign_commit(CHAIN, 6, 0, [1; 32], &[&k])),
        evidence: (0..evidence).map(|_| equivocation(&k)).collect(),
    }
}

/// Every strict prefix and every extension by 1..=40 bytes fails to decode (no panic).
fn assert_exact<T: borsh::BorshDeserialize + std::fmt::Debug + PartialEq>(
    what: &str,
    bytes: &[u8],
    value: &T,
) {
    assert_eq!(&decode::<T>("x", bytes, 1 << 20).unwrap(), value, "{what}");
    for n in 0..bytes.len() {
        assert!(
            decode::<T>("x", &bytes[..n], 1 << 20).is_err(),
            "{what} truncated to {n} of {} bytes decoded",
            bytes.len()
        );
    }
    for extra in 1..=40u8 {
        let mut longer = bytes.to_vec();
        longer.extend((0..extra).map(|i| i.wrapping_mul(37)));
        assert!(
            decode::<T>("x", &longer, 1 << 20).is_err(),
            "{what} with {extra} trailing bytes decoded"
        );
    }
}

#[test]
fn headers_and_blocks_of_both_versions_round_trip_and_reject_truncation_and_extension() {
    for version in [1, 2] {
        let h = header(version);
        assert_exact(&format!("v{version} header"), &encode(&h), &h);
        for evidence in if version == 1 { 0..1 } else { 0..3 } {
            let b = block(version, evidence);
            assert_exact(
                &format!("v{version} block, {evidence} evidence"),
                &encode(&b),
                &b,
            );
        }
    }
}

#[test]
fn a_version_1_header_and_block_encode_as_before_protocol_2() {
    // The protocol-1 layout, written out by hand: fields in order, nothing after.
    let h = header(1);
    let mut expected = Vec::new();
    expected.extend(1u32.to_le_bytes());
    expected.extend((CHAIN.len() as u32).to_le_bytes());
    expected.extend(CHAIN.as_bytes());
    expected.extend(7u64.to_le_bytes());
    expected.extend(2u32.to_le_bytes());
    expected.extend(99u64.to_le_bytes());
    for b in [1u8, 2, 3, 4] {
        expected.extend([b; 32]);
    }
    expected.extend([5; 20]);
    expected.extend([6; 32]);
    assert_eq!(encode(&h), expected);
    assert_eq!(h.hash(), sha256(&expected));

    let b = block(1, 0);
    let mut expected = encode(&b.header);
    expected.extend(encode(&b.txs));
    expected.extend(encode(&b.last_commit));
    assert_eq!(encode(&b), expected, "no evidence field in a v1 block");

    // A v2 header is the v1 bytes (with version 2) plus the 32-byte hash.
    let mut v2_as_v1 = header(2);
    v2_as_v1.next_validators_hash = None;
    let mut expected = encode(&v2_as_v1);
    expected.extend([7; 32]);
    assert_eq!(encode(&header(2)), expected);
}

#[test]
fn bytes_of_one_version_do_not_decode_as_the_other() {
    // v1 bytes relabelled version 2: the hash is missing.
    let mut bytes = encode(&header(1));
    bytes[..4].copy_from_slice(&2u32.to_le_bytes());
    assert!(decode::<Header>("h", &bytes, 1 << 20).is_err());
    // v2 bytes relabelled version 1: 32 trailing bytes.
    let mut bytes = encode(&header(2));
    bytes[..4].copy_from_slice(&1u32.to_le_bytes());
    assert!(decode::<Header>("h", &bytes, 1 << 20).is_err());
    // A v1 block followed by an (empty or full) evidence list: trailing bytes.
    for n in [0usize, 1] {
        let mut bytes = encode(&block(1, 0));
        bytes.extend(encode(&block(2, n).evidence));
        assert!(decode::<Block>("b", &bytes, 1 << 20).is_err());
    }
    // A v2 block without its evidence list: truncated.
    let b = block(2, 0);
    let bytes = encode(&b);
    assert!(decode::<Block>("b", &bytes[..bytes.len() - 4], 1 << 20).is_err());
}

#[test]
fn ill_formed_values_never_decode_and_are_flagged() {
    let mut h = header(1);
    h.next_validators_hash = Some([7; 32]);
    assert!(!h.is_well_formed());
    assert!(decode::<Header>("h", &encode(&h), 1 << 20).is_err());
    let mut h = header(2);
    h.next_validators_hash = None;
    assert!(!h.is_well_formed());
    assert!(decode::<Header>("h", &encode(&h), 1 << 20).is_err());
    // A v1 block holding evidence keeps it in its bytes rather than dropping it, so the
    // bytes do not decode.
    let mut b = block(1, 0);
    b.evidence = block(2, 1).evidence;
    assert!(!b.is_well_formed());
    assert!(decode::<Block>("b", &encode(&b), 1 << 20).is_err());
    assert!(block(2, 1).is_well_formed() && block(1, 0).is_well_formed());
}

#[test]
fn arbitrary_bytes_after_a_valid_prefix_never_panic() {
    // A small fuzz: every prefix of a v2 block with its bytes flipped one at a time.
    let bytes = encode(&block(2, 1));
    for i in (0..bytes.len()).step_by(3) {
        let mut m = bytes.clone();
        m[i] ^= 0xa5;
        let _ = decode::<Block>("b", &m, 1 << 20);
        let _ = decode::<Header>("h", &m[..i], 1 << 20);
    }
}

fn genesis() -> Genesis {
    let v = key(1);
    let text = serde_json::json!({
        "chain_id": CHAIN,
        "genesis_time_ms": 0,
        "params": {"block_max_txs": 100, "block_max_bytes": 100000, "max_tx_bytes": 1024, "min_fee": 1},
        "validators": [{"name": "v0", "pubkey": hex::encode(v.public_key()), "power": 10}],
        "accounts": [{"address": hex::encode(key(2).address()), "balance": 1000000}]
    });
    Genesis::from_bytes("genesis.json", &serde_json::to_vec(&text).unwrap()).unwrap()
}

#[test]
fn a_protocol_1_chain_refuses_the_new_payloads_and_changes_nothing() {
    let g = genesis();
    assert_eq!(g.params.protocol_version, PROTOCOL_1);
    let store = MemStore::new(&g).unwrap();
    let ctx = ExecContext {
        chain_id: CHAIN,
        params: &g.params,
        validators: &g.validators,
    };
    let sender = key(2);
    let before = store.account(&sender.address()).unwrap().unwrap();
    let mut exec = Executor::new(&store, ctx, key(1).address());
    for payload in [
        Payload::Bond {
            validator: key(1).public_key(),
            amount: 10,
        },
        Payload::Unbond {
            validator: key(1).public_key(),
            amount: 10,
        },
        Payload::Unjail {
            validator: key(1).public_key(),
        },
    ] {
        let kind = payload.kind();
        let stx = sender.sign_tx(Tx {
            chain_id: CHAIN.into(),
            from: sender.public_key(),
            nonce: 0,
            fee: 1,
            payload,
        });
        let bytes = encode(&stx);
        let e = exec
            .apply_tx(&stx, sha256(&bytes), bytes.len(), &Signatures::Verify)
            .unwrap()
            .unwrap_err();
        assert_eq!(e.code(), "unsupported_payload");
        assert_eq!(
            e.to_string(),
            format!("payload {kind} needs protocol 2; this chain runs protocol 1")
        );
        assert_eq!(exec.account(&sender.address()).unwrap(), before);
    }
    let update = exec.finish().unwrap();
    assert!(update.accounts.is_empty());
}

#[test]
fn a_protocol_1_chain_refuses_a_version_2_block() {
    let g = genesis();
    let store = MemStore::new(&g).unwrap();
    let tip = store.tip().unwrap();
    let proposer = g.validators.proposer(1, 0).address;
    let mut b = Block {
        header: Header {
            version: PROTOCOL_2,
            chain_id: CHAIN.into(),
            height: 1,
            round: 0,
            time_ms: 0,
            prev_hash: tip.block_hash,
            tx_root: ledger::merkle::merkle_root(&[]),
            state_root: tip.state_root,
            validators_hash: g.validators.hash(),
            proposer,
            last_commit_hash: [0; 32],
            next_validators_hash: Some(g.validators.hash()),
        },
        txs: vec![],
        last_commit: None,
        evidence: vec![],
    };
    let ctx = ExecContext {
        chain_id: CHAIN,
        params: &g.params,
        validators: &g.validators,
    };
    assert_eq!(
        check_header(CHAIN, &g.validators, &tip, &b),
        Err(HeaderError::Version {
            expected: 1,
            got: 2
        })
    );
    let e = execute_block(&store, ctx, &b, &Signatures::Verify).unwrap_err();
    assert!(
        matches!(
            e,
            BlockError::Version {
                protocol: 1,
                got: 2
            }
        ),
        "{e}"
    );
    // The same block as version 1 passes both checks ...
    b.header.version = PROTOCOL_1;
    b.header.next_validators_hash = None;
    assert_eq!(check_header(CHAIN, &g.validators, &tip, &b), Ok(()));
    execute_block(&store, ctx, &b, &Signatures::Verify).unwrap();
    // ... but not with evidence or a next_validators_hash it cannot carry.
    let mut with_evidence = b.clone();
    with_evidence.evidence = vec![equivocation(&key(1))];
    assert_eq!(
        check_header(CHAIN, &g.validators, &tip, &with_evidence),
        Err(HeaderError::IllFormed)
    );
    assert!(matches!(
        execute_block(&store, ctx, &with_evidence, &Signatures::Verify),
        Err(BlockError::IllFormed)
    ));
    let mut with_next = b.clone();
    with_next.header.next_validators_hash = Some([0; 32]);
    assert_eq!(
        check_header(CHAIN, &g.validators, &tip, &with_next),
        Err(HeaderError::IllFormed)
    );
    // A chain whose params say protocol 2 refuses a version-1 block.
    let p2 = Params {
        protocol_version: PROTOCOL_2,
        ..g.params.clone()
    };
    let ctx2 = ExecContext {
        chain_id: CHAIN,
        params: &p2,
        validators: &g.validators,
    };
    assert!(matches!(
        execute_block(&store, ctx2, &b, &Signatures::Verify),
        Err(BlockError::Version {
            protocol: 2,
            got: 1
        })
    ));
}
