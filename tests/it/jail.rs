//! Issue 20, tests 2 and 3, on real nodes: a protocol-2 chain punishes its validators.
//! An equivocating validator (`tally-attacker --mode equivocate` next to its node, with
//! its key) is slashed and jailed by the block that carries the evidence, leaves the set
//! two heights later, and the chain goes on; no evidence is punished twice. A validator
//! killed for longer than `downtime_jail_after` blocks is jailed (no slash); restarted and
//! unjailed by its operator with `tally stake unjail`, it is back in the set and signs.
//!
//! The refusal of a block that carries already-punished evidence again is checked where a
//! block can be forged: `node/src/chain/tests.rs`,
//! `a_block_carrying_punished_evidence_again_is_invalid` (honest proposers never build
//! one, so a real net cannot show it).

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use ledger::crypto::Keypair;
use ledger::genesis::StakingParams;
use ledger::hash::to_hex;
use ledger::types::{Block, Equivocation};
use tally_tests::{account_key, attacker_command, bin, eventually, TestNet};

const WAIT: Duration = Duration::from_secs(60);
/// The genesis stake of each validator: power 10 x the default stake_per_power (1,000).
const GENESIS_BOND: u64 = 10_000;

/// Node `i`'s block at `height`: the RPC's view and the block its bytes decode to.
async fn block(net: &TestNet, i: usize, height: u64) -> Result<(tally_api::Block, Block), String> {
    let b: tally_api::Block = net
        .get_as(i, &format!("/v1/blocks/{height}"))
        .await
        .map_err(|e| e.to_string())?;
    let hex = b
        .block
        .clone()
        .ok_or(format!("block {height} without its bytes"))?;
    let bytes = hex::decode(hex).map_err(|e| format!("block {height}: {e}"))?;
    let decoded: Block =
        ledger::codec::decode("block", &bytes, 64 << 20).map_err(|e| e.to_string())?;
    Ok((b, decoded))
}

/// The validators (hex addresses) whose precommits are in the commit of `height`.
async fn signers(net: &TestNet, i: usize, height: u64) -> Result<Vec<String>, String> {
    let (b, _) = block(net, i, height).await?;
    let commit = b
        .commit
        .ok_or(format!("block {height} has no commit yet"))?;
    Ok(commit.signatures.into_iter().map(|s| s.validator).collect())
}

/// The validators (hex addresses) in the `last_commit` block `height` carries.
async fn last_commit_signers(net: &TestNet, i: usize, height: u64) -> Vec<String> {
    let (b, _) = block(net, i, height).await.unwrap();
    let commit = b
        .last_commit
        .expect("a block after height 1 carries a last commit");
    commit.signatures.into_iter().map(|s| s.validator).collect()
}

/// The evidence against `culprit` in node `i`'s blocks `1..=to`: (block height, piece).
async fn evidence_in_blocks(
    net: &TestNet,
    i: usize,
    to: u64,
    culprit: &Keypair,
) -> Vec<(u64, Equivocation)> {
    let mut found = Vec::new();
    for h in 1..=to {
        let (_, b) = block(net, i, h).await.unwrap();
        for e in b.evidence {
            if e.a.validator == culprit.address() {
                found.push((h, e));
            }
        }
    }
    found
}

/// Whether the set of `height` (node `i`'s `/v1/validators?height=`) holds `who`.
async fn in_set(net: &TestNet, i: usize, height: u64, who: &Keypair) -> bool {
    let v: tally_api::Validators = net
        .get_as(i, &format!("/v1/validators?height={height}"))
        .await
        .unwrap();
    assert_eq!(v.height, height);
    v.validators
        .iter()
        .any(|x| x.pubkey == to_hex(&who.public_key()))
}

async fn standing(net: &TestNet, i: usize, who: &Keypair) -> tally_api::ValidatorInfo {
    net.get_as(i, &format!("/v1/validators/{}", to_hex(&who.public_key())))
        .await
        .unwrap()
}

/// `tally-attacker --mode equivocate` with validator `v`'s key, next to its running node:
/// it prevotes a made-up block at every (height, round) it hears, so with the node's own
/// prevote the key double-signs.
fn equivocator(net: &TestNet, v: usize, secs: f64) -> Child {
    let targets: Vec<String> = (0..net.nodes.len())
        .map(|i| net.nodes[i].addresses.as_ref().unwrap().p2p[0].clone())
        .collect();
    let prefix = net.nodes[0].ip.rsplit_once('.').unwrap().0.to_string();
    let home = &net.nodes[v].home;
    let mut cmd = attacker_command(None, "equivocate", &format!("{prefix}.211"), secs, &targets);
    cmd.args(["--key", &hex::encode(tally_node::keys::random_secret())])
        .arg("--validator-key-file")
        .arg(home.join("config/validator_key.json"))
        .arg("--genesis")
        .arg(home.join("config/genesis.json"))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start tally-attacker")
}

/// Test 2: validator 3 double-signs. The block that carries the evidence slashes its
/// stake by `slash_fraction_bps` and jails it; the set of that block's height + 2 no longer
/// holds it; the chain goes on without it; no (validator, height) is punished twice.
///
/// `min_validator_stake` is lowered to 1,000 so that the slashed stake (9,500) still
/// qualifies: only the jail can keep the validator out of the set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_equivocating_validator_is_slashed_jailed_and_leaves_the_set() {
    let params = StakingParams {
        min_validator_stake: 1_000,
        ..StakingParams::default()
    };
    let (bps, jail_blocks) = (params.slash_fraction_bps, params.jail_blocks);
    let net = TestNet::builder()
        .protocol(2)
        .validators(4)
        .staking(params)
        .start_at_height(2, WAIT)
        .await
        .unwrap();
    let culprit = net.validator_key(3).unwrap();
    let mut attacker = equivocator(&net, 3, 40.0);

    // The first committed block that carries evidence against validator 3.
    let scanned = Mutex::new(1u64);
    let punished_at = eventually(
        WAIT,
        "a block carrying evidence against validator 3",
        || {
            let scanned = &scanned;
            let net = &net;
            let culprit = &culprit;
            async move {
                let tip = net.height(0).await.map_err(|e| e.to_string())?;
                let from = *scanned.lock().unwrap();
                for h in from..=tip {
                    let (_, b) = block(net, 0, h).await?;
                    if b.evidence
                        .iter()
                        .any(|e| e.a.validator == culprit.address())
                    {
                        return Ok(h);
                    }
                    *scanned.lock().unwrap() = h + 1;
                }
                Err(format!("none in blocks 1..={tip}"))
            }
        },
    )
    .await;
    let _ = attacker.kill();
    let _ = attacker.wait();

    // The chain goes on past the change, without the culprit's votes.
    net.wait_nodes_height(&[0, 1, 2], punished_at + 6, WAIT)
        .await
        .unwrap();
    assert!(
        in_set(&net, 0, punished_at + 1, &culprit).await,
        "validator 3 left the set of {} already: the set of the height after the \
         punishing block {punished_at} was fixed before it",
        punished_at + 1
    );
    assert!(
        !in_set(&net, 0, punished_at + 2, &culprit).await,
        "the set of {} (the punishing block {punished_at} + 2) still holds validator 3",
        punished_at + 2
    );
    let me = to_hex(&culprit.address());
    for h in punished_at + 2..=punished_at + 5 {
        let who = signers(&net, 0, h).await.unwrap();
        assert!(
            !who.contains(&me) && who.len() == 3,
            "commit {h} after the jail: {who:?}"
        );
    }

    // Its standing, read at a tip: slashed once per punished (validator, height) that the
    // blocks up to that tip carry, jailed from the last of those blocks.
    let info = standing(&net, 0, &culprit).await;
    let carried = evidence_in_blocks(&net, 0, info.height, &culprit).await;
    let heights: Vec<u64> = carried.iter().map(|(_, e)| e.a.vote.height).collect();
    let distinct: HashSet<u64> = heights.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        heights.len(),
        "a (validator, height) was punished twice: evidence heights {heights:?} in blocks {:?}",
        carried.iter().map(|(b, _)| b).collect::<Vec<_>>()
    );
    let expected = heights.iter().fold(GENESIS_BOND, |stake, _| {
        stake - stake * u64::from(bps) / 10_000
    });
    assert!(expected <= GENESIS_BOND - GENESIS_BOND * u64::from(bps) / 10_000);
    assert_eq!(
        info.stake,
        Some(expected),
        "stake after {} punishment(s) at {bps} bps: {info:?}",
        heights.len()
    );
    let last_block = carried.iter().map(|(b, _)| *b).max().unwrap();
    assert_eq!(
        info.jailed_until_height,
        last_block + jail_blocks,
        "jailed by the block at {last_block} for {jail_blocks} blocks: {info:?}"
    );
    assert!(!info.in_set && info.power == 0, "{info:?}");
    let operator = to_hex(&account_key(3).address());
    let staking: tally_api::Staking = net
        .get_as(0, &format!("/v1/staking/{operator}"))
        .await
        .unwrap();
    assert_eq!(
        staking.total_bonded, expected,
        "the operator's bond is slashed with the stake: {staking:?}"
    );

    // Node 3 (the culprit's own node, still running) follows the same chain.
    net.assert_no_fork(&[0, 1, 2, 3], 1..=punished_at + 6).await;
    // The checker replays the slash and the jail independently on every node.
    check_every_node(&net).await;
}

/// The bank-style checker over all four nodes: the replay of every block (transfers,
/// evidence, slashes, jails) must explain each node's balances, bonds, records and burned
/// total, and the supply.
async fn check_every_node(net: &TestNet) {
    let all = [0, 1, 2, 3];
    let tip = net.height(0).await.unwrap();
    net.wait_nodes_height(&all, tip, WAIT).await.unwrap();
    let (violations, history) = net
        .check(&all, Vec::new(), &Default::default())
        .await
        .unwrap();
    tally_tests::workload::assert_no_violations(
        &violations,
        history.nodes[0].blocks.len() as u64,
        history.observed.len(),
    );
}

/// Test 3: validator 3 is killed; after `downtime_jail_after` (5) blocks in a row whose
/// `last_commit` lacks it, it is jailed for `jail_blocks` (10) without a slash and leaves
/// the set; restarted, and unjailed by its operator with `tally stake unjail` once the jail
/// time is over, it is back in the set and signs commits again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_validator_down_too_long_is_jailed_and_rejoins_after_unjail() {
    let params = StakingParams {
        downtime_jail_after: 5,
        jail_blocks: 10,
        ..StakingParams::default()
    };
    let (after, jail_blocks) = (params.downtime_jail_after, params.jail_blocks);
    // Blocks of ~0.6 s: five missed in a row take ~3 s, and a restarted debug-build node
    // on a busy machine can keep up (at 0.25 s one that lags a block behind for 1.25 s
    // is jailed again right after its Unjail).
    let mut net = TestNet::builder()
        .protocol(2)
        .validators(4)
        .staking(params)
        .timeout_commit_ms(500)
        .start_at_height(2, WAIT)
        .await
        .unwrap();
    let v3 = net.validator_key(3).unwrap();
    let me = to_hex(&v3.address());
    for i in 0..4 {
        let k = net.validator_key(i).unwrap();
        let info = standing(&net, 0, &k).await;
        assert_eq!(
            info.jailed_until_height, 0,
            "validator {i} jailed early: {info:?}"
        );
    }

    net.kill(3);
    let info = eventually(WAIT, "validator 3 jailed for downtime", || async {
        let info: tally_api::ValidatorInfo = net
            .get_as(0, &format!("/v1/validators/{}", to_hex(&v3.public_key())))
            .await
            .map_err(|e| e.to_string())?;
        if info.jailed_until_height == 0 {
            return Err(format!("{info:?}"));
        }
        Ok(info)
    })
    .await;
    let jailed_at = info.jailed_until_height - jail_blocks;
    assert_eq!(
        info.stake,
        Some(GENESIS_BOND),
        "downtime is not slashed: {info:?}"
    );
    assert_eq!(info.consecutive_missed, Some(0), "{info:?}");
    for h in jailed_at + 1 - after..=jailed_at {
        let who = last_commit_signers(&net, 0, h).await;
        assert!(
            !who.contains(&me),
            "block {h}, one of the {after} before the jail at {jailed_at}, carries validator \
             3's precommit: {who:?}"
        );
    }
    net.wait_nodes_height(&[0, 1, 2], jailed_at + 2, WAIT)
        .await
        .unwrap();
    assert!(in_set(&net, 0, jailed_at + 1, &v3).await);
    assert!(
        !in_set(&net, 0, jailed_at + 2, &v3).await,
        "the set of {} (jailed at {jailed_at} + 2) still holds validator 3",
        jailed_at + 2
    );

    // Restarted, it catches up; its operator unjails it once the jail time is over (the
    // Unjail executes in a block at jailed_until_height or later).
    net.start_node(3).unwrap();
    net.wait_addresses(3, WAIT).await.unwrap();
    net.wait_for_height(info.jailed_until_height - 1, WAIT)
        .await
        .unwrap();
    eventually(WAIT, "node 3 at node 0's tip", || async {
        let (a, b) = (net.height(0).await, net.height(3).await);
        match (a, b) {
            (Ok(a), Ok(b)) if a == b => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let keys = net.dir().join("wallet-keys");
    let secret = net.dir().join("operator-3.hex");
    std::fs::write(
        &secret,
        hex::encode(ledger::hash::sha256(b"tally-test-account-3")),
    )
    .unwrap();
    let wallet = |args: &[&str]| {
        let out = Command::new(bin("tally"))
            .env("TALLY_KEYS_DIR", &keys)
            .args(["--node", &net.rpc(0), "--output", "json"])
            .args(args)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "tally {args:?}: {text}");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    wallet(&[
        "keys",
        "import",
        "operator-3",
        "--secret-file",
        secret.to_str().unwrap(),
        "--insecure-plaintext",
    ]);
    let out = wallet(&[
        "stake",
        "unjail",
        "--validator",
        &to_hex(&v3.public_key()),
        "--from",
        "operator-3",
        "--timeout",
        "30s",
    ]);
    let result: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let unjailed_at = result["height"].as_u64().expect("the committed height");
    assert!(unjailed_at >= info.jailed_until_height, "{result}");
    let back = standing(&net, 0, &v3).await;
    assert_eq!(back.jailed_until_height, 0, "{back:?}");

    net.wait_nodes_height(&[0, 1, 2, 3], unjailed_at + 3, WAIT)
        .await
        .unwrap();
    assert!(!in_set(&net, 0, unjailed_at + 1, &v3).await);
    assert!(
        in_set(&net, 0, unjailed_at + 2, &v3).await,
        "the set of {} (the Unjail's block {unjailed_at} + 2) lacks validator 3",
        unjailed_at + 2
    );
    let signed = eventually(WAIT, "validator 3 in a commit after its unjail", || async {
        let tip = net.height(0).await.map_err(|e| e.to_string())?;
        for h in unjailed_at + 2..tip {
            if signers(&net, 0, h).await?.contains(&me) {
                return Ok(h);
            }
        }
        Err(format!("not in commits {}..{tip}", unjailed_at + 2))
    })
    .await;
    assert!(signed >= unjailed_at + 2);
    let info = standing(&net, 0, &v3).await;
    assert_eq!(info.jailed_until_height, 0, "jailed again: {info:?}");
    net.assert_no_fork(&[0, 1, 2, 3], 1..=signed).await;
    // The checker replays the downtime jail and the unjail on every node.
    check_every_node(&net).await;
}
