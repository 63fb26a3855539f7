use std::time::Duration;

use ledger::hash::to_hex;
use tally_tests::{account_key, transfer, TestNet};

/// secp256k1 group order n, big-endian.
const N: [u8; 32] = [
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe,
    0xba, 0xae, 0xdc, 0xe6, 0xaf, 0x48, 0xa0, 0x3b, 0xbf, 0xd2, 0x5e, 0x8c, 0xd0, 0x36, 0x41, 0x41,
];

/// n - s: the high-S twin of a valid low-S signature.
fn high_s(sig: &[u8; 64]) -> [u8; 64] {
    let mut out = *sig;
    let mut borrow = 0i16;
    for i in (0..32).rev() {
        let d = i16::from(N[i]) - i16::from(sig[32 + i]) - borrow;
        out[32 + i] = d.rem_euclid(256) as u8;
        borrow = i16::from(d < 0);
    }
    out
}

/// Every bad input gets its own 4xx code and the node keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_bad_inputs_get_clear_errors() {
    let net = TestNet::builder()
        .validators(1)
        .accounts(3)
        .start_at_height(1, Duration::from_secs(30))
        .await
        .unwrap();
    let k = account_key(0);
    let good = transfer(&k, 0, [7; 20], 10, 1);
    let enc = ledger::codec::encode(&good);

    let mut wrong_chain = good.clone();
    wrong_chain.tx.chain_id = "other-chain".into();
    let wrong_chain = k.sign_tx(wrong_chain.tx);
    let mut bad_sig = good.clone();
    bad_sig.signature[10] ^= 1;
    let mut high = good.clone();
    high.signature = high_s(&good.signature);
    let mut trailing = enc.clone();
    trailing.push(0);

    let cases: Vec<(&str, String, u16, &str)> = vec![
        ("non-hex", "zz-not-hex".into(), 400, "malformed"),
        ("undecodable borsh", "00ff00ff".into(), 400, "malformed"),
        ("trailing bytes", to_hex(&trailing), 400, "malformed"),
        (
            "wrong chain id",
            to_hex(&ledger::codec::encode(&wrong_chain)),
            400,
            "wrong_chain",
        ),
        (
            "bad signature",
            to_hex(&ledger::codec::encode(&bad_sig)),
            400,
            "bad_signature",
        ),
        (
            "high-S signature",
            to_hex(&ledger::codec::encode(&high)),
            400,
            "high_s_signature",
        ),
        (
            "fee too low",
            to_hex(&ledger::codec::encode(&transfer(&k, 0, [7; 20], 10, 0))),
            422,
            "fee_too_low",
        ),
        (
            "insufficient funds",
            to_hex(&ledger::codec::encode(&transfer(
                &account_key(1),
                0,
                [7; 20],
                2_000_000_000,
                1,
            ))),
            422,
            "insufficient_funds",
        ),
        (
            "nonce too far ahead",
            to_hex(&ledger::codec::encode(&transfer(&k, 1000, [7; 20], 1, 1))),
            422,
            "nonce_gap",
        ),
    ];
    for (what, hex, status, code) in cases {
        let (s, body) = net.submit_hex(0, &hex).await.unwrap();
        assert_eq!(
            (s, body["error"]["code"].as_str().unwrap_or("")),
            (status, code),
            "{what}: {body}"
        );
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{what}: no message"
        );
    }

    // Duplicate: a future-nonce tx stays pending, so the second copy is a duplicate.
    let future = transfer(&account_key(2), 1, [7; 20], 1, 1);
    assert_eq!(net.submit(0, &future).await.unwrap().0, 202);
    let (s, body) = net.submit(0, &future).await.unwrap();
    assert_eq!(
        (s, body["error"]["code"].as_str().unwrap()),
        (409, "duplicate"),
        "{body}"
    );

    // Nonce too low: commit nonce 0, then send another nonce-0 tx.
    let (s, body) = net.submit(0, &good).await.unwrap();
    assert_eq!(s, 202, "{body}");
    net.wait_committed(0, body["tx_id"].as_str().unwrap(), Duration::from_secs(30))
        .await
        .unwrap();
    let (s, body) = net
        .submit(0, &transfer(&k, 0, [8; 20], 11, 1))
        .await
        .unwrap();
    assert_eq!(
        (s, body["error"]["code"].as_str().unwrap()),
        (409, "nonce_too_low"),
        "{body}"
    );
    let (s, body) = net.submit(0, &good).await.unwrap();
    assert_eq!(
        (s, body["error"]["code"].as_str().unwrap()),
        (409, "already_committed"),
        "{body}"
    );

    // Oversized body, malformed JSON, unknown route, bad path parameters.
    let big = "a".repeat(200 * 1024);
    // The server answers 413 without reading the body and closes that connection, so use
    // a client of its own: a pooled connection would be dead for the next request.
    let one_shot = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let r = one_shot
        .post(format!("{}/v1/txs", net.rpc(0)))
        .json(&serde_json::json!({"tx": big}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 413);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "payload_too_large");
    let r = net
        .http
        .post(format!("{}/v1/txs", net.rpc(0)))
        .body("{not json")
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    for (path, status, code) in [
        ("/v1/nope", 404, "not_found"),
        ("/v1/accounts/xyz", 400, "bad_address"),
        ("/v1/blocks/abc", 400, "bad_height"),
        ("/v1/blocks/999999", 404, "not_found"),
        ("/v1/txs/1234", 400, "bad_tx_id"),
    ] {
        let r = net
            .http
            .get(format!("{}{path}", net.rpc(0)))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), status, "{path}");
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], code, "{path}: {v}");
    }

    // Still serving, and still committing.
    let (s, body) = net
        .submit(0, &transfer(&k, 1, [7; 20], 10, 1))
        .await
        .unwrap();
    assert_eq!(s, 202, "{body}");
    net.wait_committed(0, body["tx_id"].as_str().unwrap(), Duration::from_secs(30))
        .await
        .unwrap();
    let status = net.get(0, "/v1/status").await.unwrap();
    assert_eq!(status["chain_id"], tally_tests::CHAIN_ID);

    // Account proof verifies against the reported root.
    let a = net
        .get(
            0,
            &format!("/v1/accounts/{}?proof=true", to_hex(&k.address())),
        )
        .await
        .unwrap();
    let proof = ledger::state::AccountProof::from_bytes(
        &hex::decode(a["proof"].as_str().unwrap()).unwrap(),
    )
    .unwrap();
    let root: [u8; 32] = ledger::hash::from_hex_array(a["state_root"].as_str().unwrap()).unwrap();
    let acct = ledger::types::Account {
        balance: a["balance"].as_u64().unwrap(),
        nonce: a["nonce"].as_u64().unwrap(),
    };
    assert_eq!(acct.nonce, 2);
    proof.verify(&root, &k.address(), Some(&acct)).unwrap();
}
