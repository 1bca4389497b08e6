//! Error vocabulary: `ErrorCode`, the small stable set of codes clients see, and `Error`, the
//! internal cause that carries one of them.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The stable error codes of the client protocol (`docs/protocol.md`). Renaming one breaks
/// clients; add new ones instead.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not JSON, unknown `type`, missing or wrongly typed field (WebSocket).
    BadFrame,
    /// Malformed or invalid REST request body or parameter.
    BadRequest,
    /// A body, frame or page larger than the configured limit.
    TooLarge,
    /// Missing, bad or revoked credentials.
    Unauthorized,
    /// Authenticated, but not allowed (e.g. not a member of the conversation).
    Forbidden,
    NotFound,
    /// Registration with a username that exists.
    UsernameTaken,
    /// Too many frames or requests; slow down.
    RateLimited,
    /// The message store could not durably store: nothing was stored, retry with the same
    /// `client_msg_id`.
    StoreUnavailable,
    /// Another dependency is down, or the node is draining.
    Unavailable,
    Internal,
    /// The request contradicts the current state (e.g. adding someone who is a member).
    Conflict,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadFrame => "bad_frame",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::UsernameTaken => "username_taken",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::StoreUnavailable => "store_unavailable",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
            ErrorCode::Conflict => "conflict",
        }
    }

    /// The HTTP status a REST reply with this code carries.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::BadFrame | ErrorCode::BadRequest => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::UsernameTaken | ErrorCode::Conflict => 409,
            ErrorCode::TooLarge => 413,
            ErrorCode::RateLimited => 429,
            ErrorCode::StoreUnavailable | ErrorCode::Unavailable => 503,
            ErrorCode::Internal => 500,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error with the code the client will see and a human message. Internal causes are logged
/// where they happen; the message sent to clients never contains secrets.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Error {
    pub code: ErrorCode,
    pub message: String,
    /// When the client may retry, in whole seconds (REST: the `Retry-After` header); set on
    /// `rate_limited` and overload (`unavailable`) answers.
    pub retry_after_secs: Option<u64>,
}

impl Error {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Error { code, message: message.into(), retry_after_secs: None }
    }
    /// `rate_limited`, retry after `wait` (rounded up to whole seconds, at least 1).
    pub fn rate_limited(message: impl Into<String>, wait: std::time::Duration) -> Self {
        Error::new(ErrorCode::RateLimited, message).with_retry_after(wait)
    }
    /// `unavailable` because the node is overloaded, retry after `wait`.
    pub fn overloaded(message: impl Into<String>, wait: std::time::Duration) -> Self {
        Error::new(ErrorCode::Unavailable, message).with_retry_after(wait)
    }
    /// Adds a retry hint: `wait` rounded up to whole seconds, at least 1.
    pub fn with_retry_after(mut self, wait: std::time::Duration) -> Self {
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        self.retry_after_secs = Some(secs.max(1));
        self
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Error::new(ErrorCode::BadRequest, message)
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Error::new(ErrorCode::Forbidden, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Error::new(ErrorCode::NotFound, message)
    }
    pub fn unauthorized() -> Self {
        Error::new(ErrorCode::Unauthorized, "missing, invalid or revoked token")
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Error::new(ErrorCode::Internal, message)
    }
}

impl From<crate::store::StoreError> for Error {
    fn from(e: crate::store::StoreError) -> Self {
        use crate::store::StoreError;
        match e {
            StoreError::Conflict(m) => Error::new(ErrorCode::BadRequest, m),
            StoreError::Unavailable(m) => {
                tracing::warn!(error = %m, "store unavailable");
                Error::new(ErrorCode::StoreUnavailable, "the message store is unavailable; retry later")
            }
            StoreError::Fenced(m) => {
                tracing::info!(reason = %m, "write fenced: the conversation moved to another owner");
                Error::new(ErrorCode::Unavailable, "the conversation is moving to another node; retry")
            }
            StoreError::Corrupt(m) => {
                tracing::error!(error = %m, "store returned corrupt data");
                Error::internal("internal error")
            }
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        let secs = |d| Error::rate_limited("slow down", d).retry_after_secs;
        assert_eq!(secs(Duration::ZERO), Some(1));
        assert_eq!(secs(Duration::from_millis(1)), Some(1));
        assert_eq!(secs(Duration::from_secs(2)), Some(2));
        assert_eq!(secs(Duration::from_millis(2001)), Some(3));
        assert_eq!(Error::bad_request("x").retry_after_secs, None);
    }
}
