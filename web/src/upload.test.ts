// Unit tests of resumable uploads: the slices (ending on part boundaries, resuming from the
// server's offset), percent, which failures are retried, and the runner against a fake server
// that keeps whole parts only: a dropped request resumes from where the server stands, a lost
// answer does not resend what was stored, refusals end it with the server's message, retries
// are bounded and wait the backoff (or Retry-After), and cancelling stops it.

import { describe, expect, it } from 'vitest';
import { ApiError } from './api';
import { Backoff } from './backoff';
import type { Attachment } from './protocol';
import {
  createPath,
  describeUploadError,
  nextSlice,
  percentOf,
  planSlices,
  retryDelay,
  retryableUploadError,
  uploadFile,
  type Transport,
  type UploadRequest,
} from './upload';

describe('slices', () => {
  it('cut a file into part-sized slices, the last one shorter', () => {
    expect(planSlices(12, 5)).toEqual([
      { start: 0, end: 5 },
      { start: 5, end: 10 },
      { start: 10, end: 12 },
    ]);
    expect(planSlices(10, 5)).toEqual([
      { start: 0, end: 5 },
      { start: 5, end: 10 },
    ]);
    expect(planSlices(3, 5)).toEqual([{ start: 0, end: 3 }]);
    expect(planSlices(0, 5)).toEqual([]);
  });

  it('resume from the server offset, ending on the next part boundary', () => {
    expect(nextSlice(5, 12, 5)).toEqual({ start: 5, end: 10 });
    expect(planSlices(12, 5, 10)).toEqual([{ start: 10, end: 12 }]);
    // An offset off the boundary still ends the slice on one, so later slices are whole parts.
    expect(planSlices(12, 5, 7)).toEqual([
      { start: 7, end: 10 },
      { start: 10, end: 12 },
    ]);
    expect(nextSlice(12, 12, 5)).toBeNull();
    expect(nextSlice(13, 12, 5)).toBeNull();
  });

  it('take the whole rest when the part size is unusable', () => {
    expect(nextSlice(2, 12, 0)).toEqual({ start: 2, end: 12 });
  });

  it('the real part size: 5 MiB slices', () => {
    const MiB = 1024 * 1024;
    expect(planSlices(12 * MiB, 5 * MiB).map((s) => s.end - s.start)).toEqual([5 * MiB, 5 * MiB, 2 * MiB]);
  });
});

describe('percentOf', () => {
  it('is whole percent within 0–100, an empty file done', () => {
    expect(percentOf(0, 200)).toBe(0);
    expect(percentOf(1, 200)).toBe(0);
    expect(percentOf(99, 200)).toBe(49);
    expect(percentOf(200, 200)).toBe(100);
    expect(percentOf(300, 200)).toBe(100);
    expect(percentOf(0, 0)).toBe(100);
  });
});

describe('which failures are retried', () => {
  it('network, 5xx, 408, 429 and 409: yes; refusals: no', () => {
    expect(retryableUploadError(new Error('Cannot reach the server.'))).toBe(true);
    expect(retryableUploadError(new ApiError(503, 'unavailable', 'blob store down'))).toBe(true);
    expect(retryableUploadError(new ApiError(409, 'conflict', 'at offset 5'))).toBe(true);
    expect(retryableUploadError(new ApiError(429, 'rate_limited', ''))).toBe(true);
    expect(retryableUploadError(new ApiError(413, 'too_large', 'the limit is 100'))).toBe(false);
    expect(retryableUploadError(new ApiError(400, 'bad_request', 'could not be decoded'))).toBe(false);
    expect(retryableUploadError(new ApiError(404, 'not_found', 'no such upload'))).toBe(false);
    const abort = new Error('x');
    abort.name = 'AbortError';
    expect(retryableUploadError(abort)).toBe(false);
  });

  it('wait Retry-After when the server says, else the backoff', () => {
    const b = new Backoff(() => 0);
    expect(retryDelay(new Error('x'), b)).toBe(500);
    expect(retryDelay(new Error('x'), b)).toBe(1000);
    expect(retryDelay(new ApiError(503, 'unavailable', '', 3), b)).toBe(3000);
  });
});

describe('describeUploadError', () => {
  it('names the file and says the server message', () => {
    expect(describeUploadError(new ApiError(413, 'too_large', 'the file is 200 bytes; the limit is 100'), 'big.bin')).toBe(
      'big.bin is too large: the file is 200 bytes; the limit is 100.',
    );
    expect(describeUploadError(new ApiError(400, 'bad_request', 'the picture could not be decoded: eof'), 'a.png')).toBe(
      'a.png was refused: the picture could not be decoded: eof.',
    );
    expect(describeUploadError(new ApiError(503, 'unavailable', 'the blob store is unavailable'), 'a.png')).toBe(
      'a.png was not uploaded: the file store is unavailable (the blob store is unavailable); try again later.',
    );
    expect(describeUploadError(new Error('Cannot reach the server.'), 'a.png')).toBe('a.png was not uploaded: Cannot reach the server.');
  });
});

// ---- the runner against a fake server ----

/** What the fake server does with one PATCH: store it all, break off after `n` bytes (whole
 *  parts kept, no answer), store it all but lose the answer, or answer an error. */
type PatchFate = 'ok' | { breakAfter: number } | 'lost' | { status: number; code: string; message: string; retryAfter?: number };

interface Stored {
  length: number;
  data: number[];
  complete: boolean;
  name: string;
}

class FakeServer {
  readonly part = 5;
  readonly requests: { method: string; url: string; headers: Record<string, string>; bytes: number }[] = [];
  readonly uploads = new Map<string, Stored>();
  /** Fates of the PATCH requests in order (then 'ok'). */
  patchFates: PatchFate[] = [];
  /** Answers of the POSTs in order (then 201). */
  createFates: ({ status: number; code: string; message: string; retryAfter?: number } | 'network')[] = [];
  private next = 1;

  private reply(status: number, body: unknown, headers: Record<string, string> = {}) {
    return { status, text: JSON.stringify(body), header: (n: string) => headers[n] ?? null };
  }

  private error(status: number, code: string, message: string, retryAfter?: number) {
    return this.reply(status, { error: { code, message } }, retryAfter ? { 'Retry-After': String(retryAfter) } : {});
  }

  private status(id: string) {
    const u = this.uploads.get(id)!;
    const s = { upload_id: id, offset: u.data.length, length: u.length, part_bytes: this.part, complete: u.complete };
    if (!u.complete) return s;
    const attachment: Attachment = {
      id,
      name: u.name,
      type: 'application/octet-stream',
      size: u.length,
      sha256: 'h',
      thumbnail: false,
      url: `/v1/attachments/${id}?exp=1&sig=s`,
    };
    return { ...s, attachment };
  }

  transport: Transport = async (req: UploadRequest) => {
    if (req.signal?.aborted) {
      const e = new Error('aborted');
      e.name = 'AbortError';
      throw e;
    }
    const body = req.body ? new Uint8Array(await req.body.arrayBuffer()) : new Uint8Array();
    this.requests.push({ method: req.method, url: req.url, headers: req.headers, bytes: body.length });
    if (req.method === 'POST') {
      const fate = this.createFates.shift();
      if (fate === 'network') throw new Error('Cannot reach the server.');
      if (fate) return this.error(fate.status, fate.code, fate.message, fate.retryAfter);
      const id = `up-${this.next++}`;
      const name = decodeURIComponent(req.url.split('name=')[1] ?? '');
      const length = Number(req.headers['Upload-Length']);
      this.uploads.set(id, { length, data: [], complete: length === 0, name });
      return this.reply(201, this.status(id));
    }
    const id = decodeURIComponent(req.url.split('/').pop()!);
    const u = this.uploads.get(id);
    if (!u) return this.error(404, 'not_found', 'no such upload');
    if (req.method === 'GET') return this.reply(200, this.status(id));
    if (req.method !== 'PATCH') return this.error(405, 'bad_request', 'method');
    const offset = Number(req.headers['Upload-Offset']);
    if (offset !== u.data.length) return this.error(409, 'conflict', `the upload is at offset ${u.data.length}, not ${offset}`);
    const fate = this.patchFates.shift() ?? 'ok';
    if (typeof fate === 'object' && 'status' in fate) return this.error(fate.status, fate.code, fate.message, fate.retryAfter);
    const arrived = typeof fate === 'object' ? body.subarray(0, fate.breakAfter) : body;
    // Whole parts only, unless the bytes reach the end of the file.
    const reached = u.data.length + arrived.length;
    const keep = reached >= u.length ? arrived.length : Math.floor(reached / this.part) * this.part - u.data.length;
    u.data.push(...arrived.subarray(0, Math.max(0, keep)));
    if (u.data.length === u.length) u.complete = true;
    req.onProgress?.(arrived.length);
    if (typeof fate === 'object' || fate === 'lost') throw new Error('Cannot reach the server.');
    return this.reply(200, this.status(id));
  };
}

function file(n: number): Blob {
  return new Blob([Uint8Array.from({ length: n }, (_, i) => i % 251)]);
}

function options(server: FakeServer, f: Blob, over: Partial<Parameters<typeof uploadFile>[0]> = {}) {
  const slept: number[] = [];
  const progress: number[] = [];
  const o: Parameters<typeof uploadFile>[0] = {
    transport: server.transport,
    token: () => 'tok',
    conversationId: 'c 1',
    file: f,
    name: 'my notes.txt',
    sleep: async (ms) => {
      slept.push(ms);
    },
    random: () => 0,
    onProgress: (sent) => progress.push(sent),
    ...over,
  };
  return { o, slept, progress };
}

const pattern = (n: number) => Array.from({ length: n }, (_, i) => i % 251);

describe('uploadFile', () => {
  it('starts with Upload-Length and no body, then sends part-sized slices from each offset', async () => {
    const server = new FakeServer();
    const { o, slept, progress } = options(server, file(12));
    const a = await uploadFile(o);
    expect(a).toMatchObject({ id: 'up-1', name: 'my notes.txt', size: 12 });
    expect(server.uploads.get('up-1')!.data).toEqual(pattern(12));
    expect(server.requests.map((r) => [r.method, r.headers['Upload-Offset'] ?? null, r.bytes])).toEqual([
      ['POST', null, 0],
      ['PATCH', '0', 5],
      ['PATCH', '5', 5],
      ['PATCH', '10', 2],
    ]);
    const create = server.requests[0]!;
    expect(create.url).toBe(createPath('c 1', 'my notes.txt'));
    expect(create.url).toBe('/v1/conversations/c%201/attachments?name=my%20notes.txt');
    expect(create.headers['Upload-Length']).toBe('12');
    expect(server.requests.every((r) => r.headers.Authorization === 'Bearer tok')).toBe(true);
    expect(server.requests[1]!.url).toBe('/v1/uploads/up-1');
    expect(slept).toEqual([]);
    expect(progress[0]).toBe(0);
    expect(progress[progress.length - 1]).toBe(12);
    expect([...progress].sort((x, y) => x - y)).toEqual(progress);
  });

  it('a request that breaks off: asks where the upload stands and goes on from there', async () => {
    const server = new FakeServer();
    // The second slice breaks after 3 of its 5 bytes: the server keeps the first part only.
    server.patchFates = ['ok', { breakAfter: 3 }];
    const { o, slept } = options(server, file(12));
    await uploadFile(o);
    expect(server.uploads.get('up-1')!.data).toEqual(pattern(12));
    expect(server.requests.map((r) => [r.method, r.headers['Upload-Offset'] ?? null])).toEqual([
      ['POST', null],
      ['PATCH', '0'],
      ['PATCH', '5'],
      ['GET', null],
      ['PATCH', '5'],
      ['PATCH', '10'],
    ]);
    expect(slept).toEqual([500]);
  });

  it('a lost answer: what the server stored is not sent again', async () => {
    const server = new FakeServer();
    server.patchFates = ['lost'];
    const { o } = options(server, file(12));
    await uploadFile(o);
    expect(server.requests.map((r) => [r.method, r.headers['Upload-Offset'] ?? null])).toEqual([
      ['POST', null],
      ['PATCH', '0'],
      ['GET', null],
      ['PATCH', '5'],
      ['PATCH', '10'],
    ]);
  });

  it('the last slice lost: the status says complete, with the attachment', async () => {
    const server = new FakeServer();
    server.patchFates = ['ok', 'ok', 'lost'];
    const { o } = options(server, file(12));
    const a = await uploadFile(o);
    expect(a.id).toBe('up-1');
    expect(server.requests.map((r) => r.method)).toEqual(['POST', 'PATCH', 'PATCH', 'PATCH', 'GET']);
  });

  it('a conflict (another writer, a wrong offset) asks the status, then goes on', async () => {
    const server = new FakeServer();
    server.patchFates = [{ status: 409, code: 'conflict', message: 'another request is writing this upload' }];
    const { o } = options(server, file(7));
    await uploadFile(o);
    expect(server.requests.map((r) => r.method)).toEqual(['POST', 'PATCH', 'GET', 'PATCH', 'PATCH']);
  });

  it('waits Retry-After on 503, then the backoff doubles; a step forward resets it', async () => {
    const server = new FakeServer();
    server.patchFates = [
      { status: 503, code: 'unavailable', message: 'blob store down', retryAfter: 2 },
      'lost',
      { breakAfter: 0 },
      'ok',
      'lost',
    ];
    const { o, slept } = options(server, file(12));
    await uploadFile(o);
    // 503 (Retry-After 2 s); a lost answer (1 s: the second failure in a row), whose part the
    // status shows stored (moved on: the count starts again); broke off with nothing stored
    // (0.5 s); a slice sent; the last slice's answer lost (0.5 s).
    expect(slept).toEqual([2000, 1000, 500, 500]);
    expect(server.uploads.get('up-1')!.data).toEqual(pattern(12));
  });

  it('gives up after the retries in a row, with the last error', async () => {
    const server = new FakeServer();
    server.patchFates = Array.from({ length: 10 }, () => ({ status: 503, code: 'unavailable', message: 'blob store down' }));
    const { o, slept } = options(server, file(12), { maxRetries: 3 });
    const e = await uploadFile(o).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(ApiError);
    expect(e).toMatchObject({ status: 503, code: 'unavailable' });
    expect(slept).toEqual([500, 1000, 2000]);
    expect(server.requests.filter((r) => r.method === 'PATCH')).toHaveLength(4);
  });

  it('a refusal ends it at once with the server message', async () => {
    const server = new FakeServer();
    server.createFates = [{ status: 413, code: 'too_large', message: 'the file is 12 bytes; the limit is 10' }];
    const { o, slept } = options(server, file(12));
    const e = await uploadFile(o).catch((x: unknown) => x);
    expect(e).toMatchObject({ status: 413, code: 'too_large', message: 'the file is 12 bytes; the limit is 10' });
    expect(slept).toEqual([]);
    expect(server.requests).toHaveLength(1);
  });

  it('a picture refused at its last byte (400) is not retried', async () => {
    const server = new FakeServer();
    server.patchFates = [{ status: 400, code: 'bad_request', message: 'the picture could not be decoded' }];
    const { o } = options(server, file(3));
    const e = await uploadFile(o).catch((x: unknown) => x);
    expect(e).toMatchObject({ status: 400, code: 'bad_request' });
    expect(server.requests.map((r) => r.method)).toEqual(['POST', 'PATCH']);
  });

  it('a start that did not reach the server is tried again', async () => {
    const server = new FakeServer();
    server.createFates = ['network'];
    const { o, slept } = options(server, file(4));
    const a = await uploadFile(o);
    expect(a.size).toBe(4);
    expect(slept).toEqual([500]);
    expect(server.requests.map((r) => r.method)).toEqual(['POST', 'POST', 'PATCH']);
  });

  it('an empty file is finished by the start', async () => {
    const server = new FakeServer();
    const { o } = options(server, file(0));
    const a = await uploadFile(o);
    expect(a.size).toBe(0);
    expect(server.requests.map((r) => r.method)).toEqual(['POST']);
  });

  it('tells the upload id once made, and stops when cancelled', async () => {
    const server = new FakeServer();
    server.patchFates = ['lost'];
    const controller = new AbortController();
    let created: string | null = null;
    const { o } = options(server, file(12), {
      signal: controller.signal,
      onCreated: (id) => {
        created = id;
      },
      sleep: async () => {
        controller.abort();
      },
    });
    const e = await uploadFile(o).catch((x: unknown) => x);
    expect(created).toBe('up-1');
    expect((e as Error).name).toBe('AbortError');
    expect(server.requests.map((r) => r.method)).toEqual(['POST', 'PATCH']);
  });
});
