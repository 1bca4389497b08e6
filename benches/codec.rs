//! Criterion benches of the client wire format: decoding a `send` frame and encoding the
//! `message` frame fanned out to recipients (throughput in frames per second).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use switchboard::model::{ConversationId, MessageId, MessageKind, UserId};
use switchboard::protocol::{MessageView, ServerFrame, decode_client_frame};

fn codec(c: &mut Criterion) {
    let body = "x".repeat(100);
    let send = format!(
        r#"{{"type":"send","id":"r-1","conversation_id":"{}","client_msg_id":"c-1","body":"{body}"}}"#,
        ConversationId::generate()
    );
    let mut group = c.benchmark_group("codec");
    group.throughput(Throughput::Elements(1));
    group.bench_function("decode_send_100B", |b| b.iter(|| decode_client_frame(black_box(&send)).unwrap()));
    let frame = ServerFrame::Message(MessageView {
        conversation_id: ConversationId::generate(),
        seq: 42,
        message_id: MessageId::generate(),
        author_id: UserId::generate(),
        client_msg_id: "c-1".into(),
        body,
        ts: 1_700_000_000_000,
        attachments: vec![],
        kind: MessageKind::Text,
    });
    group.bench_function("encode_message_100B", |b| b.iter(|| black_box(&frame).encode()));
    group.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
