//! `GET /v1/ws`: authenticates the upgrade (bearer header, or the first frame for browsers),
//! upgrades with bounded frame sizes and starts a Session actor.

use super::{ApiError, ApiResult, NodeData, bearer_token};
use crate::error::{Error, ErrorCode};
use crate::session::Session;
use actix_web::{HttpRequest, HttpResponse, web};

pub async fn upgrade(req: HttpRequest, body: web::Payload, node: NodeData) -> ApiResult<HttpResponse> {
    if node.is_draining() {
        return Err(Error::new(ErrorCode::Unavailable, "node is draining; connect to another").into());
    }
    let identity = match bearer_token(&req) {
        Some(token) => Some(node.accounts.authenticate(token).await?),
        None => None,
    };
    let (response, socket, stream) =
        actix_ws::handle(&req, body).map_err(|e| ApiError(Error::bad_request(e.to_string())))?;
    let max = node.config.websocket.max_frame_bytes as usize;
    let stream = stream.max_frame_size(max).aggregate_continuations().max_continuation_size(max);
    Session::start(node.get_ref().clone(), identity, socket, stream);
    Ok(response)
}
