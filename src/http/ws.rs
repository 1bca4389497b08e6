//! `GET /v1/ws`: authenticates the upgrade (bearer header, or the first frame for browsers),
//! upgrades with bounded frame sizes and starts a Session actor. actix-ws does the handshake
//! and decodes client frames; the response body is the session's byte-bounded outbox.

use super::transport::AbortHandle;
use super::{ApiError, ApiResult, NodeData, bearer_token};
use crate::error::{Error, ErrorCode};
use crate::session::Session;
use crate::session::outbox::{Outbox, OutboxBody};
use actix_web::body::{BodyStream, MessageBody};
use actix_web::{HttpRequest, HttpResponse, web};

pub async fn upgrade(req: HttpRequest, body: web::Payload, node: NodeData) -> ApiResult<HttpResponse> {
    if node.is_draining() {
        return Err(Error::new(ErrorCode::Unavailable, "node is draining; connect to another").into());
    }
    let identity = match bearer_token(&req) {
        Some(token) => Some(node.accounts.authenticate(token).await?),
        None => None,
    };
    let (response, _sender, stream) =
        actix_ws::handle(&req, body).map_err(|e| ApiError(Error::bad_request(e.to_string())))?;
    let deps = node.sessions.clone();
    let max = deps.websocket.max_frame_bytes as usize;
    let stream = stream.max_frame_size(max).aggregate_continuations().max_continuation_size(max);
    let socket = req
        .conn_data::<AbortHandle>()
        .cloned()
        .map(|handle| Box::new(move || handle.abort()) as crate::session::outbox::Abort);
    let outbox = Outbox::new(deps.websocket.outbound_bytes as usize, socket);
    // actix-ws's own body (fed by `_sender`, which is dropped) is replaced by the outbox; it is
    // kept inside ours, unpolled, because dropping it tells the request stream the connection
    // ended.
    let response = response
        .map_body(|_, original| BodyStream::new(OutboxBody::new(outbox.clone(), Box::new(original))).boxed());
    Session::start(deps, identity, outbox, stream);
    Ok(response)
}
