//! The lifecycle sweep: uploads idle past `upload_ttl_s` are aborted (their multipart upload
//! too) and deleted; finished attachments that no message took within the TTL are deleted.
//! Crash-safe and idempotent: it works from the records and markers it finds, deletes the
//! data before the record or marker that leads to it, and any node may run it at any time.
//! It never races a send: sends refuse attachments in the last tenth of the TTL.

use super::record::{self, AttachmentRecord, UploadRecord};
use super::{Attachments, blob_error};
use crate::error::Result;
use crate::model::{AttachmentId, Millis};
use crate::store::blob::BlobError;

/// What one sweep removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SweepReport {
    pub uploads: usize,
    pub unsent: usize,
}

impl SweepReport {
    pub fn is_empty(&self) -> bool {
        self.uploads == 0 && self.unsent == 0
    }
}

fn id_in(key: &str, prefix: &str, suffix: &str) -> Option<AttachmentId> {
    key.strip_prefix(prefix)?.strip_suffix(suffix)?.parse().ok()
}

impl Attachments {
    /// One pass, as of `now`.
    pub async fn sweep(&self, now: Millis) -> Result<SweepReport> {
        let ttl = (self.config.upload_ttl_s * 1000) as Millis;
        let mut report = SweepReport::default();
        for entry in self.blob.list(record::UPLOADS).await.map_err(blob_error)? {
            let Some(id) = id_in(&entry.key, record::UPLOADS, ".json") else { continue };
            let rec: Option<UploadRecord> = match self.blob.get(&entry.key).await {
                Ok(bytes) => serde_json::from_slice(&bytes).ok(),
                Err(BlobError::NotFound) => continue,
                Err(e) => return Err(blob_error(e)),
            };
            let idle_since = rec.as_ref().map(|r| r.updated_ms).unwrap_or(entry.modified_ms);
            if now - idle_since <= ttl || self.writing.lock().unwrap_or_else(|p| p.into_inner()).contains(&id)
            {
                continue;
            }
            if self.record(id).await?.is_some() {
                // Finished, but the upload record outlived it (a crash at the very end).
                self.blob.delete(&entry.key).await.map_err(blob_error)?;
            } else if let Some(rec) = rec {
                self.drop_upload(&rec).await?;
            } else {
                self.blob.delete(&entry.key).await.map_err(blob_error)?;
            }
            report.uploads += 1;
        }
        for entry in self.blob.list(record::UNSENT).await.map_err(blob_error)? {
            let Some(id) = id_in(&entry.key, record::UNSENT, "") else { continue };
            let rec: Option<AttachmentRecord> = self.record(id).await?;
            let created = rec.as_ref().map(|r| r.created_ms).unwrap_or(entry.modified_ms);
            if now - created <= ttl {
                continue;
            }
            if rec.as_ref().is_some_and(|r| r.sent_as.is_some()) {
                // Sent: only the marker was left behind.
                self.blob.delete(&entry.key).await.map_err(blob_error)?;
                continue;
            }
            for key in
                [record::file_key(id), record::thumbnail_key(id), record::record_key(id), entry.key.clone()]
            {
                self.blob.delete(&key).await.map_err(blob_error)?;
            }
            report.unsent += 1;
        }
        Ok(report)
    }
}
