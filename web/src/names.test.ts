// Unit tests of the name directory: which ids are wanted, batches of at most 200, no id asked
// for twice while in flight or after an answer, retries after a failure.

import { describe, expect, it } from 'vitest';
import { MAX_IDS_PER_LOOKUP, NameDirectory, usersPath } from './names';

const ids = (n: number, prefix = 'u') => Array.from({ length: n }, (_, i) => `${prefix}-${String(i).padStart(4, '0')}`);

describe('NameDirectory', () => {
  it('wants only ids whose name is unknown, each once', () => {
    const d = new NameDirectory();
    d.set('alice-id', 'alice');
    d.noteAll(['alice-id', 'bob-id', 'bob-id', '', null, undefined, 'carol-id']);
    expect(d.wantedCount).toBe(2);
    expect(d.takeBatches()).toEqual([['bob-id', 'carol-id']]);
    expect(d.wantedCount).toBe(0);
    expect(d.takeBatches()).toEqual([]);
  });

  it('splits the wanted ids into lookups of at most 200', () => {
    const d = new NameDirectory();
    d.noteAll(ids(450));
    const batches = d.takeBatches();
    expect(MAX_IDS_PER_LOOKUP).toBe(200);
    expect(batches.map((b) => b.length)).toEqual([200, 200, 50]);
    expect(new Set(batches.flat()).size).toBe(450);
    expect(d.takeBatches(3).length).toBe(0);
  });

  it('never asks for an id again while its lookup is in flight', () => {
    const d = new NameDirectory();
    d.noteAll(['a', 'b']);
    const [first] = d.takeBatches();
    expect(first).toEqual(['a', 'b']);
    expect(d.isInFlight('a')).toBe(true);
    d.noteAll(['a', 'b', 'c']);
    expect(d.takeBatches()).toEqual([['c']]);
  });

  it('an answer names the users found and marks the rest absent (not asked again)', () => {
    const d = new NameDirectory();
    d.noteAll(['a', 'b', 'gone']);
    const [batch] = d.takeBatches();
    const changed = d.resolved(batch!, [
      { user_id: 'a', username: 'alice' },
      { user_id: 'b', username: 'bob' },
    ]);
    expect(changed).toBe(true);
    expect(d.get('a')).toBe('alice');
    expect(d.get('b')).toBe('bob');
    expect(d.get('gone')).toBeUndefined();
    expect(d.isInFlight('gone')).toBe(false);
    d.noteAll(['a', 'b', 'gone']);
    expect(d.wantedCount).toBe(0);
    // An answer that names nobody new changes nothing to draw.
    d.note('c');
    const [again] = d.takeBatches();
    expect(d.resolved(again!, [])).toBe(false);
  });

  it('a failed lookup is asked again when retryable, and given up otherwise', () => {
    const d = new NameDirectory();
    d.noteAll(['a', 'b']);
    const [batch] = d.takeBatches();
    d.failed(batch!, true);
    expect(d.isInFlight('a')).toBe(false);
    expect(d.takeBatches()).toEqual([['a', 'b']]);
    d.failed(['a', 'b'], false);
    d.noteAll(['a', 'b']);
    expect(d.wantedCount).toBe(0);
  });

  it('a name learned elsewhere while wanted or in flight is not asked for or lost', () => {
    const d = new NameDirectory();
    d.noteAll(['a', 'b']);
    d.set('a', 'alice');
    const [batch] = d.takeBatches();
    expect(batch).toEqual(['b']);
    d.set('b', 'bob');
    d.failed(batch!, true);
    expect(d.wantedCount).toBe(0);
    expect(d.get('b')).toBe('bob');
    expect(d.entries()).toEqual([
      ['a', 'alice'],
      ['b', 'bob'],
    ]);
  });

  it('ignores malformed entries of an answer', () => {
    const d = new NameDirectory();
    d.note('a');
    const [batch] = d.takeBatches();
    d.resolved(batch!, [{ user_id: 'a' } as never, null as never]);
    expect(d.get('a')).toBeUndefined();
    expect(d.isInFlight('a')).toBe(false);
  });
});

describe('usersPath', () => {
  it('names the ids comma-separated', () => {
    expect(usersPath(['019a-1', '019a-2'])).toBe('/v1/users?ids=019a-1,019a-2');
  });
});
