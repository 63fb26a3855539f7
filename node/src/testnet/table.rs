//! The live status table: every node's `/v1/status`, its pid and its faults, one row each.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use serde_json::Value;

use super::faults;
use super::manifest::{Manifest, Role};
use super::processes::node_pid;

pub(super) struct Row {
    name: String,
    role: Role,
    rpc: String,
    pid: Option<u32>,
    status: Option<Value>,
    /// Partitions and pauses in force ("-" for none), from `<dir>/faults.json`.
    fault: String,
    paused: bool,
    /// A validator's voting power at the next height, "jailed", or "-" (a full node, or
    /// no node answered `/v1/validators`).
    power: String,
    /// `<version>/p<highest protocol>` of the node's binary ([`software`]).
    software: String,
}

/// How long one node gets to answer `/v1/status`, connection included: a paused node
/// (SIGSTOP) still has its connections accepted by the kernel but never answers, and must
/// show as paused instead of stalling the table.
const STATUS_TIMEOUT: Duration = Duration::from_millis(800);

/// Polls the nodes' `/v1/status` for the table, all at once.
pub(super) struct Poller {
    http: reqwest::Client,
}

impl Poller {
    pub(super) fn new() -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(STATUS_TIMEOUT)
            .connect_timeout(STATUS_TIMEOUT)
            // The nodes are on this machine: an HTTP_PROXY in the environment is not for them.
            .no_proxy()
            // Below the nodes' 5 s header-read timeout, which closes idle connections.
            .pool_idle_timeout(Duration::from_secs(2))
            .build()
            .context("cannot build the HTTP client for the status table")?;
        Ok(Self { http })
    }

    pub(super) async fn poll_all(&self, dir: &Path, m: &Manifest) -> Vec<Row> {
        let faults = faults::load(dir);
        let faults = &faults;
        let polls = m.nodes.iter().enumerate().map(|(i, n)| async move {
            Row {
                name: n.name.clone(),
                role: n.role,
                rpc: n.rpc.clone(),
                pid: node_pid(dir, i),
                status: self.status(&n.rpc).await.ok(),
                fault: faults.describe(i),
                paused: faults.paused.contains(&i),
                power: "-".into(),
                software: "-".into(),
            }
        });
        let mut rows = futures::future::join_all(polls).await;
        self.fill_power(dir, m, &mut rows).await;
        self.fill_software(&mut rows).await;
        rows
    }

    /// Each row's software: what the node's own `/v1/status` says, or for a node of a
    /// release before that field (in the middle of a rolling upgrade), what another node
    /// sees it announce (`/v1/peers`; `p?` when it announces no protocols).
    async fn fill_software(&self, rows: &mut [Row]) {
        let mut missing = false;
        for row in rows.iter_mut() {
            let own = row.status.as_ref().and_then(|s| {
                let version = s["version"].as_str()?;
                Some(software(Some(version), s["max_protocol"].as_u64()))
            });
            missing |= own.is_none() && row.status.is_some();
            row.software = own.unwrap_or_else(|| "-".into());
        }
        if !missing {
            return;
        }
        // A node does not list itself: two answering nodes see every other one.
        let askers: Vec<String> = rows
            .iter()
            .filter(|r| r.status.is_some())
            .map(|r| r.rpc.clone())
            .take(2)
            .collect();
        let mut seen: HashMap<String, String> = HashMap::new();
        for rpc in askers {
            let Ok(peers) = self.get(&rpc, "/v1/peers").await else {
                continue;
            };
            for p in peers["peers"].as_array().into_iter().flatten() {
                if let (Some(id), Some(version)) = (p["peer_id"].as_str(), p["version"].as_str()) {
                    seen.entry(id.to_string())
                        .or_insert_with(|| software(Some(version), p["max_protocol"].as_u64()));
                }
            }
        }
        for row in rows.iter_mut().filter(|r| r.software == "-") {
            let id = row.status.as_ref().and_then(|s| s["node_id"].as_str());
            if let Some(sw) = id.and_then(|id| seen.get(id)) {
                row.software = sw.clone();
            }
        }
    }

    /// Each validator row's power in the next height's set, asked of one node that
    /// answered; a validator outside the set is looked up on its own (protocol 2: jailed,
    /// or unbonded to 0).
    async fn fill_power(&self, dir: &Path, m: &Manifest, rows: &mut [Row]) {
        let Some(rpc) = rows
            .iter()
            .find(|r| r.status.is_some())
            .map(|r| r.rpc.clone())
        else {
            return;
        };
        let Ok(set) = self.get(&rpc, "/v1/validators").await else {
            return;
        };
        let powers: HashMap<&str, u64> = set["validators"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| Some((v["address"].as_str()?, v["power"].as_u64()?)))
            .collect();
        for (i, (row, node)) in rows.iter_mut().zip(&m.nodes).enumerate() {
            let Some(address) = node.validator_address.as_deref() else {
                continue;
            };
            row.power = match powers.get(address) {
                Some(p) => p.to_string(),
                None => match self.jailed_until(&rpc, dir, i).await {
                    Some(h) if h > 0 => format!("jailed<{h}"),
                    _ => "0".into(),
                },
            };
        }
    }

    /// `jailed_until_height` of node `i`'s validator key (its key file in its home).
    async fn jailed_until(&self, rpc: &str, dir: &Path, i: usize) -> Option<u64> {
        let key = crate::keys::read_validator_key(
            &super::manifest::home(dir, i).join("config/validator_key.json"),
        )
        .ok()?;
        let path = format!("/v1/validators/{}", ledger::hash::to_hex(&key.public_key()));
        self.get(rpc, &path).await.ok()?["jailed_until_height"].as_u64()
    }

    /// `GET http://<rpc><path>` as JSON; an error for anything but a 200 in time.
    async fn get(&self, rpc: &str, path: &str) -> anyhow::Result<Value> {
        let response = self
            .http
            .get(format!("http://{rpc}{path}"))
            .send()
            .await?
            .error_for_status()?;
        Ok(response.json().await?)
    }

    /// `GET http://<rpc>/v1/status` as JSON; an error for anything but a 200 in time.
    async fn status(&self, rpc: &str) -> anyhow::Result<Value> {
        self.get(rpc, "/v1/status").await
    }
}

fn state_of(r: &Row) -> &'static str {
    match (&r.status, r.pid) {
        (_, Some(_)) if r.paused => "paused",
        (Some(s), _) if !s["halted"].is_null() => "HALTED",
        (Some(s), _) if s["catching_up"].as_bool() == Some(true) => "syncing",
        (Some(_), _) => "up",
        (None, Some(_)) => "starting",
        (None, None) => "down",
    }
}

/// `0.1.0/p2`: a software version and the highest protocol its binary runs (`p?`: not
/// announced).
fn software(version: Option<&str>, max_protocol: Option<u64>) -> String {
    let max = max_protocol.map_or("?".to_string(), |p| p.to_string());
    format!("{}/p{max}", version.unwrap_or("?"))
}

fn field(r: &Row, key: &str) -> String {
    r.status
        .as_ref()
        .map(|s| match &s[key] {
            Value::Null => "-".to_string(),
            v => v.to_string(),
        })
        .unwrap_or_else(|| "-".into())
}

fn since_block(r: &Row) -> String {
    r.status
        .as_ref()
        .and_then(|s| s["seconds_since_last_block"].as_f64())
        .map_or("-".into(), |x| format!("{x:.1}s ago"))
}

fn mempool(r: &Row) -> String {
    r.status
        .as_ref()
        .and_then(|s| s["mempool"]["txs"].as_u64())
        .map_or("-".into(), |x| x.to_string())
}

pub(super) fn table(rows: &[Row], colour: bool) -> Vec<String> {
    let mut out = vec![format!(
        "{:<7} {:<10} {:>9} {:<12} {:<22} {:>7} {:>5} {:>5} {:>7} {:>11}  {:<8} {:>7}  {}",
        "NODE",
        "ROLE",
        "POWER",
        "SOFTWARE",
        "RPC",
        "HEIGHT",
        "ROUND",
        "PEERS",
        "MEMPOOL",
        "LAST BLOCK",
        "STATE",
        "PID",
        "FAULT"
    )];
    for r in rows {
        let state = state_of(r);
        let (on, off) = match (colour, state) {
            (false, _) => ("", ""),
            (true, "up") => ("\x1b[32m", "\x1b[0m"),
            (true, "syncing" | "starting") => ("\x1b[33m", "\x1b[0m"),
            (true, _) => ("\x1b[31m", "\x1b[0m"),
        };
        out.push(format!(
            "{:<7} {:<10} {:>9} {:<12} {:<22} {:>7} {:>5} {:>5} {:>7} {:>11}  {on}{:<8}{off} {:>7}  {}",
            r.name,
            r.role,
            r.power,
            r.software,
            r.rpc,
            field(r, "height"),
            field(r, "round"),
            field(r, "peers"),
            mempool(r),
            since_block(r),
            state,
            r.pid.map_or("-".into(), |p| p.to_string()),
            r.fault,
        ));
    }
    out
}

pub(super) fn status_line(r: &Row) -> String {
    format!(
        "{} {} power={} software={} height={} round={} peers={} mempool={} last_block={} state={} pid={} fault={}",
        r.name,
        r.role,
        r.power,
        r.software,
        field(r, "height"),
        field(r, "round"),
        field(r, "peers"),
        mempool(r),
        since_block(r),
        state_of(r),
        r.pid.map_or("-".into(), |p| p.to_string()),
        r.fault,
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Instant;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    #[tokio::test]
    async fn a_status_in_chunks_is_read_and_a_silent_node_times_out() {
        let poller = Poller::new().unwrap();

        // axum answers a JSON body of unknown length in chunks.
        let chunked = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = chunked.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (mut s, _) = chunked.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await.unwrap();
            let body = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                        transfer-encoding: chunked\r\n\r\n\
                        5\r\n{\"hei\r\n9\r\nght\": 42}\r\n0\r\n\r\n";
            s.write_all(body.as_bytes()).await.unwrap();
        });
        let status = poller.status(&addr).await.unwrap();
        assert_eq!(status["height"], 42);

        // Like a paused node: the kernel accepts the connection, nobody answers.
        let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = silent.local_addr().unwrap().to_string();
        let started = Instant::now();
        assert!(poller.status(&addr).await.is_err());
        let took = started.elapsed();
        assert!(
            took >= STATUS_TIMEOUT && took < STATUS_TIMEOUT * 3,
            "a silent node held the poll for {took:?}"
        );
        drop(silent);

        // Anything but a 200 is no status.
        let refusing = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = refusing.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (mut s, _) = refusing.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await.unwrap();
            let body = "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 2\r\n\r\n{}";
            s.write_all(body.as_bytes()).await.unwrap();
        });
        assert!(poller.status(&addr).await.is_err());
    }

    /// A node that reports its software in `/v1/status` shows it; one of a release before
    /// that field shows what another node sees it announce in `/v1/peers`.
    #[tokio::test]
    async fn software_comes_from_the_status_or_else_from_a_peers_view() {
        let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = server.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let body = r#"{"peers":[{"peer_id":"old","version":"0.1.0","max_protocol":null}]}"#;
            loop {
                let (mut s, _) = server.accept().await.unwrap();
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await.unwrap();
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                     content-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                s.write_all(answer.as_bytes()).await.unwrap();
            }
        });
        let row = |name: &str, status: Value| Row {
            name: name.into(),
            role: Role::Validator,
            rpc: addr.clone(),
            pid: None,
            status: Some(status),
            fault: "-".into(),
            paused: false,
            power: "-".into(),
            software: "-".into(),
        };
        let mut rows = vec![
            row(
                "node0",
                serde_json::json!({"node_id": "new", "version": "0.2.0", "max_protocol": 2}),
            ),
            row("node1", serde_json::json!({"node_id": "old", "height": 5})),
        ];
        Poller::new().unwrap().fill_software(&mut rows).await;
        assert_eq!(rows[0].software, "0.2.0/p2");
        assert_eq!(rows[1].software, "0.1.0/p?");
        assert!(table(&rows, false)[2].contains("0.1.0/p?"));
        assert!(status_line(&rows[0]).contains("software=0.2.0/p2"));
    }
}
