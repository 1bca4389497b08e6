// The typing indicator this client sends: `typing active` when the user types (repeated while
// typing goes on, so receivers that expire it keep showing it), `active: false` after 3 s
// without input, on send, or when the user moves to another chat. Timers are injected.

export const TYPING_IDLE_MS = 3_000;
/** While typing goes on, `active: true` is repeated this often (receivers expire it after 6 s). */
export const TYPING_REPEAT_MS = 2_500;

export interface Timers {
  now(): number;
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

export const browserTimers: Timers = {
  now: () => Date.now(),
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: (h) => clearTimeout(h as ReturnType<typeof setTimeout>),
};

export class TypingSender {
  private active: string | null = null;
  private lastSentAt = 0;
  private idle: unknown = null;

  constructor(
    private readonly send: (conversationId: string, active: boolean) => void,
    private readonly timers: Timers = browserTimers,
  ) {}

  /** The user typed in the composer of `conversationId`. */
  input(conversationId: string): void {
    const now = this.timers.now();
    if (this.active !== null && this.active !== conversationId) this.stop();
    if (this.active === null || now - this.lastSentAt >= TYPING_REPEAT_MS) {
      this.active = conversationId;
      this.lastSentAt = now;
      this.send(conversationId, true);
    }
    if (this.idle !== null) this.timers.clearTimeout(this.idle);
    this.idle = this.timers.setTimeout(() => {
      this.idle = null;
      this.stop();
    }, TYPING_IDLE_MS);
  }

  /** Typing stopped (idle, sent, chat left): `active: false` if `active: true` was sent. */
  stop(): void {
    if (this.idle !== null) {
      this.timers.clearTimeout(this.idle);
      this.idle = null;
    }
    if (this.active !== null) {
      const c = this.active;
      this.active = null;
      this.send(c, false);
    }
  }

  /** The connection ended: what was sent is gone with it; nothing to take back. */
  reset(): void {
    if (this.idle !== null) this.timers.clearTimeout(this.idle);
    this.idle = null;
    this.active = null;
  }

  get activeConversation(): string | null {
    return this.active;
  }
}
