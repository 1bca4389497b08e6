//! REST conversations: list with unread counts, open the direct conversation with a user, and
//! page through history.

use super::{ApiResult, Authenticated, NodeData};
use crate::error::Error;
use crate::model::{ConversationId, UserId};
use actix_web::{HttpResponse, web};
use serde::Deserialize;

pub async fn list(node: NodeData, who: Authenticated) -> ApiResult<HttpResponse> {
    let conversations = node.reader.summaries(who.0.user_id).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "conversations": conversations })))
}

#[derive(Deserialize)]
pub struct DirectRequest {
    user_id: UserId,
}

pub async fn open_direct(
    node: NodeData,
    who: Authenticated,
    body: web::Json<DirectRequest>,
) -> ApiResult<HttpResponse> {
    let peer = body.user_id;
    if node.accounts.user(peer).await?.is_none() {
        return Err(Error::not_found("no such user").into());
    }
    let info = node.conversations.open_direct(who.0.user_id, peer).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "conversation_id": info.id,
        "kind": info.kind,
        "members": info.members.to_vec(),
    })))
}

#[derive(Deserialize)]
pub struct PageQuery {
    before: Option<u64>,
    limit: Option<u32>,
}

pub async fn messages(
    node: NodeData,
    who: Authenticated,
    id: web::Path<String>,
    query: web::Query<PageQuery>,
) -> ApiResult<HttpResponse> {
    let id: ConversationId =
        id.parse().map_err(|_| Error::bad_request("malformed conversation id (expected a UUID)"))?;
    let (messages, has_more) = node.reader.history(who.0.user_id, id, query.before, query.limit).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "messages": messages, "has_more": has_more })))
}
