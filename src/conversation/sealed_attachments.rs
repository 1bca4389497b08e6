//! The attachment entries of a stored message: sealed by the owner shard with the message's
//! key (each entry an `AttachmentInfo` as JSON, bound to its conversation, seq and position),
//! and opened for readers into `AttachmentView`s carrying short-lived signed links, so a
//! browser `<img>` can load a thumbnail without an Authorization header.
//!
//! Links are signed with a key derived from the conversation's first key, so whoever serves
//! the download can check them knowing only the attachment's conversation.

use super::directory::ConversationInfo;
use crate::crypto::ConversationKey;
use crate::error::{Error, Result};
use crate::model::{AttachmentId, AttachmentInfo, now_millis};
use crate::protocol::AttachmentView;
use base64::Engine;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD_NO_PAD;

/// Links are issued with an expiry rounded up to this many seconds, so one message's frames
/// carry the same URLs for a while (browser caches can reuse them).
const LINK_ROUNDING_S: u64 = 600;

fn aad(info: &ConversationInfo, seq: u64, index: usize) -> Vec<u8> {
    let mut aad = info.body_aad(seq).to_vec();
    aad.extend_from_slice(b"attachment");
    aad.extend_from_slice(&(index as u32).to_be_bytes());
    aad
}

/// Seals each entry (plain `AttachmentInfo` JSON) for the message at `seq`.
pub fn seal(info: &ConversationInfo, seq: u64, plain: &[String]) -> Vec<String> {
    plain
        .iter()
        .enumerate()
        .map(|(i, json)| B64.encode(info.key_for(seq).seal(json.as_bytes(), &aad(info, seq, i))))
        .collect()
}

/// Opens the sealed entries of the message at `seq` into views with links valid for at least
/// the conversation's link TTL.
pub fn open(info: &ConversationInfo, seq: u64, sealed: &[String]) -> Result<Vec<AttachmentView>> {
    let exp = link_expiry(info.link_ttl_s());
    sealed
        .iter()
        .enumerate()
        .map(|(i, entry)| {
            let bytes = B64.decode(entry).map_err(|_| Error::internal("a stored attachment entry is not base64"))?;
            let json = info.key_for(seq).open(&bytes, &aad(info, seq, i)).map_err(|e| {
                tracing::error!(conversation = %info.id, seq, error = %e, "cannot decrypt a stored attachment entry");
                Error::internal("a stored attachment entry could not be decrypted")
            })?;
            let attachment: AttachmentInfo =
                serde_json::from_slice(&json).map_err(|_| Error::internal("a stored attachment entry is not valid"))?;
            Ok(view(info.link_key(), attachment, exp))
        })
        .collect()
}

/// Views of entries not yet sealed (the owner's live frame of a message it just stored).
pub fn open_plain(info: &ConversationInfo, plain: &[String]) -> Vec<AttachmentView> {
    let exp = link_expiry(info.link_ttl_s());
    plain
        .iter()
        .filter_map(|json| serde_json::from_str::<AttachmentInfo>(json).ok())
        .map(|attachment| view(info.link_key(), attachment, exp))
        .collect()
}

/// The view of one attachment, with links signed until `exp`.
pub fn view(key: &ConversationKey, info: AttachmentInfo, exp: u64) -> AttachmentView {
    let url = signed(key, &file_path(info.id), exp);
    let thumbnail_url = info.thumbnail.then(|| signed(key, &thumbnail_path(info.id), exp));
    AttachmentView { info, url, thumbnail_url }
}

/// An expiry at least `ttl_s` from now, rounded up (seconds since the epoch).
pub fn link_expiry(ttl_s: u64) -> u64 {
    let now = (now_millis().max(0) as u64) / 1000;
    (now + ttl_s).div_ceil(LINK_ROUNDING_S) * LINK_ROUNDING_S
}

pub fn file_path(id: AttachmentId) -> String {
    format!("/v1/attachments/{id}")
}

pub fn thumbnail_path(id: AttachmentId) -> String {
    format!("/v1/attachments/{id}/thumbnail")
}

fn signed(key: &ConversationKey, path: &str, exp: u64) -> String {
    format!("{path}?exp={exp}&sig={}", key.link_signature(path, exp))
}
