// The chat pane: header (title, back button, the direct peer's presence dot and "last seen"),
// a group's members with roles and the add-member form, the timeline (load older, messages
// with ticks, "read by", attachments; system lines), the typing line, the upload line and the
// composer (Enter sends; the paperclip uploads a file and sends it).

import { MAX_BODY_BYTES, type Attachment } from '../protocol';
import type { ClientState, Conversation, TimelineItem } from '../state';
import { percentOf } from '../upload';
import type { Actions, Model, UploadView } from './actions';
import { Lightbox, renderAttachments } from './attachments';
import { attr, byId, el, reconcile, show, text } from './dom';
import { lastSeenText, tickLabel, tickText, timeText, typingText, uploadText } from './format';

const NEAR_BOTTOM_PX = 80;

export class ChatView {
  private readonly noChat = byId('no-chat');
  private readonly pane = byId('chat-pane');
  private readonly title = byId('chat-title');
  private readonly presenceLine = byId('presence-line');
  private readonly presence = byId('presence');
  private readonly lastSeen = byId('last-seen');
  private readonly groupPanel = byId('group-panel');
  private readonly members = byId('members');
  private readonly addForm = byId<HTMLFormElement>('add-member-form');
  private readonly addUser = byId<HTMLInputElement>('add-member-username');
  private readonly addButton = byId<HTMLButtonElement>('add-member');
  private readonly timeline = byId('timeline');
  private readonly loadOlder = byId<HTMLButtonElement>('load-older');
  private readonly messages = byId('messages');
  private readonly typing = byId('typing');
  private readonly leftNote = byId('left-note');
  private readonly composerForm = byId<HTMLFormElement>('composer-form');
  private readonly composer = byId<HTMLTextAreaElement>('composer');
  private readonly sendButton = byId<HTMLButtonElement>('send');
  private readonly attachButton = byId<HTMLButtonElement>('attach');
  private readonly attachInput = byId<HTMLInputElement>('attach-input');
  private readonly upload = byId('upload');
  private readonly uploadText = byId('upload-text');
  private readonly uploadProgress = byId<HTMLProgressElement>('upload-progress');
  private readonly uploadCancel = byId<HTMLButtonElement>('upload-cancel');
  private readonly lightbox: Lightbox;
  /** The attachments of the timeline drawn last, by id (for the lightbox). */
  private attachments = new Map<string, Attachment>();
  private shownId: string | null = null;

  constructor(actions: Actions) {
    this.lightbox = new Lightbox((id) => actions.attachmentFailed(id));
    this.attachButton.addEventListener('click', () => this.attachInput.click());
    this.attachInput.addEventListener('change', () => {
      const file = this.attachInput.files?.[0];
      // Cleared, so that choosing the same file again is a change too.
      this.attachInput.value = '';
      if (file) actions.attach(file);
    });
    this.uploadCancel.addEventListener('click', () => actions.cancelUpload());
    // A thumbnail that does not load (error events do not bubble: listen while capturing).
    this.messages.addEventListener(
      'error',
      (ev) => {
        const img = ev.target;
        if (!(img instanceof HTMLImageElement) || !img.getAttribute('src')) return;
        const id = img.closest<HTMLElement>('[data-testid="attachment"]')?.dataset.attachmentId;
        if (id) actions.attachmentFailed(id);
      },
      true,
    );
    byId('back').addEventListener('click', () => actions.back());
    this.loadOlder.addEventListener('click', () => actions.loadOlder());
    this.addForm.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const name = this.addUser.value.trim();
      if (!name) return;
      this.addButton.disabled = true;
      try {
        if (await actions.addMember(name)) this.addUser.value = '';
      } finally {
        this.addButton.disabled = false;
      }
    });
    const submit = () => {
      if (actions.send(this.composer.value)) {
        this.composer.value = '';
        this.composer.focus();
      }
    };
    this.composerForm.addEventListener('submit', (ev) => {
      ev.preventDefault();
      submit();
    });
    this.composer.addEventListener('keydown', (ev) => {
      if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing) {
        ev.preventDefault();
        submit();
      }
    });
    this.composer.addEventListener('input', () => {
      if (this.composer.value.length > 0) actions.typing();
    });
    this.messages.addEventListener('click', (ev) => {
      const b = (ev.target as HTMLElement).closest<HTMLElement>('button[data-action]');
      if (b?.dataset.action === 'lightbox') {
        const a = this.attachments.get(b.dataset.attachmentId ?? '');
        if (a) this.lightbox.show(a);
        return;
      }
      const id = b?.dataset.clientMsgId;
      if (!b || !id) return;
      if (b.dataset.action === 'retry') actions.retrySend(id);
      if (b.dataset.action === 'discard') actions.discardSend(id);
    });
  }

  render(m: Model): void {
    const s = m.state;
    const c = s.openId ? s.get(s.openId) : undefined;
    show(this.noChat, !c);
    show(this.pane, !!c);
    if (!c) {
      this.shownId = null;
      this.lightbox.close();
      return;
    }
    const switched = this.shownId !== c.id;
    this.shownId = c.id;
    attr(this.pane, 'data-conversation-id', c.id);
    attr(this.pane, 'data-kind', c.kind ?? '');
    text(this.title, s.title(c));
    this.renderPresence(s, c, m.now);
    this.renderMembers(s, c);
    this.renderTimeline(s, c, m.now, switched);
    const typers = s.typingUsers(c.id, m.now).map((u) => s.displayName(u));
    const line = typingText(typers);
    text(this.typing, line);
    show(this.typing, line.length > 0);
    const closed = c.left || c.deleted;
    show(this.leftNote, closed);
    text(this.leftNote, c.deleted ? 'This group was deleted.' : 'You are no longer a member of this group.');
    this.composer.disabled = closed;
    this.sendButton.disabled = closed;
    this.renderUpload(m.upload && m.upload.conversationId === c.id ? m.upload : null, closed);
    if (switched) {
      this.lightbox.close();
      this.composer.value = '';
      if (!closed) this.composer.focus({ preventScroll: true });
    }
  }

  /** The upload line above the composer: "Uploading cat.png… 42 %" with a bar and Cancel, or
   *  the reason it failed with Dismiss. One upload per chat at a time. */
  private renderUpload(u: UploadView | null, closed: boolean): void {
    show(this.upload, u !== null);
    this.attachButton.disabled = closed || (u !== null && u.state !== 'failed');
    if (!u) return;
    const percent = percentOf(u.sent, u.size);
    attr(this.upload, 'data-state', u.state);
    attr(this.upload, 'data-percent', String(percent));
    attr(this.upload, 'role', u.state === 'failed' ? 'alert' : 'status');
    text(this.uploadText, uploadText(u.state, u.name, percent, u.error));
    show(this.uploadProgress, u.state !== 'failed');
    attr(this.uploadProgress, 'value', String(percent));
    text(this.uploadCancel, u.state === 'failed' ? 'Dismiss' : 'Cancel');
    attr(this.uploadCancel, 'aria-label', u.state === 'failed' ? 'Dismiss the upload error' : `Cancel the upload of ${u.name}`);
  }

  /** The composer's text as the caption of a file just uploaded to `conversationId`: taken
   *  (and the composer cleared) when that chat is shown and the text fits in a message, else
   *  "" and the composer keeps it. */
  takeCaption(conversationId: string): string {
    if (this.shownId !== conversationId || this.composer.disabled) return '';
    const caption = this.composer.value.replace(/\s+$/, '');
    if (caption.trim().length === 0 || new TextEncoder().encode(caption).length > MAX_BODY_BYTES) return '';
    this.composer.value = '';
    return caption;
  }

  private renderPresence(s: ClientState, c: Conversation, now: number): void {
    const peer = s.peer(c);
    show(this.presenceLine, peer !== null);
    if (!peer) return;
    const p = s.presence.get(peer);
    const online = p?.online === true;
    attr(this.presence, 'data-online', String(online));
    attr(this.presence, 'data-user-id', peer);
    attr(this.presence, 'aria-label', online ? 'online' : 'offline');
    this.presence.classList.toggle('online', online);
    const seen = lastSeenText(p, now);
    text(this.lastSeen, seen);
    show(this.lastSeen, seen.length > 0);
  }

  private renderMembers(s: ClientState, c: Conversation): void {
    const isGroup = c.kind === 'group';
    show(this.groupPanel, isGroup);
    if (!isGroup) return;
    const rows = c.members.map((u) => ({ userId: u, role: c.memberStates.get(u)?.role ?? null }));
    const rank = (r: string | null) => (r === 'owner' ? 0 : r === 'admin' ? 1 : 2);
    rows.sort((a, b) => rank(a.role) - rank(b.role) || s.displayName(a.userId).localeCompare(s.displayName(b.userId)));
    reconcile(
      this.members,
      rows,
      (r) => r.userId,
      () => {
        const li = el('li', { class: 'member', 'data-testid': 'member' });
        li.append(el('span', { class: 'member-name' }), el('span', { class: 'member-role' }));
        return li;
      },
      (li, r) => {
        attr(li, 'data-user-id', r.userId);
        attr(li, 'data-role', r.role ?? '');
        const name = s.displayName(r.userId) + (s.isMe(r.userId) ? ' (you)' : '');
        text(li.querySelector('.member-name')!, name);
        text(li.querySelector('.member-role')!, r.role ? ` ${r.role}` : '');
      },
    );
    const canAdd = !c.left && !c.deleted && (c.role === 'owner' || c.role === 'admin');
    show(this.addForm, canAdd);
  }

  private renderTimeline(s: ClientState, c: Conversation, now: number, switched: boolean): void {
    const tl = this.timeline;
    const nearBottom = tl.scrollHeight - tl.scrollTop - tl.clientHeight < NEAR_BOTTOM_PX;
    const prevHeight = tl.scrollHeight;
    const prevTop = tl.scrollTop;
    const prevFirst = (this.messages.firstElementChild as HTMLElement | null)?.dataset.key ?? null;
    const prevLast = (this.messages.lastElementChild as HTMLElement | null)?.dataset.key ?? null;

    show(this.loadOlder, c.historyHasMore);
    this.loadOlder.disabled = c.loadingHistory;
    text(this.loadOlder, c.loadingHistory ? 'Loading…' : 'Load older');

    const items = s.timeline(c.id);
    this.attachments = new Map(items.flatMap((i) => i.attachments.map((a) => [a.id, a] as const)));
    const inLightbox = this.lightbox.openId ? this.attachments.get(this.lightbox.openId) : undefined;
    if (inLightbox) this.lightbox.update(inLightbox);
    if (switched) this.messages.replaceChildren();
    reconcile<TimelineItem>(
      this.messages,
      items,
      (i) => `${i.key}|${i.kind}`,
      (i) => this.createRow(i),
      (row, i) => this.updateRow(s, c, row, i, now),
    );

    const first = (this.messages.firstElementChild as HTMLElement | null)?.dataset.key ?? null;
    const last = (this.messages.lastElementChild as HTMLElement | null)?.dataset.key ?? null;
    const lastItem = items[items.length - 1];
    if (switched) {
      tl.scrollTop = tl.scrollHeight;
    } else if (first !== prevFirst && last === prevLast) {
      // Older messages went in above: keep what the user looked at in place.
      tl.scrollTop = prevTop + (tl.scrollHeight - prevHeight);
    } else if (last !== prevLast && (nearBottom || lastItem?.own)) {
      tl.scrollTop = tl.scrollHeight;
    }
  }

  private createRow(i: TimelineItem): HTMLElement {
    const li = el('li', { 'data-testid': 'message' });
    if (i.kind === 'system') {
      li.className = 'msg system';
      li.append(el('span', { class: 'system-text', 'data-testid': 'system-message' }));
      return li;
    }
    li.className = i.own ? 'msg own' : 'msg other';
    const meta = el('div', { class: 'msg-meta' });
    meta.append(el('span', { class: 'author' }), el('time', { class: 'time' }));
    li.append(meta, el('div', { class: 'msg-body' }), el('div', { class: 'msg-attachments' }));
    if (i.own) {
      const status = el('div', { class: 'msg-status' });
      status.append(el('span', { class: 'tick', 'data-testid': 'tick' }));
      li.append(status);
    }
    return li;
  }

  private updateRow(s: ClientState, c: Conversation, li: HTMLElement, i: TimelineItem, now: number): void {
    attr(li, 'data-seq', i.seq === null ? '' : String(i.seq));
    attr(li, 'data-client-msg-id', i.clientMsgId);
    attr(li, 'data-kind', i.kind);
    attr(li, 'data-author-id', i.authorId);
    if (i.kind === 'system') {
      text(li.querySelector('.system-text')!, s.messageText(i));
      return;
    }
    const author = li.querySelector<HTMLElement>('.author')!;
    text(author, i.own ? 'You' : s.displayName(i.authorId));
    show(author, c.kind === 'group' && !i.own);
    const time = li.querySelector<HTMLTimeElement>('.time')!;
    text(time, timeText(i.ts, now));
    attr(time, 'datetime', new Date(i.ts).toISOString());
    const body = li.querySelector<HTMLElement>('.msg-body')!;
    text(body, i.body);
    show(body, i.body.length > 0 || i.attachments.length === 0);
    const files = li.querySelector<HTMLElement>('.msg-attachments')!;
    renderAttachments(files, i.attachments);
    show(files, i.attachments.length > 0);
    if (!i.own) return;
    const state = s.tick(c, i);
    const tick = li.querySelector<HTMLElement>('.tick')!;
    text(tick, tickText(state));
    attr(tick, 'data-state', state);
    attr(tick, 'aria-label', tickLabel(state));
    attr(tick, 'title', tickLabel(state));
    tick.className = `tick ${state}`;
    li.classList.toggle('pending', state === 'sending' || state === 'failed');
    const status = li.querySelector<HTMLElement>('.msg-status')!;
    // "read by N" in groups, with the names in the tooltip and the accessible name.
    let readBy = status.querySelector<HTMLElement>('.read-by');
    const readers = c.kind === 'group' && i.seq !== null ? s.readBy(c, i.seq) : [];
    if (readers.length > 0) {
      if (!readBy) {
        readBy = el('span', { class: 'read-by', 'data-testid': 'read-by', tabindex: '0' });
        status.append(readBy);
      }
      const names = readers.map((u) => s.displayName(u)).sort();
      text(readBy, `read by ${readers.length}`);
      attr(readBy, 'title', names.join(', '));
      attr(readBy, 'aria-label', `read by ${names.join(', ')}`);
      attr(readBy, 'data-count', String(readers.length));
      attr(readBy, 'data-readers', names.join(','));
    } else if (readBy) {
      readBy.remove();
    }
    // A send that failed for good: try again (same client_msg_id) or drop it.
    let actions = status.querySelector<HTMLElement>('.failed-actions');
    if (state === 'failed') {
      if (!actions) {
        actions = el('span', { class: 'failed-actions' });
        const retry = el('button', { type: 'button', class: 'link', 'data-action': 'retry', 'data-testid': 'retry-send' }, 'Retry');
        const drop = el('button', { type: 'button', class: 'link', 'data-action': 'discard', 'data-testid': 'discard-send' }, 'Discard');
        retry.dataset.clientMsgId = i.clientMsgId;
        drop.dataset.clientMsgId = i.clientMsgId;
        actions.append(retry, drop);
        status.append(actions);
      }
      attr(tick, 'title', `not sent: ${i.pending?.error ?? 'error'}`);
    } else if (actions) {
      actions.remove();
    }
  }
}
