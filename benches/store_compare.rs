//! The message store's two hot paths on every backend in one run — embedded (fjall) and, when
//! `SWITCHBOARD_TEST_CASSANDRA=host:port` is set, a real Cassandra — side by side: durable
//! append throughput with group commit (batches of 1, 100, 1000 messages over 1,000
//! conversations) and the latency (p50/p99) of a 50-message history page. Prints a table and
//! writes `target/store-compare.json`. `cargo bench --bench store_compare` measures; under
//! `cargo test` it runs a few iterations only, so it cannot rot.

use hdrhistogram::Histogram;
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchboard::model::*;
use switchboard::store::ChatStore;
use switchboard::store::cassandra::{self, CassandraConfig, CassandraStore};
use switchboard::store::embedded::EmbeddedStore;

const CONVERSATIONS: usize = 1_000;
const HISTORY_MESSAGES: u64 = 2_000;

fn message(conversation: ConversationId, author: UserId, seq: u64) -> StoredMessage {
    StoredMessage {
        conversation_id: conversation,
        seq,
        message_id: MessageId::generate(),
        author_id: author,
        device_id: DeviceId(author.0),
        client_msg_id: format!("c{seq}"),
        kind: MessageKind::Text,
        sealed_body: vec![0xab; 140],
        ts: now_millis(),
        attachments: vec![],
        epoch: 0,
    }
}

struct Row {
    backend: &'static str,
    append_per_sec: Vec<(usize, f64)>,
    page_p50_us: u64,
    page_p99_us: u64,
}

async fn measure(backend: &'static str, store: Arc<dyn ChatStore>, window: Duration, pages: usize) -> Row {
    let author = UserId::generate();
    let conversations: Vec<ConversationId> = (0..CONVERSATIONS).map(|_| ConversationId::generate()).collect();
    let mut seqs = vec![0u64; CONVERSATIONS];
    let mut next = 0;
    let mut append_per_sec = Vec::new();
    for batch in [1usize, 100, 1000] {
        let started = Instant::now();
        let mut written = 0;
        while started.elapsed() < window || written == 0 {
            let rows: Vec<StoredMessage> = (0..batch)
                .map(|_| {
                    next = (next + 1) % CONVERSATIONS;
                    seqs[next] += 1;
                    message(conversations[next], author, seqs[next])
                })
                .collect();
            store.append(&rows).await.expect("append");
            written += batch;
        }
        append_per_sec.push((batch, written as f64 / started.elapsed().as_secs_f64()));
    }
    let history = ConversationId::generate();
    let all: Vec<StoredMessage> = (1..=HISTORY_MESSAGES).map(|s| message(history, author, s)).collect();
    for chunk in all.chunks(500) {
        store.append(chunk).await.expect("append history");
    }
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    for i in 0..pages {
        let before = 51 + (i as u64 * 7919) % (HISTORY_MESSAGES - 50);
        let started = Instant::now();
        let page = store.messages_before(history, before, 50).await.expect("page");
        h.record((started.elapsed().as_micros() as u64).max(1)).unwrap();
        assert_eq!(page.len(), 50);
    }
    Row {
        backend,
        append_per_sec,
        page_p50_us: h.value_at_quantile(0.5),
        page_p99_us: h.value_at_quantile(0.99),
    }
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (window, pages) =
        if full { (Duration::from_secs(5), 2_000) } else { (Duration::from_millis(50), 20) };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    let rows = runtime.block_on(async {
        let dir = root.join(format!("bench-data/compare-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut rows =
            vec![measure("embedded", Arc::new(EmbeddedStore::open(&dir).unwrap()), window, pages).await];
        let _ = std::fs::remove_dir_all(&dir);
        if let Ok(nodes) = std::env::var("SWITCHBOARD_TEST_CASSANDRA") {
            let config =
                CassandraConfig::single_replica(&nodes, &format!("sbbench_{}", std::process::id())).unwrap();
            let session = cassandra::connect(&config).await.expect("connect");
            cassandra::apply_schema(&session, &config).await.expect("schema");
            let store = CassandraStore::connect(&config).await.expect("store");
            rows.push(measure("cassandra", Arc::new(store), window, pages).await);
            let _ = session.query_unpaged(format!("DROP KEYSPACE {}", config.keyspace), &[]).await;
        }
        rows
    });
    println!(
        "\nstore             append msgs/s: batch 1 | batch 100 | batch 1000 | 50-msg page p50 µs | p99 µs"
    );
    let mut json = Vec::new();
    for r in &rows {
        let rate = |b: usize| r.append_per_sec.iter().find(|(x, _)| *x == b).map(|(_, v)| *v).unwrap_or(0.0);
        println!(
            "{:<16} {:>22.0} | {:>9.0} | {:>10.0} | {:>18} | {:>6}",
            r.backend,
            rate(1),
            rate(100),
            rate(1000),
            r.page_p50_us,
            r.page_p99_us
        );
        json.push(serde_json::json!({
            "backend": r.backend,
            "append_msgs_per_sec": r.append_per_sec.iter().map(|(b, v)| serde_json::json!({"batch": b, "msgs_per_sec": v})).collect::<Vec<_>>(),
            "history_page_50": {"p50_us": r.page_p50_us, "p99_us": r.page_p99_us},
        }));
    }
    let out = root.join("store-compare.json");
    let _ = std::fs::write(
        &out,
        serde_json::to_vec_pretty(&serde_json::json!({"full": full, "results": json})).unwrap(),
    );
    println!("written to {}", out.display());
}
