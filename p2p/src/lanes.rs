//! The queues between the network task and the node, read in strict priority order.
//!
//! All topics used to share one 4,096-message channel: a flood of tx batches (up to 1,024
//! txs each, counted as one message) filled it and consensus messages were dropped with
//! the txs (issue 17, item 7). Now each kind of event waits on its own bounded queue,
//! bounded in events and in payload bytes, and the node is handed the consensus queue
//! first, then sync requests, then txs. The node still reads one `mpsc::Receiver<Event>`:
//! the task moves the next event by priority into it whenever it has room (capacity
//! [`HANDOFF`]), so a consensus message waits behind at most that many tx events already
//! handed over.

use std::collections::VecDeque;

use crate::{Event, NetworkConfig, Topic};

/// Capacity of the channel the node reads: events already handed over cannot be
/// reordered any more, so it is kept short.
pub const HANDOFF: usize = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// Consensus messages and peer events (connected, disconnected, banned, listening):
    /// the node's view of its peers stays in order with their votes.
    Consensus,
    /// Inbound sync requests (also bounded by `max_pending_inbound_requests`).
    Requests,
    /// Tx and tx-batch messages.
    Tx,
}

impl Lane {
    pub fn of(event: &Event) -> Lane {
        match event {
            Event::Message {
                topic: Topic::Consensus | Topic::Proposal,
                ..
            } => Lane::Consensus,
            Event::Message { .. } => Lane::Tx,
            Event::Request { .. } => Lane::Requests,
            Event::PeerConnected(_)
            | Event::PeerDisconnected(_)
            | Event::PeerBanned { .. }
            | Event::Listening(_) => Lane::Consensus,
        }
    }
}

struct Queue {
    events: VecDeque<(Event, usize)>,
    bytes: usize,
    max_events: usize,
    max_bytes: usize,
}

impl Queue {
    fn new(max_events: usize, max_bytes: usize) -> Self {
        Queue {
            events: VecDeque::new(),
            bytes: 0,
            max_events: max_events.max(1),
            max_bytes,
        }
    }

    fn push(&mut self, event: Event) -> bool {
        let size = payload_len(&event);
        let full = self.events.len() >= self.max_events
            || (!self.events.is_empty() && self.bytes.saturating_add(size) > self.max_bytes);
        if !full {
            self.bytes += size;
            self.events.push_back((event, size));
        }
        !full
    }

    fn pop(&mut self) -> Option<Event> {
        let (event, size) = self.events.pop_front()?;
        self.bytes -= size;
        Some(event)
    }
}

fn payload_len(event: &Event) -> usize {
    match event {
        Event::Message { data, .. } | Event::Request { data, .. } => data.len(),
        _ => 0,
    }
}

/// The three queues, highest priority first.
pub struct Lanes {
    queues: [Queue; 3],
}

impl Lanes {
    pub fn new(cfg: &NetworkConfig) -> Self {
        Lanes {
            queues: [
                Queue::new(cfg.consensus_event_buffer, cfg.event_buffer_bytes),
                Queue::new(cfg.max_pending_inbound_requests, cfg.event_buffer_bytes),
                Queue::new(cfg.event_buffer, cfg.event_buffer_bytes),
            ],
        }
    }

    fn index(lane: Lane) -> usize {
        match lane {
            Lane::Consensus => 0,
            Lane::Requests => 1,
            Lane::Tx => 2,
        }
    }

    /// Queue `event` on its lane; false (and the event is dropped) when that lane is full.
    pub fn push(&mut self, event: Event) -> bool {
        let lane = Lane::of(&event);
        self.queues[Self::index(lane)].push(event)
    }

    /// The next event for the node: the oldest of the highest-priority non-empty lane.
    pub fn pop(&mut self) -> Option<Event> {
        self.queues.iter_mut().find_map(Queue::pop)
    }

    pub fn is_empty(&self) -> bool {
        self.queues.iter().all(|q| q.events.is_empty())
    }

    pub fn clear(&mut self) {
        for q in &mut self.queues {
            q.events.clear();
            q.bytes = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{MessageId, PeerId};

    fn msg(topic: Topic, len: usize) -> Event {
        Event::Message {
            topic,
            msg_id: MessageId([0; 32]),
            source: PeerId::random(),
            author: None,
            data: vec![0; len],
        }
    }

    #[test]
    fn consensus_first_and_tx_flood_cannot_fill_it() {
        let cfg = NetworkConfig {
            event_buffer: 2,
            consensus_event_buffer: 2,
            event_buffer_bytes: 100,
            ..NetworkConfig::default()
        };
        let mut lanes = Lanes::new(&cfg);
        assert!(lanes.push(msg(Topic::TxBatch, 10)));
        assert!(lanes.push(msg(Topic::Tx, 10)));
        assert!(!lanes.push(msg(Topic::Tx, 10)), "tx lane full");
        assert!(lanes.push(msg(Topic::Consensus, 10)));
        assert!(lanes.push(Event::PeerConnected(PeerId::random())));
        assert!(!lanes.push(msg(Topic::Consensus, 1)), "2 events");
        assert!(matches!(
            lanes.pop(),
            Some(Event::Message {
                topic: Topic::Consensus,
                ..
            })
        ));
        assert!(matches!(lanes.pop(), Some(Event::PeerConnected(_))));
        assert!(matches!(
            lanes.pop(),
            Some(Event::Message {
                topic: Topic::TxBatch,
                ..
            })
        ));
        assert!(lanes.pop().is_some());
        assert!(lanes.pop().is_none());
        assert!(lanes.is_empty());
    }

    #[test]
    fn lanes_are_bounded_in_bytes() {
        let cfg = NetworkConfig {
            event_buffer: 100,
            event_buffer_bytes: 100,
            ..NetworkConfig::default()
        };
        let mut lanes = Lanes::new(&cfg);
        // An empty lane takes one message whatever its size.
        assert!(lanes.push(msg(Topic::TxBatch, 500)));
        assert!(!lanes.push(msg(Topic::Tx, 1)));
        lanes.pop();
        assert!(lanes.push(msg(Topic::Tx, 60)));
        assert!(lanes.push(msg(Topic::Tx, 40)));
        assert!(!lanes.push(msg(Topic::Tx, 1)));
    }
}
