//! The HTTP edge, the only code that imports actix_web: the route table (`configure`), the
//! REST error shape, bearer-token authentication, and the web client's files (`web_client.rs`).

mod accounts;
mod attachments;
mod conversations;
mod groups;
mod health;
pub mod server;
pub mod transport;
mod web_client;
mod ws;

use crate::account::Identity;
use crate::error::{Error, ErrorCode};
use crate::node::Node;
use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpRequest, HttpResponse, ResponseError, web};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// Largest accepted REST JSON body.
const JSON_LIMIT: usize = 64 * 1024;

/// The whole route table.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.app_data(web::JsonConfig::default().limit(JSON_LIMIT).error_handler(|err, _| {
        let code = match &err {
            actix_web::error::JsonPayloadError::Overflow { .. }
            | actix_web::error::JsonPayloadError::OverflowKnownLength { .. } => ErrorCode::TooLarge,
            _ => ErrorCode::BadRequest,
        };
        ApiError(Error::new(code, err.to_string())).into()
    }))
    .app_data(
        web::PathConfig::default()
            .error_handler(|err, _| ApiError(Error::bad_request(format!("malformed path: {err}"))).into()),
    )
    .app_data(
        web::QueryConfig::default()
            .error_handler(|err, _| ApiError(Error::bad_request(err.to_string())).into()),
    )
    .route("/", web::get().to(web_client::index))
    .route("/index.html", web::get().to(web_client::index))
    .route("/healthz", web::get().to(health::healthz))
    .route("/readyz", web::get().to(health::readyz))
    .route("/metrics", web::get().to(health::metrics))
    .service(
        web::scope("/v1")
            .route("/register", web::post().to(accounts::register))
            .route("/login", web::post().to(accounts::login))
            .route("/logout", web::post().to(accounts::logout))
            .route("/me", web::get().to(accounts::me))
            .route("/users", web::get().to(accounts::users_by_id))
            .route("/users/{username}", web::get().to(accounts::user_by_name))
            .route("/conversations", web::get().to(conversations::list))
            .route("/conversations/direct", web::post().to(conversations::open_direct))
            .route("/conversations/group", web::post().to(groups::create))
            .route("/conversations/{id}", web::patch().to(groups::rename))
            .route("/conversations/{id}", web::delete().to(groups::delete))
            .route("/conversations/{id}/members", web::get().to(groups::members))
            .route("/conversations/{id}/members", web::post().to(groups::add))
            .route("/conversations/{id}/members/{user_id}", web::delete().to(groups::remove))
            .route("/conversations/{id}/members/{user_id}/role", web::put().to(groups::set_role))
            .route("/conversations/{id}/leave", web::post().to(groups::leave))
            .route("/conversations/{id}/messages", web::get().to(conversations::messages))
            .route("/conversations/{id}/messages/{seq}/receipts", web::get().to(groups::receipts))
            .route("/conversations/{id}/attachments", web::post().to(attachments::create))
            .route("/uploads/{id}", web::patch().to(attachments::append))
            .route("/uploads/{id}", web::get().to(attachments::status))
            .route("/uploads/{id}", web::head().to(attachments::status))
            .route("/uploads/{id}", web::delete().to(attachments::cancel))
            .route("/attachments/{id}", web::get().to(attachments::file))
            .route("/attachments/{id}", web::head().to(attachments::file))
            .route("/attachments/{id}/thumbnail", web::get().to(attachments::thumbnail))
            .route("/attachments/{id}/thumbnail", web::head().to(attachments::thumbnail))
            .route("/attachments/{id}/info", web::get().to(attachments::info))
            .route("/ws", web::get().to(ws::upgrade)),
    )
    .default_service(web::to(|req: HttpRequest| async move {
        match web_client::static_file(&req) {
            Some(file) => file,
            None => ApiError(Error::not_found("no such route")).error_response(),
        }
    }));
}

/// An `Error` as a REST reply: the status plus `{"error": {"code", "message"}}`, and a
/// `Retry-After` header (seconds) when the error carries a retry hint.
#[derive(Debug)]
pub struct ApiError(pub Error);

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError(e)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> actix_web::http::StatusCode {
        actix_web::http::StatusCode::from_u16(self.0.code.http_status())
            .unwrap_or(actix_web::http::StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn error_response(&self) -> HttpResponse {
        let mut reply = HttpResponse::build(self.status_code());
        if let Some(secs) = self.0.retry_after_secs {
            reply.insert_header((actix_web::http::header::RETRY_AFTER, secs.to_string()));
        }
        reply.json(serde_json::json!({
            "error": { "code": self.0.code, "message": self.0.message }
        }))
    }
}

impl actix_web::Responder for ApiError {
    type Body = actix_web::body::BoxBody;
    fn respond_to(self, _: &HttpRequest) -> HttpResponse {
        self.error_response()
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// The node, as handlers receive it.
pub type NodeData = web::Data<Arc<Node>>;

/// The bearer token of a request, if it has an `Authorization: Bearer` header.
pub fn bearer_token(req: &HttpRequest) -> Option<&str> {
    let value = req.headers().get(actix_web::http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Extractor: the caller's identity from a valid bearer token, or 401 `unauthorized`.
pub struct Authenticated(pub Identity);

impl FromRequest for Authenticated {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let node = req.app_data::<NodeData>().cloned();
        let token = bearer_token(req).map(str::to_owned);
        Box::pin(async move {
            let node = node.ok_or_else(|| ApiError(Error::internal("node missing")))?;
            let token = token.ok_or_else(|| ApiError(Error::unauthorized()))?;
            Ok(Authenticated(node.accounts.authenticate(&token).await?))
        })
    }
}
