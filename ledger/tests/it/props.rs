//! Property tests: codec round trips, conservation of supply, nonce discipline, proofs.

use std::sync::OnceLock;

use ledger::codec::{decode, encode};
use ledger::crypto::Keypair;
use ledger::exec::{ExecContext, Executor, Signatures};
use ledger::genesis::{Genesis, GenesisAccount, GenesisFile, GenesisValidator, Params};
use ledger::hash::sha256;
use ledger::state::{prove_account, AccountReader, StateReader};
use ledger::store::memory::MemStore;
use ledger::types::*;
use proptest::prelude::*;

pub const CHAIN: &str = "tally-prop";

pub fn test_keys() -> &'static [Keypair] {
    static KEYS: OnceLock<Vec<Keypair>> = OnceLock::new();
    KEYS.get_or_init(|| {
        (0..5)
            .map(|i| {
                Keypair::from_secret_bytes(&sha256(format!("prop-key-{i}").as_bytes())).unwrap()
            })
            .collect()
    })
}

/// Execution's view of `g` on [`CHAIN`].
pub fn ctx(g: &Genesis) -> ExecContext<'_> {
    ExecContext {
        chain_id: CHAIN,
        params: &g.params,
        validators: &g.validators,
    }
}

/// A genesis with validator key 0 and the given balances for the first keys.
pub fn genesis_with(balances: &[u64]) -> Genesis {
    let keys = test_keys();
    let file = GenesisFile {
        chain_id: CHAIN.into(),
        genesis_time_ms: 1,
        params: Params::default(),
        validators: vec![GenesisValidator {
            name: "v0".into(),
            pubkey: hex::encode(keys[0].public_key()),
            power: 1,
            operator: None,
        }],
        accounts: balances
            .iter()
            .enumerate()
            .map(|(i, b)| GenesisAccount {
                address: hex::encode(keys[i].address()),
                balance: *b,
            })
            .collect(),
    };
    let bytes = serde_json::to_vec(&file).unwrap();
    Genesis::from_bytes("test-genesis.json", &bytes).unwrap()
}

fn arb_tx() -> impl Strategy<Value = SignedTx> {
    (
        "[a-z-]{0,20}",
        any::<[u8; 20]>(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        any::<[u8; 64]>(),
        0usize..5,
    )
        .prop_map(
            |(chain_id, to, nonce, fee, amount, signature, k)| SignedTx {
                tx: Tx {
                    chain_id,
                    from: test_keys()[k].public_key(),
                    nonce,
                    fee,
                    payload: Payload::Transfer { to, amount },
                },
                signature,
            },
        )
}

fn arb_block() -> impl Strategy<Value = Block> {
    (
        prop::collection::vec(arb_tx(), 0..4),
        any::<[u8; 32]>(),
        any::<u64>(),
        proptest::option::of(any::<[u8; 32]>()),
    )
        .prop_map(|(txs, root, height, commit_hash)| Block {
            header: Header {
                version: 1,
                chain_id: CHAIN.into(),
                height,
                round: (height % 7) as u32,
                time_ms: height.wrapping_mul(3),
                prev_hash: root,
                tx_root: root,
                state_root: root,
                validators_hash: root,
                proposer: [9; 20],
                last_commit_hash: root,
                next_validators_hash: None,
            },
            txs,
            last_commit: commit_hash.map(|h| Commit {
                height,
                round: 0,
                block_hash: h,
                signatures: vec![CommitSig {
                    validator: [1; 20],
                    signature: [2; 64],
                }],
            }),
            evidence: Vec::new(),
        })
}

/// One step of a random workload: which key sends, to whom, and how the tx is bent.
#[derive(Debug, Clone)]
struct Step {
    from: usize,
    to: usize,
    amount: u64,
    fee: u64,
    nonce_skew: i8,
    corrupt_sig: bool,
    wrong_chain: bool,
}

fn arb_step() -> impl Strategy<Value = Step> {
    (
        0usize..5,
        0usize..6,
        0u64..2_000,
        0u64..5,
        -1i8..=1,
        prop::bool::weighted(0.1),
        prop::bool::weighted(0.05),
    )
        .prop_map(
            |(from, to, amount, fee, nonce_skew, corrupt_sig, wrong_chain)| Step {
                from,
                to,
                amount,
                fee,
                nonce_skew,
                corrupt_sig,
                wrong_chain,
            },
        )
}

fn total_supply(exec: &Executor<'_, MemStore>, extra: &[Address]) -> u128 {
    let mut addrs: Vec<Address> = test_keys().iter().map(|k| k.address()).collect();
    addrs.extend_from_slice(extra);
    addrs
        .iter()
        .map(|a| u128::from(exec.account(a).unwrap().balance))
        .sum()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]

    #[test]
    fn signed_tx_round_trips(tx in arb_tx()) {
        let bytes = encode(&tx);
        prop_assert_eq!(decode::<SignedTx>("tx", &bytes, 1 << 20).unwrap(), tx);
    }

    #[test]
    fn block_round_trips_and_truncation_fails(block in arb_block(), cut in any::<prop::sample::Index>(), junk in any::<u8>()) {
        let bytes = encode(&block);
        prop_assert_eq!(decode::<Block>("block", &bytes, 1 << 20).unwrap(), block);
        let n = cut.index(bytes.len());
        prop_assert!(decode::<Block>("block", &bytes[..n], 1 << 20).is_err());
        let mut trailing = bytes.clone();
        trailing.push(junk);
        prop_assert!(decode::<Block>("block", &trailing, 1 << 20).is_err());
        prop_assert!(decode::<Block>("block", &bytes, bytes.len() - 1).is_err());
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode::<Block>("block", &bytes, 1 << 20);
        let _ = decode::<SignedTx>("tx", &bytes, 1 << 20);
        let _ = decode::<SignedVote>("vote", &bytes, 1 << 20);
        let _ = decode::<Commit>("commit", &bytes, 1 << 20);
    }

    #[test]
    fn vote_round_trips(h in any::<u64>(), r in any::<u32>(), pre in any::<bool>(), bh in proptest::option::of(any::<[u8; 32]>())) {
        let v = Vote { chain_id: CHAIN.into(), height: h, round: r, kind: if pre { VoteKind::Prevote } else { VoteKind::Precommit }, block_hash: bh };
        let sv = test_keys()[0].sign_vote(v);
        prop_assert_eq!(decode::<SignedVote>("vote", &encode(&sv), 1 << 20).unwrap(), sv);
    }

    /// Supply (fees included) is conserved by any sequence of valid and invalid txs; an
    /// applied tx raises its sender's nonce by exactly one; a rejected tx changes nothing.
    #[test]
    fn supply_conserved_and_nonces_disciplined(steps in prop::collection::vec(arb_step(), 1..25), near_max in any::<bool>()) {
        let top = if near_max { u64::MAX / 4 } else { 5_000 };
        let g = genesis_with(&[top, top, 1_000, 0, top]);
        let store = MemStore::new(&g).unwrap();
        let params = Params::default();
        let ctx = ExecContext { chain_id: CHAIN, params: &params, validators: &g.validators };
        let keys = test_keys();
        let proposer = keys[1].address();
        let outsider = [0xee; 20];
        let mut exec = Executor::new(&store, ctx, proposer);
        let supply = total_supply(&exec, &[outsider]);
        for s in steps {
            let sender = keys[s.from].address();
            let before = exec.account(&sender).unwrap();
            let snapshot: Vec<Account> = keys.iter().map(|k| exec.account(&k.address()).unwrap())
                .chain(std::iter::once(exec.account(&outsider).unwrap())).collect();
            let to = if s.to == 5 { outsider } else { keys[s.to].address() };
            let nonce = (before.nonce as i64 + i64::from(s.nonce_skew)).max(0) as u64;
            let tx = Tx {
                chain_id: if s.wrong_chain { "other".into() } else { CHAIN.into() },
                from: keys[s.from].public_key(), nonce, fee: s.fee,
                payload: Payload::Transfer { to, amount: s.amount },
            };
            let mut stx = keys[s.from].sign_tx(tx);
            if s.corrupt_sig { stx.signature[5] ^= 1; }
            let bytes = encode(&stx);
            let result = exec.apply_tx(&stx, sha256(&bytes), bytes.len(), &Signatures::Verify).unwrap();
            let after = exec.account(&sender).unwrap();
            match result {
                Ok(_) => {
                    prop_assert_eq!(after.nonce, before.nonce + 1);
                    prop_assert!(!s.corrupt_sig && !s.wrong_chain);
                }
                Err(_) => {
                    let now: Vec<Account> = keys.iter().map(|k| exec.account(&k.address()).unwrap())
                        .chain(std::iter::once(exec.account(&outsider).unwrap())).collect();
                    prop_assert_eq!(now, snapshot, "a rejected tx changed state");
                }
            }
            prop_assert_eq!(total_supply(&exec, &[outsider]), supply);
        }
        // And the committed state agrees.
        let update = exec.finish().unwrap();
        let mut sum: u128 = 0;
        for (_, _, a) in &update.accounts { sum += u128::from(a.balance); }
        let untouched: u128 = keys.iter().map(|k| k.address()).chain(std::iter::once(outsider))
            .filter(|a| !update.accounts.iter().any(|(_, x, _)| x == a))
            .map(|a| u128::from(store.account(&a).unwrap().unwrap_or_default().balance)).sum();
        prop_assert_eq!(sum + untouched, supply);
    }

    /// Proofs verify for present and absent accounts and fail for tampered values.
    #[test]
    fn proofs_verify_and_detect_tampering(balances in prop::collection::vec(1u64..1_000_000, 1..5), absent in any::<[u8; 20]>(), delta in 1u64..1000) {
        let g = genesis_with(&balances);
        let store = MemStore::new(&g).unwrap();
        let root = store.tree_version().unwrap().unwrap().1;
        for (addr, bal) in &g.accounts {
            let (acct, proof, proof_root) = prove_account(&store, addr).unwrap();
            prop_assert_eq!(proof_root, root);
            let acct = acct.unwrap();
            prop_assert_eq!(acct.balance, *bal);
            prop_assert!(proof.verify(&root, addr, Some(&acct)).is_ok());
            let tampered = Account { balance: acct.balance.wrapping_add(delta), nonce: acct.nonce };
            prop_assert!(proof.verify(&root, addr, Some(&tampered)).is_err());
            prop_assert!(proof.verify(&root, addr, None).is_err());
            let bytes = proof.to_bytes();
            let back = ledger::state::AccountProof::from_bytes(&bytes).unwrap();
            prop_assert!(back.verify(&root, addr, Some(&acct)).is_ok());
        }
        if !g.accounts.iter().any(|(a, _)| *a == absent) {
            let (acct, proof, _) = prove_account(&store, &absent).unwrap();
            prop_assert!(acct.is_none());
            prop_assert!(proof.verify(&root, &absent, None).is_ok());
            let fake = Account { balance: 1, nonce: 0 };
            prop_assert!(proof.verify(&root, &absent, Some(&fake)).is_err());
        }
    }
}
