// Reconnect delays: exponential backoff with jitter, pure (the random number is passed in).
// The base delay is 0.5 s after the first failure, doubling up to 10 s; jitter takes off up to
// a quarter of it, so clients cut off together do not all come back in the same instant.

export const BACKOFF_FIRST_MS = 500;
export const BACKOFF_MAX_MS = 10_000;
/** The share of the base delay that jitter may take off. */
export const BACKOFF_JITTER = 0.25;

/** The base delay (no jitter) after `failures` consecutive failures (0 = the first retry). */
export function baseDelay(failures: number): number {
  const n = Math.max(0, Math.min(Math.floor(failures), 30));
  return Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2 ** n);
}

/** The delay with jitter, `random` in [0, 1): within [0.75 × base, base]. */
export function jittered(failures: number, random: number): number {
  const r = Math.min(Math.max(random, 0), 1);
  return Math.round(baseDelay(failures) * (1 - BACKOFF_JITTER * r));
}

/** Counts consecutive failures; `next` gives the delay before the next attempt. */
export class Backoff {
  private failures = 0;

  constructor(private readonly random: () => number = Math.random) {}

  /** The delay before the next attempt, and one more failure counted. */
  next(): number {
    const d = jittered(this.failures, this.random());
    this.failures += 1;
    return d;
  }

  get attempts(): number {
    return this.failures;
  }

  reset(): void {
    this.failures = 0;
  }
}
