//! `/tally/sync/1` wire format: length-prefixed raw bytes with caps checked before any
//! allocation.
//!
//! ```text
//! request  = len:u32be bytes[len]                      (len <= sync_max_request_bytes)
//!            (a larger len is answered with an error frame without reading the body)
//! response = 0x00 len:u32be bytes[len]                 (len <= sync_max_response_bytes)
//!          | 0x01 code:u8                              (error frame, see RemoteError)
//! ```

use std::io;

use async_trait::async_trait;
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;

use crate::RemoteError;

/// The protocol name.
pub const SYNC_PROTOCOL: StreamProtocol = StreamProtocol::new("/tally/sync/1");

/// An inbound request as the codec read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncRequest {
    Data(Vec<u8>),
    /// The length prefix exceeded the cap: the body was not read. Surfaced to the task (not
    /// as an I/O error, which request-response swallows) so it can score the sender.
    TooLarge(u64),
}

/// A response as it travels on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncResponse {
    Data(Vec<u8>),
    Error(RemoteError),
}

/// A frame over its cap; carried inside `io::Error` so the task can tell it from other
/// I/O failures and score the sender.
#[derive(Debug, thiserror::Error)]
#[error("{what} of {size} bytes exceeds the {limit}-byte cap")]
pub struct FrameTooLarge {
    pub what: &'static str,
    pub size: u64,
    pub limit: usize,
}

#[derive(Debug, Clone)]
pub struct SyncCodec {
    pub max_request_bytes: usize,
    pub max_response_bytes: usize,
}

fn error_code(e: RemoteError) -> u8 {
    match e {
        RemoteError::RateLimited => 1,
        RemoteError::ResponseTooLarge => 2,
        RemoteError::Busy => 3,
        RemoteError::Unavailable => 4,
        RemoteError::RequestTooLarge => 5,
    }
}

fn error_from_code(code: u8) -> RemoteError {
    match code {
        1 => RemoteError::RateLimited,
        2 => RemoteError::ResponseTooLarge,
        3 => RemoteError::Busy,
        5 => RemoteError::RequestTooLarge,
        _ => RemoteError::Unavailable,
    }
}

async fn read_frame<T: AsyncRead + Unpin + Send>(
    io: &mut T,
    limit: usize,
    what: &'static str,
) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len);
    // Checked before allocating: a peer cannot make us reserve more than the cap.
    if len as usize > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            FrameTooLarge {
                what,
                size: u64::from(len),
                limit,
            },
        ));
    }
    let mut buf = vec![0u8; len as usize];
    io.read_exact(&mut buf).await?;
    Ok(buf)
}

async fn write_frame<T: AsyncWrite + Unpin + Send>(
    io: &mut T,
    data: &[u8],
    limit: usize,
    what: &'static str,
) -> io::Result<()> {
    if data.len() > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            FrameTooLarge {
                what,
                size: data.len() as u64,
                limit,
            },
        ));
    }
    let len = u32::try_from(data.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame over u32::MAX"))?;
    io.write_all(&len.to_be_bytes()).await?;
    io.write_all(data).await
}

#[async_trait]
impl libp2p::request_response::Codec for SyncCodec {
    type Protocol = StreamProtocol;
    type Request = SyncRequest;
    type Response = SyncResponse;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<SyncRequest>
    where
        T: AsyncRead + Unpin + Send,
    {
        match read_frame(io, self.max_request_bytes, "sync request").await {
            Ok(data) => Ok(SyncRequest::Data(data)),
            Err(e) => match frame_too_large(&e) {
                Some(f) => Ok(SyncRequest::TooLarge(f.size)),
                None => Err(e),
            },
        }
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<SyncResponse>
    where
        T: AsyncRead + Unpin + Send,
    {
        let mut tag = [0u8; 1];
        io.read_exact(&mut tag).await?;
        match tag[0] {
            0 => Ok(SyncResponse::Data(
                read_frame(io, self.max_response_bytes, "sync response").await?,
            )),
            1 => {
                let mut code = [0u8; 1];
                io.read_exact(&mut code).await?;
                Ok(SyncResponse::Error(error_from_code(code[0])))
            }
            other => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("unknown sync response tag {other}"),
            )),
        }
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: SyncRequest,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        let SyncRequest::Data(req) = req else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "an oversized-request marker cannot be sent",
            ));
        };
        write_frame(io, &req, self.max_request_bytes, "sync request").await?;
        io.close().await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: SyncResponse,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        match res {
            SyncResponse::Data(data) => {
                io.write_all(&[0]).await?;
                write_frame(io, &data, self.max_response_bytes, "sync response").await?;
            }
            SyncResponse::Error(e) => io.write_all(&[1, error_code(e)]).await?,
        }
        io.close().await
    }
}

/// Whether an I/O error (possibly nested in libp2p's stream errors) is a `FrameTooLarge`.
pub fn frame_too_large(e: &io::Error) -> Option<&FrameTooLarge> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<FrameTooLarge>())
}

#[cfg(test)]
mod tests {
    use futures::io::Cursor;
    use libp2p::request_response::Codec;

    use super::*;

    fn codec() -> SyncCodec {
        SyncCodec {
            max_request_bytes: 8,
            max_response_bytes: 16,
        }
    }

    #[tokio::test]
    async fn round_trip_and_caps() {
        let mut c = codec();
        let mut buf = Vec::new();
        c.write_request(
            &SYNC_PROTOCOL,
            &mut Cursor::new(&mut buf),
            SyncRequest::Data(b"abc".to_vec()),
        )
        .await
        .unwrap();
        let got = c
            .read_request(&SYNC_PROTOCOL, &mut Cursor::new(&buf))
            .await
            .unwrap();
        assert_eq!(got, SyncRequest::Data(b"abc".to_vec()));

        // A length prefix over the cap is refused before the body is read.
        let mut huge = u32::MAX.to_be_bytes().to_vec();
        huge.push(1);
        let got = c
            .read_request(&SYNC_PROTOCOL, &mut Cursor::new(&huge))
            .await
            .unwrap();
        assert_eq!(got, SyncRequest::TooLarge(u64::from(u32::MAX)));

        let mut buf = Vec::new();
        let err = c
            .write_response(
                &SYNC_PROTOCOL,
                &mut Cursor::new(&mut buf),
                SyncResponse::Data(vec![0; 17]),
            )
            .await
            .unwrap_err();
        assert!(frame_too_large(&err).is_some());

        for res in [
            SyncResponse::Data(vec![7; 16]),
            SyncResponse::Error(RemoteError::RateLimited),
            SyncResponse::Error(RemoteError::Busy),
        ] {
            let mut buf = Vec::new();
            c.write_response(&SYNC_PROTOCOL, &mut Cursor::new(&mut buf), res.clone())
                .await
                .unwrap();
            let got = c
                .read_response(&SYNC_PROTOCOL, &mut Cursor::new(&buf))
                .await
                .unwrap();
            assert_eq!(got, res);
        }
    }
}
