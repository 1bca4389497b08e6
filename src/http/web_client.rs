//! The web client: the static files of `web/dist/` (built by `build.rs` / `scripts/web build`),
//! embedded in the binary and served at `/` — `index.html` never cached, the content-hashed
//! files under `assets/` cached for good. A binary built without them serves a page saying how
//! to build them.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse};
use rust_embed::RustEmbed;

#[derive(RustEmbed)]
#[folder = "web/dist/"]
#[allow_missing = true]
struct Assets;

/// What the page may load: only this origin (scripts, styles, the WebSocket, images).
const CSP: &str = "default-src 'self'; connect-src 'self'; img-src 'self' data: blob:; \
                   style-src 'self'; script-src 'self'; frame-ancestors 'none'; base-uri 'none'";

const NOT_BUILT: &str = "<!doctype html><meta charset=utf-8><title>switchboard</title>\
<p>The web client was not built into this binary. Run <code>scripts/web build</code> (needs Node.js \
and npm), then <code>cargo build</code> again.</p>";

fn file(path: &str) -> Option<HttpResponse> {
    let asset = Assets::get(path)?;
    let mime = asset.metadata.mimetype().to_owned();
    let cache = if path.starts_with("assets/") { "public, max-age=31536000, immutable" } else { "no-cache" };
    Some(
        HttpResponse::Ok()
            .insert_header((header::CONTENT_TYPE, mime))
            .insert_header((header::CACHE_CONTROL, cache))
            .insert_header((header::CONTENT_SECURITY_POLICY, CSP))
            .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
            .insert_header(("Referrer-Policy", "no-referrer"))
            .body(asset.data.into_owned()),
    )
}

/// `GET /` (and `/index.html`).
pub async fn index() -> HttpResponse {
    file("index.html").unwrap_or_else(|| {
        HttpResponse::Ok().insert_header((header::CONTENT_TYPE, "text/html; charset=utf-8")).body(NOT_BUILT)
    })
}

/// `GET /{file}` and `GET /assets/{file}` (or `HEAD`): a file of the client, or `None` for the
/// JSON 404.
pub fn static_file(req: &HttpRequest) -> Option<HttpResponse> {
    if req.method() != actix_web::http::Method::GET && req.method() != actix_web::http::Method::HEAD {
        return None;
    }
    let path = req.path().trim_start_matches('/');
    if path.is_empty() || path.contains("..") || path.starts_with("v1/") {
        return None;
    }
    file(path)
}
