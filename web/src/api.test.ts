// Unit tests of the REST client: the name lookup's request and an error reply.

import { describe, expect, it } from 'vitest';
import { Api, ApiError } from './api';

function fakeFetch(status: number, body: unknown, calls: { url: string; init: RequestInit }[]): typeof fetch {
  return (async (url: string, init: RequestInit) => {
    calls.push({ url, init });
    return new Response(JSON.stringify(body), { status, headers: { 'Content-Type': 'application/json' } });
  }) as unknown as typeof fetch;
}

describe('Api.users', () => {
  it('asks GET /v1/users?ids=… with the bearer token', async () => {
    const calls: { url: string; init: RequestInit }[] = [];
    const api = new Api(() => 'tok', fakeFetch(200, { users: [{ user_id: 'a', username: 'alice' }] }, calls));
    const r = await api.users(['a', 'b']);
    expect(r.users).toEqual([{ user_id: 'a', username: 'alice' }]);
    expect(calls).toHaveLength(1);
    expect(calls[0]!.url).toBe('/v1/users?ids=a,b');
    expect(calls[0]!.init.method).toBe('GET');
    expect((calls[0]!.init.headers as Record<string, string>).Authorization).toBe('Bearer tok');
  });

  it('turns an error reply into an ApiError', async () => {
    const api = new Api(() => 'tok', fakeFetch(413, { error: { code: 'too_large', message: 'at most 200 ids per lookup' } }, []));
    const e = await api.users(['a']).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(ApiError);
    expect(e).toMatchObject({ status: 413, code: 'too_large' });
  });
});
