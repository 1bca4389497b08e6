//! Wire framing for cluster links.
//!
//! Owns the byte format spoken between cluster nodes: every frame is a big-endian `u32` payload
//! length followed by that many bytes of postcard-encoded [`Envelope`]. This module knows nothing
//! about connections, peers or authentication; it only encodes, decodes and bounds frames, and
//! provides async read/write helpers over any tokio `AsyncRead` / `AsyncWrite`.

use std::io;

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Version of the link protocol; exchanged in the handshake, a mismatch refuses the connection.
pub const PROTOCOL_VERSION: u16 = 1;
/// Size of the length prefix that precedes every payload.
pub const LEN_PREFIX: usize = 4;
/// Largest payload accepted or produced (16 MiB). A larger declared length is an error before
/// anything is allocated for it.
pub const MAX_FRAME_LEN: usize = 16 * 1024 * 1024;
/// Length of handshake nonces.
pub const NONCE_LEN: usize = 32;
/// Length of handshake MACs (HMAC-SHA256).
pub const MAC_LEN: usize = 32;

/// A read buffer whose capacity grew past this is shrunk back once smaller frames follow, so one
/// large frame does not pin 16 MiB for the life of a connection.
const RETAINED_READ_CAPACITY: usize = 1024 * 1024;

/// Everything that travels on a link. `T` is the application's message type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Envelope<T> {
    /// Dialer -> acceptor, first frame of the handshake.
    Hello { version: u16, node: String, nonce: [u8; NONCE_LEN] },
    /// Acceptor -> dialer: the acceptor's nonce and its proof of knowing the cluster secret.
    Challenge { version: u16, node: String, nonce: [u8; NONCE_LEN], mac: [u8; MAC_LEN] },
    /// Dialer -> acceptor: the dialer's proof of knowing the cluster secret.
    Proof { mac: [u8; MAC_LEN] },
    /// A request; answered by a `Reply` with the same id.
    Request { id: u64, body: T },
    /// The answer to the `Request` with the same id.
    Reply { id: u64, body: T },
    /// A one-way message.
    Cast { body: T },
    /// Heartbeat; `at` is opaque to the receiver and echoed back in a `Pong`.
    Ping { at: u64 },
    /// Heartbeat answer.
    Pong { at: u64 },
}

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The stream ended cleanly at a frame boundary.
    #[error("stream closed")]
    Closed,
    /// The stream ended inside a frame (truncated input).
    #[error("stream ended inside a frame")]
    Truncated,
    /// A declared or encoded payload is larger than allowed.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    /// The payload is not a valid envelope (or has trailing bytes).
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// The value could not be encoded.
    #[error("cannot encode frame: {0}")]
    Encode(String),
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
}

/// Appends one complete frame (length prefix + payload) to `out`; returns the frame's total size.
/// On error `out` is left as it was.
pub fn encode_into<T: Serialize>(envelope: &Envelope<T>, out: &mut BytesMut) -> Result<usize, FrameError> {
    let start = out.len();
    out.put_u32(0);
    if let Err(err) = postcard::to_io(envelope, (&mut *out).writer()) {
        out.truncate(start);
        return Err(FrameError::Encode(err.to_string()));
    }
    let payload_len = out.len() - start - LEN_PREFIX;
    if payload_len > MAX_FRAME_LEN {
        out.truncate(start);
        return Err(FrameError::TooLarge { len: payload_len, max: MAX_FRAME_LEN });
    }
    // payload_len <= MAX_FRAME_LEN < u32::MAX, so the cast is lossless.
    out[start..start + LEN_PREFIX].copy_from_slice(&(payload_len as u32).to_be_bytes());
    Ok(out.len() - start)
}

/// Encodes one complete frame into its own buffer (what the link's outbound queues carry).
pub fn encode_frame<T: Serialize>(envelope: &Envelope<T>) -> Result<Bytes, FrameError> {
    let mut out = BytesMut::with_capacity(64);
    encode_into(envelope, &mut out)?;
    Ok(out.freeze())
}

/// Decodes a payload (without its length prefix). Trailing bytes are an error.
pub fn decode_payload<T: DeserializeOwned>(payload: &[u8]) -> Result<Envelope<T>, FrameError> {
    let (envelope, rest) =
        postcard::take_from_bytes(payload).map_err(|err| FrameError::Malformed(err.to_string()))?;
    if !rest.is_empty() {
        return Err(FrameError::Malformed(format!("{} trailing bytes", rest.len())));
    }
    Ok(envelope)
}

/// Encodes `envelope` into `buf` (cleared first) and writes it with a single `write_all`.
///
/// Encoding happens before the returned future is first polled, so the future does not borrow
/// `envelope` (and is `Send` whenever the writer is, whatever `T` is).
pub fn write_frame<'a, W, T>(
    writer: &'a mut W,
    envelope: &Envelope<T>,
    buf: &'a mut BytesMut,
) -> impl Future<Output = Result<(), FrameError>> + Send + 'a
where
    W: AsyncWrite + Unpin + Send,
    T: Serialize,
{
    buf.clear();
    let encoded = encode_into(envelope, buf).map(drop);
    async move {
        encoded?;
        writer.write_all(buf).await?;
        Ok(())
    }
}

/// Reads one frame whose payload may be at most `max_len` bytes, using `buf` as reusable payload
/// storage. Returns the envelope and the frame's size on the wire (prefix included).
///
/// Never reads past the end of the frame, so it is safe on an unbuffered stream whose later bytes
/// belong to someone else. The payload buffer only grows as bytes actually arrive.
pub async fn read_frame<R, T>(
    reader: &mut R,
    buf: &mut Vec<u8>,
    max_len: usize,
) -> Result<(Envelope<T>, usize), FrameError>
where
    R: AsyncRead + Unpin,
    T: DeserializeOwned,
{
    let mut prefix = [0u8; LEN_PREFIX];
    let first = reader.read(&mut prefix).await?;
    if first == 0 {
        return Err(FrameError::Closed);
    }
    if first < LEN_PREFIX {
        reader.read_exact(&mut prefix[first..]).await.map_err(eof_is_truncation)?;
    }
    let len = u32::from_be_bytes(prefix) as usize;
    if len > max_len {
        return Err(FrameError::TooLarge { len, max: max_len });
    }
    buf.clear();
    if buf.capacity() > RETAINED_READ_CAPACITY && len <= RETAINED_READ_CAPACITY {
        buf.shrink_to(RETAINED_READ_CAPACITY);
    }
    let read = (&mut *reader).take(len as u64).read_to_end(buf).await?;
    if read < len {
        return Err(FrameError::Truncated);
    }
    let envelope = decode_payload(buf)?;
    Ok((envelope, LEN_PREFIX + len))
}

fn eof_is_truncation(err: io::Error) -> FrameError {
    if err.kind() == io::ErrorKind::UnexpectedEof { FrameError::Truncated } else { FrameError::Io(err) }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Env = Envelope<Vec<String>>;

    fn samples() -> Vec<Env> {
        vec![
            Envelope::Hello { version: PROTOCOL_VERSION, node: "node1".into(), nonce: [7; NONCE_LEN] },
            Envelope::Challenge { version: 1, node: "n2".into(), nonce: [1; NONCE_LEN], mac: [2; MAC_LEN] },
            Envelope::Proof { mac: [9; MAC_LEN] },
            Envelope::Request { id: u64::MAX, body: vec!["a".into(), "ü".into()] },
            Envelope::Reply { id: 0, body: vec![] },
            Envelope::Cast { body: vec!["x".repeat(1000)] },
            Envelope::Ping { at: 12345 },
            Envelope::Pong { at: 0 },
        ]
    }

    #[tokio::test]
    async fn roundtrip_through_a_stream() {
        let mut wire = Vec::new();
        let mut wbuf = BytesMut::new();
        for env in samples() {
            write_frame(&mut wire, &env, &mut wbuf).await.unwrap();
        }
        let mut reader = &wire[..];
        let mut rbuf = Vec::new();
        let mut total = 0;
        for expected in samples() {
            let (got, size): (Env, usize) = read_frame(&mut reader, &mut rbuf, MAX_FRAME_LEN).await.unwrap();
            assert_eq!(got, expected);
            total += size;
        }
        assert_eq!(total, wire.len());
        assert!(matches!(
            read_frame::<_, Vec<String>>(&mut reader, &mut rbuf, MAX_FRAME_LEN).await,
            Err(FrameError::Closed)
        ));
    }

    #[test]
    fn encode_frame_matches_prefix_and_decode() {
        let env: Env = Envelope::Request { id: 42, body: vec!["hi".into()] };
        let bytes = encode_frame(&env).unwrap();
        let len = u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize;
        assert_eq!(len, bytes.len() - LEN_PREFIX);
        assert_eq!(decode_payload::<Vec<String>>(&bytes[LEN_PREFIX..]).unwrap(), env);
    }

    #[tokio::test]
    async fn oversize_declared_length_is_refused_before_reading() {
        // Declares 16 MiB + 1 but sends nothing after: must fail on the prefix alone.
        let wire = ((MAX_FRAME_LEN + 1) as u32).to_be_bytes();
        let mut rbuf = Vec::new();
        let err = read_frame::<_, u8>(&mut &wire[..], &mut rbuf, MAX_FRAME_LEN).await.unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { len, .. } if len == MAX_FRAME_LEN + 1));
        assert_eq!(rbuf.capacity(), 0, "nothing allocated for a refused frame");
        // A smaller caller-chosen limit applies too.
        let wire = 100u32.to_be_bytes();
        let err = read_frame::<_, u8>(&mut &wire[..], &mut rbuf, 64).await.unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { len: 100, max: 64 }));
    }

    #[test]
    fn oversize_payload_is_refused_on_encode() {
        let env = Envelope::Cast { body: vec![0u8; MAX_FRAME_LEN + 1] };
        let mut out = BytesMut::from(&b"keep"[..]);
        assert!(matches!(encode_into(&env, &mut out), Err(FrameError::TooLarge { .. })));
        assert_eq!(&out[..], b"keep", "buffer restored after a failed encode");
    }

    #[tokio::test]
    async fn truncated_input_is_an_error() {
        let env: Env = Envelope::Cast { body: vec!["hello".into()] };
        let bytes = encode_frame(&env).unwrap();
        let mut rbuf = Vec::new();
        for cut in [1, 3, LEN_PREFIX, LEN_PREFIX + 1, bytes.len() - 1] {
            let err =
                read_frame::<_, Vec<String>>(&mut &bytes[..cut], &mut rbuf, MAX_FRAME_LEN).await.unwrap_err();
            assert!(matches!(err, FrameError::Truncated), "cut at {cut}: {err:?}");
        }
    }

    #[tokio::test]
    async fn malformed_payloads_are_errors_not_panics() {
        let mut rbuf = Vec::new();
        // Unknown variant tag, garbage, trailing bytes, truncated inner data.
        let mut trailing = encode_frame(&Envelope::<u8>::Ping { at: 1 }).unwrap().to_vec();
        trailing.push(0);
        let len = (trailing.len() - LEN_PREFIX) as u32;
        trailing[..4].copy_from_slice(&len.to_be_bytes());
        let cases: Vec<Vec<u8>> = vec![
            vec![0, 0, 0, 1, 200],
            vec![0, 0, 0, 3, 0xff, 0xff, 0xff],
            vec![0, 0, 0, 2, 3, 0x80],
            trailing,
            vec![0, 0, 0, 0],
        ];
        for wire in cases {
            let res = read_frame::<_, String>(&mut &wire[..], &mut rbuf, MAX_FRAME_LEN).await;
            assert!(matches!(res, Err(FrameError::Malformed(_))), "{wire:?}: {res:?}");
        }
    }
}
