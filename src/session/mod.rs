//! actor Session: one WebSocket connection of one device. It authenticates (upgrade header or
//! first `auth` frame), heartbeats (ping, idle timeout), rate-limits, decodes client frames and
//! hands them to the conversation owners, delivery and the history reader. Its output is
//! byte-bounded (`outbox`): a client that stops reading stops being read, and is closed (4008)
//! once its queue has not moved for `write_stall_ms`. Sync rounds stream page by page
//! (`sync`). It never touches a store.

pub mod outbox;
mod send;
pub mod sync;

use crate::account::{Accounts, Identity};
use crate::config::{LimitsConfig, WebSocketConfig};
use crate::conversation::directory::Conversations;
use crate::conversation::history::{HistoryReader, PAGE_BYTES_MAX};
use crate::conversation::owner::{OwnerHandle, SendRequest};
use crate::delivery::registry::{Connect, Disconnect, Subscribe};
use crate::delivery::{Audience, Publish, Registry, Router, SessionEvent, SessionId};
use crate::error::{Error, ErrorCode};
use crate::model::{ConversationId, UserId, Watermarks};
use crate::protocol::{ClientFrame, ServerFrame, close_code, decode_client_frame};
use crate::rate_limit::TokenBucket;
use crate::telemetry::Metrics;
use actix::prelude::*;
use actix_ws::{AggregatedMessage, AggregatedMessageStream, CloseCode, CloseReason, ProtocolError};
use bytestring::ByteString;
use outbox::{Frame, Gated, Outbox, PushError};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use sync::{SyncContext, SyncRequest, Tracker};

/// The longest client_msg_id accepted, in bytes.
const CLIENT_MSG_ID_MAX: usize = 128;
/// The most users one presence_subscribe may name.
const PRESENCE_SUBSCRIBE_MAX: usize = 1000;
/// Default per-conversation page of a sync.
const SYNC_LIMIT_DEFAULT: u32 = 100;
/// Output bytes held back for a history reply while it is read (a page's bodies are capped at
/// `PAGE_BYTES_MAX` as encoded in JSON, plus each message's other fields).
const HISTORY_RESERVATION: usize = PAGE_BYTES_MAX + 128 * 1024;
/// How often the session looks for a stalled outbox.
const STALL_CHECK: Duration = Duration::from_millis(500);

static NEXT_SESSION_ID: AtomicU64 = AtomicU64::new(1);

pub(crate) fn close_reason(code: u16, description: &str) -> CloseReason {
    CloseReason { code: CloseCode::from(code), description: Some(description.to_owned()) }
}

/// Everything a session uses, built once per node.
pub struct SessionDeps {
    pub node_id: String,
    pub websocket: WebSocketConfig,
    pub limits: LimitsConfig,
    pub accounts: Accounts,
    pub owners: OwnerHandle,
    pub history: HistoryReader,
    pub directory: Arc<Conversations>,
    pub registry: Addr<Registry>,
    pub router: Addr<Router>,
    pub metrics: Arc<Metrics>,
    pub attachments: Arc<crate::attachment::Attachments>,
}

pub struct Session {
    id: SessionId,
    deps: Arc<SessionDeps>,
    identity: Option<Identity>,
    outbox: Arc<Outbox>,
    last_heard: Instant,
    bucket: TokenBucket,
    strikes: u32,
    strikes_decayed_at: Instant,
    /// What was pushed per conversation, and the running sync round's phases.
    tracker: Rc<RefCell<Tracker>>,
    typing_sent: HashMap<ConversationId, (bool, Instant)>,
    registered: bool,
    closing: bool,
}

impl Session {
    /// Starts the session actor for an upgraded connection whose output is `outbox`.
    pub fn start(
        deps: Arc<SessionDeps>,
        identity: Option<Identity>,
        outbox: Arc<Outbox>,
        stream: AggregatedMessageStream,
    ) {
        let bucket = TokenBucket::new(deps.limits.rate_per_sec, deps.limits.rate_burst);
        Session::create(move |ctx| {
            ctx.add_stream(Gated::new(stream, outbox.clone()));
            Session {
                id: NEXT_SESSION_ID.fetch_add(1, Ordering::Relaxed),
                deps,
                identity,
                outbox,
                last_heard: Instant::now(),
                bucket,
                strikes: 0,
                strikes_decayed_at: Instant::now(),
                tracker: Rc::default(),
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
        Metrics::inc(&self.deps.metrics.frames_out_total);
        match self.outbox.push(Frame::Text(text)) {
            Ok(()) => {}
            Err(PushError::Full) => self.slow_consumer(false, ctx),
            Err(PushError::Closed) => {
                self.closing = true;
                ctx.stop();
            }
        }
    }

    /// The client is not keeping up: drop its queue and close (4008); it resyncs later. If it
    /// is not reading at all (`stalled`), the connection is reset at once; otherwise the close
    /// frame is queued and the watchdog in `stopped` resets it if that does not drain.
    fn slow_consumer(&mut self, stalled: bool, ctx: &mut Context<Self>) {
        Metrics::inc(&self.deps.metrics.slow_consumers_closed_total);
        tracing::info!(
            session = self.id,
            queued = self.outbox.queued(),
            stalled,
            "client is not reading; closing"
        );
        let reason = close_reason(close_code::SLOW_CONSUMER, "too slow: reconnect and sync");
        if stalled {
            self.outbox.abort(reason);
        } else {
            self.outbox.kill(reason);
        }
        self.closing = true;
        ctx.stop();
    }

    fn push_frame(&mut self, frame: &ServerFrame, ctx: &mut Context<Self>) {
        self.push(frame.encode(), ctx);
    }

    fn push_error(&mut self, id: Option<String>, error: &Error, ctx: &mut Context<Self>) {
        Metrics::inc(&self.deps.metrics.errors_sent_total);
        self.push_frame(&ServerFrame::error(id, error.code, error.message.clone()), ctx);
    }

    /// Sends a close frame after the frames already queued, then stops.
    fn close(&mut self, code: u16, reason: &str, ctx: &mut Context<Self>) {
        if self.closing {
            return;
        }
        self.closing = true;
        self.outbox.close(close_reason(code, reason));
        ctx.stop();
    }

    /// Counts a rate-limited frame; strikes are forgiven one per `rate_strike_decay_ms`.
    fn strike(&mut self, now: Instant) -> u32 {
        let decay = Duration::from_millis(self.deps.limits.rate_strike_decay_ms.max(1));
        let forgiven =
            (now.saturating_duration_since(self.strikes_decayed_at).as_millis() / decay.as_millis()) as u32;
        if forgiven > 0 {
            self.strikes = self.strikes.saturating_sub(forgiven);
            self.strikes_decayed_at = now;
        }
        if self.strikes == 0 {
            self.strikes_decayed_at = now;
        }
        self.strikes += 1;
        self.strikes
    }

    /// Joins the Registry, then greets the client. Runs before any other frame is handled.
    fn register(&mut self, identity: Identity, ctx: &mut Context<Self>) {
        let connect = Connect {
            session: self.id,
            user: identity.user_id,
            device: identity.device_id,
            addr: ctx.address().recipient(),
        };
        let registry = self.deps.registry.clone();
        ctx.wait(registry.send(connect).into_actor(self).map(move |accepted, act, ctx| {
            if accepted != Ok(true) {
                act.close(close_code::GOING_AWAY, "server draining; reconnect", ctx);
                return;
            }
            act.registered = true;
            act.identity = Some(identity);
            Metrics::inc(&act.deps.metrics.connections_total);
            act.deps.metrics.connections_open.fetch_add(1, Ordering::Relaxed);
            let welcome = ServerFrame::Welcome {
                user_id: identity.user_id,
                device_id: identity.device_id,
                node: act.deps.node_id.clone(),
                heartbeat_ms: act.deps.websocket.heartbeat_ms,
            };
            act.push_frame(&welcome, ctx);
        }));
    }

    fn on_text(&mut self, text: &str, ctx: &mut Context<Self>) {
        Metrics::inc(&self.deps.metrics.frames_in_total);
        let decoded = decode_client_frame(text);
        let request_id = match &decoded {
            Ok((id, _)) => id.clone(),
            Err(e) => e.id.clone(),
        };
        let now = Instant::now();
        if !self.bucket.try_take(now) {
            if self.strike(now) > self.deps.limits.rate_strikes {
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
            ClientFrame::Sync { cursors, limit } => self.on_sync(id, cursors, limit, ctx),
            ClientFrame::History { conversation_id, before, limit } => {
                let history = self.deps.history.clone();
                let reply_id = id.clone();
                let fut = async move {
                    let (messages, has_more) =
                        history.history(identity.user_id, conversation_id, before, limit).await?;
                    // A page can be half a megabyte of JSON: encode it off the worker thread.
                    let frame = ServerFrame::History { id: reply_id, conversation_id, messages, has_more };
                    tokio::task::spawn_blocking(move || frame.encode())
                        .await
                        .map_err(|e| Error::internal(format!("encode task failed: {e}")))
                };
                // The reply's room is held while it is read, so requests in flight count too.
                self.outbox.reserve(HISTORY_RESERVATION);
                ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| {
                    act.outbox.release(HISTORY_RESERVATION);
                    match res {
                        Ok(text) => act.push(text, ctx),
                        Err(e) => act.push_error(id, &e, ctx),
                    }
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
        let accounts = self.deps.accounts.clone();
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

    fn on_receipt(
        &mut self,
        user: UserId,
        id: Option<String>,
        conversation_id: ConversationId,
        to: Watermarks,
        ctx: &mut Context<Self>,
    ) {
        let rx = match self.deps.owners.advance(user, conversation_id, to) {
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
        // The throttle is keyed only after the membership check, so made-up ids grow nothing.
        let directory = self.deps.directory.clone();
        let fut = async move { directory.for_member(conversation_id, user).await };
        ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| {
            let info = match res {
                Ok(info) => info,
                Err(e) => return act.push_error(id, &e, ctx),
            };
            let now = Instant::now();
            let interval = Duration::from_millis(act.deps.limits.typing_interval_ms);
            if let Some((last_active, at)) = act.typing_sent.get(&conversation_id)
                && *last_active == active
                && now.duration_since(*at) < interval
            {
                return;
            }
            act.typing_sent.insert(conversation_id, (active, now));
            let frame = ServerFrame::Typing { conversation_id, user_id: user, active };
            act.deps.router.do_send(Publish {
                audience: info.members.clone(),
                except: Audience::AllButUser(user),
                event: SessionEvent::Frame(frame.encode()),
            });
        }));
    }

    fn on_sync(
        &mut self,
        id: Option<String>,
        cursors: std::collections::BTreeMap<ConversationId, u64>,
        limit: Option<u32>,
        ctx: &mut Context<Self>,
    ) {
        let limit = limit.unwrap_or(SYNC_LIMIT_DEFAULT).clamp(1, self.deps.limits.sync_limit_max) as usize;
        let request = SyncRequest { id, cursors, limit, only: None };
        let start = self.tracker.borrow_mut().enqueue(request);
        match start {
            Ok(false) => {}
            Ok(true) => self.start_sync_runner(),
            Err(request) => {
                let e =
                    Error::new(ErrorCode::RateLimited, "too many sync requests waiting; wait for sync_done");
                self.push_error(request.id, &e, ctx);
            }
        }
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
        let conversations = self.deps.directory.clone();
        let registry = self.deps.registry.clone();
        let session = self.id;
        let fut = async move {
            // Only people who wrote to the caller in a shared conversation; others are ignored.
            let allowed = conversations.watchable(user, &user_ids).await?;
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

    /// Starts the task that runs this session's queued sync rounds and fills.
    fn start_sync_runner(&mut self) {
        let Some(identity) = self.identity else { return };
        let cx = SyncContext {
            user: identity.user_id,
            history: self.deps.history.clone(),
            outbox: self.outbox.clone(),
            round_max: self.deps.limits.sync_round_max as usize,
        };
        actix::spawn(sync::run(self.tracker.clone(), cx));
    }

    fn push_live(
        &mut self,
        conversation_id: ConversationId,
        seq: u64,
        text: ByteString,
        ctx: &mut Context<Self>,
    ) {
        let decided = self.tracker.borrow_mut().live(conversation_id, seq, text);
        match decided {
            sync::Live::Push(text) => self.push(text, ctx),
            sync::Live::Skip => {}
            sync::Live::Fill(conversation) => {
                if self.tracker.borrow_mut().enqueue_fill(conversation) {
                    self.start_sync_runner();
                }
            }
        }
    }
}

impl Actor for Session {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let heartbeat = Duration::from_millis(self.deps.websocket.heartbeat_ms);
        ctx.run_interval(heartbeat, move |act, ctx| {
            if act.last_heard.elapsed() > heartbeat * 3 {
                tracing::info!(session = act.id, "idle connection closed (no pong for three heartbeats)");
                act.close(close_code::IDLE_TIMEOUT, "no pong for three heartbeats", ctx);
            } else if !act.closing {
                match act.outbox.push(Frame::Ping) {
                    Ok(()) => {}
                    Err(PushError::Full) => act.slow_consumer(false, ctx),
                    Err(PushError::Closed) => ctx.stop(),
                }
            }
        });
        let stall = Duration::from_millis(self.deps.websocket.write_stall_ms);
        ctx.run_interval(STALL_CHECK.min(stall), move |act, ctx| {
            if !act.closing && act.outbox.stalled_for(Instant::now()) > stall {
                act.slow_consumer(true, ctx);
            }
        });
        match self.identity.take() {
            Some(identity) => self.register(identity, ctx),
            None => {
                let timeout = Duration::from_millis(self.deps.websocket.auth_timeout_ms);
                ctx.run_later(timeout, |act, ctx| {
                    if act.identity.is_none() {
                        act.close(close_code::UNAUTHORIZED, "no auth frame in time", ctx);
                    }
                });
            }
        }
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        // Ends the response body after what is queued (a no-op when already closing).
        self.outbox.close(close_reason(1000, "bye"));
        // Watchdog: a client that stops reading now would keep the connection open forever
        // (actix-http waits to flush); reset it if the body has not ended in time.
        let (outbox, stall) =
            (self.outbox.clone(), Duration::from_millis(self.deps.websocket.write_stall_ms));
        actix::spawn(async move {
            actix::clock::sleep(stall).await;
            if !outbox.finished() {
                outbox.abort(close_reason(close_code::SLOW_CONSUMER, "too slow"));
            }
        });
        if self.registered {
            self.deps.registry.do_send(Disconnect { session: self.id });
            self.deps.metrics.connections_open.fetch_sub(1, Ordering::Relaxed);
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
                if self.outbox.push(Frame::Pong(payload)) == Err(PushError::Full) {
                    self.slow_consumer(false, ctx);
                }
            }
            Ok(AggregatedMessage::Pong(_)) => {}
            Ok(AggregatedMessage::Close(_)) => self.close(1000, "bye", ctx),
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
                self.push_live(conversation_id, seq, text, ctx);
            }
            SessionEvent::Frame(text) => self.push(text, ctx),
            SessionEvent::Close { code, reason } => self.close(code, reason, ctx),
        }
    }
}
