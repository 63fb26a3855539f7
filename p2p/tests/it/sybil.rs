//! New identities after a ban (issue 17, item 9): per-IP accounting, outbound slots and
//! what identify may put into Kademlia.

use std::time::Duration;

use tally_p2p::{Event, PenaltyReason, Topic, Verdict};
use tokio::time::Instant;

use crate::support::{config, start, wait_until, TestNode, DEADLINE};

const BAD_IP: [u8; 4] = [127, 0, 11, 9];

fn denied(node: &TestNode) -> f64 {
    node.metric_sum("tally_p2p_connections_denied_total")
}

/// 20 fresh identities from one IP, each sending one message that the node rejects
/// (`InvalidSignature`): the IP is refused after a few of them, its quiet peer is
/// disconnected, and an honest peer from another IP stays connected throughout.
#[tokio::test]
async fn fresh_identities_from_one_ip_get_the_ip_refused() {
    let mut ca = config([127, 0, 11, 1], 80);
    ca.discovery = false;
    let mut a = start(ca).await;
    let a_addr = a.tcp.clone().unwrap();

    let node_on = |ip: [u8; 4], seed: u8| {
        let mut c = config(ip, seed);
        c.discovery = false;
        c.listen.truncate(1); // TCP only
        c.bootstrap = vec![a_addr.clone()];
        c
    };
    let honest = start(node_on([127, 0, 11, 2], 81)).await;
    // A quiet peer on the attacker's IP: it sends nothing itself.
    let quiet = start(node_on(BAD_IP, 82)).await;
    for peer in [honest.id, quiet.id] {
        wait_until("A has the peer", || async {
            a.peer(peer).await.is_some_and(|p| p.connected)
        })
        .await;
    }

    let mut refused = Vec::new();
    let mut rejected = 0;
    for i in 0..20u8 {
        let sybil = start(node_on(BAD_IP, 100 + i)).await;
        let denied_before = denied(&a);
        // Either A takes the connection (the sybil sees A's subscriptions) or refuses it.
        let deadline = Instant::now() + DEADLINE;
        let admitted = loop {
            if sybil
                .peer(a.id)
                .await
                .is_some_and(|p| p.connected && p.topics.contains(&Topic::Tx))
            {
                break true;
            }
            if denied(&a) > denied_before {
                break false;
            }
            assert!(
                Instant::now() < deadline,
                "sybil {i}: neither admitted nor refused"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        if admitted {
            let data = format!("forged tx from sybil {i}").into_bytes();
            sybil.handle.publish(Topic::Tx, data.clone()).await.unwrap();
            let handle = a.handle.clone();
            let (msg_id, source) = a
                .expect("the sybil's message", |ev| match ev {
                    Event::Message {
                        msg_id,
                        source,
                        data: d,
                        ..
                    } if d == data => Some((msg_id, source)),
                    Event::PeerDisconnected(p) if p == honest.id => {
                        panic!("the honest peer was disconnected")
                    }
                    _ => None,
                })
                .await;
            assert_eq!(source, sybil.id);
            handle
                .validated(
                    msg_id,
                    source,
                    Verdict::Reject(PenaltyReason::InvalidSignature),
                )
                .await
                .unwrap();
            rejected += 1;
            wait_until("A scored the sybil", || async {
                a.peer(sybil.id)
                    .await
                    .is_some_and(|p| p.reasons.contains_key(&PenaltyReason::InvalidSignature))
            })
            .await;
        } else {
            refused.push(i);
        }
        sybil.shutdown.cancel();
        sybil.handle.closed().await;
    }
    eprintln!(
        "20 identities from one IP: {rejected} admitted and rejected, refused: {refused:?}; \
         denied: {}",
        a.metrics()
            .lines()
            .filter(|l| l.starts_with("tally_p2p_connections_denied_total"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    assert!(
        !refused.is_empty(),
        "all 20 identities from one IP were admitted ({rejected} rejected messages)"
    );
    // Once refused, refused for good (while the IP's penalty lasts).
    let first = refused[0];
    assert_eq!(refused, (first..20).collect::<Vec<_>>());
    wait_until("the quiet peer on that IP is disconnected", || async {
        a.peer(quiet.id).await.is_none_or(|p| !p.connected)
    })
    .await;
    assert!(a.peer(honest.id).await.is_some_and(|p| p.connected));
    while let Ok(ev) = a.events.try_recv() {
        assert!(
            !matches!(ev, Event::PeerDisconnected(p) if p == honest.id),
            "the honest peer was disconnected"
        );
    }
}

/// A node whose outbound connections drop below its minimum redials its bootstrap peers,
/// even while inbound peers keep it company (an attacker that fills the inbound slots must
/// not cut a node off from the peers it chose itself).
#[tokio::test]
async fn lost_bootstrap_peer_is_redialled_while_inbound_peers_remain() {
    let mut cb = config([127, 0, 13, 2], 91);
    cb.discovery = false;
    cb.ban_duration = Duration::from_secs(1);
    let b = start(cb).await;
    let mut ca = config([127, 0, 13, 1], 90);
    ca.discovery = false;
    ca.bootstrap = vec![b.tcp.clone().unwrap()];
    let mut a = start(ca).await;
    let mut cc = config([127, 0, 13, 3], 92);
    cc.discovery = false;
    cc.bootstrap = vec![a.tcp.clone().unwrap()];
    let c = start(cc).await;
    for peer in [b.id, c.id] {
        wait_until("A is connected to B and C", || async {
            a.peer(peer).await.is_some_and(|p| p.connected)
        })
        .await;
    }
    // B drops A (a one-second ban): A is left with its inbound peer C only.
    b.handle
        .penalize(a.id, PenaltyReason::InvalidBlock, 150.0)
        .await
        .unwrap();
    a.expect("B drops A", |ev| {
        matches!(ev, Event::PeerDisconnected(p) if p == b.id).then_some(())
    })
    .await;
    let t0 = Instant::now();
    a.expect("A redials B", |ev| {
        matches!(ev, Event::PeerConnected(p) if p == b.id).then_some(())
    })
    .await;
    eprintln!(
        "bootstrap peer redialled {:?} after it dropped us",
        t0.elapsed()
    );
    assert!(c.peer(a.id).await.is_some_and(|p| p.connected));
}

mod probe {
    //! A bare libp2p peer (identify + Kademlia) that says what it likes about itself.
    use libp2p::{identify, kad, noise, swarm::NetworkBehaviour, tcp, yamux, StreamProtocol};

    #[derive(NetworkBehaviour)]
    pub struct Probe {
        pub identify: identify::Behaviour,
        pub kad: kad::Behaviour<kad::store::MemoryStore>,
    }

    pub fn swarm(chain: &str, server: bool) -> libp2p::Swarm<Probe> {
        let kcfg = |proto: StreamProtocol| {
            let mut c = kad::Config::new(proto);
            // The lookup's answer is what we want, not the walk to X's (unreachable)
            // addresses that follows it.
            c.set_query_timeout(std::time::Duration::from_secs(2));
            c
        };
        libp2p::SwarmBuilder::with_new_identity()
            .with_tokio()
            .with_tcp(
                tcp::Config::default(),
                noise::Config::new,
                yamux::Config::default,
            )
            .unwrap()
            .with_behaviour(|key| {
                let id = key.public().to_peer_id();
                let proto =
                    StreamProtocol::try_from_owned(format!("/tally/{chain}/kad/1")).unwrap();
                let mut kad =
                    kad::Behaviour::with_config(id, kad::store::MemoryStore::new(id), kcfg(proto));
                kad.set_mode(Some(if server {
                    kad::Mode::Server
                } else {
                    kad::Mode::Client
                }));
                Probe {
                    identify: identify::Behaviour::new(identify::Config::new(
                        format!("/tally/{chain}/1"),
                        key.public(),
                    )),
                    kad,
                }
            })
            .unwrap()
            .with_swarm_config(|c| {
                c.with_idle_connection_timeout(std::time::Duration::from_secs(60))
            })
            .build()
    }
}

/// What a peer announces over identify goes into Kademlia (and from there to everyone who
/// looks the peer up) only if it is plausible: no unspecified, multicast or DNS addresses,
/// no transport we cannot dial, and a bounded number per peer.
#[tokio::test]
async fn identify_announcements_are_filtered_before_kademlia() {
    use futures::StreamExt;
    use libp2p::{kad, multiaddr::Protocol, swarm::SwarmEvent, Multiaddr};

    let a = start(config([127, 0, 14, 1], 95)).await;
    let a_tcp = a.tcp.clone().unwrap();

    // X listens on 127.0.14.2 and also claims 12 more plausible addresses and junk (the
    // swarm keeps the last 20 external addresses: junk goes last).
    let mut x = probe::swarm("test-chain", true);
    x.listen_on("/ip4/127.0.14.2/tcp/0".parse().unwrap())
        .unwrap();
    for i in 1..=12 {
        x.add_external_address(format!("/ip4/10.1.0.{i}/tcp/4001").parse().unwrap());
    }
    let junk = [
        "/ip4/0.0.0.0/tcp/4001",
        "/ip6/::/tcp/4001",
        "/ip4/224.0.0.251/tcp/4001",
        "/dns4/example.com/tcp/4001",
        "/ip4/127.0.14.2/tcp/4001/ws",
        "/ip4/127.0.14.2/udp/4001",
        "/ip4/127.0.14.2/tcp/0",
    ];
    for j in junk {
        x.add_external_address(j.parse().unwrap());
    }
    let x_id = *x.local_peer_id();
    // A new port: libp2p's default dial binds 0.0.0.0:<X's listen port> for reuse, which
    // now and then fails with EADDRINUSE next to X's own listener on 127.0.14.2.
    x.dial(
        libp2p::swarm::dial_opts::DialOpts::unknown_peer_id()
            .address(a_tcp.clone())
            .allocate_new_port()
            .build(),
    )
    .unwrap();
    let x_listen = loop {
        if let SwarmEvent::NewListenAddr { address, .. } = x.select_next_some().await {
            break address;
        }
    };
    let x_task = tokio::spawn(async move {
        loop {
            x.select_next_some().await;
        }
    });

    // Q asks A for the peers closest to X: A answers with what it stored for X.
    let mut q = probe::swarm("test-chain", false);
    let mut a_base = a_tcp.clone();
    a_base.pop();
    q.behaviour_mut().kad.add_address(&a.id, a_base);
    let deadline = Instant::now() + DEADLINE;
    let addrs: Vec<Multiaddr> = 'outer: loop {
        assert!(Instant::now() < deadline, "A never returned X to a lookup");
        q.behaviour_mut().kad.get_closest_peers(x_id);
        loop {
            let ev = tokio::time::timeout_at(deadline, q.select_next_some())
                .await
                .expect("lookup timed out");
            if let SwarmEvent::Behaviour(probe::ProbeEvent::Kad(
                kad::Event::OutboundQueryProgressed {
                    result: kad::QueryResult::GetClosestPeers(result),
                    step,
                    ..
                },
            )) = ev
            {
                let peers = match result {
                    Ok(ok) => ok.peers,
                    Err(kad::GetClosestPeersError::Timeout { peers, .. }) => peers,
                };
                if let Some(p) = peers.into_iter().find(|p| p.peer_id == x_id) {
                    break 'outer p.addrs;
                }
                if step.last {
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    x_task.abort();
    let x_listen = x_listen.with(Protocol::P2p(x_id));
    eprintln!("A hands out for X: {addrs:?}");
    assert!(
        addrs.contains(&x_listen),
        "X's real address is missing: {addrs:?}"
    );
    assert!(addrs.len() <= 8, "{} addresses for one peer", addrs.len());
    for addr in &addrs {
        let protos: Vec<Protocol> = addr.iter().collect();
        let plausible = match protos.as_slice() {
            [Protocol::Ip4(ip), Protocol::Tcp(port), ..] => {
                !ip.is_unspecified() && !ip.is_multicast() && *port != 0
            }
            _ => false,
        };
        assert!(plausible, "implausible address handed out: {addr}");
        assert!(
            protos.len() == 2 || matches!(protos[2], Protocol::P2p(_)),
            "unsupported transport handed out: {addr}"
        );
    }
}
