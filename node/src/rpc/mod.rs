//! The JSON-over-HTTP API (DESIGN.md section 7). Errors are
//! `{"error": {"code": "...", "message": "..."}}` with a fitting status, also for the
//! errors axum and tower-http answer themselves ([`json_errors`]); every route has a
//! body-size limit and a timeout (except the event stream, which is long-lived by design).
//! Connections are accepted by [`server::serve`], which caps them and times out slow
//! request heads.

pub mod metrics;
pub mod server;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, MatchedPath, Path, Query, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::Stream;
use ledger::genesis::Genesis;
use ledger::hash::{from_hex_array, to_hex};
use ledger::state::prove_account;
use ledger::store::rocks::RocksStore;
use ledger::store::ChainReader;
use ledger::types::{Block, Commit};
use serde::Deserialize;
use serde_json::{json, Value};
use tally_p2p::NetworkHandle;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::engine::{EngineView, NodeEvent};
use crate::mempool::admission::admit_bytes;
use crate::mempool::metrics::MempoolMetrics;
use crate::mempool::{AddError, Mempool};
use metrics::{RouteLabel, RouteStatus, RpcMetrics};
pub use server::{serve, ConnLimits};

#[derive(Clone)]
pub struct RpcState {
    pub genesis: Arc<Genesis>,
    pub store: Arc<RocksStore>,
    pub mempool: Arc<Mutex<Mempool>>,
    pub mempool_metrics: MempoolMetrics,
    pub net: NetworkHandle,
    /// Where accepted transactions go for gossip (batched or one by one).
    pub tx_gossip: crate::txgossip::TxGossip,
    pub view: EngineView,
    pub events: broadcast::Sender<NodeEvent>,
    pub metrics: RpcMetrics,
    pub moniker: String,
    pub validator: Option<ledger::types::Address>,
    pub streams: Arc<tokio::sync::Semaphore>,
    /// Ends event streams at shutdown (graceful shutdown waits for open connections).
    pub shutdown: CancellationToken,
    /// The node's own storage failures (`storage_error` in `/v1/status`).
    pub storage: crate::metrics::StorageHealth,
}

/// An API error: status, stable code, human message.
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    fn internal(e: impl std::fmt::Display) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({"error": {"code": self.code, "message": self.message}})),
        )
            .into_response()
    }
}

impl From<AddError> for ApiError {
    fn from(e: AddError) -> Self {
        let status = match e.code() {
            "malformed"
            | "bad_signature"
            | "high_s_signature"
            | "wrong_chain"
            | "zero_amount"
            | "unsupported_payload" => StatusCode::BAD_REQUEST,
            "too_large" => StatusCode::PAYLOAD_TOO_LARGE,
            "duplicate" | "already_committed" | "nonce_too_low" | "replacement_underpriced" => {
                StatusCode::CONFLICT
            }
            "mempool_full" | "storage_error" => StatusCode::SERVICE_UNAVAILABLE,
            "sender_limit" => StatusCode::TOO_MANY_REQUESTS,
            "internal" => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::UNPROCESSABLE_ENTITY,
        };
        ApiError::new(status, e.code(), e.to_string())
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// A node whose consensus stopped (its store refused a block) takes no new txs: it could
/// never report them committed. 503 `halted`, with the engine's reason.
fn refuse_if_halted(s: &RpcState) -> ApiResult<()> {
    match &s.view.status.borrow().halted {
        Some(reason) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "halted",
            format!("this node stopped committing and takes no txs: {reason}"),
        )),
        None => Ok(()),
    }
}

/// Most txs in one `POST /v1/txs/batch`.
pub const MAX_SUBMIT_BATCH: usize = 1024;

pub fn router(state: RpcState, max_body: usize, timeout: Duration) -> Router {
    // A full batch in its larger form (hex in JSON: two characters a byte, plus quoting).
    let batch_body = MAX_SUBMIT_BATCH
        .saturating_mul(2 * state.genesis.params.max_tx_bytes as usize + 8)
        .saturating_add(1024)
        .max(max_body);
    let timed = Router::new()
        .route("/v1/txs", post(submit_tx))
        .route(
            "/v1/txs/batch",
            post(submit_batch).layer(DefaultBodyLimit::max(batch_body)),
        )
        .route("/v1/txs/{id}", get(get_tx))
        .route("/v1/accounts/{address}", get(get_account))
        .route("/v1/blocks/latest", get(latest_block))
        .route("/v1/blocks/{height}", get(get_block))
        .route("/v1/status", get(status))
        .route("/v1/peers", get(peers))
        .route("/v1/validators", get(validators))
        .route("/v1/evidence", get(evidence))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            timeout,
        ));
    timed
        .route("/v1/events", get(events))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn_with_state(state.clone(), track))
        .layer(axum::middleware::from_fn(json_errors))
        .with_state(state)
}

/// The metrics server's app: `GET /metrics` (OpenMetrics text of `registry`); its errors
/// have the API's JSON body too.
pub fn metrics_router(registry: Arc<prometheus_client::registry::Registry>) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let registry = registry.clone();
                async move {
                    (
                        [(
                            header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        crate::metrics::encode(&registry),
                    )
                }
            }),
        )
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such route; metrics are at GET /metrics",
            )
        })
        .layer(axum::middleware::from_fn(json_errors))
}

/// Gives the error answers that axum and tower-http make themselves (405 from a method
/// router, 408 from the timeout layer, a 413/415/422 rejection of an extractor) the API's
/// JSON error body, so that a client parses every error one way. Answers that are already
/// JSON pass untouched; other headers (`Allow` of a 405) are kept.
async fn json_errors(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let response = next.run(req).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    // axum's rejections carry a one-line reason in plain text: keep it as the message.
    let text = axum::body::to_bytes(body, 4096)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let (code, fallback) = describe_status(status, &method);
    let message = if text.is_empty() { fallback } else { text };
    let mut out = ApiError::new(status, code, message).into_response();
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            out.headers_mut().append(name, value.clone());
        }
    }
    out
}

/// The error code and a default message of a status that has no answer of its own.
fn describe_status(status: StatusCode, method: &Method) -> (&'static str, String) {
    let generic = || {
        format!(
            "{} {}",
            status.as_u16(),
            status.canonical_reason().unwrap_or("error")
        )
    };
    match status {
        StatusCode::BAD_REQUEST => ("bad_request", "the request is malformed".into()),
        StatusCode::NOT_FOUND => ("not_found", "no such route; see GET /v1/status".into()),
        // axum adds the `Allow` header after every layer, so it cannot be quoted here.
        StatusCode::METHOD_NOT_ALLOWED => (
            "method_not_allowed",
            format!(
                "this route does not take {method}; its Allow header lists the methods it does"
            ),
        ),
        StatusCode::REQUEST_TIMEOUT => (
            "timeout",
            "the request did not complete within the server's limit (rpc.timeout_ms); retry".into(),
        ),
        StatusCode::PAYLOAD_TOO_LARGE => ("payload_too_large", "request body is too large".into()),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => (
            "unsupported_media_type",
            "send the body as Content-Type: application/json".into(),
        ),
        StatusCode::UNPROCESSABLE_ENTITY => ("unprocessable", generic()),
        StatusCode::TOO_MANY_REQUESTS => ("too_many_requests", generic()),
        StatusCode::SERVICE_UNAVAILABLE => ("unavailable", generic()),
        s if s.is_server_error() => ("internal", generic()),
        _ => ("http_error", generic()),
    }
}

/// Counts every request by matched route and status, and times it.
async fn track(State(state): State<RpcState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let start = Instant::now();
    let response = next.run(req).await;
    state
        .metrics
        .requests
        .get_or_create(&RouteStatus {
            route: route.clone(),
            status: response.status().as_u16().to_string(),
        })
        .inc();
    state
        .metrics
        .latency
        .get_or_create(&RouteLabel { route })
        .observe(start.elapsed().as_secs_f64());
    response
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such route; see GET /v1/status",
    )
}

#[derive(Deserialize)]
struct SubmitBody {
    tx: String,
}

async fn submit_tx(
    State(s): State<RpcState>,
    body: Result<Json<SubmitBody>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    refuse_if_halted(&s)?;
    let Json(body) = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "request body is too large",
            )
        } else {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!(
                    "{}; send {{\"tx\": \"<hex of borsh(SignedTx)>\"}}",
                    e.body_text()
                ),
            )
        }
    })?;
    let bytes = hex::decode(body.tx.trim()).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed",
            format!("tx is not hex: {e}"),
        )
    })?;
    let max = s.genesis.params.max_tx_bytes as usize;
    let st = s.clone();
    let raw = bytes.clone();
    let (id, _) = tokio::task::spawn_blocking(move || {
        admit_bytes(
            st.store.as_ref(),
            &st.mempool,
            &st.mempool_metrics,
            &raw,
            max,
        )
    })
    .await
    .map_err(ApiError::internal)??;
    s.tx_gossip.publish(bytes).await;
    Ok((StatusCode::ACCEPTED, Json(json!({"tx_id": to_hex(&id)}))))
}

#[derive(Deserialize)]
struct SubmitBatchBody {
    txs: Vec<String>,
}

/// `POST /v1/txs/batch`: up to [`MAX_SUBMIT_BATCH`] txs, as `{"txs": ["<hex>", ...]}` or,
/// with `Content-Type: application/octet-stream`, as raw borsh `Vec<SignedTx>` (the
/// `txs/1` gossip format). Each tx is admitted in order (so one sender's nonces may follow
/// each other in a batch) and answered on its own: `{"tx_id"}` or `{"tx_id", "error":
/// {"code", "message"}}` with the codes of `POST /v1/txs`. The answer is 200 whenever the
/// batch itself could be read, whatever became of its txs.
async fn submit_batch(
    State(s): State<RpcState>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult<Json<Value>> {
    refuse_if_halted(&s)?;
    let raw = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/octet-stream"));
    let max = s.genesis.params.max_tx_bytes as usize;
    // Each entry: the tx's bytes, or why they could not be read.
    let entries: Vec<Result<Vec<u8>, String>> = if raw {
        crate::txgossip::split_batch(&body, max)
            .map_err(|e| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "malformed",
                    format!("body is not borsh Vec<SignedTx>: {e}"),
                )
            })?
            .into_iter()
            .map(|b| Ok(b.to_vec()))
            .collect()
    } else {
        let parsed: SubmitBatchBody = serde_json::from_slice(&body).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!(
                    "{e}; send {{\"txs\": [\"<hex of borsh(SignedTx)>\", ...]}} or raw borsh \
                     Vec<SignedTx> with Content-Type: application/octet-stream"
                ),
            )
        })?;
        parsed
            .txs
            .iter()
            .map(|h| hex::decode(h.trim()).map_err(|e| format!("tx is not hex: {e}")))
            .collect()
    };
    if entries.is_empty() || entries.len() > MAX_SUBMIT_BATCH {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_batch_size",
            format!(
                "a batch holds 1 to {MAX_SUBMIT_BATCH} txs, this one {}",
                entries.len()
            ),
        ));
    }
    let st = s.clone();
    let results = tokio::task::spawn_blocking(move || {
        entries
            .into_iter()
            .map(|entry| {
                let bytes = entry.map_err(|m| (None, "malformed", m))?;
                let id = ledger::hash::sha256(&bytes);
                match admit_bytes(
                    st.store.as_ref(),
                    &st.mempool,
                    &st.mempool_metrics,
                    &bytes,
                    max,
                ) {
                    Ok(_) => Ok((id, bytes)),
                    Err(e) => Err((Some(id), e.code(), e.to_string())),
                }
            })
            .collect::<Vec<_>>()
    })
    .await
    .map_err(ApiError::internal)?;
    let (mut accepted, mut answers) = (0usize, Vec::with_capacity(results.len()));
    for r in results {
        match r {
            Ok((id, bytes)) => {
                accepted += 1;
                s.tx_gossip.publish(bytes).await;
                answers.push(json!({"tx_id": to_hex(&id)}));
            }
            Err((id, code, message)) => answers.push(json!({
                "tx_id": id.map(|id| to_hex(&id)),
                "error": {"code": code, "message": message},
            })),
        }
    }
    Ok(Json(json!({
        "accepted": accepted,
        "refused": answers.len() - accepted,
        "results": answers,
    })))
}

fn parse_hash(text: &str, what: &'static str) -> ApiResult<[u8; 32]> {
    from_hex_array(text).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            what,
            format!("expected 64 hex characters: {e}"),
        )
    })
}

async fn get_tx(State(s): State<RpcState>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let id = parse_hash(&id, "bad_tx_id")?;
    let pending = s.mempool.lock().map(|m| m.contains(&id)).unwrap_or(false);
    if let Some(loc) = s.store.tx_location(&id).map_err(ApiError::internal)? {
        let block_hash = s
            .store
            .block(loc.height)
            .map_err(ApiError::internal)?
            .map(|b| to_hex(&b.hash()));
        return Ok(Json(json!({
            "tx_id": to_hex(&id), "status": "committed",
            "height": loc.height, "index": loc.index, "block_hash": block_hash,
        })));
    }
    let status = if pending { "pending" } else { "unknown" };
    Ok(Json(json!({"tx_id": to_hex(&id), "status": status})))
}

#[derive(Deserialize)]
struct AccountQuery {
    #[serde(default)]
    proof: bool,
}

async fn get_account(
    State(s): State<RpcState>,
    Path(address): Path<String>,
    query: Result<Query<AccountQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Value>> {
    let address: [u8; 20] = from_hex_array(&address).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_address",
            format!("address must be 40 hex characters: {e}"),
        )
    })?;
    let Query(q) =
        query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e.body_text()))?;
    // The tree and the tip are written in one batch, but read here in two steps: retry if
    // a commit landed in between so the proof, root and height always belong together.
    for _ in 0..5 {
        let tip = s.store.tip().map_err(ApiError::internal)?;
        let (account, proof, root) = if q.proof {
            let (a, p, r) =
                prove_account(s.store.as_ref(), &address).map_err(ApiError::internal)?;
            (a, Some(p), r)
        } else {
            let a = ledger::state::AccountReader::account(s.store.as_ref(), &address)
                .map_err(ApiError::internal)?;
            (a, None, tip.state_root)
        };
        if root != tip.state_root || s.store.tip().map_err(ApiError::internal)?.height != tip.height
        {
            continue;
        }
        let acct = account.unwrap_or_default();
        let pending_nonce = s
            .mempool
            .lock()
            .map(|m| m.pending_nonce(&address, acct.nonce))
            .unwrap_or(acct.nonce);
        let mut out = json!({
            "address": to_hex(&address), "balance": acct.balance, "nonce": acct.nonce,
            "pending_nonce": pending_nonce, "height": tip.height, "state_root": to_hex(&tip.state_root),
        });
        if let Some(p) = proof {
            out["proof"] = Value::String(to_hex(&p.to_bytes()));
            out["exists"] = Value::Bool(account.is_some());
        }
        return Ok(Json(out));
    }
    Err(ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "busy",
        "the chain moved while reading; retry",
    ))
}

fn commit_json(c: &Commit) -> Value {
    json!({
        "height": c.height, "round": c.round, "block_hash": to_hex(&c.block_hash),
        "signatures": c.signatures.iter().map(|s| json!({
            "validator": to_hex(&s.validator), "signature": to_hex(&s.signature)
        })).collect::<Vec<_>>(),
    })
}

pub fn block_json(block: &Block, commit: Option<&Commit>) -> Value {
    let h = &block.header;
    json!({
        "height": h.height,
        "hash": to_hex(&block.hash()),
        "header": {
            "version": h.version, "chain_id": h.chain_id, "height": h.height, "round": h.round,
            "time_ms": h.time_ms, "prev_hash": to_hex(&h.prev_hash), "tx_root": to_hex(&h.tx_root),
            "state_root": to_hex(&h.state_root), "validators_hash": to_hex(&h.validators_hash),
            "proposer": to_hex(&h.proposer), "last_commit_hash": to_hex(&h.last_commit_hash),
        },
        "tx_ids": block.txs.iter().map(|t| to_hex(&t.id())).collect::<Vec<_>>(),
        "commit": commit.map(commit_json),
        "last_commit": block.last_commit.as_ref().map(commit_json),
        "block": to_hex(&ledger::codec::encode(block)),
    })
}

fn block_at(s: &RpcState, height: u64) -> ApiResult<Json<Value>> {
    let block = s
        .store
        .block(height)
        .map_err(ApiError::internal)?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no block at height {height}"),
            )
        })?;
    let commit = s.store.commit(height).map_err(ApiError::internal)?;
    Ok(Json(block_json(&block, commit.as_ref())))
}

async fn latest_block(State(s): State<RpcState>) -> ApiResult<Json<Value>> {
    let tip = s.store.tip().map_err(ApiError::internal)?;
    if tip.height == 0 {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no block has been committed yet",
        ));
    }
    block_at(&s, tip.height)
}

async fn get_block(
    State(s): State<RpcState>,
    Path(height): Path<String>,
) -> ApiResult<Json<Value>> {
    let height: u64 = height.parse().map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_height",
            format!("\"{height}\" is not a block height (an integer >= 1)"),
        )
    })?;
    block_at(&s, height)
}

async fn status(State(s): State<RpcState>) -> ApiResult<Json<Value>> {
    let st = s.view.status.borrow().clone();
    let peers = s
        .net
        .peers()
        .await
        .map(|p| p.iter().filter(|x| x.connected).count())
        .unwrap_or(0);
    let (txs, bytes) = s
        .mempool
        .lock()
        .map(|m| (m.len(), m.bytes()))
        .unwrap_or((0, 0));
    Ok(Json(json!({
        "chain_id": s.genesis.chain_id,
        "node_id": s.net.local_peer_id().to_string(),
        "moniker": s.moniker,
        "height": st.height,
        "tip_hash": to_hex(&st.tip_hash),
        "state_root": to_hex(&st.state_root),
        "round": st.round,
        "catching_up": st.catching_up,
        "sync_target": st.sync_target,
        "validator": s.validator.is_some(),
        "validator_address": s.validator.map(|a| to_hex(&a)),
        "peers": peers,
        "mempool": {"txs": txs, "bytes": bytes},
        "min_fee": s.genesis.params.min_fee,
        "seconds_since_last_block": st.last_block_at.map(|t| t.elapsed().as_secs_f64()),
        "storage_error": s.storage.last(),
        "halted": st.halted,
    })))
}

async fn peers(State(s): State<RpcState>) -> ApiResult<Json<Value>> {
    let peers = s.net.peers().await.map_err(ApiError::internal)?;
    let list: Vec<Value> = peers
        .iter()
        .map(|p| {
            json!({
                "peer_id": p.peer_id.to_string(),
                "connected": p.connected,
                "addresses": p.addresses.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
                "score": p.app_score,
                "score_components": {"application": p.app_score, "gossipsub": p.gossipsub_score},
                "reasons": p.reasons.iter().map(|(r, n)| (r.to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
                "banned": p.banned,
                "ban_remaining_secs": p.ban_remaining.map(|d| d.as_secs_f64()),
                "agent": p.agent,
            })
        })
        .collect();
    Ok(Json(json!({"peers": list})))
}

async fn validators(State(s): State<RpcState>) -> Json<Value> {
    let g = &s.genesis;
    Json(json!({
        "total_power": g.validators.total_power(),
        "validators_hash": to_hex(&g.validators.hash()),
        "validators": g.validators.validators().iter().zip(&g.validator_names).map(|(v, name)| json!({
            "name": name, "address": to_hex(&v.address), "pubkey": to_hex(&v.pubkey), "power": v.power,
        })).collect::<Vec<_>>(),
    }))
}

async fn evidence(State(s): State<RpcState>) -> Json<Value> {
    let list = s
        .view
        .evidence
        .read()
        .map(|l| l.clone())
        .unwrap_or_default();
    Json(json!({"evidence": list.iter().map(|e| {
        let vote = |v: &ledger::types::SignedVote| json!({
            "height": v.vote.height, "round": v.vote.round,
            "kind": format!("{:?}", v.vote.kind).to_lowercase(),
            "block_hash": v.vote.block_hash.map(|h| to_hex(&h)),
            "signature": to_hex(&v.signature),
        });
        json!({
            "validator": to_hex(&e.first.validator),
            "height": e.first.vote.height, "round": e.first.vote.round,
            "first": vote(&e.first), "second": vote(&e.second),
        })
    }).collect::<Vec<_>>()}))
}

async fn events(
    State(s): State<RpcState>,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let permit = s.streams.clone().try_acquire_owned().map_err(|_| {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_streams",
            "too many open event streams; retry later",
        )
    })?;
    let rx = s.events.subscribe();
    let stop = s.shutdown.clone();
    let stream = futures::stream::unfold((rx, permit, stop), |(mut rx, permit, stop)| async move {
        let next = tokio::select! {
            _ = stop.cancelled() => return None,
            n = rx.recv() => n,
        };
        let ev = match next {
            Ok(NodeEvent::Block {
                height,
                hash,
                txs,
                time_ms,
            }) => Event::default().event("block").data(
                json!({"height": height, "hash": to_hex(&hash), "txs": txs, "time_ms": time_ms})
                    .to_string(),
            ),
            Ok(NodeEvent::Tx { id, height, index }) => Event::default()
                .event("tx")
                .data(json!({"tx_id": to_hex(&id), "height": height, "index": index}).to_string()),
            Err(broadcast::error::RecvError::Lagged(n)) => Event::default()
                .event("lagged")
                .data(json!({"missed": n}).to_string()),
            Err(broadcast::error::RecvError::Closed) => return None,
        };
        Some((Ok(ev), (rx, permit, stop)))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(10))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ledger::check::TxError;

    #[test]
    fn a_protocol_2_payload_is_a_400_with_its_code() {
        let e = ApiError::from(AddError::Invalid(TxError::UnsupportedPayload {
            payload: "Bond",
            needs: 2,
            runs: 1,
        }));
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(e.code, "unsupported_payload");
        assert_eq!(
            e.message,
            "payload Bond needs protocol 2; this chain runs protocol 1"
        );
    }
}
