//! Criterion benches of the embedded store's durable append path: batches of 1, 100 and 1000
//! messages (100-byte bodies) spread over 1,000 conversations, one `SyncAll` per batch — the
//! group commit the owner does. Throughput is messages per second. The data lives under
//! `target/bench-data` (a real disk, so the fsync is real), or `SWITCHBOARD_BENCH_DIR`.

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use std::path::PathBuf;
use switchboard::model::*;
use switchboard::store::MessageLog;
use switchboard::store::embedded::EmbeddedStore;

const CONVERSATIONS: usize = 1_000;

fn bench_dir() -> PathBuf {
    let base = std::env::var_os("SWITCHBOARD_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-data"));
    let dir = base.join(format!("append-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn store_append(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let dir = bench_dir();
    let store = EmbeddedStore::open(&dir).unwrap();
    let conversations: Vec<ConversationId> = (0..CONVERSATIONS).map(|_| ConversationId::generate()).collect();
    let author = UserId::generate();
    let device = DeviceId::generate();
    let mut seqs = vec![0u64; CONVERSATIONS];
    let mut next = 0usize;
    let mut group = c.benchmark_group("store_append");
    for batch in [1usize, 100, 1000] {
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_function(format!("embedded_batch_{batch}"), |b| {
            b.iter_batched(
                || {
                    (0..batch)
                        .map(|_| {
                            next = (next + 1) % CONVERSATIONS;
                            seqs[next] += 1;
                            StoredMessage {
                                conversation_id: conversations[next],
                                seq: seqs[next],
                                message_id: MessageId::generate(),
                                author_id: author,
                                device_id: device,
                                client_msg_id: format!("c{}-{}", next, seqs[next]),
                                kind: MessageKind::Text,
                                sealed_body: vec![0xab; 100 + 40],
                                ts: 0,
                                attachments: vec![],
                                epoch: 0,
                            }
                        })
                        .collect::<Vec<_>>()
                },
                |messages| runtime.block_on(store.append(&messages)).unwrap(),
                BatchSize::LargeInput,
            )
        });
    }
    group.finish();
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, store_append);
criterion_main!(benches);
