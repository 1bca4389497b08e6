//! Criterion benches of the attachment chunk cipher on a 50 MiB file (throughput in bytes):
//! sealing it as the upload path does (ten 5 MiB parts, each `seal_run` into a new buffer),
//! opening it as the download path does (one 64 KiB chunk at a time), against a plain copy of
//! the same bytes (into a buffer made beforehand, and into a new one), and SHA-256 of the
//! plaintext (every upload hashes it). Few samples; and `cargo test --all-targets`, which runs
//! each once on an unoptimised build (no `--bench` argument), gets a 1 MiB file instead.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use std::time::Duration;
use switchboard::attachment::PART_BYTES;
use switchboard::attachment::cipher::{CHUNK, ChunkCipher, SEALED_CHUNK, Variant, chunks_in};
use switchboard::crypto::MasterKey;
use switchboard::model::AttachmentId;

const MIB: usize = 1024 * 1024;

/// 50 MiB when benchmarking (`cargo bench` passes `--bench`), 1 MiB as a test.
fn file_size() -> usize {
    if std::env::args().any(|a| a == "--bench") { 50 * MIB } else { MIB }
}

/// `n` bytes that are not all alike (the cipher does not care; the copy should not either).
fn file(n: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Seals `plain` in `PART_BYTES` parts, as an upload stores it.
fn seal_parts(cipher: &ChunkCipher, plain: &[u8]) -> Vec<Vec<u8>> {
    let part = PART_BYTES as usize;
    let parts = plain.len().div_ceil(part);
    (0..parts)
        .map(|i| {
            let run = &plain[i * part..((i + 1) * part).min(plain.len())];
            cipher.seal_run((i * part) as u64 / CHUNK, run, i + 1 == parts)
        })
        .collect()
}

fn attachment_cipher(c: &mut Criterion) {
    let (key, _) = MasterKey::generate().new_conversation_key(b"bench");
    let cipher = ChunkCipher::new(&key, AttachmentId::generate(), Variant::File);
    let size = file_size();
    let plain = file(size);
    let sealed: Vec<u8> = seal_parts(&cipher, &plain).concat();
    let chunks = chunks_in(size as u64);

    let mut group = c.benchmark_group(format!("attachment_{}MiB", size / MIB));
    group.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(5));
    group.throughput(Throughput::Bytes(size as u64));
    group.bench_function("seal_5MiB_parts", |b| b.iter(|| seal_parts(&cipher, black_box(&plain))));
    group.bench_function("open_64KiB_chunks", |b| {
        b.iter(|| {
            let mut total = 0;
            for (i, sealed_chunk) in black_box(&sealed).chunks(SEALED_CHUNK as usize).enumerate() {
                let i = i as u64;
                total += cipher.open_chunk(i, i + 1 == chunks, sealed_chunk).expect("opens").len();
            }
            total
        })
    });
    let mut copy = vec![0u8; size];
    group.bench_function("memcpy_into_existing", |b| {
        b.iter(|| {
            copy.copy_from_slice(black_box(&plain));
            black_box(&copy);
        })
    });
    group.bench_function("memcpy_into_new", |b| b.iter(|| black_box(&plain).to_vec()));
    group.bench_function("sha256", |b| {
        use sha2::Digest;
        b.iter(|| sha2::Sha256::digest(black_box(&plain)))
    });
    group.finish();
}

criterion_group!(benches, attachment_cipher);
criterion_main!(benches);
