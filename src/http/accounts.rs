//! REST accounts: `POST /v1/register`, `/v1/login`, `/v1/logout`, `GET /v1/me` and
//! `GET /v1/users/{username}`. Register and login are limited per client address, which is
//! the TCP peer (`client_addr`).

use super::{ApiResult, Authenticated, NodeData};
use crate::account::NewSession;
use crate::delivery::registry::RevokeDevice;
use crate::error::Error;
use crate::model::{DeviceId, UserId};
use actix_web::{HttpRequest, HttpResponse, web};
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, Ipv4Addr};

#[derive(Deserialize)]
pub struct Credentials {
    username: String,
    password: String,
    device_name: Option<String>,
}

#[derive(Serialize)]
struct SessionReply {
    user_id: UserId,
    username: String,
    device_id: DeviceId,
    token: String,
}

impl From<NewSession> for SessionReply {
    fn from(s: NewSession) -> Self {
        SessionReply { user_id: s.user.id, username: s.user.username, device_id: s.device_id, token: s.token }
    }
}

#[derive(Serialize)]
struct UserReply {
    user_id: UserId,
    username: String,
}

/// The address a request is counted under for login and registration limits: the TCP peer.
/// Forwarding headers (`X-Forwarded-For`, `Forwarded`) are not honoured: behind a proxy every
/// client shares the proxy's limits. Without a peer address (not over TCP), all such requests
/// share one key.
fn client_addr(req: &HttpRequest) -> IpAddr {
    req.peer_addr().map(|a| a.ip()).unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
}

pub async fn register(
    node: NodeData,
    req: HttpRequest,
    body: web::Json<Credentials>,
) -> ApiResult<HttpResponse> {
    let c = body.into_inner();
    let client = client_addr(&req);
    let session = node.accounts.register(client, &c.username, &c.password, c.device_name.as_deref()).await?;
    Ok(HttpResponse::Created().json(SessionReply::from(session)))
}

pub async fn login(
    node: NodeData,
    req: HttpRequest,
    body: web::Json<Credentials>,
) -> ApiResult<HttpResponse> {
    let c = body.into_inner();
    let client = client_addr(&req);
    let session = node.accounts.login(client, &c.username, &c.password, c.device_name.as_deref()).await?;
    Ok(HttpResponse::Ok().json(SessionReply::from(session)))
}

pub async fn logout(node: NodeData, who: Authenticated) -> ApiResult<HttpResponse> {
    node.accounts.logout(who.0.device_id).await?;
    node.registry.do_send(RevokeDevice { device: who.0.device_id });
    Ok(HttpResponse::NoContent().finish())
}

pub async fn me(node: NodeData, who: Authenticated) -> ApiResult<HttpResponse> {
    let user = node.accounts.user(who.0.user_id).await?.ok_or_else(|| Error::not_found("no such user"))?;
    Ok(HttpResponse::Ok().json(UserReply { user_id: user.id, username: user.username }))
}

pub async fn user_by_name(
    node: NodeData,
    _: Authenticated,
    name: web::Path<String>,
) -> ApiResult<HttpResponse> {
    let user = node.accounts.user_by_name(&name).await?.ok_or_else(|| Error::not_found("no such user"))?;
    Ok(HttpResponse::Ok().json(UserReply { user_id: user.id, username: user.username }))
}
