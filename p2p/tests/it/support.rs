use std::{future::Future, time::Duration};

use tally_p2p::{
    multiaddr::Protocol, CancellationToken, Event, Multiaddr, NetworkConfig, NetworkHandle, PeerId,
    PeerInfo, Registry,
};
use tokio::{sync::mpsc, time::Instant};

pub const DEADLINE: Duration = Duration::from_secs(15);

pub struct TestNode {
    pub handle: NetworkHandle,
    pub events: mpsc::Receiver<Event>,
    pub registry: Registry,
    pub id: PeerId,
    pub tcp: Option<Multiaddr>,
    pub quic: Option<Multiaddr>,
    pub shutdown: CancellationToken,
}

/// A config for a test node on `ip` (TCP and QUIC, ports 0) with short timers.
pub fn config(ip: [u8; 4], seed: u8) -> NetworkConfig {
    let mut secret = [seed; 32];
    secret[..4].copy_from_slice(&ip);
    let mut cfg = NetworkConfig::new("test-chain", secret);
    let ip = std::net::Ipv4Addr::from(ip);
    cfg.listen = vec![
        format!("/ip4/{ip}/tcp/0").parse().unwrap(),
        format!("/ip4/{ip}/udp/0/quic-v1").parse().unwrap(),
    ];
    cfg.heartbeat_interval = Duration::from_millis(200);
    cfg.request_timeout = Duration::from_secs(5);
    cfg
}

pub async fn start(cfg: NetworkConfig) -> TestNode {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let expect_tcp = cfg.listen.iter().any(|a| a.to_string().contains("/tcp/"));
    let expect_quic = cfg.listen.iter().any(|a| a.to_string().contains("quic"));
    let mut registry = Registry::default();
    let shutdown = CancellationToken::new();
    let (handle, mut events) = tally_p2p::spawn(cfg, &mut registry, shutdown.clone()).unwrap();
    let id = handle.local_peer_id();
    let (mut tcp, mut quic) = (None, None);
    let deadline = Instant::now() + DEADLINE;
    while (expect_tcp && tcp.is_none()) || (expect_quic && quic.is_none()) {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(Event::Listening(addr))) => {
                let addr = addr.with(Protocol::P2p(id));
                if addr.to_string().contains("quic") {
                    quic = Some(addr);
                } else {
                    tcp = Some(addr);
                }
            }
            Ok(Some(_)) => {}
            other => panic!("node did not start listening: {other:?}"),
        }
    }
    TestNode {
        handle,
        events,
        registry,
        id,
        tcp,
        quic,
        shutdown,
    }
}

impl TestNode {
    /// Consume events until `f` returns `Some`, failing the test at the deadline.
    pub async fn expect<T>(&mut self, what: &str, mut f: impl FnMut(Event) -> Option<T>) -> T {
        let deadline = Instant::now() + DEADLINE;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(ev)) => {
                    if let Some(t) = f(ev) {
                        return t;
                    }
                }
                Ok(None) => panic!("event channel closed while waiting for {what}"),
                Err(_) => panic!("timed out waiting for {what}"),
            }
        }
    }

    pub async fn peer(&self, peer: PeerId) -> Option<PeerInfo> {
        self.handle
            .peers()
            .await
            .unwrap()
            .into_iter()
            .find(|p| p.peer_id == peer)
    }

    /// The node's metrics in OpenMetrics text.
    pub fn metrics(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).unwrap();
        out
    }

    /// Value of the first sample line starting with `prefix` (0 if absent).
    pub fn metric(&self, prefix: &str) -> f64 {
        self.metrics()
            .lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }
}

/// Poll `check` until it holds, failing the test at the deadline.
pub async fn wait_until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + DEADLINE;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl TestNode {
    /// Sum of every sample of the metric family `name` (all label sets; 0 if absent).
    pub fn metric_sum(&self, name: &str) -> f64 {
        self.metrics()
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (key, value) = l.rsplit_once(' ')?;
                (key.split('{').next()? == name).then_some(value)
            })
            .filter_map(|v| v.parse::<f64>().ok())
            .sum()
    }

    /// The socket address of the node's TCP listener.
    pub fn tcp_socket(&self) -> std::net::SocketAddr {
        let addr = self.tcp.as_ref().expect("a TCP listener");
        let mut ip = None;
        let mut port = None;
        for p in addr.iter() {
            match p {
                Protocol::Ip4(a) => ip = Some(std::net::IpAddr::V4(a)),
                Protocol::Ip6(a) => ip = Some(std::net::IpAddr::V6(a)),
                Protocol::Tcp(p) => port = Some(p),
                _ => {}
            }
        }
        std::net::SocketAddr::new(ip.unwrap(), port.unwrap())
    }
}
