use tally_p2p::{Event, PenaltyReason, Topic, Verdict};

use crate::support::{config, start, wait_until, TestNode};

async fn wait_mesh(node: &TestNode, peer: &TestNode, topic: Topic) {
    wait_until("the peer is in the mesh", || async {
        node.peer(peer.id)
            .await
            .is_some_and(|p| p.mesh_topics.contains(&topic))
    })
    .await;
}

/// Receive one gossip message with `data` and report `verdict` for it.
async fn receive(node: &mut TestNode, data: &[u8], verdict: Verdict) -> tally_p2p::PeerId {
    let handle = node.handle.clone();
    let (msg_id, source) = node
        .expect("the gossip message", |ev| match ev {
            Event::Message {
                msg_id,
                source,
                data: d,
                topic: Topic::Tx,
                ..
            } if d == data => Some((msg_id, source)),
            _ => None,
        })
        .await;
    handle.validated(msg_id, source, verdict).await.unwrap();
    source
}

/// B and C only know A; Kademlia lets them find each other; a message from C reaches A and
/// B once they accept it.
#[tokio::test]
async fn three_nodes_discover_and_gossip() {
    let mut a = start(config([127, 0, 0, 1], 1)).await;
    let mut cb = config([127, 0, 0, 2], 2);
    cb.bootstrap = vec![a.tcp.clone().unwrap()];
    // B's binary runs protocols 1 and 2, A's and C's only 1 (the default).
    cb.protocols = 1..=2;
    let mut b = start(cb).await;
    let mut cc = config([127, 0, 0, 3], 3);
    cc.bootstrap = vec![a.tcp.clone().unwrap()];
    let c = start(cc).await;

    wait_until("C discovered B through A", || async {
        c.peer(b.id).await.is_some_and(|p| p.connected)
    })
    .await;
    for peer in [&a, &b] {
        wait_until("C sees the peer subscribed", || async {
            c.peer(peer.id)
                .await
                .is_some_and(|p| p.topics.contains(&Topic::Tx))
        })
        .await;
    }
    // Identify tells C what software each peer runs.
    for (peer, max) in [(&a, 1), (&b, 2)] {
        wait_until("C reads the peer's software", || async {
            c.peer(peer.id)
                .await
                .and_then(|p| p.software)
                .is_some_and(|s| s.max_protocol == Some(max))
        })
        .await;
    }
    let b_software = c.peer(b.id).await.and_then(|p| p.software).unwrap();
    assert_eq!(
        b_software.agent,
        format!("tally/{} protocols 1-2", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(
        b_software.version.as_deref(),
        Some(env!("CARGO_PKG_VERSION"))
    );

    let data = b"tx from C".to_vec();
    let id = c.handle.publish(Topic::Tx, data.clone()).await.unwrap();
    receive(&mut a, &data, Verdict::Accept).await;
    receive(&mut b, &data, Verdict::Accept).await;

    // Content-addressed ids: publishing the same bytes again is a duplicate.
    assert!(c.handle.publish(Topic::Tx, data).await.is_err());
    assert_eq!(id.to_string().len(), 64);

    let m = a.metrics();
    assert!(
        m.contains("tally_gossip_messages_total{topic=\"tx\",direction=\"in\"} 1"),
        "{m}"
    );
    assert!(m.contains("tally_peers 2"), "{m}");
    assert!(m.contains("libp2p_gossipsub_messages"), "{m}");
    assert!(m.contains("libp2p_swarm_connections_established"), "{m}");
}

/// Line P <- Q <- R without discovery: what Q rejects never reaches P; what Q accepts does.
#[tokio::test]
async fn rejected_message_is_not_forwarded() {
    let mut cp = config([127, 0, 1, 1], 4);
    cp.discovery = false;
    let mut p = start(cp).await;
    let mut cq = config([127, 0, 1, 2], 5);
    cq.discovery = false;
    cq.bootstrap = vec![p.tcp.clone().unwrap()];
    let mut q = start(cq).await;
    let mut cr = config([127, 0, 1, 3], 6);
    cr.discovery = false;
    cr.bootstrap = vec![q.tcp.clone().unwrap()];
    let r = start(cr).await;

    wait_mesh(&q, &p, Topic::Tx).await;
    wait_until("R sees Q subscribed", || async {
        r.peer(q.id)
            .await
            .is_some_and(|x| x.topics.contains(&Topic::Tx))
    })
    .await;

    let bad = b"forged tx".to_vec();
    r.handle.publish(Topic::Tx, bad.clone()).await.unwrap();
    let source = receive(
        &mut q,
        &bad,
        Verdict::Reject(PenaltyReason::InvalidSignature),
    )
    .await;
    assert_eq!(source, r.id);

    let good = b"valid tx".to_vec();
    r.handle.publish(Topic::Tx, good.clone()).await.unwrap();
    receive(&mut q, &good, Verdict::Accept).await;
    // P gets the accepted message; the rejected one, sent first on the same path, never.
    let seen_bad = p
        .expect("the accepted message at P", |ev| match ev {
            Event::Message { data, .. } if data == good => Some(false),
            Event::Message { data, .. } if data == bad => Some(true),
            _ => None,
        })
        .await;
    assert!(!seen_bad, "a rejected message was forwarded");

    let info = q.peer(r.id).await.unwrap();
    assert_eq!(info.reasons.get(&PenaltyReason::InvalidSignature), Some(&1));
    assert!(info.app_score < -40.0, "{info:?}");
    assert!(q
        .metrics()
        .contains("tally_invalid_messages_total{reason=\"invalid_signature\"} 1"));
}

/// A node that does not keep up loses gossip (counted) instead of buffering it: the event
/// channel is the only queue.
#[tokio::test]
async fn full_event_channel_drops_and_counts() {
    let mut ca = config([127, 0, 7, 1], 50);
    ca.discovery = false;
    ca.event_buffer = 4;
    let a = start(ca).await;
    let mut cb = config([127, 0, 7, 2], 51);
    cb.discovery = false;
    cb.bootstrap = vec![a.tcp.clone().unwrap()];
    let b = start(cb).await;
    wait_until("B sees A subscribed", || async {
        b.peer(a.id)
            .await
            .is_some_and(|p| p.topics.contains(&Topic::Tx))
    })
    .await;
    for i in 0..20u8 {
        b.handle.publish(Topic::Tx, vec![i; 8]).await.unwrap();
    }
    // A never reads its events: 4 wait on its tx queue and one in the hand-off channel;
    // the rest are dropped and counted.
    wait_until("A dropped the overflow", || async {
        a.metric("tally_p2p_dropped_total{kind=\"tx_channel_full\"}") >= 15.0
    })
    .await;
    assert!(a.events.len() <= 1);
}
