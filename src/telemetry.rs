//! Observability: the tracing subscriber (`RUST_LOG`) and `Metrics`, the node's counters and
//! histograms rendered in the Prometheus text format for `/metrics`.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// Logs to stderr, filtered by `RUST_LOG` (default `info`); no colours when not a terminal.
pub fn init_tracing() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,fjall=warn,lsm_tree=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

/// Upper bounds (seconds) of the latency histogram buckets.
const BUCKETS: [f64; 12] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];

/// A fixed-bucket latency histogram.
#[derive(Default)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        for (bound, slot) in BUCKETS.iter().zip(&self.counts) {
            if secs <= *bound {
                slot.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (bound, slot) in BUCKETS.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {}", slot.load(Ordering::Relaxed));
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
    }
}

/// Everything `/metrics` reports. One per node (no global recorder, so several nodes can run
/// in one process in tests).
#[derive(Default)]
pub struct Metrics {
    pub connections_open: AtomicI64,
    pub connections_total: AtomicU64,
    pub messages_stored_total: AtomicU64,
    pub messages_duplicate_total: AtomicU64,
    pub frames_in_total: AtomicU64,
    pub frames_out_total: AtomicU64,
    pub errors_sent_total: AtomicU64,
    pub slow_consumers_closed_total: AtomicU64,
    pub group_commits_total: AtomicU64,
    pub owner_restarts_total: AtomicU64,
    pub ownership_claims_total: AtomicU64,
    pub appends_fenced_total: AtomicU64,
    pub peer_requests_total: AtomicU64,
    pub peer_deliveries_total: AtomicU64,
    pub store_append_seconds: Histogram,
}

impl Metrics {
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn render(&self) -> String {
        let mut out = String::with_capacity(2048);
        let gauge = |out: &mut String, name: &str, help: &str, v: i64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        let counter = |out: &mut String, name: &str, help: &str, c: &AtomicU64| {
            let v = c.load(Ordering::Relaxed);
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        };
        gauge(
            &mut out,
            "switchboard_connections",
            "Open WebSocket connections.",
            self.connections_open.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "switchboard_connections_total",
            "WebSocket connections accepted.",
            &self.connections_total,
        );
        counter(
            &mut out,
            "switchboard_messages_stored_total",
            "Messages durably stored (acked as sent).",
            &self.messages_stored_total,
        );
        counter(
            &mut out,
            "switchboard_messages_duplicate_total",
            "Sends answered from an earlier store (client_msg_id retries).",
            &self.messages_duplicate_total,
        );
        counter(&mut out, "switchboard_frames_in_total", "Client frames received.", &self.frames_in_total);
        counter(
            &mut out,
            "switchboard_frames_out_total",
            "Frames written to client sockets.",
            &self.frames_out_total,
        );
        counter(
            &mut out,
            "switchboard_errors_sent_total",
            "Error frames sent to clients.",
            &self.errors_sent_total,
        );
        counter(
            &mut out,
            "switchboard_slow_consumers_closed_total",
            "Connections closed because the client did not read.",
            &self.slow_consumers_closed_total,
        );
        counter(
            &mut out,
            "switchboard_group_commits_total",
            "Durable message batches written.",
            &self.group_commits_total,
        );
        counter(
            &mut out,
            "switchboard_owner_restarts_total",
            "Owner shards restarted after a panic.",
            &self.owner_restarts_total,
        );
        counter(
            &mut out,
            "switchboard_ownership_claims_total",
            "Conversations taken over by this node (a new owner epoch, the log fenced).",
            &self.ownership_claims_total,
        );
        counter(
            &mut out,
            "switchboard_appends_fenced_total",
            "Messages refused by the store because a newer owner epoch holds the conversation.",
            &self.appends_fenced_total,
        );
        counter(
            &mut out,
            "switchboard_peer_requests_total",
            "Sends and receipts other nodes forwarded to this node's owners.",
            &self.peer_requests_total,
        );
        counter(
            &mut out,
            "switchboard_peer_deliveries_total",
            "Event batches sent to other nodes (once per node, not per session).",
            &self.peer_deliveries_total,
        );
        self.store_append_seconds.render(
            &mut out,
            "switchboard_store_append_seconds",
            "Latency of one durable batch append.",
        );
        out
    }
}

/// The inter-node link's figures per peer, in Prometheus text (labelled `peer`).
pub fn render_peers(out: &mut String, peers: &[crate::cluster::link::PeerStats]) {
    type Field = fn(&crate::cluster::link::PeerStats) -> u64;
    let families: [(&str, &str, &str, Field); 9] = [
        ("switchboard_peer_connected", "gauge", "1 while the link to the peer is up.", |p| {
            p.connected as u64
        }),
        ("switchboard_peer_frames_sent_total", "counter", "Frames sent to the peer.", |p| p.frames_sent),
        ("switchboard_peer_frames_received_total", "counter", "Frames received from the peer.", |p| {
            p.frames_received
        }),
        ("switchboard_peer_bytes_sent_total", "counter", "Bytes sent to the peer.", |p| p.bytes_sent),
        ("switchboard_peer_bytes_received_total", "counter", "Bytes received from the peer.", |p| {
            p.bytes_received
        }),
        ("switchboard_peer_reconnects_total", "counter", "Connections to the peer after the first.", |p| {
            p.reconnects
        }),
        ("switchboard_peer_queue_frames", "gauge", "Frames waiting in the queue to the peer.", |p| {
            p.queue_len as u64
        }),
        ("switchboard_peer_pending_calls", "gauge", "Requests to the peer awaiting a reply.", |p| {
            p.pending_calls as u64
        }),
        ("switchboard_peer_rtt_microseconds", "gauge", "Last heartbeat round trip to the peer.", |p| {
            p.last_rtt_us
        }),
    ];
    for (name, kind, help, field) in families {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for peer in peers {
            let _ = writeln!(out, "{name}{{peer=\"{}\"}} {}", peer.peer, field(peer));
        }
    }
}
