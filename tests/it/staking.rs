//! Issue 20 on real nodes: a protocol-2 chain whose validator set changes on chain. Three
//! nodes holding keys outside genesis are bonded in and sign; two genesis validators
//! unbond and stop, and the chain goes on (test 1 of the issue); a late joiner syncs
//! across the changes, fsck replays them and a validator restarted after them signs
//! again; the checker (src/checker.rs) then passes on every node, the stopped ones
//! restarted to read their stores; the same stop without the newcomers halts.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use ledger::crypto::Keypair;
use ledger::genesis::{Genesis, StakingParams};
use ledger::hash::to_hex;
use ledger::types::{Address, Payload, SignedTx, Tx};
use tally_tests::checker::{longest_gap_ms, read_state, Observation, StateReads};
use tally_tests::{account_key, eventually, TestNet, CHAIN_ID};

const WAIT: Duration = Duration::from_secs(60);
/// The genesis stake of each validator: power 10 x the default stake_per_power (1,000).
const GENESIS_BOND: u64 = 10_000;
/// Short enough that the unbonded stake comes back during the run.
const UNBONDING_BLOCKS: u64 = 8;

fn staking_tx(from: &Keypair, nonce: u64, payload: Payload) -> SignedTx {
    from.sign_tx(Tx {
        chain_id: CHAIN_ID.into(),
        from: from.public_key(),
        nonce,
        fee: 1,
        payload,
    })
}

/// The height `id` was committed at, on node `i`.
async fn committed_at(net: &TestNet, i: usize, id: &str) -> u64 {
    let v = net.wait_committed(i, id, WAIT).await.unwrap();
    v["height"].as_u64().unwrap()
}

/// The validators whose precommits are in the commit of `height` (node `i`'s copy).
async fn signers(net: &TestNet, i: usize, height: u64) -> Result<Vec<String>, String> {
    let b: tally_api::Block = net
        .get_as(i, &format!("/v1/blocks/{height}"))
        .await
        .map_err(|e| e.to_string())?;
    let commit = b
        .commit
        .ok_or(format!("block {height} has no commit yet"))?;
    Ok(commit.signatures.into_iter().map(|s| s.validator).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bonded_newcomers_keep_the_chain_alive_after_two_genesis_validators_leave() {
    let mut net = TestNet::builder()
        .protocol(2)
        .validators(4)
        .joiners(3)
        .staking(StakingParams {
            unbonding_blocks: UNBONDING_BLOCKS,
            evidence_max_age_blocks: UNBONDING_BLOCKS,
            ..StakingParams::default()
        })
        .start()
        .await
        .unwrap();
    let genesis = Genesis::load(&net.dir().join("genesis.json")).unwrap();
    let newcomers = [4, 5, 6];
    let keys: Vec<Keypair> = newcomers
        .iter()
        .map(|&i| {
            net.validator_key(i)
                .expect("a joiner holds a validator key")
        })
        .collect();
    for k in &keys {
        assert!(genesis.validators.get(&k.address()).is_none());
    }
    net.wait_for_height(2, WAIT).await.unwrap();
    let mut observed = Vec::new();

    // Accounts 9, 8 and 7 (no genesis bond) each bond 10,000 to a newcomer: 30 of 70, so
    // from the height the bonds take effect no commit reaches > 2/3 without a newcomer.
    let mut bonded_at = Vec::new();
    for (k, from) in keys.iter().zip([9, 8, 7]) {
        let bond = staking_tx(
            &account_key(from),
            0,
            Payload::Bond {
                validator: k.public_key(),
                amount: GENESIS_BOND,
            },
        );
        let id = net.submit_accepted(0, &bond).await.unwrap();
        let at = committed_at(&net, 0, &id).await;
        observed.push(Observation {
            tx_id: id,
            height: at,
        });
        bonded_at.push(at);
    }
    let joined = bonded_at.iter().max().unwrap() + 2;
    let new: Vec<String> = keys.iter().map(|k| to_hex(&k.address())).collect();
    net.wait_for_height(joined + 5, WAIT).await.unwrap();
    for h in joined..=joined + 2 {
        let who = signers(&net, 0, h).await.unwrap();
        assert!(
            who.iter().any(|w| new.contains(w)),
            "commit {h} (the bonds took effect at {joined}) lacks every newcomer: {who:?}"
        );
    }
    for (me, at) in new.iter().zip(&bonded_at) {
        for h in [*at, at + 1] {
            let who = signers(&net, 0, h).await.unwrap();
            assert!(
                !who.contains(me),
                "commit {h}, before {me}'s bond took effect, is signed by it: {who:?}"
            );
        }
        let mut seen = false;
        for h in at + 2..=joined + 4 {
            seen |= signers(&net, 0, h).await.unwrap().contains(me);
        }
        assert!(seen, "{me} signed no commit of {}..={}", at + 2, joined + 4);
    }

    // Validators 0 and 1 unbond (their operators are accounts 0 and 1). Their stake comes
    // back UNBONDING_BLOCKS later: node 2's state is read at every height until then, so
    // the checker sees each entry pending and paid at its release height.
    let mut unbonded_at = 0;
    let mut releases = Vec::new();
    for i in 0..2 {
        let v = genesis
            .validators
            .validators()
            .iter()
            .find(|v| net.nodes[i].validator == Some(v.address));
        let unbond = staking_tx(
            &account_key(i),
            0,
            Payload::Unbond {
                validator: v.unwrap().pubkey,
                amount: GENESIS_BOND,
            },
        );
        let id = net.submit_accepted(2, &unbond).await.unwrap();
        let at = committed_at(&net, 2, &id).await;
        observed.push(Observation {
            tx_id: id,
            height: at,
        });
        unbonded_at = unbonded_at.max(at);
        releases.push(at + UNBONDING_BLOCKS);
    }
    let operators: BTreeSet<Address> = (0..2).map(|i| account_key(i).address()).collect();
    let watch = net.endpoint(2);
    let mut reads = StateReads::default();
    let last = *releases.iter().max().unwrap();
    let mut read_at = 0;
    loop {
        let h = net.height(2).await.unwrap();
        if h > last {
            break;
        }
        if h == read_at {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        let r = read_state(&net.http, &watch, &operators, Some(&BTreeSet::new()))
            .await
            .unwrap();
        read_at = h;
        reads.extend(r);
    }
    for r in &releases {
        for h in [r - 1, *r] {
            assert!(
                reads.staking.iter().any(|s| s.height == h),
                "node 2's staking was not read at height {h} (release {r})"
            );
        }
    }
    let earlier = BTreeMap::from([(2, reads)]);

    // Both leave the set at unbonded_at + 2 and stop: 20 of the remaining 50 are the
    // genesis validators 2 and 3, so the newcomers carry the chain.
    let live = [2, 3, 4, 5, 6];
    net.wait_nodes_height(&live, unbonded_at + 2, WAIT)
        .await
        .unwrap();
    net.stop(0).await.unwrap();
    net.stop(1).await.unwrap();
    let from = net.height(2).await.unwrap();
    net.wait_nodes_height(&live, from + 5, WAIT).await.unwrap();
    net.assert_no_fork(&live, 1..=from + 5).await;
    let left: Vec<String> = (0..2)
        .map(|i| to_hex(&net.nodes[i].validator.unwrap()))
        .collect();
    let who = signers(&net, 2, from + 4).await.unwrap();
    assert!(
        who.iter().any(|w| new.contains(w)) && !who.iter().any(|w| left.contains(w)),
        "commit {} after the change: {who:?}",
        from + 4
    );

    // fsck replays a stopped validator's chain across the first change; a late joiner
    // syncs across both changes (each commit checked with its height's set) and follows.
    let (code, out) = net.tallyd(0, &["fsck"]).unwrap();
    assert_eq!(code, 0, "fsck of node 0's protocol-2 chain:\n{out}");
    net.bootstrap_from(2);
    let late = net.add_full_node().await.unwrap();
    let tip = net.height(2).await.unwrap();
    net.wait_nodes_height(&[late], tip + 2, WAIT).await.unwrap();
    net.assert_no_fork(&[2, late], 1..=tip + 2).await;

    // Validator 2 restarts after both changes: it reads the sets of its tip from its
    // store, rejoins, and signs again (3 and the newcomers, 40 of 50, went on meanwhile).
    net.stop(2).await.unwrap();
    let at = net.height(3).await.unwrap();
    net.wait_nodes_height(&[3, 4, 5, 6], at + 3, WAIT)
        .await
        .unwrap();
    net.bootstrap_from(3);
    net.start_node(2).unwrap();
    net.wait_addresses(2, WAIT).await.unwrap();
    let back = net.height(3).await.unwrap();
    net.wait_nodes_height(&live, back + 3, WAIT).await.unwrap();
    let two = to_hex(&net.nodes[2].validator.unwrap());
    let signed_again = eventually(
        WAIT,
        "validator 2 in a commit after its restart",
        || async {
            let tip = net.height(3).await.map_err(|e| e.to_string())?;
            for h in back + 1..=tip.saturating_sub(1) {
                if signers(&net, 3, h).await?.contains(&two) {
                    return Ok(h);
                }
            }
            Err(format!("not in commits {}..{tip}", back + 1))
        },
    )
    .await;
    assert!(signed_again > back);

    // The stopped validators' stores are read too: restarted (out of the set, they
    // follow as full nodes), they catch up. Then the checker over every node: one chain,
    // and every balance, nonce, bond, unbonding entry, validator record and the burned
    // total a replay of it from genesis (the unbondings paid, supply whole).
    for i in 0..2 {
        net.start_node(i).unwrap();
        net.wait_addresses(i, WAIT).await.unwrap();
    }
    let tip = net.height(3).await.unwrap();
    let all = [0, 1, 2, 3, 4, 5, 6, late];
    net.wait_nodes_height(&all, tip, WAIT).await.unwrap();
    let (violations, history) = net.check(&all, observed, &earlier).await.unwrap();
    tally_tests::workload::assert_no_violations(
        &violations,
        history.nodes[0].blocks.len() as u64,
        history.observed.len(),
    );
    // The chain never halted: no two consecutive blocks of the whole run are further
    // apart than a few rounds' timeouts.
    let blocks = &history.nodes[0].blocks;
    let longest = longest_gap_ms(blocks);
    eprintln!(
        "{} blocks, longest gap between two {longest} ms",
        blocks.len()
    );
    assert!(longest < 10_000, "the chain stalled for {longest} ms");
    let paid = history.nodes[0]
        .state
        .accounts
        .iter()
        .filter(|a| operators.contains(&a.address))
        .count();
    assert_eq!(paid, 2, "the operators' accounts were read");
}

/// The negative control: the same chain without the bonds (the three newcomers run,
/// unbonded) halts when two of its four genesis validators stop (20 of 40 is no quorum).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_newcomer_two_genesis_validators_leaving_halts_the_chain() {
    let mut net = TestNet::builder()
        .protocol(2)
        .validators(4)
        .joiners(3)
        .start()
        .await
        .unwrap();
    net.wait_for_height(3, WAIT).await.unwrap();
    net.stop(0).await.unwrap();
    net.stop(1).await.unwrap();
    let stuck = eventually(WAIT, "nodes 2 and 3 at one height", || async {
        let (a, b) = (net.height(2).await, net.height(3).await);
        match (a, b) {
            (Ok(a), Ok(b)) if a == b => Ok(a),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    // A halt is the absence of progress: watched for 15 block times plus the longest
    // round timeouts a height may take at round 0 (the chain commits every ~0.5 s).
    tokio::time::sleep(Duration::from_secs(8)).await;
    for i in [2, 3, 4, 5, 6] {
        let h = net.height(i).await.unwrap();
        assert!(
            h <= stuck + 1,
            "node {i} went on to {h} from {stuck}: no halt"
        );
    }
}
