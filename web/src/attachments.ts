// Attachments as the client shows them, pure (unit-tested): the objects of a message checked
// and kept, file sizes as people read them, the box a thumbnail takes (so the timeline does not
// jump when it loads), and the one-line summary of a message that is only files.

import type { Attachment } from './protocol';

/** The longer side of a thumbnail as drawn, in CSS pixels (the server makes them ≤ 320 px). */
export const THUMBNAIL_BOX = 320;

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null;
}

function positive(v: unknown): number | undefined {
  return typeof v === 'number' && Number.isFinite(v) && v > 0 ? v : undefined;
}

/** The well-formed attachment objects of a message's `attachments` (anything else — an entry
 *  without an id or a link — is left out). */
export function parseAttachments(list: unknown): Attachment[] {
  if (!Array.isArray(list)) return [];
  const out: Attachment[] = [];
  for (const a of list) {
    if (!isObject(a) || typeof a.id !== 'string' || typeof a.url !== 'string') continue;
    const att: Attachment = {
      id: a.id,
      name: typeof a.name === 'string' && a.name ? a.name : 'file',
      type: typeof a.type === 'string' ? a.type : 'application/octet-stream',
      size: typeof a.size === 'number' && a.size >= 0 ? a.size : 0,
      sha256: typeof a.sha256 === 'string' ? a.sha256 : '',
      thumbnail: a.thumbnail === true,
      url: a.url,
    };
    const width = positive(a.width);
    const height = positive(a.height);
    if (width !== undefined) att.width = width;
    if (height !== undefined) att.height = height;
    if (typeof a.thumbnail_url === 'string' && a.thumbnail_url) att.thumbnail_url = a.thumbnail_url;
    out.push(att);
  }
  return out;
}

/** Shown as a picture (a thumbnail that opens the full picture), not as a file chip. */
export function isPicture(a: Attachment): boolean {
  return typeof a.thumbnail_url === 'string' && a.thumbnail_url.length > 0;
}

/** "0 B", "999 B", "1.5 KB", "12 KB", "3.2 MB", "1.0 GB" (1 KB = 1024 bytes). */
export function formatSize(bytes: number): string {
  if (!Number.isFinite(bytes) || bytes < 0) return '';
  if (bytes < 1024) return `${Math.round(bytes)} B`;
  const units = ['KB', 'MB', 'GB', 'TB'];
  let v = bytes / 1024;
  let i = 0;
  for (;;) {
    // One decimal below 10 ("1.5 KB"), none above ("12 KB"); never "1024 KB".
    const shown = v < 9.95 ? v.toFixed(1) : String(Math.round(v));
    if (Number(shown) < 1024 || i === units.length - 1) return `${shown} ${units[i]}`;
    v /= 1024;
    i += 1;
  }
}

/** The size of a picture of `width` × `height` drawn to fit `box` × `box` (never enlarged),
 *  in whole pixels of at least 1; null when the size is unknown. */
export function fitBox(
  width: number | undefined,
  height: number | undefined,
  box = THUMBNAIL_BOX,
): { width: number; height: number } | null {
  if (!width || !height || width <= 0 || height <= 0) return null;
  const scale = Math.min(1, box / Math.max(width, height));
  return {
    width: Math.max(1, Math.round(width * scale)),
    height: Math.max(1, Math.round(height * scale)),
  };
}

/** A message's files in one line, for the list preview: "📎 cat.png", "📎 3 files". */
export function attachmentSummary(list: Attachment[]): string {
  if (list.length === 0) return '';
  if (list.length === 1) return `📎 ${list[0]!.name}`;
  return `📎 ${list.length} files`;
}
