//! Issue 21 on real nodes: a protocol-1 chain of 4 validators on this tallyd (which
//! signals protocol 2) records the activation on its own, switches to protocol 2 at the
//! recorded height without a hiccup, and a bond then adds a validator held by a node whose
//! key is not in genesis.

use std::time::Duration;

use ledger::hash::to_hex;
use ledger::types::{Payload, Tx};
use tally_tests::{account_key, eventually, TestNet, CHAIN_ID};

const WAIT: Duration = Duration::from_secs(90);

async fn status(net: &TestNet, i: usize) -> Result<tally_api::Status, String> {
    net.get_as(i, "/v1/status").await.map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_protocol_1_chain_moves_to_protocol_2_on_its_own_and_a_bond_adds_a_validator() {
    let net = TestNet::builder()
        .protocol(1)
        .validators(4)
        .joiners(1)
        .upgrade(10, 5)
        .start()
        .await
        .unwrap();
    // Recorded once a full window of 10 signalling blocks is there: A = H + 5.
    let activation = eventually(WAIT, "the activation recorded", || async {
        let st = status(&net, 0).await?;
        match st.upgrade {
            Some(u) if u.activation_height.is_some() => Ok(u.activation_height.unwrap_or(0)),
            other => Err(format!("protocol {}, upgrade {other:?}", st.protocol)),
        }
    })
    .await;
    assert!(
        activation >= 15,
        "a window of 10 and a lead of 5: {activation}"
    );
    net.wait_for_height(activation + 2, WAIT).await.unwrap();
    let st = status(&net, 0).await.unwrap();
    assert_eq!((st.protocol, st.upgrade), (2, None));
    let header = |b: tally_api::Block| b.header.version;
    let before: tally_api::Block = net
        .get_as(0, &format!("/v1/blocks/{}", activation - 1))
        .await
        .unwrap();
    let at: tally_api::Block = net
        .get_as(0, &format!("/v1/blocks/{activation}"))
        .await
        .unwrap();
    assert_eq!(header(before) & 0xffff, 1);
    assert_eq!(header(at), 2);

    // A protocol-2 feature: account 9 bonds 20,000 to the joiner's key.
    let joiner = net.validator_key(4).expect("node 4 holds a validator key");
    let bond = account_key(9).sign_tx(Tx {
        chain_id: CHAIN_ID.into(),
        from: account_key(9).public_key(),
        nonce: 0,
        fee: 1,
        payload: Payload::Bond {
            validator: joiner.public_key(),
            amount: 20_000,
        },
    });
    let id = net.submit_accepted(0, &bond).await.unwrap();
    let bonded_at = net.wait_committed(0, &id, WAIT).await.unwrap()["height"]
        .as_u64()
        .unwrap();
    let me = to_hex(&joiner.address());
    let signed = eventually(WAIT, "the joiner in a commit", || async {
        let tip = net.height(0).await.map_err(|e| e.to_string())?;
        for h in bonded_at + 2..tip {
            let b: tally_api::Block = net
                .get_as(0, &format!("/v1/blocks/{h}"))
                .await
                .map_err(|e| e.to_string())?;
            let signers = b.commit.map(|c| c.signatures).unwrap_or_default();
            if signers.iter().any(|s| s.validator == me) {
                return Ok(h);
            }
        }
        Err(format!("not in commits {}..{tip}", bonded_at + 2))
    })
    .await;
    assert!(signed >= bonded_at + 2);
    let tip = net.height(0).await.unwrap();
    net.assert_no_fork(&[0, 1, 2, 3, 4], 1..=tip.min(signed + 1))
        .await;
}
