// The usernames the client knows (user id → username) and the lookups still owed for the ids it
// only knows by id (`GET /v1/users?ids=…`, docs/protocol.md). Pure: ids are noted as they show
// up (conversation list, member lists, message authors, system message bodies, receipts,
// typing); the app takes them in batches of at most MAX_IDS_PER_LOOKUP, asks the server and
// hands the answer back. An id is never asked for twice while a lookup of it is in flight, nor
// again once the server answered for it (a name, or its absence).

/** The most ids one `GET /v1/users?ids=` may name. */
export const MAX_IDS_PER_LOOKUP = 200;

export interface UserName {
  user_id: string;
  username: string;
}

export class NameDirectory {
  private readonly known = new Map<string, string>();
  /** Unknown ids not asked for yet, in the order they were noted. */
  private readonly wanted = new Set<string>();
  /** Ids of lookups sent and not answered. */
  private readonly inFlight = new Set<string>();
  /** Ids the server left out of an answer (no such user): not asked again. */
  private readonly absent = new Set<string>();

  get(userId: string): string | undefined {
    return this.known.get(userId);
  }

  has(userId: string): boolean {
    return this.known.has(userId);
  }

  get size(): number {
    return this.known.size;
  }

  /** Every known name, e.g. to keep in sessionStorage. */
  entries(): [string, string][] {
    return [...this.known.entries()];
  }

  /** A name learned elsewhere (sign-in, a lookup by username, the session): not asked for. */
  set(userId: string, username: string): void {
    this.known.set(userId, username);
    this.wanted.delete(userId);
    this.absent.delete(userId);
  }

  /** An id seen in the client's data: wanted unless its name is known, asked for, or absent. */
  note(userId: string | null | undefined): void {
    if (!userId) return;
    if (this.known.has(userId) || this.inFlight.has(userId) || this.absent.has(userId)) return;
    this.wanted.add(userId);
  }

  noteAll(userIds: Iterable<string | null | undefined>): void {
    for (const u of userIds) this.note(u);
  }

  /** How many ids wait to be asked for. */
  get wantedCount(): number {
    return this.wanted.size;
  }

  isInFlight(userId: string): boolean {
    return this.inFlight.has(userId);
  }

  /** The lookups to send now, each of at most `max` ids, marked in flight. */
  takeBatches(max: number = MAX_IDS_PER_LOOKUP): string[][] {
    const size = Math.max(1, Math.floor(max));
    const out: string[][] = [];
    let batch: string[] = [];
    for (const u of this.wanted) {
      batch.push(u);
      this.inFlight.add(u);
      if (batch.length === size) {
        out.push(batch);
        batch = [];
      }
    }
    if (batch.length) out.push(batch);
    this.wanted.clear();
    return out;
  }

  /** The answer to the lookup of `batch`: names of the users found, the rest marked absent.
   *  True when a name became known or changed (the page shows names: draw it again). */
  resolved(batch: string[], users: UserName[]): boolean {
    let changed = false;
    for (const u of users) {
      if (typeof u?.user_id !== 'string' || typeof u.username !== 'string') continue;
      if (this.known.get(u.user_id) !== u.username) changed = true;
      this.set(u.user_id, u.username);
      this.inFlight.delete(u.user_id);
    }
    for (const id of batch) {
      if (!this.inFlight.delete(id)) continue;
      if (!this.known.has(id)) this.absent.add(id);
    }
    return changed;
  }

  /** The lookup of `batch` failed: `retry` puts its ids back to be asked again later; otherwise
   *  (an answer that will not change, e.g. the server lacks the call) they are not asked again. */
  failed(batch: string[], retry: boolean): void {
    for (const id of batch) {
      if (!this.inFlight.delete(id)) continue;
      if (this.known.has(id)) continue;
      if (retry) this.wanted.add(id);
      else this.absent.add(id);
    }
  }
}

/** The query of one lookup: `/v1/users?ids=a,b,c`. */
export function usersPath(ids: string[]): string {
  return `/v1/users?ids=${ids.map(encodeURIComponent).join(',')}`;
}
