//! Delivery: events and fan-out to connected sessions. `event` (what a session receives),
//! `router` (where each user is connected: this node, later a peer node), `registry` (local
//! sessions by user, presence and watchers). It knows sessions only as
//! `Recipient<SessionEvent>`; it never imports the session or conversation modules.

pub mod event;
pub mod registry;
pub mod router;

pub use event::{Audience, SessionEvent};
pub use registry::{Registry, SessionId};
pub use router::{Publish, PublishBatch, Router};
