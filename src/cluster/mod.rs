//! Several nodes as one service: `placement` (rendezvous owner of each conversation over the
//! live nodes, the lease), `membership` (the loop that renews this node in the directory and
//! keeps the view and the peer set fresh), `link` and `frame` (the authenticated inter-node TCP
//! link), `peer` (what nodes say to each other), `locator` (which nodes hold a user's sessions).
//! This layer knows nothing of conversations or sessions: the conversation and delivery layers
//! use it.

pub mod frame;
pub mod link;
pub mod locator;
pub mod membership;
pub mod peer;
pub mod placement;
