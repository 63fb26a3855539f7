//! The accept loop both HTTP servers (RPC and metrics) run behind (issue 17 item 11).
//!
//! `axum::serve` accepts every connection and waits for its request head for ever: 5,000
//! connections that never finish their headers (slow-loris) hold 5,000 descriptors and
//! tasks, and with the usual 1,024-file limit they lock every other client out. Here:
//! - a connection over `max_connections` (all addresses) or `max_connections_per_ip` (one
//!   IPv4 address, one IPv6 /64) is answered 503 with the API's JSON error, without
//!   waiting for anything from it, and closed: a refusal costs one accept and one write;
//! - a connection whose request head is not complete `header_read_timeout` after it was
//!   accepted, or after its previous answer on a kept-alive connection, is closed;
//! - a request head and its buffered body bytes are held in at most `MAX_BUF_BYTES`;
//! - at shutdown the loop stops accepting, in-flight requests finish, idle connections
//!   close.
//!
//! HTTP/1.1 only: HTTP/2 would need its own per-stream limits, and no client of the node
//! uses it.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tally_api::{ErrorBody, ErrorCode};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tower::Service;

use super::metrics::{RefusedLabels, RpcMetrics, ServerLabel};

/// How much of a request (head, and body bytes not yet consumed) one connection buffers.
/// An honest head is well under 8 KiB; without this each held connection could buffer
/// hyper's default of ~400 KiB.
const MAX_BUF_BYTES: usize = 64 * 1024;

/// How long the loop pauses after an accept error that is not about one connection
/// (out of descriptors, out of memory): the pending connections wait in the backlog.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The connection limits of one server.
#[derive(Clone, Debug)]
pub struct ConnLimits {
    /// The label of this server's connection metrics and logs: "rpc" or "metrics".
    pub server: &'static str,
    /// Time for a connection to send a complete request head (also how long an idle
    /// kept-alive connection stays open).
    pub header_read_timeout: Duration,
    pub keep_alive: bool,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
}

impl ConnLimits {
    /// The RPC server's limits (`[rpc]`).
    pub fn rpc(c: &crate::config::RpcSection) -> Self {
        Self {
            server: "rpc",
            header_read_timeout: Duration::from_millis(c.header_read_timeout_ms),
            keep_alive: c.keep_alive,
            max_connections: c.max_connections,
            max_connections_per_ip: c.max_connections_per_ip,
        }
    }

    /// The metrics server's limits: the caps of `[metrics]`, the timeouts of `[rpc]`.
    pub fn metrics(rpc: &crate::config::RpcSection, m: &crate::config::MetricsSection) -> Self {
        Self {
            server: "metrics",
            max_connections: m.max_connections,
            max_connections_per_ip: m.max_connections_per_ip,
            ..Self::rpc(rpc)
        }
    }
}

/// Why a connection was refused at accept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cap {
    Total,
    PerIp,
}

impl Cap {
    fn reason(self) -> &'static str {
        match self {
            Cap::Total => "max_connections",
            Cap::PerIp => "max_connections_per_ip",
        }
    }
}

/// The address a per-IP cap counts under: an IPv4 address, or an IPv6 /64 (one host
/// usually holds a whole /64, so per-address counting would not cap it).
fn ip_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & (u128::MAX << 64))),
        v4 => v4,
    }
}

#[derive(Default)]
struct Open {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// Counts open connections against the caps.
struct Gate {
    limits: ConnLimits,
    open: Mutex<Open>,
}

impl Gate {
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, Cap> {
        let key = ip_key(ip);
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if open.per_ip.get(&key).copied().unwrap_or(0) >= self.limits.max_connections_per_ip {
            return Err(Cap::PerIp);
        }
        if open.total >= self.limits.max_connections {
            return Err(Cap::Total);
        }
        open.total += 1;
        *open.per_ip.entry(key).or_default() += 1;
        Ok(Slot {
            gate: self.clone(),
            key,
        })
    }
}

/// One admitted connection; gives its place back when the connection ends.
struct Slot {
    gate: Arc<Gate>,
    key: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self
            .gate
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.per_ip.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.per_ip.remove(&self.key);
            }
        }
    }
}

/// The whole answer to a connection over a cap: a 503 with the JSON error body, written
/// with one non-blocking write before the connection is closed.
fn refusal(cap: Cap) -> Vec<u8> {
    let code = ErrorCode::TooManyConnections;
    let body = serde_json::to_string(&ErrorBody::new(
        code,
        format!(
            "this server has as many connections open as its {} allows; close idle ones or retry later",
            cap.reason()
        ),
    ))
    .unwrap_or_default();
    let status = axum::http::StatusCode::from_u16(code.status())
        .unwrap_or(axum::http::StatusCode::SERVICE_UNAVAILABLE);
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Errors of one incoming connection (it was reset before we accepted it): the listener
/// itself is fine.
fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    )
}

/// Serves `app` on `listener` within `limits` until `shutdown`; handlers can extract
/// `ConnectInfo<SocketAddr>`. Returns once every connection has finished.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnLimits,
    metrics: RpcMetrics,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let server = limits.server;
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(limits.keep_alive)
        .max_buf_size(MAX_BUF_BYTES);
    let refusals = [
        (Cap::Total, refusal(Cap::Total)),
        (Cap::PerIp, refusal(Cap::PerIp)),
    ];
    let gate = Arc::new(Gate {
        limits,
        open: Mutex::new(Open::default()),
    });
    let open_gauge = metrics
        .connections
        .get_or_create(&ServerLabel {
            server: server.into(),
        })
        .clone();
    let timed_out = metrics
        .connections_timed_out
        .get_or_create(&ServerLabel {
            server: server.into(),
        })
        .clone();
    let mut make_service = app.into_make_service_with_connect_info::<SocketAddr>();
    // Every connection task holds a sender; `recv` returns None once all have ended.
    let (alive, mut all_done) = tokio::sync::mpsc::channel::<Infallible>(1);
    let mut last_accept_warning: Option<Instant> = None;

    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, remote): (TcpStream, SocketAddr) = match accepted {
            Ok(a) => a,
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                if last_accept_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                    tracing::warn!(server, error = %e, "cannot accept connections (out of file descriptors?); retrying");
                    last_accept_warning = Some(Instant::now());
                }
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                }
            }
        };
        let slot = match gate.admit(remote.ip()) {
            Ok(slot) => slot,
            Err(cap) => {
                // Best effort and never waits: a client that does not read it loses nothing
                // but the explanation.
                if let Some((_, bytes)) = refusals.iter().find(|(c, _)| *c == cap) {
                    let _ = stream.try_write(bytes);
                }
                metrics
                    .connections_refused
                    .get_or_create(&RefusedLabels {
                        server: server.into(),
                        reason: cap.reason().into(),
                    })
                    .inc();
                continue;
            }
        };
        let service = match make_service.call(remote).await {
            Ok(service) => service,
            Err(never) => match never {},
        };
        let connection =
            http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
        let shutdown = shutdown.clone();
        let alive = alive.clone();
        let open_gauge = open_gauge.clone();
        let timed_out = timed_out.clone();
        tokio::spawn(async move {
            let _alive = alive;
            let _slot = slot;
            open_gauge.inc();
            let mut connection = std::pin::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                () = shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    connection.as_mut().await
                }
            };
            open_gauge.dec();
            match result {
                Err(e) if e.is_timeout() => {
                    timed_out.inc();
                }
                Err(e) => {
                    tracing::debug!(server, %remote, error = %e, "connection ended with an error")
                }
                Ok(()) => {}
            }
        });
    }
    drop(alive);
    let _ = all_done.recv().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(total: usize, per_ip: usize) -> Arc<Gate> {
        Arc::new(Gate {
            limits: ConnLimits {
                server: "test",
                header_read_timeout: Duration::from_secs(1),
                keep_alive: true,
                max_connections: total,
                max_connections_per_ip: per_ip,
            },
            open: Mutex::new(Open::default()),
        })
    }

    #[test]
    fn caps_count_per_address_and_in_total_and_free_on_drop() {
        let g = gate(3, 2);
        let a: IpAddr = "127.0.250.1".parse().unwrap();
        let b: IpAddr = "127.0.0.1".parse().unwrap();
        let a1 = g.admit(a).unwrap();
        let _a2 = g.admit(a).unwrap();
        assert_eq!(g.admit(a).err(), Some(Cap::PerIp));
        let _b1 = g.admit(b).unwrap();
        assert_eq!(g.admit(b).err(), Some(Cap::Total));
        drop(a1);
        let _b2 = g.admit(b).unwrap();
        assert_eq!(g.admit(a).err(), Some(Cap::Total));
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        let g = gate(10, 1);
        let _x = g.admit("2001:db8:1:2::1".parse().unwrap()).unwrap();
        assert_eq!(
            g.admit("2001:db8:1:2:ffff::9".parse().unwrap()).err(),
            Some(Cap::PerIp)
        );
        assert!(g.admit("2001:db8:1:3::1".parse().unwrap()).is_ok());
        let _v4 = g.admit("10.1.2.3".parse().unwrap()).unwrap();
        assert_eq!(
            g.admit("::ffff:10.1.2.3".parse().unwrap()).err(),
            Some(Cap::PerIp)
        );
    }

    #[test]
    fn a_refusal_is_a_complete_json_answer() {
        let text = String::from_utf8(refusal(Cap::PerIp)).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 503 "), "{head}");
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{head}"
        );
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["code"], "too_many_connections");
        assert!(v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_connections_per_ip"));
    }
}
