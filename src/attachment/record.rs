//! What the blob store holds for attachments, besides their sealed bytes: the record of an
//! upload in progress, the record of a finished attachment, the "not yet sent" marker the
//! lifecycle sweep looks for, and the key of every object. Records are JSON objects.
//!
//! ```text
//! uploads/<id>.json            UploadRecord, rewritten after each stored part
//! attachments/<id>/file        the file, chunk-sealed (cipher.rs)
//! attachments/<id>/thumbnail   the thumbnail, chunk-sealed
//! attachments/<id>/record.json AttachmentRecord
//! unsent/<id>                  present from completion until a message references it
//! ```

use super::cipher::CHUNK;
use crate::model::{AttachmentId, AttachmentInfo, ConversationId, Millis, UserId};
use serde::{Deserialize, Serialize};

/// Chunks per stored part of an upload: 80 × 64 KiB = 5 MiB of plaintext, so every sealed
/// part but the last meets S3's 5 MiB multipart minimum. Uploads resume at part boundaries.
pub const PART_CHUNKS: u64 = 80;
/// Plaintext bytes per part.
pub const PART_BYTES: u64 = PART_CHUNKS * CHUNK;

pub const UPLOADS: &str = "uploads/";
pub const UNSENT: &str = "unsent/";

pub fn upload_key(id: AttachmentId) -> String {
    format!("{UPLOADS}{id}.json")
}
pub fn file_key(id: AttachmentId) -> String {
    format!("attachments/{id}/file")
}
pub fn thumbnail_key(id: AttachmentId) -> String {
    format!("attachments/{id}/thumbnail")
}
pub fn record_key(id: AttachmentId) -> String {
    format!("attachments/{id}/record.json")
}
pub fn unsent_key(id: AttachmentId) -> String {
    format!("{UNSENT}{id}")
}

/// An upload in progress.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UploadRecord {
    pub id: AttachmentId,
    pub conversation_id: ConversationId,
    pub uploader: UserId,
    pub name: String,
    /// The whole file's size, declared when the upload was created.
    pub length: u64,
    pub created_ms: Millis,
    /// Last time a part was stored; the sweep drops uploads idle past the TTL.
    pub updated_ms: Millis,
    /// The blob store's multipart upload, once the first part went out.
    #[serde(default)]
    pub multipart: Option<String>,
    /// Tags of the stored parts, in order.
    #[serde(default)]
    pub parts: Vec<String>,
    /// Sniffed from the first bytes.
    #[serde(default)]
    pub content_type: Option<String>,
}

impl UploadRecord {
    /// Plaintext bytes durably stored: whole parts (all of a finished upload).
    pub fn offset(&self) -> u64 {
        (self.parts.len() as u64 * PART_BYTES).min(self.length)
    }
}

/// A finished attachment.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AttachmentRecord {
    pub info: AttachmentInfo,
    pub conversation_id: ConversationId,
    pub uploader: UserId,
    /// When the upload finished.
    pub created_ms: Millis,
    /// Plaintext size of the thumbnail, when there is one.
    #[serde(default)]
    pub thumbnail_size: Option<u64>,
    #[serde(default)]
    pub thumbnail_sha256: Option<String>,
    /// `image/jpeg`, or `image/png` for a picture with transparency.
    #[serde(default)]
    pub thumbnail_type: Option<String>,
    /// The client id of the uploader's message that carries it, once sent (its seq is found
    /// through the message log's idempotency index, which is durable with the message).
    #[serde(default)]
    pub sent_as: Option<String>,
}
