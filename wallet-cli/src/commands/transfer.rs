//! `tally send`: sign a transfer, submit it, and follow it to a committed block; the same
//! path ([`submit`]) signs and follows `tally stake`'s transactions.
//!
//! Nonces: the node's `pending_nonce` counts this sender's transactions already in its
//! mempool, so back-to-back sends through one node never collide. A short-lived local
//! hint (keystore dir, `.nonces/`) covers sends spread over several nodes before gossip
//! catches up; if the node still answers `nonce_too_low` or `duplicate` (another process
//! got in first), the account is fetched again and the send retried once.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ledger::crypto::Keypair;
use ledger::types::{Address, Payload, SignedTx, Tx};
use serde_json::json;
use tokio::sync::mpsc;

use crate::cli::{SendArgs, TxOptions, WaitFor};
use crate::context::{warn, Ctx};
use crate::error::{Error, Kind, Result};
use crate::rpc::{Event, NodeClient};
use tally_api::{ErrorCode, TxState};

/// How long a local nonce hint is trusted. Long enough for gossip between nodes, short
/// enough that a dropped transaction does not leave the key stuck with a gap.
const HINT_TTL: Duration = Duration::from_secs(60);

/// The wallet's signing path: builds and signs a transfer exactly as DESIGN.md section 2
/// defines it.
pub fn build_transfer(
    key: &Keypair,
    chain_id: &str,
    nonce: u64,
    fee: u64,
    to: Address,
    amount: u64,
) -> SignedTx {
    build_tx(key, chain_id, nonce, fee, Payload::Transfer { to, amount })
}

/// Builds and signs a transaction with any payload (the ledger's `Tx`).
pub fn build_tx(key: &Keypair, chain_id: &str, nonce: u64, fee: u64, payload: Payload) -> SignedTx {
    key.sign_tx(Tx {
        chain_id: chain_id.to_string(),
        from: key.public_key(),
        nonce,
        fee,
        payload,
    })
}

/// Opens the node's event stream and forwards events into a bounded channel. Returns
/// once the node has answered, so nothing submitted afterwards can be missed.
pub async fn subscribe(client: &NodeClient, capacity: usize) -> Result<mpsc::Receiver<Event>> {
    let mut stream = client.events().await?;
    let (tx, rx) = mpsc::channel(capacity);
    tokio::spawn(async move {
        while let Ok(Some(ev)) = stream.next().await {
            if tx.send(ev).await.is_err() {
                break;
            }
        }
    });
    Ok(rx)
}

async fn next_event(rx: &mut Option<mpsc::Receiver<Event>>) -> Option<Event> {
    match rx {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}

/// Where a committed transaction landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inclusion {
    pub height: u64,
    pub index: u32,
}

/// Waits for `tx_id` to be committed: event stream first, polling `/v1/txs/{id}` as a
/// fallback (every second while the stream is up, every 250 ms once it is gone).
/// `Ok(None)` on timeout.
pub async fn wait_for_commit(
    client: &NodeClient,
    tx_id: &str,
    mut events: Option<mpsc::Receiver<Event>>,
    timeout: Duration,
) -> Result<Option<Inclusion>> {
    let deadline = tokio::time::Instant::now() + timeout;
    let fast = Duration::from_millis(250);
    let mut every = if events.is_some() {
        Duration::from_secs(1)
    } else {
        fast
    };
    let mut next_poll = tokio::time::Instant::now() + fast;
    let id = parse_id(tx_id)?;
    // If the node went away, say so at the deadline instead of "not committed".
    let mut unreachable: Option<Error> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => {
                return match unreachable {
                    Some(e) => Err(e.context(format!("while waiting for transaction {tx_id} to commit"))),
                    None => Ok(None),
                };
            }
            ev = next_event(&mut events) => match ev {
                Some(Event::Tx(ev)) if ev.tx_id == tx_id => {
                    return Ok(Some(Inclusion { height: ev.height, index: ev.index }));
                }
                Some(_) => {}
                None => {
                    events = None;
                    every = fast;
                }
            },
            _ = tokio::time::sleep_until(next_poll) => {
                next_poll = tokio::time::Instant::now() + every;
                match tokio::time::timeout_at(deadline, client.tx(&id)).await {
                    Err(_) => return Ok(None),
                    Ok(Ok(st)) if st.status == TxState::Committed => {
                        return Ok(Some(Inclusion {
                            height: st.height.unwrap_or(0),
                            index: st.index.unwrap_or(0),
                        }));
                    }
                    Ok(Err(e)) if e.kind == Kind::Unreachable => unreachable = Some(e),
                    // Pending, unknown (not yet gossiped to this node) or a transient
                    // error: keep waiting until the deadline.
                    Ok(_) => unreachable = None,
                }
            }
        }
    }
}

fn parse_id(tx_id: &str) -> Result<[u8; 32]> {
    ledger::hash::from_hex_array::<32>(tx_id)
        .map_err(|e| Error::failure(format!("node returned a malformed tx id {tx_id}: {e}")))
}

/// Per-key "next nonce" hints, one small file per address.
pub struct NonceHints {
    dir: PathBuf,
}

impl NonceHints {
    pub fn new(keys_dir: &Path) -> Self {
        Self {
            dir: keys_dir.join(".nonces"),
        }
    }

    fn path(&self, address: &Address) -> PathBuf {
        self.dir.join(format!("{}.json", hex::encode(address)))
    }

    /// The hinted next nonce, if recent and for this chain.
    pub fn get(&self, address: &Address, chain_id: &str) -> Option<u64> {
        let path = self.path(address);
        let age = std::fs::metadata(&path)
            .ok()?
            .modified()
            .ok()?
            .elapsed()
            .ok()?;
        if age > HINT_TTL {
            return None;
        }
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).ok()?).ok()?;
        if v.get("chain_id")?.as_str()? != chain_id {
            return None;
        }
        v.get("next_nonce")?.as_u64()
    }

    /// Best effort: a hint that cannot be written only costs a possible retry.
    pub fn set(&self, address: &Address, chain_id: &str, next_nonce: u64) {
        if std::fs::create_dir_all(&self.dir).is_err() {
            return;
        }
        let body = json!({ "chain_id": chain_id, "next_nonce": next_nonce }).to_string();
        let path = self.path(address);
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        if std::fs::write(&tmp, body).is_ok() {
            let _ = std::fs::rename(&tmp, &path);
        }
    }
}

struct Stages {
    start: Instant,
    list: Vec<serde_json::Value>,
}

impl Stages {
    fn mark(&mut self, ctx: &Ctx, stage: &str, detail: String) {
        let elapsed = self.start.elapsed();
        ctx.say(format!(
            "{stage:<22} {detail:<58} +{:.3}s",
            elapsed.as_secs_f64()
        ));
        self.list.push(json!({
            "stage": stage,
            "detail": detail,
            "elapsed_ms": elapsed.as_millis() as u64,
        }));
    }
}

pub async fn run(ctx: &Ctx, args: SendArgs) -> Result<()> {
    let (to, to_name) = ctx.resolve_account(&args.to)?;
    let fields = json!({
        "to": hex::encode(to),
        "to_name": to_name,
        "amount": args.amount,
    });
    let submission = Submission {
        tx: &args.tx,
        payload: Payload::Transfer {
            to,
            amount: args.amount,
        },
        fields,
    };
    let result = submit(ctx, submission).await?;
    let tx_id = result["tx_id"].as_str().unwrap_or_default();
    if ctx.json() {
        println!("{result}");
    } else {
        ctx.say(format!("tx {tx_id}"));
    }
    Ok(())
}

/// A transaction to sign, submit and follow: `send` and `stake` differ only in the
/// payload and the fields they report.
pub struct Submission<'a> {
    /// The signing key, fee (`None`: the node's min_fee), wait and timeout.
    pub tx: &'a TxOptions,
    pub payload: Payload,
    /// Added to the result object (a JSON object).
    pub fields: serde_json::Value,
}

/// Signs `sub.payload` with the next nonce, submits it (retrying once if another tx of
/// the key took the nonce) and, with `--wait committed`, waits for its block. Prints the
/// stages in text mode; returns the result object (`tx_id`, `status`, `stages`, ...).
pub async fn submit(ctx: &Ctx, sub: Submission<'_>) -> Result<serde_json::Value> {
    let ks = ctx.keystore()?;
    let client = ctx.client()?;
    let (key, info) = ctx.unlock(&ks, &sub.tx.from)?;
    let mut stages = Stages {
        start: Instant::now(),
        list: Vec::new(),
    };
    let status = client.status().await?;
    let fee = sub.tx.fee.unwrap_or(status.min_fee);
    if fee < status.min_fee {
        warn(&format!(
            "fee {fee} is below the node's min_fee {}; the node will likely refuse it",
            status.min_fee
        ));
    }
    let address = key.address();
    let hints = NonceHints::new(ks.dir());
    let account = client.account(&address, false).await?;
    let node_nonce = account.next_nonce();
    let mut nonce = match hints.get(&address, &status.chain_id) {
        Some(h) if h > node_nonce => h,
        _ => node_nonce,
    };

    // Subscribe before submitting so the commit event cannot slip by.
    let events = if sub.tx.wait == WaitFor::Committed {
        match subscribe(&client, 1024).await {
            Ok(rx) => Some(rx),
            Err(e) if e.kind == Kind::Unreachable => return Err(e),
            Err(_) => None,
        }
    } else {
        None
    };

    let mut attempt = 0;
    let (stx, tx_id) = loop {
        let stx = build_tx(&key, &status.chain_id, nonce, fee, sub.payload.clone());
        let local_id = hex::encode(stx.id());
        stages.mark(
            ctx,
            "signed",
            format!("nonce {nonce}, fee {fee}, tx {}", &local_id[..16]),
        );
        match client.submit(&stx).await {
            Ok(id) => {
                let id = id.to_ascii_lowercase();
                if id != local_id {
                    warn(&format!(
                        "the node computed tx id {id}, the wallet {local_id}; the node and wallet disagree on the format"
                    ));
                }
                break (stx, local_id);
            }
            // Another send from this key got the nonce first (`duplicate`: it even signed
            // the very same bytes, since RFC 6979 signatures are deterministic).
            Err(e)
                if attempt == 0
                    && e.is_node_code(&[
                        ErrorCode::NonceTooLow,
                        ErrorCode::Duplicate,
                        ErrorCode::AlreadyCommitted,
                    ]) =>
            {
                let fresh = client.account(&address, false).await?;
                nonce = fresh.next_nonce().max(nonce + 1);
            }
            Err(e)
                if attempt == 0
                    && nonce > node_nonce
                    && e.is_node_code(&[ErrorCode::NonceTooHigh, ErrorCode::NonceGap]) =>
            {
                // The local hint ran ahead of the node (a dropped tx): trust the node.
                nonce = client.account(&address, false).await?.next_nonce();
            }
            Err(e) => return Err(e),
        }
        attempt += 1;
    };
    hints.set(&address, &status.chain_id, nonce + 1);
    stages.mark(ctx, "accepted by node", client.url().to_string());

    let mut result = json!({
        "tx_id": tx_id,
        "from": hex::encode(address),
        "from_name": info.name,
        "fee": fee,
        "nonce": stx.tx.nonce,
        "chain_id": status.chain_id,
        "node": client.url(),
        "status": "accepted",
    });
    if let (Some(out), Some(fields)) = (result.as_object_mut(), sub.fields.as_object()) {
        out.extend(fields.clone());
    }

    if sub.tx.wait == WaitFor::Committed {
        let Some(inc) = wait_for_commit(&client, &tx_id, events, sub.tx.timeout).await? else {
            return Err(Error::failure(format!(
                "transaction {tx_id} was accepted but not seen committed within {}s; check later with 'tally tx {tx_id}' or raise --timeout",
                sub.tx.timeout.as_secs_f64()
            )));
        };
        stages.mark(
            ctx,
            &format!("included in block {}", inc.height),
            format!("index {}", inc.index),
        );
        let block_hash = match client.tx(&parse_id(&tx_id)?).await {
            Ok(st) => st.block_hash,
            Err(_) => None,
        };
        stages.mark(
            ctx,
            "final",
            format!(
                "block {} committed (Tendermint: committed is final)",
                block_hash
                    .as_deref()
                    .map_or_else(|| "?".to_string(), |h| h.chars().take(16).collect())
            ),
        );
        result["status"] = json!("committed");
        result["height"] = json!(inc.height);
        result["index"] = json!(inc.index);
        result["block_hash"] = json!(block_hash);
    }
    result["stages"] = json!(stages.list);
    Ok(result)
}
