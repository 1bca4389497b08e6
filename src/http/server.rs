//! The server entry: [`Server::bind`] starts a node and its HTTP/WebSocket listener on the
//! current actix system and returns a handle (`local_addr`, `shutdown`), so a test can run
//! several nodes in one process; [`serve`] is the binary's loop around it (signals, drain).

use crate::config::Config;
use crate::node::{Node, StartError};
use actix_web::dev::ServerHandle;
use actix_web::{App, HttpServer, web};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Why a node could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Start(#[from] StartError),
    #[error("cannot listen on {addr} (server.http_addr / SWITCHBOARD_HTTP_ADDR): {source}")]
    Bind { addr: String, source: std::io::Error },
    #[error("server failed: {0}")]
    Io(#[from] std::io::Error),
}

/// A running node.
pub struct Server {
    local_addr: SocketAddr,
    node: Arc<Node>,
    handle: ServerHandle,
    task: actix_rt::task::JoinHandle<std::io::Result<()>>,
}

impl Server {
    /// Starts a node with `config` and listens on `server.http_addr` (port 0 picks one).
    pub async fn bind(config: Config) -> Result<Server, ServeError> {
        let node = Node::start(config.clone()).await?;
        let data = web::Data::new(node.clone());
        let workers = match config.server.workers {
            0 => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            n => n as usize,
        };
        let addr = config.server.http_addr.clone();
        let server = HttpServer::new(move || App::new().app_data(data.clone()).configure(super::configure))
            .workers(workers)
            .on_connect(keep_socket)
            .disable_signals()
            .shutdown_timeout(config.server.shutdown_timeout_ms.div_ceil(1000))
            .bind(&addr)
            .map_err(|source| ServeError::Bind { addr: addr.clone(), source })?;
        let local_addr = *server
            .addrs()
            .first()
            .ok_or_else(|| ServeError::Bind { addr, source: std::io::Error::other("no address bound") })?;
        let server = server.run();
        let handle = server.handle();
        let task = actix_rt::spawn(server);
        tracing::info!(node = %config.server.node_id, addr = %local_addr, "switchboard started");
        Ok(Server { local_addr, node, handle, task })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Drains and stops: stop accepting, close every session with 1001 ("reconnect
    /// elsewhere"), let queued sends finish storing, stop the listener.
    pub async fn shutdown(self) -> Result<(), ServeError> {
        self.handle.pause().await;
        self.node.drain().await;
        // Give the sessions a moment to put the close frames on the wire.
        actix::clock::sleep(Duration::from_millis(200)).await;
        self.handle.stop(true).await;
        self.task.await.map_err(|e| std::io::Error::other(e.to_string()))??;
        Ok(())
    }
}

/// Keeps a duplicate of each connection's descriptor in its connection data, so a session can
/// abort a connection whose client stopped reading (`session::outbox::Outbox::abort`).
fn keep_socket(connection: &dyn std::any::Any, data: &mut actix_web::dev::Extensions) {
    use std::os::fd::AsFd;
    if let Some(tcp) = connection.downcast_ref::<actix_web::rt::net::TcpStream>()
        && let Ok(fd) = tcp.as_fd().try_clone_to_owned()
    {
        data.insert(crate::session::outbox::Socket(Arc::new(fd)));
    }
}

/// Runs a node until SIGTERM or SIGINT, then drains. Prints `switchboard listening on
/// http://ADDR` on stdout once it accepts connections.
pub async fn serve(config: Config) -> Result<(), ServeError> {
    let server = Server::bind(config).await?;
    #[allow(clippy::print_stdout)]
    {
        println!("switchboard listening on http://{}", server.local_addr());
    }
    wait_for_signal().await;
    tracing::info!("shutdown requested: draining");
    server.shutdown().await?;
    tracing::info!("stopped");
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
