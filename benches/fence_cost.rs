//! What cluster fencing costs on Cassandra: the same appends written plainly (single node,
//! `epoch` 0: an unlogged batch) and fenced (cluster: a conditional batch `IF owner_epoch = E`
//! in the messages partition, a Paxos round). `concurrency` conversations append at once, like
//! that many owner shards, each a batch of `batch` messages (100-byte bodies) at a time, for
//! `SWITCHBOARD_BENCH_SECS` (default 10) per case. Prints msgs/s and append latency
//! p50/p99/max, and writes them to `target/bench-results/fence_cost.md`.
//!
//! Needs a Cassandra: `SWITCHBOARD_BENCH_CASSANDRA=host:port` (e.g. after `scripts/cassandra
//! start 1`); without it (as in `cargo test --all-targets`) it says so and exits.

use hdrhistogram::Histogram;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchboard::model::*;
use switchboard::store::MessageLog;
use switchboard::store::cassandra::{self, CassandraConfig, CassandraStore};

struct Case {
    fenced: bool,
    concurrency: usize,
    batch: usize,
}

struct Outcome {
    messages: u64,
    elapsed: Duration,
    latency: Histogram<u64>,
}

fn message(c: ConversationId, seq: u64, epoch: u64) -> StoredMessage {
    StoredMessage {
        conversation_id: c,
        seq,
        message_id: MessageId::generate(),
        author_id: UserId(uuid::Uuid::nil()),
        device_id: DeviceId(uuid::Uuid::nil()),
        client_msg_id: format!("m{seq}"),
        kind: MessageKind::Text,
        sealed_body: vec![0xab; 140],
        ts: 0,
        attachments: vec![],
        epoch,
    }
}

async fn run(store: Arc<CassandraStore>, case: &Case, secs: u64) -> Outcome {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let workers = (0..case.concurrency).map(|_| {
        let store = store.clone();
        let (fenced, batch) = (case.fenced, case.batch);
        tokio::spawn(async move {
            let conversation = ConversationId::generate();
            let epoch = if fenced { store.claim(conversation, "bench").await.unwrap().epoch } else { 0 };
            let mut latency = Histogram::<u64>::new(3).unwrap();
            let (mut seq, mut messages) = (0u64, 0u64);
            while Instant::now() < deadline {
                let batch: Vec<StoredMessage> =
                    (1..=batch as u64).map(|i| message(conversation, seq + i, epoch)).collect();
                let t = Instant::now();
                store.append(&batch).await.unwrap();
                latency.record(t.elapsed().as_micros() as u64).unwrap();
                seq += batch.len() as u64;
                messages += batch.len() as u64;
            }
            (messages, latency)
        })
    });
    let mut total = Outcome { messages: 0, elapsed: Duration::ZERO, latency: Histogram::new(3).unwrap() };
    for worker in futures_util::future::join_all(workers).await {
        let (messages, latency) = worker.unwrap();
        total.messages += messages;
        total.latency.add(latency).unwrap();
    }
    total.elapsed = started.elapsed();
    total
}

fn main() {
    let Ok(nodes) = std::env::var("SWITCHBOARD_BENCH_CASSANDRA") else {
        eprintln!("fence_cost: set SWITCHBOARD_BENCH_CASSANDRA=host:port to run (skipped)");
        return;
    };
    let secs: u64 = std::env::var("SWITCHBOARD_BENCH_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(10);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let config =
        CassandraConfig::single_replica(&nodes, &format!("sbbench_fence_{}", std::process::id())).unwrap();
    let store = runtime.block_on(async {
        let session = cassandra::connect(&config).await.unwrap();
        cassandra::apply_schema(&session, &config).await.unwrap();
        Arc::new(CassandraStore::connect(&config).await.unwrap())
    });
    let mut report = format!(
        "# Fencing cost on Cassandra ({nodes}, RF 1, LOCAL_QUORUM), {secs} s per case\n\n\
         | appends | concurrent conversations | batch | msgs/s | append p50 ms | p99 ms | max ms |\n|---|---|---|---|---|---|---|\n"
    );
    for (concurrency, batch) in [(1, 1), (16, 1), (16, 32), (64, 8)] {
        for fenced in [false, true] {
            let case = Case { fenced, concurrency, batch };
            let o = runtime.block_on(run(store.clone(), &case, secs));
            let ms = |q: f64| o.latency.value_at_quantile(q) as f64 / 1000.0;
            let line = format!(
                "| {} | {concurrency} | {batch} | {:.0} | {:.2} | {:.2} | {:.2} |",
                if fenced { "fenced (IF owner_epoch)" } else { "plain" },
                o.messages as f64 / o.elapsed.as_secs_f64(),
                ms(0.5),
                ms(0.99),
                o.latency.max() as f64 / 1000.0
            );
            println!("{line}");
            let _ = writeln!(report, "{line}");
        }
    }
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-results");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("fence_cost.md"), &report).unwrap();
    println!("written to {}", out.join("fence_cost.md").display());
}
