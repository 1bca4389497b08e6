//! Attachments: files and pictures sent in conversations. Uploaded over REST in a resumable
//! stream (`upload.rs`), sealed chunk by chunk with a key derived from the conversation key
//! (`cipher.rs`) on the way into blob storage, pictures thumbnailed by the node (`media.rs`);
//! referenced by one message (`claim`); downloaded by members — or through a short-lived
//! signed link — with ranges (`download.rs`); unfinished and unsent uploads deleted by a
//! crash-safe sweep (`sweep.rs`). What lies where in the blob store: `record.rs`.
//!
//! Everything here runs off the session path: REST handlers and the sweep call the blob store
//! asynchronously, and the CPU work (sealing parts, decoding pictures) goes to the blocking pool.

pub mod cipher;
mod download;
mod media;
mod record;
mod sweep;
mod upload;

pub use download::{Access, Download, Which};
pub use record::PART_BYTES;
pub use upload::UploadStatus;

use crate::config::AttachmentsConfig;
use crate::conversation::directory::Conversations;
use crate::error::{Error, ErrorCode, Result};
use crate::model::{AttachmentId, ConversationId, UserId, now_millis};
use crate::store::ChatStore;
use crate::store::blob::{BlobError, BlobStore};
use record::AttachmentRecord;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

/// Most attachments one message may carry.
pub const MAX_PER_MESSAGE: usize = 10;
/// Pictures decoded at once (each may take up to `image_max_bytes` plus its pixels).
const PICTURES_AT_ONCE: usize = 2;
/// Bound on the cache of attachment → message seq.
const SEQ_CACHE_LIMIT: usize = 100_000;

pub struct Attachments {
    blob: Arc<dyn BlobStore>,
    directory: Arc<Conversations>,
    log: Arc<dyn ChatStore>,
    config: AttachmentsConfig,
    /// Uploads with a request writing them on this node (a second one gets `conflict`).
    writing: Mutex<HashSet<AttachmentId>>,
    pictures: tokio::sync::Semaphore,
    /// The seq of the message that carries an attachment, once looked up.
    sent_seq: Mutex<HashMap<AttachmentId, u64>>,
}

/// The blob store's failure as a client sees it.
fn blob_error(e: BlobError) -> Error {
    match e {
        BlobError::NotFound => Error::not_found("no such attachment"),
        BlobError::Unavailable(m) => {
            tracing::warn!(error = %m, "blob store unavailable");
            Error::overloaded(
                "attachment storage is unavailable; retry later",
                std::time::Duration::from_secs(5),
            )
        }
        BlobError::Invalid(m) => {
            tracing::error!(error = %m, "blob store refused a request");
            Error::internal("attachment storage refused the request")
        }
    }
}

fn corrupt(what: &str) -> Error {
    tracing::error!("{what}");
    Error::internal("an attachment record is unreadable")
}

fn parse_id(raw: &str) -> Result<AttachmentId> {
    raw.parse().map_err(|_| Error::not_found(format!("no such attachment {raw:?}")))
}

impl Attachments {
    pub fn new(
        blob: Arc<dyn BlobStore>,
        directory: Arc<Conversations>,
        log: Arc<dyn ChatStore>,
        config: AttachmentsConfig,
    ) -> Attachments {
        Attachments {
            blob,
            directory,
            log,
            config,
            writing: Mutex::new(HashSet::new()),
            pictures: tokio::sync::Semaphore::new(PICTURES_AT_ONCE),
            sent_seq: Mutex::new(HashMap::new()),
        }
    }

    async fn record(&self, id: AttachmentId) -> Result<Option<AttachmentRecord>> {
        self.get_json(&record::record_key(id)).await
    }

    /// A JSON record of the blob store; `None` when absent.
    async fn get_json<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        match self.blob.get(key).await {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map(Some).map_err(|e| corrupt(&format!("record {key}: {e}")))
            }
            Err(BlobError::NotFound) => Ok(None),
            Err(e) => Err(blob_error(e)),
        }
    }

    async fn put_json<T: serde::Serialize>(&self, key: &str, value: &T) -> Result<()> {
        let bytes = serde_json::to_vec(value).expect("records serialize");
        self.blob.put(key, bytes.into()).await.map_err(blob_error)
    }

    /// Checks the attachments a `send` names and binds each to that message (`client_msg_id`):
    /// each must be a finished upload of `user` to `conversation`, not older than nine tenths of
    /// the upload TTL (so the sweep never deletes one a message is about to reference), and not
    /// already sent in another message. Returns what the message says of each (plain JSON, for
    /// the owner shard to seal). Repeating the same send binds nothing new.
    pub async fn claim(
        &self,
        user: UserId,
        conversation: ConversationId,
        client_msg_id: &str,
        ids: &[String],
    ) -> Result<Vec<String>> {
        if ids.len() > MAX_PER_MESSAGE {
            return Err(Error::new(
                ErrorCode::TooLarge,
                format!("a message carries at most {MAX_PER_MESSAGE} attachments"),
            ));
        }
        let mut seen = HashSet::new();
        let mut out = Vec::with_capacity(ids.len());
        for raw in ids {
            let id = parse_id(raw)?;
            if !seen.insert(id) {
                return Err(Error::bad_request(format!("attachment {id} is named twice")));
            }
            let unknown = || {
                Error::not_found(format!(
                    "unknown attachment {id} (not uploaded by you to this conversation, not finished, or expired)"
                ))
            };
            let mut rec = self.record(id).await?.ok_or_else(unknown)?;
            if rec.conversation_id != conversation || rec.uploader != user {
                return Err(unknown());
            }
            let usable_ms = (self.config.upload_ttl_s * 1000 * 9 / 10) as i64;
            match rec.sent_as.as_deref() {
                Some(other) if other != client_msg_id => {
                    return Err(Error::new(
                        ErrorCode::Conflict,
                        format!("attachment {id} was already sent in another message"),
                    ));
                }
                Some(_) => {}
                None if now_millis() - rec.created_ms > usable_ms => {
                    return Err(Error::not_found(format!(
                        "attachment {id} expired before it was sent; upload it again"
                    )));
                }
                None => {
                    rec.sent_as = Some(client_msg_id.to_string());
                    self.put_json(&record::record_key(id), &rec).await?;
                    // Only after the record says it is sent: the sweep no longer looks at it.
                    self.blob.delete(&record::unsent_key(id)).await.map_err(blob_error)?;
                }
            }
            out.push(serde_json::to_string(&rec.info).expect("attachment info serializes"));
        }
        Ok(out)
    }

    /// Starts the lifecycle sweep on the current runtime: every `sweep_interval_s`, forever.
    pub fn start_sweeper(self: &Arc<Self>) {
        let this = self.clone();
        let every = std::time::Duration::from_secs(self.config.sweep_interval_s);
        actix_rt::spawn(async move {
            loop {
                actix_rt::time::sleep(every).await;
                match this.sweep(now_millis()).await {
                    Ok(report) if report.is_empty() => {}
                    Ok(report) => tracing::info!(?report, "attachment sweep"),
                    Err(e) => tracing::warn!(error = %e, "attachment sweep failed; next time"),
                }
            }
        });
    }
}
