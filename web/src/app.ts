// The app controller: wires the state, the REST api, the WebSocket connection and the view.
// It turns user intents into REST calls and frames, server frames into state changes, and
// state changes into (batched) renders; it owns the timers (outbox retries, receipts, the
// one-second redraw of countdowns, typing expiry), the lookups of usernames the client knows
// only by id (`names.ts`), uploads (`upload.ts`: one per chat at a time, sent as a message
// when finished) and the sign-in session.

import { Api, ApiError, describeError } from './api';
import { parseAttachments } from './attachments';
import { baseDelay } from './backoff';
import type { ConnStatus } from './connection';
import { Connection, socketUrl } from './connection';
import { MAX_IDS_PER_LOOKUP } from './names';
import type { ClientFrame, ServerFrame } from './protocol';
import { MAX_BODY_BYTES } from './protocol';
import { clearSession, loadNames, loadSession, saveNames, saveSession, type StoredSession } from './session';
import { ClientState, type PendingSend } from './state';
import { TypingSender } from './typing';
import { describeUploadError, isAbort, uploadFile, uploadsPath, xhrTransport } from './upload';
import type { Actions, Model, UploadView } from './view/actions';
import { View } from './view/shell';

const NOTICE_MS = 8_000;
const LIST_REFRESH_DEBOUNCE_MS = 250;
const HISTORY_PAGE = 50;
/** Ids noted within this long go out in the same name lookups. */
const NAMES_DEBOUNCE_MS = 30;
/** An attachment's links are asked again at most this often (after a picture did not load). */
const LINK_REFRESH_MS = 60_000;

/** An upload in progress (or failed, until dismissed). */
interface Upload extends UploadView {
  controller: AbortController;
  /** Known once the server made it (to cancel it). */
  uploadId: string | null;
}

function randomHex(bytes: number): string {
  const a = new Uint8Array(bytes);
  crypto.getRandomValues(a);
  return Array.from(a, (b) => b.toString(16).padStart(2, '0')).join('');
}

function newState(): ClientState {
  // client_msg_ids: unique per page load, counted up within it.
  return new ClientState(`web-${randomHex(6)}`);
}

export class App implements Actions {
  private state = newState();
  private readonly api = new Api(() => this.session?.token ?? null);
  private conn: Connection | null = null;
  private session: StoredSession | null = null;
  private status: ConnStatus = { state: 'offline', reason: 'signed out' };
  private notice: string | null = null;
  private noticeTimer: ReturnType<typeof setTimeout> | null = null;
  private readonly view: View;
  private readonly typingSender: TypingSender;
  private renderQueued = false;
  private receiptsQueued = false;
  private listTimer: ReturnType<typeof setTimeout> | null = null;
  private outboxTimer: ReturnType<typeof setTimeout> | null = null;
  private presenceQueued = new Set<string>();
  private presenceTimer: ReturnType<typeof setTimeout> | null = null;
  private namesTimer: ReturnType<typeof setTimeout> | null = null;
  private namesRetryTimer: ReturnType<typeof setTimeout> | null = null;
  /** Name lookups failed in a row (for the retry delay). */
  private nameFailures = 0;
  /** Bumped on sign-out: answers of calls made before it are dropped. */
  private generation = 0;
  /** Uploads by conversation id. */
  private readonly uploads = new Map<string, Upload>();
  /** Attachment id → when its links were last asked again. */
  private readonly linksAsked = new Map<string, number>();

  constructor() {
    this.view = new View(this);
    this.typingSender = new TypingSender((conversationId, active) => {
      this.conn?.send({ type: 'typing', conversation_id: conversationId, active });
    });
    document.addEventListener('visibilitychange', () => {
      this.scheduleReceipts();
      this.requestRender();
    });
    window.addEventListener('online', () => this.conn?.setNetwork(true));
    window.addEventListener('offline', () => this.conn?.setNetwork(false));
    setInterval(() => this.tick(), 1000);
  }

  boot(): void {
    const saved = loadSession();
    if (saved) this.begin(saved);
    else this.requestRender();
  }

  // ---- session ----

  private begin(session: StoredSession): void {
    this.generation += 1;
    const gen = this.generation;
    this.session = session;
    this.clearNameTimers();
    this.state = newState();
    this.state.setMe({ userId: session.userId, username: session.username });
    for (const [id, name] of loadNames()) this.state.rememberName(id, name);
    this.state.rememberName(session.userId, session.username);
    this.requestRender();
    const conn = new Connection(
      {
        token: () => this.session?.token ?? null,
        cursors: () => this.state.cursors(),
        onFrame: (f) => this.onFrame(f),
        onStatus: (s) => {
          this.status = s;
          this.requestRender();
        },
        onSynced: () => this.onSynced(),
        onLost: () => {
          this.state.connectionLost(Date.now());
          this.typingSender.reset();
          this.requestRender();
        },
        onUnauthorized: () => this.signOut('Your session ended; log in again.'),
      },
      { url: socketUrl(window.location) },
    );
    this.conn = conn;
    if (!navigator.onLine) conn.setNetwork(false);
    // The list first (cursors start from each conversation's last seq), then the socket.
    void this.refreshList().finally(() => {
      if (gen === this.generation) conn.start();
    });
  }

  private signOut(message?: string): void {
    this.generation += 1;
    this.conn?.stop();
    this.conn = null;
    this.session = null;
    clearSession();
    this.typingSender.reset();
    this.state = newState();
    this.status = { state: 'offline', reason: 'signed out' };
    if (this.outboxTimer) clearTimeout(this.outboxTimer);
    this.outboxTimer = null;
    this.clearNameTimers();
    for (const u of this.uploads.values()) u.controller.abort();
    this.uploads.clear();
    this.linksAsked.clear();
    this.view.auth.showError(message ?? '');
    this.requestRender();
  }

  async login(username: string, password: string): Promise<void> {
    try {
      this.begin(saveSession(await this.api.login(username, password)));
    } catch (e) {
      throw new Error(describeError(e));
    }
  }

  async register(username: string, password: string): Promise<void> {
    try {
      this.begin(saveSession(await this.api.register(username, password)));
    } catch (e) {
      throw new Error(describeError(e));
    }
  }

  logout(): void {
    const api = this.api;
    // The call carries the token; it is cleared after the request went out.
    const done = api.logout().catch(() => undefined);
    void done;
    this.signOut();
  }

  // ---- frames ----

  private onFrame(f: ServerFrame): void {
    const s = this.state;
    const now = Date.now();
    switch (f.type) {
      case 'message': {
        const out = s.applyMessage(f);
        if (out.unknownConversation) this.scheduleListRefresh();
        if (out.groupChanged && f.conversation_id === s.openId) void this.refreshMembers(f.conversation_id);
        if (!s.isMe(f.author_id) && f.kind === 'text' && !s.presence.has(f.author_id)) {
          const c = s.get(f.conversation_id);
          if (c && s.peer(c) === f.author_id) this.subscribePresence([f.author_id]);
        }
        this.scheduleReceipts();
        break;
      }
      case 'sent':
        s.applySent(f);
        this.scheduleReceipts();
        break;
      case 'receipt':
        s.applyReceipt(f.conversation_id, f.user_id, f.delivered_seq, f.read_seq);
        break;
      case 'receipts':
        for (const r of f.receipts) s.applyReceipt(f.conversation_id, r.user_id, r.delivered_seq, r.read_seq);
        break;
      case 'presence':
        s.applyPresence(f);
        break;
      case 'typing':
        s.applyTyping(f.conversation_id, f.user_id, f.active, now);
        break;
      case 'sync_done':
        if (s.applySyncDone(f.conversations ?? {}).length > 0) this.scheduleListRefresh();
        this.scheduleReceipts();
        break;
      case 'error':
        if (f.id !== undefined && s.outbox.has(f.id)) {
          const outcome = s.applySendError(f.id, f.code, now);
          if (outcome === 'gave-up') this.showNotice(`Message not sent: ${f.message || f.code}`);
          this.scheduleOutbox();
        } else if (f.code !== 'forbidden' && f.code !== 'not_found') {
          console.warn('switchboard:', f.code, f.message);
        }
        break;
      default:
        break;
    }
    // The open chat's new messages (and own sends) are read at once, so no badge flickers.
    if (f.type === 'message' || f.type === 'sent' || f.type === 'sync_done') s.markSeen(this.visibleOpenId());
    this.requestRender();
  }

  private onSynced(): void {
    // Every unacknowledged message goes out again with its client_msg_id; the server answers
    // the original `sent` for any it stored before the connection broke.
    this.writeSends(this.state.outbox.takeAll(Date.now()));
    this.scheduleOutbox();
    this.subscribePresence(this.state.directPeers());
    this.scheduleReceipts();
    this.requestRender();
  }

  private writeSends(list: PendingSend[]): void {
    for (const p of list) {
      const frame: ClientFrame = {
        type: 'send',
        id: p.clientMsgId,
        conversation_id: p.conversationId,
        client_msg_id: p.clientMsgId,
        body: p.body,
      };
      if (p.attachments.length > 0) frame.attachments = p.attachments.map((a) => a.id);
      this.conn?.send(frame);
    }
  }

  /** Writes what is due now (new sends, retries, unanswered ones) and waits for the next. */
  private scheduleOutbox(): void {
    if (this.outboxTimer) clearTimeout(this.outboxTimer);
    this.outboxTimer = null;
    if (!this.conn?.online) return;
    const now = Date.now();
    this.writeSends(this.state.outbox.takeDue(now));
    const next = this.state.outbox.nextDue();
    if (next !== null) {
      this.outboxTimer = setTimeout(() => this.scheduleOutbox(), Math.max(50, next - now));
    }
  }

  private subscribePresence(userIds: string[]): void {
    for (const u of userIds) this.presenceQueued.add(u);
    if (this.presenceTimer) return;
    this.presenceTimer = setTimeout(() => {
      this.presenceTimer = null;
      const ids = [...this.presenceQueued];
      if (ids.length === 0 || !this.conn?.authenticated) return;
      this.presenceQueued.clear();
      for (let i = 0; i < ids.length; i += 1000) {
        this.conn.send({ type: 'presence_subscribe', user_ids: ids.slice(i, i + 1000) });
      }
    }, 50);
  }

  private visibleOpenId(): string | null {
    return document.visibilityState === 'visible' ? this.state.openId : null;
  }

  /** `read` for the open chat, `delivered` for the rest: after the current batch of frames. */
  private scheduleReceipts(): void {
    if (this.receiptsQueued) return;
    this.receiptsQueued = true;
    setTimeout(() => {
      this.receiptsQueued = false;
      const open = this.visibleOpenId();
      this.state.markSeen(open);
      if (this.conn?.authenticated) {
        for (const r of this.state.owedReceipts(open)) this.conn.send(r);
      }
      this.requestRender();
    }, 0);
  }

  // ---- REST ----

  /** Looks up the names of the users known only by id (noted by the state as frames and replies
   *  arrive), shortly after, so that a burst of frames makes few requests. */
  private scheduleNames(): void {
    if (this.namesTimer || this.session === null) return;
    this.namesTimer = setTimeout(() => {
      this.namesTimer = null;
      this.lookUpNames();
    }, NAMES_DEBOUNCE_MS);
  }

  /** One `GET /v1/users?ids=` per batch of at most 200 wanted ids (each id in one lookup at a
   *  time); the page is drawn again when names arrive. A failed lookup is tried again after a
   *  backoff, unless the answer would not change (a 4xx other than 408/429). */
  private lookUpNames(): void {
    const gen = this.generation;
    const names = this.state.names;
    for (const batch of names.takeBatches(MAX_IDS_PER_LOOKUP)) {
      this.api.users(batch).then(
        (r) => {
          if (gen !== this.generation) return;
          this.nameFailures = 0;
          const changed = names.resolved(batch, Array.isArray(r?.users) ? r.users : []);
          if (changed) {
            saveNames(names.entries());
            this.requestRender();
          }
        },
        (e: unknown) => {
          if (gen !== this.generation) return;
          const retry = !(e instanceof ApiError) || e.status >= 500 || e.status === 408 || e.status === 429;
          names.failed(batch, retry);
          if (!retry || this.namesRetryTimer) return;
          this.nameFailures += 1;
          const wait = e instanceof ApiError && e.retryAfter ? e.retryAfter * 1000 : baseDelay(this.nameFailures - 1);
          this.namesRetryTimer = setTimeout(() => {
            this.namesRetryTimer = null;
            this.scheduleNames();
          }, wait);
        },
      );
    }
  }

  private clearNameTimers(): void {
    if (this.namesTimer) clearTimeout(this.namesTimer);
    if (this.namesRetryTimer) clearTimeout(this.namesRetryTimer);
    this.namesTimer = null;
    this.namesRetryTimer = null;
    this.nameFailures = 0;
  }

  private scheduleListRefresh(): void {
    if (this.listTimer) return;
    this.listTimer = setTimeout(() => {
      this.listTimer = null;
      void this.refreshList();
    }, LIST_REFRESH_DEBOUNCE_MS);
  }

  private async refreshList(): Promise<void> {
    const gen = this.generation;
    try {
      const r = await this.api.conversations();
      if (gen !== this.generation) return;
      this.state.loadConversations(r.conversations);
      // Peers of chats new to the client: their presence (the server ignores those who never
      // posted in a shared conversation; a later message from them subscribes again).
      this.subscribePresence(this.state.directPeers().filter((u) => !this.state.presence.has(u)));
      this.scheduleReceipts();
      this.requestRender();
    } catch (e) {
      if (gen !== this.generation) return;
      if (e instanceof ApiError && e.status === 401) this.signOut('Your session ended; log in again.');
      else this.showNotice(`Could not load conversations: ${describeError(e)}`);
    }
  }

  private async refreshMembers(conversationId: string): Promise<void> {
    const gen = this.generation;
    try {
      const r = await this.api.members(conversationId);
      if (gen !== this.generation) return;
      this.state.applyMembers(conversationId, r.members);
      this.requestRender();
    } catch {
      // a former member may not list members: keep what is known
    }
  }

  private async loadHistory(conversationId: string, newest: boolean): Promise<void> {
    const gen = this.generation;
    const c = this.state.get(conversationId);
    if (!c || c.loadingHistory) return;
    const before = newest ? null : this.state.oldestSeq(c);
    c.loadingHistory = true;
    this.requestRender();
    try {
      const r = await this.api.history(conversationId, before, HISTORY_PAGE);
      if (gen !== this.generation) return;
      this.state.applyHistory(conversationId, r.messages, r.has_more, newest || before === null ? 'newest' : 'older');
    } catch (e) {
      if (gen !== this.generation) return;
      this.showNotice(`Could not load messages: ${describeError(e)}`);
    } finally {
      c.loadingHistory = false;
      this.scheduleReceipts();
      this.requestRender();
    }
  }

  // ---- user intents ----

  openConversation(id: string): void {
    const s = this.state;
    if (s.openId !== id) this.typingSender.stop();
    s.openId = id;
    const c = s.ensure(id);
    if (!c.historyLoaded) void this.loadHistory(id, true);
    void this.refreshMembers(id);
    const peer = s.peer(c);
    if (peer && !s.presence.get(peer)) this.subscribePresence([peer]);
    this.scheduleReceipts();
    this.requestRender();
  }

  back(): void {
    this.typingSender.stop();
    this.state.openId = null;
    this.requestRender();
  }

  private rememberName(userId: string, username: string): void {
    this.state.rememberName(userId, username);
    saveNames(this.state.names.entries());
  }

  /** user ids of usernames; unknown names are reported in the notice. */
  private async resolve(usernames: string[]): Promise<string[] | null> {
    const missing: string[] = [];
    const ids: string[] = [];
    await Promise.all(
      usernames.map(async (name) => {
        try {
          const u = await this.api.user(name);
          this.rememberName(u.user_id, u.username);
          ids.push(u.user_id);
        } catch (e) {
          if (e instanceof ApiError && (e.status === 404 || e.code === 'bad_request')) missing.push(name);
          else throw e;
        }
      }),
    );
    if (missing.length) {
      this.showNotice(`No user named ${missing.join(', ')}.`);
      return null;
    }
    return ids;
  }

  async startChat(username: string): Promise<boolean> {
    const me = this.state.me;
    if (me && username.toLowerCase() === me.username.toLowerCase()) {
      this.showNotice('That is you: start a chat with someone else.');
      return false;
    }
    const gen = this.generation;
    try {
      const ids = await this.resolve([username]);
      if (!ids || gen !== this.generation) return false;
      const r = await this.api.openDirect(ids[0]!);
      if (gen !== this.generation) return false;
      this.state.addDirect(r);
      this.scheduleListRefresh();
      this.openConversation(r.conversation_id);
      return true;
    } catch (e) {
      this.showNotice(describeError(e));
      return false;
    }
  }

  async createGroup(title: string, usernames: string[]): Promise<boolean> {
    if (!title) {
      this.showNotice('Give the group a title.');
      return false;
    }
    const me = this.state.me;
    const others = [...new Set(usernames.map((u) => u.toLowerCase()))].filter((u) => u !== me?.username.toLowerCase());
    const gen = this.generation;
    try {
      const ids = await this.resolve(others);
      if (!ids || gen !== this.generation) return false;
      const r = await this.api.createGroup(title, ids);
      if (gen !== this.generation) return false;
      this.state.addGroup(r);
      this.scheduleListRefresh();
      this.openConversation(r.conversation_id);
      return true;
    } catch (e) {
      this.showNotice(describeError(e));
      return false;
    }
  }

  async addMember(username: string): Promise<boolean> {
    const id = this.state.openId;
    if (!id) return false;
    const gen = this.generation;
    try {
      const ids = await this.resolve([username]);
      if (!ids || gen !== this.generation) return false;
      await this.api.addMembers(id, ids);
      if (gen !== this.generation) return false;
      // The system message comes live to this device too (or with the next sync, if the
      // socket is down); the member list is read again for roles and windows.
      void this.refreshMembers(id);
      return true;
    } catch (e) {
      if (e instanceof ApiError && e.code === 'conflict') this.showNotice(`${username} is already a member.`);
      else this.showNotice(describeError(e));
      return false;
    }
  }

  send(body: string): boolean {
    const s = this.state;
    const c = s.openId ? s.get(s.openId) : undefined;
    if (!c || c.left || c.deleted) return false;
    const text = body.replace(/\s+$/, '');
    if (text.trim().length === 0) return false;
    if (new TextEncoder().encode(text).length > MAX_BODY_BYTES) {
      this.showNotice(`The message is too long (at most ${MAX_BODY_BYTES} bytes).`);
      return false;
    }
    s.outbox.create(c.id, text, Date.now());
    this.typingSender.stop();
    this.scheduleOutbox();
    this.requestRender();
    return true;
  }

  // ---- attachments ----

  attach(file: File): void {
    const s = this.state;
    const c = s.openId ? s.get(s.openId) : undefined;
    if (!c || c.left || c.deleted || this.session === null) return;
    const busy = this.uploads.get(c.id);
    if (busy && busy.state !== 'failed') {
      this.showNotice(`Wait for ${busy.name} to finish uploading.`);
      return;
    }
    const conversationId = c.id;
    const u: Upload = {
      conversationId,
      name: file.name || 'file',
      size: file.size,
      sent: 0,
      state: 'uploading',
      error: null,
      controller: new AbortController(),
      uploadId: null,
    };
    this.uploads.set(conversationId, u);
    const gen = this.generation;
    const current = () => gen === this.generation && this.uploads.get(conversationId) === u;
    uploadFile({
      transport: xhrTransport,
      token: () => this.session?.token ?? null,
      conversationId,
      file,
      name: u.name,
      signal: u.controller.signal,
      onCreated: (id) => {
        u.uploadId = id;
      },
      onProgress: (sent, total) => {
        u.sent = sent;
        u.state = sent >= total ? 'finishing' : 'uploading';
        if (current()) this.requestRender();
      },
    }).then(
      (attachment) => {
        if (!current()) return;
        this.uploads.delete(conversationId);
        // Sent like any message (pending, ticks, written again after a reconnect), with the
        // composer's text as its caption.
        this.state.outbox.create(conversationId, this.view.takeCaption(conversationId), Date.now(), [attachment]);
        this.typingSender.stop();
        this.scheduleOutbox();
        this.requestRender();
      },
      (e: unknown) => {
        if (!current()) return;
        if (isAbort(e)) {
          this.uploads.delete(conversationId);
        } else if (e instanceof ApiError && e.status === 401) {
          this.signOut('Your session ended; log in again.');
          return;
        } else {
          u.state = 'failed';
          u.error = describeUploadError(e, u.name);
        }
        this.requestRender();
      },
    );
    this.requestRender();
  }

  cancelUpload(): void {
    const id = this.state.openId;
    const u = id ? this.uploads.get(id) : undefined;
    if (!id || !u) return;
    this.uploads.delete(id);
    u.controller.abort();
    // What the server stored of it goes too (an upload it refused is gone already: 404).
    const token = this.session?.token ?? null;
    if (u.uploadId && token) {
      void xhrTransport({
        method: 'DELETE',
        url: uploadsPath(u.uploadId),
        headers: { Authorization: `Bearer ${token}` },
      }).catch(() => undefined);
    }
    this.requestRender();
  }

  /** A picture did not load: its signed link may have expired. The attachment's fresh links
   *  (`GET /v1/attachments/{id}/info`), at most once a minute per attachment. */
  attachmentFailed(attachmentId: string): void {
    const now = Date.now();
    const last = this.linksAsked.get(attachmentId);
    if (last !== undefined && now - last < LINK_REFRESH_MS) return;
    this.linksAsked.set(attachmentId, now);
    const gen = this.generation;
    this.api.attachmentInfo(attachmentId).then(
      (a) => {
        if (gen !== this.generation) return;
        const [fresh] = parseAttachments([a]);
        if (fresh && this.state.updateAttachment(fresh)) this.requestRender();
      },
      () => undefined,
    );
  }

  typing(): void {
    const c = this.state.openId ? this.state.get(this.state.openId) : undefined;
    if (c && !c.left && !c.deleted) this.typingSender.input(c.id);
  }

  loadOlder(): void {
    const id = this.state.openId;
    if (id) void this.loadHistory(id, false);
  }

  reconnectNow(): void {
    this.conn?.reconnectNow();
  }

  retrySend(clientMsgId: string): void {
    if (this.state.outbox.retry(clientMsgId, Date.now())) this.scheduleOutbox();
    this.requestRender();
  }

  discardSend(clientMsgId: string): void {
    this.state.outbox.discard(clientMsgId);
    this.requestRender();
  }

  // ---- drawing ----

  private showNotice(message: string): void {
    this.notice = message;
    if (this.noticeTimer) clearTimeout(this.noticeTimer);
    this.noticeTimer = setTimeout(() => {
      this.notice = null;
      this.requestRender();
    }, NOTICE_MS);
    this.requestRender();
  }

  /** Once a second: countdowns ("reconnecting in Ns"), typing lines that expired, "last seen". */
  private tickCount = 0;
  private tick(): void {
    this.tickCount += 1;
    const needed =
      this.status.state === 'reconnecting' || this.state.nextTypingExpiry() !== null || this.tickCount % 30 === 0;
    if (needed) this.requestRender();
  }

  private requestRender(): void {
    // Whatever changed the state may have named users the client knows only by id.
    if (this.state.names.wantedCount > 0) this.scheduleNames();
    if (this.renderQueued) return;
    this.renderQueued = true;
    queueMicrotask(() => {
      this.renderQueued = false;
      const model: Model = {
        state: this.state,
        status: this.status,
        signedIn: this.session !== null,
        now: Date.now(),
        notice: this.notice,
        upload: (this.state.openId && this.uploads.get(this.state.openId)) || null,
      };
      this.view.render(model);
    });
  }
}
