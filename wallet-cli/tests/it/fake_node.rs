//! An in-memory stand-in for tallyd's RPC (DESIGN.md section 7), just faithful enough to
//! drive the real `tally` binary: it checks signatures, chain id, fee, nonce and funds
//! like the real mempool, commits pending transactions in a block every ~100 ms, and
//! streams `block` / `tx` server-sent events.

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

fn err(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
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
            // Submission admits transfers only.
            let Payload::Transfer { to, amount } = stx.tx.payload else {
                continue;
            };
            let from = stx.sender();
            let a = g.accounts.entry(from).or_default();
            a.balance -= amount + stx.tx.fee;
            a.nonce += 1;
            g.accounts.entry(to).or_default().balance += amount;
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
            let _ = self.events.send((
                "tx",
                json!({"tx_id": id, "height": height, "index": index}).to_string(),
            ));
        }
        let _ = self.events.send((
            "block",
            json!({"height": height, "hash": hash, "txs": ids.len(), "time_ms": 0, "new": 1})
                .to_string(),
        ));
        g.blocks.push(FakeBlock {
            height,
            hash,
            tx_ids: ids,
        });
    }
}

async fn status(State(app): State<App>) -> Response {
    let g = app.inner.lock().unwrap();
    Json(json!({
        "chain_id": CHAIN_ID, "node_id": "fake", "moniker": "fake-node",
        "height": g.blocks.len(), "tip_hash": g.blocks.last().map(|b| b.hash.clone()).unwrap_or_default(),
        "state_root": "00".repeat(32), "catching_up": false, "validator": true,
        "validator_address": null, "round": 0, "peers": 0,
        "mempool": {"txs": g.mempool.len(), "bytes": 0}, "min_fee": MIN_FEE,
        "some_future_field": {"x": 1}
    }))
    .into_response()
}

async fn submit(State(app): State<App>, Json(body): Json<Value>) -> Response {
    let Some(hex_tx) = body.get("tx").and_then(Value::as_str) else {
        return err(StatusCode::BAD_REQUEST, "bad_request", "missing field tx");
    };
    let Ok(bytes) = hex::decode(hex_tx) else {
        return err(StatusCode::BAD_REQUEST, "malformed", "tx is not hex");
    };
    let stx: SignedTx = match ledger::codec::decode("tx", &bytes, 1024) {
        Ok(t) => t,
        Err(e) => return err(StatusCode::BAD_REQUEST, "malformed", &e.to_string()),
    };
    if stx.verify_signature().is_err() {
        return err(
            StatusCode::BAD_REQUEST,
            "bad_signature",
            "signature does not verify",
        );
    }
    if stx.tx.chain_id != CHAIN_ID {
        return err(StatusCode::BAD_REQUEST, "wrong_chain", "wrong chain");
    }
    if stx.tx.fee < MIN_FEE {
        return err(
            StatusCode::UNPROCESSABLE_ENTITY,
            "fee_too_low",
            "fee too low",
        );
    }
    let Payload::Transfer { amount, .. } = stx.tx.payload else {
        return err(
            StatusCode::BAD_REQUEST,
            "unsupported_payload",
            "payload needs protocol 2",
        );
    };
    if amount == 0 {
        return err(StatusCode::BAD_REQUEST, "zero_amount", "zero amount");
    }
    let id = hex::encode(stx.id());
    let mut g = app.inner.lock().unwrap();
    if g.txs.contains_key(&id) || g.mempool.iter().any(|(i, _)| *i == id) {
        return err(StatusCode::CONFLICT, "duplicate", "already known");
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
            StatusCode::UNPROCESSABLE_ENTITY,
            "nonce_too_low",
            &format!(
                "nonce {} was already used; next is {expected}",
                stx.tx.nonce
            ),
        );
    }
    if stx.tx.nonce > expected {
        return err(StatusCode::UNPROCESSABLE_ENTITY, "nonce_gap", "nonce gap");
    }
    let spent: u128 = pending
        .iter()
        .map(|t| u128::from(t.tx.payload.debit()) + u128::from(t.tx.fee))
        .sum();
    let needed = u128::from(amount) + u128::from(stx.tx.fee);
    if u128::from(acct.balance) < spent + needed {
        return err(
            StatusCode::UNPROCESSABLE_ENTITY,
            "insufficient_funds",
            &format!(
                "balance {} is less than amount + fee = {needed}",
                acct.balance
            ),
        );
    }
    g.mempool.push((id.clone(), stx));
    (StatusCode::ACCEPTED, Json(json!({"tx_id": id}))).into_response()
}

async fn tx_status(State(app): State<App>, Path(id): Path<String>) -> Response {
    if ledger::hash::from_hex_array::<32>(&id).is_err() {
        return err(StatusCode::BAD_REQUEST, "bad_request", "bad tx id");
    }
    let g = app.inner.lock().unwrap();
    if let Some(r) = g.txs.get(&id) {
        return Json(json!({"tx_id": id, "status": "committed", "height": r.height, "index": r.index, "block_hash": r.block_hash})).into_response();
    }
    let status = if g.mempool.iter().any(|(i, _)| *i == id) {
        "pending"
    } else {
        "unknown"
    };
    Json(json!({"tx_id": id, "status": status})).into_response()
}

async fn account(
    State(app): State<App>,
    Path(addr): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let Ok(address) = ledger::hash::from_hex_array::<20>(&addr) else {
        return err(
            StatusCode::BAD_REQUEST,
            "bad_address",
            "address must be 40 hex",
        );
    };
    let g = app.inner.lock().unwrap();
    let a = g.accounts.get(&address).copied().unwrap_or_default();
    let pending = g
        .mempool
        .iter()
        .filter(|(_, t)| t.sender() == address)
        .count() as u64;
    let mut v = json!({
        "address": addr, "balance": a.balance, "nonce": a.nonce,
        "pending_nonce": a.nonce + pending, "height": g.blocks.len(),
        "state_root": "00".repeat(32),
    });
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
            Err(_) => return err(StatusCode::BAD_REQUEST, "bad_height", "bad height"),
        }
    };
    if let Some(v) = g.extra_blocks.get(&height) {
        return Json(v.clone()).into_response();
    }
    let Some(b) = height.checked_sub(1).and_then(|i| g.blocks.get(i as usize)) else {
        return err(
            StatusCode::NOT_FOUND,
            "not_found",
            "no block at that height",
        );
    };
    Json(json!({
        "height": b.height, "hash": b.hash,
        "header": {"version": 1, "chain_id": CHAIN_ID, "height": b.height, "round": 0, "time_ms": 0,
                   "prev_hash": "00".repeat(32), "tx_root": "00".repeat(32), "state_root": "00".repeat(32),
                   "validators_hash": "00".repeat(32), "proposer": "00".repeat(20), "last_commit_hash": "00".repeat(32)},
        "tx_ids": b.tx_ids, "commit": null,
    }))
    .into_response()
}

async fn events_route(State(app): State<App>) -> Response {
    if app.inner.lock().unwrap().events_disabled {
        return err(StatusCode::NOT_FOUND, "not_found", "no such route");
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
