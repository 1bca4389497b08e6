//! The blob store port: named byte objects for attachments, their thumbnails and their records.
//! One implementation over `object_store` (`object.rs`) serves both backends: a local directory
//! (the embedded default) and any S3-compatible server. Bytes are opaque here — encryption is
//! the attachment module's business. Proven by `tests/it/blob_conformance.rs` on every backend.

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::BoxStream;
use std::ops::Range;
use std::sync::Arc;

mod object;
pub use object::ObjectBlobStore;

#[derive(Debug, Clone, thiserror::Error)]
pub enum BlobError {
    /// No object (or multipart upload) under that name.
    #[error("no such blob")]
    NotFound,
    /// The backend could not be reached or refused the request for a reason other than the
    /// object's absence (connection refused, timeout, 5xx, bad credentials). Nothing the
    /// caller may rely on happened.
    #[error("blob store unavailable: {0}")]
    Unavailable(String),
    /// The request itself was wrong (e.g. an S3 multipart part below the 5 MiB minimum).
    #[error("blob store refused the request: {0}")]
    Invalid(String),
}

pub type BlobResult<T> = Result<T, BlobError>;

/// The blob store the config names: `blob_backend = "local"` (files under
/// [`Config::blob_dir`](crate::config::Config::blob_dir)) or `"s3"` (the `s3_*` keys), every
/// call limited to `blob_timeout_ms`. Creates the local directory; contacts no server.
pub fn open(config: &crate::config::Config) -> BlobResult<Arc<dyn BlobStore>> {
    let attachments = &config.attachments;
    let store = match attachments.blob_backend.as_str() {
        "local" => ObjectBlobStore::local(&config.blob_dir())?
            .with_timeout(std::time::Duration::from_millis(attachments.blob_timeout_ms)),
        "s3" => ObjectBlobStore::s3(attachments)?,
        other => return Err(BlobError::Invalid(format!("unknown blob backend {other:?}"))),
    };
    Ok(Arc::new(store))
}

/// One object in a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobEntry {
    pub key: String,
    pub size: u64,
    /// Last modification, ms since the Unix epoch.
    pub modified_ms: i64,
}

/// A stream of an object's bytes, in the backend's own pieces.
pub type ByteStream = BoxStream<'static, BlobResult<Bytes>>;

/// The smallest part an S3 multipart upload accepts (every part but the last).
pub const MIN_PART_BYTES: usize = 5 * 1024 * 1024;

/// Keys are `/`-separated relative names of `[A-Za-z0-9._-]` segments (no empty, `.` or `..`
/// segment). Every write is atomic: a reader sees the old object, the new one, or none.
#[async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// Writes a whole object, replacing any object of that name.
    async fn put(&self, key: &str, bytes: Bytes) -> BlobResult<()>;
    /// Reads a whole object (meant for small ones: records, thumbnails); `NotFound` if absent.
    async fn get(&self, key: &str) -> BlobResult<Bytes>;
    /// Streams the bytes `range` (end exclusive) of an object. `NotFound` if absent,
    /// `Invalid` if the range is empty or reaches past the end. The stream fails with
    /// `Unavailable` when a piece takes longer than the store's timeout to arrive after it is
    /// asked for; a slow reader is never cut off.
    async fn get_range(&self, key: &str, range: Range<u64>) -> BlobResult<ByteStream>;
    /// The object's size and modification time; `None` if absent.
    async fn head(&self, key: &str) -> BlobResult<Option<BlobEntry>>;
    /// Removes an object; removing an absent one succeeds.
    async fn delete(&self, key: &str) -> BlobResult<()>;
    /// Every object whose key starts with `prefix` (a whole-segment prefix ending in `/`, or
    /// empty for all), at any depth, in no particular order. Unfinished multipart uploads are
    /// not objects and are not listed (the local backend shows its staging only when `prefix`
    /// is under `_multipart/`).
    async fn list(&self, prefix: &str) -> BlobResult<Vec<BlobEntry>>;

    /// Starts a multipart upload of `key`; returns its upload id. Nothing is visible under
    /// `key` until `complete_multipart`.
    async fn create_multipart(&self, key: &str) -> BlobResult<String>;
    /// Stores part `index` (0-based) of an upload; every part but the last must be at least
    /// [`MIN_PART_BYTES`] (the backend may refuse smaller ones at `complete_multipart`).
    /// Storing the same index again replaces it. Returns the part's tag for completion.
    async fn put_part(&self, key: &str, upload: &str, index: u32, bytes: Bytes) -> BlobResult<String>;
    /// Joins the parts, in the order of `tags` (index 0 first), into the object `key`.
    /// `NotFound` if the upload is unknown (aborted, completed); `Invalid` if `tags` is empty,
    /// a part is missing (s3s-fs: `NotFound`) or a part before the last is below
    /// [`MIN_PART_BYTES`]. After a failed completion the upload may be gone (s3s-fs drops
    /// it): abort it rather than retry.
    async fn complete_multipart(&self, key: &str, upload: &str, tags: Vec<String>) -> BlobResult<()>;
    /// Drops an unfinished upload and its parts; an unknown or finished upload succeeds.
    async fn abort_multipart(&self, key: &str, upload: &str) -> BlobResult<()>;

    /// "local" or "s3", for logs and errors.
    fn backend(&self) -> &'static str;
}
