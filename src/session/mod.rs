//! actor Session: one WebSocket connection of one device. It authenticates (upgrade header or
//! first `auth` frame), heartbeats (ping, idle timeout), rate-limits, decodes client frames and
//! forwards them to the owner, the Router, the Registry and the HistoryReader, and pushes
//! server frames in order through one bounded writer task (a client that stops reading is
//! closed, not buffered without end). It never touches a store.

use crate::account::Identity;
use crate::conversation::owner::SendRequest;
use crate::delivery::registry::{Connect, Disconnect, SessionId, Subscribe};
use crate::delivery::{Audience, Publish, SessionEvent};
use crate::error::{Error, ErrorCode};
use crate::model::{ConversationId, UserId, Watermarks};
use crate::node::Node;
use crate::protocol::{ClientFrame, ServerFrame, close_code, decode_client_frame};
use crate::rate_limit::TokenBucket;
use crate::telemetry::Metrics;
use actix::prelude::*;
use actix_ws::{AggregatedMessage, AggregatedMessageStream, CloseCode, CloseReason, ProtocolError};
use bytestring::ByteString;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// The longest client_msg_id accepted, in bytes.
const CLIENT_MSG_ID_MAX: usize = 128;
/// The most users one presence_subscribe may name.
const PRESENCE_SUBSCRIBE_MAX: usize = 1000;
/// Default per-conversation page of a sync.
const SYNC_LIMIT_DEFAULT: u32 = 100;

/// What the writer task sends on the socket, in order.
enum Outbound {
    Text(ByteString),
    Ping,
    Pong(bytes::Bytes),
    Close(CloseReason),
}

static NEXT_SESSION_ID: AtomicU64 = AtomicU64::new(1);

fn close_reason(code: u16, description: &str) -> CloseReason {
    CloseReason { code: CloseCode::from(code), description: Some(description.to_owned()) }
}

pub struct Session {
    id: SessionId,
    node: Arc<Node>,
    identity: Option<Identity>,
    out: mpsc::Sender<Outbound>,
    /// Closes the socket at once, skipping queued frames (used when the queue is full).
    kill: Option<oneshot::Sender<CloseReason>>,
    last_heard: Instant,
    bucket: TokenBucket,
    strikes: u32,
    /// Per conversation, the highest seq pushed to this client; live duplicates are skipped.
    pushed: HashMap<ConversationId, u64>,
    syncs_in_flight: u32,
    /// Live messages that arrived while a sync was being read, pushed after it.
    held: Vec<(ConversationId, u64, ByteString)>,
    typing_sent: HashMap<ConversationId, (bool, Instant)>,
    registered: bool,
    closing: bool,
}

impl Session {
    /// Starts the session actor and its writer task for an upgraded connection.
    pub fn start(
        node: Arc<Node>,
        identity: Option<Identity>,
        socket: actix_ws::Session,
        stream: AggregatedMessageStream,
    ) {
        let (out, rx) = mpsc::channel(1024);
        let (kill, kill_rx) = oneshot::channel();
        actix::spawn(write_loop(socket, rx, kill_rx, node.metrics.clone()));
        let limits = &node.config.limits;
        let bucket = TokenBucket::new(limits.rate_per_sec, limits.rate_burst);
        Session::create(move |ctx| {
            ctx.add_stream(stream);
            Session {
                id: NEXT_SESSION_ID.fetch_add(1, Ordering::Relaxed),
                node,
                identity,
                out,
                kill: Some(kill),
                last_heard: Instant::now(),
                bucket,
                strikes: 0,
                pushed: HashMap::new(),
                syncs_in_flight: 0,
                held: Vec::new(),
                typing_sent: HashMap::new(),
                registered: false,
                closing: false,
            }
        });
    }

    fn push(&mut self, text: ByteString, ctx: &mut Context<Self>) {
        if self.closing {
            return;
        }
        match self.out.try_send(Outbound::Text(text)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => self.slow_consumer(ctx),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.closing = true;
                ctx.stop();
            }
        }
    }

    /// The client stopped reading and its queue is full: close at once; it resyncs later.
    fn slow_consumer(&mut self, ctx: &mut Context<Self>) {
        Metrics::inc(&self.node.metrics.slow_consumers_closed_total);
        tracing::info!(session = self.id, "client is not reading; closing");
        if let Some(kill) = self.kill.take() {
            let _ = kill.send(close_reason(close_code::SLOW_CONSUMER, "too slow: reconnect and sync"));
        }
        self.closing = true;
        ctx.stop();
    }

    fn push_frame(&mut self, frame: &ServerFrame, ctx: &mut Context<Self>) {
        self.push(frame.encode(), ctx);
    }

    fn push_error(&mut self, id: Option<String>, error: &Error, ctx: &mut Context<Self>) {
        Metrics::inc(&self.node.metrics.errors_sent_total);
        self.push_frame(&ServerFrame::error(id, error.code, error.message.clone()), ctx);
    }

    /// Sends a close frame after the frames already queued, then stops.
    fn close(&mut self, code: u16, reason: &str, ctx: &mut Context<Self>) {
        if self.closing {
            return;
        }
        self.closing = true;
        if self.out.try_send(Outbound::Close(close_reason(code, reason))).is_err()
            && let Some(kill) = self.kill.take()
        {
            let _ = kill.send(close_reason(code, reason));
        }
        ctx.stop();
    }

    /// Joins the Registry, then greets the client. Runs before any other frame is handled.
    fn register(&mut self, identity: Identity, ctx: &mut Context<Self>) {
        let connect = Connect {
            session: self.id,
            user: identity.user_id,
            device: identity.device_id,
            addr: ctx.address().recipient(),
        };
        let registry = self.node.registry.clone();
        ctx.wait(registry.send(connect).into_actor(self).map(move |accepted, act, ctx| {
            if accepted != Ok(true) {
                act.close(close_code::GOING_AWAY, "server draining; reconnect", ctx);
                return;
            }
            act.registered = true;
            act.identity = Some(identity);
            Metrics::inc(&act.node.metrics.connections_total);
            act.node.metrics.connections_open.fetch_add(1, Ordering::Relaxed);
            let welcome = ServerFrame::Welcome {
                user_id: identity.user_id,
                device_id: identity.device_id,
                node: act.node.config.server.node_id.clone(),
                heartbeat_ms: act.node.config.websocket.heartbeat_ms,
            };
            act.push_frame(&welcome, ctx);
        }));
    }

    fn on_text(&mut self, text: &str, ctx: &mut Context<Self>) {
        Metrics::inc(&self.node.metrics.frames_in_total);
        let decoded = decode_client_frame(text);
        let request_id = match &decoded {
            Ok((id, _)) => id.clone(),
            Err(e) => e.id.clone(),
        };
        if !self.bucket.try_take(Instant::now()) {
            self.strikes += 1;
            if self.strikes > self.node.config.limits.rate_strikes {
                self.close(close_code::POLICY, "rate limit exceeded repeatedly", ctx);
            } else {
                let e = Error::new(
                    ErrorCode::RateLimited,
                    "too many frames; slow down (this frame was not processed)",
                );
                self.push_error(request_id, &e, ctx);
            }
            return;
        }
        let (id, frame) = match decoded {
            Ok(ok) => ok,
            Err(e) => {
                self.push_error(e.id, &Error::new(ErrorCode::BadFrame, e.message), ctx);
                return;
            }
        };
        let Some(identity) = self.identity else {
            self.authenticate(id, frame, ctx);
            return;
        };
        match frame {
            ClientFrame::Auth { .. } => {
                self.push_error(id, &Error::new(ErrorCode::BadFrame, "already authenticated"), ctx);
            }
            ClientFrame::Send { conversation_id, client_msg_id, body, attachments } => {
                self.on_send(
                    id,
                    SendRequest { from: identity, conversation_id, client_msg_id, body, attachments },
                    ctx,
                );
            }
            ClientFrame::Delivered { conversation_id, seq } => {
                let to = Watermarks { delivered_seq: seq, read_seq: 0 };
                self.on_receipt(identity.user_id, id, conversation_id, to, ctx);
            }
            ClientFrame::Read { conversation_id, seq } => {
                let to = Watermarks { delivered_seq: seq, read_seq: seq };
                self.on_receipt(identity.user_id, id, conversation_id, to, ctx);
            }
            ClientFrame::Typing { conversation_id, active } => {
                self.on_typing(identity.user_id, id, conversation_id, active, ctx);
            }
            ClientFrame::Sync { cursors, limit } => self.on_sync(identity.user_id, id, cursors, limit, ctx),
            ClientFrame::History { conversation_id, before, limit } => {
                let reader = self.node.reader.clone();
                let fut =
                    async move { reader.history(identity.user_id, conversation_id, before, limit).await };
                ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| match res {
                    Ok((messages, has_more)) => {
                        let frame = ServerFrame::History { id, conversation_id, messages, has_more };
                        act.push_frame(&frame, ctx);
                    }
                    Err(e) => act.push_error(id, &e, ctx),
                }));
            }
            ClientFrame::PresenceSubscribe { user_ids } => {
                self.on_presence_subscribe(identity.user_id, id, user_ids, ctx)
            }
            ClientFrame::Ping => self.push_frame(&ServerFrame::Pong { id }, ctx),
        }
    }

    /// Before authentication only `auth` is accepted.
    fn authenticate(&mut self, id: Option<String>, frame: ClientFrame, ctx: &mut Context<Self>) {
        let ClientFrame::Auth { token } = frame else {
            self.push_error(id, &Error::unauthorized(), ctx);
            self.close(close_code::UNAUTHORIZED, "authenticate first", ctx);
            return;
        };
        let accounts = self.node.accounts.clone();
        let fut = async move { accounts.authenticate(&token).await };
        ctx.wait(fut.into_actor(self).map(move |res, act, ctx| match res {
            Ok(identity) => act.register(identity, ctx),
            Err(e) => {
                act.push_error(id, &e, ctx);
                if e.code == ErrorCode::Unauthorized {
                    act.close(close_code::UNAUTHORIZED, "bad token", ctx);
                }
            }
        }));
    }

    fn on_send(&mut self, id: Option<String>, send: SendRequest, ctx: &mut Context<Self>) {
        let limit = self.node.config.limits.max_body_bytes as usize;
        let invalid = if send.body.len() > limit {
            Some(Error::new(
                ErrorCode::TooLarge,
                format!("body is {} bytes; the limit is {limit}", send.body.len()),
            ))
        } else if send.client_msg_id.is_empty() || send.client_msg_id.len() > CLIENT_MSG_ID_MAX {
            Some(Error::new(
                ErrorCode::BadFrame,
                format!("client_msg_id must be 1-{CLIENT_MSG_ID_MAX} bytes"),
            ))
        } else if !send.attachments.is_empty() {
            Some(Error::not_found("unknown attachment (attachment upload is not available yet)"))
        } else {
            None
        };
        if let Some(e) = invalid {
            self.push_error(id, &e, ctx);
            return;
        }
        let rx = match self.node.owner.send(send) {
            Ok(rx) => rx,
            Err(e) => {
                self.push_error(id, &e, ctx);
                return;
            }
        };
        ctx.spawn(rx.into_actor(self).map(move |res, act, ctx| {
            match res.unwrap_or_else(|_| Err(Error::new(ErrorCode::Unavailable, "the owner stopped; retry")))
            {
                Ok(sent) => {
                    let frame = ServerFrame::Sent {
                        id,
                        client_msg_id: sent.client_msg_id,
                        conversation_id: sent.conversation_id,
                        seq: sent.seq,
                        message_id: sent.message_id,
                        ts: sent.ts,
                    };
                    act.push_frame(&frame, ctx);
                }
                Err(e) => act.push_error(id, &e, ctx),
            }
        }));
    }

    fn on_receipt(
        &mut self,
        user: UserId,
        id: Option<String>,
        conversation_id: ConversationId,
        to: Watermarks,
        ctx: &mut Context<Self>,
    ) {
        let rx = match self.node.owner.advance(user, conversation_id, to) {
            Ok(rx) => rx,
            Err(e) => {
                self.push_error(id, &e, ctx);
                return;
            }
        };
        ctx.spawn(rx.into_actor(self).map(move |res, act, ctx| {
            if let Ok(Err(e)) = res {
                act.push_error(id, &e, ctx);
            }
        }));
    }

    fn on_typing(
        &mut self,
        user: UserId,
        id: Option<String>,
        conversation_id: ConversationId,
        active: bool,
        ctx: &mut Context<Self>,
    ) {
        // Ephemeral and throttled: a repeat of the same state within the interval is dropped.
        let now = Instant::now();
        let interval = Duration::from_millis(self.node.config.limits.typing_interval_ms);
        if let Some((last_active, at)) = self.typing_sent.get(&conversation_id)
            && *last_active == active
            && now.duration_since(*at) < interval
        {
            return;
        }
        self.typing_sent.insert(conversation_id, (active, now));
        let conversations = self.node.conversations.clone();
        let router = self.node.router.clone();
        let fut = async move {
            let info = conversations.for_member(conversation_id, user).await?;
            let frame = ServerFrame::Typing { conversation_id, user_id: user, active };
            router.do_send(Publish {
                audience: info.members.clone(),
                except: Audience::AllButUser(user),
                event: SessionEvent::Frame(frame.encode()),
            });
            Ok::<(), Error>(())
        };
        ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| {
            if let Err(e) = res {
                act.push_error(id, &e, ctx);
            }
        }));
    }

    fn on_sync(
        &mut self,
        user: UserId,
        id: Option<String>,
        cursors: std::collections::BTreeMap<ConversationId, u64>,
        limit: Option<u32>,
        ctx: &mut Context<Self>,
    ) {
        let limit = limit.unwrap_or(SYNC_LIMIT_DEFAULT).clamp(1, self.node.config.limits.sync_limit_max);
        let reader = self.node.reader.clone();
        self.syncs_in_flight += 1;
        let fut = async move { reader.sync(user, &cursors, limit).await };
        ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| {
            act.syncs_in_flight -= 1;
            match res {
                Ok(pages) => {
                    let mut states = std::collections::BTreeMap::new();
                    for page in pages {
                        for m in page.messages {
                            let pushed = act.pushed.entry(m.conversation_id).or_default();
                            *pushed = (*pushed).max(m.seq);
                            act.push_frame(&ServerFrame::Message(m), ctx);
                        }
                        states.insert(page.conversation_id, page.state);
                    }
                    act.push_frame(&ServerFrame::SyncDone { id, conversations: states }, ctx);
                }
                Err(e) => act.push_error(id, &e, ctx),
            }
            if act.syncs_in_flight == 0 {
                for (conversation_id, seq, text) in std::mem::take(&mut act.held) {
                    act.push_live(conversation_id, seq, text, ctx);
                }
            }
        }));
    }

    fn on_presence_subscribe(
        &mut self,
        user: UserId,
        id: Option<String>,
        user_ids: Vec<UserId>,
        ctx: &mut Context<Self>,
    ) {
        if user_ids.len() > PRESENCE_SUBSCRIBE_MAX {
            let e = Error::new(
                ErrorCode::TooLarge,
                format!("at most {PRESENCE_SUBSCRIBE_MAX} users per subscribe"),
            );
            self.push_error(id, &e, ctx);
            return;
        }
        let conversations = self.node.conversations.clone();
        let registry = self.node.registry.clone();
        let session = self.id;
        let fut = async move {
            let mut allowed = Vec::new();
            for other in user_ids {
                // Only people the caller shares a conversation with; others are ignored.
                if other != user && conversations.share_a_conversation(user, other).await? {
                    allowed.push(other);
                }
            }
            registry
                .send(Subscribe { session, users: allowed })
                .await
                .map_err(|_| Error::new(ErrorCode::Unavailable, "presence is unavailable"))
        };
        ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| match res {
            Ok(views) => {
                for view in views {
                    act.push_frame(&view.frame(), ctx);
                }
            }
            Err(e) => act.push_error(id, &e, ctx),
        }));
    }

    fn push_live(
        &mut self,
        conversation_id: ConversationId,
        seq: u64,
        text: ByteString,
        ctx: &mut Context<Self>,
    ) {
        let pushed = self.pushed.entry(conversation_id).or_default();
        if seq <= *pushed {
            return;
        }
        *pushed = seq;
        self.push(text, ctx);
    }
}

impl Actor for Session {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let heartbeat = Duration::from_millis(self.node.config.websocket.heartbeat_ms);
        ctx.run_interval(heartbeat, move |act, ctx| {
            if act.last_heard.elapsed() > heartbeat * 3 {
                tracing::info!(session = act.id, "idle connection closed (no pong for three heartbeats)");
                act.close(close_code::IDLE_TIMEOUT, "no pong for three heartbeats", ctx);
            } else if !act.closing {
                match act.out.try_send(Outbound::Ping) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => act.slow_consumer(ctx),
                    Err(mpsc::error::TrySendError::Closed(_)) => ctx.stop(),
                }
            }
        });
        match self.identity.take() {
            Some(identity) => self.register(identity, ctx),
            None => {
                let timeout = Duration::from_millis(self.node.config.websocket.auth_timeout_ms);
                ctx.run_later(timeout, |act, ctx| {
                    if act.identity.is_none() {
                        act.close(close_code::UNAUTHORIZED, "no auth frame in time", ctx);
                    }
                });
            }
        }
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        if self.registered {
            self.node.registry.do_send(Disconnect { session: self.id });
            self.node.metrics.connections_open.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl StreamHandler<Result<AggregatedMessage, ProtocolError>> for Session {
    fn handle(&mut self, item: Result<AggregatedMessage, ProtocolError>, ctx: &mut Context<Self>) {
        if self.closing {
            return;
        }
        self.last_heard = Instant::now();
        match item {
            Ok(AggregatedMessage::Text(text)) => self.on_text(&text, ctx),
            Ok(AggregatedMessage::Binary(_)) => {
                let e = Error::new(ErrorCode::BadFrame, "binary frames are not supported; send JSON text");
                self.push_error(None, &e, ctx);
            }
            Ok(AggregatedMessage::Ping(payload)) => {
                let _ = self.out.try_send(Outbound::Pong(payload));
            }
            Ok(AggregatedMessage::Pong(_)) => {}
            Ok(AggregatedMessage::Close(_)) => {
                self.closing = true;
                let _ = self.out.try_send(Outbound::Close(close_reason(1000, "bye")));
                ctx.stop();
            }
            Err(ProtocolError::Overflow) => {
                self.close(close_code::TOO_BIG, "frame too big", ctx);
            }
            Err(ProtocolError::Io(e))
                if e.kind() == std::io::ErrorKind::InvalidData || e.to_string().contains("size") =>
            {
                self.close(close_code::TOO_BIG, "message too big", ctx);
            }
            Err(e) => {
                tracing::debug!(session = self.id, error = %e, "websocket protocol error");
                self.close(1002, "protocol error", ctx);
            }
        }
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

impl Handler<SessionEvent> for Session {
    type Result = ();

    fn handle(&mut self, event: SessionEvent, ctx: &mut Context<Self>) {
        match event {
            SessionEvent::Message { conversation_id, seq, text } => {
                if self.syncs_in_flight > 0 {
                    // Held frames count against the same bound as queued ones.
                    if self.held.len() >= 1024 {
                        self.slow_consumer(ctx);
                        return;
                    }
                    self.held.push((conversation_id, seq, text));
                } else {
                    self.push_live(conversation_id, seq, text, ctx);
                }
            }
            SessionEvent::Frame(text) => self.push(text, ctx),
            SessionEvent::Close { code, reason } => self.close(code, reason, ctx),
        }
    }
}

/// Writes the session's frames in order; a kill signal closes at once, skipping the queue.
async fn write_loop(
    mut socket: actix_ws::Session,
    mut rx: mpsc::Receiver<Outbound>,
    mut kill: oneshot::Receiver<CloseReason>,
    metrics: Arc<Metrics>,
) {
    let mut kill_armed = true;
    loop {
        let item = tokio::select! {
            biased;
            reason = &mut kill, if kill_armed => {
                kill_armed = false;
                match reason {
                    Ok(reason) => {
                        let _ = socket.close(Some(reason)).await;
                        return;
                    }
                    // The session ended without a kill: keep draining the queue.
                    Err(_) => continue,
                }
            }
            item = rx.recv() => item,
        };
        let ok = match item {
            Some(Outbound::Text(text)) => {
                Metrics::inc(&metrics.frames_out_total);
                socket.text(text).await.is_ok()
            }
            Some(Outbound::Ping) => socket.ping(b"").await.is_ok(),
            Some(Outbound::Pong(payload)) => socket.pong(&payload).await.is_ok(),
            Some(Outbound::Close(reason)) => {
                let _ = socket.close(Some(reason)).await;
                return;
            }
            None => {
                let _ = socket.close(None).await;
                return;
            }
        };
        if !ok {
            return;
        }
    }
}
