/**
 * Pause, resume and stop, from the admin API or a signal. One SIGINT/SIGTERM (the caller's
 * AbortSignal) or an admin stop ends the run at any point: `stopped` settles, and `onStop` lets the
 * executor drop the step in flight; the checkpoint then holds the last whole step.
 */
export class RunControl {
  readonly stopped: Promise<void>;
  private paused: { promise: Promise<void>; resolve: () => void } | null = null;
  private readonly admin = new AbortController();

  constructor(
    private readonly signal: AbortSignal | undefined,
    onStop: () => void,
  ) {
    this.stopped = new Promise<void>((resolve) => {
      for (const s of [signal, this.admin.signal]) {
        if (s?.aborted) resolve();
        s?.addEventListener(
          'abort',
          () => {
            onStop();
            resolve();
          },
          { once: true },
        );
      }
    });
  }

  get stopRequested(): boolean {
    return !!this.signal?.aborted || this.admin.signal.aborted;
  }

  pause(): void {
    if (this.paused) return;
    let resolve!: () => void;
    const promise = new Promise<void>((r) => (resolve = r));
    this.paused = { promise, resolve };
  }

  resume(): void {
    this.paused?.resolve();
    this.paused = null;
  }

  stop(): void {
    this.admin.abort();
    this.resume();
  }

  /** After a step: waits while paused (a stop ends the wait too). */
  async holdIfPaused(log: (line: string) => void, step: number): Promise<void> {
    if (!this.paused) return;
    log(`paused after step ${step}`);
    await Promise.race([this.paused.promise, this.stopped]);
    if (!this.stopRequested) log('resumed');
  }
}
