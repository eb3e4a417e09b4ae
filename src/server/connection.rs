//! One client connection: framing, header decoding, dispatch, and responses
//! in request order.
//!
//! Wire layout of a request: `length: i32 BE` then `length` bytes holding the
//! request header (api_key i16, api_version i16, correlation_id i32,
//! client_id nullable string, tagged fields from header v2) and the body.
//!
//! Pipelining: a reader task reads frames and starts a handler task for each,
//! in order; a writer task awaits the handler tasks in the same order and
//! writes their responses. At most `IN_FLIGHT_PER_CONNECTION_MAX` requests are
//! outstanding; past that the reader stops reading (TCP backpressure).
//! Effects keep request order too (`ordering.rs`): each handler task first
//! waits for what its kind needs of the requests before it (a write for the
//! previous write's placement, a read for the earlier writes' completion, a
//! barrier for everything), so appends to a partition, commits of a group and
//! topic changes take effect in the order the client sent them.
//!
//! Bad input closes the connection with a logged reason: a length below 8 or
//! above `max_request_bytes`, an unknown API key, an unsupported version of
//! any API but ApiVersions, an undecodable header or body. ApiVersions with
//! an unsupported version is answered with UNSUPPORTED_VERSION in the v0
//! format, as Kafka does, so clients can downgrade.

use std::rc::Rc;
use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};
use futures::io::{AsyncReadExt, AsyncWriteExt};
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind, ResponseHeader, ResponseKind};
use kafka_protocol::protocol::{Decodable, Encodable};
use tracing::{debug, warn};

use crate::constants::IN_FLIGHT_PER_CONNECTION_MAX;
use crate::runtime::{self, TcpStream};
use crate::server::handlers::{self, RequestContext};
use crate::server::ordering::{self, Sequencer};
use crate::server::zero_copy::{Frame, FrameBuf};
use crate::shard::Shard;

/// Why a connection was closed by the broker.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    #[error("socket error: {0}")]
    Io(#[from] std::io::Error),
    #[error("frame length {0} out of bounds (8..={1})")]
    FrameLength(i64, usize),
    #[error("unknown API key {0}")]
    UnknownApiKey(i16),
    #[error("unsupported version {version} of {key:?}")]
    UnsupportedVersion { key: ApiKey, version: i16 },
    #[error("cannot decode {key:?} v{version}: {reason}")]
    Decode {
        key: ApiKey,
        version: i16,
        reason: String,
    },
    #[error("cannot encode response: {0}")]
    Encode(String),
    #[error("handler failed: {0}")]
    Handler(String),
    #[error("not ready: {0}")]
    NotReady(&'static str),
}

/// A response ready to write: the full frame, length prefix included, in parts (a Fetch
/// response's records are the stored buffers themselves, `zero_copy`), or nothing (acks=0
/// produce).
type Reply = Result<Option<Frame>, ConnectionError>;

/// Serve one connection until the client closes it or sends bad input.
pub async fn serve(shard: Rc<Shard>, stream: TcpStream) {
    let peer = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let _ = stream.set_nodelay(true);
    // Valid while either half lives (they share the stream); the writer uses it for vectored
    // sends.
    let fd = std::os::fd::AsRawFd::as_raw_fd(&stream);
    let (reader, writer) = stream.split();
    let (tx, rx) = runtime::local_channel::<Queued>(IN_FLIGHT_PER_CONNECTION_MAX);

    let writer_task = runtime::spawn(write_loop(writer, fd, rx));
    let read_result = read_loop(shard.clone(), reader, fd, tx).await;
    // The reader dropped its sender: the writer drains what is in flight.
    let write_result = writer_task.await;
    match read_result.and(write_result) {
        Ok(()) => debug!(shard = %shard.id, %peer, "connection closed by client"),
        Err(ConnectionError::Io(e)) => {
            debug!(shard = %shard.id, %peer, error = %e, "connection closed")
        }
        Err(ConnectionError::NotReady(why)) => {
            debug!(shard = %shard.id, %peer, reason = why, "closing connection: the broker is not ready")
        }
        Err(e) => {
            crate::metrics::bad_input_close();
            warn!(shard = %shard.id, %peer, reason = %e, "closing connection")
        }
    }
}

async fn write_loop(
    mut writer: futures::io::WriteHalf<TcpStream>,
    fd: std::os::fd::RawFd,
    rx: runtime::LocalReceiver<Queued>,
) -> Result<(), ConnectionError> {
    while let Some((in_flight, task)) = rx.recv().await {
        if let Some(frame) = task.await? {
            match &frame.parts[..] {
                [one] => writer.write_all(one).await?,
                parts => runtime::write_parts(&mut writer, fd, parts).await?,
            }
            crate::metrics::bytes_out(frame.len());
        }
        // Answered: a graceful stop waits for this, not just the handler.
        drop(in_flight);
    }
    let _ = writer.close().await;
    Ok(())
}

async fn read_loop(
    shard: Rc<Shard>,
    mut reader: futures::io::ReadHalf<TcpStream>,
    fd: std::os::fd::RawFd,
    tx: runtime::LocalSender<Queued>,
) -> Result<(), ConnectionError> {
    let max = shard.config.max_request_bytes;
    let mut sequencer = Sequencer::default();
    loop {
        let mut len_buf = [0u8; 4];
        match reader.read_exact(&mut len_buf).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        let len = i32::from_be_bytes(len_buf);
        if len < 8 || len as usize > max {
            return Err(ConnectionError::FrameLength(i64::from(len), max));
        }
        let frame = runtime::read_frame(&mut reader, fd, len as usize).await?;
        let started = Instant::now();
        crate::metrics::bytes_in(4 + frame.len());
        if shard.stopping.get() {
            // Graceful stop: take no new requests; the client retries
            // elsewhere or after the restart.
            return Ok(());
        }
        let task = start_request(shard.clone(), frame.freeze(), started, &mut sequencer)?;
        if tx.send((InFlight::new(shard.clone()), task)).await.is_err() {
            // The writer stopped (socket error): stop reading.
            return Ok(());
        }
    }
}

/// Decode the header, check the API and version, and start the handler.
/// `started` is when the frame had been read: the request's latency runs
/// from there to its response encoded.
/// A request frame (without its length prefix), decoded.
// Returned by value and destructured at once: boxing the large variant would
// cost an allocation per request for nothing.
#[allow(clippy::large_enum_variant)]
pub enum Decoded {
    /// An API and version we serve: the handler runs.
    Request {
        key: ApiKey,
        version: i16,
        header: RequestHeader,
        request: RequestKind,
    },
    /// ApiVersions in a version we do not serve: answered in v0 with
    /// UNSUPPORTED_VERSION so the client can downgrade.
    UnsupportedApiVersions { correlation_id: i32 },
}

/// Check the API key and version and decode the header and body of one
/// frame (at least 8 bytes: the reader checks the length). Pure: the fuzz
/// target `request_frame` drives it with arbitrary bytes; any input gives
/// `Ok` or a `ConnectionError`, never a panic.
pub fn decode_request(mut frame: Bytes) -> Result<Decoded, ConnectionError> {
    if frame.len() < 8 {
        return Err(ConnectionError::FrameLength(frame.len() as i64, usize::MAX));
    }
    let raw_key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let key = ApiKey::try_from(raw_key).map_err(|_| ConnectionError::UnknownApiKey(raw_key))?;
    let Some(range) = handlers::supported_versions(key) else {
        return Err(ConnectionError::UnknownApiKey(raw_key));
    };
    if version < range.min || version > range.max {
        if key == ApiKey::ApiVersions {
            return Ok(Decoded::UnsupportedApiVersions { correlation_id });
        }
        return Err(ConnectionError::UnsupportedVersion { key, version });
    }
    let decode_err = |reason: String| ConnectionError::Decode {
        key,
        version,
        reason,
    };
    let header = RequestHeader::decode(&mut frame, key.request_header_version(version))
        .map_err(|e| decode_err(e.to_string()))?;
    let request =
        RequestKind::decode(key, &mut frame, version).map_err(|e| decode_err(e.to_string()))?;
    Ok(Decoded::Request {
        key,
        version,
        header,
        request,
    })
}

pub(crate) fn start_request(
    shard: Rc<Shard>,
    frame: Bytes,
    started: Instant,
    sequencer: &mut Sequencer,
) -> Result<runtime::Task<Reply>, ConnectionError> {
    let raw_key = i16::from_be_bytes([frame[0], frame[1]]);
    let (key, version, header, request) = match decode_request(frame)? {
        Decoded::Request {
            key,
            version,
            header,
            request,
        } => (key, version, header, request),
        Decoded::UnsupportedApiVersions { correlation_id } => {
            // Answer in v0 so any client can read it, then carry on.
            let body = handlers::api_versions::unsupported_version_response();
            let frame = encode_response(
                ApiKey::ApiVersions,
                0,
                correlation_id,
                &ResponseKind::ApiVersions(body),
            )?;
            crate::metrics::request_done(raw_key, started);
            return Ok(runtime::spawn(async move { Ok(Some(frame)) }));
        }
    };
    let kind = ordering::kind_of(&request, shard.config.auto_create_topics);
    let (prerequisites, completion) = sequencer.admit(kind);
    let ctx = RequestContext {
        shard,
        api_key: key,
        version,
        header,
        completion,
    };
    Ok(runtime::spawn(async move {
        prerequisites.wait().await;
        let response = handlers::dispatch(&ctx, request).await;
        let response = response.map_err(|e| match e {
            handlers::HandlerError::NotReady(why) => ConnectionError::NotReady(why),
            e => ConnectionError::Handler(e.to_string()),
        })?;
        let frame = match response {
            Some(body) => Some(encode_response(
                key,
                version,
                ctx.header.correlation_id,
                &body,
            )?),
            None => None,
        };
        crate::metrics::request_done(raw_key, started);
        Ok(frame)
    }))
}

/// Encode a response frame: length, header, body.
pub fn encode_response(
    key: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &ResponseKind,
) -> Result<Frame, ConnectionError> {
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    if let ResponseKind::Fetch(r) = body {
        // Records are placeholders (`zero_copy`): the frame's parts are the stored buffers.
        let mut buf = FrameBuf::with_capacity(1024);
        header
            .encode(&mut buf, key.response_header_version(version))
            .map_err(|e| ConnectionError::Encode(e.to_string()))?;
        r.encode(&mut buf, version)
            .map_err(|e| ConnectionError::Encode(e.to_string()))?;
        return buf
            .finish_framed()
            .map_err(|e| ConnectionError::Encode(e.to_string()));
    }
    let mut out = BytesMut::with_capacity(256);
    out.put_i32(0);
    header
        .encode(&mut out, key.response_header_version(version))
        .map_err(|e| ConnectionError::Encode(e.to_string()))?;
    body.encode(&mut out, version)
        .map_err(|e| ConnectionError::Encode(e.to_string()))?;
    let len = (out.len() - 4) as i32;
    out[..4].copy_from_slice(&len.to_be_bytes());
    Ok(Frame::one(out.freeze()))
}

/// A request on its way to the writer: counted in `Shard::in_flight` until
/// its response is written.
type Queued = (InFlight, runtime::Task<Reply>);

/// Counts a request in `Shard::in_flight` from when its handler starts
/// until its response is written to the socket, even if its task is
/// cancelled: a graceful stop waits until requests are answered, not just
/// handled.
struct InFlight(Rc<Shard>);

impl InFlight {
    fn new(shard: Rc<Shard>) -> Self {
        shard.in_flight.set(shard.in_flight.get() + 1);
        Self(shard)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.set(self.0.in_flight.get() - 1);
    }
}
