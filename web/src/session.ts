// The signed-in session kept for this browser tab in sessionStorage: token, user and device
// ids, username, and the usernames this tab has learned (so a reload names users at once,
// before the lookups of `names.ts` are answered).

import type { AuthReply } from './protocol';

const KEY = 'switchboard.session';
const NAMES = 'switchboard.names';

export interface StoredSession {
  token: string;
  userId: string;
  username: string;
  deviceId: string;
}

function storage(): Storage | null {
  try {
    return window.sessionStorage;
  } catch {
    return null;
  }
}

export function loadSession(): StoredSession | null {
  const raw = storage()?.getItem(KEY);
  if (!raw) return null;
  try {
    const s = JSON.parse(raw) as Partial<StoredSession>;
    if (typeof s.token === 'string' && typeof s.userId === 'string' && typeof s.username === 'string') {
      return { token: s.token, userId: s.userId, username: s.username, deviceId: s.deviceId ?? '' };
    }
  } catch {
    // ignore a damaged entry
  }
  return null;
}

export function saveSession(r: AuthReply): StoredSession {
  const s: StoredSession = { token: r.token, userId: r.user_id, username: r.username, deviceId: r.device_id };
  storage()?.setItem(KEY, JSON.stringify(s));
  return s;
}

export function clearSession(): void {
  storage()?.removeItem(KEY);
}

export function loadNames(): [string, string][] {
  const raw = storage()?.getItem(NAMES);
  if (!raw) return [];
  try {
    const v = JSON.parse(raw) as unknown;
    if (v && typeof v === 'object') {
      return Object.entries(v as Record<string, unknown>).filter((e): e is [string, string] => typeof e[1] === 'string');
    }
  } catch {
    // ignore
  }
  return [];
}

export function saveNames(names: Iterable<[string, string]>): void {
  storage()?.setItem(NAMES, JSON.stringify(Object.fromEntries(names)));
}
