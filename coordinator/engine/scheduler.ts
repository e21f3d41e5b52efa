/**
 * Which worker computes which micro-batch of a step: plain logic, no sockets, so it is tested with
 * a fake clock. Idle workers pull the next micro-batch (so each gets work in proportion to its
 * speed). Every attempt has a deadline derived from its worker's measured speed; when the queue is
 * empty, an idle worker takes a copy of an attempt that is past its deadline, or that the idle
 * worker would likely finish sooner. The first valid result of a micro-batch is used; any later
 * one is discarded. Every attempt and its outcome is kept for the run's ledger.
 *
 * A relay takes whole reduction blocks (nextBlocks), summed there and answered together: their attempts share one
 * deadline, from the relay's measured speed over whole answers. A block whose holder is past that deadline is
 * copied whole to another idle relay (never in parts to single workers: it counts whole or not at all), at most
 * one copy at a time; the first whole answer counts.
 */
import { nanoid } from 'nanoid';

export type AttemptOutcome = 'pending' | 'used' | 'duplicate' | 'lost' | 'rejected' | 'cancelled' | 'revoked';

export interface Attempt {
  assignmentId: string;
  index: number;
  workerId: string;
  sentAt: number;
  deadline: number;
  outcome: AttemptOutcome;
  /** why this attempt exists: first try, requeued after a loss, or a copy of a straggler */
  reason: 'first' | 'retry' | 'straggler';
  finishedAt?: number;
  /** a relay's attempt: the id of the whole-block assignment it is part of (copied only whole, to another relay) */
  group?: string;
  /** who behind the relay computed it (relay id/worker id), once its block came back */
  computedBy?: string;
  /** a relay's attempt whose answer arrived and is being checked: no longer late, never copied */
  answered?: boolean;
}

export interface LedgerEntry {
  step: number;
  index: number;
  usedAssignment: string | null;
  usedWorker: string | null;
  attempts: Omit<Attempt, 'index'>[];
}

/** How long a worker is expected to take for a micro-batch of `tokens` tokens, in ms (null: unknown). */
export type Estimate = (workerId: string, tokens: number) => number | null;

export interface ScheduleOptions {
  /** a deadline is this many times the expected time… */
  deadlineFactor: number;
  /** …plus this slack in ms (network, scheduling jitter) */
  deadlineSlackMs: number;
  /** expected time for a worker nobody has measured yet */
  unknownExpectedMs: number;
}

export const DEFAULT_SCHEDULE: ScheduleOptions = { deadlineFactor: 3, deadlineSlackMs: 500, unknownExpectedMs: 10_000 };

export class StepSchedule {
  readonly attempts = new Map<string, Attempt>();
  /** attempts per micro-batch (the scheduler asks per micro-batch: O(its attempts), not O(all)) */
  private readonly byIndex: Attempt[][];
  private readonly queue: number[];
  private readonly done: boolean[];
  remaining: number;

  constructor(
    readonly step: number,
    readonly tokens: number[],
    private readonly estimate: Estimate,
    private readonly opts: ScheduleOptions = DEFAULT_SCHEDULE,
  ) {
    this.queue = tokens.map((_, i) => i);
    this.done = tokens.map(() => false);
    this.byIndex = tokens.map(() => []);
    this.remaining = tokens.length;
  }

  /** Micro-batches waiting for a first attempt or a retry (not counting straggler copies it could hand out). */
  get unassigned(): number {
    let count = 0;
    for (const i of this.queue) if (!this.done[i]) count++;
    return count;
  }

  private expected(workerId: string, index: number): number {
    return this.estimate(workerId, this.tokens[index]) ?? this.opts.unknownExpectedMs;
  }

  private live(index: number): Attempt[] {
    return this.byIndex[index].filter((a) => a.outcome === 'pending');
  }

  private hasLive(index: number): boolean {
    for (const a of this.byIndex[index]) if (a.outcome === 'pending') return true;
    return false;
  }

  /** The next micro-batch for an idle worker, or null when there is nothing worth giving it. */
  next(workerId: string, now: number): Attempt | null {
    let index: number | undefined;
    let reason: Attempt['reason'] = 'first';
    while (this.queue.length > 0 && index === undefined) {
      const i = this.queue.shift()!;
      if (!this.done[i]) {
        index = i;
        reason = this.byIndex[i].length > 0 ? 'retry' : 'first';
      }
    }
    if (index === undefined) {
      index = this.straggler(workerId, now);
      reason = 'straggler';
    }
    if (index === undefined) return null;
    const attempt: Attempt = {
      assignmentId: nanoid(12),
      index,
      workerId,
      sentAt: now,
      reason,
      outcome: 'pending',
      deadline: now + this.opts.deadlineFactor * this.expected(workerId, index) + this.opts.deadlineSlackMs,
    };
    this.attempts.set(attempt.assignmentId, attempt);
    this.byIndex[index].push(attempt);
    return attempt;
  }

  /**
   * Up to `maxBlocks` whole reduction blocks of `blockSize` indices for a relay, in block order, each of whose
   * micro-batches waits for its first attempt or a retry (none held anywhere): one attempt per micro-batch, all in
   * one group, with one deadline (the relay's expected time for the whole group). When no block is free: copies of
   * blocks another relay holds past its deadline (`copies` true; at most one copy of a block at a time). Null when
   * there is neither.
   */
  nextBlocks(
    workerId: string,
    blockSize: number,
    maxBlocks: number,
    now: number,
  ): { group: string; blocks: number[]; attempts: Attempt[]; copies: boolean } | null {
    // flags, not sets, and no arrays per index: a relay's call scans each block at most once (O(N) per call)
    const n = this.tokens.length;
    const queued = new Uint8Array(this.queue.length > 0 ? n : 0); // (empty when only copies are possible)
    for (const i of this.queue) if (!this.done[i]) queued[i] = 1;
    const blocks: number[] = [];
    for (let b = 0; this.queue.length > 0 && b * blockSize < n && blocks.length < maxBlocks; b++) {
      let free = true;
      for (let i = b * blockSize; i < Math.min(n, (b + 1) * blockSize) && free; i++)
        free = queued[i] === 1 && !this.hasLive(i);
      if (free) blocks.push(b);
    }
    const copies = blocks.length === 0;
    if (copies) blocks.push(...this.overdueBlocks(workerId, blockSize, maxBlocks, now));
    if (blocks.length === 0) return null;
    const group = nanoid(12);
    const taken = queued; // reused: from here on 1 = still queued, 2 = taken now (copies are never queued)
    const attempts: Attempt[] = [];
    let positions = 0;
    for (const b of blocks)
      for (let i = b * blockSize; i < Math.min(n, (b + 1) * blockSize); i++) positions += this.tokens[i];
    // one more expected time and slack than a worker's: the relay's own straggler handling (its deadline, then a
    // copy among its workers) answers by then, and a whole copy here costs a whole assignment
    const deadline =
      now +
      (this.opts.deadlineFactor + 1) * (this.estimate(workerId, positions) ?? this.opts.unknownExpectedMs) +
      2 * this.opts.deadlineSlackMs;
    for (const b of blocks) {
      for (let i = b * blockSize; i < Math.min(n, (b + 1) * blockSize); i++) {
        if (!copies) taken[i] = 2;
        const attempt: Attempt = {
          assignmentId: `${group}.${i}`,
          index: i,
          workerId,
          sentAt: now,
          reason: copies ? 'straggler' : this.byIndex[i].length > 0 ? 'retry' : 'first',
          outcome: 'pending',
          deadline,
          group,
        };
        this.attempts.set(attempt.assignmentId, attempt);
        this.byIndex[i].push(attempt);
        attempts.push(attempt);
      }
    }
    let kept = 0;
    for (const i of this.queue) if (taken[i] !== 2) this.queue[kept++] = i;
    this.queue.length = kept;
    return { group, blocks, attempts, copies };
  }

  /**
   * Blocks held whole by one other relay past its deadline, none of whose micro-batches is done or has a second
   * attempt: what nextBlocks copies, most overdue first (then in block order), at most `maxBlocks`.
   */
  private overdueBlocks(workerId: string, blockSize: number, maxBlocks: number, now: number): number[] {
    const found: { block: number; deadline: number }[] = [];
    for (let b = 0; b * blockSize < this.tokens.length; b++) {
      let group: string | undefined;
      let deadline = 0;
      let copyable = true;
      for (let i = b * blockSize; i < Math.min(this.tokens.length, (b + 1) * blockSize) && copyable; i++) {
        let live: Attempt | undefined;
        let count = 0;
        for (const a of this.byIndex[i]) if (a.outcome === 'pending' && count++ === 0) live = a;
        copyable =
          !this.done[i] &&
          count === 1 &&
          live!.group !== undefined &&
          !live!.answered &&
          (group === undefined || live!.group === group) &&
          live!.workerId !== workerId &&
          now > live!.deadline;
        group = live?.group;
        deadline = live?.deadline ?? 0;
      }
      if (copyable) found.push({ block: b, deadline });
    }
    return found
      .sort((x, y) => x.deadline - y.deadline || x.block - y.block)
      .slice(0, maxBlocks)
      .map((f) => f.block)
      .sort((x, y) => x - y);
  }

  /**
   * A relay's answer for these attempts arrived and is being checked (its parts, a trusted recomputation of what it
   * sent up whole): they are no longer late, and their blocks are not copied. A refusal then loses them as usual.
   */
  answered(assignmentIds: readonly string[]): void {
    for (const id of assignmentIds) {
      const a = this.attempts.get(id);
      if (a?.outcome === 'pending') a.answered = true;
    }
  }

  /** Whether micro-batch `index` has its used result. */
  isDone(index: number): boolean {
    return this.done[index];
  }

  /** A micro-batch whose only live attempt is overdue, or that `workerId` would likely finish first. */
  private straggler(workerId: string, now: number): number | undefined {
    let best: { index: number; lateness: number } | undefined;
    for (let i = 0; i < this.done.length; i++) {
      if (this.done[i]) continue;
      const live = this.live(i);
      if (live.length !== 1 || live[0].workerId === workerId) continue; // at most one copy at a time
      if (live[0].group) continue; // a relay's block is summed whole there: its parts are not copied
      const a = live[0];
      const projected = a.sentAt + this.expected(a.workerId, i);
      const mine = now + this.expected(workerId, i);
      const overdue = now > a.deadline;
      if (!overdue && mine >= projected) continue;
      const lateness = overdue ? now - a.deadline + 1e9 : projected - mine;
      if (!best || lateness > best.lateness) best = { index: i, lateness };
    }
    return best?.index;
  }

  /** A valid result arrived: 'used' if it is the first for its micro-batch, else 'duplicate'. */
  complete(assignmentId: string, now: number): 'used' | 'duplicate' {
    const a = this.attempts.get(assignmentId)!;
    a.finishedAt = now;
    if (this.done[a.index]) {
      a.outcome = 'duplicate';
      return 'duplicate';
    }
    a.outcome = 'used';
    this.done[a.index] = true;
    this.remaining--;
    return 'used';
  }

  /**
   * The attempt will not deliver (worker left, failed, or sent a rejected result): requeue if nothing else covers it.
   */
  lose(assignmentId: string, outcome: 'lost' | 'rejected', now: number): void {
    const a = this.attempts.get(assignmentId);
    if (!a || a.outcome !== 'pending') return;
    a.outcome = outcome;
    a.finishedAt = now;
    if (!this.done[a.index] && this.live(a.index).length === 0 && !this.queue.includes(a.index))
      this.queue.unshift(a.index);
  }

  /** A used result turned out untrustworthy (its worker failed a spot check): compute it again. */
  revoke(assignmentId: string, now: number): void {
    const a = this.attempts.get(assignmentId);
    if (!a || a.outcome !== 'used') return;
    a.outcome = 'revoked';
    a.finishedAt = now;
    this.done[a.index] = false;
    this.remaining++;
    if (this.live(a.index).length === 0) this.queue.unshift(a.index);
  }

  /** True when some pending attempt is past its deadline (worth re-running the dispatcher). */
  hasOverdue(now: number): boolean {
    for (const a of this.attempts.values())
      if (a.outcome === 'pending' && !a.answered && !this.done[a.index] && now > a.deadline) return true;
    return false;
  }

  /** Closes the step: attempts still out (copies that lost the race) are marked cancelled. */
  finish(now: number): LedgerEntry[] {
    for (const a of this.attempts.values()) {
      if (a.outcome === 'pending') {
        a.outcome = 'cancelled';
        a.finishedAt = now;
      }
    }
    return this.ledger();
  }

  ledger(): LedgerEntry[] {
    return this.tokens.map((_, index) => {
      const attempts = this.byIndex[index];
      const used = attempts.find((a) => a.outcome === 'used');
      return {
        step: this.step,
        index,
        usedAssignment: used?.assignmentId ?? null,
        usedWorker: used?.workerId ?? null,
        attempts: attempts.map(({ index: _i, ...rest }) => rest),
      };
    });
  }
}
