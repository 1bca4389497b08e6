//! The attachment lifecycle sweep, in-process over the embedded store and a local blob
//! directory, with the clock moved past the TTL: an upload left idle is aborted and deleted
//! (its multipart staging too), a finished attachment no message took is deleted, a sent one
//! is kept, leftovers of a crash (a marker without its record) are cleared, and nothing young
//! is touched. Sends refuse an attachment too close to its expiry, so a sweep never deletes
//! one a message is about to carry.

use bytes::Bytes;
use std::sync::Arc;
use switchboard::attachment::{Attachments, PART_BYTES};
use switchboard::config::AttachmentsConfig;
use switchboard::conversation::directory::Conversations;
use switchboard::crypto::MasterKey;
use switchboard::model::{ConversationId, UserId, now_millis};
use switchboard::store::blob::{BlobStore, ObjectBlobStore};
use switchboard::store::embedded::EmbeddedStore;

fn body(bytes: Vec<u8>) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Unpin {
    futures_util::stream::iter(vec![Ok(Bytes::from(bytes))])
}

async fn keys(blob: &dyn BlobStore, prefix: &str) -> Vec<String> {
    let mut keys: Vec<String> = blob.list(prefix).await.unwrap().into_iter().map(|e| e.key).collect();
    keys.sort();
    keys
}

/// Attachments over the embedded store and a local blob directory, with alice's direct
/// conversation.
struct Setup {
    _dir: tempfile::TempDir,
    blob: Arc<dyn BlobStore>,
    attachments: Attachments,
    ttl_ms: i64,
    alice: UserId,
    conversation: ConversationId,
}

impl Setup {
    async fn new() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(EmbeddedStore::open(&dir.path().join("store")).unwrap());
        let conversations = Arc::new(Conversations::new(store.clone(), Some(MasterKey::generate())));
        let blob: Arc<dyn BlobStore> = Arc::new(ObjectBlobStore::local(&dir.path().join("blobs")).unwrap());
        let config = AttachmentsConfig::default();
        let ttl_ms = (config.upload_ttl_s * 1000) as i64;
        let attachments = Attachments::new(blob.clone(), conversations.clone(), store, config);
        let (alice, bob) = (UserId::generate(), UserId::generate());
        let conversation = conversations.open_direct(alice, bob).await.unwrap().id;
        Setup { _dir: dir, blob, attachments, ttl_ms, alice, conversation }
    }
}

#[actix_rt::test]
async fn the_sweep_deletes_idle_uploads_and_unsent_files_and_keeps_sent_ones() {
    let Setup { _dir, blob, attachments, ttl_ms, alice, conversation } = Setup::new().await;

    // An upload with one whole part stored, then abandoned.
    let idle = attachments.create(alice, conversation, "idle.bin", PART_BYTES + 10).await.unwrap();
    let status =
        attachments.append(alice, idle.upload_id, 0, body(vec![7u8; PART_BYTES as usize + 5])).await.unwrap();
    assert_eq!(status.offset, PART_BYTES);
    assert!(!keys(blob.as_ref(), "_multipart/").await.is_empty(), "the stored part is staged");
    // A finished file never sent, and one sent.
    let unsent = attachments.create(alice, conversation, "unsent.txt", 5).await.unwrap().upload_id;
    attachments.append(alice, unsent, 0, body(b"hello".to_vec())).await.unwrap();
    let sent = attachments.create(alice, conversation, "sent.txt", 5).await.unwrap().upload_id;
    attachments.append(alice, sent, 0, body(b"world".to_vec())).await.unwrap();
    let claimed = attachments.claim(alice, conversation, "m1", &[sent.to_string()]).await.unwrap();
    assert!(claimed[0].contains("sent.txt"));
    // What a crash between the unsent marker and the record leaves.
    let orphan = switchboard::model::AttachmentId::generate();
    blob.put(&format!("unsent/{orphan}"), Bytes::from(now_millis().to_string())).await.unwrap();

    let now = now_millis();
    let report = attachments.sweep(now).await.unwrap();
    assert!(report.is_empty(), "nothing is young enough to go: {report:?}");

    let later = now + ttl_ms + 1_000;
    let report = attachments.sweep(later).await.unwrap();
    assert_eq!((report.uploads, report.unsent), (1, 2), "{report:?}");
    assert_eq!(keys(blob.as_ref(), "uploads/").await, Vec::<String>::new());
    assert_eq!(
        keys(blob.as_ref(), "_multipart/").await,
        Vec::<String>::new(),
        "the multipart upload was aborted"
    );
    assert_eq!(keys(blob.as_ref(), "unsent/").await, Vec::<String>::new());
    let left = keys(blob.as_ref(), "attachments/").await;
    assert!(left.iter().all(|k| k.contains(&sent.to_string())), "only the sent file is left: {left:?}");
    assert!(left.iter().any(|k| k.ends_with("/file")));
    // A second pass finds nothing more (idempotent).
    assert!(attachments.sweep(later).await.unwrap().is_empty());
    // The sent file still reads.
    let status = attachments.status(alice, idle.upload_id).await;
    assert!(status.is_err(), "the idle upload is gone");
}

#[actix_rt::test]
async fn a_send_refuses_an_attachment_about_to_expire() {
    let Setup { _dir, blob, attachments, ttl_ms, alice, conversation } = Setup::new().await;
    let id = attachments.create(alice, conversation, "old.txt", 3).await.unwrap().upload_id;
    attachments.append(alice, id, 0, body(b"old".to_vec())).await.unwrap();
    // Age the record: rewrite its creation time to 95 % of the TTL ago.
    let key = format!("attachments/{id}/record.json");
    let mut record: serde_json::Value = serde_json::from_slice(&blob.get(&key).await.unwrap()).unwrap();
    record["created_ms"] = (now_millis() - ttl_ms * 95 / 100).into();
    blob.put(&key, Bytes::from(serde_json::to_vec(&record).unwrap())).await.unwrap();
    let refused = attachments.claim(alice, conversation, "m", &[id.to_string()]).await.unwrap_err();
    assert_eq!(refused.code, switchboard::error::ErrorCode::NotFound);
    assert!(refused.message.contains("expired"), "{}", refused.message);
}
