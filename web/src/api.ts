// REST calls of docs/protocol.md, relative to the page's origin (`/v1/...`), with the bearer
// token; an error reply becomes an ApiError carrying its status, code and Retry-After.

import type {
  Attachment,
  AuthReply,
  ConversationsReply,
  DirectReply,
  GroupChangeReply,
  GroupReply,
  HistoryReply,
  MembersReply,
  UserReply,
  UsersReply,
} from './protocol';
import { usersPath } from './names';

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly retryAfter: number | null = null,
  ) {
    super(message);
    this.name = 'ApiError';
  }
}

/** The ApiError of an error reply: its status, the JSON error's code and message
 *  (`{"error": {"code", "message"}}`), and a whole-seconds `Retry-After`. */
export function errorOf(status: number, json: unknown, retryAfter: string | null, statusText = ''): ApiError {
  const err = (json as { error?: { code?: unknown; message?: unknown } } | null)?.error;
  const code = typeof err?.code === 'string' ? err.code : `http_${status}`;
  const message = typeof err?.message === 'string' ? err.message : statusText;
  const ra = retryAfter !== null && /^\d+$/.test(retryAfter.trim()) ? Number(retryAfter.trim()) : null;
  return new ApiError(status, code, message, ra);
}

/** A user-facing sentence for an error of any call. */
export function describeError(e: unknown): string {
  if (e instanceof ApiError) {
    switch (e.code) {
      case 'username_taken':
        return 'That username is taken.';
      case 'unauthorized':
        return e.status === 401 ? 'Wrong username or password, or the session ended.' : e.message;
      case 'rate_limited':
        return `Too many attempts; try again in ${e.retryAfter ?? 'a few'} s.`;
      case 'unavailable':
        return `The server is busy; try again${e.retryAfter ? ` in ${e.retryAfter} s` : ''}.`;
      case 'not_found':
        return e.message || 'Not found.';
      case 'forbidden':
        return e.message || 'Not allowed.';
      default:
        return e.message || `Request failed (${e.status}).`;
    }
  }
  if (e instanceof Error) return e.message === 'Failed to fetch' ? 'Cannot reach the server.' : e.message;
  return String(e);
}

type Fetch = typeof fetch;

export class Api {
  constructor(
    private readonly token: () => string | null,
    private readonly fetcher: Fetch = (...args) => fetch(...args),
  ) {}

  private async call<T>(method: string, path: string, body?: unknown): Promise<T> {
    const headers: Record<string, string> = { Accept: 'application/json' };
    const t = this.token();
    if (t) headers.Authorization = `Bearer ${t}`;
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    const init: RequestInit = { method, headers, cache: 'no-store' };
    if (body !== undefined) init.body = JSON.stringify(body);
    const res = await this.fetcher(path, init);
    if (res.status === 204) return undefined as T;
    const text = await res.text();
    let json: unknown = null;
    if (text) {
      try {
        json = JSON.parse(text);
      } catch {
        json = null;
      }
    }
    if (!res.ok) throw errorOf(res.status, json, res.headers.get('Retry-After'), res.statusText);
    return json as T;
  }

  register(username: string, password: string): Promise<AuthReply> {
    return this.call('POST', '/v1/register', { username, password, device_name: 'web' });
  }

  login(username: string, password: string): Promise<AuthReply> {
    return this.call('POST', '/v1/login', { username, password, device_name: 'web' });
  }

  logout(): Promise<void> {
    return this.call('POST', '/v1/logout');
  }

  me(): Promise<UserReply> {
    return this.call('GET', '/v1/me');
  }

  user(username: string): Promise<UserReply> {
    return this.call('GET', `/v1/users/${encodeURIComponent(username)}`);
  }

  /** Usernames of up to 200 user ids (`GET /v1/users?ids=…`); unknown ids are left out. */
  users(ids: string[]): Promise<UsersReply> {
    return this.call('GET', usersPath(ids));
  }

  conversations(): Promise<ConversationsReply> {
    return this.call('GET', '/v1/conversations');
  }

  openDirect(userId: string): Promise<DirectReply> {
    return this.call('POST', '/v1/conversations/direct', { user_id: userId });
  }

  createGroup(title: string, members: string[]): Promise<GroupReply> {
    return this.call('POST', '/v1/conversations/group', { title, members });
  }

  addMembers(conversationId: string, userIds: string[]): Promise<GroupChangeReply> {
    return this.call('POST', `/v1/conversations/${encodeURIComponent(conversationId)}/members`, { user_ids: userIds });
  }

  removeMember(conversationId: string, userId: string): Promise<GroupChangeReply> {
    return this.call(
      'DELETE',
      `/v1/conversations/${encodeURIComponent(conversationId)}/members/${encodeURIComponent(userId)}`,
    );
  }

  members(conversationId: string): Promise<MembersReply> {
    return this.call('GET', `/v1/conversations/${encodeURIComponent(conversationId)}/members`);
  }

  /** An attachment with fresh signed links (`GET /v1/attachments/{id}/info`). */
  attachmentInfo(id: string): Promise<Attachment> {
    return this.call('GET', `/v1/attachments/${encodeURIComponent(id)}/info`);
  }

  history(conversationId: string, before: number | null, limit = 50): Promise<HistoryReply> {
    const q = new URLSearchParams({ limit: String(limit) });
    if (before !== null) q.set('before', String(before));
    return this.call('GET', `/v1/conversations/${encodeURIComponent(conversationId)}/messages?${q}`);
  }
}
