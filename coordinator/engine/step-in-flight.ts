/**
 * The step the mesh is computing: its work items, the schedule of who computes which, one slot per
 * item for the result that counts (added to the in-order sum as it arrives), and how the step ends.
 * The mesh (mesh.ts) fills slots as results pass their checks; the result gate (result-gate.ts)
 * takes a refuted worker's results back out and ends the step once its outlier screen is done.
 */
import type { GradientResult } from '../../shared/train/gradients.ts';
import type { MicroBatch } from '../../shared/train/micro-batch.ts';
import type { InOrderSum, StepGradient } from '../../shared/train/aggregate.ts';
import type { BlockHolding } from './relay-blocks.ts';
import type { ScreenedResult } from './defence.ts';
import type { LedgerEntry, StepSchedule } from './scheduler.ts';
import type { LocalJob } from './trainer.ts';

/** One unit of assignment: a micro-batch (synchronous mode) or a job of H micro-batches (local-steps mode). */
export type WorkItem = { kind: 'grad'; microBatch: MicroBatch } | { kind: 'local'; job: LocalJob };

export const itemMicroBatches = (w: WorkItem): MicroBatch[] =>
  w.kind === 'grad' ? [w.microBatch] : w.job.microBatches;

/** Token positions (batch × time) of an item: its size for the scheduler and the throughput estimate. */
export const itemPositions = (w: WorkItem): number => itemMicroBatches(w).reduce((n, mb) => n + mb.batch * mb.time, 0);

/** The attempt a worker is computing; a worker holds at most one at a time. */
export interface Holding {
  assignmentId: string;
  step: number;
  index: number;
  sentAt: number;
  /** a relay's: the whole blocks it holds (one attempt per micro-batch; assignmentId names the group) */
  group?: BlockHolding;
}

/** How a step ends: its results (every slot filled) with the ledger of who computed what, or an error. */
export interface StepSettlement {
  resolve: (results: GradientResult[], ledger: LedgerEntry[]) => void;
  reject: (err: Error) => void;
}

export class StepInFlight {
  /** true until the step resolves or is aborted; a verdict that arrives later changes nothing in it */
  open = true;
  /** per slot: who sent the used result, its norm, whether a trusted recomputation confirmed it */
  readonly screened: (ScreenedResult | undefined)[];
  /** outlier recomputations still running; the step ends only when none are */
  verifying = 0;
  /**
   * the micro-batches of the sum the results end up in (a relay's step is part of its parent's): each result's
   * overflow bound is for that many; undefined: this step's own
   */
  boundSlots?: number;
  /** per micro-batch a relay summed: every index of its block (taking one back takes the whole block) */
  private readonly relayBlock = new Map<number, number[]>();

  constructor(
    readonly paramVersion: number,
    readonly schedule: StepSchedule,
    readonly items: WorkItem[],
    /** the slots, filled as results are used (the caller's array: compute() sums over it) */
    readonly results: (GradientResult | undefined)[],
    /** gradient steps: the in-order sum, built as results arrive (local jobs are averaged by the trainer) */
    readonly sum: InOrderSum | null,
    private readonly settlement: StepSettlement,
  ) {
    this.screened = new Array(items.length);
  }

  /** A result the schedule used for its slot: stored, screened, and added to the sum. */
  use(result: GradientResult, screened: ScreenedResult): void {
    this.results[screened.index] = result;
    this.screened[screened.index] = screened;
    this.sum?.advance();
  }

  /**
   * A relay's block, summed there: its slots take the micro-batches' figures (no gradients) and the screen entries,
   * the sum the partial whole.
   */
  useBlock(block: number, partial: StepGradient, parts: { result: GradientResult; screened: ScreenedResult }[]): void {
    const indices = parts.map((p) => p.screened.index);
    for (const { result, screened } of parts) {
      this.results[screened.index] = result;
      this.screened[screened.index] = screened;
      this.relayBlock.set(screened.index, indices);
    }
    this.sum?.fillBlock(block, partial);
  }

  /**
   * Every result `workerId` gave in the step is revoked: out of the sum, its micro-batch handed out again. A worker
   * behind a relay is named `relay/worker` (Attempt.computedBy); a relay's block goes back whole.
   */
  takeBack(workerId: string): void {
    const now = Date.now();
    const revoke = new Set<number>();
    for (const a of this.schedule.attempts.values()) {
      if (a.outcome !== 'used' || (a.computedBy ?? a.workerId) !== workerId) continue;
      for (const i of this.relayBlock.get(a.index) ?? [a.index]) revoke.add(i);
    }
    for (const a of this.schedule.attempts.values()) {
      if (a.outcome !== 'used' || !revoke.has(a.index)) continue;
      this.schedule.revoke(a.assignmentId, now);
      this.results[a.index] = undefined;
      this.screened[a.index] = undefined;
      this.relayBlock.delete(a.index);
      this.sum?.retract(a.index);
    }
  }

  /** Every slot is filled and screened: the step resolves with its results and ledger. */
  finish(now: number): void {
    this.open = false;
    this.settlement.resolve(this.results as GradientResult[], this.schedule.finish(now));
  }

  /** The step is given up (abort, a failed recomputation). */
  fail(err: Error): void {
    this.open = false;
    this.settlement.reject(err);
  }
}
