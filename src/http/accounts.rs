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

/// The address a request is counted under for login and registration limits: the TCP peer,
/// or, when the peer is a trusted proxy (`server.trusted_proxies`), the client its
/// `X-Forwarded-For` names. Without a peer address (not over TCP), all such requests share one
/// key.
fn client_addr(node: &NodeData, req: &HttpRequest) -> IpAddr {
    let peer = req.peer_addr().map(|a| a.ip()).unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let trusted = node.config.trusted_proxies().unwrap_or_default();
    let forwarded = req.headers().get_all("x-forwarded-for").filter_map(|v| v.to_str().ok());
    forwarded_client(peer, forwarded, &trusted)
}

/// The client behind a chain of proxies: walking `X-Forwarded-For` from the right (the entry
/// the nearest proxy appended), the first address that is not a trusted proxy. A peer that is
/// not trusted is the client itself, whatever it claims; an unreadable entry stops the walk.
fn forwarded_client<'a>(peer: IpAddr, headers: impl Iterator<Item = &'a str>, trusted: &[IpAddr]) -> IpAddr {
    if !trusted.contains(&peer) {
        return peer;
    }
    let entries: Vec<&str> = headers.flat_map(|h| h.split(',')).collect();
    let mut client = peer;
    for entry in entries.iter().rev() {
        match entry.trim().parse::<IpAddr>() {
            Ok(ip) => {
                client = ip;
                if !trusted.contains(&ip) {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    client
}

pub async fn register(
    node: NodeData,
    req: HttpRequest,
    body: web::Json<Credentials>,
) -> ApiResult<HttpResponse> {
    let c = body.into_inner();
    let client = client_addr(&node, &req);
    let session = node.accounts.register(client, &c.username, &c.password, c.device_name.as_deref()).await?;
    Ok(HttpResponse::Created().json(SessionReply::from(session)))
}

pub async fn login(
    node: NodeData,
    req: HttpRequest,
    body: web::Json<Credentials>,
) -> ApiResult<HttpResponse> {
    let c = body.into_inner();
    let client = client_addr(&node, &req);
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

/// Most ids one `GET /v1/users?ids=` may name.
pub const USERS_PER_LOOKUP: usize = 200;

#[derive(Deserialize)]
pub struct UsersQuery {
    ids: String,
}

/// `GET /v1/users?ids=a,b,c`: the usernames of these users (unknown ids are left out), so a
/// client can name the authors and members it only knows by id.
pub async fn users_by_id(
    node: NodeData,
    _: Authenticated,
    query: web::Query<UsersQuery>,
) -> ApiResult<HttpResponse> {
    let ids: Vec<UserId> = query
        .ids
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(|_| Error::bad_request(format!("malformed user id {s:?}"))))
        .collect::<Result<_, _>>()?;
    if ids.len() > USERS_PER_LOOKUP {
        return Err(Error::new(
            crate::error::ErrorCode::TooLarge,
            format!("at most {USERS_PER_LOOKUP} ids per lookup"),
        )
        .into());
    }
    use futures_util::StreamExt;
    // At most 16 store reads in flight per request, whatever the number of ids.
    let found: Vec<_> =
        futures_util::stream::iter(ids.iter().map(|&id| node.accounts.user(id))).buffered(16).collect().await;
    let mut users = Vec::new();
    for found in found {
        if let Some(user) = found? {
            users.push(UserReply { user_id: user.id, username: user.username });
        }
    }
    Ok(HttpResponse::Ok().json(serde_json::json!({ "users": users })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_trusted_proxy_names_the_client() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let lb = [ip("127.0.0.1")];
        let f = |peer: &str, headers: &[&str], trusted: &[IpAddr]| {
            forwarded_client(ip(peer), headers.iter().copied(), trusted)
        };
        assert_eq!(f("10.0.0.9", &["1.2.3.4"], &lb), ip("10.0.0.9"), "an untrusted peer is the client");
        assert_eq!(f("127.0.0.1", &[], &lb), ip("127.0.0.1"), "no header: the proxy itself");
        assert_eq!(f("127.0.0.1", &["1.2.3.4"], &lb), ip("1.2.3.4"));
        // A client's own (spoofed) entries sit left of what the proxy appended.
        assert_eq!(f("127.0.0.1", &["6.6.6.6, 1.2.3.4"], &lb), ip("1.2.3.4"));
        assert_eq!(f("127.0.0.1", &["6.6.6.6", "1.2.3.4"], &lb), ip("1.2.3.4"));
        // Through two trusted proxies.
        assert_eq!(f("127.0.0.1", &["1.2.3.4, 127.0.0.1"], &lb), ip("1.2.3.4"));
        assert_eq!(f("127.0.0.1", &["garbage"], &lb), ip("127.0.0.1"));
        assert_eq!(f("127.0.0.1", &["::1"], &lb), ip("::1"));
    }
}
