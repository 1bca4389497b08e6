//! actor Registry: the node's table of connected sessions (user → sessions, with device; and
//! by conversation for group fan-out) and
//! of presence — who is online, last seen, who watches whom — pushed to watchers on change and
//! mirrored into the `ClusterDirectory` (a user's first session on this node and last one;
//! node liveness is renewed by the membership loop, never per user). On a single node presence
//! changes are pushed from here; in a cluster a user may be online on several nodes, so the
//! directory's cluster-wide `Presence` events (`PresenceChanged`) drive the pushes instead.

use crate::delivery::Publish;
use crate::delivery::SessionEvent;
use crate::model::{ConversationId, DeviceId, Millis, UserId, now_millis};
use crate::protocol::{ServerFrame, close_code};
use crate::store::presence::ClusterDirectory;
use actix::{Actor, Context, Handler, Message, MessageResult, Recipient, ResponseFuture};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

pub type SessionId = u64;

/// Mailbox bound of the Registry: delivery batches wait at the Router beyond it.
const MAILBOX: usize = 4096;

/// A user's presence as shown to others.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PresenceView {
    pub user_id: UserId,
    pub online: bool,
    pub last_seen: Option<Millis>,
}

impl PresenceView {
    pub fn frame(&self) -> ServerFrame {
        ServerFrame::Presence { user_id: self.user_id, online: self.online, last_seen: self.last_seen }
    }
}

struct Entry {
    user: UserId,
    device: DeviceId,
    addr: Recipient<SessionEvent>,
}

pub struct Registry {
    node: String,
    presence: Arc<dyn ClusterDirectory>,
    /// Presence pushes come from the directory's cluster-wide events.
    clustered: bool,
    sessions: HashMap<SessionId, Entry>,
    by_user: HashMap<UserId, Vec<SessionId>>,
    /// watched user → sessions that subscribed to their presence
    watchers: HashMap<UserId, HashSet<SessionId>>,
    /// session → users it watches (to clean up when it leaves)
    watching: HashMap<SessionId, Vec<UserId>>,
    /// Users who went offline, and when (single node; in a cluster the directory knows).
    last_seen: HashMap<UserId, Millis>,
    /// Sessions by conversation, for large audiences (groups): a message's fan-out walks the
    /// conversation's sessions here instead of every member. Built on a conversation's first
    /// message; dropped when its audience changes or a member's sessions come or go.
    fan_out: HashMap<ConversationId, FanOut>,
    /// user → conversations in `fan_out` whose audience has them (online or not).
    fan_out_of_user: HashMap<UserId, HashSet<ConversationId>>,
    draining: bool,
}

/// The sessions on this node of one conversation's audience.
struct FanOut {
    audience: Arc<[UserId]>,
    sessions: Vec<SessionId>,
}

/// Audiences at least this large are indexed by conversation (smaller ones are walked).
const FAN_OUT_MIN_AUDIENCE: usize = 8;
/// Conversations indexed before the index starts over.
const FAN_OUT_MAX: usize = 50_000;

impl Registry {
    pub fn new(node: String, presence: Arc<dyn ClusterDirectory>, clustered: bool) -> Registry {
        Registry {
            node,
            presence,
            clustered,
            sessions: HashMap::new(),
            by_user: HashMap::new(),
            watchers: HashMap::new(),
            watching: HashMap::new(),
            last_seen: HashMap::new(),
            fan_out: HashMap::new(),
            fan_out_of_user: HashMap::new(),
            draining: false,
        }
    }

    fn notify_watchers(&self, view: PresenceView) {
        let Some(watchers) = self.watchers.get(&view.user_id) else { return };
        let text = view.frame().encode();
        for id in watchers {
            if let Some(entry) = self.sessions.get(id) {
                entry.addr.do_send(SessionEvent::Frame(text.clone()));
            }
        }
    }

    /// The user's sessions came or went: their conversations' fan-out lists are stale.
    fn forget_fan_out(&mut self, user: UserId) {
        for conversation in self.fan_out_of_user.remove(&user).unwrap_or_default() {
            self.fan_out.remove(&conversation);
        }
    }

    /// The sessions of a conversation's audience, from the index (rebuilt if the audience
    /// changed).
    fn fan_out_sessions(&mut self, conversation: ConversationId, audience: &Arc<[UserId]>) -> &[SessionId] {
        let fresh = self
            .fan_out
            .get(&conversation)
            .is_some_and(|f| Arc::ptr_eq(&f.audience, audience) || f.audience[..] == audience[..]);
        if !fresh {
            if self.fan_out.len() >= FAN_OUT_MAX {
                self.fan_out.clear();
                self.fan_out_of_user.clear();
            }
            let mut sessions = Vec::new();
            for user in audience.iter() {
                self.fan_out_of_user.entry(*user).or_default().insert(conversation);
                if let Some(ids) = self.by_user.get(user) {
                    sessions.extend_from_slice(ids);
                }
            }
            self.fan_out.insert(conversation, FanOut { audience: audience.clone(), sessions });
        }
        &self.fan_out[&conversation].sessions
    }

    /// Runs a presence-store write in the background; a failure only delays the mirror.
    fn mirror<F>(fut: F)
    where
        F: std::future::Future<Output = crate::store::StoreResult<()>> + 'static,
    {
        actix::spawn(async move {
            if let Err(e) = fut.await {
                tracing::warn!(error = %e, "presence mirror write failed");
            }
        });
    }
}

impl Actor for Registry {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(MAILBOX);
    }
}

/// A session joins; answers `false` (and the session should close) when the node drains.
#[derive(Message)]
#[rtype(result = "bool")]
pub struct Connect {
    pub session: SessionId,
    pub user: UserId,
    pub device: DeviceId,
    pub addr: Recipient<SessionEvent>,
}

impl Handler<Connect> for Registry {
    type Result = bool;

    fn handle(&mut self, msg: Connect, _: &mut Context<Self>) -> bool {
        if self.draining {
            return false;
        }
        self.sessions.insert(msg.session, Entry { user: msg.user, device: msg.device, addr: msg.addr });
        self.forget_fan_out(msg.user);
        let sessions = self.by_user.entry(msg.user).or_default();
        sessions.push(msg.session);
        if sessions.len() == 1 {
            self.last_seen.remove(&msg.user);
            if !self.clustered {
                self.notify_watchers(PresenceView { user_id: msg.user, online: true, last_seen: None });
            }
            let (presence, node, user) = (self.presence.clone(), self.node.clone(), msg.user);
            Registry::mirror(async move { presence.user_connected(user, &node, now_millis()).await });
        }
        true
    }
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct Disconnect {
    pub session: SessionId,
}

impl Handler<Disconnect> for Registry {
    type Result = ();

    fn handle(&mut self, msg: Disconnect, _: &mut Context<Self>) {
        if let Some(watched) = self.watching.remove(&msg.session) {
            for user in watched {
                if let Some(set) = self.watchers.get_mut(&user) {
                    set.remove(&msg.session);
                    if set.is_empty() {
                        self.watchers.remove(&user);
                    }
                }
            }
        }
        let Some(entry) = self.sessions.remove(&msg.session) else { return };
        self.forget_fan_out(entry.user);
        let Some(sessions) = self.by_user.get_mut(&entry.user) else { return };
        sessions.retain(|s| *s != msg.session);
        if sessions.is_empty() {
            self.by_user.remove(&entry.user);
            let now = now_millis();
            if !self.clustered {
                self.last_seen.insert(entry.user, now);
                self.notify_watchers(PresenceView {
                    user_id: entry.user,
                    online: false,
                    last_seen: Some(now),
                });
            }
            let (presence, node, user) = (self.presence.clone(), self.node.clone(), entry.user);
            Registry::mirror(async move { presence.user_disconnected(user, &node, now).await });
        }
    }
}

/// Hand each event to the connected sessions of its audience on this node, in order.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Deliver(pub Vec<Publish>);

impl Handler<Deliver> for Registry {
    type Result = ();

    fn handle(&mut self, msg: Deliver, _: &mut Context<Self>) {
        for publish in msg.0 {
            if let SessionEvent::Message { conversation_id, .. } = &publish.event
                && publish.audience.len() >= FAN_OUT_MIN_AUDIENCE
            {
                let ids = self.fan_out_sessions(*conversation_id, &publish.audience).to_vec();
                for id in ids {
                    if let Some(entry) = self.sessions.get(&id)
                        && publish.except.includes(entry.user, entry.device)
                    {
                        entry.addr.do_send(publish.event.clone());
                    }
                }
                continue;
            }
            for user in publish.audience.iter() {
                let Some(ids) = self.by_user.get(user) else { continue };
                for id in ids {
                    if let Some(entry) = self.sessions.get(id)
                        && publish.except.includes(entry.user, entry.device)
                    {
                        entry.addr.do_send(publish.event.clone());
                    }
                }
            }
        }
    }
}

/// The session watches these users' presence from now on; answers their presence now. The
/// caller has checked that it may see them.
#[derive(Message)]
#[rtype(result = "Vec<PresenceView>")]
pub struct Subscribe {
    pub session: SessionId,
    pub users: Vec<UserId>,
}

impl Handler<Subscribe> for Registry {
    type Result = ResponseFuture<Vec<PresenceView>>;

    fn handle(&mut self, msg: Subscribe, _: &mut Context<Self>) -> Self::Result {
        if !self.sessions.contains_key(&msg.session) {
            // The session left while its subscribe was on the way: nothing to watch for.
            return Box::pin(async { Vec::new() });
        }
        let mut known = Vec::new();
        let mut ask_store = Vec::new();
        for user in msg.users {
            let watched = self.watching.entry(msg.session).or_default();
            if !watched.contains(&user) {
                watched.push(user);
                self.watchers.entry(user).or_default().insert(msg.session);
            }
            if self.by_user.contains_key(&user) {
                known.push(PresenceView { user_id: user, online: true, last_seen: None });
            } else if let Some(seen) = self.last_seen.get(&user) {
                known.push(PresenceView { user_id: user, online: false, last_seen: Some(*seen) });
            } else {
                ask_store.push(user);
            }
        }
        let presence = self.presence.clone();
        Box::pin(async move {
            for user in ask_store {
                let record = presence.presence(user).await.ok().flatten();
                known.push(match record {
                    Some(r) => PresenceView {
                        user_id: user,
                        online: r.online,
                        last_seen: if r.online { None } else { r.last_seen },
                    },
                    None => PresenceView { user_id: user, online: false, last_seen: None },
                });
            }
            known
        })
    }
}

/// A cluster-wide presence change (from the directory's events): pushed to this node's
/// watchers of the user.
#[derive(Message)]
#[rtype(result = "()")]
pub struct PresenceChanged(pub PresenceView);

impl Handler<PresenceChanged> for Registry {
    type Result = ();

    fn handle(&mut self, msg: PresenceChanged, _: &mut Context<Self>) {
        if self.clustered {
            self.notify_watchers(msg.0);
        }
    }
}

/// This node's membership had lapsed and other nodes may have cleared its users: mark every
/// user with a session here again (each publishes its location, and presence if it changed).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Remark;

impl Handler<Remark> for Registry {
    type Result = ();

    fn handle(&mut self, _: Remark, _: &mut Context<Self>) {
        let users: Vec<UserId> = self.by_user.keys().copied().collect();
        let (presence, node) = (self.presence.clone(), self.node.clone());
        Registry::mirror(async move {
            let now = now_millis();
            for user in users {
                presence.user_connected(user, &node, now).await?;
            }
            Ok(())
        });
    }
}

/// The device logged out: close its sessions with 4001.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RevokeDevice {
    pub device: DeviceId,
}

impl Handler<RevokeDevice> for Registry {
    type Result = ();

    fn handle(&mut self, msg: RevokeDevice, _: &mut Context<Self>) {
        for entry in self.sessions.values().filter(|e| e.device == msg.device) {
            entry.addr.do_send(SessionEvent::Close { code: close_code::UNAUTHORIZED, reason: "logged out" });
        }
    }
}

/// The node drains: refuse new sessions and close every open one with 1001. Answers how many
/// sessions were told to close.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct Drain;

impl Handler<Drain> for Registry {
    type Result = MessageResult<Drain>;

    fn handle(&mut self, _: Drain, _: &mut Context<Self>) -> Self::Result {
        self.draining = true;
        for entry in self.sessions.values() {
            entry.addr.do_send(SessionEvent::Close {
                code: close_code::GOING_AWAY,
                reason: "server draining; reconnect",
            });
        }
        MessageResult(self.sessions.len())
    }
}
