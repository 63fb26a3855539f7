//! An in-memory stand-in for tallyd's RPC (DESIGN.md section 7), just faithful enough to
//! drive the real `tally` binary: it checks signatures, chain id, fee, nonce and funds
//! like the real mempool, commits pending transactions in a block every ~100 ms, and
//! streams `block` / `tx` server-sent events. Its bodies are the `tally-api` types the
//! real node serves, plus a few fields no node sends (the wallet must ignore them).

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use ledger::types::{Address, Payload, SignedTx};
use serde_json::{json, Value};
use tally_api::{self as api, ErrorBody, ErrorCode};
use tokio::sync::broadcast;

pub const CHAIN_ID: &str = "tally-fake";
pub const MIN_FEE: u64 = 2;

#[derive(Clone, Copy, Default)]
pub struct Acct {
    pub balance: u64,
    pub nonce: u64,
}

struct TxRec {
    height: u64,
    index: u32,
    block_hash: String,
}

struct FakeBlock {
    height: u64,
    hash: String,
    tx_ids: Vec<String>,
}

/// Extra fields merged into `/v1/accounts/{addr}?proof=true` answers.
pub type AccountExtra = Box<dyn Fn(&Address) -> Value + Send>;

pub struct Inner {
    pub accounts: HashMap<Address, Acct>,
    mempool: Vec<(String, SignedTx)>,
    txs: HashMap<String, TxRec>,
    blocks: Vec<FakeBlock>,
    /// Hook for tests: proof / raw block / commit answers (see the verify test).
    pub extra_account_fields: Option<AccountExtra>,
    pub extra_blocks: HashMap<u64, Value>,
    /// Answer `/v1/events` with 404 (an old or restricted node): clients must poll.
    pub events_disabled: bool,
    /// Stop committing blocks (a stalled chain).
    pub paused: bool,
    /// The chain's protocol: 1 refuses Bond, Unbond and Unjail as a protocol-1 node does.
    pub protocol: u32,
    /// Refuse every staking tx with this code and message (the node's staking checks).
    pub stake_refusal: Option<(ErrorCode, String)>,
    /// Every tx admitted, in order.
    pub accepted: Vec<SignedTx>,
    /// Answers of other GET routes, by path and query (`/v1/validators?height=3`); any
    /// other path is a 404 `not_found`.
    pub canned: HashMap<String, Value>,
}

#[derive(Clone)]
struct App {
    inner: Arc<Mutex<Inner>>,
    events: broadcast::Sender<(&'static str, String)>,
}

pub struct FakeNode {
    pub url: String,
    inner: Arc<Mutex<Inner>>,
}

impl FakeNode {
    pub fn start() -> Self {
        let inner = Arc::new(Mutex::new(Inner {
            accounts: HashMap::new(),
            mempool: Vec::new(),
            txs: HashMap::new(),
            blocks: Vec::new(),
            extra_account_fields: None,
            extra_blocks: HashMap::new(),
            events_disabled: false,
            paused: false,
            protocol: 1,
            stake_refusal: None,
            accepted: Vec::new(),
            canned: HashMap::new(),
        }));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (events, _) = broadcast::channel(4096);
        let app = App {
            inner: inner.clone(),
            events,
        };
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let committer = app.clone();
                tokio::spawn(async move {
                    loop {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        committer.commit_block();
                    }
                });
                let router = Router::new()
                    .route("/v1/status", get(status))
                    .route("/v1/txs", post(submit))
                    .route("/v1/txs/{id}", get(tx_status))
                    .route("/v1/accounts/{addr}", get(account))
                    .route("/v1/blocks/{at}", get(block))
                    .route("/v1/events", get(events_route))
                    .fallback(canned)
                    .with_state(app);
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                axum::serve(listener, router).await.unwrap();
            });
        });
        Self { url, inner }
    }

    pub fn fund(&self, address: &Address, amount: u64) {
        self.inner
            .lock()
            .unwrap()
            .accounts
            .entry(*address)
            .or_default()
            .balance += amount;
    }

    pub fn account(&self, address: &Address) -> Acct {
        self.inner
            .lock()
            .unwrap()
            .accounts
            .get(address)
            .copied()
            .unwrap_or_default()
    }

    pub fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        f(&mut self.inner.lock().unwrap())
    }
}

fn err(code: ErrorCode, message: &str) -> Response {
    let status = StatusCode::from_u16(code.status()).unwrap();
    (status, Json(ErrorBody::new(code, message))).into_response()
}

impl App {
    fn commit_block(&self) {
        let mut g = self.inner.lock().unwrap();
        if g.mempool.is_empty() || g.paused {
            return;
        }
        let height = g.blocks.len() as u64 + 1;
        let hash = hex::encode(ledger::sha256(&height.to_be_bytes()));
        let txs = std::mem::take(&mut g.mempool);
        let mut ids = Vec::new();
        for (index, (id, stx)) in txs.into_iter().enumerate() {
            // A staking tx only debits its sender here (the fake keeps no bonds).
            let from = stx.sender();
            let a = g.accounts.entry(from).or_default();
            a.balance -= stx.tx.payload.debit() + stx.tx.fee;
            a.nonce += 1;
            if let Payload::Transfer { to, amount } = stx.tx.payload {
                g.accounts.entry(to).or_default().balance += amount;
            }
            g.txs.insert(
                id.clone(),
                TxRec {
                    height,
                    index: index as u32,
                    block_hash: hash.clone(),
                },
            );
            ids.push(id);
        }
        for (index, id) in ids.iter().enumerate() {
            let ev = api::Event::Tx(api::TxEvent {
                tx_id: id.clone(),
                height,
                index: index as u32,
            });
            let _ = self.events.send((ev.name(), ev.data()));
        }
        let mut block = serde_json::to_value(api::BlockEvent {
            height,
            hash: hash.clone(),
            txs: ids.len() as u64,
            time_ms: 0,
        })
        .unwrap();
        block["new"] = json!(1);
        let _ = self.events.send(("block", block.to_string()));
        g.blocks.push(FakeBlock {
            height,
            hash,
            tx_ids: ids,
        });
    }
}

async fn status(State(app): State<App>) -> Response {
    let g = app.inner.lock().unwrap();
    let mut v = serde_json::to_value(api::Status {
        chain_id: CHAIN_ID.into(),
        node_id: "fake".into(),
        moniker: "fake-node".into(),
        height: g.blocks.len() as u64,
        tip_hash: g.blocks.last().map(|b| b.hash.clone()).unwrap_or_default(),
        state_root: "00".repeat(32),
        round: 0,
        catching_up: false,
        sync_target: 0,
        validator: true,
        validator_address: None,
        peers: 0,
        mempool: api::MempoolSize {
            txs: g.mempool.len() as u64,
            bytes: 0,
        },
        min_fee: MIN_FEE,
        seconds_since_last_block: None,
        storage_error: None,
        halted: None,
        protocol: 1,
        upgrade: None,
        version: None,
        max_protocol: None,
    })
    .unwrap();
    v["some_future_field"] = json!({"x": 1});
    Json(v).into_response()
}

async fn submit(State(app): State<App>, Json(body): Json<Value>) -> Response {
    let Ok(api::SubmitTx { tx: hex_tx }) = serde_json::from_value(body) else {
        return err(ErrorCode::BadRequest, "missing field tx");
    };
    let Ok(bytes) = hex::decode(hex_tx) else {
        return err(ErrorCode::Malformed, "tx is not hex");
    };
    let stx: SignedTx = match ledger::codec::decode("tx", &bytes, 1024) {
        Ok(t) => t,
        Err(e) => return err(ErrorCode::Malformed, &e.to_string()),
    };
    if stx.verify_signature().is_err() {
        return err(ErrorCode::BadSignature, "signature does not verify");
    }
    if stx.tx.chain_id != CHAIN_ID {
        return err(ErrorCode::WrongChain, "wrong chain");
    }
    if stx.tx.fee < MIN_FEE {
        return err(ErrorCode::FeeTooLow, "fee too low");
    }
    let mut g = app.inner.lock().unwrap();
    let amount = stx.tx.payload.debit();
    match stx.tx.payload {
        Payload::Transfer { .. } if amount == 0 => {
            return err(ErrorCode::ZeroAmount, "zero amount");
        }
        Payload::Transfer { .. } => {}
        _ if g.protocol < 2 => {
            // The real node's words (ledger::check).
            let message = format!(
                "payload {} needs protocol 2; this chain runs protocol 1",
                stx.tx.payload.kind()
            );
            return err(ErrorCode::UnsupportedPayload, &message);
        }
        _ => {
            if let Some((code, message)) = &g.stake_refusal {
                return err(*code, message);
            }
        }
    }
    let id = hex::encode(stx.id());
    if g.txs.contains_key(&id) || g.mempool.iter().any(|(i, _)| *i == id) {
        return err(ErrorCode::Duplicate, "already known");
    }
    let sender = stx.sender();
    let acct = g.accounts.get(&sender).copied().unwrap_or_default();
    let pending: Vec<&SignedTx> = g
        .mempool
        .iter()
        .filter(|(_, t)| t.sender() == sender)
        .map(|(_, t)| t)
        .collect();
    let expected = acct.nonce + pending.len() as u64;
    if stx.tx.nonce < expected {
        return err(
            ErrorCode::NonceTooLow,
            &format!(
                "nonce {} was already used; next is {expected}",
                stx.tx.nonce
            ),
        );
    }
    if stx.tx.nonce > expected {
        return err(ErrorCode::NonceGap, "nonce gap");
    }
    let spent: u128 = pending
        .iter()
        .map(|t| u128::from(t.tx.payload.debit()) + u128::from(t.tx.fee))
        .sum();
    let needed = u128::from(amount) + u128::from(stx.tx.fee);
    if u128::from(acct.balance) < spent + needed {
        return err(
            ErrorCode::InsufficientFunds,
            &format!(
                "balance {} is less than amount + fee = {needed}",
                acct.balance
            ),
        );
    }
    g.accepted.push(stx.clone());
    g.mempool.push((id.clone(), stx));
    (StatusCode::ACCEPTED, Json(api::Submitted { tx_id: id })).into_response()
}

async fn tx_status(State(app): State<App>, Path(id): Path<String>) -> Response {
    if ledger::hash::from_hex_array::<32>(&id).is_err() {
        return err(ErrorCode::BadTxId, "bad tx id");
    }
    let g = app.inner.lock().unwrap();
    if let Some(r) = g.txs.get(&id) {
        return Json(api::TxStatus {
            tx_id: id,
            status: api::TxState::Committed,
            height: Some(r.height),
            index: Some(r.index),
            block_hash: Some(r.block_hash.clone()),
        })
        .into_response();
    }
    let status = if g.mempool.iter().any(|(i, _)| *i == id) {
        api::TxState::Pending
    } else {
        api::TxState::Unknown
    };
    Json(api::TxStatus {
        tx_id: id,
        status,
        height: None,
        index: None,
        block_hash: None,
    })
    .into_response()
}

async fn account(
    State(app): State<App>,
    Path(addr): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let Ok(address) = ledger::hash::from_hex_array::<20>(&addr) else {
        return err(ErrorCode::BadAddress, "address must be 40 hex");
    };
    let g = app.inner.lock().unwrap();
    let a = g.accounts.get(&address).copied().unwrap_or_default();
    let pending = g
        .mempool
        .iter()
        .filter(|(_, t)| t.sender() == address)
        .count() as u64;
    let mut v = serde_json::to_value(api::Account {
        address: addr,
        balance: a.balance,
        nonce: a.nonce,
        pending_nonce: a.nonce + pending,
        height: g.blocks.len() as u64,
        state_root: "00".repeat(32),
        proof: None,
        exists: None,
    })
    .unwrap();
    if q.get("proof").map(String::as_str) == Some("true") {
        if let Some(f) = &g.extra_account_fields {
            if let (Some(obj), Value::Object(extra)) = (v.as_object_mut(), f(&address)) {
                obj.extend(extra);
            }
        }
    }
    Json(v).into_response()
}

async fn block(State(app): State<App>, Path(at): Path<String>) -> Response {
    let g = app.inner.lock().unwrap();
    let height = if at == "latest" {
        g.blocks.len() as u64
    } else {
        match at.parse::<u64>() {
            Ok(h) => h,
            Err(_) => return err(ErrorCode::BadHeight, "bad height"),
        }
    };
    if let Some(v) = g.extra_blocks.get(&height) {
        return Json(v.clone()).into_response();
    }
    let Some(b) = height.checked_sub(1).and_then(|i| g.blocks.get(i as usize)) else {
        return err(ErrorCode::NotFound, "no block at that height");
    };
    // No raw block: the fake's blocks are not real ones (the verify tests inject theirs).
    Json(api::Block {
        height: b.height,
        hash: b.hash.clone(),
        header: api::Header {
            version: 1,
            chain_id: CHAIN_ID.into(),
            height: b.height,
            round: 0,
            time_ms: 0,
            prev_hash: "00".repeat(32),
            tx_root: "00".repeat(32),
            state_root: "00".repeat(32),
            validators_hash: "00".repeat(32),
            proposer: "00".repeat(20),
            last_commit_hash: "00".repeat(32),
            next_validators_hash: None,
        },
        tx_ids: b.tx_ids.clone(),
        commit: None,
        last_commit: None,
        block: None,
    })
    .into_response()
}

async fn events_route(State(app): State<App>) -> Response {
    if app.inner.lock().unwrap().events_disabled {
        return err(ErrorCode::NotFound, "no such route");
    }
    let rx = app.events.subscribe();
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok((name, data)) => {
                    let ev = SseEvent::default().event(name).data(data);
                    return Some((Ok::<_, Infallible>(ev), rx));
                }
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

async fn canned(State(app): State<App>, uri: axum::http::Uri) -> Response {
    let key = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
    match app.inner.lock().unwrap().canned.get(key) {
        Some(v) => Json(v.clone()).into_response(),
        None => err(ErrorCode::NotFound, &format!("no such route {key}")),
    }
}
