// The sign-in form: username and password, "Log in" (Enter) and "Register" buttons, and the
// error line under them.

import type { Actions } from './actions';
import { byId } from './dom';

export class AuthView {
  private readonly section = byId('auth');
  private readonly form = byId<HTMLFormElement>('auth-form');
  private readonly username = byId<HTMLInputElement>('username');
  private readonly password = byId<HTMLInputElement>('password');
  private readonly loginButton = byId<HTMLButtonElement>('login');
  private readonly registerButton = byId<HTMLButtonElement>('register');
  private readonly error = byId('auth-error');

  constructor(actions: Actions) {
    const run = async (what: 'login' | 'register') => {
      const u = this.username.value.trim();
      const p = this.password.value;
      if (!u || !p) {
        this.showError('Enter a username and a password.');
        return;
      }
      this.setBusy(true);
      this.showError('');
      try {
        await (what === 'login' ? actions.login(u, p) : actions.register(u, p));
        this.password.value = '';
      } catch (e) {
        this.showError(e instanceof Error ? e.message : String(e));
      } finally {
        this.setBusy(false);
      }
    };
    this.form.addEventListener('submit', (ev) => {
      ev.preventDefault();
      void run('login');
    });
    this.registerButton.addEventListener('click', () => void run('register'));
  }

  private setBusy(busy: boolean): void {
    this.loginButton.disabled = busy;
    this.registerButton.disabled = busy;
  }

  showError(message: string): void {
    this.error.textContent = message;
  }

  render(signedIn: boolean): void {
    if (this.section.hidden !== signedIn) {
      this.section.hidden = signedIn;
      if (!signedIn) this.username.focus();
    }
  }
}
