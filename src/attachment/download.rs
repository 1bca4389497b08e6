//! Downloads: who may read an attachment, and its bytes decrypted as a stream for any byte
//! range (only the chunks the range touches are fetched and opened).
//!
//! A member may read an attachment when the message that carries it lies in the seqs they
//! may read (so a member removed from a group loses what was sent after the removal); before
//! it is sent, only its uploader may. A signed link (`?exp=…&sig=…`, from a `message` frame)
//! is enough by itself until it expires: that is how a browser `<img>` loads a thumbnail.

use super::cipher::{self, ChunkCipher, Variant};
use super::record::{self, AttachmentRecord};
use super::{Attachments, SEQ_CACHE_LIMIT, blob_error, parse_id};
use crate::conversation::directory::{ConversationInfo, existing};
use crate::conversation::sealed_attachments;
use crate::crypto::ConversationKey;
use crate::error::{Error, Result};
use crate::model::{AttachmentId, UserId, now_millis};
use crate::protocol::AttachmentView;
use crate::store::blob::{BlobStore, ByteStream};
use bytes::{Buf, Bytes, BytesMut};
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use sha2::{Digest, Sha256};
use std::ops::Range;
use std::sync::Arc;

/// Which object of an attachment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Which {
    File,
    Thumbnail,
}

/// What lets a request read an attachment.
pub enum Access {
    /// An authenticated user, checked against their readable window.
    Member(UserId),
    /// A signed link: its expiry (seconds since the epoch) and signature.
    Link { exp: u64, sig: String },
}

/// An attachment object cleared for reading.
pub struct Download {
    pub id: AttachmentId,
    pub name: String,
    pub content_type: String,
    /// Plaintext size.
    pub size: u64,
    /// SHA-256 of the plaintext, hex (the ETag).
    pub sha256: String,
    /// Whether browsers may show it inline (pictures and thumbnails); everything else is
    /// served as a download.
    pub inline: bool,
    which: Which,
    key: ConversationKey,
}

impl Attachments {
    /// Clears `access` to read one object of attachment `raw_id`.
    pub async fn download(&self, raw_id: &str, which: Which, access: Access) -> Result<Download> {
        let (rec, info) = self.found(raw_id).await?;
        let id = rec.info.id;
        match access {
            Access::Link { exp, sig } => {
                let path = match which {
                    Which::File => sealed_attachments::file_path(id),
                    Which::Thumbnail => sealed_attachments::thumbnail_path(id),
                };
                let now = (now_millis().max(0) as u64) / 1000;
                if exp < now || !info.link_key().verify_link(&path, exp, &sig) {
                    return Err(Error::forbidden("the link is invalid or has expired"));
                }
            }
            Access::Member(user) => self.check_reader(&rec, &info, user).await?,
        }
        let (content_type, size, sha256, inline) = match which {
            Which::File => {
                let inline = super::media::is_picture(&rec.info.content_type);
                (rec.info.content_type.clone(), rec.info.size, rec.info.sha256.clone(), inline)
            }
            Which::Thumbnail => match (rec.thumbnail_size, &rec.thumbnail_sha256, &rec.thumbnail_type) {
                (Some(size), Some(sha), Some(kind)) => (kind.clone(), size, sha.clone(), true),
                _ => return Err(Error::not_found("this attachment has no thumbnail")),
            },
        };
        Ok(Download {
            id,
            name: rec.info.name.clone(),
            content_type,
            size,
            sha256,
            inline,
            which,
            key: info.link_key().clone(),
        })
    }

    /// The attachment as a message shows it, with fresh links (for a reader).
    pub async fn view(&self, user: UserId, raw_id: &str) -> Result<AttachmentView> {
        let (rec, info) = self.found(raw_id).await?;
        self.check_reader(&rec, &info, user).await?;
        let exp = sealed_attachments::link_expiry(self.config.link_ttl_s);
        Ok(sealed_attachments::view(info.link_key(), rec.info, exp))
    }

    /// The plaintext bytes `range` of a cleared object, as a stream. Fails before the first
    /// byte if the blob store cannot serve it.
    pub async fn bytes(&self, d: &Download, range: Range<u64>) -> Result<BoxStream<'static, Result<Bytes>>> {
        let (object, variant) = match d.which {
            Which::File => (record::file_key(d.id), Variant::File),
            Which::Thumbnail => (record::thumbnail_key(d.id), Variant::Thumbnail),
        };
        let cipher = ChunkCipher::new(&d.key, d.id, variant);
        plain_stream(self.blob.clone(), object, cipher, d.size, range).await
    }

    /// Reads a stored file back: its SHA-256, and its bytes when `keep`.
    pub(super) async fn read_back(
        &self,
        key: &ConversationKey,
        id: AttachmentId,
        size: u64,
        keep: bool,
    ) -> Result<(String, Option<Vec<u8>>)> {
        let cipher = ChunkCipher::new(key, id, Variant::File);
        let mut stream = plain_stream(self.blob.clone(), record::file_key(id), cipher, size, 0..size).await?;
        let mut hasher = Sha256::new();
        let mut kept = keep.then(|| Vec::with_capacity(size as usize));
        while let Some(piece) = stream.try_next().await? {
            hasher.update(&piece);
            if let Some(k) = kept.as_mut() {
                k.extend_from_slice(&piece);
            }
        }
        Ok((hex::encode(hasher.finalize()), kept))
    }

    /// A finished attachment and its conversation (`not_found` if either is gone).
    async fn found(&self, raw_id: &str) -> Result<(AttachmentRecord, std::sync::Arc<ConversationInfo>)> {
        let id = parse_id(raw_id)?;
        let rec = self.record(id).await?.ok_or_else(|| Error::not_found("no such attachment"))?;
        let info = existing(self.directory.get(rec.conversation_id).await?)?;
        Ok((rec, info))
    }

    /// A member's right to read: the carrying message within their window, or — not sent
    /// yet — being its uploader.
    async fn check_reader(
        &self,
        rec: &AttachmentRecord,
        info: &ConversationInfo,
        user: UserId,
    ) -> Result<()> {
        match self.seq_of(rec, info).await? {
            None if rec.uploader == user && info.is_member(user) => Ok(()),
            None => Err(Error::not_found("no such attachment")),
            Some(seq) => {
                let (_, window) = self.directory.reader(rec.conversation_id, user).await?;
                if window.can_read(seq) {
                    Ok(())
                } else {
                    Err(Error::forbidden("this attachment was sent where you cannot read"))
                }
            }
        }
    }

    /// The seq of the message carrying the attachment: looked up by its client id in the
    /// message log (durable with the message), and checked to really carry it.
    async fn seq_of(&self, rec: &AttachmentRecord, info: &ConversationInfo) -> Result<Option<u64>> {
        let id = rec.info.id;
        if let Some(seq) = self.sent_seq.lock().unwrap_or_else(|p| p.into_inner()).get(&id) {
            return Ok(Some(*seq));
        }
        let Some(client_msg_id) = &rec.sent_as else { return Ok(None) };
        let Some(message) =
            self.log.message_by_client_id(rec.conversation_id, rec.uploader, client_msg_id).await?
        else {
            return Ok(None);
        };
        let views = sealed_attachments::open(info, message.seq, &message.attachments)?;
        if !views.iter().any(|v| v.info.id == id) {
            return Ok(None);
        }
        let mut cache = self.sent_seq.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= SEQ_CACHE_LIMIT {
            cache.clear();
        }
        cache.insert(id, message.seq);
        Ok(Some(message.seq))
    }
}

/// Decrypts the plaintext bytes `range` of a chunk-sealed object of a `size`-byte file.
async fn plain_stream(
    blob: Arc<dyn BlobStore>,
    object: String,
    cipher: ChunkCipher,
    size: u64,
    range: Range<u64>,
) -> Result<BoxStream<'static, Result<Bytes>>> {
    if range.start >= range.end {
        return Ok(futures_util::stream::empty().boxed());
    }
    let (first, last, sealed) = cipher::sealed_range(size, range.start, range.end);
    let inner = blob.get_range(&object, sealed).await.map_err(blob_error)?;
    let total = cipher::chunks_in(size);
    let state = Chunks { inner, buffer: BytesMut::new(), index: first, last, total, size, range, cipher };
    Ok(futures_util::stream::try_unfold(state, Chunks::next).boxed())
}

struct Chunks {
    inner: ByteStream,
    buffer: BytesMut,
    index: u64,
    last: u64,
    total: u64,
    size: u64,
    range: Range<u64>,
    cipher: ChunkCipher,
}

impl Chunks {
    async fn next(mut self) -> Result<Option<(Bytes, Chunks)>> {
        if self.index > self.last {
            return Ok(None);
        }
        let start = self.index * cipher::CHUNK;
        let plain_len = (self.size - start).min(cipher::CHUNK);
        let sealed_len = (plain_len + cipher::TAG) as usize;
        while self.buffer.len() < sealed_len {
            match self.inner.next().await {
                Some(piece) => self.buffer.extend_from_slice(&piece.map_err(blob_error)?),
                None => {
                    tracing::error!("an attachment object ended early");
                    return Err(Error::internal("the stored attachment is truncated"));
                }
            }
        }
        let sealed = self.buffer.split_to(sealed_len);
        let plain =
            self.cipher.open_chunk(self.index, self.index + 1 == self.total, &sealed).map_err(|e| {
                tracing::error!(error = %e, "cannot open an attachment chunk");
                Error::internal("the stored attachment could not be decrypted")
            })?;
        let mut plain = Bytes::from(plain);
        // Trim the first and last chunks to the range.
        let from = self.range.start.saturating_sub(start) as usize;
        let to = (self.range.end - start).min(plain_len) as usize;
        plain.truncate(to);
        plain.advance(from);
        self.index += 1;
        Ok(Some((plain, self)))
    }
}
