use std::time::Duration;

use tally_p2p::{Event, PenaltyReason, Topic, Verdict};

use crate::support::{config, start, wait_until};

/// Penalised below the threshold: disconnected, banned, refused while banned, accepted
/// again after the ban; `Peers` shows the score, reasons, ban state and remaining time.
#[tokio::test]
async fn penalised_peer_is_banned_then_readmitted() {
    let mut ca = config([127, 0, 4, 1], 20);
    ca.discovery = false;
    ca.ban_duration = Duration::from_secs(2);
    let mut a = start(ca).await;
    let mut cb = config([127, 0, 4, 2], 21);
    cb.discovery = false;
    let b = start(cb).await;
    let a_addr = a.tcp.clone().unwrap();

    b.handle.dial(a_addr.clone()).await.unwrap();
    a.expect("B connects", |ev| {
        matches!(ev, Event::PeerConnected(p) if p == b.id).then_some(())
    })
    .await;

    a.handle
        .penalize(b.id, PenaltyReason::Undecodable, 30.0)
        .await
        .unwrap();
    let info = a.peer(b.id).await.unwrap();
    assert!(info.connected && !info.banned);
    assert!((info.app_score + 30.0).abs() < 0.1, "{info:?}");

    a.handle
        .penalize(b.id, PenaltyReason::InvalidBlock, 80.0)
        .await
        .unwrap();
    let reason = a
        .expect("the ban", |ev| match ev {
            Event::PeerBanned { peer, reason, .. } if peer == b.id => Some(reason),
            _ => None,
        })
        .await;
    assert_eq!(reason, PenaltyReason::InvalidBlock);
    wait_until("B is disconnected", || async {
        a.peer(b.id).await.is_some_and(|p| !p.connected)
    })
    .await;
    let info = a.peer(b.id).await.unwrap();
    assert!(info.banned);
    assert!(info.app_score < -100.0);
    assert!(info
        .ban_remaining
        .is_some_and(|d| d <= Duration::from_secs(2)));
    assert_eq!(info.reasons.get(&PenaltyReason::Undecodable), Some(&1));
    assert_eq!(info.reasons.get(&PenaltyReason::InvalidBlock), Some(&1));

    // Reconnecting during the ban is refused.
    b.handle.dial(a_addr.clone()).await.unwrap();
    wait_until("A refused the banned peer", || async {
        a.metric("tally_p2p_connections_denied_total{reason=\"banned\"}") >= 1.0
    })
    .await;
    assert!(!a.peer(b.id).await.unwrap().connected);
    assert_eq!(
        a.metric("tally_peer_bans_total{reason=\"invalid_block\"}"),
        1.0
    );

    // After the ban: accepted again, on probation.
    wait_until("the ban expired", || async {
        a.peer(b.id).await.is_some_and(|p| !p.banned)
    })
    .await;
    let info = a.peer(b.id).await.unwrap();
    assert!(info.ban_remaining.is_none());
    assert!(info.app_score >= -50.1 && info.app_score < 0.0, "{info:?}");
    b.handle.dial(a_addr).await.unwrap();
    a.expect("B reconnects after the ban", |ev| {
        matches!(ev, Event::PeerConnected(p) if p == b.id).then_some(())
    })
    .await;
}

/// Inbound connections from one IP beyond `max_connections_per_ip` are refused.
#[tokio::test]
async fn per_ip_cap_refuses_extra_connections() {
    let mut ca = config([127, 0, 6, 1], 40);
    ca.discovery = false;
    ca.max_connections_per_ip = 1;
    let mut a = start(ca).await;
    let a_addr = a.tcp.clone().unwrap();
    let mut nodes = Vec::new();
    for seed in [41, 42] {
        let mut c = config([127, 0, 6, 2], seed);
        c.discovery = false;
        c.listen.truncate(1); // TCP only
        nodes.push(start(c).await);
    }
    nodes[0].handle.dial(a_addr.clone()).await.unwrap();
    let first = nodes[0].id;
    a.expect("the first peer from 127.0.6.2", |ev| {
        matches!(ev, Event::PeerConnected(p) if p == first).then_some(())
    })
    .await;
    nodes[1].handle.dial(a_addr).await.unwrap();
    wait_until(
        "A refused the second connection from the same IP",
        || async { a.metric("tally_p2p_connections_denied_total{reason=\"per_ip_limit\"}") >= 1.0 },
    )
    .await;
    assert!(a.peer(nodes[1].id).await.is_none_or(|p| !p.connected));
}

/// Gossipsub's P4 graylists a peer after two or three rejected messages, long before its
/// application score reaches the ban threshold, and a graylisted peer's messages never
/// reach validation again. The task bans it anyway: graylisted with an offence on record.
#[tokio::test]
async fn graylisted_offender_is_banned() {
    let mut ca = config([127, 0, 7, 1], 50);
    ca.discovery = false;
    let mut a = start(ca).await;
    let mut cb = config([127, 0, 7, 2], 51);
    cb.discovery = false;
    let b = start(cb).await;
    b.handle.dial(a.tcp.clone().unwrap()).await.unwrap();
    wait_until("B sees A subscribed", || async {
        b.peer(a.id)
            .await
            .is_some_and(|p| p.topics.contains(&Topic::Consensus))
    })
    .await;

    // B sends invalid consensus messages (20 points each); A rejects what it sees.
    let handle = a.handle.clone();
    let mut rejected = 0u32;
    for i in 0..10u32 {
        let _ = b
            .handle
            .publish(Topic::Consensus, format!("bad vote {i}").into_bytes())
            .await;
        let got = tokio::time::timeout(Duration::from_millis(500), async {
            a.expect("B's message", |ev| match ev {
                Event::Message { msg_id, source, .. } => Some((msg_id, source)),
                _ => None,
            })
            .await
        })
        .await;
        if let Ok((msg_id, source)) = got {
            rejected += 1;
            handle
                .validated(
                    msg_id,
                    source,
                    Verdict::Reject(PenaltyReason::InvalidMessage),
                )
                .await
                .unwrap();
        }
        if a.peer(b.id).await.is_some_and(|p| p.banned) {
            break;
        }
    }
    wait_until("A banned B", || async {
        a.peer(b.id).await.is_some_and(|p| p.banned && !p.connected)
    })
    .await;
    // Fewer than the five rejects that the application score alone would have needed.
    assert!((1..5).contains(&rejected), "{rejected} messages validated");
    let info = a.peer(b.id).await.unwrap();
    assert!(info.app_score < -100.0, "{info:?}");
    assert_eq!(
        a.metric("tally_peer_bans_total{reason=\"invalid_message\"}"),
        1.0
    );
}
