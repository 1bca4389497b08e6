//! switchboard: a chat service. Clients hold WebSockets to a node; a message is sequenced and
//! durably stored by its conversation's owner, acknowledged, then routed to every connected
//! device of its members.
//!
//! Crate map (see ARCHITECTURE.md):
//! - edge: [`http`] (REST + `/v1/ws`), [`session`] (one actor per connection)
//! - core: [`owner`] (seq, idempotency, group commit), [`router`] (delivery),
//!   [`registry`] (sessions, presence), [`reader`] (history and sync), [`conversations`],
//!   [`accounts`]
//! - outside world: [`store`] (traits + backends)
//! - data: [`model`], [`protocol`]; plumbing: [`config`], [`crypto`], [`error`],
//!   [`telemetry`], [`rate_limit`], [`node`] (wiring); [`cli_client`] (the terminal client)

pub mod account;
pub mod cli_client;
pub mod config;
pub mod conversation;
pub mod crypto;
pub mod delivery;
pub mod error;
pub mod http;
pub mod model;
pub mod node;
pub mod protocol;
pub mod rate_limit;
pub mod session;
pub mod store;
pub mod telemetry;

use crate::config::Config;
use crate::node::Node;
use actix_web::{App, HttpServer, web};
use std::time::Duration;

/// Why `serve` stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Start(#[from] node::StartError),
    #[error("cannot listen on {addr} (server.http_addr / SWITCHBOARD_HTTP_ADDR): {source}")]
    Bind { addr: String, source: std::io::Error },
    #[error("server failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Runs a node until SIGTERM or SIGINT, then drains: stop accepting, close every session with
/// 1001 ("reconnect elsewhere"), let queued sends finish storing, stop. Prints
/// `switchboard listening on http://ADDR` on stdout once it accepts connections.
pub async fn serve(config: Config) -> Result<(), ServeError> {
    let node = Node::start(config.clone())?;
    let data = web::Data::new(node.clone());
    let workers = match config.server.workers {
        0 => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        n => n as usize,
    };
    let addr = config.server.http_addr.clone();
    let server = HttpServer::new(move || App::new().app_data(data.clone()).configure(http::configure))
        .workers(workers)
        .disable_signals()
        .shutdown_timeout(config.server.shutdown_timeout_ms.div_ceil(1000))
        .bind(&addr)
        .map_err(|source| ServeError::Bind { addr: addr.clone(), source })?;
    let bound: Vec<String> = server.addrs().iter().map(|a| a.to_string()).collect();
    let server = server.run();
    let handle = server.handle();
    tracing::info!(node = %config.server.node_id, addrs = ?bound, "switchboard started");
    #[allow(clippy::print_stdout)]
    {
        println!("switchboard listening on http://{}", bound.first().map(String::as_str).unwrap_or("?"));
    }
    actix::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown requested: draining");
        handle.pause().await;
        node.drain().await;
        // Give the writers a moment to put the close frames on the wire.
        actix::clock::sleep(Duration::from_millis(200)).await;
        handle.stop(true).await;
    });
    server.await?;
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
