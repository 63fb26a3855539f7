//! Issue 20 on real nodes: a protocol-2 chain whose validator set changes on chain. A
//! node holding a key outside genesis is bonded in and signs; two genesis validators
//! unbond and stop, and the chain goes on (test 1 of the issue, with one newcomer); a late
//! joiner syncs across the changes, fsck replays them and a validator restarted after them
//! signs again; the same stop without the newcomer halts.

use std::time::Duration;

use ledger::crypto::Keypair;
use ledger::genesis::Genesis;
use ledger::hash::to_hex;
use ledger::types::{Payload, SignedTx, Tx};
use tally_tests::{account_key, eventually, TestNet, CHAIN_ID};

const WAIT: Duration = Duration::from_secs(60);
/// The genesis stake of each validator: power 10 x the default stake_per_power (1,000).
const GENESIS_BOND: u64 = 10_000;

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
async fn a_bonded_newcomer_keeps_the_chain_alive_after_two_genesis_validators_leave() {
    let mut net = TestNet::builder()
        .protocol(2)
        .validators(4)
        .joiners(1)
        .start()
        .await
        .unwrap();
    let genesis = Genesis::load(&net.dir().join("genesis.json")).unwrap();
    let newcomer = net.validator_key(4).expect("node 4 holds a validator key");
    assert!(genesis.validators.get(&newcomer.address()).is_none());
    net.wait_for_height(2, WAIT).await.unwrap();

    // Account 9 (no genesis bond) bonds 20,000 to the newcomer: power 20 of 60, so from
    // the height its bond takes effect no commit reaches > 2/3 without it.
    let bond = staking_tx(
        &account_key(9),
        0,
        Payload::Bond {
            validator: newcomer.public_key(),
            amount: 2 * GENESIS_BOND,
        },
    );
    let id = net.submit_accepted(0, &bond).await.unwrap();
    let bonded_at = committed_at(&net, 0, &id).await;
    let joined = bonded_at + 2;
    let me = to_hex(&newcomer.address());
    net.wait_for_height(joined + 3, WAIT).await.unwrap();
    for h in joined..=joined + 2 {
        let who = signers(&net, 0, h).await.unwrap();
        assert!(
            who.contains(&me),
            "commit {h} (the bond took effect at {joined}) lacks the newcomer: {who:?}"
        );
    }
    for h in [bonded_at, joined - 1] {
        let who = signers(&net, 0, h).await.unwrap();
        assert!(
            !who.contains(&me),
            "commit {h}, before the newcomer's set, is signed by it: {who:?}"
        );
    }

    // Validators 0 and 1 unbond (their operators are accounts 0 and 1), and stop once the
    // set without them is in effect.
    let mut unbonded_at = 0;
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
        unbonded_at = unbonded_at.max(committed_at(&net, 2, &id).await);
    }
    net.wait_nodes_height(&[2, 3, 4], unbonded_at + 2, WAIT)
        .await
        .unwrap();
    net.stop(0).await.unwrap();
    net.stop(1).await.unwrap();
    let from = net.height(2).await.unwrap();
    net.wait_nodes_height(&[2, 3, 4], from + 5, WAIT)
        .await
        .unwrap();
    net.assert_no_fork(&[2, 3, 4], 1..=from + 5).await;
    let left: Vec<String> = (0..2)
        .map(|i| to_hex(&net.nodes[i].validator.unwrap()))
        .collect();
    let who = signers(&net, 2, from + 4).await.unwrap();
    assert!(
        who.contains(&me) && !who.iter().any(|w| left.contains(w)),
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
    // store, rejoins, and signs again (3 and the newcomer, 30 of 40, went on meanwhile).
    net.stop(2).await.unwrap();
    let at = net.height(3).await.unwrap();
    net.wait_nodes_height(&[3, 4], at + 3, WAIT).await.unwrap();
    net.bootstrap_from(3);
    net.start_node(2).unwrap();
    net.wait_addresses(2, WAIT).await.unwrap();
    let back = net.height(3).await.unwrap();
    net.wait_nodes_height(&[2, 3, 4], back + 3, WAIT)
        .await
        .unwrap();
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
}

/// The negative control: the same chain without the bond halts when two of its four
/// genesis validators stop (20 of 40 is no quorum).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_newcomer_two_genesis_validators_leaving_halts_the_chain() {
    let mut net = TestNet::builder()
        .protocol(2)
        .validators(4)
        .joiners(1)
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
    for i in [2, 3, 4] {
        let h = net.height(i).await.unwrap();
        assert!(
            h <= stuck + 1,
            "node {i} went on to {h} from {stuck}: no halt"
        );
    }
}
