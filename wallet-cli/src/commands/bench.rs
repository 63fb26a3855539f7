//! `tally bench`: an open-loop load generator.
//!
//! Data flow: the pacing loop (this task) releases one submission per 1/rate seconds,
//! each a spawned task holding a semaphore permit (bounded concurrency). A task locks its
//! account (so one account's nonces reach the node in order), signs, records the submit
//! instant under the tx id, and posts to the account's node (accounts are pinned to
//! nodes round-robin, so nonces never race across nodes). One listener task reads the
//! first node's event stream; a `tx` event for a tracked id closes its latency sample.
//! After the run, a drain phase waits for every accepted tx to be seen committed, then
//! asks the node about the stragglers, and lists those still not committed.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use ledger::crypto::Keypair;
use ledger::types::{Address, SignedTx};
use serde_json::json;
use tally_api::TxState;
use tokio::sync::Semaphore;

use crate::cli::BenchArgs;
use crate::commands::transfer::{build_transfer, subscribe, wait_for_commit};
use crate::context::{warn, Ctx};
use crate::error::{Error, Result};
use crate::rpc::{Event, NodeClient};
use tally_api::{ErrorCode, TxEvent};

/// Most not-committed tx ids listed in the report.
const MAX_LISTED: usize = 20;
/// The status reported for a straggler not checked within the check deadline.
const NOT_CHECKED: &str = "not checked";
/// Most txs in one `POST /v1/txs/batch` (the node's limit).
const MAX_BATCH: usize = 1024;

struct BenchAccount {
    key: Keypair,
    to: Address,
    node: usize,
    /// Next nonce; `None` after a rejection, so it is fetched from the node again.
    next_nonce: tokio::sync::Mutex<Option<u64>>,
}

#[derive(Default)]
struct Stats {
    submitted: u64,
    accepted: u64,
    committed: u64,
    committed_by_poll: u64,
    rejected: BTreeMap<String, u64>,
    /// Submitted, not yet seen committed: id -> submit instant.
    in_flight: HashMap<String, Instant>,
    accepted_ids: HashSet<String>,
    committed_ids: HashSet<String>,
    first_submit: Option<Instant>,
    last_commit: Option<Instant>,
    blocks: u64,
}

impl Stats {
    /// `ids` go out now: their latency samples start here.
    fn submitting(&mut self, ids: &[String]) {
        let now = Instant::now();
        self.submitted += ids.len() as u64;
        self.first_submit.get_or_insert(now);
        for id in ids {
            self.in_flight.insert(id.clone(), now);
        }
    }

    /// The node's answer for one submitted tx: accepted, or refused for `Err(reason)`.
    fn answered(&mut self, id: String, answer: std::result::Result<(), String>) {
        match answer {
            Ok(()) => {
                self.accepted += 1;
                self.accepted_ids.insert(id);
            }
            Err(why) => {
                self.in_flight.remove(&id);
                *self.rejected.entry(why).or_default() += 1;
            }
        }
    }
}

struct Shared {
    stats: Mutex<Stats>,
    latency_us: Mutex<Histogram<u64>>,
}

impl Shared {
    fn stats(&self) -> std::sync::MutexGuard<'_, Stats> {
        // A panic in another task cannot leave Stats half-updated in a harmful way: every
        // update is a few independent counters.
        self.stats.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn on_event(&self, ev: Event) {
        let now = Instant::now();
        match ev {
            Event::Tx(TxEvent { tx_id, .. }) => {
                let mut s = self.stats();
                if let Some(at) = s.in_flight.remove(&tx_id) {
                    s.committed += 1;
                    s.last_commit = Some(now);
                    s.committed_ids.insert(tx_id);
                    drop(s);
                    let us = now.duration_since(at).as_micros().max(1) as u64;
                    let mut h = self.latency_us.lock().unwrap_or_else(|e| e.into_inner());
                    // Out-of-range samples saturate instead of being lost.
                    h.saturating_record(us);
                }
            }
            Event::Block(_) => self.stats().blocks += 1,
            // Commits it missed are found by polling at the end of the run.
            Event::Lagged(_) => {}
        }
    }
}

pub async fn run(ctx: &Ctx, args: BenchArgs) -> Result<()> {
    if !(args.rate >= 0.01 && args.rate <= 1_000_000.0) {
        return Err(Error::usage(
            "--rate must be between 0.01 and 1000000 transactions per second",
        ));
    }
    if args.concurrency == 0 || args.concurrency > 10_000 {
        return Err(Error::usage("--concurrency must be between 1 and 10000"));
    }
    if args.batch > MAX_BATCH {
        return Err(Error::usage(format!(
            "--batch must be between 0 (one request per tx) and {MAX_BATCH}"
        )));
    }
    let clients = ctx.clients()?;
    let primary = clients[0].clone();
    let status = primary.status().await?;
    let fee = args.fee.unwrap_or(status.min_fee);
    let chain_id = status.chain_id.clone();

    let keys = if let Some(funder) = &args.fund_from {
        if args.accounts == 0 || args.accounts > 100_000 {
            return Err(Error::usage("--accounts must be between 1 and 100000"));
        }
        fund_accounts(ctx, &args, &primary, funder, &chain_id, fee).await?
    } else {
        keystore_keys(ctx, &args)?
    };
    let n = keys.len();
    let addresses: Vec<Address> = keys.iter().map(Keypair::address).collect();
    let accounts: Vec<Arc<BenchAccount>> = keys
        .into_iter()
        .enumerate()
        .map(|(i, key)| {
            Arc::new(BenchAccount {
                key,
                // A ring: balances circulate instead of draining one way.
                to: addresses[(i + 1) % n],
                node: i % clients.len(),
                next_nonce: tokio::sync::Mutex::new(None),
            })
        })
        .collect();

    let shared = Arc::new(Shared {
        stats: Mutex::new(Stats::default()),
        latency_us: Mutex::new(
            Histogram::new_with_bounds(1, 3_600_000_000, 3)
                .map_err(|e| Error::failure(format!("histogram: {e}")))?,
        ),
    });

    // Commit tracking from the first node's event stream, reconnecting if it drops.
    let listener = {
        let shared = shared.clone();
        let client = primary.clone();
        let mut rx = subscribe(&client, 65_536).await.map_err(|e| {
            e.context("bench needs the node's event stream (/v1/events) to measure commit latency")
        })?;
        tokio::spawn(async move {
            loop {
                while let Some(ev) = rx.recv().await {
                    shared.on_event(ev);
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                match subscribe(&client, 65_536).await {
                    Ok(r) => rx = r,
                    Err(_) => continue,
                }
            }
        })
    };

    let target = (args.rate * args.duration.as_secs_f64()).ceil() as u64;
    let bar = if ctx.json() || !std::io::stdout().is_terminal() {
        ProgressBar::hidden()
    } else {
        let b = ProgressBar::new(target);
        if let Ok(style) = ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] {pos}/{len} submitted  {msg}",
        ) {
            b.set_style(style.progress_chars("=> "));
        }
        b
    };
    if !ctx.json() {
        ctx.say(format!(
            "bench: {n} accounts, {} node(s), {:.0} tx/s for {:.1}s (target {target} txs), concurrency {}, amount {}, fee {fee}{}",
            clients.len(),
            args.rate,
            args.duration.as_secs_f64(),
            args.concurrency,
            args.amount,
            if args.batch > 0 {
                format!(", batches of {} (pre-signed)", args.batch)
            } else {
                String::new()
            }
        ));
    }

    // With --batch, every tx of the run is signed now, outside the measured window, in the
    // order the pacing loop releases them (account i % n, its nonces in turn).
    let mut presigned: Option<VecDeque<(usize, SignedTx)>> = None;
    if args.batch > 0 {
        if !ctx.json() {
            ctx.say(format!("bench: signing {target} transfers before the run"));
        }
        let mut next = Vec::with_capacity(n);
        for a in &accounts {
            next.push(
                clients[a.node]
                    .account(&a.key.address(), false)
                    .await?
                    .next_nonce(),
            );
        }
        let mut q = VecDeque::with_capacity(usize::try_from(target).unwrap_or(0));
        for j in 0..target {
            let i = (j % n as u64) as usize;
            let a = &accounts[i];
            q.push_back((
                a.node,
                build_transfer(&a.key, &chain_id, next[i], fee, a.to, args.amount),
            ));
            next[i] += 1;
        }
        presigned = Some(q);
    }

    // Pacing loop: open loop at the target rate, bounded by the semaphore.
    let sem = Arc::new(Semaphore::new(args.concurrency));
    let clients = Arc::new(clients);
    let start = Instant::now();
    let end = start + args.duration;
    let mut sent: u64 = 0;
    let mut last_draw = start;
    'pace: while Instant::now() < end && sent < target {
        let due = ((start.elapsed().as_secs_f64() * args.rate) as u64 + 1).min(target);
        while sent < due {
            if let Some(q) = presigned.as_mut() {
                // Whole batches only, except the run's last one.
                let ready = due - sent;
                if ready < args.batch as u64 && due < target {
                    break;
                }
                let k = (ready.min(args.batch as u64) as usize).min(q.len());
                let mut groups: BTreeMap<usize, Vec<SignedTx>> = BTreeMap::new();
                for (node, tx) in q.drain(..k) {
                    groups.entry(node).or_default().push(tx);
                }
                for (node, txs) in groups {
                    let permit = tokio::select! {
                        p = sem.clone().acquire_owned() => match p {
                            Ok(p) => p,
                            Err(_) => break 'pace,
                        },
                        _ = tokio::time::sleep_until(end.into()) => break 'pace,
                    };
                    let (shared, clients) = (shared.clone(), clients.clone());
                    tokio::spawn(async move {
                        submit_group(&clients[node], txs, &shared).await;
                        drop(permit);
                    });
                }
                sent += k as u64;
                if k == 0 {
                    break 'pace;
                }
                continue;
            }
            let permit = tokio::select! {
                p = sem.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break 'pace,
                },
                _ = tokio::time::sleep_until(end.into()) => break 'pace,
            };
            let acct = accounts[(sent % n as u64) as usize].clone();
            let shared = shared.clone();
            let clients = clients.clone();
            let chain_id = chain_id.clone();
            let amount = args.amount;
            tokio::spawn(async move {
                submit_one(&acct, &clients[acct.node], &shared, &chain_id, amount, fee).await;
                drop(permit);
            });
            sent += 1;
        }
        if last_draw.elapsed() >= Duration::from_millis(200) {
            last_draw = Instant::now();
            draw(&bar, sent, &shared);
        }
        let next = start + Duration::from_secs_f64((sent as f64) / args.rate);
        let now = Instant::now();
        let wait = next
            .saturating_duration_since(now)
            .max(Duration::from_millis(1));
        tokio::time::sleep(wait.min(Duration::from_millis(50))).await;
    }
    let submit_elapsed = start.elapsed();

    // Drain: let in-flight submissions finish, then wait for commits.
    let drain_deadline = Instant::now() + args.drain_timeout;
    let all_permits = u32::try_from(args.concurrency).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout_at(drain_deadline.into(), sem.acquire_many(all_permits)).await;
    loop {
        let outstanding = {
            let s = shared.stats();
            s.accepted_ids
                .iter()
                .filter(|id| !s.committed_ids.contains(*id))
                .count()
        };
        draw(&bar, sent, &shared);
        if outstanding == 0 || Instant::now() >= drain_deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    listener.abort();
    bar.finish_and_clear();

    // Stragglers: the event stream may have dropped; ask the node before calling a tx lost.
    let stragglers: Vec<String> = {
        let s = shared.stats();
        let mut v: Vec<String> = s
            .accepted_ids
            .iter()
            .filter(|id| !s.committed_ids.contains(*id))
            .cloned()
            .collect();
        v.sort();
        v
    };
    let mut not_committed = Vec::new();
    // Bounded in time too: past this, unchecked stragglers are reported as such.
    let check_deadline = Instant::now() + Duration::from_secs(15);
    for chunk in stragglers.chunks(16) {
        if Instant::now() >= check_deadline {
            not_committed.extend(chunk.iter().map(|id| (id.clone(), NOT_CHECKED.to_string())));
            continue;
        }
        let mut checks = Vec::new();
        for id in chunk {
            let clients = clients.clone();
            let id = id.clone();
            checks.push(tokio::spawn(async move {
                // A tx one node does not know may still wait in another's mempool (gossip
                // behind under load): it is unknown only if no node knows it.
                let mut status = "malformed id".to_string();
                if let Ok(raw) = ledger::hash::from_hex_array::<32>(&id) {
                    for client in clients.iter() {
                        status = match tokio::time::timeout(Duration::from_secs(5), client.tx(&raw))
                            .await
                        {
                            Ok(Ok(st)) => st.status.as_str().to_string(),
                            Ok(Err(e)) => format!("error: {e}"),
                            Err(_) => "error: timeout".to_string(),
                        };
                        if status == TxState::Committed.as_str()
                            || status == TxState::Pending.as_str()
                        {
                            break;
                        }
                    }
                }
                (id, status)
            }));
        }
        for c in checks {
            if let Ok((id, status)) = c.await {
                if status == "committed" {
                    let mut s = shared.stats();
                    s.committed += 1;
                    s.committed_by_poll += 1;
                    s.in_flight.remove(&id);
                } else {
                    not_committed.push((id, status));
                }
            }
        }
    }

    report(ctx, &args, &shared, n, sent, submit_elapsed, not_committed)
}

/// `--batch`: one `POST /v1/txs/batch` of pre-signed txs, each counted on its own.
async fn submit_group(client: &NodeClient, txs: Vec<SignedTx>, shared: &Shared) {
    let ids: Vec<String> = txs.iter().map(|t| hex::encode(t.id())).collect();
    shared.stats().submitting(&ids);
    let answer = client.submit_batch(&txs).await;
    let mut s = shared.stats();
    match answer {
        Ok(results) => {
            for (id, r) in ids.into_iter().zip(results) {
                s.answered(id, r.map(|_| ()));
            }
        }
        Err(e) => {
            let why = reason(&e);
            for id in ids {
                s.answered(id, Err(why.clone()));
            }
        }
    }
}

async fn submit_one(
    acct: &BenchAccount,
    client: &NodeClient,
    shared: &Shared,
    chain_id: &str,
    amount: u64,
    fee: u64,
) {
    let mut next = acct.next_nonce.lock().await;
    let nonce = match *next {
        Some(n) => n,
        None => match client.account(&acct.key.address(), false).await {
            Ok(a) => a.next_nonce(),
            Err(e) => {
                *shared.stats().rejected.entry(reason(&e)).or_default() += 1;
                return;
            }
        },
    };
    let stx = build_transfer(&acct.key, chain_id, nonce, fee, acct.to, amount);
    let id = hex::encode(stx.id());
    shared.stats().submitting(std::slice::from_ref(&id));
    let answer = client.submit(&stx).await;
    // On a refusal the nonce is fetched from the node again.
    *next = answer.is_ok().then_some(nonce + 1);
    shared
        .stats()
        .answered(id, answer.map(|_| ()).map_err(|e| reason(&e)));
}

fn reason(e: &Error) -> String {
    match &e.code {
        Some(code) => code.to_string(),
        None => format!("error:{}", e.kind.as_str()),
    }
}

fn draw(bar: &ProgressBar, sent: u64, shared: &Shared) {
    let s = shared.stats();
    let rejected: u64 = s.rejected.values().sum();
    bar.set_position(sent);
    bar.set_message(format!(
        "accepted {}  committed {}  rejected {}",
        s.accepted, s.committed, rejected
    ));
}

fn report(
    ctx: &Ctx,
    args: &BenchArgs,
    shared: &Shared,
    accounts: usize,
    sent: u64,
    submit_elapsed: Duration,
    not_committed: Vec<(String, String)>,
) -> Result<()> {
    let s = shared.stats();
    let h = shared.latency_us.lock().unwrap_or_else(|e| e.into_inner());
    let ms = |q: f64| {
        if h.is_empty() {
            None
        } else {
            Some(h.value_at_quantile(q) as f64 / 1000.0)
        }
    };
    let commit_window = match (s.first_submit, s.last_commit) {
        (Some(a), Some(b)) if b > a => b.duration_since(a).as_secs_f64(),
        _ => 0.0,
    };
    let tps = if commit_window > 0.0 {
        s.committed as f64 / commit_window
    } else {
        0.0
    };
    let rejected_total: u64 = s.rejected.values().sum();
    // What "not committed" means for each: still in a node's mempool (pending: the nodes are
    // behind the offered rate, the tx is not lost), not checked within the check deadline,
    // or unknown to the node (lost, or refused after acceptance).
    let still_pending = not_committed
        .iter()
        .filter(|(_, st)| st == TxState::Pending.as_str())
        .count();
    let not_checked = not_committed
        .iter()
        .filter(|(_, st)| st == NOT_CHECKED)
        .count();
    let unknown = not_committed.len() - still_pending - not_checked;
    let listed: Vec<_> = not_committed
        .iter()
        .take(MAX_LISTED)
        .map(|(id, st)| json!({"tx_id": id, "status": st}))
        .collect();
    let value = json!({
        "accounts": accounts,
        "nodes": ctx.nodes,
        "target_rate": args.rate,
        "duration_s": args.duration.as_secs_f64(),
        "scheduled": sent,
        "submitted": s.submitted,
        "submit_rate": if submit_elapsed.as_secs_f64() > 0.0 { s.submitted as f64 / submit_elapsed.as_secs_f64() } else { 0.0 },
        "accepted": s.accepted,
        "committed": s.committed,
        "committed_seen_by_polling": s.committed_by_poll,
        "rejected": rejected_total,
        "rejected_by_reason": s.rejected,
        "blocks": s.blocks,
        "committed_tps": tps,
        "latency_ms": {
            "samples": h.len(),
            "p50": ms(0.50),
            "p95": ms(0.95),
            "p99": ms(0.99),
            "max": if h.is_empty() { None } else { Some(h.max() as f64 / 1000.0) },
        },
        "not_committed": not_committed.len(),
        "not_committed_still_pending": still_pending,
        "not_committed_not_checked": not_checked,
        "not_committed_unknown": unknown,
        "not_committed_txs": listed,
        "ok": not_committed.is_empty() && s.accepted > 0,
    });
    ctx.emit(&value, || {
        let f = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{x:.1} ms"));
        let mut out = format!(
            "submitted   {} ({:.1} tx/s over {:.1}s)\naccepted    {}\ncommitted   {} ({} seen only by polling)\nrejected    {}",
            s.submitted,
            value["submit_rate"].as_f64().unwrap_or(0.0),
            submit_elapsed.as_secs_f64(),
            s.accepted,
            s.committed,
            s.committed_by_poll,
            rejected_total
        );
        for (why, count) in &s.rejected {
            out.push_str(&format!("\n  {why:<20} {count}"));
        }
        if s.rejected.contains_key("nonce_gap") || s.rejected.contains_key("sender_limit") {
            out.push_str(
                "\n  (nonce_gap / sender_limit: too many pending txs per account; use more --accounts)",
            );
        }
        out.push_str(&format!(
            "\ncommitted TPS  {tps:.1} (first submit to last commit, {commit_window:.2}s)\nlatency     p50 {}  p95 {}  p99 {}  (submit -> committed event, {} samples)",
            f(ms(0.50)),
            f(ms(0.95)),
            f(ms(0.99)),
            h.len()
        ));
        if not_committed.is_empty() {
            out.push_str("\nall accepted transactions were committed");
        } else {
            out.push_str(&format!(
                "\nNOT COMMITTED after the drain timeout: {} accepted transaction(s): {still_pending} still pending in the node's mempool, {not_checked} not checked, {unknown} unknown to the node",
                not_committed.len()
            ));
            for (id, st) in not_committed.iter().take(MAX_LISTED) {
                out.push_str(&format!("\n  {id}  {st}"));
            }
        }
        out
    });
    if !not_committed.is_empty() {
        return Err(Error::failure(format!(
            "{} accepted transaction(s) were not committed within the drain timeout ({}s); raise --drain-timeout or check the nodes",
            not_committed.len(),
            args.drain_timeout.as_secs_f64()
        ))
        .json_reported());
    }
    if s.accepted == 0 {
        return Err(Error::failure(
            "the node accepted no transaction; see the rejection reasons in the report",
        )
        .json_reported());
    }
    Ok(())
}

fn keystore_keys(ctx: &Ctx, args: &BenchArgs) -> Result<Vec<Keypair>> {
    let ks = ctx.keystore()?;
    let names: Vec<String> = if args.keys.is_empty() {
        ks.list()?.into_iter().map(|k| k.name).collect()
    } else {
        args.keys.clone()
    };
    if names.is_empty() {
        return Err(Error::usage(format!(
            "no keys to bench with in {}; pass --fund-from KEY --accounts N, or --keys a,b,c",
            ks.dir().display()
        )));
    }
    // One password for all keys, asked at most once.
    let mut password: Option<zeroize::Zeroizing<String>> = None;
    let mut keys = Vec::with_capacity(names.len());
    for name in &names {
        let (key, info) = ks.unlock(name, || match &password {
            Some(p) => Ok(p.clone()),
            None => {
                let p = ctx.unlock_password(name)?;
                password = Some(p.clone());
                Ok(p)
            }
        })?;
        if info.insecure {
            crate::context::warn_insecure(&info);
        }
        keys.push(key);
    }
    Ok(keys)
}

/// Creates `--accounts` fresh keys and funds each from `funder`, then waits for the
/// funding to commit (the funder's transfers commit in nonce order, so the last one
/// committing means all did).
async fn fund_accounts(
    ctx: &Ctx,
    args: &BenchArgs,
    client: &NodeClient,
    funder: &str,
    chain_id: &str,
    fee: u64,
) -> Result<Vec<Keypair>> {
    let ks = ctx.keystore()?;
    let (fkey, _) = ctx.unlock(&ks, funder)?;
    let n = args.accounts as u64;
    let per_account_txs = ((args.rate * args.duration.as_secs_f64()) / n as f64).ceil() as u64 + 1;
    let fund_amount = match args.fund_amount {
        Some(a) => a,
        None => per_account_txs
            .checked_mul(args.amount.saturating_add(fee))
            .and_then(|x| x.checked_mul(2))
            .ok_or_else(|| {
                Error::usage("the computed --fund-amount overflows; pass --fund-amount")
            })?,
    };
    if fund_amount == 0 {
        return Err(Error::usage("--fund-amount must be greater than zero"));
    }
    let total = fund_amount
        .checked_add(fee)
        .and_then(|x| x.checked_mul(n))
        .ok_or_else(|| {
            Error::usage("funding total overflows u64; lower --accounts or --fund-amount")
        })?;
    let acct = client.account(&fkey.address(), false).await?;
    if acct.balance < total {
        return Err(Error::failure(format!(
            "funder \"{funder}\" has {} but funding {n} accounts with {fund_amount} each (plus fee {fee}) needs {total}; lower --accounts, --rate, --duration or --fund-amount",
            acct.balance
        )));
    }
    let keys: Vec<Keypair> = (0..n).map(|_| Keypair::generate()).collect();
    ctx.say(format!(
        "funding {n} fresh accounts with {fund_amount} each from \"{funder}\"..."
    ));
    let events = subscribe(client, 65_536).await.ok();
    let started = Instant::now();
    let mut last_id = String::new();
    for (nonce, (i, k)) in (acct.next_nonce()..).zip(keys.iter().enumerate()) {
        let stx = build_transfer(&fkey, chain_id, nonce, fee, k.address(), fund_amount);
        let context = || format!("funding account {} of {n}", i + 1);
        let id = match client.submit(&stx).await {
            Ok(id) => id,
            // The node caps one sender's pending txs: let the funding so far commit, then
            // go on (commits free the funder's mempool slots).
            Err(e)
                if !last_id.is_empty()
                    && e.is_node_code(&[
                        ErrorCode::SenderLimit,
                        ErrorCode::NonceGap,
                        ErrorCode::MempoolFull,
                    ]) =>
            {
                wait_for_commit(client, &last_id, None, args.drain_timeout)
                    .await?
                    .ok_or_else(|| e.clone().context(context()))?;
                client
                    .submit(&stx)
                    .await
                    .map_err(|e| e.context(context()))?
            }
            Err(e) => return Err(e.context(context())),
        };
        last_id = id.to_ascii_lowercase();
    }
    match wait_for_commit(client, &last_id, events, args.drain_timeout).await? {
        Some(inc) => {
            ctx.say(format!(
                "funded {n} accounts (committed by block {}, {:.2}s)",
                inc.height,
                started.elapsed().as_secs_f64()
            ));
            Ok(keys)
        }
        None => {
            warn("funding did not commit in time");
            Err(Error::failure(format!(
                "the funding transfers did not commit within {}s; raise --drain-timeout or check the node",
                args.drain_timeout.as_secs_f64()
            )))
        }
    }
}
