// Resumable uploads (docs/protocol.md § Attachments): `POST /v1/conversations/{id}/attachments`
// with `Upload-Length` and no body starts one; `PATCH /v1/uploads/{id}` with `Upload-Offset`
// sends the file a slice at a time, each slice ending on a multiple of `part_bytes` (the server
// keeps whole parts only, so a slice that breaks off costs at most itself). After a failed
// request the client asks `GET /v1/uploads/{id}` where the upload stands and goes on from
// there, after a backoff (backoff.ts), a bounded number of times in a row. The planning is pure;
// the runner takes its transport, clock and randomness as arguments (unit-tested with fakes).

import { ApiError, describeError, errorOf } from './api';
import { parseAttachments } from './attachments';
import { Backoff } from './backoff';
import type { Attachment, UploadStatus } from './protocol';

/** Failed requests in a row (without the upload moving on) before it gives up. */
export const UPLOAD_MAX_RETRIES = 5;

export interface Slice {
  /** The offset the request sends from (`Upload-Offset`). */
  start: number;
  /** One past its last byte. */
  end: number;
}

/** The bytes of the next request: from the server's offset to the next multiple of
 *  `partBytes`, or to the end of the file. Null when nothing is left to send. */
export function nextSlice(offset: number, length: number, partBytes: number): Slice | null {
  const start = Math.max(0, Math.floor(offset));
  if (start >= length) return null;
  const part = partBytes >= 1 ? Math.floor(partBytes) : length;
  return { start, end: Math.min(length, (Math.floor(start / part) + 1) * part) };
}

/** Every slice of an upload of `length` bytes from `offset` on, in order. */
export function planSlices(length: number, partBytes: number, offset = 0): Slice[] {
  const out: Slice[] = [];
  for (let s = nextSlice(offset, length, partBytes); s; s = nextSlice(s.end, length, partBytes)) out.push(s);
  return out;
}

/** Whole percent of `sent` out of `total` (an empty file is 100 %), within 0–100. */
export function percentOf(sent: number, total: number): number {
  if (total <= 0) return 100;
  return Math.max(0, Math.min(100, Math.floor((sent * 100) / total)));
}

/** Whether a failed upload request is worth asking the status and going on: the network
 *  failed (no answer), the server or the blob store is unavailable (5xx), it was too busy
 *  (408, 429), or the offset was not the server's (409: another request wrote, or an answer
 *  was lost). Anything else (413 too large, 400, 403, 404) will not change by itself. */
export function retryableUploadError(e: unknown): boolean {
  if (isAbort(e)) return false;
  if (!(e instanceof ApiError)) return true;
  return e.status >= 500 || e.status === 408 || e.status === 429 || e.status === 409;
}

/** The delay before the next try: the server's Retry-After, else the next backoff step. */
export function retryDelay(e: unknown, backoff: Backoff): number {
  const d = backoff.next();
  return e instanceof ApiError && e.retryAfter !== null ? e.retryAfter * 1000 : d;
}

/** Why an upload failed, as a sentence naming the file: the server's own message for its
 *  refusals (413 too_large, 400 bad_request, 503 unavailable, …). */
export function describeUploadError(e: unknown, name: string): string {
  if (e instanceof ApiError) {
    const detail = e.message ? e.message.replace(/\.$/, '') : '';
    switch (e.code) {
      case 'too_large':
        return `${name} is too large${detail ? `: ${detail}` : ''}.`;
      case 'bad_request':
        return `${name} was refused${detail ? `: ${detail}` : ''}.`;
      case 'unavailable':
        return `${name} was not uploaded: the file store is unavailable${detail ? ` (${detail})` : ''}; try again later.`;
      case 'not_found':
        return `${name} was not uploaded: ${detail || 'the upload is gone'}.`;
      default:
        break;
    }
  }
  return `${name} was not uploaded: ${describeError(e).replace(/\.$/, '')}.`;
}

// ---- transport ----

export interface UploadRequest {
  method: 'POST' | 'PATCH' | 'GET' | 'DELETE';
  url: string;
  headers: Record<string, string>;
  body?: Blob;
  /** Bytes of `body` sent so far. */
  onProgress?: (loaded: number) => void;
  signal?: AbortSignal;
}

export interface UploadReply {
  status: number;
  text: string;
  header(name: string): string | null;
}

/** Sends one request; rejects when no answer came (network) or on abort (AbortError). */
export type Transport = (req: UploadRequest) => Promise<UploadReply>;

export function abortError(): Error {
  const e = new Error('The upload was cancelled.');
  e.name = 'AbortError';
  return e;
}

export function isAbort(e: unknown): boolean {
  return e instanceof Error && e.name === 'AbortError';
}

/** The browser's transport: XMLHttpRequest, because it reports upload progress. */
export const xhrTransport: Transport = (req) =>
  new Promise<UploadReply>((resolve, reject) => {
    if (req.signal?.aborted) {
      reject(abortError());
      return;
    }
    const x = new XMLHttpRequest();
    x.open(req.method, req.url);
    for (const [k, v] of Object.entries(req.headers)) x.setRequestHeader(k, v);
    if (req.onProgress) {
      const report = req.onProgress;
      x.upload.addEventListener('progress', (ev) => report(ev.loaded));
    }
    const onAbort = () => x.abort();
    req.signal?.addEventListener('abort', onAbort, { once: true });
    const done = () => req.signal?.removeEventListener('abort', onAbort);
    x.addEventListener('load', () => {
      done();
      resolve({ status: x.status, text: x.responseText, header: (n) => x.getResponseHeader(n) });
    });
    x.addEventListener('error', () => {
      done();
      reject(new Error('Cannot reach the server.'));
    });
    x.addEventListener('timeout', () => {
      done();
      reject(new Error('The server did not answer in time.'));
    });
    x.addEventListener('abort', () => {
      done();
      reject(abortError());
    });
    x.send(req.body ?? null);
  });

/** Waits `ms`, or rejects with an AbortError when `signal` aborts first. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(abortError());
      return;
    }
    const onAbort = () => {
      clearTimeout(t);
      reject(abortError());
    };
    const t = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

// ---- the runner ----

export interface UploadOptions {
  transport: Transport;
  token: () => string | null;
  conversationId: string;
  file: Blob;
  name: string;
  /** Bytes the server holds or is being sent, out of the file's size. */
  onProgress?: (sent: number, total: number) => void;
  /** The upload's id, once the server made it (to cancel it with `DELETE`). */
  onCreated?: (uploadId: string) => void;
  signal?: AbortSignal;
  sleep?: (ms: number, signal?: AbortSignal) => Promise<void>;
  random?: () => number;
  maxRetries?: number;
}

function isStatus(v: unknown): v is UploadStatus {
  const s = v as Partial<UploadStatus> | null;
  return (
    typeof s === 'object' &&
    s !== null &&
    typeof s.upload_id === 'string' &&
    typeof s.offset === 'number' &&
    typeof s.length === 'number' &&
    typeof s.part_bytes === 'number' &&
    typeof s.complete === 'boolean'
  );
}

function authHeaders(token: string | null, extra: Record<string, string>): Record<string, string> {
  const h: Record<string, string> = { Accept: 'application/json', ...extra };
  if (token) h.Authorization = `Bearer ${token}`;
  return h;
}

async function statusCall(o: UploadOptions, req: Omit<UploadRequest, 'signal'>): Promise<UploadStatus> {
  const r = await o.transport({ ...req, signal: o.signal });
  let json: unknown = null;
  if (r.text) {
    try {
      json = JSON.parse(r.text);
    } catch {
      json = null;
    }
  }
  if (r.status < 200 || r.status >= 300) throw errorOf(r.status, json, r.header('Retry-After'), `HTTP ${r.status}`);
  if (!isStatus(json)) throw new ApiError(502, 'bad_reply', 'The server answered the upload with something unexpected.');
  return json;
}

export function uploadsPath(uploadId: string): string {
  return `/v1/uploads/${encodeURIComponent(uploadId)}`;
}

export function createPath(conversationId: string, name: string): string {
  return `/v1/conversations/${encodeURIComponent(conversationId)}/attachments?name=${encodeURIComponent(name)}`;
}

/**
 * Uploads `file` to the conversation and resolves to the finished attachment (name its `id` in
 * a `send`). Rejects with the ApiError that ended it (413 too large, 400, 404 …, or the last
 * retryable one after `maxRetries` failures in a row), or an AbortError when `signal` aborts.
 */
export async function uploadFile(o: UploadOptions): Promise<Attachment> {
  const total = o.file.size;
  const wait = o.sleep ?? sleep;
  const backoff = new Backoff(o.random ?? Math.random);
  const max = o.maxRetries ?? UPLOAD_MAX_RETRIES;
  let failures = 0;
  const progress = (n: number) => o.onProgress?.(Math.min(Math.max(0, n), total), total);
  /** After a failed request: wait and go on, or give up with `e`. */
  const failed = async (e: unknown): Promise<void> => {
    if (o.signal?.aborted) throw abortError();
    if (!retryableUploadError(e) || failures >= max) throw e;
    failures += 1;
    await wait(retryDelay(e, backoff), o.signal);
  };

  let status: UploadStatus | null = null;
  progress(0);
  while (status === null) {
    try {
      status = await statusCall(o, {
        method: 'POST',
        url: createPath(o.conversationId, o.name),
        headers: authHeaders(o.token(), { 'Upload-Length': String(total) }),
      });
    } catch (e) {
      // A start whose answer was lost leaves an empty upload behind; the server sweeps it.
      await failed(e);
    }
  }
  o.onCreated?.(status.upload_id);
  const id = status.upload_id;
  let ask = false;
  /** The furthest offset the server reported: the failures in a row count from there. */
  let reached = status.offset;
  const movedOn = (st: UploadStatus) => {
    if (st.complete || st.offset > reached) {
      reached = st.offset;
      failures = 0;
      backoff.reset();
    }
  };
  for (;;) {
    if (status.complete) {
      const [attachment] = parseAttachments([status.attachment]);
      if (!attachment) throw new ApiError(502, 'bad_reply', 'The server finished the upload without the attachment.');
      progress(total);
      return attachment;
    }
    try {
      if (ask) {
        status = await statusCall(o, { method: 'GET', url: uploadsPath(id), headers: authHeaders(o.token(), {}) });
        ask = false;
        progress(status.offset);
        movedOn(status);
        continue;
      }
      // Nothing left to send but not finished (a completion that failed): an empty request at
      // the end finishes it.
      const slice = nextSlice(status.offset, status.length, status.part_bytes) ?? {
        start: status.offset,
        end: status.offset,
      };
      const before = reached;
      status = await statusCall(o, {
        method: 'PATCH',
        url: uploadsPath(id),
        headers: authHeaders(o.token(), {
          'Upload-Offset': String(slice.start),
          'Content-Type': 'application/offset+octet-stream',
        }),
        body: o.file.slice(slice.start, slice.end),
        onProgress: (loaded) => progress(slice.start + loaded),
      });
      progress(status.offset);
      movedOn(status);
      if (!status.complete && status.offset <= before) throw new ApiError(503, 'stalled', 'The upload did not move on.');
    } catch (e) {
      await failed(e);
      ask = true;
    }
  }
}
