//! The server entry: [`Server::bind`] starts a node and its HTTP/WebSocket listener on the
//! current actix system and returns a handle (`local_addr`, `shutdown`), so a test can run
//! several nodes in one process; [`serve`] is the binary's loop around it (signals, drain).

use super::transport::AbortableStream;
use crate::config::Config;
use crate::node::{Node, StartError};
use actix_server::ServerHandle;
use actix_web::{App, web};
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
    ///
    /// actix-web's `App` serves every route, under actix-server and actix-http's `HttpService`
    /// built here rather than through `HttpServer`, so that each connection's stream is ours
    /// ([`super::transport::AbortableStream`]): a session can abort a connection whose client
    /// stopped reading, at no cost per connection.
    pub async fn bind(config: Config) -> Result<Server, ServeError> {
        use actix_service::{ServiceFactoryExt, fn_service, map_config};
        let node = Node::start(config.clone()).await?;
        let data = web::Data::new(node.clone());
        let workers = match config.server.workers {
            0 => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            n => n as usize,
        };
        let addr = config.server.http_addr.clone();
        let bind_error = |source| ServeError::Bind { addr: addr.clone(), source };
        let listener = std::net::TcpListener::bind(&addr).map_err(bind_error)?;
        let local_addr = listener.local_addr().map_err(bind_error)?;
        let server = actix_server::Server::build()
            .workers(workers)
            .disable_signals()
            .shutdown_timeout(config.server.shutdown_timeout_ms.div_ceil(1000))
            .listen("switchboard", listener, move || {
                // Called on each worker thread as it starts.
                data.on_workers.adopt(workers);
                let app = App::new().app_data(data.clone()).configure(super::configure);
                fn_service(|io: actix_web::rt::net::TcpStream| async move {
                    let peer = io.peer_addr().ok();
                    let _ = io.set_nodelay(true);
                    Ok::<_, actix_http::error::DispatchError>((
                        AbortableStream::new(io),
                        actix_http::Protocol::Http1,
                        peer,
                    ))
                })
                .and_then(
                    actix_http::HttpService::build()
                        // actix-web's HttpServer defaults: a closing connection first reads
                        // and discards what the client still sends (no reset under its feet).
                        .keep_alive(std::time::Duration::from_secs(5))
                        .client_request_timeout(std::time::Duration::from_secs(5))
                        .client_disconnect_timeout(std::time::Duration::from_secs(1))
                        .on_connect_ext(|io: &AbortableStream, data| {
                            data.insert(io.handle());
                        })
                        .finish(map_config(app, |_| actix_web::dev::AppConfig::default())),
                )
            })
            .map_err(bind_error)?
            .run();
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
