// Unit tests of the connection lifecycle with a fake WebSocket and clock: auth as the first
// frame, the sync loop on has_more, resend only once synced, reconnect with backoff after a
// drop, 4001 ends the session, a silent link is dropped, the browser's offline state waits.

import { describe, expect, it } from 'vitest';
import type { ConnStatus, ConnectionHooks, SocketLike } from './connection';
import { CONNECT_TIMEOUT_MS, Connection, socketUrl } from './connection';
import type { ServerFrame } from './protocol';
import { FakeTimers } from './testing/fakeTimers';

class FakeSocket implements SocketLike {
  readyState = 0;
  sent: Record<string, unknown>[] = [];
  closedWith: number | null = null;
  onopen: ((ev: unknown) => void) | null = null;
  onmessage: ((ev: { data: unknown }) => void) | null = null;
  onclose: ((ev: { code: number; reason: string }) => void) | null = null;
  onerror: ((ev: unknown) => void) | null = null;

  constructor(readonly url: string) {}

  send(data: string): void {
    this.sent.push(JSON.parse(data) as Record<string, unknown>);
  }

  close(code = 1000): void {
    this.closedWith = code;
    this.readyState = 3;
  }

  // server side
  open(): void {
    this.readyState = 1;
    this.onopen?.({});
  }

  frame(f: Record<string, unknown>): void {
    this.onmessage?.({ data: JSON.stringify(f) });
  }

  drop(code: number): void {
    this.readyState = 3;
    this.onclose?.({ code, reason: '' });
  }

  last(): Record<string, unknown> {
    return this.sent[this.sent.length - 1]!;
  }
}

function setup(cursors: () => Record<string, number> = () => ({})) {
  const timers = new FakeTimers();
  const sockets: FakeSocket[] = [];
  const statuses: ConnStatus[] = [];
  const frames: ServerFrame[] = [];
  const events: string[] = [];
  let token: string | null = 'tok';
  const hooks: ConnectionHooks = {
    token: () => token,
    cursors,
    onFrame: (f) => frames.push(f),
    onStatus: (s) => statuses.push(s),
    onSynced: () => events.push('synced'),
    onLost: () => events.push('lost'),
    onUnauthorized: () => events.push('unauthorized'),
  };
  const conn = new Connection(hooks, {
    url: 'ws://h/v1/ws',
    timers,
    random: () => 0,
    createSocket: (url) => {
      const s = new FakeSocket(url);
      sockets.push(s);
      return s;
    },
  });
  const welcome = (s: FakeSocket) => {
    s.open();
    s.frame({ type: 'welcome', user_id: 'u', device_id: 'd', node: 'n', heartbeat_ms: 1000 });
  };
  return { timers, sockets, statuses, frames, events, conn, welcome, setToken: (t: string | null) => (token = t) };
}

describe('Connection', () => {
  it('authenticates with the first frame, syncs while has_more, then is online', () => {
    let cursors: Record<string, number> = { c1: 4 };
    const t = setup(() => cursors);
    t.conn.start();
    expect(t.statuses.at(-1)).toEqual({ state: 'connecting', attempt: 1 });
    const s = t.sockets[0]!;
    s.open();
    expect(s.sent).toEqual([{ type: 'auth', token: 'tok' }]);
    expect(t.conn.authenticated).toBe(false);
    s.frame({ type: 'welcome', user_id: 'u', device_id: 'd', heartbeat_ms: 1000 });
    expect(s.last()).toMatchObject({ type: 'sync', cursors: { c1: 4 } });
    const id1 = s.last().id;
    cursors = { c1: 104 };
    s.frame({ type: 'sync_done', id: id1, conversations: { c1: { last_seq: 200, delivered_seq: 0, read_seq: 0, has_more: true } } });
    expect(s.last()).toMatchObject({ type: 'sync', cursors: { c1: 104 } });
    expect(t.events).toEqual([]);
    cursors = { c1: 200, c2: 3 };
    s.frame({ type: 'sync_done', id: s.last().id, conversations: {}, has_more: true });
    expect(s.last()).toMatchObject({ type: 'sync', cursors: { c1: 200, c2: 3 } });
    s.frame({ type: 'sync_done', id: s.last().id, conversations: {}, has_more: false });
    expect(t.events).toEqual(['synced']);
    expect(t.statuses.at(-1)).toEqual({ state: 'online' });
    expect(t.conn.online).toBe(true);
    expect(t.frames.map((f) => f.type)).toEqual(['welcome', 'sync_done', 'sync_done', 'sync_done']);
  });

  it('reconnects after a drop with growing backoff, and syncs again', () => {
    const t = setup(() => ({ c: 1 }));
    t.conn.start();
    t.welcome(t.sockets[0]!);
    t.sockets[0]!.frame({ type: 'sync_done', id: t.sockets[0]!.last().id, conversations: {} });
    t.sockets[0]!.drop(1001);
    expect(t.events).toEqual(['synced', 'lost']);
    expect(t.statuses.at(-1)).toMatchObject({ state: 'reconnecting', retryAt: 500, lastCode: 1001 });
    t.timers.advance(499);
    expect(t.sockets.length).toBe(1);
    t.timers.advance(1);
    expect(t.sockets.length).toBe(2);
    // The server is still down: the next waits are longer.
    t.sockets[1]!.drop(1006);
    expect(t.statuses.at(-1)).toMatchObject({ state: 'reconnecting', retryAt: t.timers.t + 1000 });
    t.timers.advance(1000);
    t.sockets[2]!.drop(1006);
    expect(t.statuses.at(-1)).toMatchObject({ state: 'reconnecting', retryAt: t.timers.t + 2000 });
    t.timers.advance(2000);
    const s = t.sockets[3]!;
    t.welcome(s);
    expect(s.sent[0]).toEqual({ type: 'auth', token: 'tok' });
    expect(s.last()).toMatchObject({ type: 'sync', cursors: { c: 1 } });
    s.frame({ type: 'sync_done', id: s.last().id, conversations: {} });
    expect(t.events).toEqual(['synced', 'lost', 'synced']);
    // Online again: the backoff starts over.
    s.drop(4008);
    expect(t.statuses.at(-1)).toMatchObject({ state: 'reconnecting', retryAt: t.timers.t + 500 });
  });

  it('frames are written only once authenticated', () => {
    const t = setup();
    t.conn.start();
    expect(t.conn.send({ type: 'ping' })).toBe(false);
    t.welcome(t.sockets[0]!);
    expect(t.conn.send({ type: 'typing', conversation_id: 'c', active: true })).toBe(true);
  });

  it('4001 ends the session: no reconnect', () => {
    const t = setup();
    t.conn.start();
    t.sockets[0]!.open();
    t.sockets[0]!.drop(4001);
    expect(t.events).toEqual(['lost', 'unauthorized']);
    expect(t.statuses.at(-1)).toEqual({ state: 'offline', reason: 'signed out' });
    t.timers.advance(60_000);
    expect(t.sockets.length).toBe(1);
  });

  it('stop closes the socket and never reconnects', () => {
    const t = setup();
    t.conn.start();
    t.welcome(t.sockets[0]!);
    t.conn.stop();
    expect(t.sockets[0]!.closedWith).toBe(1000);
    t.timers.advance(60_000);
    expect(t.sockets.length).toBe(1);
    expect(t.statuses.at(-1)).toEqual({ state: 'offline', reason: 'signed out' });
  });

  it('a connection that never says welcome, or goes silent, is dropped and retried', () => {
    const t = setup();
    t.conn.start();
    t.sockets[0]!.open();
    t.timers.advance(CONNECT_TIMEOUT_MS);
    expect(t.sockets[0]!.closedWith).toBe(1000);
    expect(t.statuses.at(-1)).toMatchObject({ state: 'reconnecting' });
    t.timers.advance(500);
    const s = t.sockets[1]!;
    t.welcome(s);
    s.frame({ type: 'sync_done', id: s.last().id, conversations: {} });
    // Pings go out each heartbeat; with no answer for three heartbeats the link is dropped.
    t.timers.advance(1000);
    expect(s.last()).toEqual({ type: 'ping' });
    s.frame({ type: 'pong' });
    t.timers.advance(3000);
    expect(s.closedWith).toBeNull();
    t.timers.advance(1000);
    expect(s.closedWith).toBe(1000);
    expect(t.statuses.at(-1)).toMatchObject({ state: 'reconnecting' });
  });

  it('waits while the browser is offline and connects at once when it is back', () => {
    const t = setup();
    t.conn.start();
    t.welcome(t.sockets[0]!);
    t.conn.setNetwork(false);
    expect(t.statuses.at(-1)).toEqual({ state: 'offline', reason: 'no network' });
    t.timers.advance(60_000);
    expect(t.sockets.length).toBe(1);
    t.conn.setNetwork(true);
    expect(t.sockets.length).toBe(2);
    expect(t.statuses.at(-1)).toMatchObject({ state: 'connecting' });
  });

  it('a sync round refused (rate_limited) is tried again', () => {
    const t = setup();
    t.conn.start();
    const s = t.sockets[0]!;
    t.welcome(s);
    const id = s.last().id;
    s.frame({ type: 'error', id, code: 'rate_limited', message: 'slow down' });
    t.timers.advance(1000);
    expect(s.last()).toMatchObject({ type: 'sync' });
    expect(s.last().id).not.toBe(id);
  });

  it('builds the socket URL of the page’s origin', () => {
    expect(socketUrl({ protocol: 'http:', host: '127.0.0.1:8080' })).toBe('ws://127.0.0.1:8080/v1/ws');
    expect(socketUrl({ protocol: 'https:', host: 'chat.example' })).toBe('wss://chat.example/v1/ws');
  });
});
