use std::time::Duration;

use tally_p2p::{Event, PenaltyReason, RemoteError, RequestError};

use crate::support::{config, start, wait_until, TestNode};

async fn pair(
    ip: [u8; 3],
    a_requests_per_sec: u32,
    tweak_b: impl FnOnce(&mut tally_p2p::NetworkConfig),
) -> (TestNode, TestNode) {
    let mut ca = config([ip[0], ip[1], ip[2], 1], 10);
    ca.discovery = false;
    ca.max_sync_requests_per_sec_per_peer = a_requests_per_sec;
    let a = start(ca).await;
    let mut cb = config([ip[0], ip[1], ip[2], 2], 11);
    cb.discovery = false;
    cb.bootstrap = vec![a.tcp.clone().unwrap()];
    tweak_b(&mut cb);
    let b = start(cb).await;
    wait_until("B connected to A", || async {
        b.peer(a.id).await.is_some_and(|p| p.connected)
    })
    .await;
    (a, b)
}

/// Round trip; responses over either side's cap and requests over the cap fail with errors.
#[tokio::test]
async fn request_response_and_size_caps() {
    let (mut a, b) = pair([127, 0, 2], 20, |cb| {
        cb.sync_max_response_bytes = 1024;
        cb.sync_max_request_bytes = 64 * 1024;
    })
    .await;
    let a_limit = tally_p2p::NetworkConfig::default().sync_max_response_bytes;

    let (bh, aid) = (b.handle.clone(), a.id);
    let round_trip = tokio::spawn(async move { bh.request(aid, b"status?".to_vec()).await });
    let channel = a
        .expect("the request", |ev| match ev {
            Event::Request {
                data,
                channel,
                peer,
            } if data == b"status?" && peer == b.id => Some(channel),
            _ => None,
        })
        .await;
    a.handle.respond(channel, b"tip=7".to_vec()).await.unwrap();
    assert_eq!(round_trip.await.unwrap().unwrap(), b"tip=7");

    // Over B's response cap (1 KiB) but within A's: B refuses to read it.
    let bh = b.handle.clone();
    let too_big_for_b = tokio::spawn(async move { bh.request(aid, b"blocks".to_vec()).await });
    let channel = a
        .expect("the request", |ev| match ev {
            Event::Request { channel, .. } => Some(channel),
            _ => None,
        })
        .await;
    a.handle.respond(channel, vec![1; 2048]).await.unwrap();
    assert_eq!(
        too_big_for_b.await.unwrap(),
        Err(RequestError::ResponseTooLarge { limit: 1024 })
    );

    // Over A's own cap: not sent; B gets an error frame, A's respond() an error.
    let bh = b.handle.clone();
    let too_big_for_a = tokio::spawn(async move { bh.request(aid, b"all".to_vec()).await });
    let channel = a
        .expect("the request", |ev| match ev {
            Event::Request { channel, .. } => Some(channel),
            _ => None,
        })
        .await;
    assert!(a
        .handle
        .respond(channel, vec![0; a_limit + 1])
        .await
        .is_err());
    assert_eq!(
        too_big_for_a.await.unwrap(),
        Err(RequestError::Refused(RemoteError::ResponseTooLarge))
    );

    // A request over A's 40 KiB request cap: refused by A's codec, and B is penalised.
    assert_eq!(
        b.handle.request(a.id, vec![0; 48 * 1024]).await,
        Err(RequestError::Refused(RemoteError::RequestTooLarge))
    );
    let info = a.peer(b.id).await.unwrap();
    assert_eq!(info.reasons.get(&PenaltyReason::Oversized), Some(&1));
    // Over B's own request cap: not even sent.
    assert!(matches!(
        b.handle.request(a.id, vec![0; 65 * 1024]).await,
        Err(RequestError::RequestTooLarge { .. })
    ));

    // Shutdown: the task stops and the handle reports it.
    a.shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), a.handle.closed())
        .await
        .expect("network task did not stop");
    assert!(a.handle.peers().await.is_err());
}

/// A peer sending more requests per second than allowed is refused and scored down.
#[tokio::test]
async fn request_flood_is_refused_and_penalised() {
    let (mut a, b) = pair([127, 0, 3], 3, |_| {}).await;
    let responder = a.handle.clone();
    let mut events = std::mem::replace(&mut a.events, tokio::sync::mpsc::channel(1).1);
    tokio::spawn(async move {
        while let Some(ev) = events.recv().await {
            if let Event::Request { channel, .. } = ev {
                let _ = responder.respond(channel, b"ok".to_vec()).await;
            }
        }
    });

    let requests = (0..12).map(|i| b.handle.request(a.id, vec![i]));
    let results = futures::future::join_all(requests).await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    let limited = results
        .iter()
        .filter(|r| **r == Err(RequestError::Refused(RemoteError::RateLimited)))
        .count();
    assert!((1..=4).contains(&ok), "{results:?}");
    assert_eq!(ok + limited, 12, "{results:?}");

    let info = a.peer(b.id).await.unwrap();
    assert_eq!(
        info.reasons.get(&PenaltyReason::RequestFlood),
        Some(&(limited as u64))
    );
    assert!(info.app_score < 0.0);
    assert!(
        info.connected,
        "flooding costs points, not (yet) the connection"
    );
    assert!(
        a.metric("tally_sync_requests_total{direction=\"inbound\",outcome=\"rate_limited\"}")
            >= limited as f64
    );
}
