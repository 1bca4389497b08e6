//! REST for groups: create, rename, add and remove members, leave, change roles (and hand
//! ownership over), delete, list members, and who has read a message. Every change goes to the
//! group's owner shard (`OwnerHandle::change`) and answers once its system message is stored.

use super::{ApiResult, Authenticated, NodeData};
use crate::conversation::owner::{ChangeRequest, valid_title};
use crate::error::{Error, ErrorCode};
use crate::model::{ConversationId, GroupAction, Role, UserId};
use actix_web::{HttpResponse, web};
use serde::Deserialize;

fn conversation_id(raw: &str) -> Result<ConversationId, Error> {
    raw.parse().map_err(|_| Error::bad_request("malformed conversation id (expected a UUID)"))
}

fn user_id(raw: &str) -> Result<UserId, Error> {
    raw.parse().map_err(|_| Error::bad_request("malformed user id (expected a UUID)"))
}

/// Refuses unknown users, naming the first.
async fn check_users_exist(node: &NodeData, users: &[UserId]) -> Result<(), Error> {
    let lookups = users.iter().map(|&u| async move { (u, node.accounts.user(u).await) });
    for (user, found) in futures_util::future::join_all(lookups).await {
        if found?.is_none() {
            return Err(Error::not_found(format!("no such user {user}")));
        }
    }
    Ok(())
}

/// Sends a change to the group's owner and answers with its system message.
async fn change(
    node: &NodeData,
    who: &Authenticated,
    id: ConversationId,
    action: GroupAction,
) -> ApiResult<HttpResponse> {
    let request = ChangeRequest { from: who.0, conversation_id: id, action };
    let changed = node
        .owner
        .change(request)?
        .await
        .map_err(|_| Error::new(ErrorCode::Unavailable, "the group's owner stopped; retry"))??;
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "conversation_id": id, "seq": changed.seq, "message_id": changed.message_id, "ts": changed.ts,
    })))
}

#[derive(Deserialize)]
pub struct CreateRequest {
    title: String,
    #[serde(default)]
    members: Vec<UserId>,
}

pub async fn create(
    node: NodeData,
    who: Authenticated,
    body: web::Json<CreateRequest>,
) -> ApiResult<HttpResponse> {
    let title = valid_title(&body.title)?;
    let me = who.0.user_id;
    let mut members: Vec<UserId> = body.members.iter().copied().filter(|u| *u != me).collect();
    members.sort();
    members.dedup();
    let max = node.config.limits.group_max_members as usize;
    if members.len() + 1 > max {
        return Err(Error::new(ErrorCode::TooLarge, format!("a group has at most {max} members")).into());
    }
    check_users_exist(&node, &members).await?;
    let info = node.conversations.create_group(me, title, &members).await?;
    // The creation message (seq 1). The group exists once stored above; if this fails the
    // client still gets its id with the error's code in `created_message`.
    let request = ChangeRequest { from: who.0, conversation_id: info.id, action: GroupAction::Create };
    let first = match node.owner.change(request) {
        Ok(rx) => rx.await.unwrap_or_else(|_| Err(Error::new(ErrorCode::Unavailable, "owner stopped"))),
        Err(e) => Err(e),
    };
    if let Err(e) = &first {
        tracing::warn!(conversation = %info.id, error = %e, "group created without its creation message");
    }
    let members: Vec<_> = info
        .members
        .iter()
        .map(|u| serde_json::json!({ "user_id": u, "role": info.role(*u).unwrap_or_default() }))
        .collect();
    Ok(HttpResponse::Created().json(serde_json::json!({
        "conversation_id": info.id, "kind": info.kind, "title": info.title, "members": members,
    })))
}

#[derive(Deserialize)]
pub struct RenameRequest {
    title: String,
}

pub async fn rename(
    node: NodeData,
    who: Authenticated,
    id: web::Path<String>,
    body: web::Json<RenameRequest>,
) -> ApiResult<HttpResponse> {
    let id = conversation_id(&id)?;
    change(&node, &who, id, GroupAction::Rename { title: valid_title(&body.title)? }).await
}

pub async fn delete(node: NodeData, who: Authenticated, id: web::Path<String>) -> ApiResult<HttpResponse> {
    change(&node, &who, conversation_id(&id)?, GroupAction::Delete).await
}

#[derive(Deserialize)]
pub struct AddRequest {
    user_ids: Vec<UserId>,
}

pub async fn add(
    node: NodeData,
    who: Authenticated,
    id: web::Path<String>,
    body: web::Json<AddRequest>,
) -> ApiResult<HttpResponse> {
    let id = conversation_id(&id)?;
    if body.user_ids.is_empty() {
        return Err(Error::bad_request("user_ids is empty").into());
    }
    if body.user_ids.len() > node.config.limits.group_max_members as usize {
        return Err(Error::new(ErrorCode::TooLarge, "more users than a group may have").into());
    }
    check_users_exist(&node, &body.user_ids).await?;
    change(&node, &who, id, GroupAction::Add { users: body.user_ids.clone() }).await
}

/// `DELETE …/members/{user_id}`: removes a member; naming yourself leaves.
pub async fn remove(
    node: NodeData,
    who: Authenticated,
    path: web::Path<(String, String)>,
) -> ApiResult<HttpResponse> {
    let (id, user) = (conversation_id(&path.0)?, user_id(&path.1)?);
    let action = if user == who.0.user_id { GroupAction::Leave } else { GroupAction::Remove { user } };
    change(&node, &who, id, action).await
}

pub async fn leave(node: NodeData, who: Authenticated, id: web::Path<String>) -> ApiResult<HttpResponse> {
    change(&node, &who, conversation_id(&id)?, GroupAction::Leave).await
}

#[derive(Deserialize)]
pub struct RoleRequest {
    role: String,
}

/// `PUT …/members/{user_id}/role`: `admin` or `member`; `owner` hands ownership over.
pub async fn set_role(
    node: NodeData,
    who: Authenticated,
    path: web::Path<(String, String)>,
    body: web::Json<RoleRequest>,
) -> ApiResult<HttpResponse> {
    let (id, user) = (conversation_id(&path.0)?, user_id(&path.1)?);
    let role = Role::parse(&body.role)
        .ok_or_else(|| Error::bad_request("role is one of \"owner\", \"admin\", \"member\""))?;
    change(&node, &who, id, GroupAction::SetRole { user, role }).await
}

/// The current members with their roles and watermarks (members only).
pub async fn members(node: NodeData, who: Authenticated, id: web::Path<String>) -> ApiResult<HttpResponse> {
    let id = conversation_id(&id)?;
    // Checked against the store (not a cached view), so a removal on any node counts at once.
    let (_, window) = node.conversations.reader(id, who.0.user_id).await?;
    if !window.is_active() {
        return Err(Error::forbidden("you are no longer a member of this group").into());
    }
    let members: Vec<_> = node
        .stores
        .chat
        .members(id)
        .await
        .map_err(Error::from)?
        .into_iter()
        .filter(|m| m.record.is_active())
        .map(|m| {
            serde_json::json!({
                "user_id": m.user_id, "role": m.record.role, "since_seq": m.record.since_seq,
                "delivered_seq": m.watermarks.delivered_seq, "read_seq": m.watermarks.read_seq,
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(serde_json::json!({ "conversation_id": id, "members": members })))
}

/// `GET …/messages/{seq}/receipts`: who has the message, and who has read it, among those who
/// may read it (members at the time it was sent).
pub async fn receipts(
    node: NodeData,
    who: Authenticated,
    path: web::Path<(String, u64)>,
) -> ApiResult<HttpResponse> {
    let (id, seq) = (conversation_id(&path.0)?, path.1);
    let (_, window) = node.conversations.reader(id, who.0.user_id).await?;
    if !window.can_read(seq) {
        return Err(Error::forbidden("that message is outside your membership").into());
    }
    let members = node.stores.chat.members(id).await.map_err(Error::from)?;
    let readers = members.iter().filter(|m| m.record.can_read(seq));
    let (mut read_by, mut delivered_to) = (Vec::new(), Vec::new());
    for m in readers {
        if m.watermarks.read_seq >= seq {
            read_by.push(m.user_id);
        }
        if m.watermarks.delivered_seq >= seq {
            delivered_to.push(m.user_id);
        }
    }
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "conversation_id": id, "seq": seq, "read_by": read_by, "delivered_to": delivered_to,
    })))
}
