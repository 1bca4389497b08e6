// Unit tests of the readable lines of group system messages.

import { describe, expect, it } from 'vitest';
import { joinNames, parseSystemBody, systemText, systemUserIds } from './system';

const names: Record<string, string> = { a: 'alice', b: 'bob', c: 'carol' };
const name = (id: string) => names[id] ?? `user-${id}`;
const text = (body: object) => systemText(JSON.stringify(body), name);

describe('system messages', () => {
  it('read as sentences with usernames', () => {
    expect(text({ event: 'group_created', actor: 'a', title: 'Team', members: ['a', 'b'] })).toBe('alice created the group “Team”');
    expect(text({ event: 'renamed', actor: 'b', title: 'Crew' })).toBe('bob renamed the group to “Crew”');
    expect(text({ event: 'members_added', actor: 'a', users: ['b'] })).toBe('alice added bob');
    expect(text({ event: 'members_added', actor: 'a', users: ['b', 'c', 'zz'] })).toBe('alice added bob, carol and user-zz');
    expect(text({ event: 'member_removed', actor: 'a', user: 'b' })).toBe('alice removed bob');
    expect(text({ event: 'member_left', actor: 'c' })).toBe('carol left');
    expect(text({ event: 'role_changed', actor: 'a', user: 'b', role: 'admin' })).toBe('alice made bob an admin');
    expect(text({ event: 'role_changed', actor: 'a', user: 'b', role: 'member' })).toBe('alice made bob a member');
    expect(text({ event: 'ownership_transferred', actor: 'a', user: 'c' })).toBe('alice made carol the owner');
    expect(text({ event: 'group_deleted', actor: 'a' })).toBe('alice deleted the group');
  });

  it('survive unknown events and bodies that are not JSON', () => {
    expect(text({ event: 'pinned_message', actor: 'b' })).toBe('bob: pinned message');
    expect(systemText('not json', name)).toBe('the group changed');
    expect(parseSystemBody('[1,2]')).toBeNull();
    expect(parseSystemBody('{"event":"member_left","actor":5}')).toEqual({ event: 'member_left' });
  });

  it('join names', () => {
    expect(joinNames(['a'])).toBe('a');
    expect(joinNames(['a', 'b'])).toBe('a and b');
    expect(joinNames(['a', 'b', 'c'])).toBe('a, b and c');
  });
});

describe('systemUserIds', () => {
  it('names every user a system message mentions, once', () => {
    expect(systemUserIds(JSON.stringify({ event: 'group_created', actor: 'a', title: 'T', members: ['a', 'b'] }))).toEqual(['a', 'b']);
    expect(systemUserIds(JSON.stringify({ event: 'members_added', actor: 'a', users: ['b', 'c'] }))).toEqual(['a', 'b', 'c']);
    expect(systemUserIds(JSON.stringify({ event: 'member_removed', actor: 'a', user: 'c' }))).toEqual(['a', 'c']);
    expect(systemUserIds('not json')).toEqual([]);
  });
});
