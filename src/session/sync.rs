//! Sync rounds of one session, and the rule that keeps sync and live delivery exactly-once.
//!
//! A round (`sync` frame) visits the user's conversations one page at a time, waiting for room
//! in the outbox before each page, so it never builds the whole answer in memory and never
//! overruns a slow client; it stops after `limits.sync_round_max` messages in all and answers
//! `sync_done` with `has_more` (the client syncs again from its new cursors). Rounds of one
//! session run one after another.
//!
//! While a round runs, each of the user's conversations is in a phase that decides what a live
//! message of it does ([`Tracker::live`]):
//! - *pending* (not read yet): dropped — it is stored before it is published, so the round
//!   will read it;
//! - *reading*: held, and pushed after the round's pages of that conversation (if newer);
//! - *behind* (the round stopped before the end of it): dropped — the client was told
//!   `has_more` and syncs again; this lasts until a round reads it to the end;
//! - otherwise: pushed, unless this session already pushed that seq.

use super::outbox::{Frame, Outbox, PushError};
use crate::conversation::history::HistoryReader;
use crate::error::Error;
use crate::model::{ConversationId, UserId};
use crate::protocol::{ServerFrame, SyncState};
use bytestring::ByteString;
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;

/// Sync frames a session may queue behind the running round.
const QUEUED_ROUNDS_MAX: usize = 4;
/// Bytes of live messages held for the conversation being read; past it the conversation is
/// left `behind` (the client syncs it again) instead of holding more.
const HELD_BYTES_MAX: usize = 1 << 20;

/// One `sync` request.
pub struct SyncRequest {
    pub id: Option<String>,
    pub cursors: BTreeMap<ConversationId, u64>,
    /// Messages per conversation in this round.
    pub limit: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Pending,
    Reading,
    Behind,
}

/// Per session: what was pushed, and the phases of the running round.
#[derive(Default)]
pub struct Tracker {
    /// Per conversation, the highest seq pushed to this client.
    pushed: HashMap<ConversationId, u64>,
    phase: HashMap<ConversationId, Phase>,
    held: Vec<(ConversationId, u64, ByteString)>,
    held_bytes: usize,
    running: bool,
    queue: VecDeque<SyncRequest>,
}

impl Tracker {
    /// What to do with a live message: `Some(text)` to push it now, `None` to skip it.
    pub fn live(&mut self, conversation: ConversationId, seq: u64, text: ByteString) -> Option<ByteString> {
        match self.phase.get(&conversation) {
            Some(Phase::Pending | Phase::Behind) => None,
            Some(Phase::Reading) => {
                if self.held_bytes + text.len() > HELD_BYTES_MAX {
                    self.phase.insert(conversation, Phase::Behind);
                    self.drop_held(conversation);
                } else {
                    self.held_bytes += text.len();
                    self.held.push((conversation, seq, text));
                }
                None
            }
            None => {
                let pushed = self.pushed.entry(conversation).or_default();
                if seq <= *pushed {
                    return None;
                }
                *pushed = seq;
                Some(text)
            }
        }
    }

    fn drop_held(&mut self, conversation: ConversationId) {
        self.held.retain(|(c, _, _)| *c != conversation);
        self.held_bytes = self.held.iter().map(|(_, _, t)| t.len()).sum();
    }

    /// Queues a round; `false` when too many are waiting. Returns whether the caller must start
    /// the runner (no round was running).
    pub fn enqueue(&mut self, request: SyncRequest) -> Result<bool, SyncRequest> {
        if self.queue.len() >= QUEUED_ROUNDS_MAX {
            return Err(request);
        }
        self.queue.push_back(request);
        let start = !self.running;
        self.running = true;
        Ok(start)
    }

    /// Ends the reading of a conversation: the held messages newer than what the round pushed
    /// are returned for pushing, or dropped when the conversation stays behind.
    fn finish(&mut self, conversation: ConversationId, behind: bool) -> Vec<ByteString> {
        let held: Vec<_> = {
            let (mine, rest) =
                std::mem::take(&mut self.held).into_iter().partition(|(c, _, _)| *c == conversation);
            self.held = rest;
            mine
        };
        self.held_bytes = self.held.iter().map(|(_, _, t)| t.len()).sum();
        if behind {
            self.phase.insert(conversation, Phase::Behind);
            return Vec::new();
        }
        self.phase.remove(&conversation);
        let pushed = self.pushed.entry(conversation).or_default();
        let mut out = Vec::new();
        for (_, seq, text) in held {
            if seq > *pushed {
                *pushed = seq;
                out.push(text);
            }
        }
        out
    }
}

/// What a round needs besides the tracker.
#[derive(Clone)]
pub struct SyncContext {
    pub user: UserId,
    pub history: HistoryReader,
    pub outbox: Arc<Outbox>,
    /// `limits.sync_round_max`
    pub round_max: usize,
}

/// Runs queued rounds until none is left. Pushing fails only when the client stopped reading
/// (the outbox is then killed: the connection closes) or is gone.
pub async fn run(tracker: Rc<RefCell<Tracker>>, cx: SyncContext) {
    loop {
        let Some(request) = tracker.borrow_mut().queue.pop_front() else {
            tracker.borrow_mut().running = false;
            return;
        };
        let id = request.id.clone();
        let result = round(&tracker, &cx, request).await;
        // Whatever happened, nothing may stay pending or reading: those are behind now.
        {
            let mut t = tracker.borrow_mut();
            for phase in t.phase.values_mut() {
                *phase = Phase::Behind;
            }
            t.held.clear();
            t.held_bytes = 0;
        }
        let frame = match result {
            Ok(Some(frame)) => frame,
            Ok(None) => return, // the connection is gone
            Err(e) => ServerFrame::error(id, e.code, e.message),
        };
        if push(&cx.outbox, frame.encode()).is_err() {
            return;
        }
    }
}

fn push(outbox: &Outbox, text: ByteString) -> Result<(), PushError> {
    let result = outbox.push(Frame::Text(text));
    if result == Err(PushError::Full) {
        outbox.kill(super::close_reason(
            crate::protocol::close_code::SLOW_CONSUMER,
            "too slow: reconnect and sync",
        ));
    }
    result
}

/// One round; `Ok(None)` when the connection went away meanwhile.
async fn round(
    tracker: &Rc<RefCell<Tracker>>,
    cx: &SyncContext,
    request: SyncRequest,
) -> Result<Option<ServerFrame>, Error> {
    let ids = cx.history.conversation_ids(cx.user).await?;
    {
        let mut t = tracker.borrow_mut();
        for id in &ids {
            t.phase.insert(*id, Phase::Pending);
        }
    }
    let mut budget = cx.round_max;
    let mut states: BTreeMap<ConversationId, SyncState> = BTreeMap::new();
    let mut round_has_more = false;
    for id in ids {
        if budget == 0 {
            round_has_more = true;
            break;
        }
        tracker.borrow_mut().phase.insert(id, Phase::Reading);
        let mut after = request.cursors.get(&id).copied().unwrap_or(0);
        let mut here = 0;
        let state = loop {
            cx.outbox.room().await;
            let take = (request.limit - here).min(budget);
            let page = match cx.history.sync_page(cx.user, id, after, take).await {
                Ok(page) => page,
                // Left the conversation (or it vanished) since the list was read: skip it.
                Err(e)
                    if matches!(
                        e.code,
                        crate::error::ErrorCode::Forbidden | crate::error::ErrorCode::NotFound
                    ) =>
                {
                    tracker.borrow_mut().phase.remove(&id);
                    break None;
                }
                Err(e) => return Err(e),
            };
            let n = page.messages.len();
            {
                let mut t = tracker.borrow_mut();
                for m in page.messages {
                    after = m.seq;
                    let pushed = t.pushed.entry(id).or_default();
                    *pushed = (*pushed).max(m.seq);
                    if push(&cx.outbox, ServerFrame::Message(m).encode()).is_err() {
                        return Ok(None);
                    }
                }
            }
            here += n;
            budget -= n.min(budget);
            let mut state = page.state;
            if !state.has_more {
                break Some(state);
            }
            if here >= request.limit || budget == 0 || n == 0 {
                state.has_more = true;
                break Some(state);
            }
        };
        let Some(state) = state else { continue };
        let release = tracker.borrow_mut().finish(id, state.has_more);
        for text in release {
            if push(&cx.outbox, text).is_err() {
                return Ok(None);
            }
        }
        states.insert(id, state);
    }
    Ok(Some(ServerFrame::SyncDone { id: request.id, conversations: states, has_more: round_has_more }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> ByteString {
        ByteString::from(s.to_owned())
    }

    #[test]
    fn live_messages_are_pushed_once() {
        let mut t = Tracker::default();
        let c = ConversationId::generate();
        assert!(t.live(c, 1, text("a")).is_some());
        assert!(t.live(c, 1, text("a")).is_none());
        assert!(t.live(c, 2, text("b")).is_some());
    }

    #[test]
    fn a_round_holds_the_conversation_it_reads_and_drops_pending_ones() {
        let mut t = Tracker::default();
        let (reading, pending) = (ConversationId::generate(), ConversationId::generate());
        t.phase.insert(reading, Phase::Reading);
        t.phase.insert(pending, Phase::Pending);
        assert!(t.live(pending, 7, text("p")).is_none());
        assert!(t.live(reading, 5, text("five")).is_none());
        assert!(t.live(reading, 6, text("six")).is_none());
        // The round pushed up to 5 itself.
        t.pushed.insert(reading, 5);
        let released = t.finish(reading, false);
        assert_eq!(released, vec![text("six")]);
        assert!(t.live(reading, 6, text("six")).is_none());
        assert!(t.live(reading, 7, text("seven")).is_some());
    }

    #[test]
    fn a_conversation_left_behind_drops_live_until_synced() {
        let mut t = Tracker::default();
        let c = ConversationId::generate();
        t.phase.insert(c, Phase::Reading);
        assert!(t.live(c, 9, text("x")).is_none());
        assert!(t.finish(c, true).is_empty());
        assert!(t.live(c, 10, text("y")).is_none());
    }
}
