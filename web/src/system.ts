// System messages of groups (docs/protocol.md § Groups): parsing their JSON body and the
// readable line shown in the timeline and the list preview ("alice added bob", "carol left").
// Pure; user ids are turned into names by the function passed in.

export interface SystemEvent {
  event: string;
  actor?: string;
  title?: string;
  members?: string[];
  users?: string[];
  user?: string;
  role?: string;
}

/** The event of a system message's body, or null when it is not a JSON object with `event`. */
export function parseSystemBody(body: string): SystemEvent | null {
  let value: unknown;
  try {
    value = JSON.parse(body);
  } catch {
    return null;
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return null;
  const v = value as Record<string, unknown>;
  if (typeof v.event !== 'string') return null;
  const str = (x: unknown) => (typeof x === 'string' ? x : undefined);
  const list = (x: unknown) => (Array.isArray(x) ? x.filter((u): u is string => typeof u === 'string') : undefined);
  const out: SystemEvent = { event: v.event };
  const actor = str(v.actor);
  if (actor !== undefined) out.actor = actor;
  const title = str(v.title);
  if (title !== undefined) out.title = title;
  const members = list(v.members);
  if (members !== undefined) out.members = members;
  const users = list(v.users);
  if (users !== undefined) out.users = users;
  const user = str(v.user);
  if (user !== undefined) out.user = user;
  const role = str(v.role);
  if (role !== undefined) out.role = role;
  return out;
}

/** "bob", "bob and carol", "bob, carol and dave". */
export function joinNames(names: string[]): string {
  if (names.length === 0) return 'nobody';
  if (names.length === 1) return names[0]!;
  return `${names.slice(0, -1).join(', ')} and ${names[names.length - 1]}`;
}

/** The readable line of a system message. */
export function systemText(body: string, name: (userId: string) => string): string {
  const e = parseSystemBody(body);
  if (!e) return 'the group changed';
  const actor = e.actor ? name(e.actor) : 'someone';
  const who = (id: string | undefined) => (id ? name(id) : 'someone');
  switch (e.event) {
    case 'group_created':
      return e.title ? `${actor} created the group “${e.title}”` : `${actor} created the group`;
    case 'renamed':
      return `${actor} renamed the group to “${e.title ?? ''}”`;
    case 'members_added':
      return `${actor} added ${joinNames((e.users ?? []).map(name))}`;
    case 'member_removed':
      return `${actor} removed ${who(e.user)}`;
    case 'member_left':
      return `${actor} left`;
    case 'role_changed':
      return e.role === 'admin' ? `${actor} made ${who(e.user)} an admin` : `${actor} made ${who(e.user)} a ${e.role ?? 'member'}`;
    case 'ownership_transferred':
      return `${actor} made ${who(e.user)} the owner`;
    case 'group_deleted':
      return `${actor} deleted the group`;
    default:
      return `${actor}: ${e.event.replace(/_/g, ' ')}`;
  }
}

/** The users a system message names (actor, members, users, user), to look their names up. */
export function systemUserIds(body: string): string[] {
  const e = parseSystemBody(body);
  if (!e) return [];
  const out = new Set<string>();
  if (e.actor) out.add(e.actor);
  for (const u of e.members ?? []) out.add(u);
  for (const u of e.users ?? []) out.add(u);
  if (e.user) out.add(e.user);
  return [...out];
}
