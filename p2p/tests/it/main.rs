//! Integration tests of the network task: real libp2p over loopback, ports 0, every wait
//! bounded by a deadline. Each test uses its own 127.x.y.z addresses.

mod support;

mod ban;
mod gossip;
mod quic;
mod sync;
