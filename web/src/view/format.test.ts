// Unit tests of the texts the views show: ticks, last seen, typing line, connection state.

import { describe, expect, it } from 'vitest';
import { lastSeenText, statusText, tickText, typingText, uploadText } from './format';

describe('format', () => {
  it('ticks', () => {
    expect(tickText('sent')).toBe('✓');
    expect(tickText('delivered')).toBe('✓✓');
    expect(tickText('read')).toBe('✓✓ read');
  });

  it('last seen', () => {
    const now = Date.UTC(2025, 0, 10, 12, 0, 0);
    expect(lastSeenText(undefined, now)).toBe('');
    expect(lastSeenText({ online: true, lastSeen: null }, now)).toBe('online');
    expect(lastSeenText({ online: false, lastSeen: null }, now)).toBe('offline');
    expect(lastSeenText({ online: false, lastSeen: now - 5_000 }, now)).toBe('last seen just now');
    expect(lastSeenText({ online: false, lastSeen: now - 5 * 60_000 }, now)).toBe('last seen 5 min ago');
  });

  it('typing line', () => {
    expect(typingText([])).toBe('');
    expect(typingText(['alice'])).toBe('alice is typing…');
    expect(typingText(['alice', 'bob'])).toBe('alice and bob are typing…');
    expect(typingText(['a', 'b', 'c', 'd'])).toBe('4 people are typing…');
  });

  it('connection state', () => {
    expect(statusText({ state: 'online' }, 0)).toBe('online');
    expect(statusText({ state: 'connecting', attempt: 1 }, 0)).toBe('connecting…');
    expect(statusText({ state: 'reconnecting', retryAt: 2_400, attempt: 1, lastCode: 1006 }, 0)).toBe('reconnecting in 3s');
    expect(statusText({ state: 'reconnecting', retryAt: 100, attempt: 1, lastCode: null }, 0)).toBe('reconnecting in 1s');
    expect(statusText({ state: 'offline', reason: 'signed out' }, 0)).toBe('offline');
  });
});

describe('uploadText', () => {
  it('progress, finishing and the reason it failed', () => {
    expect(uploadText('uploading', 'cat.png', 42, null)).toBe('Uploading cat.png… 42 %');
    expect(uploadText('finishing', 'cat.png', 100, null)).toBe('Finishing cat.png…');
    expect(uploadText('failed', 'cat.png', 10, 'cat.png is too large.')).toBe('cat.png is too large.');
    expect(uploadText('failed', 'cat.png', 10, null)).toBe('cat.png was not uploaded.');
  });
});
