/**
 * The parent's probation as a relay keeps it: how many of each of its workers' results went up whole, so the
 * parent could check them (its `assign-blocks.probation`: the first this-many of each worker's). A result counts
 * as checked only once the parent has read it. That is known when the parent's parameters move past the version
 * it was computed at: the step that needed it is done. Results sent on a link that closed before then may never
 * have reached the parent, so they stop counting, and the worker's next results go up whole instead.
 */
export class ProbationTally {
  /** per worker: results sent up whole, read by the parent or not yet known to be */
  private readonly sent = new Map<string, number>();
  /** results sent up whole that the parent has not yet been seen to read: the version each was computed at */
  private pending: { worker: string; paramVersion: number }[] = [];

  /** Results of `worker` that went up whole (those possibly unread included: no need to send them twice). */
  count(worker: string): number {
    return this.sent.get(worker) ?? 0;
  }

  /** One result of `worker`, computed at `paramVersion`, goes up whole. */
  send(worker: string, paramVersion: number): void {
    this.sent.set(worker, this.count(worker) + 1);
    this.pending.push({ worker, paramVersion });
  }

  /** The parent sent parameters of `paramVersion`: everything computed at an earlier version was read. */
  read(paramVersion: number): void {
    this.pending = this.pending.filter((p) => p.paramVersion >= paramVersion);
  }

  /** The link to the parent closed: what it may not have read no longer counts. */
  linkLost(): void {
    for (const p of this.pending) this.sent.set(p.worker, this.count(p.worker) - 1);
    this.pending = [];
  }
}
