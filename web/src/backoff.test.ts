// Unit tests of the reconnect delays: 0.5 s doubling to 10 s, jitter within a quarter.

import { describe, expect, it } from 'vitest';
import { BACKOFF_FIRST_MS, BACKOFF_MAX_MS, Backoff, baseDelay, jittered } from './backoff';

describe('backoff', () => {
  it('starts at 0.5 s and doubles up to 10 s', () => {
    expect([0, 1, 2, 3, 4, 5, 6, 50].map(baseDelay)).toEqual([500, 1000, 2000, 4000, 8000, 10000, 10000, 10000]);
  });

  it('jitter stays within [0.75 × base, base] and never past the cap', () => {
    for (let n = 0; n < 12; n++) {
      for (const r of [0, 0.25, 0.5, 0.999999, 1]) {
        const d = jittered(n, r);
        expect(d).toBeGreaterThanOrEqual(baseDelay(n) * 0.75);
        expect(d).toBeLessThanOrEqual(baseDelay(n));
        expect(d).toBeLessThanOrEqual(BACKOFF_MAX_MS);
        expect(d).toBeGreaterThanOrEqual(BACKOFF_FIRST_MS * 0.75);
      }
    }
  });

  it('counts failures until reset', () => {
    const b = new Backoff(() => 0);
    expect([b.next(), b.next(), b.next()]).toEqual([500, 1000, 2000]);
    expect(b.attempts).toBe(3);
    b.reset();
    expect(b.next()).toBe(500);
  });
});
