// The client's state, pure (no DOM, no network, no timers): conversations and their metadata,
// the sync cursor of each (advanced only over contiguous seqs), messages deduplicated by seq,
// the outbox of unacknowledged sends (each keeps its client_msg_id for good), watermarks and
// the ticks they give, unread counts, the receipts the client owes the server, presence,
// typing, and the usernames known with the ids still to look up (`names.ts`). Every input is a
// protocol frame or a REST reply; the clock is passed in.

import type {
  Attachment,
  ConversationKind,
  ConversationSummary,
  DirectReply,
  GroupReply,
  MemberInfo,
  MessageKind,
  MessageView,
  PresenceFrame,
  Role,
  SentFrame,
  SyncState,
} from './protocol';
import { retryableSendError } from './protocol';
import { attachmentSummary, parseAttachments } from './attachments';
import { baseDelay } from './backoff';
import { NameDirectory } from './names';
import { parseSystemBody, systemText, systemUserIds } from './system';

// ---------------------------------------------------------------------------------------------
// Cursor

/**
 * What the client holds of one conversation: every seq up to `held`, and some beyond a gap
 * (its own messages, acknowledged before the messages before them arrived). `held` is the sync
 * cursor: it advances only over contiguous seqs.
 */
export class Cursor {
  private contiguous = 0;
  private readonly ahead = new Set<number>();

  get held(): number {
    return this.contiguous;
  }

  /** Records `seq` as held; false when it already was. */
  record(seq: number): boolean {
    if (seq <= this.contiguous || this.ahead.has(seq)) return false;
    this.ahead.add(seq);
    this.absorb();
    return true;
  }

  /** Everything up to `seq` counts as held (the newest history page, or the list's last_seq). */
  holdUpTo(seq: number): void {
    if (seq <= this.contiguous) return;
    this.contiguous = seq;
    for (const s of this.ahead) if (s <= seq) this.ahead.delete(s);
    this.absorb();
  }

  private absorb(): void {
    while (this.ahead.delete(this.contiguous + 1)) this.contiguous += 1;
  }
}

// ---------------------------------------------------------------------------------------------
// Messages and the outbox

export interface ChatMessage {
  conversationId: string;
  seq: number;
  messageId: string;
  authorId: string;
  clientMsgId: string;
  body: string;
  ts: number;
  kind: MessageKind;
  attachments: Attachment[];
}

export function fromView(m: MessageView): ChatMessage {
  return {
    conversationId: m.conversation_id,
    seq: m.seq,
    messageId: m.message_id,
    authorId: m.author_id,
    clientMsgId: m.client_msg_id,
    body: m.body,
    ts: m.ts,
    kind: m.kind === 'system' ? 'system' : 'text',
    attachments: parseAttachments(m.attachments),
  };
}

export type SendStatus = 'queued' | 'inflight' | 'failed';

export interface PendingSend {
  conversationId: string;
  clientMsgId: string;
  body: string;
  /** Finished uploads named in the send (their ids go out; the objects draw the message). */
  attachments: Attachment[];
  createdAt: number;
  /** How often it was written to a connection. */
  attempts: number;
  status: SendStatus;
  /** When a queued send is due (ms). */
  dueAt: number;
  /** When it was last written (in flight). */
  sentAt: number;
  /** The error code that made it fail for good. */
  error: string | null;
}

/** How long a send may go unanswered on a live connection before it is written again. */
export const ANSWER_TIMEOUT_MS = 10_000;

export type FailOutcome = 'retry' | 'gave-up' | 'unknown';

/**
 * Messages typed but not acknowledged (`sent`), in typing order. Each keeps its client_msg_id
 * for good, so however often it is written (timeouts, reconnects), the server stores it once.
 */
export class Outbox {
  private counter = 0;
  private readonly entries = new Map<string, PendingSend>();

  constructor(private readonly prefix: string) {}

  /** A new message, due at once. */
  create(conversationId: string, body: string, now: number, attachments: Attachment[] = []): PendingSend {
    this.counter += 1;
    const p: PendingSend = {
      conversationId,
      clientMsgId: `${this.prefix}-${this.counter}`,
      body,
      attachments: [...attachments],
      createdAt: now,
      attempts: 0,
      status: 'queued',
      dueAt: now,
      sentAt: 0,
      error: null,
    };
    this.entries.set(p.clientMsgId, p);
    return p;
  }

  get size(): number {
    return this.entries.size;
  }

  get(clientMsgId: string): PendingSend | undefined {
    return this.entries.get(clientMsgId);
  }

  has(clientMsgId: string): boolean {
    return this.entries.has(clientMsgId);
  }

  list(): PendingSend[] {
    return [...this.entries.values()];
  }

  forConversation(conversationId: string): PendingSend[] {
    return this.list().filter((p) => p.conversationId === conversationId);
  }

  private write(p: PendingSend, now: number): void {
    p.status = 'inflight';
    p.attempts += 1;
    p.sentAt = now;
  }

  /** The sends to write now, marked in flight: queued ones that are due, and ones in flight
   *  without an answer for ANSWER_TIMEOUT_MS (written again with the same client_msg_id). */
  takeDue(now: number): PendingSend[] {
    const out: PendingSend[] = [];
    for (const p of this.entries.values()) {
      const due =
        (p.status === 'queued' && p.dueAt <= now) ||
        (p.status === 'inflight' && now - p.sentAt >= ANSWER_TIMEOUT_MS);
      if (due) {
        this.write(p, now);
        out.push(p);
      }
    }
    return out;
  }

  /** Every send not acknowledged and not failed, marked in flight: a fresh connection, once
   *  synced, writes them all again (the server answers the original `sent` for any it had). */
  takeAll(now: number): PendingSend[] {
    const out: PendingSend[] = [];
    for (const p of this.entries.values()) {
      if (p.status === 'failed') continue;
      this.write(p, now);
      out.push(p);
    }
    return out;
  }

  /** When `takeDue` will next have something; null when nothing waits. */
  nextDue(): number | null {
    let next: number | null = null;
    for (const p of this.entries.values()) {
      const at = p.status === 'queued' ? p.dueAt : p.status === 'inflight' ? p.sentAt + ANSWER_TIMEOUT_MS : null;
      if (at !== null && (next === null || at < next)) next = at;
    }
    return next;
  }

  /** The server stored it: the entry, or undefined for an answer already taken. */
  ack(clientMsgId: string): PendingSend | undefined {
    const p = this.entries.get(clientMsgId);
    if (p) this.entries.delete(clientMsgId);
    return p;
  }

  /** An error reply to a send: retried later (same client_msg_id) or failed for good. */
  fail(clientMsgId: string, code: string, now: number): FailOutcome {
    const p = this.entries.get(clientMsgId);
    if (!p) return 'unknown';
    if (!retryableSendError(code)) {
      p.status = 'failed';
      p.error = code;
      return 'gave-up';
    }
    p.status = 'queued';
    p.dueAt = now + baseDelay(Math.max(0, p.attempts - 1));
    return 'retry';
  }

  /** A failed send is tried again (by the user), keeping its client_msg_id. */
  retry(clientMsgId: string, now: number): boolean {
    const p = this.entries.get(clientMsgId);
    if (!p || p.status !== 'failed') return false;
    p.status = 'queued';
    p.error = null;
    p.dueAt = now;
    return true;
  }

  discard(clientMsgId: string): boolean {
    return this.entries.delete(clientMsgId);
  }

  /** The connection broke: what was in flight is due again at once. */
  connectionLost(now: number): void {
    for (const p of this.entries.values()) {
      if (p.status === 'inflight') {
        p.status = 'queued';
        p.dueAt = now;
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Conversations

export interface Me {
  userId: string;
  username: string;
}

/** A member's role, window and watermarks (from `GET …/members`, kept current by receipts). */
export interface MemberState {
  userId: string;
  role: Role | null;
  /** The seq of the message that added them (0 in a direct conversation). */
  sinceSeq: number;
  delivered: number;
  read: number;
}

export interface Presence {
  online: boolean;
  lastSeen: number | null;
}

export type TickState = 'sending' | 'sent' | 'delivered' | 'read' | 'failed';

export interface Conversation {
  id: string;
  /** null until the list (or a create reply) told what it is. */
  kind: ConversationKind | null;
  title: string | null;
  /** Current members' user ids. */
  members: string[];
  role: Role | null;
  left: boolean;
  deleted: boolean;
  /** The metadata above reflects the conversation up to this seq. */
  metaSeq: number;
  lastSeq: number;
  /** The caller's own watermarks as the server last told them. */
  serverDelivered: number;
  serverRead: number;
  /** What this client marked read (optimistic, shown at once). */
  readLocal: number;
  /** Receipts written on the current connection. */
  readSent: number;
  deliveredSent: number;
  lastMessage: ChatMessage | null;
  messages: Map<number, ChatMessage>;
  cursor: Cursor;
  /** The newest history page was read (the timeline is complete from its oldest message on). */
  historyLoaded: boolean;
  historyHasMore: boolean;
  loadingHistory: boolean;
  memberStates: Map<string, MemberState>;
  membersLoaded: boolean;
  /** user id → when their typing indicator expires (ms). */
  typing: Map<string, number>;
}

/** One row of a chat's timeline: a stored message, or an own message not acknowledged yet. */
export interface TimelineItem {
  key: string;
  seq: number | null;
  clientMsgId: string;
  authorId: string;
  body: string;
  ts: number;
  kind: MessageKind;
  attachments: Attachment[];
  own: boolean;
  pending: PendingSend | null;
}

export interface OwedReceipt {
  type: 'read' | 'delivered';
  conversation_id: string;
  seq: number;
}

/** How long a `typing` indicator lasts without a repeat (in case `active: false` is lost). */
export const TYPING_TTL_MS = 6_000;

/** A short stand-in for a user whose name the client does not know. */
export function shortId(userId: string): string {
  return `user-${userId.replace(/-/g, '').slice(-6)}`;
}

function newConversation(id: string): Conversation {
  return {
    id,
    kind: null,
    title: null,
    members: [],
    role: null,
    left: false,
    deleted: false,
    metaSeq: 0,
    lastSeq: 0,
    serverDelivered: 0,
    serverRead: 0,
    readLocal: 0,
    readSent: 0,
    deliveredSent: 0,
    lastMessage: null,
    messages: new Map(),
    cursor: new Cursor(),
    historyLoaded: false,
    historyHasMore: false,
    loadingHistory: false,
    memberStates: new Map(),
    membersLoaded: false,
    typing: new Map(),
  };
}

export type HistoryPage = 'newest' | 'older' | 'fill';

export interface MessageOutcome {
  /** Shown for the first time (false: a duplicate). */
  added: boolean;
  /** The client knows nothing of this conversation yet: fetch the list. */
  unknownConversation: boolean;
  /** A system message that changed the group (members, title, roles). */
  groupChanged: boolean;
}

export class ClientState {
  me: Me | null = null;
  readonly conversations = new Map<string, Conversation>();
  /** user id → username, and the ids whose names are still to be looked up. */
  readonly names = new NameDirectory();
  readonly presence = new Map<string, Presence>();
  readonly outbox: Outbox;
  /** The conversation shown in the chat pane. */
  openId: string | null = null;

  constructor(clientMsgPrefix: string) {
    this.outbox = new Outbox(clientMsgPrefix);
  }

  setMe(me: Me): void {
    this.me = me;
    this.names.set(me.userId, me.username);
  }

  isMe(userId: string): boolean {
    return this.me !== null && this.me.userId === userId;
  }

  rememberName(userId: string, username: string): void {
    this.names.set(userId, username);
  }

  /** The users a message names (its author; the users in a system message's body). */
  private noteMessageUsers(m: { author_id: string; kind: MessageKind; body: string }): void {
    this.names.note(m.author_id);
    if (m.kind === 'system') this.names.noteAll(systemUserIds(m.body));
  }

  displayName(userId: string): string {
    return this.names.get(userId) ?? shortId(userId);
  }

  get(id: string): Conversation | undefined {
    return this.conversations.get(id);
  }

  ensure(id: string): Conversation {
    let c = this.conversations.get(id);
    if (!c) {
      c = newConversation(id);
      this.conversations.set(id, c);
    }
    return c;
  }

  // ---- REST replies ----

  /** `GET /v1/conversations`. Metadata is taken unless live system messages are newer; a
   *  conversation whose timeline is not loaded holds up to last_seq (sync goes on from there;
   *  opening it reads the newest history page). */
  loadConversations(list: ConversationSummary[]): void {
    for (const s of list) {
      const c = this.ensure(s.conversation_id);
      this.names.noteAll(s.members);
      if (s.last_message) this.noteMessageUsers(s.last_message);
      if (s.last_seq >= c.metaSeq || c.kind === null) {
        c.kind = s.kind;
        c.title = s.title ?? null;
        c.members = [...s.members];
        c.role = s.role ?? null;
        c.left = s.left === true;
        c.metaSeq = Math.max(c.metaSeq, s.last_seq);
      }
      c.lastSeq = Math.max(c.lastSeq, s.last_seq);
      c.serverRead = Math.max(c.serverRead, s.read_seq);
      c.serverDelivered = Math.max(c.serverDelivered, s.delivered_seq, s.read_seq);
      if (s.last_message && (!c.lastMessage || s.last_message.seq >= c.lastMessage.seq)) {
        c.lastMessage = fromView(s.last_message);
      }
      if (!c.historyLoaded) c.cursor.holdUpTo(s.last_seq);
    }
  }

  /** `POST /v1/conversations/direct`. */
  addDirect(r: DirectReply): Conversation {
    const c = this.ensure(r.conversation_id);
    c.kind = 'direct';
    c.members = [...r.members];
    this.names.noteAll(r.members);
    return c;
  }

  /** `POST /v1/conversations/group`: the caller is the owner. */
  addGroup(r: GroupReply): Conversation {
    const c = this.ensure(r.conversation_id);
    c.kind = 'group';
    c.title = r.title;
    this.names.noteAll(r.members.map((m) => m.user_id));
    if (c.metaSeq === 0) {
      c.members = r.members.map((m) => m.user_id);
      c.role = 'owner';
    }
    return c;
  }

  /** A history page: the newest (`before` absent), an older one ("Load older"), or a fill
   *  (messages read again out of order: neither moves "Load older" nor counts as the newest
   *  page). Messages the client holds already (live, sync, an earlier page) are kept once. */
  applyHistory(conversationId: string, messages: MessageView[], hasMore: boolean, page: HistoryPage): void {
    const c = this.ensure(conversationId);
    const sorted = [...messages].sort((a, b) => a.seq - b.seq);
    for (const m of sorted) this.applyMessage(m);
    if (page === 'newest') {
      // The newest page holds everything up to its top: sync goes on from there.
      if (!c.historyLoaded) c.historyHasMore = hasMore;
      c.historyLoaded = true;
      const top = sorted.length ? sorted[sorted.length - 1]!.seq : 0;
      c.cursor.holdUpTo(top);
    } else if (page === 'older') {
      c.historyHasMore = hasMore;
    }
  }

  /** `GET …/members`: roles, windows and watermarks; watermarks only move up. */
  applyMembers(conversationId: string, members: MemberInfo[]): void {
    const c = this.ensure(conversationId);
    const next = new Map<string, MemberState>();
    for (const m of members) {
      this.names.note(m.user_id);
      const old = c.memberStates.get(m.user_id);
      next.set(m.user_id, {
        userId: m.user_id,
        role: m.role ?? null,
        sinceSeq: m.since_seq ?? 0,
        delivered: Math.max(old?.delivered ?? 0, m.delivered_seq, m.read_seq),
        read: Math.max(old?.read ?? 0, m.read_seq),
      });
      if (this.isMe(m.user_id)) {
        c.serverRead = Math.max(c.serverRead, m.read_seq);
        c.serverDelivered = Math.max(c.serverDelivered, m.delivered_seq, m.read_seq);
        if (c.kind === 'group') c.role = m.role ?? c.role;
      }
    }
    c.memberStates = next;
    c.members = members.map((m) => m.user_id);
    c.membersLoaded = true;
  }

  // ---- WebSocket frames ----

  /** A `message` (live or sync) or a message of a history page: the same rules for all. */
  applyMessage(m: MessageView): MessageOutcome {
    const existing = this.conversations.get(m.conversation_id);
    const unknownConversation = !existing || existing.kind === null;
    const c = existing ?? this.ensure(m.conversation_id);
    // Whatever brings it, the client holds it now (the cursor still moves only over a run).
    c.cursor.record(m.seq);
    // Our own message, stored by an earlier attempt whose `sent` we never got.
    if (this.isMe(m.author_id)) this.outbox.ack(m.client_msg_id);
    const out: MessageOutcome = { added: false, unknownConversation, groupChanged: false };
    if (c.messages.has(m.seq)) return out;
    const msg = fromView(m);
    c.messages.set(m.seq, msg);
    out.added = true;
    this.noteMessageUsers(m);
    c.lastSeq = Math.max(c.lastSeq, m.seq);
    if (!c.lastMessage || m.seq >= c.lastMessage.seq) c.lastMessage = msg;
    if (msg.kind === 'system' && m.seq > c.metaSeq) {
      out.groupChanged = this.applySystem(c, msg);
      c.metaSeq = m.seq;
    }
    if (msg.kind === 'text') c.typing.delete(m.author_id);
    return out;
  }

  /** What a system message changes in the group's metadata. */
  private applySystem(c: Conversation, m: ChatMessage): boolean {
    const e = parseSystemBody(m.body);
    if (!e) return false;
    if (c.kind === null) c.kind = 'group';
    const me = this.me?.userId;
    const addMember = (u: string, role: Role) => {
      if (!c.members.includes(u)) c.members.push(u);
      if (!c.memberStates.has(u)) c.memberStates.set(u, { userId: u, role, sinceSeq: m.seq, delivered: 0, read: 0 });
      if (u === me) {
        c.left = false;
        c.role = role;
      }
    };
    const removeMember = (u: string) => {
      c.members = c.members.filter((x) => x !== u);
      c.memberStates.delete(u);
      if (u === me) c.left = true;
    };
    const setRole = (u: string, role: Role) => {
      const s = c.memberStates.get(u);
      if (s) s.role = role;
      if (u === me) c.role = role;
    };
    switch (e.event) {
      case 'group_created':
        if (e.title !== undefined) c.title = e.title;
        for (const u of e.members ?? []) addMember(u, u === e.actor ? 'owner' : 'member');
        return true;
      case 'renamed':
        if (e.title !== undefined) c.title = e.title;
        return true;
      case 'members_added':
        for (const u of e.users ?? []) addMember(u, 'member');
        return true;
      case 'member_removed':
        if (e.user) removeMember(e.user);
        return true;
      case 'member_left':
        if (e.actor) removeMember(e.actor);
        return true;
      case 'role_changed':
        if (e.user && (e.role === 'admin' || e.role === 'member' || e.role === 'owner')) setRole(e.user, e.role);
        return true;
      case 'ownership_transferred':
        if (e.user) setRole(e.user, 'owner');
        if (e.actor) setRole(e.actor, 'admin');
        return true;
      case 'group_deleted':
        c.deleted = true;
        c.left = true;
        return true;
      default:
        return false;
    }
  }

  /** `sent`: the outbox entry is acknowledged (also when it answers a resend), and the message
   *  takes its seq. False when no entry waited for it (a repeated answer). */
  applySent(f: SentFrame): boolean {
    const p = this.outbox.ack(f.client_msg_id);
    const c = this.ensure(f.conversation_id);
    c.cursor.record(f.seq);
    c.lastSeq = Math.max(c.lastSeq, f.seq);
    if (p && !c.messages.has(f.seq) && this.me) {
      const msg: ChatMessage = {
        conversationId: f.conversation_id,
        seq: f.seq,
        messageId: f.message_id,
        authorId: this.me.userId,
        clientMsgId: f.client_msg_id,
        body: p.body,
        ts: f.ts,
        kind: 'text',
        attachments: p.attachments,
      };
      c.messages.set(f.seq, msg);
      if (!c.lastMessage || f.seq >= c.lastMessage.seq) c.lastMessage = msg;
    }
    return p !== undefined;
  }

  /** An `error` answering a send (its `id` is the client_msg_id). */
  applySendError(clientMsgId: string, code: string, now: number): FailOutcome {
    return this.outbox.fail(clientMsgId, code, now);
  }

  /** `receipt` (direct) or one entry of `receipts` (group). */
  applyReceipt(conversationId: string, userId: string, delivered: number, read: number): void {
    const c = this.ensure(conversationId);
    if (this.isMe(userId)) {
      c.serverRead = Math.max(c.serverRead, read);
      c.serverDelivered = Math.max(c.serverDelivered, delivered, read);
      return;
    }
    this.names.note(userId);
    let s = c.memberStates.get(userId);
    if (!s) {
      s = { userId, role: null, sinceSeq: 0, delivered: 0, read: 0 };
      c.memberStates.set(userId, s);
    }
    s.read = Math.max(s.read, read);
    s.delivered = Math.max(s.delivered, delivered, s.read);
  }

  /** `sync_done`: the caller's watermarks and last seqs; the ids of conversations the client
   *  knows nothing about (fetch the list). */
  applySyncDone(conversations: Record<string, SyncState>): string[] {
    const unknown: string[] = [];
    for (const [id, s] of Object.entries(conversations)) {
      const c = this.ensure(id);
      if (c.kind === null) unknown.push(id);
      c.lastSeq = Math.max(c.lastSeq, s.last_seq);
      c.serverRead = Math.max(c.serverRead, s.read_seq);
      c.serverDelivered = Math.max(c.serverDelivered, s.delivered_seq, s.read_seq);
    }
    return unknown;
  }

  /** Whether another sync round is needed after this `sync_done`. */
  static syncHasMore(f: { has_more?: boolean; conversations: Record<string, SyncState> }): boolean {
    return f.has_more === true || Object.values(f.conversations).some((s) => s.has_more);
  }

  applyPresence(f: PresenceFrame): void {
    this.presence.set(f.user_id, { online: f.online, lastSeen: f.last_seen });
  }

  applyTyping(conversationId: string, userId: string, active: boolean, now: number): void {
    if (this.isMe(userId)) return;
    const c = this.ensure(conversationId);
    this.names.note(userId);
    if (active) c.typing.set(userId, now + TYPING_TTL_MS);
    else c.typing.delete(userId);
  }

  /** Who is typing in a conversation now (expired indicators are dropped). */
  typingUsers(conversationId: string, now: number): string[] {
    const c = this.conversations.get(conversationId);
    if (!c) return [];
    const out: string[] = [];
    for (const [u, until] of c.typing) {
      if (until <= now) c.typing.delete(u);
      else out.push(u);
    }
    return out;
  }

  /** When the next typing indicator expires (to redraw then); null if none. */
  nextTypingExpiry(): number | null {
    let next: number | null = null;
    for (const c of this.conversations.values()) {
      for (const until of c.typing.values()) if (next === null || until < next) next = until;
    }
    return next;
  }

  /** A connection ended: receipts and typing of it are forgotten (they may not have arrived). */
  connectionLost(now: number): void {
    this.outbox.connectionLost(now);
    for (const c of this.conversations.values()) {
      c.readSent = 0;
      c.deliveredSent = 0;
      c.typing.clear();
    }
  }

  // ---- What the client owes the server ----

  /** The `sync` cursors: the contiguous seq held of each conversation. */
  cursors(): Record<string, number> {
    const out: Record<string, number> = {};
    for (const c of this.conversations.values()) if (c.cursor.held > 0) out[c.id] = c.cursor.held;
    return out;
  }

  /** The open chat, shown on a visible page with its timeline loaded, is read up to its
   *  newest seq (at once for the unread count; `owedReceipts` tells the server). */
  markSeen(visibleOpenId: string | null): void {
    const c = visibleOpenId ? this.conversations.get(visibleOpenId) : undefined;
    if (c && c.historyLoaded && !c.deleted) c.readLocal = Math.max(c.readLocal, c.lastSeq);
  }

  /** The receipts to write now, marked as written: `read` of the newest seq of the open chat
   *  (when the page is visible and its timeline loaded), again for what was marked read but
   *  never reached the server, and `delivered` for every other conversation with new messages. */
  owedReceipts(visibleOpenId: string | null): OwedReceipt[] {
    this.markSeen(visibleOpenId);
    const out: OwedReceipt[] = [];
    for (const c of this.conversations.values()) {
      if (c.deleted || c.lastSeq === 0) continue;
      const read = Math.min(c.readLocal, c.lastSeq);
      if (read > Math.max(c.serverRead, c.readSent)) {
        out.push({ type: 'read', conversation_id: c.id, seq: read });
        c.readSent = read;
      }
      const delivered = c.lastSeq;
      if (delivered > Math.max(c.serverDelivered, c.deliveredSent, c.readSent, c.serverRead)) {
        out.push({ type: 'delivered', conversation_id: c.id, seq: delivered });
        c.deliveredSent = delivered;
      }
    }
    return out;
  }

  // ---- Derived views ----

  unread(c: Conversation): number {
    return Math.max(0, c.lastSeq - Math.max(c.serverRead, c.readLocal, c.readSent));
  }

  /** The other member of a direct conversation. */
  peer(c: Conversation): string | null {
    if (c.kind !== 'direct') return null;
    return c.members.find((u) => !this.isMe(u)) ?? null;
  }

  title(c: Conversation): string {
    if (c.kind === 'group') return c.title ?? 'Group';
    const p = this.peer(c);
    if (p) return this.displayName(p);
    return c.kind === 'direct' ? 'Direct chat' : 'Conversation';
  }

  /** Members other than the caller who may read message `seq`, with their watermarks. */
  private audience(c: Conversation, seq: number): MemberState[] {
    if (c.kind === 'direct') {
      const p = this.peer(c);
      if (!p) return [];
      return [c.memberStates.get(p) ?? { userId: p, role: null, sinceSeq: 0, delivered: 0, read: 0 }];
    }
    if (!c.membersLoaded) return [];
    return [...c.memberStates.values()].filter((s) => !this.isMe(s.userId) && s.sinceSeq <= seq);
  }

  /** The tick of an own message: delivered / read once every other member who may read it has. */
  tick(c: Conversation, item: TimelineItem): TickState {
    if (item.pending) return item.pending.status === 'failed' ? 'failed' : 'sending';
    if (item.seq === null) return 'sending';
    const seq = item.seq;
    const others = this.audience(c, seq);
    if (others.length === 0) return 'sent';
    if (others.every((s) => s.read >= seq)) return 'read';
    if (others.every((s) => Math.max(s.delivered, s.read) >= seq)) return 'delivered';
    return 'sent';
  }

  /** The other members who read message `seq`. */
  readBy(c: Conversation, seq: number): string[] {
    return this.audience(c, seq)
      .filter((s) => s.read >= seq)
      .map((s) => s.userId);
  }

  /** A message's text as shown: the body, or the readable line of a system message. */
  messageText(m: { kind: MessageKind; body: string }): string {
    return m.kind === 'system' ? systemText(m.body, (u) => this.displayName(u)) : m.body;
  }

  /** The list preview of a conversation. */
  preview(c: Conversation): string {
    const pending = this.outbox.forConversation(c.id);
    const last = pending.length ? pending[pending.length - 1]! : null;
    if (last) return `You: ${last.body || attachmentSummary(last.attachments)}`;
    const m = c.lastMessage;
    if (!m) return '';
    const text = m.kind === 'text' && !m.body ? attachmentSummary(m.attachments) : this.messageText(m);
    if (m.kind === 'system') return text;
    if (this.isMe(m.authorId)) return `You: ${text}`;
    return c.kind === 'group' ? `${this.displayName(m.authorId)}: ${text}` : text;
  }

  /** Conversations for the list: the most recent first. */
  sortedConversations(): Conversation[] {
    const activity = (c: Conversation) => {
      const pending = this.outbox.forConversation(c.id);
      const p = pending.length ? pending[pending.length - 1]!.createdAt : 0;
      return Math.max(c.lastMessage?.ts ?? 0, p);
    };
    return [...this.conversations.values()]
      .filter((c) => !c.deleted && (c.kind !== null || c.messages.size > 0))
      .sort((a, b) => activity(b) - activity(a) || a.id.localeCompare(b.id));
  }

  oldestSeq(c: Conversation): number | null {
    let min: number | null = null;
    for (const s of c.messages.keys()) if (min === null || s < min) min = s;
    return min;
  }

  /** A chat's timeline: stored messages by seq, then own messages not acknowledged yet. */
  timeline(conversationId: string): TimelineItem[] {
    const c = this.conversations.get(conversationId);
    const out: TimelineItem[] = [];
    if (c) {
      const seqs = [...c.messages.keys()].sort((a, b) => a - b);
      for (const s of seqs) {
        const m = c.messages.get(s)!;
        const own = this.isMe(m.authorId) && m.kind === 'text';
        out.push({
          key: own && m.clientMsgId ? `c:${m.clientMsgId}` : `s:${s}`,
          seq: s,
          clientMsgId: m.clientMsgId,
          authorId: m.authorId,
          body: m.body,
          ts: m.ts,
          kind: m.kind,
          attachments: m.attachments,
          own,
          pending: null,
        });
      }
    }
    for (const p of this.outbox.forConversation(conversationId)) {
      out.push({
        key: `c:${p.clientMsgId}`,
        seq: null,
        clientMsgId: p.clientMsgId,
        authorId: this.me?.userId ?? '',
        body: p.body,
        ts: p.createdAt,
        kind: 'text',
        attachments: p.attachments,
        own: true,
        pending: p,
      });
    }
    return out;
  }

  /** Fresh links of an attachment (`GET /v1/attachments/{id}/info`, after a link expired):
   *  every message and pending send that shows it takes them. False when none shows it. */
  updateAttachment(fresh: Attachment): boolean {
    let found = false;
    const swap = (list: Attachment[]) => {
      for (let i = 0; i < list.length; i++) {
        if (list[i]!.id === fresh.id) {
          list[i] = { ...fresh };
          found = true;
        }
      }
    };
    for (const c of this.conversations.values()) {
      for (const m of c.messages.values()) swap(m.attachments);
      if (c.lastMessage) swap(c.lastMessage.attachments);
    }
    for (const p of this.outbox.list()) swap(p.attachments);
    return found;
  }

  /** Direct peers, to watch their presence. */
  directPeers(): string[] {
    const out = new Set<string>();
    for (const c of this.conversations.values()) {
      const p = this.peer(c);
      if (p) out.add(p);
    }
    return [...out];
  }
}
