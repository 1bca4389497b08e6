//! REST for attachments: resumable uploads (create, continue from an offset, status, cancel)
//! and downloads of a file or its thumbnail — byte ranges, ETag, Cache-Control — for a bearer
//! token of a reader, or for a signed link (`?exp=…&sig=…`) alone. The protocol is in
//! docs/protocol.md § Attachments.

use super::{ApiError, ApiResult, Authenticated, NodeData, bearer_token};
use crate::attachment::{Access, Download, UploadStatus, Which};
use crate::error::Error;
use crate::model::{AttachmentId, ConversationId};
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, ResponseError, web};
use serde::Deserialize;

fn header_u64(req: &HttpRequest, name: &str) -> Result<Option<u64>, Error> {
    match req.headers().get(name) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .map(Some)
            .ok_or_else(|| Error::bad_request(format!("{name} must be a non-negative integer"))),
    }
}

fn upload_id(raw: &str) -> Result<AttachmentId, Error> {
    raw.parse().map_err(|_| Error::not_found("no such upload"))
}

/// The answer to an upload request: its status as JSON, plus `Upload-Offset`,
/// `Upload-Length` and the upload's `Location`.
fn upload_reply(mut reply: actix_web::HttpResponseBuilder, status: &UploadStatus) -> HttpResponse {
    reply
        .insert_header(("Upload-Offset", status.offset.to_string()))
        .insert_header(("Upload-Length", status.length.to_string()))
        .insert_header((header::LOCATION, format!("/v1/uploads/{}", status.upload_id)))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(status)
}

#[derive(Deserialize)]
pub struct CreateQuery {
    #[serde(default)]
    name: String,
}

/// `POST /v1/conversations/{id}/attachments?name=…` with `Upload-Length` (or, for a file sent
/// whole in this request, just `Content-Length`). The body, if any, is the file from offset 0.
pub async fn create(
    node: NodeData,
    who: Authenticated,
    path: web::Path<String>,
    query: web::Query<CreateQuery>,
    req: HttpRequest,
    body: web::Payload,
) -> ApiResult<HttpResponse> {
    let conversation: ConversationId =
        path.parse().map_err(|_| Error::bad_request("malformed conversation id (expected a UUID)"))?;
    let content_length = header_u64(&req, "Content-Length")?;
    let length = header_u64(&req, "Upload-Length")?
        .or(content_length)
        .ok_or_else(|| Error::bad_request("Upload-Length is required (the whole file's size in bytes)"))?;
    let status = node.attachments.create(who.0.user_id, conversation, &query.name, length).await?;
    let has_body =
        content_length.is_some_and(|n| n > 0) || req.headers().contains_key(header::TRANSFER_ENCODING);
    if !has_body && length > 0 {
        return Ok(upload_reply(HttpResponse::Created(), &status));
    }
    match node.attachments.append(who.0.user_id, status.upload_id, 0, body).await {
        Ok(done) => Ok(upload_reply(HttpResponse::Created(), &done)),
        Err(e) => {
            // The client learns which upload to continue even when this request failed.
            let mut reply = ApiError(e).error_response();
            if let Ok(location) = HeaderValue::from_str(&format!("/v1/uploads/{}", status.upload_id)) {
                reply.headers_mut().insert(header::LOCATION, location);
            }
            Ok(reply)
        }
    }
}

/// `PATCH /v1/uploads/{id}` with `Upload-Offset`: the file's bytes from that offset.
pub async fn append(
    node: NodeData,
    who: Authenticated,
    path: web::Path<String>,
    req: HttpRequest,
    body: web::Payload,
) -> ApiResult<HttpResponse> {
    let id = upload_id(&path)?;
    let offset =
        header_u64(&req, "Upload-Offset")?.ok_or_else(|| Error::bad_request("Upload-Offset is required"))?;
    let status = node.attachments.append(who.0.user_id, id, offset, body).await?;
    Ok(upload_reply(HttpResponse::Ok(), &status))
}

/// `GET` or `HEAD /v1/uploads/{id}`: where the upload stands.
pub async fn status(node: NodeData, who: Authenticated, path: web::Path<String>) -> ApiResult<HttpResponse> {
    let status = node.attachments.status(who.0.user_id, upload_id(&path)?).await?;
    Ok(upload_reply(HttpResponse::Ok(), &status))
}

/// `DELETE /v1/uploads/{id}`: drops an unfinished upload.
pub async fn cancel(node: NodeData, who: Authenticated, path: web::Path<String>) -> ApiResult<HttpResponse> {
    node.attachments.cancel(who.0.user_id, upload_id(&path)?).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// `GET /v1/attachments/{id}/info`: the attachment as a message shows it, with fresh links.
pub async fn info(node: NodeData, who: Authenticated, path: web::Path<String>) -> ApiResult<HttpResponse> {
    Ok(HttpResponse::Ok().json(node.attachments.view(who.0.user_id, &path).await?))
}

#[derive(Deserialize)]
pub struct LinkQuery {
    exp: Option<u64>,
    sig: Option<String>,
}

/// `GET`/`HEAD /v1/attachments/{id}`: the file.
pub async fn file(
    node: NodeData,
    path: web::Path<String>,
    query: web::Query<LinkQuery>,
    req: HttpRequest,
) -> ApiResult<HttpResponse> {
    serve(node, &path, Which::File, query.into_inner(), req).await
}

/// `GET`/`HEAD /v1/attachments/{id}/thumbnail`: its thumbnail.
pub async fn thumbnail(
    node: NodeData,
    path: web::Path<String>,
    query: web::Query<LinkQuery>,
    req: HttpRequest,
) -> ApiResult<HttpResponse> {
    serve(node, &path, Which::Thumbnail, query.into_inner(), req).await
}

async fn serve(
    node: NodeData,
    id: &str,
    which: Which,
    link: LinkQuery,
    req: HttpRequest,
) -> ApiResult<HttpResponse> {
    let access = match (link.exp, link.sig) {
        (Some(exp), Some(sig)) => Access::Link { exp, sig },
        _ => {
            let token = bearer_token(&req).ok_or_else(Error::unauthorized)?;
            Access::Member(node.accounts.authenticate(token).await?.user_id)
        }
    };
    let d = node.attachments.download(id, which, access).await?;
    let etag = format!("\"{}\"", d.sha256);
    let mut reply = HttpResponse::Ok();
    reply
        .insert_header((header::ETAG, etag.clone()))
        .insert_header((header::CACHE_CONTROL, "private, max-age=31536000, immutable"))
        .insert_header((header::ACCEPT_RANGES, "bytes"))
        .insert_header((header::CONTENT_TYPE, d.content_type.clone()))
        .insert_header((header::CONTENT_DISPOSITION, disposition(&d)))
        .insert_header(("X-Content-Type-Options", "nosniff"))
        .insert_header(("Content-Security-Policy", "default-src 'none'; img-src 'self'; sandbox"));
    let matches_etag = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    if matches_etag {
        reply.status(actix_web::http::StatusCode::NOT_MODIFIED);
        return Ok(reply.finish());
    }
    let range = match req.headers().get(header::RANGE).and_then(|v| v.to_str().ok()) {
        None => 0..d.size,
        Some(spec) => match parse_range(spec, d.size) {
            Some(Ok(r)) => {
                reply.status(actix_web::http::StatusCode::PARTIAL_CONTENT);
                reply.insert_header((
                    header::CONTENT_RANGE,
                    format!("bytes {}-{}/{}", r.start, r.end - 1, d.size),
                ));
                r
            }
            Some(Err(())) => {
                let mut refused =
                    ApiError(Error::bad_request(format!("range not satisfiable: {spec}"))).error_response();
                *refused.status_mut() = actix_web::http::StatusCode::RANGE_NOT_SATISFIABLE;
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{}", d.size)) {
                    refused.headers_mut().insert(header::CONTENT_RANGE, v);
                }
                return Ok(refused);
            }
            None => 0..d.size,
        },
    };
    let length = range.end - range.start;
    if req.method() == actix_web::http::Method::HEAD {
        // A body of the right size that is never sent (HEAD): the headers say the length.
        let none = futures_util::stream::empty::<Result<bytes::Bytes, Error>>();
        return Ok(reply.no_chunking(length).streaming(none));
    }
    let bytes = node.attachments.bytes(&d, range).await?;
    Ok(reply.no_chunking(length).streaming(bytes))
}

/// One `bytes=` range of a `size`-byte object: `None` to ignore the header (not bytes, or
/// several ranges: the whole object is sent), `Some(Err)` when it cannot be satisfied.
fn parse_range(spec: &str, size: u64) -> Option<Result<std::ops::Range<u64>, ()>> {
    let spec = spec.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (from, to) = spec.split_once('-')?;
    let (from, to) = (from.trim(), to.trim());
    let range = if from.is_empty() {
        let n: u64 = to.parse().ok()?;
        if n == 0 {
            return Some(Err(()));
        }
        size.saturating_sub(n)..size
    } else {
        let start: u64 = from.parse().ok()?;
        let end = if to.is_empty() { size } else { to.parse::<u64>().ok()?.saturating_add(1).min(size) };
        if start >= size || end <= start {
            return Some(Err(()));
        }
        start..end
    };
    if range.is_empty() { Some(Err(())) } else { Some(Ok(range)) }
}

/// `inline` for pictures, `attachment` for anything else, with the file name (RFC 6266).
fn disposition(d: &Download) -> String {
    let mut encoded = String::new();
    for b in d.name.bytes() {
        if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
            encoded.push(b as char);
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    let kind = if d.inline { "inline" } else { "attachment" };
    format!("{kind}; filename*=UTF-8''{encoded}")
}

#[cfg(test)]
mod tests {
    use super::parse_range;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Some(Ok(0..10)));
        assert_eq!(parse_range("bytes=90-", 100), Some(Ok(90..100)));
        assert_eq!(parse_range("bytes=-5", 100), Some(Ok(95..100)));
        assert_eq!(parse_range("bytes=95-200", 100), Some(Ok(95..100)));
        assert_eq!(parse_range("bytes=100-", 100), Some(Err(())));
        assert_eq!(parse_range("bytes=5-2", 100), Some(Err(())));
        assert_eq!(parse_range("bytes=0-1,5-6", 100), None);
        assert_eq!(parse_range("items=0-1", 100), None);
        assert_eq!(parse_range("bytes=0-0", 0), Some(Err(())));
    }
}
