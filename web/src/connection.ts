// The WebSocket's lifecycle: connect, authenticate with the first frame (`auth`), sync from
// the client's cursors until no `has_more` is left, then report "synced" (the app resends its
// outbox); a client-side heartbeat (`ping`) notices a dead link; a dropped connection is
// retried with exponential backoff and jitter, except after 4001 (log in again) or while the
// browser says it is offline. It knows frames only by their `type`; the app interprets them.

import { Backoff } from './backoff';
import type { ClientFrame, ServerFrame, SyncDoneFrame } from './protocol';
import { CLOSE_UNAUTHORIZED } from './protocol';
import type { Timers } from './typing';
import { browserTimers } from './typing';

export type ConnStatus =
  | { state: 'offline'; reason: string }
  | { state: 'connecting'; attempt: number }
  | { state: 'online' }
  | { state: 'reconnecting'; retryAt: number; attempt: number; lastCode: number | null };

/** The part of a WebSocket the connection uses (a fake one in tests). */
export interface SocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
}

export interface ConnectionHooks {
  token(): string | null;
  /** The sync cursors, read before each round (after the previous round's messages). */
  cursors(): Record<string, number>;
  /** Every server frame, `welcome` and `sync_done` included, in arrival order. */
  onFrame(frame: ServerFrame): void;
  onStatus(status: ConnStatus): void;
  /** The sync loop finished on this connection: live from here on; resend the outbox now. */
  onSynced(): void;
  /** A connection that had opened ended (whatever was in flight may be lost). */
  onLost(): void;
  /** Closed with 4001 (or no token): the token is no good; log in again. */
  onUnauthorized(): void;
}

export interface ConnectionOptions {
  url: string;
  createSocket?: (url: string) => SocketLike;
  timers?: Timers;
  random?: () => number;
}

/** Open + `welcome` must happen within this. */
export const CONNECT_TIMEOUT_MS = 10_000;
const DEFAULT_HEARTBEAT_MS = 15_000;
/** Nothing heard for this many heartbeats: the link is dead. */
const DEAD_AFTER_HEARTBEATS = 3;
/** A sync round that made no progress but says `has_more` (a conversation the store could not
 *  read) is repeated after this pause. */
const SYNC_STALL_PAUSE_MS = 1_000;

const OPEN = 1;

type Phase = 'idle' | 'connecting' | 'authenticating' | 'syncing' | 'online' | 'waiting' | 'offline' | 'stopped';

export class Connection {
  private socket: SocketLike | null = null;
  private phase: Phase = 'idle';
  private readonly backoff: Backoff;
  private readonly timers: Timers;
  private readonly createSocket: (url: string) => SocketLike;
  private retryTimer: unknown = null;
  private connectTimer: unknown = null;
  private heartbeatTimer: unknown = null;
  private syncTimer: unknown = null;
  private syncRound = 0;
  private syncId: string | null = null;
  private lastCursorsKey: string | null = null;
  private heartbeatMs = DEFAULT_HEARTBEAT_MS;
  private lastHeard = 0;
  private attempt = 0;
  private browserOffline = false;

  constructor(
    private readonly hooks: ConnectionHooks,
    private readonly options: ConnectionOptions,
  ) {
    this.timers = options.timers ?? browserTimers;
    this.backoff = new Backoff(options.random ?? Math.random);
    this.createSocket = options.createSocket ?? ((url) => new WebSocket(url) as unknown as SocketLike);
  }

  /** Connected, authenticated and synced. */
  get online(): boolean {
    return this.phase === 'online';
  }

  /** Authenticated (frames may be sent; sync may still be running). */
  get authenticated(): boolean {
    return (this.phase === 'syncing' || this.phase === 'online') && this.socket?.readyState === OPEN;
  }

  start(): void {
    if (this.phase !== 'idle' && this.phase !== 'stopped') return;
    this.backoff.reset();
    this.attempt = 0;
    this.connect();
  }

  /** For good (logout): no reconnect. */
  stop(reason = 'signed out'): void {
    this.phase = 'stopped';
    this.clearTimers();
    this.drop();
    this.status({ state: 'offline', reason });
  }

  /** The browser's online / offline events. */
  setNetwork(online: boolean): void {
    if (this.phase === 'stopped' || this.phase === 'idle') {
      this.browserOffline = !online;
      return;
    }
    if (!online) {
      this.browserOffline = true;
      this.clearTimers();
      const had = this.socket !== null;
      this.drop();
      this.phase = 'offline';
      if (had) this.hooks.onLost();
      this.status({ state: 'offline', reason: 'no network' });
    } else if (this.browserOffline) {
      this.browserOffline = false;
      if (this.phase === 'offline' || this.phase === 'waiting') {
        this.backoff.reset();
        this.connect();
      }
    }
  }

  /** Skip the rest of the backoff wait. */
  reconnectNow(): void {
    if (this.phase === 'waiting' || this.phase === 'offline') {
      this.browserOffline = false;
      this.connect();
    }
  }

  /** Writes a frame if authenticated; false otherwise (the caller keeps it for later). */
  send(frame: ClientFrame): boolean {
    if (!this.authenticated || !this.socket) return false;
    try {
      this.socket.send(JSON.stringify(frame));
      return true;
    } catch {
      return false;
    }
  }

  // ---- internals ----

  private status(s: ConnStatus): void {
    this.hooks.onStatus(s);
  }

  private clearTimers(): void {
    for (const t of [this.retryTimer, this.connectTimer, this.heartbeatTimer, this.syncTimer]) {
      if (t !== null) this.timers.clearTimeout(t);
    }
    this.retryTimer = this.connectTimer = this.heartbeatTimer = this.syncTimer = null;
  }

  /** Closes the socket without waiting for its close event (handlers detached). */
  private drop(): void {
    const s = this.socket;
    this.socket = null;
    if (!s) return;
    s.onopen = s.onmessage = s.onclose = s.onerror = null;
    try {
      s.close(1000, 'client closing');
    } catch {
      // already closed
    }
  }

  private connect(): void {
    this.clearTimers();
    this.drop();
    const token = this.hooks.token();
    if (!token) {
      this.phase = 'stopped';
      this.status({ state: 'offline', reason: 'signed out' });
      this.hooks.onUnauthorized();
      return;
    }
    this.attempt += 1;
    this.phase = 'connecting';
    this.syncId = null;
    this.lastCursorsKey = null;
    this.status({ state: 'connecting', attempt: this.attempt });
    let s: SocketLike;
    try {
      s = this.createSocket(this.options.url);
    } catch {
      this.scheduleRetry(null);
      return;
    }
    this.socket = s;
    this.connectTimer = this.timers.setTimeout(() => {
      this.connectTimer = null;
      if (this.socket === s && (this.phase === 'connecting' || this.phase === 'authenticating')) {
        this.lost(null);
      }
    }, CONNECT_TIMEOUT_MS);
    s.onopen = () => {
      if (this.socket !== s) return;
      this.phase = 'authenticating';
      this.lastHeard = this.timers.now();
      s.send(JSON.stringify({ type: 'auth', token } satisfies ClientFrame));
    };
    s.onmessage = (ev) => {
      if (this.socket !== s) return;
      this.lastHeard = this.timers.now();
      if (typeof ev.data !== 'string') return;
      let frame: ServerFrame;
      try {
        frame = JSON.parse(ev.data) as ServerFrame;
      } catch {
        return;
      }
      if (frame && typeof frame === 'object' && typeof frame.type === 'string') this.handle(frame);
    };
    s.onclose = (ev) => {
      if (this.socket !== s) return;
      this.closed(ev.code);
    };
    s.onerror = () => {
      // a close event follows
    };
  }

  private handle(frame: ServerFrame): void {
    switch (frame.type) {
      case 'welcome':
        if (this.phase !== 'authenticating') break;
        if (this.connectTimer !== null) this.timers.clearTimeout(this.connectTimer);
        this.connectTimer = null;
        this.phase = 'syncing';
        this.heartbeatMs = frame.heartbeat_ms && frame.heartbeat_ms > 0 ? frame.heartbeat_ms : DEFAULT_HEARTBEAT_MS;
        this.scheduleHeartbeat();
        this.hooks.onFrame(frame);
        this.sendSync();
        return;
      case 'sync_done':
        this.hooks.onFrame(frame);
        if (frame.id !== undefined && frame.id === this.syncId) this.roundDone(frame);
        return;
      case 'error':
        if (frame.id !== undefined && frame.id === this.syncId) {
          // rate_limited (too many rounds waiting) or a transient failure: try the round again.
          this.syncId = null;
          this.syncTimer = this.timers.setTimeout(() => {
            this.syncTimer = null;
            this.sendSync();
          }, SYNC_STALL_PAUSE_MS);
          return;
        }
        this.hooks.onFrame(frame);
        return;
      default:
        this.hooks.onFrame(frame);
    }
  }

  private sendSync(): void {
    if (!this.socket || this.socket.readyState !== OPEN) return;
    this.syncRound += 1;
    this.syncId = `sync-${this.syncRound}`;
    const cursors = this.hooks.cursors();
    this.lastCursorsKey = cursorsKey(cursors);
    this.socket.send(JSON.stringify({ type: 'sync', id: this.syncId, cursors } satisfies ClientFrame));
  }

  private roundDone(frame: SyncDoneFrame): void {
    this.syncId = null;
    const more = frame.has_more === true || Object.values(frame.conversations ?? {}).some((s) => s.has_more);
    if (more) {
      const stalled = cursorsKey(this.hooks.cursors()) === this.lastCursorsKey;
      if (stalled) {
        this.syncTimer = this.timers.setTimeout(() => {
          this.syncTimer = null;
          this.sendSync();
        }, SYNC_STALL_PAUSE_MS);
      } else {
        this.sendSync();
      }
      return;
    }
    if (this.phase === 'syncing') {
      this.phase = 'online';
      this.backoff.reset();
      this.attempt = 0;
      this.status({ state: 'online' });
      this.hooks.onSynced();
    }
  }

  private scheduleHeartbeat(): void {
    this.heartbeatTimer = this.timers.setTimeout(() => {
      this.heartbeatTimer = null;
      if (!this.socket || (this.phase !== 'syncing' && this.phase !== 'online')) return;
      if (this.timers.now() - this.lastHeard > DEAD_AFTER_HEARTBEATS * this.heartbeatMs) {
        this.lost(null);
        return;
      }
      this.send({ type: 'ping' });
      this.scheduleHeartbeat();
    }, this.heartbeatMs);
  }

  /** The link is dead as far as the client can tell: drop it and retry. */
  private lost(code: number | null): void {
    this.drop();
    this.afterClose(code);
  }

  private closed(code: number): void {
    this.socket = null;
    this.afterClose(code);
  }

  private afterClose(code: number | null): void {
    const wasOpen = this.phase === 'authenticating' || this.phase === 'syncing' || this.phase === 'online';
    this.clearTimers();
    if (this.phase === 'stopped') return;
    if (wasOpen) this.hooks.onLost();
    if (code === CLOSE_UNAUTHORIZED) {
      this.phase = 'stopped';
      this.status({ state: 'offline', reason: 'signed out' });
      this.hooks.onUnauthorized();
      return;
    }
    if (this.browserOffline) {
      this.phase = 'offline';
      this.status({ state: 'offline', reason: 'no network' });
      return;
    }
    this.scheduleRetry(code);
  }

  private scheduleRetry(code: number | null): void {
    const delay = this.backoff.next();
    const retryAt = this.timers.now() + delay;
    this.phase = 'waiting';
    this.status({ state: 'reconnecting', retryAt, attempt: this.attempt, lastCode: code });
    this.retryTimer = this.timers.setTimeout(() => {
      this.retryTimer = null;
      this.connect();
    }, delay);
  }
}

function cursorsKey(c: Record<string, number>): string {
  return JSON.stringify(Object.keys(c).sort().map((k) => [k, c[k]]));
}

/** `ws(s)://<host>/v1/ws` of the page's own origin. */
export function socketUrl(loc: { protocol: string; host: string }): string {
  return `${loc.protocol === 'https:' ? 'wss' : 'ws'}://${loc.host}/v1/ws`;
}
