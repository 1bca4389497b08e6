//! The chunked AEAD format of stored attachment files: the plaintext is cut into 64 KiB
//! chunks, each sealed with XChaCha20-Poly1305 under a key derived from the conversation key
//! for this one file (and variant: the file or its thumbnail), with a nonce made of the chunk's
//! index and a last-chunk flag (the STREAM construction). Chunks can be opened independently,
//! so a byte range is decrypted without reading from the start; a reordered, dropped or
//! truncated chunk fails authentication.

use crate::crypto::ConversationKey;
use crate::model::AttachmentId;
use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

/// Plaintext bytes per chunk.
pub const CHUNK: u64 = 64 * 1024;
/// Bytes the seal adds to each chunk (the Poly1305 tag).
pub const TAG: u64 = 16;
/// Sealed bytes per full chunk.
pub const SEALED_CHUNK: u64 = CHUNK + TAG;

/// Which object of an attachment a key seals.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    File,
    Thumbnail,
}

#[derive(Debug, thiserror::Error)]
#[error("an attachment chunk failed authentication (tampered, truncated or wrong key)")]
pub struct ChunkError;

pub struct ChunkCipher(XChaCha20Poly1305);

impl ChunkCipher {
    pub fn new(key: &ConversationKey, id: AttachmentId, variant: Variant) -> ChunkCipher {
        let mut context = b"attachment chunks v1 ".to_vec();
        context.extend_from_slice(id.as_bytes());
        context.push(match variant {
            Variant::File => b'f',
            Variant::Thumbnail => b't',
        });
        let derived = key.derive(&context);
        ChunkCipher(XChaCha20Poly1305::new_from_slice(&derived).expect("32-byte key"))
    }

    fn nonce(index: u64, last: bool) -> XNonce {
        let mut nonce = [0u8; 24];
        nonce[..8].copy_from_slice(&index.to_be_bytes());
        nonce[8] = u8::from(last);
        XNonce::from(nonce)
    }

    /// Seals chunk `index` (at most `CHUNK` bytes), appending it to `out` (in place: the
    /// plaintext is copied once, then encrypted where it lies).
    pub fn seal_chunk(&self, index: u64, last: bool, plain: &[u8], out: &mut Vec<u8>) {
        debug_assert!(plain.len() as u64 <= CHUNK);
        let start = out.len();
        out.extend_from_slice(plain);
        let tag = self
            .0
            .encrypt_inout_detached(&Self::nonce(index, last), b"", (&mut out[start..]).into())
            .expect("sealing an in-memory chunk cannot fail");
        out.extend_from_slice(&tag);
    }

    /// Opens chunk `index`.
    pub fn open_chunk(&self, index: u64, last: bool, sealed: &[u8]) -> Result<Vec<u8>, ChunkError> {
        let body_len = sealed.len().checked_sub(TAG as usize).ok_or(ChunkError)?;
        let (body, tag) = sealed.split_at(body_len);
        let mut plain = body.to_vec();
        let tag = chacha20poly1305::Tag::try_from(tag).map_err(|_| ChunkError)?;
        self.0
            .decrypt_inout_detached(&Self::nonce(index, last), b"", plain.as_mut_slice().into(), &tag)
            .map_err(|_| ChunkError)?;
        Ok(plain)
    }

    /// Seals a run of whole chunks starting at chunk `first` (the last one of the file
    /// flagged when `ends_file`).
    pub fn seal_run(&self, first: u64, plain: &[u8], ends_file: bool) -> Vec<u8> {
        let count = chunks_in(plain.len() as u64);
        let mut out = Vec::with_capacity(plain.len() + (count * TAG) as usize);
        for i in 0..count {
            let start = (i * CHUNK) as usize;
            let end = (start + CHUNK as usize).min(plain.len());
            self.seal_chunk(first + i, ends_file && i + 1 == count, &plain[start..end], &mut out);
        }
        out
    }
}

/// How many chunks `size` plaintext bytes make (an empty file is one empty chunk).
pub fn chunks_in(size: u64) -> u64 {
    size.div_ceil(CHUNK).max(1)
}

/// The stored size of a `size`-byte plaintext.
pub fn sealed_size(size: u64) -> u64 {
    size + chunks_in(size) * TAG
}

/// For the plaintext bytes `start..end` of a `size`-byte file: the chunks to read
/// (`first..=last`) and the sealed byte range holding them.
pub fn sealed_range(size: u64, start: u64, end: u64) -> (u64, u64, std::ops::Range<u64>) {
    let first = start / CHUNK;
    let last = (end.max(start + 1) - 1) / CHUNK;
    let total = sealed_size(size);
    let from = first * SEALED_CHUNK;
    let to = ((last + 1) * SEALED_CHUNK).min(total);
    (first, last, from..to)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::MasterKey;

    fn cipher(variant: Variant) -> (ChunkCipher, AttachmentId) {
        let (key, _) = MasterKey::generate().new_conversation_key(b"c");
        let id = AttachmentId::generate();
        (ChunkCipher::new(&key, id, variant), id)
    }

    #[test]
    fn chunks_open_alone_and_only_in_place() {
        let (c, _) = cipher(Variant::File);
        let plain: Vec<u8> = (0..(CHUNK * 2 + 10)).map(|i| (i % 251) as u8).collect();
        let sealed = c.seal_run(0, &plain, true);
        assert_eq!(sealed.len() as u64, sealed_size(plain.len() as u64));
        let (first, last, range) = sealed_range(plain.len() as u64, CHUNK + 5, CHUNK + 9);
        assert_eq!((first, last), (1, 1));
        let chunk = c.open_chunk(1, false, &sealed[range.start as usize..range.end as usize]).unwrap();
        assert_eq!(chunk, &plain[CHUNK as usize..2 * CHUNK as usize]);
        // The last chunk only opens as the last; a chunk only at its own index.
        let tail = &sealed[(2 * SEALED_CHUNK) as usize..];
        assert_eq!(c.open_chunk(2, true, tail).unwrap(), &plain[2 * CHUNK as usize..]);
        assert!(c.open_chunk(2, false, tail).is_err(), "truncation is detected");
        assert!(c.open_chunk(0, true, tail).is_err(), "reordering is detected");
        let (other, _) = cipher(Variant::File);
        assert!(other.open_chunk(2, true, tail).is_err(), "another file's key opens nothing");
    }

    #[test]
    fn empty_file_is_one_sealed_chunk() {
        let (c, _) = cipher(Variant::Thumbnail);
        let sealed = c.seal_run(0, &[], true);
        assert_eq!(sealed.len() as u64, TAG);
        assert_eq!(c.open_chunk(0, true, &sealed).unwrap(), Vec::<u8>::new());
        assert_eq!(sealed_range(0, 0, 0), (0, 0, 0..TAG));
    }
}
