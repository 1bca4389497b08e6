// Unit tests of the pure client state: cursors, dedupe and order, the outbox (same
// client_msg_id on every retry, cleared by `sent`), ticks from watermarks, unread counts and the
// receipts owed, group metadata from system messages, typing expiry.

import { describe, expect, it } from 'vitest';
import type { ConversationSummary, MessageView, SentFrame } from './protocol';
import { ANSWER_TIMEOUT_MS, ClientState, Cursor, Outbox, TYPING_TTL_MS, shortId } from './state';

const ME = 'u-me-000001';
const BOB = 'u-bob-00002';
const CAROL = 'u-car-00003';
const DM = 'c-direct-1';
const GROUP = 'c-group-1';

function msg(seq: number, over: Partial<MessageView> = {}): MessageView {
  return {
    conversation_id: DM,
    seq,
    message_id: `m-${seq}`,
    author_id: BOB,
    client_msg_id: `bob-${seq}`,
    body: `hello ${seq}`,
    ts: 1_700_000_000_000 + seq,
    attachments: [],
    kind: 'text',
    ...over,
  };
}

function summary(over: Partial<ConversationSummary> = {}): ConversationSummary {
  return {
    conversation_id: DM,
    kind: 'direct',
    members: [ME, BOB],
    last_seq: 0,
    delivered_seq: 0,
    read_seq: 0,
    unread: 0,
    ...over,
  };
}

function sent(clientMsgId: string, seq: number, conversationId = DM): SentFrame {
  return { type: 'sent', client_msg_id: clientMsgId, conversation_id: conversationId, seq, message_id: `m-${seq}`, ts: 1_700_000_000_000 + seq };
}

function newState(): ClientState {
  const s = new ClientState('web-test');
  s.setMe({ userId: ME, username: 'me' });
  s.rememberName(BOB, 'bob');
  s.rememberName(CAROL, 'carol');
  return s;
}

describe('Cursor', () => {
  it('advances only over contiguous seqs', () => {
    const c = new Cursor();
    expect(c.record(1)).toBe(true);
    expect(c.record(2)).toBe(true);
    expect(c.record(2)).toBe(false);
    expect(c.record(4)).toBe(true);
    expect(c.held).toBe(2);
    expect(c.record(4)).toBe(false);
    expect(c.record(3)).toBe(true);
    expect(c.held).toBe(4);
  });

  it('holds up to a seq, absorbing what was ahead, and never goes back', () => {
    const c = new Cursor();
    c.record(7);
    c.holdUpTo(5);
    expect(c.held).toBe(5);
    c.record(6);
    expect(c.held).toBe(7);
    c.holdUpTo(3);
    expect(c.held).toBe(7);
    expect(c.record(6)).toBe(false);
  });
});

describe('sync cursors', () => {
  it('a gap stops the cursor until it is filled', () => {
    const s = newState();
    s.applyMessage(msg(1));
    s.applyMessage(msg(2));
    s.applyMessage(msg(4));
    expect(s.cursors()).toEqual({ [DM]: 2 });
    s.applyMessage(msg(3));
    expect(s.cursors()).toEqual({ [DM]: 4 });
  });

  it('an own message acknowledged ahead of a gap joins the cursor once the gap is filled', () => {
    const s = newState();
    s.applyMessage(msg(1));
    const p = s.outbox.create(DM, 'mine', 0);
    s.applySent(sent(p.clientMsgId, 3));
    expect(s.cursors()[DM]).toBe(1);
    s.applyMessage(msg(2));
    expect(s.cursors()[DM]).toBe(3);
  });

  it('the list holds a conversation up to last_seq until its timeline is loaded', () => {
    const s = newState();
    s.loadConversations([summary({ last_seq: 40, read_seq: 38, delivered_seq: 40, unread: 2 })]);
    expect(s.cursors()).toEqual({ [DM]: 40 });
    s.applyHistory(DM, [msg(41), msg(42)], true, 'newest');
    expect(s.cursors()).toEqual({ [DM]: 42 });
    // A later list (older snapshot) no longer moves the cursor of a loaded conversation.
    s.loadConversations([summary({ last_seq: 50 })]);
    expect(s.cursors()).toEqual({ [DM]: 42 });
  });

  it('history moves the cursor only over a contiguous run', () => {
    const s = newState();
    s.applyMessage(msg(1));
    s.applyHistory(DM, [msg(5), msg(6)], true, 'older');
    expect(s.cursors()[DM]).toBe(1);
    s.applyHistory(DM, [msg(2), msg(3), msg(4)], false, 'fill');
    expect(s.cursors()[DM]).toBe(6);
    // A fill leaves "Load older" as it was.
    expect(s.get(DM)!.historyHasMore).toBe(true);
  });
});

describe('messages', () => {
  it('are deduplicated by seq whatever brings them, and kept in seq order', () => {
    const s = newState();
    expect(s.applyMessage(msg(3)).added).toBe(true);
    expect(s.applyMessage(msg(3)).added).toBe(false);
    s.applyHistory(DM, [msg(1), msg(2), msg(3)], false, 'newest');
    s.applyMessage(msg(2));
    const seqs = s.timeline(DM).map((i) => i.seq);
    expect(seqs).toEqual([1, 2, 3]);
  });

  it('an unknown conversation is reported, so the list is fetched', () => {
    const s = newState();
    expect(s.applyMessage(msg(1, { conversation_id: 'c-new' })).unknownConversation).toBe(true);
    s.loadConversations([summary({ conversation_id: 'c-new', last_seq: 1 })]);
    expect(s.applyMessage(msg(2, { conversation_id: 'c-new' })).unknownConversation).toBe(false);
  });

  it('pending sends follow the stored messages and become them on `sent`', () => {
    const s = newState();
    s.applyMessage(msg(1));
    const p = s.outbox.create(DM, 'mine', 5);
    let t = s.timeline(DM);
    expect(t.map((i) => [i.seq, i.own])).toEqual([
      [1, false],
      [null, true],
    ]);
    const key = t[1]!.key;
    s.applySent(sent(p.clientMsgId, 2));
    t = s.timeline(DM);
    expect(t.map((i) => [i.seq, i.body])).toEqual([
      [1, 'hello 1'],
      [2, 'mine'],
    ]);
    expect(t[1]!.key).toBe(key);
    expect(t[1]!.clientMsgId).toBe(p.clientMsgId);
  });
});

describe('outbox', () => {
  it('gives each message its own client_msg_id and keeps it on every retry', () => {
    const o = new Outbox('web-x');
    const a = o.create(DM, 'a', 0);
    const b = o.create(DM, 'b', 0);
    expect(a.clientMsgId).not.toBe(b.clientMsgId);
    expect(o.takeDue(0).map((p) => p.clientMsgId)).toEqual([a.clientMsgId, b.clientMsgId]);
    expect(o.takeDue(1)).toEqual([]);
    // No answer for a while: written again, same id.
    expect(o.takeDue(ANSWER_TIMEOUT_MS).map((p) => p.clientMsgId)).toEqual([a.clientMsgId, b.clientMsgId]);
    expect(a.attempts).toBe(2);
  });

  it('after a reconnect everything unacknowledged is resent with the same ids, and `sent` clears it', () => {
    const s = newState();
    const a = s.outbox.create(DM, 'a', 0);
    const b = s.outbox.create(DM, 'b', 0);
    s.outbox.takeDue(0);
    s.connectionLost(10);
    const again = s.outbox.takeAll(20);
    expect(again.map((p) => p.clientMsgId)).toEqual([a.clientMsgId, b.clientMsgId]);
    // The server stored `a` before the drop: the resend is answered with the original `sent`.
    expect(s.applySent(sent(a.clientMsgId, 1))).toBe(true);
    expect(s.applySent(sent(b.clientMsgId, 2))).toBe(true);
    expect(s.outbox.size).toBe(0);
    // A repeated answer changes nothing and shows nothing twice.
    expect(s.applySent(sent(a.clientMsgId, 1))).toBe(false);
    expect(s.timeline(DM).map((i) => i.seq)).toEqual([1, 2]);
  });

  it('an own message that comes back through sync acknowledges the pending send', () => {
    const s = newState();
    const a = s.outbox.create(DM, 'a', 0);
    s.outbox.takeDue(0);
    s.connectionLost(1);
    s.applyMessage(msg(1, { author_id: ME, client_msg_id: a.clientMsgId, body: 'a' }));
    expect(s.outbox.size).toBe(0);
    expect(s.outbox.takeAll(2)).toEqual([]);
    expect(s.timeline(DM).map((i) => [i.seq, i.own, i.key])).toEqual([[1, true, `c:${a.clientMsgId}`]]);
  });

  it('retries retryable errors later with the same id and gives up on the others', () => {
    const o = new Outbox('web-x');
    const a = o.create(DM, 'a', 0);
    const b = o.create(DM, 'b', 0);
    o.takeDue(0);
    expect(o.fail(a.clientMsgId, 'store_unavailable', 100)).toBe('retry');
    expect(o.fail(b.clientMsgId, 'too_large', 100)).toBe('gave-up');
    expect(o.fail('nope', 'unavailable', 100)).toBe('unknown');
    expect(o.takeDue(100)).toEqual([]);
    const due = o.nextDue()!;
    expect(due).toBeGreaterThan(100);
    expect(o.takeDue(due).map((p) => p.clientMsgId)).toEqual([a.clientMsgId]);
    // A failed send is not resent on reconnect, unless the user retries it.
    o.connectionLost(due + 1);
    expect(o.takeAll(due + 2).map((p) => p.clientMsgId)).toEqual([a.clientMsgId]);
    expect(o.retry(b.clientMsgId, due + 3)).toBe(true);
    expect(o.takeDue(due + 3).map((p) => p.clientMsgId)).toEqual([b.clientMsgId]);
  });
});

describe('ticks', () => {
  it('direct: sending, sent, delivered and read from the other side’s watermarks', () => {
    const s = newState();
    s.loadConversations([summary()]);
    const c = s.get(DM)!;
    const p = s.outbox.create(DM, 'hi', 0);
    expect(s.tick(c, s.timeline(DM)[0]!)).toBe('sending');
    s.applySent(sent(p.clientMsgId, 1));
    const item = () => s.timeline(DM)[0]!;
    expect(s.tick(c, item())).toBe('sent');
    s.applyReceipt(DM, BOB, 1, 0);
    expect(s.tick(c, item())).toBe('delivered');
    s.applyReceipt(DM, BOB, 1, 1);
    expect(s.tick(c, item())).toBe('read');
    // Watermarks never go back.
    s.applyReceipt(DM, BOB, 0, 0);
    expect(s.tick(c, item())).toBe('read');
  });

  it('direct: members watermarks from REST count too, and a read implies delivered', () => {
    const s = newState();
    s.loadConversations([summary()]);
    const c = s.get(DM)!;
    const p = s.outbox.create(DM, 'hi', 0);
    s.applySent(sent(p.clientMsgId, 1));
    s.applyMembers(DM, [
      { user_id: ME, role: null, since_seq: 0, delivered_seq: 1, read_seq: 1 },
      { user_id: BOB, role: null, since_seq: 0, delivered_seq: 0, read_seq: 1 },
    ]);
    expect(s.tick(c, s.timeline(DM)[0]!)).toBe('read');
  });

  it('failed sends show as failed', () => {
    const s = newState();
    s.loadConversations([summary()]);
    const p = s.outbox.create(DM, 'x', 0);
    s.outbox.takeDue(0);
    s.applySendError(p.clientMsgId, 'forbidden', 1);
    expect(s.tick(s.get(DM)!, s.timeline(DM)[0]!)).toBe('failed');
  });

  it('group: read by the members who may read the message; ticks when all of them have', () => {
    const s = newState();
    s.loadConversations([summary({ conversation_id: GROUP, kind: 'group', title: 'T', members: [ME, BOB], role: 'owner', last_seq: 1 })]);
    s.applyMembers(GROUP, [
      { user_id: ME, role: 'owner', since_seq: 1, delivered_seq: 1, read_seq: 1 },
      { user_id: BOB, role: 'member', since_seq: 1, delivered_seq: 1, read_seq: 1 },
    ]);
    const c = s.get(GROUP)!;
    const p = s.outbox.create(GROUP, 'hi all', 0);
    s.applySent(sent(p.clientMsgId, 2, GROUP));
    // carol is added after the message: she does not count for it.
    s.applyMessage(msg(3, { conversation_id: GROUP, author_id: ME, kind: 'system', body: JSON.stringify({ event: 'members_added', actor: ME, users: [CAROL] }) }));
    expect(c.members).toContain(CAROL);
    const item = () => s.timeline(GROUP).find((i) => i.seq === 2)!;
    expect(s.tick(c, item())).toBe('sent');
    expect(s.readBy(c, 2)).toEqual([]);
    s.applyReceipt(GROUP, BOB, 2, 0);
    expect(s.tick(c, item())).toBe('delivered');
    s.applyReceipt(GROUP, BOB, 3, 3);
    s.applyReceipt(GROUP, CAROL, 3, 3);
    expect(s.readBy(c, 2)).toEqual([BOB]);
    expect(s.tick(c, item())).toBe('read');
  });
});

describe('unread and receipts owed', () => {
  it('unread counts follow the list, live messages and reading', () => {
    const s = newState();
    s.loadConversations([summary({ last_seq: 5, read_seq: 3, delivered_seq: 5, unread: 2 })]);
    const c = s.get(DM)!;
    expect(s.unread(c)).toBe(2);
    s.applyMessage(msg(6));
    expect(s.unread(c)).toBe(3);
    // Open but not loaded yet: nothing read.
    s.markSeen(DM);
    expect(s.unread(c)).toBe(3);
    s.applyHistory(DM, [msg(4), msg(5), msg(6)], true, 'newest');
    s.markSeen(DM);
    expect(s.unread(c)).toBe(0);
    // Another device read up to 6 too: the server's receipt says so.
    s.applyReceipt(DM, ME, 6, 6);
    expect(s.unread(c)).toBe(0);
  });

  it('`read` for the open visible chat, `delivered` for the others, once per connection', () => {
    const s = newState();
    s.loadConversations([
      summary({ last_seq: 2, read_seq: 1, delivered_seq: 1 }),
      summary({ conversation_id: 'c-other', members: [ME, CAROL], last_seq: 4, read_seq: 4, delivered_seq: 4 }),
    ]);
    s.applyHistory(DM, [msg(1), msg(2)], false, 'newest');
    s.applyMessage(msg(5, { conversation_id: 'c-other', author_id: CAROL }));
    const owed = s.owedReceipts(DM);
    expect(owed).toEqual([
      { type: 'read', conversation_id: DM, seq: 2 },
      { type: 'delivered', conversation_id: 'c-other', seq: 5 },
    ]);
    expect(s.owedReceipts(DM)).toEqual([]);
    // The connection dropped before the server answered: owed again on the next one.
    s.connectionLost(0);
    expect(s.owedReceipts(null)).toEqual([
      { type: 'read', conversation_id: DM, seq: 2 },
      { type: 'delivered', conversation_id: 'c-other', seq: 5 },
    ]);
    // The server confirmed (receipt frames): nothing owed after a further drop.
    s.applyReceipt(DM, ME, 2, 2);
    s.applyReceipt('c-other', ME, 5, 4);
    s.connectionLost(0);
    expect(s.owedReceipts(null)).toEqual([]);
  });

  it('sync_done raises last seqs and watermarks and names conversations it does not know', () => {
    const s = newState();
    s.loadConversations([summary({ last_seq: 2 })]);
    const unknown = s.applySyncDone({
      [DM]: { last_seq: 3, delivered_seq: 3, read_seq: 2, has_more: false },
      'c-new': { last_seq: 1, delivered_seq: 0, read_seq: 0, has_more: false },
    });
    expect(unknown).toEqual(['c-new']);
    expect(s.unread(s.get(DM)!)).toBe(1);
    expect(ClientState.syncHasMore({ conversations: { a: { last_seq: 1, delivered_seq: 0, read_seq: 0, has_more: true } } })).toBe(true);
    expect(ClientState.syncHasMore({ has_more: true, conversations: {} })).toBe(true);
    expect(ClientState.syncHasMore({ has_more: false, conversations: {} })).toBe(false);
  });
});

describe('groups and names', () => {
  it('system messages update members, title and whether the caller left; old ones change nothing', () => {
    const s = newState();
    s.loadConversations([summary({ conversation_id: GROUP, kind: 'group', title: 'Old', members: [ME, BOB], role: 'member', last_seq: 4 })]);
    const c = s.get(GROUP)!;
    const sys = (seq: number, body: object) =>
      s.applyMessage(msg(seq, { conversation_id: GROUP, kind: 'system', author_id: BOB, body: JSON.stringify(body) }));
    // History from before the list's snapshot: already reflected there.
    s.applyHistory(GROUP, [msg(1, { conversation_id: GROUP, kind: 'system', body: JSON.stringify({ event: 'group_created', actor: BOB, title: 'First', members: [BOB] }) })], false, 'older');
    expect(c.title).toBe('Old');
    expect(sys(5, { event: 'renamed', actor: BOB, title: 'New' }).groupChanged).toBe(true);
    expect(c.title).toBe('New');
    sys(6, { event: 'members_added', actor: BOB, users: [CAROL] });
    expect(c.members).toEqual([ME, BOB, CAROL]);
    sys(7, { event: 'member_left', actor: CAROL });
    expect(c.members).toEqual([ME, BOB]);
    expect(c.left).toBe(false);
    sys(8, { event: 'member_removed', actor: BOB, user: ME });
    expect(c.left).toBe(true);
    expect(s.preview(c)).toBe('bob removed me');
  });

  it('unknown users are shown by a short id; titles of direct chats are the other user', () => {
    const s = newState();
    s.loadConversations([summary({ members: [ME, 'aaaaaaaa-bbbb-7ccc-8ddd-0123456789ab'] })]);
    expect(s.title(s.get(DM)!)).toBe('user-6789ab');
    expect(shortId('aaaaaaaa-bbbb-7ccc-8ddd-0123456789ab')).toBe('user-6789ab');
    s.rememberName('aaaaaaaa-bbbb-7ccc-8ddd-0123456789ab', 'dave');
    expect(s.title(s.get(DM)!)).toBe('dave');
  });

  it('lists the most recent conversation first', () => {
    const s = newState();
    s.loadConversations([
      summary({ conversation_id: 'a', last_seq: 1, last_message: msg(1, { conversation_id: 'a', ts: 10 }) }),
      summary({ conversation_id: 'b', last_seq: 1, last_message: msg(1, { conversation_id: 'b', ts: 20 }) }),
    ]);
    expect(s.sortedConversations().map((c) => c.id)).toEqual(['b', 'a']);
    s.applyMessage(msg(2, { conversation_id: 'a', ts: 30 }));
    expect(s.sortedConversations().map((c) => c.id)).toEqual(['a', 'b']);
    expect(s.preview(s.get('a')!)).toBe('hello 2');
  });
});

describe('names to look up', () => {
  const DAVE = 'u-dav-00004';
  const ERIN = 'u-eri-00005';
  const FRANK = 'u-fra-00006';
  const wanted = (s: ClientState) => s.names.takeBatches().flat().sort();

  it('notes the unknown users of the list, member lists, messages, system bodies, receipts and typing', () => {
    const s = newState();
    s.loadConversations([
      summary({ members: [ME, DAVE] }),
      summary({
        conversation_id: GROUP,
        kind: 'group',
        title: 'G',
        members: [ME, BOB],
        last_seq: 1,
        last_message: msg(1, { conversation_id: GROUP, kind: 'system', author_id: BOB, body: JSON.stringify({ event: 'member_removed', actor: BOB, user: ERIN }) }),
      }),
    ]);
    // Known names (me, bob) are not asked for.
    expect(wanted(s)).toEqual([DAVE, ERIN].sort());
    s.applyMembers(GROUP, [{ user_id: FRANK, role: 'member', since_seq: 1, delivered_seq: 0, read_seq: 0 }]);
    s.applyMessage(msg(2, { conversation_id: GROUP, author_id: 'u-author' }));
    s.applyMessage(msg(3, { conversation_id: GROUP, kind: 'system', author_id: BOB, body: JSON.stringify({ event: 'members_added', actor: BOB, users: ['u-new-1', 'u-new-2'] }) }));
    s.applyReceipt(GROUP, 'u-reader', 3, 3);
    s.applyTyping(GROUP, 'u-typer', true, 0);
    expect(wanted(s)).toEqual([FRANK, 'u-author', 'u-new-1', 'u-new-2', 'u-reader', 'u-typer'].sort());
    expect(s.names.wantedCount).toBe(0);
  });

  it('a direct chat is titled by the short id until the lookup names the other user', () => {
    const s = newState();
    const alice = 'aaaaaaaa-bbbb-7ccc-8ddd-0123456789ab';
    s.loadConversations([summary({ members: [ME, alice] })]);
    const c = s.get(DM)!;
    expect(s.title(c)).toBe('user-6789ab');
    const [batch] = s.names.takeBatches();
    expect(batch).toEqual([alice]);
    // The list read again while the lookup is out: not asked twice.
    s.loadConversations([summary({ members: [ME, alice] })]);
    expect(s.names.wantedCount).toBe(0);
    expect(s.names.resolved(batch!, [{ user_id: alice, username: 'alice' }])).toBe(true);
    expect(s.title(c)).toBe('alice');
    s.applyMessage(msg(1, { author_id: alice }));
    expect(s.names.wantedCount).toBe(0);
  });

  it('system messages and read-by read with the names once they arrive', () => {
    const s = newState();
    s.loadConversations([summary({ conversation_id: GROUP, kind: 'group', title: 'G', members: [ME, DAVE], role: 'owner', last_seq: 0 })]);
    s.applyMessage(msg(1, { conversation_id: GROUP, kind: 'system', author_id: ME, body: JSON.stringify({ event: 'members_added', actor: ME, users: [DAVE] }) }));
    const c = s.get(GROUP)!;
    expect(s.preview(c)).toBe(`me added ${shortId(DAVE)}`);
    const [batch] = s.names.takeBatches();
    s.names.resolved(batch!, [{ user_id: DAVE, username: 'dave' }]);
    expect(s.preview(c)).toBe('me added dave');
    expect(s.title(c)).toBe('G');
  });
});

describe('own group changes', () => {
  const created = (over: Partial<MessageView> = {}) =>
    msg(1, {
      conversation_id: GROUP,
      kind: 'system',
      author_id: ME,
      client_msg_id: '',
      body: JSON.stringify({ event: 'group_created', actor: ME, title: 'Team', members: [ME, BOB] }),
      ...over,
    });
  const added = msg(2, {
    conversation_id: GROUP,
    kind: 'system',
    author_id: ME,
    client_msg_id: '',
    body: JSON.stringify({ event: 'members_added', actor: ME, users: [CAROL] }),
  });

  it('the live system message of a new group and its first history page show it once, either order', () => {
    for (const liveFirst of [true, false]) {
      const s = newState();
      s.addGroup({ conversation_id: GROUP, kind: 'group', title: 'Team', members: [{ user_id: ME, role: 'owner' }, { user_id: BOB, role: 'member' }] });
      if (liveFirst) expect(s.applyMessage(created()).added).toBe(true);
      s.applyHistory(GROUP, [created()], false, 'newest');
      if (!liveFirst) expect(s.applyMessage(created()).added).toBe(false);
      const c = s.get(GROUP)!;
      expect(s.timeline(GROUP).map((i) => i.seq)).toEqual([1]);
      expect(c.historyLoaded).toBe(true);
      expect(c.historyHasMore).toBe(false);
      expect(c.cursor.held).toBe(1);
      expect(c.members).toEqual([ME, BOB]);
      expect(c.role).toBe('owner');
      expect(s.messageText(s.timeline(GROUP)[0]!)).toBe('me created the group “Team”');
    }
  });

  it('the live system message that arrives before the create reply still gives one timeline', () => {
    const s = newState();
    expect(s.applyMessage(created()).unknownConversation).toBe(true);
    s.addGroup({ conversation_id: GROUP, kind: 'group', title: 'Team', members: [{ user_id: ME, role: 'owner' }, { user_id: BOB, role: 'member' }] });
    s.applyHistory(GROUP, [created()], false, 'newest');
    const c = s.get(GROUP)!;
    expect(s.timeline(GROUP).length).toBe(1);
    expect(c.kind).toBe('group');
    expect(c.role).toBe('owner');
    expect(c.members).toEqual([ME, BOB]);
  });

  it('adding a member: the live message, a sync and a history page of it keep it once', () => {
    const s = newState();
    s.applyMessage(created());
    s.applyHistory(GROUP, [created()], false, 'newest');
    const first = s.applyMessage(added);
    expect(first).toMatchObject({ added: true, groupChanged: true });
    expect(s.applyMessage(added)).toMatchObject({ added: false, groupChanged: false });
    s.applyHistory(GROUP, [created(), added], false, 'fill');
    s.applyHistory(GROUP, [added], false, 'newest');
    expect(s.timeline(GROUP).map((i) => [i.seq, i.kind, i.own])).toEqual([
      [1, 'system', false],
      [2, 'system', false],
    ]);
    expect(s.get(GROUP)!.members).toEqual([ME, BOB, CAROL]);
    expect(s.get(GROUP)!.cursor.held).toBe(2);
    expect(s.preview(s.get(GROUP)!)).toBe('me added carol');
  });
});

describe('typing', () => {
  it('shows others typing until they stop, send, or the indicator expires', () => {
    const s = newState();
    s.applyTyping(DM, BOB, true, 0);
    s.applyTyping(DM, ME, true, 0);
    expect(s.typingUsers(DM, 1)).toEqual([BOB]);
    s.applyTyping(DM, BOB, false, 2);
    expect(s.typingUsers(DM, 3)).toEqual([]);
    s.applyTyping(DM, BOB, true, 10);
    expect(s.typingUsers(DM, 10 + TYPING_TTL_MS)).toEqual([]);
    s.applyTyping(DM, BOB, true, 100);
    s.applyMessage(msg(1));
    expect(s.typingUsers(DM, 101)).toEqual([]);
  });
});

describe('attachments', () => {
  const PIC = {
    id: 'att-1',
    name: 'cat.png',
    type: 'image/png',
    size: 2048,
    sha256: 'ab',
    width: 600,
    height: 400,
    thumbnail: true,
    url: '/v1/attachments/att-1?exp=1&sig=a',
    thumbnail_url: '/v1/attachments/att-1/thumbnail?exp=1&sig=b',
  };

  it('a message keeps its attachment objects; anything malformed is left out', () => {
    const s = newState();
    s.applyMessage(msg(1, { body: '', attachments: [PIC, 'att-2' as never] }));
    const [item] = s.timeline(DM);
    expect(item!.attachments).toEqual([PIC]);
    expect(item!.body).toBe('');
  });

  it('an own send carries its uploads while pending and after `sent` (which names none)', () => {
    const s = newState();
    const p = s.outbox.create(DM, '', 5, [PIC]);
    expect(s.timeline(DM)[0]!.attachments).toEqual([PIC]);
    expect(s.outbox.takeDue(5).map((x) => x.attachments.map((a) => a.id))).toEqual([['att-1']]);
    s.applySent(sent(p.clientMsgId, 1));
    const [item] = s.timeline(DM);
    expect(item!.seq).toBe(1);
    expect(item!.pending).toBeNull();
    expect(item!.attachments).toEqual([PIC]);
  });

  it('the preview of a message that is only files names them', () => {
    const s = newState();
    s.loadConversations([summary({ last_seq: 1, last_message: msg(1, { body: '', attachments: [PIC] }) })]);
    expect(s.preview(s.get(DM)!)).toBe('📎 cat.png');
    s.outbox.create(DM, '', 5, [PIC, { ...PIC, id: 'att-2' }]);
    expect(s.preview(s.get(DM)!)).toBe('You: 📎 2 files');
  });

  it('fresh links replace the old ones wherever the attachment shows', () => {
    const s = newState();
    s.applyMessage(msg(1, { attachments: [PIC] }));
    s.outbox.create(DM, '', 5, [PIC]);
    const fresh = { ...PIC, url: '/v1/attachments/att-1?exp=2&sig=c', thumbnail_url: '/v1/attachments/att-1/thumbnail?exp=2&sig=d' };
    expect(s.updateAttachment(fresh)).toBe(true);
    expect(s.timeline(DM).map((i) => i.attachments[0]!.url)).toEqual([fresh.url, fresh.url]);
    expect(s.updateAttachment({ ...fresh, id: 'other' })).toBe(false);
  });
});
