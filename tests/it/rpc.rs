use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ledger::hash::to_hex;
use tally_tests::{account_key, transfer, TestNet};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinSet;

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
    // Protocol 1: the staking routes' answers on a chain with a fixed set are checked below.
    let net = TestNet::builder()
        .protocol(1)
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
        let want: tally_api::ErrorCode = code.parse().unwrap();
        assert_eq!(
            want.status(),
            status,
            "{what}: the case disagrees with ErrorCode"
        );
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
    // Every read route answers exactly the shape of its tally-api type.
    let status: tally_api::Status = net.get_as(0, "/v1/status").await.unwrap();
    assert_eq!(status.chain_id, tally_tests::CHAIN_ID);
    let block: tally_api::Block = net.get_as(0, "/v1/blocks/latest").await.unwrap();
    assert_eq!(block.height, block.header.height, "{block:?}");
    let tx: tally_api::TxStatus = net
        .get_as(
            0,
            &format!(
                "/v1/txs/{}",
                block.tx_ids.first().map_or(to_hex(&[0; 32]), Clone::clone)
            ),
        )
        .await
        .unwrap();
    assert_ne!(tx.status, tally_api::TxState::Pending, "{tx:?}");
    // The staking routes on a protocol-1 chain: the genesis set, no stake, no bonds.
    assert!(status.validator, "node 0 is in the genesis set: {status:?}");
    let set: tally_api::Validators = net.get_as(0, "/v1/validators").await.unwrap();
    // The set of the next height; the chain may have moved between the two reads.
    let after: tally_api::Status = net.get_as(0, "/v1/status").await.unwrap();
    assert!(
        (status.height + 1..=after.height + 1).contains(&set.height),
        "heights {} to {}: {set:?}",
        status.height,
        after.height
    );
    assert_eq!((set.protocol_version, set.validators.len()), (1, 1));
    assert_eq!(set.proposers, vec![set.validators[0].address.clone()]);
    let at_1: tally_api::Validators = net.get_as(0, "/v1/validators?height=1").await.unwrap();
    assert_eq!(at_1.validators, set.validators);
    let key = &set.validators[0].pubkey;
    let info: tally_api::ValidatorInfo = net
        .get_as(0, &format!("/v1/validators/{key}"))
        .await
        .unwrap();
    assert_eq!(
        (info.stake, info.in_set, info.power),
        (None, true, set.validators[0].power)
    );
    let staking: tally_api::Staking = net
        .get_as(0, &format!("/v1/staking/{}", to_hex(&k.address())))
        .await
        .unwrap();
    assert!(staking.bonds.is_empty() && staking.unbonding.is_empty());
    for (path, status, code) in [
        ("/v1/validators/zz".to_string(), 400, "bad_key"),
        (format!("/v1/validators/{}", &key[..64]), 400, "bad_key"),
        (
            format!("/v1/validators/{}", to_hex(&k.public_key())),
            404,
            "not_found",
        ),
        ("/v1/validators?height=0".to_string(), 400, "bad_height"),
        ("/v1/validators?height=x".to_string(), 400, "bad_height"),
        (
            "/v1/validators?height=1000000000".to_string(),
            404,
            "not_found",
        ),
        ("/v1/staking/12".to_string(), 400, "bad_address"),
    ] {
        let r = net
            .http
            .get(format!("{}{path}", net.rpc(0)))
            .send()
            .await
            .unwrap();
        let got = r.status().as_u16();
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(
            (got, body["error"]["code"].as_str().unwrap_or("")),
            (status, code),
            "{path}: {body}"
        );
    }
    let _: tally_api::Peers = net.get_as(0, "/v1/peers").await.unwrap();
    let _: tally_api::EvidenceList = net.get_as(0, "/v1/evidence").await.unwrap();

    // Account proof verifies against the reported root.
    let a: tally_api::Account = net
        .get_as(
            0,
            &format!("/v1/accounts/{}?proof=true", to_hex(&k.address())),
        )
        .await
        .unwrap();
    let proof =
        ledger::state::AccountProof::from_bytes(&hex::decode(a.proof.as_deref().unwrap()).unwrap())
            .unwrap();
    let root: [u8; 32] = ledger::hash::from_hex_array(&a.state_root).unwrap();
    let acct = ledger::types::Account {
        balance: a.balance,
        nonce: a.nonce,
    };
    assert_eq!(acct.nonce, 2);
    assert_eq!(a.exists, Some(true));
    proof.verify(&root, &k.address(), Some(&acct)).unwrap();
}

/// Where one node's RPC and metrics servers listen.
fn listen_addrs(net: &TestNet) -> (SocketAddr, SocketAddr) {
    let a = net.nodes[0].addresses.as_ref().unwrap();
    let rpc: SocketAddr = a.rpc.parse().unwrap();
    let metrics: SocketAddr = a.metrics.as_ref().unwrap().parse().unwrap();
    (rpc, metrics)
}

/// The soft RLIMIT_NOFILE of this process (what the tallyd children inherit too), read from
/// /proc so that the test needs no libc binding.
fn open_files_limit() -> Option<usize> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// What happened to the connections of one slow-loris attack.
#[derive(Default)]
struct LorisStats {
    connected: AtomicUsize,
    connect_failed: AtomicUsize,
    /// How long after its connect the server closed each connection.
    closed_after: Mutex<Vec<Duration>>,
    /// Connections the server answered (a refusal) before closing; their first bytes.
    answered: Mutex<Vec<String>>,
}

impl LorisStats {
    fn settled(&self) -> usize {
        self.connected.load(Ordering::SeqCst) + self.connect_failed.load(Ordering::SeqCst)
    }
    fn closed(&self) -> usize {
        self.closed_after.lock().unwrap().len()
    }
    fn open(&self) -> usize {
        self.connected.load(Ordering::SeqCst) - self.closed()
    }
}

/// One slow-loris connection from `from`: half send a partial request and then one more
/// header line every 2 s (never the blank line that ends the head), half send nothing at
/// all. It holds the socket until the server closes it or `give_up`; the task owning it is
/// aborted (closing the socket) when the test ends, passes or fails.
async fn slow_loris_conn(
    target: SocketAddr,
    from: IpAddr,
    partial: bool,
    stats: Arc<LorisStats>,
    connects: Arc<tokio::sync::Semaphore>,
    give_up: Instant,
) {
    let socket = match TcpSocket::new_v4() {
        Ok(s) => s,
        Err(_) => {
            stats.connect_failed.fetch_add(1, Ordering::SeqCst);
            return;
        }
    };
    let permit = connects.acquire_owned().await;
    let connected = match socket.bind(SocketAddr::new(from, 0)) {
        Ok(()) => tokio::time::timeout(Duration::from_secs(10), socket.connect(target)).await,
        Err(e) => Ok(Err(e)),
    };
    drop(permit);
    let Ok(Ok(mut stream)) = connected else {
        stats.connect_failed.fetch_add(1, Ordering::SeqCst);
        return;
    };
    let opened = Instant::now();
    stats.connected.fetch_add(1, Ordering::SeqCst);
    if partial {
        let _ = stream
            .write_all(b"GET /v1/status HTTP/1.1\r\nHost: slow\r\n")
            .await;
    }
    let mut drip = tokio::time::interval(Duration::from_secs(2));
    drip.tick().await;
    let mut first = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        tokio::select! {
            r = stream.read(&mut buf) => match r {
                Ok(n) if n > 0 => {
                    if first.len() < 512 {
                        first.extend_from_slice(&buf[..n]);
                    }
                }
                _ => {
                    stats.closed_after.lock().unwrap().push(opened.elapsed());
                    if !first.is_empty() {
                        stats.answered.lock().unwrap().push(String::from_utf8_lossy(&first).into_owned());
                    }
                    return;
                }
            },
            _ = drip.tick(), if partial => {
                let _ = stream.write_all(b"X-Slow: 1\r\n").await;
            }
            _ = tokio::time::sleep_until(give_up.into()) => return,
        }
    }
}

/// GET `url` from another loopback address than the attacker's; (status, body).
async fn timed_get_text(url: &str) -> (u16, String) {
    let client = reqwest::Client::builder()
        .local_address(IpAddr::from([127, 0, 0, 1]))
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    match client.get(url).send().await {
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        Err(_) => (0, String::new()),
    }
}

/// A client on another loopback address than the attacker's, with a fresh connection
/// per request; returns (status, latency).
async fn timed_get(url: &str) -> (u16, Duration) {
    let client = reqwest::Client::builder()
        .local_address(IpAddr::from([127, 0, 0, 1]))
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let start = Instant::now();
    let status = match client.get(url).send().await {
        Ok(r) => {
            let s = r.status().as_u16();
            let _ = r.bytes().await;
            s
        }
        Err(_) => 0,
    };
    (status, start.elapsed())
}

/// Issue 17 item 11: 5,000 slow-header connections from one IP to the RPC port (and 1,000
/// to the metrics port) must not lock out a client on another IP: `/v1/status` and
/// `/metrics` answer in under 1 s while they are open, connections over the caps are
/// closed at once, and the ones within the caps are closed when their headers do not
/// arrive in time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_slow_loris_does_not_lock_out_other_clients() {
    let net = TestNet::builder()
        .validators(1)
        .accounts(1)
        .start_at_height(1, Duration::from_secs(30))
        .await
        .unwrap();
    let (rpc, metrics) = listen_addrs(&net);
    // The node gets the open-file limit most deployments give a service (systemd's
    // LimitNOFILE soft default): without connection caps, the attack takes every
    // descriptor it has and nobody else can connect.
    let pid = net.nodes[0].addresses.as_ref().unwrap().pid.to_string();
    match std::process::Command::new("prlimit")
        .args(["--pid", &pid, "--nofile=1024:"])
        .status()
    {
        Ok(s) if s.success() => println!("the node's soft RLIMIT_NOFILE is now 1024"),
        other => {
            println!("prlimit unavailable ({other:?}): the node keeps this test's open-file limit")
        }
    }
    // Each attack connection costs one descriptor here; keep room for the rest.
    let limit = open_files_limit().unwrap_or(1024);
    let wanted = (5_000, 1_000);
    let budget = limit.saturating_sub(512);
    let (n_rpc, n_metrics) = if wanted.0 + wanted.1 <= budget {
        wanted
    } else {
        let n_rpc = budget * 5 / 6;
        println!(
            "RLIMIT_NOFILE is {limit}: attacking with {n_rpc} + {} connections instead of {} + {}",
            budget - n_rpc,
            wanted.0,
            wanted.1
        );
        (n_rpc, budget - n_rpc)
    };

    let attacker = IpAddr::from([127, 0, 250, 1]);
    let give_up = Instant::now() + Duration::from_secs(90);
    let connects = Arc::new(tokio::sync::Semaphore::new(256));
    let rpc_stats = Arc::new(LorisStats::default());
    let metrics_stats = Arc::new(LorisStats::default());
    // Dropping the JoinSet (also when an assertion below panics) aborts every task and so
    // closes every attack socket.
    let mut attack = JoinSet::new();
    let started = Instant::now();
    for (target, n, stats) in [
        (rpc, n_rpc, &rpc_stats),
        (metrics, n_metrics, &metrics_stats),
    ] {
        for i in 0..n {
            attack.spawn(slow_loris_conn(
                target,
                attacker,
                i % 2 == 0,
                stats.clone(),
                connects.clone(),
                give_up,
            ));
        }
    }
    // Every connect either completes or gives up; a server that stops accepting leaves
    // them hanging, so the honest client is measured after 20 s in any case.
    let connect_deadline = Instant::now() + Duration::from_secs(20);
    while (rpc_stats.settled() < n_rpc || metrics_stats.settled() < n_metrics)
        && Instant::now() < connect_deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "slow-loris: {} of {n_rpc} connections to RPC and {} of {n_metrics} to metrics \
         established from {attacker} in {:.1?} ({} + {} connects failed or still pending)",
        rpc_stats.connected.load(Ordering::SeqCst),
        metrics_stats.connected.load(Ordering::SeqCst),
        started.elapsed(),
        n_rpc - rpc_stats.connected.load(Ordering::SeqCst),
        n_metrics - metrics_stats.connected.load(Ordering::SeqCst),
    );

    // The honest client, from another IP, while the attack connections are open.
    let mut answers = Vec::new();
    for round in 0..5 {
        for (path, url, stats) in [
            ("/v1/status", format!("http://{rpc}/v1/status"), &rpc_stats),
            (
                "/metrics",
                format!("http://{metrics}/metrics"),
                &metrics_stats,
            ),
        ] {
            let open = stats.open();
            let (status, took) = timed_get(&url).await;
            println!(
                "round {round}: GET {path} -> {status} in {took:.1?} ({open} attack connections open)"
            );
            answers.push((path, status, took));
        }
    }
    for (path, status, took) in &answers {
        assert!(
            *status == 200 && *took < Duration::from_secs(1),
            "GET {path} from another IP during the attack: {status} after {took:?} (0: no answer)"
        );
    }

    // Every attack connection is closed by the server: over the caps at once, within them
    // when the head does not arrive in time.
    let close_deadline = Instant::now() + Duration::from_secs(15);
    while rpc_stats.open() + metrics_stats.open() > 0 && Instant::now() < close_deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The server's own count of the connections it holds. A few connections can stay open
    // on the client side only: when a connect burst overflows the kernel's accept queue,
    // an ACK it drops can leave a silent client "connected" to a server that never saw it
    // (and holds nothing for it).
    let (_, server_side) = timed_get_text(&format!("http://{metrics}/metrics")).await;
    let counters: Vec<&str> = server_side
        .lines()
        .filter(|l| l.starts_with("tally_http_"))
        .collect();
    println!("server side: {}", counters.join("; "));
    let held = |server: &str| {
        let series = format!("tally_http_connections{{server=\"{server}\"}} ");
        counters
            .iter()
            .find_map(|l| l.strip_prefix(series.as_str()))
            .and_then(|v| v.trim().parse::<f64>().ok())
    };
    assert_eq!(
        held("rpc"),
        Some(0.0),
        "the RPC server still holds connections 15 s after the attack"
    );
    // The scrape that asked is the one open metrics connection.
    assert_eq!(
        held("metrics"),
        Some(1.0),
        "the metrics server still holds connections 15 s after the attack"
    );
    for (what, stats) in [("RPC", &rpc_stats), ("metrics", &metrics_stats)] {
        let connected = stats.connected.load(Ordering::SeqCst);
        let closed = stats.closed_after.lock().unwrap().clone();
        let fast = closed
            .iter()
            .filter(|d| **d < Duration::from_secs(1))
            .count();
        let slowest = closed.iter().max().copied().unwrap_or_default();
        println!(
            "{what}: {connected} connected, {} closed by the server ({fast} within 1 s, {} of them \
             answered first; the last after {slowest:.1?}), {} still open",
            closed.len(),
            stats.answered.lock().unwrap().len(),
            stats.open()
        );
        assert!(
            stats.open() * 10 <= connected,
            "{what}: {} of {connected} slow connections were still open 15 s after the connect phase",
            stats.open()
        );
        assert!(
            fast * 2 >= connected,
            "{what}: only {fast} of {connected} connections over the caps were closed at once"
        );
        for text in stats.answered.lock().unwrap().iter().take(3) {
            assert!(
                text.starts_with("HTTP/1.1 503") && text.contains("{\"error\":"),
                "{what}: a refused connection was answered with {text:?}"
            );
        }
    }
    attack.abort_all();
    while attack.join_next().await.is_some() {}

    // Still serving and committing afterwards.
    let h = net.height(0).await.unwrap();
    net.wait_for_height(h + 2, Duration::from_secs(30))
        .await
        .unwrap();
}

/// What a raw exchange got back: status, lower-cased head, body.
struct RawAnswer {
    status: u16,
    head: String,
    body: String,
}

impl RawAnswer {
    fn header(&self, name: &str) -> Option<&str> {
        self.head
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
    }
}

/// Sends `request` on a fresh connection and reads the answer for at most `wait`.
async fn raw_exchange(target: SocketAddr, request: &[u8], wait: Duration) -> RawAnswer {
    let mut stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(target))
        .await
        .unwrap()
        .unwrap();
    // A server that answers early (413) may close before it has read all of a large body.
    let _ = stream.write_all(request).await;
    let deadline = Instant::now() + wait;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok());
            if len.is_some_and(|len| got.len() >= end + 4 + len) {
                break;
            }
        }
        match tokio::time::timeout_at(deadline.into(), stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            Ok(_) => break,
            Err(_) => panic!(
                "no complete answer within {wait:?} to {:?}; got {:?}",
                String::from_utf8_lossy(request),
                String::from_utf8_lossy(&got)
            ),
        }
    }
    let text = String::from_utf8_lossy(&got).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    RawAnswer {
        status,
        head: head.to_ascii_lowercase(),
        body: body.to_string(),
    }
}

/// Issue 17 item 11: every error status, including the ones axum and tower-http make
/// themselves (405 method not allowed, 408 timeout), answers with the API's JSON error
/// body `{"error": {"code", "message"}}`, on the RPC and the metrics port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_every_error_status_has_a_json_body() {
    let net = TestNet::builder()
        .validators(1)
        .accounts(1)
        .env("TALLY_RPC_TIMEOUT_MS", "1000")
        .start()
        .await
        .unwrap();
    let (rpc, metrics) = listen_addrs(&net);
    let big = format!("{{\"tx\": \"{}\"}}", "a".repeat(200 * 1024));
    let big_post = format!(
        "POST /v1/txs HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{big}",
        big.len()
    );
    let cases: Vec<(&str, SocketAddr, Vec<u8>, u16)> = vec![
        (
            "unknown route",
            rpc,
            b"GET /v1/nope HTTP/1.1\r\nHost: t\r\n\r\n".to_vec(),
            404,
        ),
        (
            "POST to a GET route",
            rpc,
            b"POST /v1/status HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n".to_vec(),
            405,
        ),
        (
            "DELETE on the submit route",
            rpc,
            b"DELETE /v1/txs HTTP/1.1\r\nHost: t\r\n\r\n".to_vec(),
            405,
        ),
        (
            "malformed JSON",
            rpc,
            b"POST /v1/txs HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 9\r\n\r\n{not json".to_vec(),
            400,
        ),
        ("body over rpc.max_body_bytes", rpc, big_post.into_bytes(), 413),
        (
            // Declares 100 bytes of body and sends 7: the handler waits past rpc.timeout_ms.
            "a body that does not arrive in time",
            rpc,
            b"POST /v1/txs HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"tx\": ".to_vec(),
            408,
        ),
        (
            "unknown route on the metrics port",
            metrics,
            b"GET /nope HTTP/1.1\r\nHost: t\r\n\r\n".to_vec(),
            404,
        ),
        (
            "POST to /metrics",
            metrics,
            b"POST /metrics HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n".to_vec(),
            405,
        ),
    ];
    let mut failures = Vec::new();
    for (what, target, request, want) in cases {
        let answer = raw_exchange(target, &request, Duration::from_secs(5)).await;
        let (status, body) = (answer.status, &answer.body);
        let content_type = answer.header("content-type").unwrap_or("");
        let error = serde_json::from_str::<tally_api::ErrorBody>(body)
            .ok()
            .map(|b| b.error);
        let code = error.as_ref().and_then(|e| e.code.known());
        let message = error.as_ref().map_or("", |e| e.message.as_str());
        println!("{what}: {status} {content_type} {body}");
        // A code of this build, with the status the code has.
        if status != want
            || !content_type.starts_with("application/json")
            || code.map(tally_api::ErrorCode::status) != Some(status)
            || message.is_empty()
        {
            failures.push(format!(
                "{what}: want {want} with a JSON error body, got {status} ({content_type:?}) {body:?}"
            ));
        }
        // The JSON body does not replace what a 405 must say in its headers.
        if status == 405 && answer.header("allow").is_none_or(str::is_empty) {
            failures.push(format!("{what}: a 405 without an Allow header"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// `POST /v1/txs/batch` with a JSON `{"txs": [...]}` body, or raw borsh when `raw` is
/// given; (status, answer).
async fn post_batch(
    net: &TestNet,
    hexes: Option<&[String]>,
    raw: Option<Vec<u8>>,
) -> (u16, serde_json::Value) {
    let req = net.http.post(format!("{}/v1/txs/batch", net.rpc(0)));
    let req = match (hexes, raw) {
        (_, Some(bytes)) => req
            .header("content-type", "application/octet-stream")
            .body(bytes),
        (Some(h), None) => req.json(&serde_json::json!({ "txs": h })),
        (None, None) => req.json(&serde_json::json!({})),
    };
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

/// `POST /v1/txs/batch`: every tx answered on its own, in order (one sender's consecutive
/// nonces in one batch), JSON or raw borsh, a full batch of 1,024 fits the body limit, and
/// the batch's own faults are JSON errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_submit_answers_every_tx_and_they_commit() {
    let net = TestNet::builder()
        .validators(1)
        .accounts(3)
        .start_at_height(1, Duration::from_secs(30))
        .await
        .unwrap();
    let (a, b) = (account_key(0), account_key(1));
    let hex_of = |tx: &ledger::types::SignedTx| to_hex(&ledger::codec::encode(tx));
    let mut forged = transfer(&b, 0, [7; 20], 1, 1);
    forged.signature[10] ^= 1;
    let batch = vec![
        hex_of(&transfer(&a, 0, [7; 20], 1, 1)),
        hex_of(&transfer(&a, 1, [7; 20], 1, 1)),
        hex_of(&transfer(&a, 0, [7; 20], 1, 1)),
        "zz".to_string(),
        hex_of(&forged),
        hex_of(&transfer(&b, 0, [7; 20], 1, 1)),
    ];
    let (status, v) = post_batch(&net, Some(&batch), None).await;
    assert_eq!(status, 200);
    let codes: Vec<String> = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["error"]["code"].as_str().unwrap_or("ok").to_string())
        .collect();
    assert_eq!(
        codes,
        ["ok", "ok", "duplicate", "malformed", "bad_signature", "ok"],
        "{v}"
    );
    assert_eq!(
        (v["accepted"].as_u64(), v["refused"].as_u64()),
        (Some(3), Some(3))
    );

    // Raw borsh Vec<SignedTx>, the gossip batch format.
    let raw: Vec<ledger::types::SignedTx> =
        (1..3).map(|n| transfer(&b, n, [7; 20], 1, 1)).collect();
    let (status, w) = post_batch(&net, None, Some(ledger::codec::encode(&raw))).await;
    assert_eq!(status, 200);
    assert_eq!(w["accepted"], 2, "{w}");

    let ids: Vec<String> = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .chain(w["results"].as_array().unwrap())
        .filter(|r| r["error"].is_null())
        .map(|r| r["tx_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 5);
    for id in &ids {
        net.wait_committed(0, id, Duration::from_secs(30))
            .await
            .unwrap();
    }

    // A full batch fits the body limit (hex JSON of 1,024 txs is far above the 64 KiB of
    // the other routes); what the mempool does not take is answered per tx.
    let c = account_key(2);
    let full: Vec<String> = (0..1024)
        .map(|n| hex_of(&transfer(&c, n, [7; 20], 1, 1)))
        .collect();
    let (status, v) = post_batch(&net, Some(&full), None).await;
    assert_eq!(status, 200);
    assert_eq!(v["results"].as_array().unwrap().len(), 1024);
    assert!(v["accepted"].as_u64().unwrap() >= 1, "{}", v["results"][0]);

    // The batch's own faults.
    let too_many: Vec<String> = vec!["00".into(); 1025];
    for (hexes, raw, code) in [
        (Some(&too_many[..]), None, "bad_batch_size"),
        (Some(&[][..]), None, "bad_batch_size"),
        (None, None, "bad_request"),
        (None, Some(vec![5, 0, 0, 0, 1]), "malformed"),
    ] {
        let (status, e) = post_batch(&net, hexes, raw).await;
        assert_eq!(status, 400, "{e}");
        assert_eq!(e["error"]["code"], code, "{e}");
    }
    assert!(net.height(0).await.is_ok(), "the node stopped serving");
}
