//! The live status table: every node's `/v1/status`, its pid and its faults, one row each.

use std::path::Path;
use std::time::Duration;

use anyhow::bail;
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
}

pub(super) async fn poll_all(dir: &Path, m: &Manifest) -> Vec<Row> {
    let faults = faults::load(dir);
    let faults = &faults;
    let polls = m.nodes.iter().enumerate().map(|(i, n)| async move {
        let status = http_get_json(&n.rpc, "/v1/status", Duration::from_millis(800))
            .await
            .ok();
        Row {
            name: n.name.clone(),
            role: n.role,
            rpc: n.rpc.clone(),
            pid: node_pid(dir, i),
            status,
            fault: faults.describe(i),
            paused: faults.paused.contains(&i),
        }
    });
    futures::future::join_all(polls).await
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
        "{:<7} {:<10} {:<22} {:>7} {:>5} {:>5} {:>7} {:>11}  {:<8} {:>7}  {}",
        "NODE",
        "ROLE",
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
            "{:<7} {:<10} {:<22} {:>7} {:>5} {:>5} {:>7} {:>11}  {on}{:<8}{off} {:>7}  {}",
            r.name,
            r.role,
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
        "{} {} height={} round={} peers={} mempool={} last_block={} state={} pid={} fault={}",
        r.name,
        r.role,
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

/// A minimal HTTP/1.1 GET (the node's own status endpoint on loopback): enough for a
/// status table without pulling an HTTP client into the node binary.
async fn http_get_json(addr: &str, path: &str, timeout: Duration) -> anyhow::Result<Value> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fetch = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(
            format!(
                "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await?;
        let mut buf = Vec::new();
        s.take(4 << 20).read_to_end(&mut buf).await?;
        anyhow::Ok(buf)
    };
    let buf = tokio::time::timeout(timeout, fetch)
        .await
        .map_err(|_| anyhow::anyhow!("timed out"))??;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("malformed HTTP response"))?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        bail!("HTTP {}", head.lines().next().unwrap_or_default());
    }
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_string()
    };
    Ok(serde_json::from_str(&body)?)
}

fn dechunk(mut body: &str) -> anyhow::Result<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = body
            .split_once("\r\n")
            .ok_or_else(|| anyhow::anyhow!("malformed chunk"))?;
        let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)?;
        if size == 0 {
            return Ok(out);
        }
        let chunk = rest
            .get(..size)
            .ok_or_else(|| anyhow::anyhow!("truncated chunk"))?;
        out.push_str(chunk);
        body = rest.get(size + 2..).unwrap_or("");
    }
}
