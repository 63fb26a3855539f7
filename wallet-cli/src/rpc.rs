//! Client for the node's JSON-over-HTTP API (DESIGN.md section 7). The bodies are the
//! `tally-api` crate's types, which ignore unknown fields so the node can add more.

use std::time::Duration;

use ledger::types::SignedTx;
use serde::de::DeserializeOwned;
use tally_api::{Code, ErrorBody, ErrorCode};

use crate::error::{Error, Result};

pub use tally_api::Event;

pub const DEFAULT_NODE: &str = "http://127.0.0.1:26657";
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an idle connection is kept for reuse: below the node's header-read timeout.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone)]
pub struct NodeClient {
    base: String,
    http: reqwest::Client,
}

impl NodeClient {
    pub fn new(url: &str) -> Result<Self> {
        let mut base = url.trim().trim_end_matches('/').to_string();
        // "127.0.0.1:26657" is what people paste from tallyd's log: assume plain HTTP.
        if !base.contains("://") && !base.is_empty() {
            base = format!("http://{base}");
        }
        if base.starts_with("https://") {
            return Err(Error::usage(format!(
                "node URL {base} uses https, which this build of tally does not support; use http:// (the node API is meant for loopback or a private network)"
            )));
        }
        if !base.starts_with("http://") || base.len() <= "http://".len() {
            return Err(Error::usage(format!(
                "\"{url}\" is not a node URL; use e.g. --node http://127.0.0.1:26657"
            )));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .pool_max_idle_per_host(64)
            // The node closes a kept-alive connection that stays idle for its header-read
            // timeout (5 s by default); drop ours first so a request never races that close.
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .build()
            .map_err(|e| Error::failure(format!("cannot set up the HTTP client: {e}")))?;
        Ok(Self { base, http })
    }

    pub fn url(&self) -> &str {
        &self.base
    }

    pub async fn status(&self) -> Result<tally_api::Status> {
        self.get("/v1/status").await
    }

    pub async fn account(&self, address: &[u8; 20], proof: bool) -> Result<tally_api::Account> {
        let q = if proof { "?proof=true" } else { "" };
        self.get(&format!("/v1/accounts/{}{q}", hex::encode(address)))
            .await
    }

    pub async fn tx(&self, id: &[u8; 32]) -> Result<tally_api::TxStatus> {
        self.get(&format!("/v1/txs/{}", hex::encode(id))).await
    }

    /// `None` = latest.
    pub async fn block(&self, height: Option<u64>) -> Result<tally_api::Block> {
        match height {
            Some(h) => self.get(&format!("/v1/blocks/{h}")).await,
            None => self.get("/v1/blocks/latest").await,
        }
    }

    /// `None`: the next height's set.
    pub async fn validators(&self, height: Option<u64>) -> Result<tally_api::Validators> {
        match height {
            Some(h) => self.get(&format!("/v1/validators?height={h}")).await,
            None => self.get("/v1/validators").await,
        }
    }

    pub async fn validator(&self, key: &[u8; 33]) -> Result<tally_api::ValidatorInfo> {
        self.get(&format!("/v1/validators/{}", hex::encode(key)))
            .await
    }

    pub async fn staking(&self, address: &[u8; 20]) -> Result<tally_api::Staking> {
        self.get(&format!("/v1/staking/{}", hex::encode(address)))
            .await
    }

    pub async fn get_json(&self, path: &str) -> Result<serde_json::Value> {
        self.get(path).await
    }

    /// Submits a signed transaction; returns the id the node computed.
    pub async fn submit(&self, stx: &SignedTx) -> Result<String> {
        let body = tally_api::SubmitTx {
            tx: hex::encode(ledger::codec::encode(stx)),
        };
        let req = self
            .http
            .post(format!("{}/v1/txs", self.base))
            .timeout(REQUEST_TIMEOUT)
            .json(&body);
        let resp = req.send().await.map_err(|e| self.transport_error(&e))?;
        let r: tally_api::Submitted = self.read(resp).await?;
        Ok(r.tx_id)
    }

    /// Submits up to 1,024 signed transactions in one `POST /v1/txs/batch` (raw borsh);
    /// each entry is the tx id the node computed, or the error code it refused the tx with.
    pub async fn submit_batch(
        &self,
        txs: &[SignedTx],
    ) -> Result<Vec<std::result::Result<String, String>>> {
        let req = self
            .http
            .post(format!("{}/v1/txs/batch", self.base))
            .timeout(REQUEST_TIMEOUT)
            .header("content-type", "application/octet-stream")
            .body(ledger::codec::encode(&txs));
        let resp = req.send().await.map_err(|e| self.transport_error(&e))?;
        let r: tally_api::BatchAnswer = self.read(resp).await?;
        Ok(r.results
            .into_iter()
            .map(|e| match (e.tx_id, e.error) {
                (Some(id), None) => Ok(id),
                (_, Some(err)) => Err(err.code.to_string()),
                (None, None) => Err("no_tx_id".to_string()),
            })
            .collect())
    }

    /// Opens the server-sent event stream. Returns once the node has answered, so events
    /// for anything submitted afterwards are not missed.
    pub async fn events(&self) -> Result<EventStream> {
        let resp = self
            .http
            .get(format!("{}/v1/events", self.base))
            .header("accept", "text/event-stream")
            .send()
            .await
            .map_err(|e| self.transport_error(&e))?;
        if !resp.status().is_success() {
            return Err(self.error_from_response(resp).await);
        }
        Ok(EventStream {
            resp,
            parser: SseParser::default(),
            queue: std::collections::VecDeque::new(),
        })
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .timeout(REQUEST_TIMEOUT)
            .send()
            .await
            .map_err(|e| self.transport_error(&e))?;
        self.read(resp).await
    }

    async fn read<T: DeserializeOwned>(&self, resp: reqwest::Response) -> Result<T> {
        if !resp.status().is_success() {
            return Err(self.error_from_response(resp).await);
        }
        let bytes = resp.bytes().await.map_err(|e| self.transport_error(&e))?;
        serde_json::from_slice(&bytes).map_err(|e| {
            Error::failure(format!(
                "node at {} sent an answer this tally does not understand ({e}); is it a tallyd of a compatible version?",
                self.base
            ))
        })
    }

    async fn error_from_response(&self, resp: reqwest::Response) -> Error {
        let status = resp.status();
        let bytes = resp.bytes().await.unwrap_or_default();
        match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(body) => node_error(status.as_u16(), &body.error.code, &body.error.message),
            Err(_) => {
                let text: String = String::from_utf8_lossy(&bytes).chars().take(200).collect();
                Error::failure(format!(
                    "node at {} answered HTTP {status} without an error code: {text}",
                    self.base
                ))
            }
        }
    }

    fn transport_error(&self, e: &reqwest::Error) -> Error {
        let cause = root_cause(e);
        if e.is_connect() {
            Error::unreachable(format!(
                "cannot reach node at {} ({cause}); is tallyd running? set --node or TALLY_NODE",
                self.base
            ))
        } else if e.is_timeout() {
            Error::unreachable(format!(
                "node at {} did not answer in time ({cause}); is it overloaded or stuck? try again or use another --node",
                self.base
            ))
        } else {
            Error::unreachable(format!(
                "lost the connection to node at {} ({cause}); check that tallyd is running and try again",
                self.base
            ))
        }
    }
}

/// Maps the node's `{"error": {"code", "message"}}` to a wallet error with a hint: a
/// refusal of the transaction itself is exit code 4, anything else (also a code this
/// wallet does not know, from a newer node) a failure.
pub fn node_error(status: u16, code: &Code, message: &str) -> Error {
    let hint = match code.known() {
        Some(ErrorCode::InsufficientFunds) => "; fund the account or lower --amount / --fee",
        Some(ErrorCode::FeeTooLow) => "; raise --fee (see min_fee in 'tally status')",
        Some(ErrorCode::NonceGap) => {
            "; too many pending transactions from this key (or an earlier nonce is missing): wait for them to commit and retry"
        }
        Some(ErrorCode::NonceTooLow | ErrorCode::NonceTooHigh | ErrorCode::AlreadyCommitted) => {
            "; another transaction from this key got in first: run the command again"
        }
        Some(ErrorCode::WrongChain) => "; this node runs another chain: check --node",
        Some(ErrorCode::MempoolFull) => "; the node is busy: retry in a moment",
        Some(ErrorCode::SenderLimit) => {
            "; too many pending transactions from this key: wait for some to commit"
        }
        Some(ErrorCode::ReplacementUnderpriced) => {
            "; a pending transaction has this nonce: raise --fee to replace it"
        }
        Some(ErrorCode::Duplicate) => "; this exact transaction was already submitted",
        Some(ErrorCode::UnsupportedPayload) => {
            "; staking needs a protocol-2 chain (params.protocol_version 2 in its genesis): this chain's validator set is fixed in its genesis"
        }
        Some(ErrorCode::BadValidatorKey) => {
            "; --validator must be a validator's 33-byte compressed consensus key (see 'tally validators')"
        }
        Some(ErrorCode::NoBond) => {
            "; this key has no bond to that validator: see 'tally staking <key>' for its bonds"
        }
        Some(ErrorCode::NotOperator) => {
            "; only an operator (a key with a bond to the validator) may unjail it: use --from with that key"
        }
        Some(ErrorCode::NotJailed) => "; the validator is not jailed: nothing to do",
        Some(ErrorCode::StillJailed) => {
            "; wait until its jail time is over (jailed until in 'tally validator <key>') and retry"
        }
        _ => "",
    };
    let text = if message.is_empty() {
        code.as_str()
    } else {
        message
    };
    if code.known().is_some_and(ErrorCode::is_tx_rejection) {
        Error::rejected(
            code.clone(),
            format!("node rejected the transaction: {text} ({code}){hint}"),
        )
    } else {
        Error::failure(format!("node answered HTTP {status} {code}: {text}"))
            .with_code(code.clone())
    }
}

/// The innermost error message, without "(os error N)" noise, for one-line messages.
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur: &(dyn std::error::Error + 'static) = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    let text = cur.to_string();
    let text = match text.find(" (os error") {
        Some(i) => text[..i].to_string(),
        None => text,
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => text,
    }
}

/// Incremental text/event-stream parser (the subset of the WHATWG rules a node sends:
/// `event:`, `data:` (joined by newlines), comments, blank-line dispatch, CRLF or LF).
#[derive(Default)]
pub struct SseParser {
    buf: Vec<u8>,
    event: String,
    data: Vec<String>,
}

impl SseParser {
    /// Feeds bytes; returns the (event name, data) pairs completed by them.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<(String, String)> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
            let mut line: Vec<u8> = self.buf.drain(..=pos).collect();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            let line = String::from_utf8_lossy(&line).into_owned();
            if line.is_empty() {
                if !self.data.is_empty() || !self.event.is_empty() {
                    let name = if self.event.is_empty() {
                        "message".to_string()
                    } else {
                        std::mem::take(&mut self.event)
                    };
                    out.push((name, self.data.join("\n")));
                }
                self.event.clear();
                self.data.clear();
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = match line.find(':') {
                Some(i) => {
                    let v = &line[i + 1..];
                    (&line[..i], v.strip_prefix(' ').unwrap_or(v))
                }
                None => (line.as_str(), ""),
            };
            match field {
                "event" => self.event = value.to_string(),
                "data" => self.data.push(value.to_string()),
                _ => {}
            }
        }
        // A line longer than 1 MiB is not something a node sends; drop it instead of
        // growing without bound.
        if self.buf.len() > 1 << 20 {
            self.buf.clear();
        }
        out
    }
}

pub struct EventStream {
    resp: reqwest::Response,
    parser: SseParser,
    queue: std::collections::VecDeque<Event>,
}

impl EventStream {
    /// The next event; `Ok(None)` when the node closed the stream.
    pub async fn next(&mut self) -> Result<Option<Event>> {
        loop {
            if let Some(e) = self.queue.pop_front() {
                return Ok(Some(e));
            }
            let chunk = self.resp.chunk().await.map_err(|e| {
                Error::unreachable(format!(
                    "event stream from the node broke ({})",
                    root_cause(&e)
                ))
            })?;
            let Some(chunk) = chunk else {
                return Ok(None);
            };
            for (name, data) in self.parser.push(&chunk) {
                // Unknown kinds (a newer node's) are skipped.
                if let Some(mut ev) = Event::parse(&name, &data) {
                    if let Event::Tx(tx) = &mut ev {
                        tx.tx_id.make_ascii_lowercase();
                    }
                    self.queue.push_back(ev);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_api::{BlockEvent, TxEvent};

    #[test]
    fn sse_parser_handles_split_chunks_and_crlf() {
        let mut p = SseParser::default();
        assert!(p
            .push(b": keep-alive\n\nevent: tx\r\ndata: {\"tx_id\":\"ab\",")
            .is_empty());
        let got = p.push(b"\"height\":3,\"index\":1}\r\n\r\nevent: block\ndata: {\"height\":3,\"hash\":\"h\",\"txs\":1,\"time_ms\":5}\n\n");
        assert_eq!(got.len(), 2);
        assert_eq!(
            Event::parse(&got[0].0, &got[0].1),
            Some(Event::Tx(TxEvent {
                tx_id: "ab".into(),
                height: 3,
                index: 1
            }))
        );
        assert_eq!(
            Event::parse(&got[1].0, &got[1].1),
            Some(Event::Block(BlockEvent {
                height: 3,
                hash: "h".into(),
                txs: 1,
                time_ms: 5,
            }))
        );
        assert_eq!(Event::parse("other", "{}"), None);
    }

    #[test]
    fn responses_ignore_unknown_fields() {
        let s: tally_api::Status = serde_json::from_str(
            r#"{"chain_id":"c","height":4,"min_fee":2,"new_field":[1,2],"mempool":{"txs":1,"bytes":2,"x":0}}"#,
        )
        .unwrap();
        assert_eq!((s.height, s.min_fee, s.mempool.txs), (4, 2, 1));
        let a: tally_api::Account = serde_json::from_str(
            r#"{"address":"aa","balance":5,"nonce":2,"pending_nonce":4,"height":9,"state_root":"00","extra":true}"#,
        )
        .unwrap();
        assert_eq!(a.next_nonce(), 4);
        // An older node without pending_nonce: the committed nonce is the best guess.
        let a: tally_api::Account =
            serde_json::from_str(r#"{"address":"aa","balance":5,"nonce":2,"height":9}"#).unwrap();
        assert_eq!(a.next_nonce(), 2);
    }

    #[test]
    fn node_errors_map_to_exit_codes() {
        let e = node_error(
            422,
            &ErrorCode::InsufficientFunds.into(),
            "balance 5 is less than 11",
        );
        assert_eq!(e.kind, crate::error::Kind::Rejected);
        assert!(e.message().contains("insufficient_funds"));
        let e = node_error(404, &ErrorCode::NotFound.into(), "no such block");
        assert_eq!(e.kind, crate::error::Kind::Failure);
        assert!(NodeClient::new("https://x").is_err());
        assert!(NodeClient::new("ftp://127.0.0.1:1").is_err());
        assert!(NodeClient::new("").is_err());
        assert_eq!(
            NodeClient::new("127.0.0.1:1/").unwrap().url(),
            "http://127.0.0.1:1"
        );
    }

    /// A code a newer node added: not a rejection this wallet could explain, so a failure
    /// (exit 1) that still shows the node's code and message.
    #[test]
    fn an_unknown_code_is_a_failure_with_the_nodes_words() {
        let body: ErrorBody =
            serde_json::from_str(r#"{"error":{"code":"quota_exceeded","message":"slow down"}}"#)
                .unwrap();
        let e = node_error(429, &body.error.code, &body.error.message);
        assert_eq!(e.kind, crate::error::Kind::Failure);
        assert_eq!(e.code, Some(Code::Unknown("quota_exceeded".into())));
        assert!(e.message().contains("quota_exceeded"), "{}", e.message());
        assert!(e.message().contains("slow down"), "{}", e.message());
    }

    /// The staking refusals are rejections (exit 4) that keep the node's words and add
    /// what to do.
    #[test]
    fn staking_refusals_say_what_to_do() {
        let cases = [
            (
                ErrorCode::UnsupportedPayload,
                "payload Bond needs protocol 2; this chain runs protocol 1",
                "staking needs a protocol-2 chain",
            ),
            (
                ErrorCode::BadValidatorKey,
                "validator 04ab is not a compressed secp256k1 key",
                "33-byte compressed consensus key",
            ),
            (
                ErrorCode::NoBond,
                "the sender has no bond to validator 02ab; nothing to unbond",
                "'tally staking <key>'",
            ),
            (
                ErrorCode::NotOperator,
                "the sender has no bond to validator 02ab; only its operators may unjail it",
                "use --from with that key",
            ),
            (
                ErrorCode::NotJailed,
                "validator 02ab is not jailed",
                "nothing to do",
            ),
            (
                ErrorCode::StillJailed,
                "validator 02ab is jailed until height 9; this block is 7",
                "wait until its jail time is over",
            ),
        ];
        for (code, message, hint) in cases {
            let e = node_error(code.status(), &code.into(), message);
            assert_eq!(e.kind, crate::error::Kind::Rejected, "{code}");
            assert_eq!(e.code, Some(code.into()));
            for part in [message, hint, code.as_str()] {
                assert!(e.message().contains(part), "{part:?} in: {}", e.message());
            }
        }
    }

    /// Every code the node refuses a transaction with is exit code 4.
    #[test]
    fn every_tx_refusal_is_a_rejection() {
        for &c in ErrorCode::ALL {
            let e = node_error(c.status(), &c.into(), "m");
            let rejected = e.kind == crate::error::Kind::Rejected;
            assert_eq!(rejected, c.is_tx_rejection(), "{c}");
        }
        assert!(ErrorCode::MempoolFull.is_tx_rejection());
        assert!(!ErrorCode::Internal.is_tx_rejection());
    }
}
