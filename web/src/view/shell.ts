// The page's frame: the top bar (connection state, who is signed in, log out), the notice
// line, the list/chat layout (stacked on narrow screens: `data-pane` says which one shows),
// and the sub-views it draws on each render.

import { AuthView } from './auth';
import type { Actions, Model } from './actions';
import { ChatView } from './chat';
import { attr, byId, show, text } from './dom';
import { statusText } from './format';
import { SidebarView } from './sidebar';

export class View {
  private readonly conn = byId('conn-state');
  private readonly reconnect = byId<HTMLButtonElement>('reconnect-now');
  private readonly whoami = byId('whoami');
  private readonly logout = byId<HTMLButtonElement>('logout');
  private readonly notice = byId('notice');
  private readonly main = byId('main');
  readonly auth: AuthView;
  private readonly sidebar: SidebarView;
  private readonly chat: ChatView;

  constructor(actions: Actions) {
    this.auth = new AuthView(actions);
    this.sidebar = new SidebarView(actions);
    this.chat = new ChatView(actions);
    this.logout.addEventListener('click', () => actions.logout());
    this.reconnect.addEventListener('click', () => actions.reconnectNow());
  }

  /** The composer's text as the caption of a file uploaded to `conversationId` (see ChatView). */
  takeCaption(conversationId: string): string {
    return this.chat.takeCaption(conversationId);
  }

  render(m: Model): void {
    const st = m.status;
    text(this.conn, statusText(st, m.now));
    attr(this.conn, 'data-state', st.state);
    show(this.reconnect, m.signedIn && (st.state === 'reconnecting' || (st.state === 'offline' && st.reason === 'no network')));
    show(this.logout, m.signedIn);
    text(this.whoami, m.signedIn && m.state.me ? m.state.me.username : '');
    text(this.notice, m.notice ?? '');
    show(this.notice, m.notice !== null);
    this.auth.render(m.signedIn);
    show(this.main, m.signedIn);
    if (!m.signedIn) return;
    attr(this.main, 'data-pane', m.state.openId ? 'chat' : 'list');
    this.sidebar.render(m);
    this.chat.render(m);
  }
}
