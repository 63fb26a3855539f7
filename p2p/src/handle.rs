//! `NetworkHandle`: the clone-able front of the network task.

use tokio::sync::{mpsc, oneshot};

use crate::{
    Command, MessageId, Multiaddr, NetworkError, PeerId, PeerInfo, PenaltyReason, RequestError,
    ResponseChannelId, Topic, Verdict,
};

/// Sends commands to the network task. Cheap to clone; every method waits for room in the
/// bounded command channel (back-pressure), never buffers without limit.
#[derive(Debug, Clone)]
pub struct NetworkHandle {
    commands: mpsc::Sender<Command>,
    local_peer_id: PeerId,
    sync_max_request_bytes: usize,
    sync_max_response_bytes: usize,
}

impl NetworkHandle {
    pub(crate) fn new(
        commands: mpsc::Sender<Command>,
        local_peer_id: PeerId,
        sync_max_request_bytes: usize,
        sync_max_response_bytes: usize,
    ) -> Self {
        NetworkHandle {
            commands,
            local_peer_id,
            sync_max_request_bytes,
            sync_max_response_bytes,
        }
    }

    /// A handle with no network task behind it: every command it sends comes out of the
    /// returned receiver. For tests and simulators that play the network themselves.
    pub fn detached(capacity: usize) -> (Self, mpsc::Receiver<Command>) {
        let (commands, rx) = mpsc::channel(capacity);
        let limits = crate::NetworkConfig::new(String::new(), [0; 32]);
        let handle = NetworkHandle::new(
            commands,
            PeerId::random(),
            limits.sync_max_request_bytes,
            limits.sync_max_response_bytes,
        );
        (handle, rx)
    }

    /// This node's peer id.
    pub fn local_peer_id(&self) -> PeerId {
        self.local_peer_id
    }

    /// The raw command sender, for callers that build `Command`s themselves.
    pub fn sender(&self) -> &mpsc::Sender<Command> {
        &self.commands
    }

    /// Send a raw command.
    pub async fn send(&self, command: Command) -> Result<(), NetworkError> {
        self.commands
            .send(command)
            .await
            .map_err(|_| NetworkError::Shutdown)
    }

    /// Publish `data` on `topic`; returns its message id.
    pub async fn publish(&self, topic: Topic, data: Vec<u8>) -> Result<MessageId, NetworkError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Publish { topic, data, reply }).await?;
        rx.await.map_err(|_| NetworkError::Shutdown)?
    }

    /// Report the verdict on a gossip message (exactly once per `Event::Message`).
    pub async fn validated(
        &self,
        msg_id: MessageId,
        source: PeerId,
        verdict: Verdict,
    ) -> Result<(), NetworkError> {
        self.send(Command::Validated {
            msg_id,
            source,
            verdict,
        })
        .await
    }

    /// Send a `/tally/sync/1` request and wait for the response.
    pub async fn request(&self, peer: PeerId, data: Vec<u8>) -> Result<Vec<u8>, RequestError> {
        if data.len() > self.sync_max_request_bytes {
            return Err(RequestError::RequestTooLarge {
                size: data.len(),
                limit: self.sync_max_request_bytes,
            });
        }
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::Request { peer, data, reply })
            .await
            .map_err(|_| RequestError::Shutdown)?;
        rx.await.map_err(|_| RequestError::Shutdown)?
    }

    /// Answer an inbound request. A response over `sync_max_response_bytes` is not sent:
    /// the requester receives a `ResponseTooLarge` error frame and this returns an error.
    pub async fn respond(
        &self,
        channel: ResponseChannelId,
        data: Vec<u8>,
    ) -> Result<(), NetworkError> {
        let size = data.len();
        let limit = self.sync_max_response_bytes;
        // The task applies the same check (for raw `Command::Respond` users).
        self.send(Command::Respond { channel, data }).await?;
        if size > limit {
            return Err(NetworkError::ResponseTooLarge { size, limit });
        }
        Ok(())
    }

    /// Subtract `points` from a peer's application score.
    pub async fn penalize(
        &self,
        peer: PeerId,
        reason: PenaltyReason,
        points: f64,
    ) -> Result<(), NetworkError> {
        self.send(Command::Penalize {
            peer,
            reason,
            points,
        })
        .await
    }

    /// Snapshot of every known peer.
    pub async fn peers(&self) -> Result<Vec<PeerInfo>, NetworkError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Peers { reply }).await?;
        rx.await.map_err(|_| NetworkError::Shutdown)
    }

    /// Resolves once the network task has stopped (after shutdown).
    pub async fn closed(&self) {
        self.commands.closed().await
    }

    /// Dial an address.
    pub async fn dial(&self, addr: Multiaddr) -> Result<(), NetworkError> {
        self.send(Command::Dial(addr)).await
    }
}
