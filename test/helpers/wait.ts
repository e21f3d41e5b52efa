/**
 * Waiting in tests on an event or a condition, always with a deadline, so a stuck run fails the
 * test with a message naming what never happened instead of hanging it. No test waits a fixed time
 * to "let something happen"; the one kind of fixed wait left is an observation window for a
 * property that is itself about time (see `observeFor`).
 */

/** Rejects after `ms` with `what` in the message, so a stuck run fails the test instead of hanging it. */
export function within<T>(ms: number, what: string, promise: Promise<T>): Promise<T> {
  let timer: ReturnType<typeof setTimeout>;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms / 1000} s: ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** Polls `condition` every `everyMs` until it holds; rejects naming `what` after `ms`. */
export async function until(
  condition: () => boolean | Promise<boolean>,
  what: string,
  ms = 15_000,
  everyMs = 10,
): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms / 1000} s: ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

/**
 * Waits `ms` on purpose: only for asserting that something does NOT happen over a window of time
 * (no step while paused). The caller says in a comment why the property needs a window.
 */
export function observeFor(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** A promise and its resolve function, for turning a callback (a log line, a hook) into an event to await. */
export function signal<T = void>(): { promise: Promise<T>; resolve: (value: T) => void } {
  let resolve!: (value: T) => void;
  const promise = new Promise<T>((r) => (resolve = r));
  return { promise, resolve };
}
