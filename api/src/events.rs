//! The server-sent events of `GET /v1/events`: the event name is the kind, the data one
//! JSON object.

use serde::{Deserialize, Serialize};

/// `block`: a block was committed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockEvent {
    pub height: u64,
    #[serde(default)]
    pub hash: String,
    /// How many txs it holds.
    #[serde(default)]
    pub txs: u64,
    #[serde(default)]
    pub time_ms: u64,
}

/// `tx`: a tx was committed (one per tx of each block, before the block's event).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxEvent {
    pub tx_id: String,
    #[serde(default)]
    pub height: u64,
    #[serde(default)]
    pub index: u32,
}

/// `lagged`: the stream fell behind and `missed` events were dropped; poll to catch up.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaggedEvent {
    pub missed: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Block(BlockEvent),
    Tx(TxEvent),
    Lagged(LaggedEvent),
}

impl Event {
    /// The SSE event name.
    pub fn name(&self) -> &'static str {
        match self {
            Event::Block(_) => "block",
            Event::Tx(_) => "tx",
            Event::Lagged(_) => "lagged",
        }
    }

    /// The SSE data: the event's JSON object.
    pub fn data(&self) -> String {
        let json = match self {
            Event::Block(e) => serde_json::to_string(e),
            Event::Tx(e) => serde_json::to_string(e),
            Event::Lagged(e) => serde_json::to_string(e),
        };
        // Structs of numbers and strings always serialise.
        json.unwrap_or_default()
    }

    /// Reads an event. Unknown names and undecodable data are `None`: newer nodes may
    /// send more kinds, and a client skips what it does not know.
    pub fn parse(name: &str, data: &str) -> Option<Event> {
        match name {
            "block" => serde_json::from_str(data).ok().map(Event::Block),
            "tx" => serde_json::from_str(data).ok().map(Event::Tx),
            "lagged" => serde_json::from_str(data).ok().map(Event::Lagged),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_and_unknown_ones_are_skipped() {
        let events = [
            Event::Block(BlockEvent {
                height: 3,
                hash: "ab".into(),
                txs: 2,
                time_ms: 9,
            }),
            Event::Tx(TxEvent {
                tx_id: "cd".into(),
                height: 3,
                index: 1,
            }),
            Event::Lagged(LaggedEvent { missed: 7 }),
        ];
        for e in events {
            assert_eq!(Event::parse(e.name(), &e.data()), Some(e.clone()));
        }
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(
                &Event::Lagged(LaggedEvent { missed: 7 }).data()
            )
            .unwrap(),
            serde_json::json!({"missed": 7})
        );
        assert_eq!(Event::parse("vote", "{}"), None);
        assert_eq!(Event::parse("tx", "not json"), None);
    }
}
