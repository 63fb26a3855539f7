use super::*;
use ledger::crypto::Keypair;
use ledger::sha256;
use ledger::types::{Payload, Tx};

const CHAIN: &str = "mp";

fn key(i: u32) -> Keypair {
    Keypair::from_secret_bytes(&sha256(format!("mempool-{i}").as_bytes())).unwrap()
}

fn tx(k: &Keypair, nonce: u64, fee: u64, amount: u64) -> (SignedTx, Hash, usize) {
    let stx = k.sign_tx(Tx {
        chain_id: CHAIN.into(),
        from: k.public_key(),
        nonce,
        fee,
        payload: Payload::Transfer {
            to: [7; 20],
            amount,
        },
    });
    let bytes = ledger::codec::encode(&stx);
    (stx, sha256(&bytes), bytes.len())
}

fn pool(config: MempoolConfig) -> Mempool {
    Mempool::new(config, CHAIN.into(), Params::default())
}

fn rich(nonce: u64) -> Account {
    Account {
        balance: 1_000_000,
        nonce,
    }
}

fn add(p: &mut Mempool, t: (SignedTx, Hash, usize), acct: &Account) -> Result<Hash, AddError> {
    let id = t.1;
    p.insert_verified(t.0, t.1, t.2, acct, Instant::now())
        .map(|_| id)
}

#[test]
fn per_sender_nonce_order_and_pending_nonce() {
    let mut p = pool(MempoolConfig::default());
    let k = key(1);
    // Arrive out of order: 2, 0, 1.
    for n in [2, 0, 1] {
        add(&mut p, tx(&k, n, 1, 10), &rich(0)).unwrap();
    }
    let reaped: Vec<u64> = p.reap(10, 1 << 20).iter().map(|t| t.tx.nonce).collect();
    assert_eq!(reaped, vec![0, 1, 2]);
    assert_eq!(p.pending_nonce(&k.address(), 0), 3);
}

#[test]
fn gap_waits_and_too_far_ahead_is_refused() {
    let mut p = pool(MempoolConfig {
        max_nonce_gap: 4,
        ..Default::default()
    });
    let k = key(1);
    add(&mut p, tx(&k, 2, 1, 10), &rich(0)).unwrap();
    assert!(
        p.reap(10, 1 << 20).is_empty(),
        "nonce 2 must wait for 0 and 1"
    );
    assert_eq!(p.pending_nonce(&k.address(), 0), 0);
    let e = add(&mut p, tx(&k, 5, 1, 10), &rich(0)).unwrap_err();
    assert_eq!(e.code().as_str(), "nonce_gap");
    let e = add(&mut p, tx(&k, 0, 1, 10), &rich(1)).unwrap_err();
    assert_eq!(e.code().as_str(), "nonce_too_low");
}

/// The gap counts from the sender's pending txs: 100 consecutive nonces in flight (one
/// batch, or a backlog while blocks are slow) are all taken with a gap allowance of 4; only
/// a nonce more than 4 past the last pending one is refused, naming that next nonce.
#[test]
fn a_long_run_of_pending_nonces_is_not_a_gap() {
    let mut p = pool(MempoolConfig {
        max_nonce_gap: 4,
        ..Default::default()
    });
    let k = key(1);
    for n in 0..100 {
        add(&mut p, tx(&k, n, 1, 10), &rich(0)).unwrap_or_else(|e| panic!("nonce {n}: {e}"));
    }
    let e = add(&mut p, tx(&k, 105, 1, 10), &rich(0)).unwrap_err();
    assert_eq!(
        e,
        AddError::NonceGap {
            expected: 100,
            got: 105,
            max_gap: 4
        }
    );
    add(&mut p, tx(&k, 104, 1, 10), &rich(0)).unwrap();
    assert_eq!(p.reap(1_000, 1 << 24).len(), 100, "104 waits for 100..=103");
}

#[test]
fn duplicates_and_replace_by_fee() {
    let mut p = pool(MempoolConfig::default());
    let k = key(1);
    let t = tx(&k, 0, 5, 10);
    add(&mut p, t.clone(), &rich(0)).unwrap();
    assert_eq!(
        add(&mut p, t, &rich(0)).unwrap_err().code().as_str(),
        "duplicate"
    );
    assert_eq!(
        add(&mut p, tx(&k, 0, 5, 11), &rich(0))
            .unwrap_err()
            .code()
            .as_str(),
        "replacement_underpriced"
    );
    let better = add(&mut p, tx(&k, 0, 6, 11), &rich(0)).unwrap();
    assert_eq!(p.len(), 1);
    assert!(p.contains(&better));
}

#[test]
fn full_pool_evicts_lowest_fee_only_for_a_better_fee() {
    let mut p = pool(MempoolConfig {
        max_txs: 2,
        ..Default::default()
    });
    let (a, b, c) = (key(1), key(2), key(3));
    let cheap = add(&mut p, tx(&a, 0, 1, 10), &rich(0)).unwrap();
    add(&mut p, tx(&b, 0, 5, 10), &rich(0)).unwrap();
    assert_eq!(
        add(&mut p, tx(&c, 0, 1, 10), &rich(0))
            .unwrap_err()
            .code()
            .as_str(),
        "mempool_full"
    );
    add(&mut p, tx(&c, 0, 2, 10), &rich(0)).unwrap();
    assert!(!p.contains(&cheap));
    assert_eq!(p.len(), 2);
    p.check_tails();
    // Highest fee first across senders.
    let fees: Vec<u64> = p.reap(10, 1 << 20).iter().map(|t| t.tx.fee).collect();
    assert_eq!(fees, vec![5, 2]);
}

#[test]
fn funds_are_checked_cumulatively_and_rechecked_after_commit() {
    let mut p = pool(MempoolConfig::default());
    let k = key(1);
    let acct = Account {
        balance: 100,
        nonce: 0,
    };
    add(&mut p, tx(&k, 0, 1, 40), &acct).unwrap();
    add(&mut p, tx(&k, 1, 1, 40), &acct).unwrap();
    assert_eq!(
        add(&mut p, tx(&k, 2, 1, 40), &acct)
            .unwrap_err()
            .code()
            .as_str(),
        "insufficient_funds"
    );
    // A commit consumed nonce 0 elsewhere and drained the account: nonce 1 is unpayable.
    let committed = tx(&k, 0, 1, 40).1;
    let dropped = p.update_after_commit(
        &[committed],
        [(
            k.address(),
            Account {
                balance: 10,
                nonce: 1,
            },
        )],
    );
    assert_eq!(dropped, 1);
    assert!(p.is_empty());
}

#[test]
fn ttl_expires_old_txs() {
    let mut p = pool(MempoolConfig {
        ttl: Duration::from_secs(1),
        ..Default::default()
    });
    let k = key(1);
    let t0 = Instant::now();
    let t = tx(&k, 0, 1, 1);
    p.insert_verified(t.0, t.1, t.2, &rich(0), t0).unwrap();
    assert_eq!(p.expire(t0 + Duration::from_millis(500)), 0);
    assert_eq!(p.expire(t0 + Duration::from_secs(2)), 1);
    assert_eq!(p.bytes(), 0);
}

#[test]
fn quiet_txs_are_handed_out_for_gossip_once_per_quiet_period_oldest_first() {
    let mut p = pool(MempoolConfig::default());
    let quiet = Duration::from_secs(3);
    let t0 = Instant::now();
    let (a, b) = (key(1), key(2));
    let ta = tx(&a, 0, 1, 1);
    let tb = tx(&b, 0, 1, 1);
    let (ida, idb) = (ta.1, tb.1);
    p.insert_verified(ta.0, ta.1, ta.2, &rich(0), t0).unwrap();
    p.insert_verified(tb.0, tb.1, tb.2, &rich(0), t0 + Duration::from_secs(1))
        .unwrap();
    let ids = |txs: Vec<Arc<SignedTx>>| -> Vec<Hash> {
        txs.iter()
            .map(|t| sha256(&ledger::codec::encode(&**t)))
            .collect()
    };
    // Just gossiped on arrival: nothing is due yet.
    assert!(p
        .take_unannounced(t0 + Duration::from_secs(2), quiet, 10)
        .is_empty());
    // At 3.5 s only the first is quiet for 3 s; the limit keeps the oldest.
    let t1 = t0 + Duration::from_millis(3500);
    assert_eq!(ids(p.take_unannounced(t1, quiet, 10)), vec![ida]);
    let t2 = t0 + Duration::from_secs(5);
    assert_eq!(ids(p.take_unannounced(t2, quiet, 10)), vec![idb]);
    // Each was just handed out: again only after another quiet period.
    assert!(p.take_unannounced(t2, quiet, 10).is_empty());
    let t3 = t2 + quiet;
    assert_eq!(ids(p.take_unannounced(t3, quiet, 1)), vec![ida]);
    assert_eq!(ids(p.take_unannounced(t3, quiet, 1)), vec![idb]);
}

/// Random inserts (new senders, next nonces, fee bumps), commits and expiry on a small
/// pool that is full most of the time: the eviction index always matches the queues, and
/// every eviction picks a tail no other sender's tail undercuts.
#[test]
fn eviction_index_stays_in_step_with_the_queues() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut p = pool(MempoolConfig {
        max_txs: 12,
        ttl: Duration::from_secs(50),
        ..Default::default()
    });
    let keys: Vec<Keypair> = (0..6).map(key).collect();
    let mut committed = [0u64; 6];
    let t0 = Instant::now();
    for step in 0..400u64 {
        let k = rng.gen_range(0..keys.len());
        match rng.gen_range(0..10) {
            0 => {
                // Commit the sender's next nonce, if pending.
                let next = p.pending_nonce(&keys[k].address(), committed[k]);
                if next > committed[k] {
                    committed[k] += 1;
                    let acct = rich(committed[k]);
                    p.update_after_commit(&[], [(keys[k].address(), acct)]);
                }
            }
            1 => {
                p.expire(t0 + Duration::from_secs(step));
            }
            _ => {
                let nonce = committed[k] + rng.gen_range(0..4);
                let fee = rng.gen_range(1..20);
                let t = tx(&keys[k], nonce, fee, 1);
                let at = t0 + Duration::from_secs(step);
                let _ = p.insert_verified(t.0, t.1, t.2, &rich(committed[k]), at);
            }
        }
        p.check_tails();
        assert!(p.len() <= 12);
    }
}

#[test]
fn cheap_checks_reject_before_signature_work() {
    let p = pool(MempoolConfig::default());
    let k = key(1);
    let (mut stx, _, _) = tx(&k, 0, 1, 1);
    stx.tx.chain_id = "other".into();
    let bytes = ledger::codec::encode(&stx);
    let e = p
        .precheck(&stx, &sha256(&bytes), bytes.len(), &rich(0))
        .unwrap_err();
    assert_eq!(e.code().as_str(), "wrong_chain");
    let (stx, id, size) = tx(&k, 0, 0, 1);
    assert_eq!(
        p.precheck(&stx, &id, size, &rich(0))
            .unwrap_err()
            .code()
            .as_str(),
        "fee_too_low"
    );
    // An empty (or unknown) account: refused before its signature is checked.
    let (stx, id, size) = tx(&k, 0, 1, 1);
    assert_eq!(
        p.precheck(&stx, &id, size, &Account::default())
            .unwrap_err()
            .code()
            .as_str(),
        "insufficient_funds"
    );
    assert!(p.precheck(&stx, &id, size, &rich(0)).is_ok());
}

#[test]
fn sender_limit_bounds_one_key() {
    let mut p = pool(MempoolConfig {
        max_per_sender: 2,
        ..Default::default()
    });
    let k = key(1);
    add(&mut p, tx(&k, 0, 1, 1), &rich(0)).unwrap();
    add(&mut p, tx(&k, 1, 1, 1), &rich(0)).unwrap();
    assert_eq!(
        add(&mut p, tx(&k, 2, 1, 1), &rich(0))
            .unwrap_err()
            .code()
            .as_str(),
        "sender_limit"
    );
}

/// Protocol 1 executes transfers only: a Bond, Unbond or Unjail is refused on admission
/// with `unsupported_payload` (a 400 over RPC), before any signature work, and its relayer
/// is at fault (it could have checked).
#[test]
fn protocol_2_payloads_are_refused_on_a_protocol_1_chain() {
    let mut p = pool(MempoolConfig::default());
    let k = key(1);
    for payload in [
        Payload::Bond {
            validator: k.public_key(),
            amount: 10,
        },
        Payload::Unbond {
            validator: k.public_key(),
            amount: 10,
        },
        Payload::Unjail {
            validator: k.public_key(),
        },
    ] {
        let kind = payload.kind();
        let stx = k.sign_tx(Tx {
            chain_id: CHAIN.into(),
            from: k.public_key(),
            nonce: 0,
            fee: 1,
            payload,
        });
        let bytes = ledger::codec::encode(&stx);
        let e = add(&mut p, (stx, sha256(&bytes), bytes.len()), &rich(0)).unwrap_err();
        assert_eq!(e.code().as_str(), "unsupported_payload");
        assert_eq!(
            e.to_string(),
            format!("payload {kind} needs protocol 2; this chain runs protocol 1")
        );
        assert!(e.is_peer_fault());
    }
    assert!(p.reap(10, 1 << 20).is_empty());
}

/// The ledger names its refusals too (`TxError::code`, its metric and log strings): each
/// is the wire string of the API code the node answers, and refuses the tx itself.
#[test]
fn the_ledgers_codes_are_the_apis_tx_rejections() {
    for code in ledger::check::TxError::CODES {
        let api: tally_api::ErrorCode = code.parse().unwrap();
        assert!(api.is_tx_rejection(), "{code}");
    }
    let e = AddError::Invalid(TxError::HighS);
    assert_eq!(e.code().as_str(), TxError::HighS.code());
    assert_eq!(AddError::codes().count(), TxError::CODES.len() + 8);
}
