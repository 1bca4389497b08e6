// Unit tests of the typing indicator this client sends: active on input (repeated while typing
// goes on), inactive after 3 s idle, on send, or when another chat is typed in.

import { describe, expect, it } from 'vitest';
import { FakeTimers } from './testing/fakeTimers';
import { TYPING_IDLE_MS, TYPING_REPEAT_MS, TypingSender } from './typing';

describe('TypingSender', () => {
  it('sends active once, repeats while typing goes on, and inactive after 3 s idle', () => {
    const timers = new FakeTimers();
    const sent: [string, boolean][] = [];
    const t = new TypingSender((c, a) => sent.push([c, a]), timers);
    t.input('c1');
    timers.advance(500);
    t.input('c1');
    expect(sent).toEqual([['c1', true]]);
    timers.advance(TYPING_REPEAT_MS);
    t.input('c1');
    expect(sent).toEqual([
      ['c1', true],
      ['c1', true],
    ]);
    timers.advance(TYPING_IDLE_MS - 1);
    expect(sent.length).toBe(2);
    timers.advance(1);
    expect(sent[2]).toEqual(['c1', false]);
    timers.advance(10_000);
    expect(sent.length).toBe(3);
  });

  it('stops on send and when typing moves to another chat', () => {
    const timers = new FakeTimers();
    const sent: [string, boolean][] = [];
    const t = new TypingSender((c, a) => sent.push([c, a]), timers);
    t.input('c1');
    t.input('c2');
    t.stop();
    t.stop();
    expect(sent).toEqual([
      ['c1', true],
      ['c1', false],
      ['c2', true],
      ['c2', false],
    ]);
  });
});
