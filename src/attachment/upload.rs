//! Uploads: created with their full length, then written in one or more requests, each
//! continuing at the offset the server reports (whole 5 MiB parts are durable; the rest of an
//! interrupted request is dropped). The body is read as a stream and sealed part by part, so a
//! file never sits whole in memory; parts go to the blob store as one multipart upload (a file
//! within one part is one plain write). When the last byte arrives the upload is finished:
//! hashed, a picture thumbnailed (or refused by the decoder's limits), recorded, marked unsent.

use super::cipher::{ChunkCipher, Variant};
use super::media::{self, ImageLimits, MediaError};
use super::record::{self, AttachmentRecord, PART_BYTES, PART_CHUNKS, UploadRecord};
use super::{Attachments, blob_error};
use crate::conversation::sealed_attachments;
use crate::crypto::ConversationKey;
use crate::error::{Error, ErrorCode, Result};
use crate::model::{AttachmentId, AttachmentInfo, ConversationId, UserId, now_millis};
use crate::protocol::AttachmentView;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use serde::Serialize;
use sha2::{Digest, Sha256};

/// A request that sends no bytes for this long is ended (the upload keeps its whole parts), so
/// a stalled client does not hold the upload and its buffer.
const STALLED: std::time::Duration = std::time::Duration::from_secs(60);

/// Where an upload stands, as REST answers it.
#[derive(Debug, Clone, Serialize)]
pub struct UploadStatus {
    pub upload_id: AttachmentId,
    /// Bytes stored; the next request continues here.
    pub offset: u64,
    pub length: u64,
    /// Offsets of interrupted requests fall back to multiples of this.
    pub part_bytes: u64,
    pub complete: bool,
    /// The finished attachment (its id is the upload id), to name in a `send`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attachment: Option<AttachmentView>,
}

/// Releases an upload's write lock when the request ends, however it ends.
struct Writing<'a>(&'a Attachments, AttachmentId);

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        self.0.writing.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.1);
    }
}

impl Attachments {
    /// Starts an upload of `length` bytes named `name` to `conversation` (members only).
    pub async fn create(
        &self,
        user: UserId,
        conversation: ConversationId,
        name: &str,
        length: u64,
    ) -> Result<UploadStatus> {
        self.directory.for_member(conversation, user).await?;
        let max = self.config.attachment_max_bytes;
        if length > max {
            return Err(Error::new(
                ErrorCode::TooLarge,
                format!("the file is {length} bytes; the limit is {max}"),
            ));
        }
        let now = now_millis();
        let rec = UploadRecord {
            id: AttachmentId::generate(),
            conversation_id: conversation,
            uploader: user,
            name: media::clean_name(name),
            length,
            created_ms: now,
            updated_ms: now,
            multipart: None,
            parts: Vec::new(),
            content_type: None,
        };
        self.put_json(&record::upload_key(rec.id), &rec).await?;
        Ok(status_of(&rec))
    }

    /// Where an upload of `user` stands (a finished one included).
    pub async fn status(&self, user: UserId, id: AttachmentId) -> Result<UploadStatus> {
        match self.upload(id).await? {
            Some(rec) if rec.uploader == user => Ok(status_of(&rec)),
            Some(_) => Err(no_upload()),
            None => self.finished(user, id).await,
        }
    }

    /// Drops an unfinished upload of `user` and what it stored.
    pub async fn cancel(&self, user: UserId, id: AttachmentId) -> Result<()> {
        let _writing = self.lock(id)?;
        let rec = self.upload(id).await?.filter(|r| r.uploader == user).ok_or_else(no_upload)?;
        self.drop_upload(&rec).await
    }

    /// Writes `body` into the upload from `offset`, which must be where it stands. Whole parts
    /// are stored as they fill; the last byte finishes the upload. A body that ends early
    /// leaves the upload at its last whole part (the answer says where).
    pub async fn append<S, E>(
        &self,
        user: UserId,
        id: AttachmentId,
        offset: u64,
        mut body: S,
    ) -> Result<UploadStatus>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let _writing = self.lock(id)?;
        let mut rec = match self.upload(id).await? {
            Some(rec) if rec.uploader == user => rec,
            Some(_) => return Err(no_upload()),
            None => {
                // Finished already (a retry whose answer was lost): nothing more to write.
                let done = self.finished(user, id).await?;
                if offset != done.length {
                    return Err(Error::new(
                        ErrorCode::Conflict,
                        format!("the upload is complete at offset {}", done.length),
                    ));
                }
                return Ok(done);
            }
        };
        let info = self.directory.for_member(rec.conversation_id, user).await?;
        if offset != rec.offset() {
            return Err(Error::new(
                ErrorCode::Conflict,
                format!("the upload is at offset {}, not {offset}", rec.offset()),
            ));
        }
        let key = info.link_key().clone();
        // The hash is only whole when this request carries the file from its first byte.
        let mut hasher = (offset == 0).then(Sha256::new);
        let mut received = offset;
        let mut buffer: Vec<u8> = Vec::new();
        loop {
            let piece = match tokio::time::timeout(STALLED, body.next()).await {
                Ok(None) => break,
                Ok(Some(Ok(piece))) => piece,
                Err(_) => {
                    return Err(Error::bad_request(format!(
                        "the upload stalled (no bytes for {} s); continue at offset {}",
                        STALLED.as_secs(),
                        rec.offset()
                    )));
                }
                Ok(Some(Err(e))) => {
                    tracing::info!(upload = %id, stored = rec.offset(), error = %e, "upload interrupted");
                    return Err(Error::bad_request(format!(
                        "the upload body broke off ({e}); continue at offset {}",
                        rec.offset()
                    )));
                }
            };
            if received + piece.len() as u64 > rec.length {
                return Err(Error::bad_request(format!(
                    "the body goes past the upload's length ({} bytes); stored up to offset {}",
                    rec.length,
                    rec.offset()
                )));
            }
            received += piece.len() as u64;
            if let Some(h) = hasher.as_mut() {
                h.update(&piece);
            }
            // The buffer holds the next part (it starts at `rec.offset()`), allocated once at
            // its final size: memory per upload is one part, plus its sealed copy in flight.
            let mut rest = &piece[..];
            while !rest.is_empty() {
                let part_len = PART_BYTES.min(rec.length - rec.offset()) as usize;
                if buffer.capacity() == 0 {
                    buffer.reserve_exact(part_len);
                }
                let take = (part_len - buffer.len()).min(rest.len());
                buffer.extend_from_slice(&rest[..take]);
                rest = &rest[take..];
                // A full part is stored now unless it is the file's last (that one finishes it).
                if buffer.len() == part_len && rec.offset() + PART_BYTES < rec.length {
                    let part = Bytes::from(std::mem::take(&mut buffer));
                    self.store_part(&mut rec, &key, part, false).await?;
                }
            }
        }
        if received < rec.length {
            return Ok(status_of(&rec));
        }
        let hash = hasher.map(|h| hex::encode(h.finalize()));
        self.finish(rec, &key, Bytes::from(buffer), hash).await
    }

    fn lock(&self, id: AttachmentId) -> Result<Writing<'_>> {
        if !self.writing.lock().unwrap_or_else(|p| p.into_inner()).insert(id) {
            return Err(Error::new(
                ErrorCode::Conflict,
                "another request is writing this upload; retry when it ends",
            ));
        }
        Ok(Writing(self, id))
    }

    async fn upload(&self, id: AttachmentId) -> Result<Option<UploadRecord>> {
        self.get_json(&record::upload_key(id)).await
    }

    async fn finished(&self, user: UserId, id: AttachmentId) -> Result<UploadStatus> {
        let rec = self.record(id).await?.filter(|r| r.uploader == user).ok_or_else(no_upload)?;
        let info = self.directory.for_member(rec.conversation_id, user).await?;
        Ok(self.complete(info.link_key(), rec.info))
    }

    /// The status of a finished upload: its attachment, with fresh links.
    fn complete(&self, link_key: &ConversationKey, attachment: AttachmentInfo) -> UploadStatus {
        let size = attachment.size;
        let exp = sealed_attachments::link_expiry(self.config.link_ttl_s);
        UploadStatus {
            upload_id: attachment.id,
            offset: size,
            length: size,
            part_bytes: PART_BYTES,
            complete: true,
            attachment: Some(sealed_attachments::view(link_key, attachment, exp)),
        }
    }

    /// Seals and stores the next part (`ends_file`: the file's last), then records it.
    async fn store_part(
        &self,
        rec: &mut UploadRecord,
        key: &ConversationKey,
        plain: Bytes,
        ends_file: bool,
    ) -> Result<()> {
        if rec.parts.is_empty() && rec.content_type.is_none() {
            rec.content_type = Some(media::sniff(&plain[..plain.len().min(media::SNIFF_BYTES)]));
        }
        let file = record::file_key(rec.id);
        if rec.multipart.is_none() {
            rec.multipart = Some(self.blob.create_multipart(&file).await.map_err(blob_error)?);
            // Recorded before any part goes out, so the sweep can always abort it.
            self.put_json(&record::upload_key(rec.id), rec).await?;
        }
        let index = rec.parts.len() as u64;
        let sealed = seal(key, rec.id, index * PART_CHUNKS, plain, ends_file).await?;
        let upload = rec.multipart.clone().unwrap_or_default();
        let tag = self.blob.put_part(&file, &upload, index as u32, sealed).await.map_err(blob_error)?;
        rec.parts.push(tag);
        rec.updated_ms = now_millis();
        self.put_json(&record::upload_key(rec.id), rec).await
    }

    /// Stores the last bytes, hashes and checks the file, makes the thumbnail, records the
    /// attachment. Order matters for crash safety: the unsent marker goes before the record,
    /// the upload record goes last.
    async fn finish(
        &self,
        mut rec: UploadRecord,
        key: &ConversationKey,
        tail: Bytes,
        hash: Option<String>,
    ) -> Result<UploadStatus> {
        let id = rec.id;
        if rec.parts.is_empty() {
            rec.content_type = Some(media::sniff(&tail[..tail.len().min(media::SNIFF_BYTES)]));
            let sealed = seal(key, id, 0, tail, true).await?;
            self.blob.put(&record::file_key(id), sealed).await.map_err(blob_error)?;
            if let Some(upload) = rec.multipart.take() {
                let _ = self.blob.abort_multipart(&record::file_key(id), &upload).await;
            }
        } else {
            // Unless the last part is stored already (a retry after a failed completion).
            if !(tail.is_empty() && rec.offset() == rec.length) {
                self.store_part(&mut rec, key, tail, true).await?;
            }
            let upload = rec.multipart.clone().unwrap_or_default();
            self.blob
                .complete_multipart(&record::file_key(id), &upload, rec.parts.clone())
                .await
                .map_err(blob_error)?;
        }
        let content_type = rec.content_type.clone().unwrap_or_else(|| "application/octet-stream".into());
        let picture = media::is_picture(&content_type) && rec.length <= self.config.image_max_bytes;
        // Read back what was stored when the hash is not whole (a resumed upload) or the
        // picture is needed; this also proves the stored file opens. A picture is held whole
        // in memory, so only a few at a time.
        let _permit = match picture {
            true => Some(self.pictures.acquire().await.expect("the semaphore is never closed")),
            false => None,
        };
        let (sha256, plain) = match hash {
            Some(h) if !picture => (h, None),
            _ => self.read_back(key, id, rec.length, picture).await?,
        };
        let mut info = AttachmentInfo {
            id,
            name: rec.name.clone(),
            content_type,
            size: rec.length,
            sha256,
            width: None,
            height: None,
            thumbnail: false,
        };
        let mut attachment = AttachmentRecord {
            info: info.clone(),
            conversation_id: rec.conversation_id,
            uploader: rec.uploader,
            created_ms: now_millis(),
            thumbnail_size: None,
            thumbnail_sha256: None,
            thumbnail_type: None,
            sent_as: None,
        };
        if let Some(bytes) = plain.filter(|_| picture) {
            match self.thumbnail(bytes).await {
                Ok(t) => {
                    info.width = Some(t.width);
                    info.height = Some(t.height);
                    info.thumbnail = true;
                    attachment.thumbnail_size = Some(t.bytes.len() as u64);
                    attachment.thumbnail_sha256 = Some(hex::encode(Sha256::digest(&t.bytes)));
                    attachment.thumbnail_type = Some(t.content_type.to_string());
                    let sealed = seal_thumbnail(key, id, t.bytes).await?;
                    self.blob.put(&record::thumbnail_key(id), sealed).await.map_err(blob_error)?;
                }
                Err(e) => {
                    // A picture the node will not decode is refused, and nothing of it is kept.
                    self.drop_upload(&rec).await?;
                    return Err(match e {
                        MediaError::TooLarge(m) => Error::new(ErrorCode::TooLarge, m),
                        MediaError::Undecodable(m) => {
                            Error::bad_request(format!("the picture could not be decoded: {m}"))
                        }
                    });
                }
            }
        }
        attachment.info = info;
        self.blob
            .put(&record::unsent_key(id), attachment.created_ms.to_string().into())
            .await
            .map_err(blob_error)?;
        self.put_json(&record::record_key(id), &attachment).await?;
        self.blob.delete(&record::upload_key(id)).await.map_err(blob_error)?;
        Ok(self.complete(key, attachment.info))
    }

    /// Decodes a picture on the blocking pool (the caller holds a `pictures` permit).
    async fn thumbnail(&self, bytes: Vec<u8>) -> std::result::Result<media::Thumbnail, MediaError> {
        let limits =
            ImageLimits { max_side: self.config.image_max_side, max_pixels: self.config.image_max_pixels };
        tokio::task::spawn_blocking(move || media::thumbnail(&bytes, limits))
            .await
            .unwrap_or_else(|e| Err(MediaError::Undecodable(format!("the decoder failed: {e}"))))
    }

    /// Deletes everything an unfinished upload stored, its record last.
    pub(super) async fn drop_upload(&self, rec: &UploadRecord) -> Result<()> {
        let file = record::file_key(rec.id);
        if let Some(upload) = &rec.multipart {
            self.blob.abort_multipart(&file, upload).await.map_err(blob_error)?;
        }
        for key in [file, record::thumbnail_key(rec.id), record::upload_key(rec.id)] {
            self.blob.delete(&key).await.map_err(blob_error)?;
        }
        Ok(())
    }
}

fn no_upload() -> Error {
    Error::not_found("no such upload")
}

fn status_of(rec: &UploadRecord) -> UploadStatus {
    UploadStatus {
        upload_id: rec.id,
        offset: rec.offset(),
        length: rec.length,
        part_bytes: PART_BYTES,
        complete: false,
        attachment: None,
    }
}

/// Seals plaintext as chunks from `first_chunk`, on the blocking pool.
async fn seal(
    key: &ConversationKey,
    id: AttachmentId,
    first_chunk: u64,
    plain: Bytes,
    ends_file: bool,
) -> Result<Bytes> {
    let key = key.clone();
    tokio::task::spawn_blocking(move || {
        Bytes::from(ChunkCipher::new(&key, id, Variant::File).seal_run(first_chunk, &plain, ends_file))
    })
    .await
    .map_err(|_| Error::internal("sealing an upload part failed"))
}

async fn seal_thumbnail(key: &ConversationKey, id: AttachmentId, plain: Vec<u8>) -> Result<Bytes> {
    let key = key.clone();
    tokio::task::spawn_blocking(move || {
        Bytes::from(ChunkCipher::new(&key, id, Variant::Thumbnail).seal_run(0, &plain, true))
    })
    .await
    .map_err(|_| Error::internal("sealing a thumbnail failed"))
}
