//! Conversations: `directory` (membership, keys, `open_direct`, groups, cached), `owner` (the
//! single writer of each conversation: seq, idempotency, group commit, receipts, group changes;
//! sharded), `permissions` (who may change a group), and
//! `history` (every read of stored messages: history pages, sync, the conversation list), and
//! `peer_service` (what this node answers to other nodes: forwarded sends and receipts,
//! delivered events). It feeds delivery (publishes stored messages) and reads and writes the
//! stores.

pub mod directory;
pub mod history;
pub mod owner;
pub mod peer_service;
pub mod permissions;
pub mod sealed_attachments;
