/**
 * When a worker (Node or browser) tries again after a dropped or failed connection: exponential
 * backoff from 250 ms, capped at 10 s, with jitter so that workers cut off together (a coordinator
 * restart, a network blip) do not all come back in the same instant.
 */

/** Delay after a connection that opened and then closed (no failures in a row), in ms. */
export const RECONNECT_BASE_MS = 250;
/** Longest delay, reached after 6 failed attempts in a row, in ms. */
export const RECONNECT_MAX_MS = 10_000;

/**
 * Milliseconds to wait before the next attempt after `failures` failed attempts in a row (0 when
 * the last connection had opened): min(10 s, 250 ms · 2^failures) times a jitter factor 0.5–1.
 * `random` is uniform in [0, 1), e.g. Math.random().
 */
export function reconnectDelayMs(failures: number, random: number): number {
  // 2^min(failures, 6): the cap is already reached at 6, and the power cannot overflow
  return Math.min(RECONNECT_MAX_MS, RECONNECT_BASE_MS * 2 ** Math.min(failures, 6)) * (0.5 + random / 2);
}
