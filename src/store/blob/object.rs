//! `ObjectBlobStore`: the one `BlobStore` implementation, over the `object_store` crate, for
//! both backends: a local directory (`LocalFileSystem`) and an S3-compatible server
//! (`AmazonS3`). It owns key validation, the time limit on every call, the mapping of
//! `object_store` errors onto `BlobError`, and the multipart emulation of the local backend.
//!
//! Multipart on S3 is S3's own (`MultipartStore`). `LocalFileSystem` has none, so the local
//! backend keeps an upload's parts as ordinary objects of the same store —
//! `_multipart/<upload-id>/upload` (the key it was created for) and
//! `_multipart/<upload-id>/<index:06>` — and `complete_multipart` streams them in order into the
//! final key through one `put_multipart`, which `LocalFileSystem` writes to a temporary file and
//! renames into place: atomic, and never the whole object in memory.

use super::{BlobEntry, BlobError, BlobResult, BlobStore, ByteStream, MIN_PART_BYTES};
use crate::config::AttachmentsConfig;
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::{self, BoxStream, StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::local::LocalFileSystem;
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;
use object_store::{
    BackoffConfig, ClientOptions, GetOptions, ObjectMeta, ObjectStore, ObjectStoreExt, PutPayload,
    RetryConfig, WriteMultipart,
};
use std::future::Future;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

/// The first key segment of the local backend's multipart staging area.
const STAGING: &str = "_multipart";
/// S3 numbers parts 1..=10,000; ours are 0-based.
const MAX_PARTS: u32 = 10_000;

pub struct ObjectBlobStore {
    store: Arc<dyn ObjectStore>,
    /// The store `get_range` streams from. For S3 a second client without a whole-request
    /// timeout: a download runs as long as its reader keeps reading (a phone on a slow link
    /// pulling 100 MiB), and the stream's own idle limit catches a server that stops sending.
    stream_store: Arc<dyn ObjectStore>,
    /// S3's native multipart; `None` on the local backend, which emulates it.
    multipart: Option<Arc<dyn MultipartStore>>,
    backend: &'static str,
    timeout: Duration,
}

impl ObjectBlobStore {
    /// Objects as files under `dir` (created if missing), key `a/b` at `dir/a/b`. Writes are
    /// fsynced: an attachment acknowledged to a client survives a crash.
    pub fn local(dir: &std::path::Path) -> BlobResult<Self> {
        std::fs::create_dir_all(dir)
            .map_err(|e| BlobError::Unavailable(format!("cannot create blob dir {}: {e}", dir.display())))?;
        let store = LocalFileSystem::new_with_prefix(dir)
            .map_err(map_error)?
            .with_automatic_cleanup(true)
            .with_fsync(true);
        let store: Arc<dyn ObjectStore> = Arc::new(store);
        Ok(ObjectBlobStore {
            stream_store: store.clone(),
            store,
            multipart: None,
            backend: "local",
            timeout: Duration::from_millis(AttachmentsConfig::default().blob_timeout_ms),
        })
    }

    /// Objects in bucket `s3_bucket` of an S3-compatible server. Every request is limited to
    /// `blob_timeout_ms`, retries included, so a dead server fails within about that time.
    pub fn s3(config: &AttachmentsConfig) -> BlobResult<Self> {
        // reqwest is built without a TLS provider of its own (see Cargo.toml); installing one
        // that is already installed fails harmlessly.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let timeout = Duration::from_millis(config.blob_timeout_ms);
        let options = ClientOptions::new().with_connect_timeout(timeout);
        let store = Arc::new(s3_client(config, options.clone().with_timeout(timeout))?);
        let stream_store = Arc::new(s3_client(config, options.with_timeout_disabled())?);
        Ok(ObjectBlobStore { multipart: Some(store.clone()), store, stream_store, backend: "s3", timeout })
    }

    /// Every call, and every wait for the next piece of a `get_range` stream, fails with
    /// `Unavailable` after `timeout`.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Maps an error of an S3 multipart call on `path`. S3 answers 404 NoSuchUpload for an
    /// upload it does not know (aborted, completed, never made); s3s-fs answers 403
    /// AccessDenied, and also drops an upload whose completion it refuses (EntityTooSmall). So
    /// a 403 means "no such upload" when a HEAD of the key with the same credentials is
    /// answered; otherwise the credentials are wrong and it stays `Unavailable`.
    async fn upload_error(&self, path: &Path, error: object_store::Error) -> BlobError {
        if matches!(error, object_store::Error::PermissionDenied { .. }) {
            match self.store.head(path).await.map_err(map_error) {
                Ok(_) | Err(BlobError::NotFound) => return BlobError::NotFound,
                Err(_) => {}
            }
        }
        map_error(error)
    }

    /// Runs one call of this store under its time limit.
    async fn within<T>(&self, what: &str, call: impl Future<Output = BlobResult<T>>) -> BlobResult<T> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(result) => result,
            Err(_) => Err(BlobError::Unavailable(format!(
                "{} blob store: {what} took longer than {} ms",
                self.backend,
                self.timeout.as_millis()
            ))),
        }
    }
}

/// One S3 client. Retries are few and quick (the default retries for minutes): 5xx and
/// connection errors get two more tries within the time limit, then the caller sees them.
fn s3_client(config: &AttachmentsConfig, options: ClientOptions) -> BlobResult<AmazonS3> {
    let timeout = Duration::from_millis(config.blob_timeout_ms);
    let retry = RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(500),
            base: 2.0,
        },
        max_retries: 2,
        retry_timeout: timeout,
    };
    let mut builder = AmazonS3Builder::new()
        .with_region(&config.s3_region)
        .with_bucket_name(&config.s3_bucket)
        .with_virtual_hosted_style_request(!config.s3_path_style)
        // We delete one key at a time; a plain DELETE is what every S3 server implements.
        .with_disable_bulk_delete(true)
        .with_retry(retry)
        // After the client options, which it is part of (they would reset it).
        .with_client_options(options)
        .with_allow_http(config.s3_endpoint.starts_with("http://"));
    if !config.s3_endpoint.is_empty() {
        builder = builder.with_endpoint(&config.s3_endpoint);
    }
    if !config.s3_access_key.is_empty() {
        builder =
            builder.with_access_key_id(&config.s3_access_key).with_secret_access_key(&config.s3_secret_key);
    }
    builder.build().map_err(|e| BlobError::Invalid(format!("S3 blob store configuration: {e}")))
}

/// A key as the trait defines it: `/`-separated segments of `[A-Za-z0-9._-]`, none empty,
/// `.` or `..` (so no key can leave the local backend's directory).
fn key_path(key: &str) -> BlobResult<Path> {
    let segment_ok = |s: &str| {
        !s.is_empty()
            && s != "."
            && s != ".."
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    };
    if key.split('/').all(segment_ok) {
        Ok(Path::from(key))
    } else {
        Err(BlobError::Invalid(format!("bad blob key {key:?}")))
    }
}

/// A key a caller may write: not in the local backend's multipart staging area.
fn writable_path(key: &str) -> BlobResult<Path> {
    let path = key_path(key)?;
    if key.split('/').next() == Some(STAGING) {
        return Err(BlobError::Invalid(format!("blob keys under {STAGING}/ are reserved, got {key:?}")));
    }
    Ok(path)
}

fn entry(meta: ObjectMeta) -> BlobEntry {
    BlobEntry {
        key: meta.location.to_string(),
        size: meta.size,
        modified_ms: meta.last_modified.timestamp_millis(),
    }
}

/// How an `object_store` error becomes a `BlobError`:
/// - `NotFound` (S3 404: NoSuchKey, NoSuchUpload) → `NotFound`.
/// - `PermissionDenied`/`Unauthenticated` (401/403: wrong keys, skewed clock) → `Unavailable`:
///   the request was right, the store will not serve us.
/// - A connection, request or timeout failure anywhere in the cause chain → `Unavailable`.
/// - `InvalidPath`, `Precondition`, `AlreadyExists`, `NotSupported`, `NotImplemented` → `Invalid`.
/// - Otherwise the S3 error `<Code>` in the response body decides, else the HTTP status in the
///   message: InternalError, ServiceUnavailable, SlowDown, RequestTimeout, 5xx, 408 and 429 →
///   `Unavailable`; any other code or 4xx (EntityTooSmall, InvalidPart, InvalidRange,
///   MalformedXML, …) → `Invalid`.
/// - Anything else (a local I/O error such as a full disk, a response that cannot be parsed)
///   → `Unavailable`.
fn map_error(error: object_store::Error) -> BlobError {
    use object_store::Error as E;
    let message = error.to_string();
    match &error {
        E::NotFound { .. } => return BlobError::NotFound,
        E::PermissionDenied { .. } | E::Unauthenticated { .. } => return BlobError::Unavailable(message),
        E::InvalidPath { .. }
        | E::Precondition { .. }
        | E::AlreadyExists { .. }
        | E::NotSupported { .. }
        | E::NotImplemented { .. } => return BlobError::Invalid(message),
        _ => {}
    }
    let mut chain = String::new();
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&error);
    while let Some(e) = cause {
        if e.downcast_ref::<object_store::client::HttpError>().is_some() {
            return BlobError::Unavailable(message);
        }
        chain.push_str(&e.to_string());
        chain.push('\n');
        cause = e.source();
    }
    if let Some(code) = s3_code(&chain) {
        return match code {
            "NoSuchKey" | "NoSuchUpload" => BlobError::NotFound,
            "InternalError" | "ServiceUnavailable" | "SlowDown" | "RequestTimeout" => {
                BlobError::Unavailable(message)
            }
            _ => BlobError::Invalid(message),
        };
    }
    match http_status(&chain) {
        Some(status) if status >= 500 || status == 408 || status == 429 => BlobError::Unavailable(message),
        Some(status) if status >= 400 => BlobError::Invalid(message),
        _ => BlobError::Unavailable(message),
    }
}

/// The first `<Code>…</Code>` of an S3 error body quoted in an error message.
fn s3_code(text: &str) -> Option<&str> {
    let start = text.find("<Code>")? + "<Code>".len();
    let len = text[start..].find("</Code>")?;
    Some(&text[start..start + len])
}

/// The status in object_store's "Server returned non-2xx status code: 400 Bad Request" message.
fn http_status(text: &str) -> Option<u16> {
    let marker = "status code: ";
    let start = text.find(marker)? + marker.len();
    text.get(start..start + 3)?.parse().ok()
}

/// A stream whose every piece must arrive within `timeout` of being asked for: a server that
/// stops sending fails the stream, a reader that stops reading does not.
fn idle_limited(
    inner: BoxStream<'static, object_store::Result<Bytes>>,
    timeout: Duration,
    backend: &'static str,
) -> ByteStream {
    stream::unfold(Some(inner), move |state| async move {
        let mut inner = state?;
        match tokio::time::timeout(timeout, inner.next()).await {
            Ok(Some(Ok(bytes))) => Some((Ok(bytes), Some(inner))),
            Ok(Some(Err(e))) => Some((Err(map_error(e)), None)),
            Ok(None) => None,
            Err(_) => Some((
                Err(BlobError::Unavailable(format!(
                    "{backend} blob store: no data for {} ms while streaming",
                    timeout.as_millis()
                ))),
                None,
            )),
        }
    })
    .boxed()
}

#[async_trait]
impl BlobStore for ObjectBlobStore {
    async fn put(&self, key: &str, bytes: Bytes) -> BlobResult<()> {
        let path = writable_path(key)?;
        self.within("put", async {
            self.store.put(&path, PutPayload::from(bytes)).await.map_err(map_error)?;
            Ok(())
        })
        .await
    }

    async fn get(&self, key: &str) -> BlobResult<Bytes> {
        let path = key_path(key)?;
        self.within("get", async {
            self.store.get(&path).await.map_err(map_error)?.bytes().await.map_err(map_error)
        })
        .await
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> BlobResult<ByteStream> {
        let path = key_path(key)?;
        if range.start >= range.end {
            return Err(BlobError::Invalid(format!("empty byte range {range:?} of {key:?}")));
        }
        let past_end = |size: u64| {
            BlobError::Invalid(format!("byte range {range:?} reaches past the end of {key:?} ({size} bytes)"))
        };
        let options = GetOptions::default().with_range(Some(range.clone()));
        self.within("get_range", async {
            match self.stream_store.get_opts(&path, options).await.map_err(map_error) {
                // object_store cuts a range that ends past the end to the object's end.
                Ok(result) if result.range != range => Err(past_end(result.meta.size)),
                Ok(result) => Ok(idle_limited(result.into_stream(), self.timeout, self.backend)),
                // A range that starts at or past the end is S3's 416 InvalidRange (`Invalid`);
                // the local backend reports it as an I/O error, so the object's size tells.
                Err(error @ BlobError::Unavailable(_)) if self.multipart.is_none() => {
                    match self.store.head(&path).await.map_err(map_error) {
                        Ok(meta) if range.end > meta.size => Err(past_end(meta.size)),
                        Err(BlobError::NotFound) => Err(BlobError::NotFound),
                        _ => Err(error),
                    }
                }
                Err(error) => Err(error),
            }
        })
        .await
    }

    async fn head(&self, key: &str) -> BlobResult<Option<BlobEntry>> {
        let path = key_path(key)?;
        self.within("head", async {
            match self.store.head(&path).await {
                Ok(meta) => Ok(Some(entry(meta))),
                Err(e) => match map_error(e) {
                    BlobError::NotFound => Ok(None),
                    other => Err(other),
                },
            }
        })
        .await
    }

    async fn delete(&self, key: &str) -> BlobResult<()> {
        let path = key_path(key)?;
        self.within("delete", async {
            match self.store.delete(&path).await.map_err(map_error) {
                Ok(()) | Err(BlobError::NotFound) => Ok(()),
                Err(other) => Err(other),
            }
        })
        .await
    }

    /// `prefix` is empty (every object) or a key followed by `/`. The local backend's
    /// multipart staging shows only when `prefix` itself is under `_multipart/`.
    async fn list(&self, prefix: &str) -> BlobResult<Vec<BlobEntry>> {
        let dir = match prefix {
            "" => None,
            _ => match prefix.strip_suffix('/') {
                Some(dir) => Some(key_path(dir)?),
                None => {
                    return Err(BlobError::Invalid(format!(
                        "blob list prefix must end in '/', got {prefix:?}"
                    )));
                }
            },
        };
        let staging = format!("{STAGING}/");
        let show_staging = prefix.starts_with(&staging);
        self.within("list", async {
            let metas: Vec<ObjectMeta> =
                self.store.list(dir.as_ref()).try_collect().await.map_err(map_error)?;
            Ok(metas
                .into_iter()
                .map(entry)
                .filter(|e| show_staging || !e.key.starts_with(&staging))
                .collect())
        })
        .await
    }

    async fn create_multipart(&self, key: &str) -> BlobResult<String> {
        let path = writable_path(key)?;
        self.within("create_multipart", async {
            match &self.multipart {
                Some(s3) => s3.create_multipart(&path).await.map_err(map_error),
                None => {
                    let upload = uuid::Uuid::now_v7().to_string();
                    let marker = staging_path(&upload, "upload");
                    self.store.put(&marker, PutPayload::from(key.to_string())).await.map_err(map_error)?;
                    Ok(upload)
                }
            }
        })
        .await
    }

    async fn put_part(&self, key: &str, upload: &str, index: u32, bytes: Bytes) -> BlobResult<String> {
        let path = writable_path(key)?;
        if index >= MAX_PARTS {
            return Err(BlobError::Invalid(format!("part index {index} is not below {MAX_PARTS}")));
        }
        self.within("put_part", async {
            match &self.multipart {
                Some(s3) => {
                    match s3
                        .put_part(&path, &upload.to_string(), index as usize, PutPayload::from(bytes))
                        .await
                    {
                        Ok(part) => Ok(part.content_id),
                        Err(e) => Err(self.upload_error(&path, e).await),
                    }
                }
                None => {
                    self.local_upload_of(key, upload).await?;
                    let part = staging_path(upload, &format!("{index:06}"));
                    let put = self.store.put(&part, PutPayload::from(bytes)).await.map_err(map_error)?;
                    // The tag names this version of the part, as S3's ETag does: completing with
                    // the tag of a part that was replaced since fails.
                    Ok(put.e_tag.unwrap_or_else(|| format!("{index:06}")))
                }
            }
        })
        .await
    }

    async fn complete_multipart(&self, key: &str, upload: &str, tags: Vec<String>) -> BlobResult<()> {
        let path = writable_path(key)?;
        if tags.is_empty() {
            return Err(BlobError::Invalid(format!("multipart upload of {key:?} completed without parts")));
        }
        self.within("complete_multipart", async {
            match &self.multipart {
                Some(s3) => {
                    let parts = tags.into_iter().map(|content_id| PartId { content_id }).collect();
                    match s3.complete_multipart(&path, &upload.to_string(), parts).await {
                        Ok(_) => Ok(()),
                        Err(e) => Err(self.upload_error(&path, e).await),
                    }
                }
                None => self.local_complete(key, &path, upload, &tags).await,
            }
        })
        .await
    }

    async fn abort_multipart(&self, key: &str, upload: &str) -> BlobResult<()> {
        let path = key_path(key)?;
        self.within("abort_multipart", async {
            let result = match &self.multipart {
                Some(s3) => match s3.abort_multipart(&path, &upload.to_string()).await {
                    Ok(()) => Ok(()),
                    Err(e) => Err(self.upload_error(&path, e).await),
                },
                None => self.local_drop_upload(upload).await,
            };
            match result {
                Ok(()) | Err(BlobError::NotFound) => Ok(()),
                Err(other) => Err(other),
            }
        })
        .await
    }

    fn backend(&self) -> &'static str {
        self.backend
    }
}

/// `_multipart/<upload>/<name>`; `upload` is checked to be one of our ids before use.
fn staging_path(upload: &str, name: &str) -> Path {
    Path::from_iter([STAGING, upload, name])
}

/// The local multipart emulation.
impl ObjectBlobStore {
    /// Checks that `upload` is an unfinished upload of `key` (`NotFound` otherwise).
    async fn local_upload_of(&self, key: &str, upload: &str) -> BlobResult<()> {
        if uuid::Uuid::parse_str(upload).is_err() {
            return Err(BlobError::NotFound);
        }
        let marker = self.store.get(&staging_path(upload, "upload")).await.map_err(map_error)?;
        let created_for = marker.bytes().await.map_err(map_error)?;
        if created_for != key.as_bytes() {
            return Err(BlobError::NotFound);
        }
        Ok(())
    }

    /// Checks the parts as S3 does (each present with its tag, each but the last at least
    /// `MIN_PART_BYTES`), streams them in order into `path`, then drops the staging objects.
    async fn local_complete(&self, key: &str, path: &Path, upload: &str, tags: &[String]) -> BlobResult<()> {
        self.local_upload_of(key, upload).await?;
        let mut parts = Vec::with_capacity(tags.len());
        for (index, tag) in tags.iter().enumerate() {
            let part = staging_path(upload, &format!("{index:06}"));
            let meta = match self.store.head(&part).await.map_err(map_error) {
                Ok(meta) => meta,
                Err(BlobError::NotFound) => {
                    return Err(BlobError::Invalid(format!(
                        "part {index} of the upload of {key:?} was not stored"
                    )));
                }
                Err(other) => return Err(other),
            };
            if meta.e_tag.as_deref().is_some_and(|e_tag| e_tag != tag) {
                return Err(BlobError::Invalid(format!(
                    "part {index} of the upload of {key:?} does not match its tag (stored again since?)"
                )));
            }
            if index + 1 < tags.len() && meta.size < MIN_PART_BYTES as u64 {
                return Err(BlobError::Invalid(format!(
                    "part {index} of the upload of {key:?} is {} bytes; every part but the last must be at least {MIN_PART_BYTES}",
                    meta.size
                )));
            }
            parts.push(part);
        }

        let upload_to = self.store.put_multipart(path).await.map_err(map_error)?;
        let mut writer = WriteMultipart::new(upload_to);
        for part in &parts {
            let mut chunks = self.store.get(part).await.map_err(map_error)?.into_stream();
            while let Some(chunk) = chunks.next().await {
                let chunk = chunk.map_err(map_error)?;
                // At most two 5 MiB blocks in flight: memory stays bounded whatever the size.
                writer.wait_for_capacity(2).await.map_err(map_error)?;
                writer.put(chunk);
            }
        }
        // Dropping an unfinished writer removes its temporary file; `finish` renames it into
        // place, so readers see the old object or the whole new one.
        writer.finish().await.map_err(map_error)?;

        if let Err(error) = self.local_drop_upload(upload).await {
            tracing::warn!(upload, %error, "Multipart staging left behind after completion");
        }
        Ok(())
    }

    /// Deletes `_multipart/<upload>/`: its parts, then the marker (so an interrupted abort
    /// can be repeated).
    async fn local_drop_upload(&self, upload: &str) -> BlobResult<()> {
        if uuid::Uuid::parse_str(upload).is_err() {
            return Ok(());
        }
        let dir = Path::from_iter([STAGING, upload]);
        let metas: Vec<ObjectMeta> = self.store.list(Some(&dir)).try_collect().await.map_err(map_error)?;
        let marker = staging_path(upload, "upload");
        let (markers, parts): (Vec<_>, Vec<_>) = metas.into_iter().partition(|m| m.location == marker);
        for meta in parts.into_iter().chain(markers) {
            match self.store.delete(&meta.location).await.map_err(map_error) {
                Ok(()) | Err(BlobError::NotFound) => {}
                Err(other) => return Err(other),
            }
        }
        Ok(())
    }
}
