// Unit tests of attachments as shown: the objects kept from a message, sizes as people read
// them, the thumbnail's box (fit in 320 px, never enlarged) and the list preview's summary.

import { describe, expect, it } from 'vitest';
import { attachmentSummary, fitBox, formatSize, isPicture, parseAttachments } from './attachments';
import type { Attachment } from './protocol';

const PICTURE: Attachment = {
  id: 'a-1',
  name: 'cat.png',
  type: 'image/png',
  size: 183_402,
  sha256: '9f2c',
  width: 1600,
  height: 1200,
  thumbnail: true,
  url: '/v1/attachments/a-1?exp=1&sig=x',
  thumbnail_url: '/v1/attachments/a-1/thumbnail?exp=1&sig=y',
};

describe('formatSize', () => {
  it('bytes below 1 KB', () => {
    expect(formatSize(0)).toBe('0 B');
    expect(formatSize(1)).toBe('1 B');
    expect(formatSize(1023)).toBe('1023 B');
  });

  it('one decimal below 10, none above, and no 1024 of a unit', () => {
    expect(formatSize(1024)).toBe('1.0 KB');
    expect(formatSize(1536)).toBe('1.5 KB');
    expect(formatSize(5000)).toBe('4.9 KB');
    expect(formatSize(10 * 1024 - 1)).toBe('10 KB');
    expect(formatSize(12_345)).toBe('12 KB');
    expect(formatSize(1024 * 1024 - 1)).toBe('1.0 MB');
    expect(formatSize(5 * 1024 * 1024)).toBe('5.0 MB');
    expect(formatSize(100 * 1024 * 1024)).toBe('100 MB');
    expect(formatSize(3 * 1024 ** 3)).toBe('3.0 GB');
  });

  it('nothing for what is not a size', () => {
    expect(formatSize(-1)).toBe('');
    expect(formatSize(Number.NaN)).toBe('');
  });
});

describe('fitBox', () => {
  it('fits the longer side in 320 px, keeping the shape', () => {
    expect(fitBox(1600, 1200)).toEqual({ width: 320, height: 240 });
    expect(fitBox(600, 400)).toEqual({ width: 320, height: 213 });
    expect(fitBox(400, 600)).toEqual({ width: 213, height: 320 });
    expect(fitBox(10_000, 10)).toEqual({ width: 320, height: 1 });
  });

  it('never enlarges a small picture', () => {
    expect(fitBox(100, 50)).toEqual({ width: 100, height: 50 });
    expect(fitBox(320, 320)).toEqual({ width: 320, height: 320 });
  });

  it('takes another box', () => {
    expect(fitBox(1000, 500, 100)).toEqual({ width: 100, height: 50 });
  });

  it('is null without a size', () => {
    expect(fitBox(undefined, 100)).toBeNull();
    expect(fitBox(100, 0)).toBeNull();
  });
});

describe('parseAttachments', () => {
  it('keeps well-formed objects and the optional fields they have', () => {
    const file = { id: 'a-2', name: 'notes.txt', type: 'text/plain', size: 12, sha256: 'ab', thumbnail: false, url: '/v1/attachments/a-2' };
    expect(parseAttachments([PICTURE, file])).toEqual([PICTURE, file]);
  });

  it('leaves out entries without an id or a link, and what is not a list', () => {
    expect(parseAttachments(['a-1', null, { id: 'x' }, { url: '/y' }])).toEqual([]);
    expect(parseAttachments(undefined)).toEqual([]);
    expect(parseAttachments({})).toEqual([]);
  });

  it('fills in a missing name, type and size; drops a bad picture size', () => {
    const [a] = parseAttachments([{ id: 'a-3', url: '/v1/attachments/a-3', width: -4, height: 'x' }]);
    expect(a).toEqual({ id: 'a-3', name: 'file', type: 'application/octet-stream', size: 0, sha256: '', thumbnail: false, url: '/v1/attachments/a-3' });
  });
});

describe('isPicture and attachmentSummary', () => {
  it('a picture is one with a thumbnail link', () => {
    expect(isPicture(PICTURE)).toBe(true);
    const { thumbnail_url: _drop, ...noThumb } = PICTURE;
    expect(isPicture({ ...noThumb, thumbnail: false })).toBe(false);
  });

  it('summarises files for the preview', () => {
    expect(attachmentSummary([])).toBe('');
    expect(attachmentSummary([PICTURE])).toBe('📎 cat.png');
    expect(attachmentSummary([PICTURE, PICTURE, PICTURE])).toBe('📎 3 files');
  });
});
