//! WebSocket connections for the load generator: deliberately small buffers (4 KiB read, no
//! write buffering) and a chosen 127.0.0.x source address.

use crate::Failure;
use std::net::{IpAddr, SocketAddr};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

pub type Socket = WebSocketStream<TcpStream>;

fn config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(0).max_write_buffer_size(1 << 20)
}

/// Connects `url` (ws://host:port/path) from `source` with an optional bearer token.
pub async fn connect(url: &str, source: IpAddr, bearer: Option<&str>) -> Result<Socket, Failure> {
    let mut request = url.into_client_request()?;
    if let Some(token) = bearer {
        request.headers_mut().insert("Authorization", format!("Bearer {token}").parse()?);
    }
    let host = request.uri().host().ok_or("no host")?.to_owned();
    let port = request.uri().port_u16().unwrap_or(80);
    let addr: SocketAddr =
        tokio::net::lookup_host((host.as_str(), port)).await?.next().ok_or("no address")?;
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    let (socket, _) = tokio_tungstenite::client_async_with_config(request, stream, Some(config())).await?;
    Ok(socket)
}
