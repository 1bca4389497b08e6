//! Configuration and public value types of the links: [`LinkConfig`] and its validation,
//! [`LinkError`] (why a call or cast failed), [`PeerStats`] (per-peer counters), and the limits
//! on secrets and node ids.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

/// Shortest cluster secret accepted.
pub const MIN_SECRET_LEN: usize = 32;
/// Longest node id accepted (bytes).
pub const MAX_NODE_ID_LEN: usize = 255;

/// Configuration of one node's links.
#[derive(Clone)]
pub struct LinkConfig {
    /// This node's id; ids order who dials whom.
    pub node_id: String,
    /// Cluster secret (HMAC-SHA256 key), at least [`MIN_SECRET_LEN`] bytes. Never logged.
    pub secret: Vec<u8>,
    /// Where to listen; port 0 picks a free port (see [`Links::local_addr`](super::Links::local_addr)).
    pub listen: SocketAddr,
    /// Capacity of each peer's outbound queue, in frames.
    pub queue_frames: usize,
    /// Ping interval.
    pub heartbeat: Duration,
    /// A connection on which nothing arrived for this long is dropped.
    pub dead_after: Duration,
    /// Deadline of [`Links::call`](super::Links::call), and how long [`Links::cast`](super::Links::cast) waits for queue space.
    pub call_timeout: Duration,
    /// Limit on connect + handshake.
    pub handshake_timeout: Duration,
}

impl LinkConfig {
    /// A configuration with the default limits: 4096 queued frames, 1 s heartbeat, 5 s dead
    /// peer, 5 s call timeout, 5 s handshake.
    pub fn new(node_id: impl Into<String>, secret: impl Into<Vec<u8>>, listen: SocketAddr) -> Self {
        LinkConfig {
            node_id: node_id.into(),
            secret: secret.into(),
            listen,
            queue_frames: 4096,
            heartbeat: Duration::from_secs(1),
            dead_after: Duration::from_secs(5),
            call_timeout: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(5),
        }
    }

    pub(super) fn validate(&self) -> io::Result<()> {
        let invalid = |what: &str| Err(io::Error::new(io::ErrorKind::InvalidInput, what.to_string()));
        if !valid_node_id(&self.node_id) {
            return invalid("cluster link: node_id must be 1..=255 bytes");
        }
        if self.secret.len() < MIN_SECRET_LEN {
            return invalid("cluster link: secret must be at least 32 bytes");
        }
        if self.queue_frames == 0 {
            return invalid("cluster link: queue_frames must be at least 1");
        }
        if self.heartbeat.is_zero() || self.dead_after <= self.heartbeat {
            return invalid("cluster link: need 0 < heartbeat < dead_after");
        }
        if self.call_timeout.is_zero() || self.handshake_timeout.is_zero() {
            return invalid("cluster link: timeouts must be non-zero");
        }
        Ok(())
    }
}

impl std::fmt::Debug for LinkConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkConfig")
            .field("node_id", &self.node_id)
            .field("secret", &"<redacted>")
            .field("listen", &self.listen)
            .field("queue_frames", &self.queue_frames)
            .field("heartbeat", &self.heartbeat)
            .field("dead_after", &self.dead_after)
            .field("call_timeout", &self.call_timeout)
            .field("handshake_timeout", &self.handshake_timeout)
            .finish()
    }
}

/// Why a call or cast failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// The peer is not in the peer set (and not connected to us).
    #[error("unknown cluster peer {0:?}")]
    UnknownPeer(String),
    /// No connection to the peer came up before the deadline.
    #[error("cluster peer {0:?} not connected")]
    NotConnected(String),
    /// The peer's outbound queue stayed full.
    #[error("outbound queue to cluster peer {0:?} is full")]
    Full(String),
    /// Connected, but no reply before the deadline.
    #[error("call to cluster peer {0:?} timed out")]
    Timeout(String),
    /// The connection carrying the call died, or the peer was removed, or the links shut down.
    #[error("link to cluster peer {0:?} closed")]
    Closed(String),
    /// The message could not be encoded (or is over the frame size limit).
    #[error("cannot encode message for cluster peer {peer:?}: {reason}")]
    Encode { peer: String, reason: String },
}

/// Counters of one peer, from [`Links::stats`](super::Links::stats).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStats {
    pub peer: String,
    /// In the peer set (false: known only because it connected to us).
    pub listed: bool,
    pub connected: bool,
    pub frames_sent: u64,
    pub frames_received: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Connections established with this peer so far.
    pub connections: u64,
    /// Connections established after the first.
    pub reconnects: u64,
    /// Frames waiting in the outbound queue.
    pub queue_len: usize,
    /// Calls waiting for a reply (or for their request to be sent).
    pub pending_calls: usize,
    /// Round-trip time of the latest heartbeat, microseconds (0: none yet).
    pub last_rtt_us: u64,
}

pub(super) fn valid_node_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_NODE_ID_LEN
}
