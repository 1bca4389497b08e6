//! The `[attachments]` section: where blobs live (a local directory or an S3-compatible
//! server), upload limits, the lifecycle sweep, signed links and the image decoder's limits.

use super::ConfigError;
use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AttachmentsConfig {
    /// "local" (files under `blob_dir`) or "s3" (the `s3_*` keys).
    pub blob_backend: String,
    /// The local backend's directory; empty means `<data_dir>/blobs`.
    pub blob_dir: String,
    /// S3 endpoint URL (e.g. `http://127.0.0.1:8014`); empty means AWS for `s3_region`.
    pub s3_endpoint: String,
    pub s3_region: String,
    pub s3_bucket: String,
    /// Path-style requests (`endpoint/bucket/key`), as most S3-compatible servers want.
    pub s3_path_style: bool,
    pub s3_access_key: String,
    pub s3_secret_key: String,
    /// Largest attachment, in bytes.
    pub attachment_max_bytes: u64,
    /// An upload not finished, or an attachment not sent in a message, within this many
    /// seconds is deleted by the sweep.
    pub upload_ttl_s: u64,
    /// How often the lifecycle sweep runs, in seconds.
    pub sweep_interval_s: u64,
    /// How long a signed attachment link (`?exp=…&sig=…`) stays valid, in seconds.
    pub link_ttl_s: u64,
    /// Images wider or taller than this, in pixels, are refused.
    pub image_max_side: u32,
    /// Images with more pixels than this are refused (a decompression bomb stays small on
    /// the wire and huge in memory).
    pub image_max_pixels: u64,
    /// Images larger than this many bytes are stored without a thumbnail.
    pub image_max_bytes: u64,
    /// A blob store request that takes longer than this fails, in ms.
    pub blob_timeout_ms: u64,
}

impl Default for AttachmentsConfig {
    fn default() -> Self {
        AttachmentsConfig {
            blob_backend: "local".into(),
            blob_dir: String::new(),
            s3_endpoint: String::new(),
            s3_region: "us-east-1".into(),
            s3_bucket: "switchboard".into(),
            s3_path_style: true,
            s3_access_key: String::new(),
            s3_secret_key: String::new(),
            attachment_max_bytes: 100 * 1024 * 1024,
            upload_ttl_s: 24 * 3600,
            sweep_interval_s: 600,
            link_ttl_s: 3600,
            image_max_side: 10_000,
            image_max_pixels: 40_000_000,
            image_max_bytes: 32 * 1024 * 1024,
            blob_timeout_ms: 10_000,
        }
    }
}

impl fmt::Debug for AttachmentsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secret = |s: &str| if s.is_empty() { "<unset>" } else { "<redacted>" };
        f.debug_struct("AttachmentsConfig")
            .field("blob_backend", &self.blob_backend)
            .field("blob_dir", &self.blob_dir)
            .field("s3_endpoint", &self.s3_endpoint)
            .field("s3_region", &self.s3_region)
            .field("s3_bucket", &self.s3_bucket)
            .field("s3_path_style", &self.s3_path_style)
            .field("s3_access_key", &secret(&self.s3_access_key))
            .field("s3_secret_key", &secret(&self.s3_secret_key))
            .field("attachment_max_bytes", &self.attachment_max_bytes)
            .field("upload_ttl_s", &self.upload_ttl_s)
            .field("sweep_interval_s", &self.sweep_interval_s)
            .field("link_ttl_s", &self.link_ttl_s)
            .field("image_max_side", &self.image_max_side)
            .field("image_max_pixels", &self.image_max_pixels)
            .field("image_max_bytes", &self.image_max_bytes)
            .field("blob_timeout_ms", &self.blob_timeout_ms)
            .finish()
    }
}

impl AttachmentsConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, message: String| Err(ConfigError::Invalid { key, message });
        match self.blob_backend.as_str() {
            "local" => {}
            "s3" => {
                if self.s3_bucket.is_empty() {
                    return invalid("attachments.s3_bucket", "is required when blob_backend = \"s3\"".into());
                }
                if self.s3_access_key.is_empty() != self.s3_secret_key.is_empty() {
                    return invalid(
                        "attachments.s3_secret_key",
                        "set both s3_access_key and s3_secret_key, or neither".into(),
                    );
                }
                let scheme_ok = ["http://", "https://"].iter().any(|p| self.s3_endpoint.starts_with(p));
                if !self.s3_endpoint.is_empty() && !scheme_ok {
                    return invalid(
                        "attachments.s3_endpoint",
                        format!("must be an http:// or https:// URL, not {:?}", self.s3_endpoint),
                    );
                }
            }
            other => {
                return invalid(
                    "attachments.blob_backend",
                    format!("must be \"local\" or \"s3\", not {other:?}"),
                );
            }
        }
        if self.attachment_max_bytes == 0 {
            return invalid("attachments.attachment_max_bytes", "must be at least 1".into());
        }
        // The sweep must leave a sender time to use a finished upload: sends refuse
        // attachments in the last tenth of their TTL, so the sweep never races a send.
        if self.upload_ttl_s < 600 {
            return invalid("attachments.upload_ttl_s", "must be at least 600 (10 minutes)".into());
        }
        for (key, value) in [
            ("attachments.sweep_interval_s", self.sweep_interval_s),
            ("attachments.link_ttl_s", self.link_ttl_s),
        ] {
            if value == 0 {
                return invalid(key, "must be at least 1".into());
            }
        }
        if self.image_max_side < 320 || self.image_max_pixels < 320 * 320 {
            return invalid(
                "attachments.image_max_side",
                "image limits must allow at least 320 × 320 pixels".into(),
            );
        }
        if self.blob_timeout_ms < 100 {
            return invalid("attachments.blob_timeout_ms", "must be at least 100".into());
        }
        Ok(())
    }
}
