//! Which address our connections come from.

use crate::support::{config, start, wait_until};

/// A node that listens on a specific IP dials from it, so its peers see it on the address
/// it is known by (libp2p's TCP dials left from 127.0.0.1 on loopback: every node of a
/// local testnet looked like one host to per-IP limits and accounting).
#[tokio::test]
async fn tcp_dials_leave_from_the_listen_ip() {
    let mut ca = config([127, 0, 15, 1], 96);
    ca.discovery = false;
    let a = start(ca).await;
    let mut cb = config([127, 0, 15, 2], 97);
    cb.discovery = false;
    cb.listen.truncate(1); // TCP only
    cb.bootstrap = vec![a.tcp.clone().unwrap()];
    let b = start(cb).await;
    wait_until("B connects", || async {
        a.peer(b.id).await.is_some_and(|p| p.connected)
    })
    .await;
    let info = a.peer(b.id).await.unwrap();
    assert!(
        info.addresses
            .iter()
            .all(|x| x.to_string().starts_with("/ip4/127.0.15.2/tcp/")),
        "{info:?}"
    );
}
