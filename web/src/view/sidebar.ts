// The list pane: the "start a chat" and "new group" forms, and the conversation list (title,
// last-message preview, unread badge), most recent first.

import type { Conversation } from '../state';
import type { Actions, Model } from './actions';
import { attr, byId, el, reconcile, show, text } from './dom';

export class SidebarView {
  private readonly list = byId('conversations');
  private readonly empty = byId('empty-list');
  private readonly chatForm = byId<HTMLFormElement>('new-chat-form');
  private readonly chatUser = byId<HTMLInputElement>('new-chat-username');
  private readonly chatStart = byId<HTMLButtonElement>('new-chat-start');
  private readonly groupForm = byId<HTMLFormElement>('new-group-form');
  private readonly groupTitle = byId<HTMLInputElement>('new-group-title');
  private readonly groupMembers = byId<HTMLInputElement>('new-group-members');
  private readonly groupCreate = byId<HTMLButtonElement>('new-group-create');

  constructor(actions: Actions) {
    this.chatForm.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const name = this.chatUser.value.trim();
      if (!name) return;
      this.chatStart.disabled = true;
      try {
        if (await actions.startChat(name)) this.chatUser.value = '';
      } finally {
        this.chatStart.disabled = false;
      }
    });
    this.groupForm.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const title = this.groupTitle.value.trim();
      const names = this.groupMembers.value
        .split(',')
        .map((s) => s.trim())
        .filter((s) => s.length > 0);
      this.groupCreate.disabled = true;
      try {
        if (await actions.createGroup(title, names)) {
          this.groupTitle.value = '';
          this.groupMembers.value = '';
        }
      } finally {
        this.groupCreate.disabled = false;
      }
    });
    this.list.addEventListener('click', (ev) => {
      const button = (ev.target as HTMLElement).closest<HTMLElement>('[data-conversation-id]');
      if (button?.dataset.conversationId) actions.openConversation(button.dataset.conversationId);
    });
  }

  render(m: Model): void {
    const s = m.state;
    const items = s.sortedConversations();
    show(this.empty, items.length === 0);
    reconcile<Conversation>(
      this.list,
      items,
      (c) => c.id,
      () => {
        const li = el('li', { class: 'conv-row' });
        const b = el('button', { type: 'button', class: 'conv', 'data-testid': 'conversation-item' });
        b.append(
          el('span', { class: 'conv-title' }),
          el('span', { class: 'conv-preview', 'data-testid': 'preview' }),
        );
        li.append(b);
        return li;
      },
      (li, c) => {
        const b = li.firstElementChild as HTMLElement;
        const title = s.title(c);
        attr(b, 'data-conversation-id', c.id);
        attr(b, 'data-title', title);
        attr(b, 'data-kind', c.kind ?? '');
        attr(b, 'aria-current', s.openId === c.id ? 'true' : null);
        b.classList.toggle('active', s.openId === c.id);
        b.classList.toggle('left', c.left);
        b.classList.toggle('group', c.kind === 'group');
        text(b.querySelector('.conv-title')!, title);
        text(b.querySelector('.conv-preview')!, s.preview(c));
        const unread = s.unread(c);
        let badge = b.querySelector<HTMLElement>('.badge');
        if (unread > 0) {
          if (!badge) {
            badge = el('span', { class: 'badge', 'data-testid': 'unread-badge' });
            b.append(badge);
          }
          text(badge, String(unread));
          attr(badge, 'aria-label', `${unread} unread`);
        } else if (badge) {
          badge.remove();
        }
      },
    );
  }
}
