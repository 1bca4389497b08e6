//! WebSocket connections for the load generator: deliberately small buffers (4 KiB read, no
//! write buffering) and a chosen 127.0.0.x source address; and, for S7, a raw hand-made
//! WebSocket client that reads nothing after the handshake (`connect_stalled`), the masked
//! frames it writes, and the reading of whatever such a connection was left with at the end.

use crate::Failure;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

pub type Socket = WebSocketStream<TcpStream>;

/// A connection (TCP + WebSocket upgrade) that takes longer than this fails.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

fn config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(0).max_write_buffer_size(1 << 20)
}

/// host, port and path of a `ws://host:port/path` URL.
fn split_url(url: &str) -> Result<(String, u16, String), Failure> {
    let request = url.into_client_request()?;
    let uri = request.uri();
    let host = uri.host().ok_or("no host")?.to_owned();
    let port = uri.port_u16().unwrap_or(80);
    let path = uri.path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_else(|| "/".into());
    Ok((host, port, path))
}

async fn tcp_connect(
    host: &str,
    port: u16,
    source: IpAddr,
    recv_buffer: Option<u32>,
) -> Result<TcpStream, Failure> {
    let addr: SocketAddr = tokio::net::lookup_host((host, port)).await?.next().ok_or("no address")?;
    let socket = TcpSocket::new_v4()?;
    if let Some(bytes) = recv_buffer {
        socket.set_recv_buffer_size(bytes)?;
    }
    socket.bind(SocketAddr::new(source, 0))?;
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Connects `url` (ws://host:port/path) from `source` with an optional bearer token.
pub async fn connect(url: &str, source: IpAddr, bearer: Option<&str>) -> Result<Socket, Failure> {
    tokio::time::timeout(CONNECT_TIMEOUT, async {
        let mut request = url.into_client_request()?;
        if let Some(token) = bearer {
            request.headers_mut().insert("Authorization", format!("Bearer {token}").parse()?);
        }
        let (host, port, _) = split_url(url)?;
        let stream = tcp_connect(&host, port, source, None).await?;
        let (socket, _) =
            tokio_tungstenite::client_async_with_config(request, stream, Some(config())).await?;
        Ok(socket)
    })
    .await
    .map_err(|_| format!("connecting {url} took over {CONNECT_TIMEOUT:?}"))?
}

/// The header of one WebSocket frame at the start of `buf`, when all of it is there.
#[derive(Debug, PartialEq)]
pub struct FrameHead {
    pub opcode: u8,
    pub header_len: usize,
    pub payload_len: usize,
}

pub fn frame_head(buf: &[u8]) -> Option<FrameHead> {
    if buf.len() < 2 {
        return None;
    }
    let opcode = buf[0] & 0x0f;
    let masked = buf[1] & 0x80 != 0;
    let (payload_len, mut header_len) = match buf[1] & 0x7f {
        126 => (u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?) as usize, 4),
        127 => (u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?) as usize, 10),
        n => (n as usize, 2),
    };
    if masked {
        header_len += 4;
    }
    (buf.len() >= header_len).then_some(FrameHead { opcode, header_len, payload_len })
}

/// A client text frame: FIN, masked with `key` (clients must mask).
pub fn masked_text(payload: &[u8], key: [u8; 4]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(payload.len() + 14);
    frame.push(0x81);
    match payload.len() {
        n if n < 126 => frame.push(0x80 | n as u8),
        n if n <= 0xffff => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&key);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    frame
}

/// Opens an authenticated WebSocket by hand with a `recv_buffer`-byte receive buffer (set
/// before connecting, so the advertised window stays small), reads exactly the `101` and the
/// `welcome` frame, and returns the bare TCP stream: from here on nobody reads it, so what the
/// server writes piles up in its own buffers.
pub async fn connect_stalled(
    url: &str,
    source: IpAddr,
    bearer: &str,
    recv_buffer: u32,
) -> Result<TcpStream, Failure> {
    tokio::time::timeout(CONNECT_TIMEOUT, async {
        let (host, port, path) = split_url(url)?;
        let mut stream = tcp_connect(&host, port, source, Some(recv_buffer)).await?;
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             Authorization: Bearer {bearer}\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await?;
        // Byte-exact reads: whatever follows the welcome stays in the socket, unread, and a
        // later `drain_for_close` starts at a frame boundary.
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            if head.len() > 16 * 1024 {
                return Err("oversized upgrade response".into());
            }
            head.push(stream.read_u8().await.map_err(|e| format!("during the upgrade: {e}"))?);
        }
        let status = String::from_utf8_lossy(&head).lines().next().unwrap_or("").to_owned();
        if !status.contains(" 101 ") {
            return Err(format!("upgrade refused: {status}").into());
        }
        loop {
            let mut frame = vec![0u8; 2];
            stream.read_exact(&mut frame).await?;
            let extra = match frame[1] & 0x7f {
                126 => 2,
                127 => 8,
                _ => 0,
            } + if frame[1] & 0x80 != 0 { 4 } else { 0 };
            frame.resize(2 + extra, 0);
            stream.read_exact(&mut frame[2..]).await?;
            let head = frame_head(&frame).ok_or("bad frame header")?;
            if head.payload_len > 1 << 20 {
                return Err("oversized frame before welcome".into());
            }
            let mut payload = vec![0u8; head.payload_len];
            stream.read_exact(&mut payload).await?;
            match head.opcode {
                1 => {
                    let text = String::from_utf8_lossy(&payload);
                    if text.contains("\"welcome\"") {
                        return Ok(stream);
                    }
                    return Err(format!("expected welcome, got {text}").into());
                }
                8 => return Err("closed instead of welcome".into()),
                _ => {}
            }
        }
    })
    .await
    .map_err(|_| format!("connecting {url} took over {CONNECT_TIMEOUT:?}"))?
}

/// Reads what a stalled connection still holds, skipping payloads, for at most `within` and
/// `max_bytes`: the code of a close frame if one arrives, else how the reading ended.
pub async fn drain_for_close(
    stream: &mut TcpStream,
    within: Duration,
    max_bytes: usize,
) -> (Option<u16>, String) {
    let deadline = tokio::time::Instant::now() + within;
    let mut buf: Vec<u8> = Vec::new();
    let mut skip = 0usize;
    let mut total = 0usize;
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        if total >= max_bytes {
            return (None, format!("no close frame in the first {max_bytes} bytes"));
        }
        let n = match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Err(_) => return (None, format!("no close frame within {within:?} ({total} bytes read)")),
            Ok(Err(e)) => return (None, io_kind(&e)),
            Ok(Ok(0)) => return (None, format!("eof after {total} bytes, no close frame")),
            Ok(Ok(n)) => n,
        };
        total += n;
        let mut data = &chunk[..n];
        if skip > 0 {
            let s = skip.min(data.len());
            skip -= s;
            data = &data[s..];
        }
        buf.extend_from_slice(data);
        while let Some(head) = frame_head(&buf) {
            if head.opcode == 8 {
                if head.payload_len < 2 {
                    return (None, "close frame without a code".into());
                }
                if buf.len() >= head.header_len + 2 {
                    let code = u16::from_be_bytes([buf[head.header_len], buf[head.header_len + 1]]);
                    return (Some(code), "close frame".into());
                }
                break;
            }
            let whole = head.header_len + head.payload_len;
            if buf.len() >= whole {
                buf.drain(..whole);
            } else {
                skip = whole - buf.len();
                buf.clear();
                break;
            }
        }
    }
}

/// A short name for how a socket operation failed.
pub fn io_kind(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::ConnectionReset => "reset".into(),
        std::io::ErrorKind::BrokenPipe => "broken pipe".into(),
        std::io::ErrorKind::ConnectionAborted => "aborted".into(),
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masked_frames_parse_back() {
        for len in [0usize, 5, 125, 126, 70_000] {
            let payload = vec![b'a'; len];
            let frame = masked_text(&payload, [1, 2, 3, 4]);
            let head = frame_head(&frame).unwrap();
            assert_eq!(head.opcode, 1);
            assert_eq!(head.payload_len, len);
            assert_eq!(frame.len(), head.header_len + len);
            let unmasked: Vec<u8> =
                frame[head.header_len..].iter().enumerate().map(|(i, b)| b ^ [1, 2, 3, 4][i % 4]).collect();
            assert_eq!(unmasked, payload);
        }
        assert_eq!(frame_head(&[0x81]), None);
        assert_eq!(frame_head(&[0x81, 126, 0]), None);
    }
}
