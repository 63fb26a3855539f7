//! The JSON-over-HTTP API (DESIGN.md section 7). Errors are
//! `{"error": {"code": "...", "message": "..."}}` with a fitting status, also for the
//! errors axum and tower-http answer themselves ([`json_errors`]); every route has a
//! body-size limit and a timeout (except the event stream, which is long-lived by design).
//! Connections are accepted by [`server::serve`], which caps them and times out slow
//! request heads.

pub mod metrics;
pub mod server;
pub mod staking;

use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard};
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
use tally_p2p::NetworkHandle;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::mempool::admission::admit_bytes;
use crate::mempool::metrics::MempoolMetrics;
use crate::mempool::{AddError, Mempool};
use crate::status::{NodeEvent, NodeView};
use metrics::{RouteLabel, RouteStatus, RpcMetrics};
pub use server::{serve, ConnLimits};
use tally_api::{self as api, ErrorBody, ErrorCode, ErrorDetail};

#[derive(Clone)]
pub struct RpcState {
    pub genesis: Arc<Genesis>,
    pub store: Arc<RocksStore>,
    pub mempool: Arc<Mutex<Mempool>>,
    pub mempool_metrics: MempoolMetrics,
    pub net: NetworkHandle,
    /// Where accepted transactions go for gossip (batched or one by one).
    pub tx_gossip: crate::txgossip::TxGossip,
    pub view: NodeView,
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

/// An API error: a stable code (which fixes the HTTP status) and a human message.
#[derive(Debug)]
pub struct ApiError {
    code: ErrorCode,
    message: String,
}

impl ApiError {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    fn internal(e: impl std::fmt::Display) -> Self {
        Self::new(ErrorCode::Internal, e.to_string())
    }

    fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status(), Json(ErrorBody::new(self.code, self.message))).into_response()
    }
}

impl From<AddError> for ApiError {
    fn from(e: AddError) -> Self {
        ApiError::new(e.code(), e.to_string())
    }
}

/// The mempool, or `internal` if a panic poisoned its lock: answering from a guess
/// (nothing pending, an empty pool) would give a wrong answer as a right one.
fn lock_pool(s: &RpcState) -> ApiResult<MutexGuard<'_, Mempool>> {
    s.mempool.lock().map_err(|_| {
        ApiError::new(
            ErrorCode::Internal,
            "internal error: the mempool is unusable after a panic; see the node's log",
        )
    })
}

type ApiResult<T> = Result<T, ApiError>;

/// A node whose consensus stopped (its store refused a block) takes no new txs: it could
/// never report them committed. 503 `halted`, with the chain host's reason.
fn refuse_if_halted(s: &RpcState) -> ApiResult<()> {
    match &s.view.status.borrow().halted {
        Some(reason) => Err(ApiError::new(
            ErrorCode::Halted,
            format!("this node stopped committing and takes no txs: {reason}"),
        )),
        None => Ok(()),
    }
}

pub use tally_api::MAX_SUBMIT_BATCH;

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
        .route("/v1/validators/{pubkey}", get(get_validator))
        .route("/v1/staking/{address}", get(get_staking))
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
                ErrorCode::NotFound,
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
    let mut out = ApiError::new(code, message).into_response();
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            out.headers_mut().append(name, value.clone());
        }
    }
    out
}

/// The error code and a default message of a status that has no answer of its own. The
/// answer gets the code's status: one axum or tower-http never gives (none does today) is
/// answered as `bad_request` (a 4xx) or `internal` (a 5xx).
fn describe_status(status: StatusCode, method: &Method) -> (ErrorCode, String) {
    let code = ErrorCode::for_status(status.as_u16()).unwrap_or(if status.is_server_error() {
        ErrorCode::Internal
    } else {
        ErrorCode::BadRequest
    });
    let message = match code {
        ErrorCode::BadRequest => "the request is malformed".into(),
        ErrorCode::NotFound => "no such route; see GET /v1/status".into(),
        // axum adds the `Allow` header after every layer, so it cannot be quoted here.
        ErrorCode::MethodNotAllowed => {
            format!("this route does not take {method}; its Allow header lists the methods it does")
        }
        ErrorCode::Timeout => {
            "the request did not complete within the server's limit (rpc.timeout_ms); retry".into()
        }
        ErrorCode::PayloadTooLarge => "request body is too large".into(),
        ErrorCode::UnsupportedMediaType => "send the body as Content-Type: application/json".into(),
        _ => format!(
            "{} {}",
            status.as_u16(),
            status.canonical_reason().unwrap_or("error")
        ),
    };
    (code, message)
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
    ApiError::new(ErrorCode::NotFound, "no such route; see GET /v1/status")
}

async fn submit_tx(
    State(s): State<RpcState>,
    body: Result<Json<api::SubmitTx>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<api::Submitted>)> {
    refuse_if_halted(&s)?;
    let Json(body) = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(ErrorCode::PayloadTooLarge, "request body is too large")
        } else {
            ApiError::new(
                ErrorCode::BadRequest,
                format!(
                    "{}; send {{\"tx\": \"<hex of borsh(SignedTx)>\"}}",
                    e.body_text()
                ),
            )
        }
    })?;
    let bytes = hex::decode(body.tx.trim())
        .map_err(|e| ApiError::new(ErrorCode::Malformed, format!("tx is not hex: {e}")))?;
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
    Ok((
        StatusCode::ACCEPTED,
        Json(api::Submitted { tx_id: to_hex(&id) }),
    ))
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
) -> ApiResult<Json<api::BatchAnswer>> {
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
                    ErrorCode::Malformed,
                    format!("body is not borsh Vec<SignedTx>: {e}"),
                )
            })?
            .into_iter()
            .map(|b| Ok(b.to_vec()))
            .collect()
    } else {
        let parsed: api::SubmitBatch = serde_json::from_slice(&body).map_err(|e| {
            ApiError::new(
                ErrorCode::BadRequest,
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
            ErrorCode::BadBatchSize,
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
                let bytes = entry.map_err(|m| (None, ErrorCode::Malformed, m))?;
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
                answers.push(api::BatchResult {
                    tx_id: Some(to_hex(&id)),
                    error: None,
                });
            }
            Err((id, code, message)) => answers.push(api::BatchResult {
                tx_id: id.map(|id| to_hex(&id)),
                error: Some(ErrorDetail::new(code, message)),
            }),
        }
    }
    Ok(Json(api::BatchAnswer {
        accepted,
        refused: answers.len() - accepted,
        results: answers,
    }))
}

fn parse_hash(text: &str, code: ErrorCode) -> ApiResult<[u8; 32]> {
    from_hex_array(text)
        .map_err(|e| ApiError::new(code, format!("expected 64 hex characters: {e}")))
}

async fn get_tx(
    State(s): State<RpcState>,
    Path(id): Path<String>,
) -> ApiResult<Json<api::TxStatus>> {
    let id = parse_hash(&id, ErrorCode::BadTxId)?;
    let pending = lock_pool(&s)?.contains(&id);
    let tx_id = to_hex(&id);
    if let Some(loc) = s.store.tx_location(&id).map_err(ApiError::internal)? {
        let block_hash = s
            .store
            .block(loc.height)
            .map_err(ApiError::internal)?
            .map(|b| to_hex(&b.hash()));
        return Ok(Json(api::TxStatus {
            tx_id,
            status: api::TxState::Committed,
            height: Some(loc.height),
            index: Some(loc.index),
            block_hash,
        }));
    }
    Ok(Json(api::TxStatus {
        tx_id,
        status: if pending {
            api::TxState::Pending
        } else {
            api::TxState::Unknown
        },
        height: None,
        index: None,
        block_hash: None,
    }))
}

async fn get_account(
    State(s): State<RpcState>,
    Path(address): Path<String>,
    query: Result<Query<api::AccountQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<api::Account>> {
    let address: [u8; 20] = from_hex_array(&address).map_err(|e| {
        ApiError::new(
            ErrorCode::BadAddress,
            format!("address must be 40 hex characters: {e}"),
        )
    })?;
    let Query(q) = query.map_err(|e| ApiError::new(ErrorCode::BadRequest, e.body_text()))?;
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
        let pending_nonce = lock_pool(&s)?.pending_nonce(&address, acct.nonce);
        return Ok(Json(api::Account {
            address: to_hex(&address),
            balance: acct.balance,
            nonce: acct.nonce,
            pending_nonce,
            height: tip.height,
            state_root: to_hex(&tip.state_root),
            exists: proof.is_some().then_some(account.is_some()),
            proof: proof.map(|p| to_hex(&p.to_bytes())),
        }));
    }
    Err(ApiError::new(
        ErrorCode::Busy,
        "the chain moved while reading; retry",
    ))
}

fn commit_json(c: &Commit) -> api::Commit {
    api::Commit {
        height: c.height,
        round: c.round,
        block_hash: to_hex(&c.block_hash),
        signatures: c
            .signatures
            .iter()
            .map(|s| api::CommitSignature {
                validator: to_hex(&s.validator),
                signature: to_hex(&s.signature),
            })
            .collect(),
    }
}

/// The API's view of a block (the same as `GET /v1/blocks/{height}` answers).
pub fn block_json(block: &Block, commit: Option<&Commit>) -> api::Block {
    let h = &block.header;
    api::Block {
        height: h.height,
        hash: to_hex(&block.hash()),
        header: api::Header {
            version: h.version,
            chain_id: h.chain_id.clone(),
            height: h.height,
            round: h.round,
            time_ms: h.time_ms,
            prev_hash: to_hex(&h.prev_hash),
            tx_root: to_hex(&h.tx_root),
            state_root: to_hex(&h.state_root),
            validators_hash: to_hex(&h.validators_hash),
            proposer: to_hex(&h.proposer),
            last_commit_hash: to_hex(&h.last_commit_hash),
            next_validators_hash: h.next_validators_hash.as_ref().map(|x| to_hex(x)),
        },
        tx_ids: block.txs.iter().map(|t| to_hex(&t.id())).collect(),
        commit: commit.map(commit_json),
        last_commit: block.last_commit.as_ref().map(commit_json),
        block: Some(to_hex(&ledger::codec::encode(block))),
    }
}

fn block_at(s: &RpcState, height: u64) -> ApiResult<Json<api::Block>> {
    let block = s
        .store
        .block(height)
        .map_err(ApiError::internal)?
        .ok_or_else(|| {
            ApiError::new(ErrorCode::NotFound, format!("no block at height {height}"))
        })?;
    let commit = s.store.commit(height).map_err(ApiError::internal)?;
    Ok(Json(block_json(&block, commit.as_ref())))
}

async fn latest_block(State(s): State<RpcState>) -> ApiResult<Json<api::Block>> {
    let tip = s.store.tip().map_err(ApiError::internal)?;
    if tip.height == 0 {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            "no block has been committed yet",
        ));
    }
    block_at(&s, tip.height)
}

async fn get_block(
    State(s): State<RpcState>,
    Path(height): Path<String>,
) -> ApiResult<Json<api::Block>> {
    let height: u64 = height.parse().map_err(|_| {
        ApiError::new(
            ErrorCode::BadHeight,
            format!("\"{height}\" is not a block height (an integer >= 1)"),
        )
    })?;
    block_at(&s, height)
}

async fn status(State(s): State<RpcState>) -> ApiResult<Json<api::Status>> {
    let st = s.view.status.borrow().clone();
    let peers = s
        .net
        .peers()
        .await
        .map(|p| p.iter().filter(|x| x.connected).count())
        .unwrap_or(0);
    let mempool = {
        let pool = lock_pool(&s)?;
        api::MempoolSize {
            txs: pool.len() as u64,
            bytes: pool.bytes() as u64,
        }
    };
    let validator = match s.validator {
        Some(address) => {
            read_store(&s, move |g, store| staking::in_next_set(g, store, &address)).await?
        }
        None => false,
    };
    Ok(Json(api::Status {
        chain_id: s.genesis.chain_id.clone(),
        node_id: s.net.local_peer_id().to_string(),
        moniker: s.moniker.clone(),
        height: st.height,
        tip_hash: to_hex(&st.tip_hash),
        state_root: to_hex(&st.state_root),
        round: st.round,
        catching_up: st.catching_up,
        sync_target: st.sync_target,
        validator,
        validator_address: s.validator.map(|a| to_hex(&a)),
        peers: peers as u64,
        mempool,
        min_fee: s.genesis.params.min_fee,
        seconds_since_last_block: st.last_block_at.map(|t| t.elapsed().as_secs_f64()),
        storage_error: s.storage.last(),
        halted: st.halted,
        protocol: st.protocol,
        upgrade: st.upgrade,
        version: Some(env!("CARGO_PKG_VERSION").to_string()),
        max_protocol: Some(ledger::types::MAX_PROTOCOL),
    }))
}

async fn peers(State(s): State<RpcState>) -> ApiResult<Json<api::Peers>> {
    let peers = s.net.peers().await.map_err(ApiError::internal)?;
    let peers = peers
        .iter()
        .map(|p| api::Peer {
            peer_id: p.peer_id.to_string(),
            connected: p.connected,
            addresses: p.addresses.iter().map(|a| a.to_string()).collect(),
            score: p.app_score,
            score_components: api::ScoreComponents {
                application: p.app_score,
                gossipsub: p.gossipsub_score,
            },
            reasons: p.reasons.iter().map(|(r, n)| (r.to_string(), *n)).collect(),
            banned: p.banned,
            ban_remaining_secs: p.ban_remaining.map(|d| d.as_secs_f64()),
            agent: p.software.as_ref().map(|s| s.agent.clone()),
            version: p.software.as_ref().and_then(|s| s.version.clone()),
            max_protocol: p.software.as_ref().and_then(|s| s.max_protocol),
        })
        .collect();
    Ok(Json(api::Peers { peers }))
}

/// Runs a read of the store on a blocking thread (prefix scans can be long).
async fn read_store<T: Send + 'static>(
    s: &RpcState,
    read: impl FnOnce(&Genesis, &RocksStore) -> ApiResult<T> + Send + 'static,
) -> ApiResult<T> {
    let (genesis, store) = (s.genesis.clone(), s.store.clone());
    tokio::task::spawn_blocking(move || read(&genesis, &store))
        .await
        .map_err(ApiError::internal)?
}

async fn validators(
    State(s): State<RpcState>,
    query: Result<Query<api::ValidatorsQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<api::Validators>> {
    let Query(q) = query.map_err(|e| {
        ApiError::new(
            ErrorCode::BadHeight,
            format!(
                "{}; give ?height=H with H a block height (an integer >= 1)",
                e.body_text()
            ),
        )
    })?;
    read_store(&s, move |g, store| staking::validators(g, store, q.height))
        .await
        .map(Json)
}

async fn get_validator(
    State(s): State<RpcState>,
    Path(pubkey): Path<String>,
) -> ApiResult<Json<api::ValidatorInfo>> {
    let pubkey: ledger::types::PublicKeyBytes = from_hex_array(&pubkey).map_err(|e| {
        ApiError::new(
            ErrorCode::BadKey,
            format!(
                "a validator key is 66 hex characters (a 33-byte compressed secp256k1 key): {e}"
            ),
        )
    })?;
    read_store(&s, move |g, store| staking::validator(g, store, &pubkey))
        .await
        .map(Json)
}

async fn get_staking(
    State(s): State<RpcState>,
    Path(address): Path<String>,
) -> ApiResult<Json<api::Staking>> {
    let address: [u8; 20] = from_hex_array(&address).map_err(|e| {
        ApiError::new(
            ErrorCode::BadAddress,
            format!("address must be 40 hex characters: {e}"),
        )
    })?;
    read_store(&s, move |g, store| staking::staking(g, store, &address))
        .await
        .map(Json)
}

async fn evidence(State(s): State<RpcState>) -> ApiResult<Json<api::EvidenceList>> {
    let list = s.view.evidence.read().map_err(|_| {
        ApiError::new(
            ErrorCode::Internal,
            "internal error: the evidence list is unusable after a panic; see the node's log",
        )
    })?;
    let vote = |v: &ledger::types::SignedVote| api::EvidenceVote {
        height: v.vote.height,
        round: v.vote.round,
        kind: format!("{:?}", v.vote.kind).to_lowercase(),
        block_hash: v.vote.block_hash.map(|h| to_hex(&h)),
        signature: to_hex(&v.signature),
    };
    Ok(Json(api::EvidenceList {
        evidence: list
            .iter()
            .map(|e| api::Evidence {
                validator: to_hex(&e.first.validator),
                height: e.first.vote.height,
                round: e.first.vote.round,
                first: vote(&e.first),
                second: vote(&e.second),
            })
            .collect(),
    }))
}

/// The API's form of an event of the engine's.
fn api_event(ev: &NodeEvent) -> api::Event {
    match ev {
        NodeEvent::Block {
            height,
            hash,
            txs,
            time_ms,
        } => api::Event::Block(api::BlockEvent {
            height: *height,
            hash: to_hex(hash),
            txs: *txs as u64,
            time_ms: *time_ms,
        }),
        NodeEvent::Tx { id, height, index } => api::Event::Tx(api::TxEvent {
            tx_id: to_hex(id),
            height: *height,
            index: *index,
        }),
    }
}

async fn events(
    State(s): State<RpcState>,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let permit = s.streams.clone().try_acquire_owned().map_err(|_| {
        ApiError::new(
            ErrorCode::TooManyStreams,
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
            Ok(ev) => api_event(&ev),
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                api::Event::Lagged(api::LaggedEvent { missed })
            }
            Err(broadcast::error::RecvError::Closed) => return None,
        };
        let sse = Event::default().event(ev.name()).data(ev.data());
        Some((Ok(sse), (rx, permit, stop)))
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
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        assert_eq!(e.code, ErrorCode::UnsupportedPayload);
        assert_eq!(
            e.message,
            "payload Bond needs protocol 2; this chain runs protocol 1"
        );
    }

    /// Issue 19 item 3: a mempool lock poisoned by a panic is a bug of this node, answered
    /// `internal` (500); the read routes used to answer from a guess instead (tx `unknown`,
    /// `pending_nonce` = nonce, an empty pool), and admission used to say `mempool_full`.
    #[tokio::test]
    async fn a_poisoned_mempool_is_an_internal_error_on_every_route_that_reads_it() {
        let key = crate::testing::key("poison");
        let genesis = Arc::new(crate::testing::genesis(
            "poison",
            &[&crate::testing::key("v")],
            &[(&key, 1_000)],
        ));
        let dir = tempfile::tempdir().unwrap();
        let s = crate::testing::rpc_state(genesis, dir.path());
        let holder = s.mempool.clone();
        let _ = std::thread::spawn(move || {
            let _guard = holder.lock().unwrap();
            panic!("a bug while holding the pool");
        })
        .join();
        assert!(s.mempool.is_poisoned());

        let internal = |what: &str, r: ApiResult<()>| {
            let e = r.expect_err(what);
            assert_eq!(
                (e.code, e.status()),
                (ErrorCode::Internal, StatusCode::INTERNAL_SERVER_ERROR),
                "{what}: {}",
                e.message
            );
        };
        let tx = get_tx(State(s.clone()), Path("ab".repeat(32))).await;
        internal("GET /v1/txs/{id}", tx.map(drop));
        let query = Ok(Query(api::AccountQuery::default()));
        let acct = get_account(State(s.clone()), Path(to_hex(&key.address())), query).await;
        internal("GET /v1/accounts/{address}", acct.map(drop));
        internal("GET /v1/status", status(State(s.clone())).await.map(drop));
        let stx = key.sign_tx(ledger::types::Tx {
            chain_id: "poison".into(),
            from: key.public_key(),
            nonce: 0,
            fee: 1,
            payload: ledger::types::Payload::Transfer {
                to: [7; 20],
                amount: 5,
            },
        });
        let body = api::SubmitTx {
            tx: to_hex(&ledger::codec::encode(&stx)),
        };
        let submitted = submit_tx(State(s.clone()), Ok(Json(body))).await;
        internal("POST /v1/txs", submitted.map(drop));
    }

    /// Issue 19 item 4: the RPC reference (node/README.md) lists exactly the API's error
    /// codes, each with its status, and the route table names no code with another status.
    #[test]
    fn the_rpc_reference_lists_every_error_code_with_its_status() {
        let readme = include_str!("../../README.md");
        let table: Vec<(String, u16)> = readme
            .lines()
            .skip_while(|l| !l.starts_with("### Error codes"))
            .skip_while(|l| !l.starts_with("| `"))
            .take_while(|l| l.starts_with('|'))
            .map(|l| {
                let cells: Vec<&str> = l.split('|').map(str::trim).collect();
                let status = cells[2].parse().unwrap_or_else(|_| panic!("status of {l}"));
                (cells[1].trim_matches('`').to_string(), status)
            })
            .collect();
        let expected: Vec<(String, u16)> = ErrorCode::ALL
            .iter()
            .map(|c| (c.as_str().to_string(), c.status()))
            .collect();
        assert_eq!(
            table, expected,
            "node/README.md's error code table must list ErrorCode::ALL, in order, with their statuses"
        );

        // In the route table, "409 `duplicate`, `already_committed`; 413 ..." gives each
        // code the status written before it: the one the code has.
        let routes = readme
            .lines()
            .skip_while(|l| !l.starts_with("| route | answer |"))
            .take_while(|l| l.starts_with('|'));
        for line in routes {
            let mut current: Option<u16> = None;
            for word in line.split([' ', ',', ';', '(', ')']) {
                if let Ok(n @ 100..=599) = word.parse::<u16>() {
                    current = Some(n);
                } else if let Some(code) = word
                    .strip_prefix('`')
                    .and_then(|w| w.strip_suffix('`'))
                    .and_then(|w| w.parse::<ErrorCode>().ok())
                {
                    // A code before any status is a field's name (`storage_error`).
                    if let Some(status) = current {
                        assert_eq!(status, code.status(), "`{code}` in: {line}");
                    }
                }
            }
        }
    }
}
