//! switchboard: a chat service. Clients hold WebSockets to a node; a message is sequenced and
//! durably stored by its conversation's owner, acknowledged, then routed to every connected
//! device of its members.
//!
//! Crate map (see ARCHITECTURE.md). Data flows one way: edge → session → conversation →
//! store; conversation feeds delivery, delivery feeds sessions.
//! - edge: [`http`] (REST, the WebSocket upgrade, [`Server::bind`]), [`session`] (one actor
//!   per connection, its byte-bounded outbox, streamed sync)
//! - [`conversation`]: owner shards (seq, idempotency, group commit, receipts), directory,
//!   history reads
//! - [`delivery`]: events, the Router, the Registry (local sessions, presence)
//! - [`cluster`]: several nodes as one: placement and lease, membership, the inter-node link
//! - [`account`]: accounts, tokens, login limits
//! - outside world: [`store`] (one trait per role + backends)
//! - data: [`model`], [`protocol`]; plumbing: [`config`], [`crypto`], [`error`],
//!   [`telemetry`], [`rate_limit`], [`node`] (wiring); [`cli_client`] (the terminal client)

pub mod account;
pub mod attachment;
pub mod cli_client;
pub mod cluster;
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

pub use http::server::{ServeError, Server, serve};
