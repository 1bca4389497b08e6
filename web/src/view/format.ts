// Text the views show, pure (so it is unit-tested): tick marks, "last seen", the typing line,
// the connection state, message times and the upload line.

import type { ConnStatus } from '../connection';
import type { Presence, TickState } from '../state';
import { joinNames } from '../system';

export function tickText(state: TickState): string {
  switch (state) {
    case 'sending':
      return '…';
    case 'sent':
      return '✓';
    case 'delivered':
      return '✓✓';
    case 'read':
      return '✓✓ read';
    case 'failed':
      return '! not sent';
  }
}

export function tickLabel(state: TickState): string {
  return state === 'failed' ? 'not sent' : state;
}

/** "online", "last seen just now", "last seen 5 min ago", "last seen today at 14:05", … */
export function lastSeenText(p: Presence | undefined, now: number): string {
  if (!p) return '';
  if (p.online) return 'online';
  if (p.lastSeen === null) return 'offline';
  const ago = Math.max(0, now - p.lastSeen);
  if (ago < 60_000) return 'last seen just now';
  if (ago < 3_600_000) return `last seen ${Math.floor(ago / 60_000)} min ago`;
  const then = new Date(p.lastSeen);
  const today = new Date(now);
  const hm = `${String(then.getHours()).padStart(2, '0')}:${String(then.getMinutes()).padStart(2, '0')}`;
  if (then.toDateString() === today.toDateString()) return `last seen today at ${hm}`;
  return `last seen ${then.toISOString().slice(0, 10)} ${hm}`;
}

/** "alice is typing…", "alice and bob are typing…", "4 people are typing…". */
export function typingText(names: string[]): string {
  if (names.length === 0) return '';
  if (names.length === 1) return `${names[0]} is typing…`;
  if (names.length <= 3) return `${joinNames(names)} are typing…`;
  return `${names.length} people are typing…`;
}

/** The connection state as shown: connecting / online / reconnecting in Ns / offline. */
export function statusText(s: ConnStatus, now: number): string {
  switch (s.state) {
    case 'online':
      return 'online';
    case 'connecting':
      return 'connecting…';
    case 'reconnecting':
      return `reconnecting in ${Math.max(1, Math.ceil((s.retryAt - now) / 1000))}s`;
    case 'offline':
      return s.reason === 'no network' ? 'offline (no network)' : 'offline';
  }
}

export function timeText(ts: number, now: number): string {
  const d = new Date(ts);
  const hm = `${String(d.getHours()).padStart(2, '0')}:${String(d.getMinutes()).padStart(2, '0')}`;
  if (d.toDateString() === new Date(now).toDateString()) return hm;
  return `${d.toISOString().slice(0, 10)} ${hm}`;
}

/** The upload line: "Uploading cat.png… 42 %", "Finishing cat.png…", or why it failed. */
export function uploadText(
  state: 'uploading' | 'finishing' | 'failed',
  name: string,
  percent: number,
  error: string | null,
): string {
  switch (state) {
    case 'uploading':
      return `Uploading ${name}… ${percent} %`;
    case 'finishing':
      return `Finishing ${name}…`;
    case 'failed':
      return error ?? `${name} was not uploaded.`;
  }
}
