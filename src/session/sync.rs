//! Sync rounds of one session, and the rule that keeps sync and live delivery exactly-once.
//!
//! A round (`sync` frame) visits the user's conversations one page at a time, waiting for room
//! in the outbox before each page, so it never builds the whole answer in memory and never
//! overruns a slow client; it stops after `limits.sync_round_max` messages in all and answers
//! `sync_done` with `has_more` (the client syncs again from its new cursors). Rounds of one
//! session run one after another.
//!
//! Live messages are pushed only in order, with no gap, from a point this connection knows the
//! client holds (`pushed`): set when a round reads the conversation to its end (the client's
//! cursor, or what the round sent), or by a conversation's first message. A live message of a
//! conversation whose position is unknown is not pushed (clients sync after connecting); one
//! that would leave a gap (a stored message that was never published, e.g. after a crash
//! between append and publish) starts a silent one-conversation round — a *fill* — that reads
//! the gap from the store, so nothing is lost, doubled or reordered.
//!
//! While a round runs, each conversation it covers is in a phase that decides what a live
//! message of it does ([`Tracker::live`]):
//! - *pending* (not read yet): dropped — it is stored before it is published, so the round
//!   will read it;
//! - *reading*: held, and pushed after the round's pages of that conversation (if newer);
//! - *behind* (the round stopped before the end of it): dropped — the client was told
//!   `has_more` and syncs again; this lasts until a round reads it to the end.

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

/// One `sync` request, or a fill.
pub struct SyncRequest {
    pub id: Option<String>,
    pub cursors: BTreeMap<ConversationId, u64>,
    /// Messages per conversation in this round.
    pub limit: usize,
    /// A fill: only this conversation, from what was pushed, and no `sync_done`.
    pub only: Option<ConversationId>,
}

/// Own sends remembered ahead of `pushed`, per conversation.
const OWN_AHEAD_MAX: usize = 1024;

/// How often a fill the store failed is retried, and after how long.
const FILL_TRIES: u32 = 5;
const FILL_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// Messages one fill reads before it queues the next.
const FILL_LIMIT: usize = 500;

/// What to do with a live message.
#[derive(Debug, PartialEq, Eq)]
pub enum Live {
    Push(ByteString),
    Skip,
    /// It would leave a gap: queue a fill of this conversation (see the module doc).
    Fill(ConversationId),
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
    /// Seqs this connection sent itself (its client got `sent`) beyond `pushed`: skipped when
    /// `pushed` reaches them, so the client never gets its own message back.
    own: HashMap<ConversationId, std::collections::BTreeSet<u64>>,
    phase: HashMap<ConversationId, Phase>,
    held: Vec<(ConversationId, u64, ByteString)>,
    held_bytes: usize,
    running: bool,
    queue: VecDeque<SyncRequest>,
    /// A full round has completed: the client knows every conversation it was in then, so one
    /// this connection has not seen must be read from its start.
    synced: bool,
    fill_failures: HashMap<ConversationId, u32>,
}

impl Tracker {
    /// What to do with a live message.
    pub fn live(&mut self, conversation: ConversationId, seq: u64, text: ByteString) -> Live {
        match self.phase.get(&conversation) {
            Some(Phase::Pending | Phase::Behind) => Live::Skip,
            Some(Phase::Reading) => {
                if self.held_bytes + text.len() > HELD_BYTES_MAX {
                    self.phase.insert(conversation, Phase::Behind);
                    self.drop_held(conversation);
                } else {
                    self.held_bytes += text.len();
                    self.held.push((conversation, seq, text));
                }
                Live::Skip
            }
            None => match self.pushed.get_mut(&conversation) {
                // Where the client is in this conversation is unknown until it syncs it; its
                // first message is the exception (nothing can come before it).
                None if seq == 1 => {
                    self.pushed.insert(conversation, 1);
                    Live::Push(text)
                }
                // New since the last full round, and its first messages never came here (sent
                // from another connection of this device, or never published): read them.
                None if self.synced => {
                    self.pushed.insert(conversation, 0);
                    self.phase.insert(conversation, Phase::Pending);
                    Live::Fill(conversation)
                }
                None => Live::Skip,
                Some(pushed) if seq <= *pushed => Live::Skip,
                Some(pushed) if seq == *pushed + 1 => {
                    *pushed = seq;
                    self.absorb_own(conversation);
                    Live::Push(text)
                }
                Some(_) => {
                    self.phase.insert(conversation, Phase::Pending);
                    Live::Fill(conversation)
                }
            },
        }
    }

    /// This connection sent message `seq` itself (its client got `sent`, not the message): the
    /// client holds it, so when it directly follows what was pushed it moves the known point.
    pub fn sent(&mut self, conversation: ConversationId, seq: u64) {
        match self.pushed.get_mut(&conversation) {
            Some(pushed) if seq == *pushed + 1 => *pushed = seq,
            // Messages before it are still on their way here: remember it, to skip it then.
            Some(pushed) if seq > *pushed + 1 => {
                let own = self.own.entry(conversation).or_default();
                if own.len() < OWN_AHEAD_MAX {
                    own.insert(seq);
                }
            }
            None if seq == 1 => {
                self.pushed.insert(conversation, 1);
            }
            _ => {}
        }
        self.absorb_own(conversation);
    }

    /// Moves `pushed` over the client's own messages that directly follow it.
    fn absorb_own(&mut self, conversation: ConversationId) {
        let Some(own) = self.own.get_mut(&conversation) else { return };
        if let Some(pushed) = self.pushed.get_mut(&conversation) {
            while own.remove(&(*pushed + 1)) {
                *pushed += 1;
            }
            own.retain(|seq| *seq > *pushed);
        }
        if own.is_empty() {
            self.own.remove(&conversation);
        }
    }

    /// Whether `seq` is one of the client's own messages not yet passed (a round skips it).
    fn take_own(&mut self, conversation: ConversationId, seq: u64) -> bool {
        self.own.get_mut(&conversation).is_some_and(|own| own.remove(&seq))
    }

    /// Queues a fill of the conversation (unless one is queued); returns whether the caller
    /// must start the runner.
    pub fn enqueue_fill(&mut self, conversation: ConversationId) -> bool {
        if self.queue.iter().any(|r| r.only == Some(conversation)) {
            return false;
        }
        self.queue.push_back(SyncRequest {
            id: None,
            cursors: BTreeMap::new(),
            limit: FILL_LIMIT,
            only: Some(conversation),
        });
        let start = !self.running;
        self.running = true;
        start
    }

    fn drop_held(&mut self, conversation: ConversationId) {
        self.held.retain(|(c, _, _)| *c != conversation);
        self.held_bytes = self.held.iter().map(|(_, _, t)| t.len()).sum();
    }

    /// Queues a round; `false` when too many are waiting. Returns whether the caller must start
    /// the runner (no round was running).
    pub fn enqueue(&mut self, request: SyncRequest) -> Result<bool, SyncRequest> {
        if self.queue.iter().filter(|r| r.only.is_none()).count() >= QUEUED_ROUNDS_MAX {
            return Err(request);
        }
        self.queue.push_back(request);
        let start = !self.running;
        self.running = true;
        Ok(start)
    }

    /// Ends the reading of a conversation. `floor` is where the client is known to be (its
    /// cursor, clamped to the conversation's last seq). Returns whether it stays behind (the
    /// round stopped early, or live messages overflowed while it was read) and the held
    /// messages to push now.
    fn finish(
        &mut self,
        conversation: ConversationId,
        stopped_early: bool,
        floor: u64,
    ) -> (bool, Vec<ByteString>, bool) {
        let held: Vec<_> = {
            let (mine, rest) =
                std::mem::take(&mut self.held).into_iter().partition(|(c, _, _)| *c == conversation);
            self.held = rest;
            mine
        };
        self.held_bytes = self.held.iter().map(|(_, _, t)| t.len()).sum();
        let pushed = self.pushed.entry(conversation).or_default();
        *pushed = (*pushed).max(floor);
        self.absorb_own(conversation);
        let behind = stopped_early || self.phase.get(&conversation) == Some(&Phase::Behind);
        if behind {
            self.phase.insert(conversation, Phase::Behind);
            return (true, Vec::new(), false);
        }
        self.phase.remove(&conversation);
        let mut out = Vec::new();
        let mut gap = false;
        for (_, seq, text) in held {
            let pushed = self.pushed.get(&conversation).copied().unwrap_or(0);
            if seq == pushed + 1 {
                self.pushed.insert(conversation, seq);
                self.absorb_own(conversation);
                out.push(text);
            } else if seq > pushed + 1 {
                gap = true;
            }
        }
        (false, out, gap)
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
        let (id, fill) = (request.id.clone(), request.only);
        let result = round(&tracker, &cx, request).await;
        // Whatever happened, nothing may stay pending or reading: those are behind now.
        {
            let mut t = tracker.borrow_mut();
            for phase in t.phase.values_mut() {
                if *phase != Phase::Behind {
                    *phase = Phase::Behind;
                }
            }
            t.held.clear();
            t.held_bytes = 0;
        }
        let frame = match result {
            Ok(Some(frame)) => {
                if let Some(c) = fill {
                    tracker.borrow_mut().fill_failures.remove(&c);
                }
                frame
            }
            Ok(None) => return, // the connection is gone
            Err(e) => match fill {
                Some(c) => {
                    // The store failed the fill: retry in a while; after a few tries, tell the
                    // client (the conversation stays behind until it syncs it).
                    let tries = {
                        let mut t = tracker.borrow_mut();
                        let tries = t.fill_failures.entry(c).or_default();
                        *tries += 1;
                        *tries
                    };
                    if tries <= FILL_TRIES {
                        actix::clock::sleep(FILL_RETRY).await;
                        let mut t = tracker.borrow_mut();
                        t.phase.insert(c, Phase::Pending);
                        t.enqueue_fill(c);
                        continue;
                    }
                    tracker.borrow_mut().fill_failures.remove(&c);
                    ServerFrame::error(
                        None,
                        e.code,
                        format!("conversation {c} could not be read ({}); sync it", e.message),
                    )
                }
                None => ServerFrame::error(id, e.code, e.message),
            },
        };
        if fill.is_some() && matches!(frame, ServerFrame::SyncDone { .. }) {
            continue; // a fill answers nothing
        }
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
    let ids = match request.only {
        Some(c) => vec![c],
        None => cx.history.conversation_ids(cx.user).await?,
    };
    {
        let mut t = tracker.borrow_mut();
        for id in &ids {
            t.phase.insert(*id, Phase::Pending);
        }
    }
    let mut budget = if request.only.is_some() { request.limit } else { cx.round_max };
    let mut states: BTreeMap<ConversationId, SyncState> = BTreeMap::new();
    let mut round_has_more = false;
    for id in ids {
        if budget == 0 {
            round_has_more = true;
            break;
        }
        let cursor = request.cursors.get(&id).copied().unwrap_or(0);
        // What this connection already pushed is not sent again.
        let mut after = {
            let mut t = tracker.borrow_mut();
            t.phase.insert(id, Phase::Reading);
            cursor.max(t.pushed.get(&id).copied().unwrap_or(0))
        };
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
                // One conversation that cannot be read does not fail the round: the client is
                // told, and it stays behind.
                Err(e) if request.only.is_none() => {
                    // Reported without the sync's id (its answer is `sync_done`), and the round
                    // says `has_more`, so the client syncs again.
                    let text = ServerFrame::error(
                        None,
                        e.code,
                        format!("conversation {id} could not be synced now: {}", e.message),
                    )
                    .encode();
                    {
                        let mut t = tracker.borrow_mut();
                        t.phase.insert(id, Phase::Behind);
                        t.drop_held(id);
                    }
                    round_has_more = true;
                    if push(&cx.outbox, text).is_err() {
                        return Ok(None);
                    }
                    break None;
                }
                Err(e) => return Err(e),
            };
            let n = page.messages.len();
            {
                let mut t = tracker.borrow_mut();
                for m in page.messages {
                    after = m.seq;
                    // The client's own message (it got `sent`), or one pushed meanwhile: it has
                    // it already.
                    let pushed = t.pushed.entry(id).or_default();
                    let known = m.seq <= *pushed;
                    *pushed = (*pushed).max(m.seq);
                    if t.take_own(id, m.seq) || known {
                        continue;
                    }
                    if push(&cx.outbox, ServerFrame::Message(m).encode()).is_err() {
                        return Ok(None);
                    }
                }
            }
            here += n;
            budget -= n.min(budget);
            let state = page.state;
            if !state.has_more || here >= request.limit || budget == 0 || n == 0 {
                break Some(state);
            }
        };
        let Some(mut state) = state else { continue };
        let floor = cursor.min(state.last_seq);
        let (behind, release, gap) = tracker.borrow_mut().finish(id, state.has_more, floor);
        state.has_more = behind;
        for text in release {
            if push(&cx.outbox, text).is_err() {
                return Ok(None);
            }
        }
        if gap || (behind && request.only.is_some()) {
            // Held messages left a gap, or a fill did not reach the end: fill again.
            let mut t = tracker.borrow_mut();
            t.phase.insert(id, Phase::Pending);
            t.enqueue_fill(id);
        }
        states.insert(id, state);
    }
    if request.only.is_none() {
        tracker.borrow_mut().synced = true;
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
    fn live_messages_are_pushed_once_in_order_from_a_known_point() {
        let mut t = Tracker::default();
        let c = ConversationId::generate();
        // A conversation's first message: nothing can come before it.
        assert_eq!(t.live(c, 1, text("a")), Live::Push(text("a")));
        assert_eq!(t.live(c, 1, text("a")), Live::Skip);
        assert_eq!(t.live(c, 2, text("b")), Live::Push(text("b")));
        // Where the client is in another conversation is unknown until it syncs it.
        let other = ConversationId::generate();
        assert_eq!(t.live(other, 15, text("x")), Live::Skip);
    }

    #[test]
    fn an_own_send_acknowledged_before_the_message_before_it_is_not_sent_back() {
        let mut t = Tracker::default();
        let c = ConversationId::generate();
        t.pushed.insert(c, 5);
        // `sent` for 7 is handled before the live 6 of the other member.
        t.sent(c, 7);
        assert_eq!(t.live(c, 6, text("six")), Live::Push(text("six")));
        // 7 is the client's own: the next live one follows it without a gap.
        assert_eq!(t.live(c, 8, text("eight")), Live::Push(text("eight")));
    }

    #[test]
    fn after_a_full_round_an_unseen_conversation_is_read_from_its_start() {
        let mut t = Tracker::default();
        let c = ConversationId::generate();
        assert_eq!(t.live(c, 3, text("three")), Live::Skip, "before any sync: unknown");
        t.synced = true;
        let d = ConversationId::generate();
        assert_eq!(t.live(d, 3, text("three")), Live::Fill(d));
        assert_eq!(t.pushed.get(&d), Some(&0));
    }

    #[test]
    fn a_gap_starts_a_fill_instead_of_a_push() {
        let mut t = Tracker::default();
        let c = ConversationId::generate();
        t.pushed.insert(c, 10);
        assert_eq!(t.live(c, 12, text("twelve")), Live::Fill(c));
        // Until the fill has read the gap, live messages of it wait for the store.
        assert_eq!(t.live(c, 13, text("thirteen")), Live::Skip);
        assert!(t.enqueue_fill(c));
        assert!(!t.enqueue_fill(c), "one fill per conversation at a time");
    }

    #[test]
    fn a_round_holds_the_conversation_it_reads_and_drops_pending_ones() {
        let mut t = Tracker::default();
        let (reading, pending) = (ConversationId::generate(), ConversationId::generate());
        t.phase.insert(reading, Phase::Reading);
        t.phase.insert(pending, Phase::Pending);
        assert_eq!(t.live(pending, 7, text("p")), Live::Skip);
        assert_eq!(t.live(reading, 5, text("five")), Live::Skip);
        assert_eq!(t.live(reading, 6, text("six")), Live::Skip);
        // The round pushed up to 5 itself.
        t.pushed.insert(reading, 5);
        let (behind, released, gap) = t.finish(reading, false, 0);
        assert!(!behind && !gap);
        assert_eq!(released, vec![text("six")]);
        assert_eq!(t.live(reading, 6, text("six")), Live::Skip);
        assert_eq!(t.live(reading, 7, text("seven")), Live::Push(text("seven")));
    }

    #[test]
    fn the_clients_cursor_anchors_a_conversation_with_nothing_new() {
        let mut t = Tracker::default();
        let c = ConversationId::generate();
        t.phase.insert(c, Phase::Reading);
        let (behind, released, _) = t.finish(c, false, 40);
        assert!(!behind && released.is_empty());
        assert_eq!(t.live(c, 41, text("next")), Live::Push(text("next")));
    }

    #[test]
    fn a_conversation_left_behind_drops_live_until_synced() {
        let mut t = Tracker::default();
        let c = ConversationId::generate();
        t.phase.insert(c, Phase::Reading);
        assert_eq!(t.live(c, 9, text("x")), Live::Skip);
        let (behind, released, _) = t.finish(c, true, 0);
        assert!(behind && released.is_empty());
        assert_eq!(t.live(c, 10, text("y")), Live::Skip);
    }

    #[test]
    fn an_overflow_while_reading_leaves_it_behind_even_if_the_pages_ended() {
        let mut t = Tracker::default();
        let c = ConversationId::generate();
        t.phase.insert(c, Phase::Reading);
        let big = ByteString::from("x".repeat(HELD_BYTES_MAX / 2 + 1));
        assert_eq!(t.live(c, 2, big.clone()), Live::Skip);
        assert_eq!(t.live(c, 3, big), Live::Skip);
        let (behind, released, _) = t.finish(c, false, 1);
        assert!(behind, "dropped held messages must not be reported as caught up");
        assert!(released.is_empty());
    }
}
