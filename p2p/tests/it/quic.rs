use tally_p2p::Event;

use crate::support::{config, start};

/// A node reaches another over its QUIC listen address only.
#[tokio::test]
async fn connects_over_quic() {
    let mut ca = config([127, 0, 5, 1], 30);
    ca.discovery = false;
    let mut a = start(ca).await;
    let mut cb = config([127, 0, 5, 2], 31);
    cb.discovery = false;
    cb.listen.retain(|l| l.to_string().contains("quic"));
    let quic = a.quic.clone().unwrap();
    assert!(quic.to_string().contains("/quic-v1/"), "{quic}");
    cb.bootstrap = vec![quic];
    let b = start(cb).await;
    assert!(b.tcp.is_none());

    a.expect("B connects over QUIC", |ev| {
        matches!(ev, Event::PeerConnected(p) if p == b.id).then_some(())
    })
    .await;
    let info = a.peer(b.id).await.unwrap();
    assert!(
        info.addresses
            .iter()
            .all(|x| x.to_string().contains("quic-v1")),
        "{info:?}"
    );
}
