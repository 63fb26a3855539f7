//! Half-open connections (issue 17, item 8): TCP connections that never start the Noise
//! handshake must not lock other peers out.

use std::time::Duration;

use tally_p2p::Event;
use tokio::{net::TcpSocket, time::Instant};

use crate::support::{config, start, wait_until};

const RAW: usize = 64;
const RAW_IP: [u8; 4] = [127, 0, 10, 9];

/// 64 raw TCP connections from one IP that never speak Noise: an honest peer from another
/// IP still connects within 5 s, and the node's own outbound dial still works.
#[tokio::test]
async fn half_open_flood_does_not_lock_out_peers() {
    let mut ca = config([127, 0, 10, 1], 60);
    ca.discovery = false;
    let mut a = start(ca).await;
    let target = a.tcp_socket();

    // The flood: connected at the TCP level, then silent.
    let mut raw = Vec::with_capacity(RAW);
    for _ in 0..RAW {
        let socket = TcpSocket::new_v4().unwrap();
        socket
            .bind((std::net::Ipv4Addr::from(RAW_IP), 0).into())
            .unwrap();
        raw.push(socket.connect(target).await.unwrap());
    }
    // Every one of them reached A's swarm (taken as a pending handshake, or refused).
    wait_until("A's swarm saw every raw connection", || async {
        a.metric_sum("libp2p_swarm_connections_incoming_total")
            + a.metric_sum("libp2p_swarm_connections_incoming_error_total")
            >= RAW as f64
    })
    .await;

    // An honest peer from another IP dials once.
    let mut cb = config([127, 0, 10, 2], 61);
    cb.discovery = false;
    let b = start(cb).await;
    let t0 = Instant::now();
    b.handle.dial(a.tcp.clone().unwrap()).await.unwrap();
    let connected = tokio::time::timeout(Duration::from_secs(5), async {
        a.expect("the honest peer connects", |ev| {
            matches!(ev, Event::PeerConnected(p) if p == b.id).then_some(())
        })
        .await
    })
    .await;
    let took = t0.elapsed();
    assert!(
        connected.is_ok(),
        "the honest peer did not connect within 5 s during the half-open flood \
         (denied: {})",
        a.metrics()
            .lines()
            .filter(|l| l.starts_with("tally_p2p_connections_denied_total"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    eprintln!("half-open flood: honest inbound peer connected in {took:?}");

    // A's own outbound dial works too.
    let mut cc = config([127, 0, 10, 3], 62);
    cc.discovery = false;
    let mut c = start(cc).await;
    let t0 = Instant::now();
    a.handle.dial(c.tcp.clone().unwrap()).await.unwrap();
    let connected = tokio::time::timeout(Duration::from_secs(5), async {
        c.expect("A's outbound connection", |ev| {
            matches!(ev, Event::PeerConnected(p) if p == a.id).then_some(())
        })
        .await
    })
    .await;
    assert!(
        connected.is_ok(),
        "A's outbound dial did not connect within 5 s"
    );
    eprintln!(
        "half-open flood: outbound dial connected in {:?}",
        t0.elapsed()
    );

    // Close the raw connections.
    drop(raw);
    for node in [&a, &b, &c] {
        node.shutdown.cancel();
    }
}
