//! Delivery: events and fan-out to connected sessions. `event` (what a session receives),
//! `router` (this node's sessions and, in a cluster, `remote`: once per other node holding
//! sessions of the audience), `registry` (local sessions by user, presence and watchers). It knows sessions only as
//! `Recipient<SessionEvent>`; it never imports the session or conversation modules.

pub mod event;
pub mod registry;
pub mod remote;
pub mod router;

pub use event::{Audience, SessionEvent};
pub use registry::{Registry, SessionId};
pub use router::{Publish, PublishBatch, Router};
